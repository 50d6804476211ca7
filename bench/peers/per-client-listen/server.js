// The previous design, for comparison: every WebSocket opens its own PostgreSQL connection and
// LISTENs on the user's channels, as the SSE endpoint did for every browser session. Same
// tokens and messages as relay. Benchmark peer only.
import http from 'node:http';

import jwt from 'jsonwebtoken';
import pg from 'pg';
import { WebSocketServer } from 'ws';

const port = Number(process.env.PORT || 3000);
const secret = process.env.WEBSOCKET_JWT_SECRET;
const safeUserId = /^[A-Za-z0-9_.@:-]+$/;
const quote = (name) => `"${name.replace(/"/g, '""')}"`;

function verify(token) {
  const claims = jwt.verify(token, secret, {
    algorithms: ['HS256'], issuer: 'papr-app', audience: 'papr-realtime',
  });
  if (typeof claims.exp !== 'number') throw new Error('missing exp');
  const { userId } = claims;
  if (!(typeof userId === 'string' || Number.isInteger(userId))) throw new Error('bad userId');
  return String(userId);
}

const server = http.createServer((req, res) => {
  if (req.url !== '/health') {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ status: 'healthy', totalConnections: wss.clients.size }));
});
const wss = new WebSocketServer({ server, path: '/ws', maxPayload: 16 * 1024 });

wss.on('connection', async (ws, req) => {
  ws.on('error', () => {});
  let userId;
  try {
    userId = verify(new URL(req.url, 'http://localhost').searchParams.get('token'));
  } catch {
    ws.close(4001, 'unauthorized');
    return;
  }
  if (!safeUserId.test(userId)) {
    ws.close(4003, 'forbidden');
    return;
  }
  const channels = [`user_Subscription_${userId}`, `user_Usage_${userId}`];
  const db = new pg.Client({ connectionString: process.env.DATABASE_URL, application_name: 'per-client-listen' });
  db.on('error', () => ws.close(1011, 'database connection lost'));
  ws.on('close', () => db.end().catch(() => {}));
  const seqs = new Map();
  db.on('notification', ({ channel, payload }) => {
    const seq = (seqs.get(channel) || 0) + 1;
    seqs.set(channel, seq);
    let data;
    try {
      data = JSON.parse(payload);
    } catch {
      data = payload;
    }
    const table = data && typeof data.table === 'string' ? data.table : channel.split('_')[1].toLowerCase();
    ws.send(JSON.stringify({ type: 'update', table, channel, seq, data }));
  });
  try {
    await db.connect();
    for (const channel of channels) await db.query(`LISTEN ${quote(channel)}`);
  } catch {
    ws.close(1013, 'no database connection');
    return;
  }
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ type: 'connected', userId, channels }));
});

server.listen(port, process.env.HOST || '127.0.0.1');
