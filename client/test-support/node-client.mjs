// Runs the real client in Node against a running relay, for tests/test_client_node.py.
// Usage: node node-client.mjs --url ws://127.0.0.1:PORT/ws --user-id X --secret S
// Prints one JSON line per event: {"event":"state"|"update"|"resync", ...}. Tokens are
// signed with the real jsonwebtoken (a fresh one per connection, as a token endpoint would).
import WebSocket from 'ws';
import jwt from 'jsonwebtoken';
import { createRealtimeClient } from '../src/index.js';

function flag(name) {
  const i = process.argv.indexOf(`--${name}`);
  const value = i === -1 ? undefined : process.argv[i + 1];
  if (value === undefined || value.startsWith('--')) {
    process.stderr.write(`node-client: --${name} is required\n`);
    process.exit(2);
  }
  return value;
}

const url = flag('url');
const userId = flag('user-id');
const secret = flag('secret');
const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);

const client = createRealtimeClient({
  url,
  WebSocketImpl: WebSocket,
  getToken: async () => jwt.sign({ userId }, secret,
    { issuer: 'papr-app', audience: 'papr-realtime', expiresIn: '1h' }),
  backoff: { baseMs: 100, capMs: 1000 },
});
client.onState((state) => emit({ event: 'state', state }));
client.onResync((info) => emit({ event: 'resync', reason: info && info.reason, channels: info && info.channels }));
client.subscribe((update) => emit({ event: 'update', channel: update.channel, table: update.table, data: update.data }));
client.connect();

process.stdin.on('end', () => { client.close(); setTimeout(() => process.exit(0), 100); });
process.stdin.resume();
