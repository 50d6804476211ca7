// The bundled client (client/src/socket.js) resuming against a relay that throttles its
// user's resumes, for tests/test_security_admission.py. It starts as a client that was
// connected before (resumeFrom: the cursors given in CURSORS), with full-jitter backoff
// pinned to its ceilings (random = 1), and prints one JSON line per event: every close it
// sees, every reconnect delay it chooses, and `connected`.
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(join(import.meta.dirname, '..', 'client', 'package.json'));
const WebSocket = require('ws');
const { createSocketClient } = await import('../client/src/socket.js');

const { URL: url, TOKEN: token, CURSORS } = process.env;
const emit = (event) => process.stdout.write(`${JSON.stringify({ ...event, at: Date.now() })}\n`);

const client = createSocketClient({
  url,
  WebSocketImpl: WebSocket,
  getToken: async () => token,
  backoff: { baseMs: 200, capMs: 2000 },
  random: () => 0.999999,
  setTimeout: (fn, ms) => {
    emit({ event: 'timer', ms });
    return setTimeout(fn, ms);
  },
  resumeFrom: { cursors: JSON.parse(CURSORS), wasConnected: true, cause: { code: 1006, reason: '' } },
});
client.onState((state, cause) => emit({ event: 'state', state, code: cause?.code, reason: cause?.reason }));
client.connect();
process.stdin.on('end', () => { client.close(); setTimeout(() => process.exit(0), 100); });
process.stdin.resume();
