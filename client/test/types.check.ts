// Compiled by `npm run typecheck` (never run): it fails when the hand-written declarations
// (index.d.ts, react.d.ts) and the sources in src/ (typed through their JSDoc) disagree.
import * as declared from '../index.js';
import * as implemented from '../src/index.js';
import * as declaredReact from '../react.js';
import * as implementedReact from '../src/react.js';

type Equal<A, B> =
  (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
function same<A, B>(proof: Equal<A, B>): void {
  void proof;
}

// The same names are exported, no more and no fewer ...
same<keyof typeof declared, keyof typeof implemented>(true);
same<keyof typeof declaredReact, keyof typeof implementedReact>(true);

// ... and each is what its declaration says, both ways.
const asDeclared: typeof declared = implemented;
const asImplemented: typeof implemented = declared;
const reactAsDeclared: typeof declaredReact = implementedReact;
const reactAsImplemented: typeof implementedReact = declaredReact;
void [asDeclared, asImplemented, reactAsDeclared, reactAsImplemented];

// The declarations read as an app uses them.
const client = declared.createRealtimeClient({ url: 'wss://relay.example/ws', getToken: async () => 't' });
client.onState((state, event) => {
  const why: [declared.ConnectionState, number, string] = [state, event.code, event.reason];
  void why;
});
client.subscribe((update) => {
  if (update.type === declared.MESSAGE_TYPE.UPDATE) void update.cursor;
});
const stale: number = declared.CLOSE_CODE.STALE_CONNECTION;
void stale;
