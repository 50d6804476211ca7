// The relay a JavaScript team would write instead of relay: Node.js `ws` + `pg`, ONE LISTEN
// connection for the process, the same tokens (HS256, iss papr-app, aud papr-realtime, exp,
// userId) and the same messages (`connected`, `update` with table/channel/seq/data).
// Written plainly, the way the libraries' READMEs suggest. Benchmark peer only.
import http from 'node:http';

import jwt from 'jsonwebtoken';
import pg from 'pg';
import { WebSocketServer } from 'ws';

const port = Number(process.env.PORT || 3000);
const secret = process.env.WEBSOCKET_JWT_SECRET;
const authTimeoutMs = 10_000;
const safeUserId = /^[A-Za-z0-9_.@:-]+$/;

const db = new pg.Client({ connectionString: process.env.DATABASE_URL, application_name: 'node-ws' });
db.on('error', (err) => {
  console.error('database connection lost:', err.message);
  process.exit(1);
});
await db.connect();

const members = new Map(); // channel -> Set<WebSocket>
const listening = new Map(); // channel -> Promise of its LISTEN
const seqs = new Map(); // channel -> last seq
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

async function subscribe(ws, channels) {
  for (const channel of channels) {
    if (!members.has(channel)) members.set(channel, new Set());
    members.get(channel).add(ws);
    if (!listening.has(channel)) listening.set(channel, db.query(`LISTEN ${quote(channel)}`));
  }
  await Promise.all(channels.map((channel) => listening.get(channel)));
}

function unsubscribe(ws, channels) {
  for (const channel of channels) {
    const set = members.get(channel);
    if (!set) continue;
    set.delete(ws);
    if (set.size === 0) {
      members.delete(channel);
      listening.delete(channel);
      db.query(`UNLISTEN ${quote(channel)}`).catch(() => {});
    }
  }
}

db.on('notification', ({ channel, payload }) => {
  const seq = (seqs.get(channel) || 0) + 1;
  seqs.set(channel, seq);
  const set = members.get(channel);
  if (!set) return;
  let data;
  try {
    data = JSON.parse(payload);
  } catch {
    data = payload;
  }
  const table = data && typeof data.table === 'string' ? data.table : channel.split('_')[1].toLowerCase();
  const message = JSON.stringify({ type: 'update', table, channel, seq, data });
  for (const ws of set) ws.send(message);
});

const server = http.createServer((req, res) => {
  if (req.url !== '/health') {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({
    status: 'healthy', timestamp: new Date().toISOString(), uptime: Math.round(process.uptime()),
    totalConnections: wss.clients.size, channels: members.size,
  }));
});
const wss = new WebSocketServer({ server, path: '/ws', maxPayload: 16 * 1024 });

async function start(ws, token) {
  let userId;
  try {
    userId = verify(token);
  } catch {
    ws.close(4001, 'unauthorized');
    return;
  }
  if (!safeUserId.test(userId)) {
    ws.close(4003, 'forbidden');
    return;
  }
  const channels = [`user_Subscription_${userId}`, `user_Usage_${userId}`];
  ws.on('close', () => unsubscribe(ws, channels));
  await subscribe(ws, channels);
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify({ type: 'connected', userId, channels }));
}

wss.on('connection', (ws, req) => {
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('error', () => {});
  const token = new URL(req.url, 'http://localhost').searchParams.get('token');
  if (token) {
    start(ws, token).catch(() => ws.close(1011));
    return;
  }
  const timer = setTimeout(() => ws.close(4010, 'auth timeout'), authTimeoutMs);
  ws.once('message', (raw) => {
    clearTimeout(timer);
    let message;
    try {
      message = JSON.parse(raw);
    } catch {
      ws.close(1008, 'not JSON');
      return;
    }
    if (message.type !== 'auth') {
      ws.close(4001, 'expected auth');
      return;
    }
    start(ws, message.token).catch(() => ws.close(1011));
  });
});

// Heartbeat, as in the ws README: a peer that did not answer the last ping is terminated.
const heartbeat = setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) {
      ws.terminate();
      continue;
    }
    ws.isAlive = false;
    ws.ping();
  }
}, 20_000);
wss.on('close', () => clearInterval(heartbeat));

server.listen(port, process.env.HOST || '127.0.0.1');
