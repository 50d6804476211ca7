import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createSocketClient } from '../src/socket.js';
import { CONNECTED, createClock, createFakeSockets, flush } from './fakes.js';

function setup(extra = {}) {
  const clock = createClock();
  const fakes = createFakeSockets();
  let tokens = 0;
  const states = [];
  const updates = [];
  const resyncs = [];
  const errors = [];
  const client = createSocketClient({
    url: 'ws://relay.test/ws',
    getToken: async () => `token-${++tokens}`,
    WebSocketImpl: fakes.FakeWebSocket,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    random: () => 0.5,
    backoff: { baseMs: 1000, capMs: 8000 },
    eventTarget: null,
    ...extra,
  });
  client.onState((s) => states.push(s));
  client.subscribe((u) => updates.push(u));
  client.onResync((r) => resyncs.push(r));
  client.onError((e) => errors.push(e));
  return { client, clock, fakes, states, updates, resyncs, errors, tokens: () => tokens };
}

async function connect(ctx, connected = CONNECTED) {
  ctx.client.connect();
  await flush();
  ctx.fakes.last.serverOpen();
  ctx.fakes.last.serverSend(connected);
}

test('authenticates with the first message, token not in the URL', async () => {
  const ctx = setup();
  await connect(ctx);
  assert.equal(ctx.fakes.last.url, 'ws://relay.test/ws');
  assert.deepEqual(ctx.fakes.last.sent[0], { type: 'auth', token: 'token-1' });
  assert.deepEqual(ctx.states, ['connecting', 'authenticating', 'connected']);
  assert.equal(ctx.client.state, 'connected');
});

test('updates reach subscribers and move the cursor of their channel', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverSend({ type: 'update', table: 'subscription', channel: 'user_Subscription_42',
    seq: 1, cursor: 'e-1:1', data: { plan: 'pro' } });
  assert.equal(ctx.updates.length, 1);
  assert.equal(ctx.updates[0].table, 'subscription');
  assert.equal(ctx.client.cursors.user_Subscription_42, 'e-1:1');
  assert.equal(ctx.client.cursors.user_Usage_42, 'e-2:0');
});

test('answers ping with pong', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverSend({ type: 'ping' });
  assert.deepEqual(ctx.fakes.last.sent.at(-1), { type: 'pong' });
});

test('1012 drain: reconnects after a jittered backoff and resumes with its cursors', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverSend({ type: 'update', channel: 'user_Usage_42', seq: 4, cursor: 'e-2:4',
    table: 'usage', data: {} });
  ctx.fakes.last.serverClose(1012, 'server restarting');
  assert.equal(ctx.client.state, 'reconnecting');
  assert.equal(ctx.fakes.sockets.length, 1);
  await ctx.clock.advance(499); // random 0.5 × 1000 ms
  assert.equal(ctx.fakes.sockets.length, 1);
  await ctx.clock.advance(1);
  assert.equal(ctx.fakes.sockets.length, 2);
  ctx.fakes.last.serverOpen();
  assert.deepEqual(ctx.fakes.last.sent[0], {
    type: 'auth', token: 'token-2',
    resume: { user_Subscription_42: 'e-1:0', user_Usage_42: 'e-2:4' },
  });
  ctx.fakes.last.serverSend({ ...CONNECTED, resumed: true });
  assert.equal(ctx.resyncs.length, 0, 'a resumed connection needs no resync');
});

test('a reconnect that could not resume reports one resync, the server\'s', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverClose(1006);
  await ctx.clock.advance(10000);
  ctx.fakes.last.serverOpen();
  ctx.fakes.last.serverSend({ ...CONNECTED, resumed: false });
  ctx.fakes.last.serverSend({ type: 'resync', reason: 'history unavailable',
    channels: ['user_Subscription_42', 'user_Usage_42'],
    cursors: { user_Subscription_42: 'f-1:0', user_Usage_42: 'f-2:0' } });
  assert.deepEqual(ctx.resyncs, [{ reason: 'history unavailable',
    channels: ['user_Subscription_42', 'user_Usage_42'] }]);
  assert.equal(ctx.client.cursors.user_Usage_42, 'f-2:0');
});

test('a reconnect reports the channels it had no cursor for as reconnected', async () => {
  const ctx = setup();
  await connect(ctx, { ...CONNECTED, channels: ['user_Subscription_42'],
    cursors: { user_Subscription_42: 'e-1:0' } });
  ctx.fakes.last.serverClose(1006);
  await ctx.clock.advance(10000);
  ctx.fakes.last.serverOpen();
  assert.deepEqual(ctx.fakes.last.sent[0].resume, { user_Subscription_42: 'e-1:0' });
  ctx.fakes.last.serverSend({ ...CONNECTED, resumed: false });
  assert.deepEqual(ctx.resyncs, [{ reason: 'reconnected', channels: ['user_Usage_42'] }]);
});

test('a resync message reaches onResync and updates cursors', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverSend({ type: 'resync', reason: 'database reconnected',
    channels: ['user_Usage_42'], cursors: { user_Usage_42: 'f-9:0' } });
  assert.deepEqual(ctx.resyncs, [{ reason: 'database reconnected', channels: ['user_Usage_42'] }]);
  assert.equal(ctx.client.cursors.user_Usage_42, 'f-9:0');
});

test('4003 is terminal: no reconnect loop', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverClose(4003, 'forbidden');
  await ctx.clock.advance(120000);
  assert.equal(ctx.fakes.sockets.length, 1);
  assert.equal(ctx.client.state, 'closed');
  assert.equal(ctx.errors.length, 1);
});

test('4001 fetches a new token before reconnecting', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverClose(4001, 'token expired');
  await ctx.clock.advance(10000);
  ctx.fakes.last.serverOpen();
  assert.equal(ctx.fakes.last.sent[0].token, 'token-2');
});

test('token_expiring is answered with a refresh carrying a new token', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverSend({ type: 'token_expiring', expiresAt: 1, in: 60 });
  await flush();
  assert.deepEqual(ctx.fakes.last.sent.at(-1), { type: 'refresh', token: 'token-2' });
});

test('a silent server is treated as dead after 2.5 heartbeats', async () => {
  const ctx = setup();
  await connect(ctx, { ...CONNECTED, pingInterval: 2 });
  await ctx.clock.advance(4999);
  assert.equal(ctx.client.state, 'connected');
  ctx.fakes.last.serverSend({ type: 'ping' }); // any message re-arms the watchdog
  await ctx.clock.advance(4999);
  assert.equal(ctx.client.state, 'connected');
  await ctx.clock.advance(1);
  assert.equal(ctx.client.state, 'reconnecting');
  assert.equal(ctx.fakes.sockets[0].closedWith.code, 4000);
});

test('backoff grows while failing and resets after a stable connection', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverClose(1013);
  assert.deepEqual(ctx.clock.pending, [500]);
  await ctx.clock.advance(500);
  ctx.fakes.last.serverClose(1006); // failed before opening
  assert.deepEqual(ctx.clock.pending, [1000]);
  await ctx.clock.advance(1000);
  ctx.fakes.last.serverOpen();
  ctx.fakes.last.serverSend({ ...CONNECTED, resumed: true });
  await ctx.clock.advance(10000); // stable
  ctx.fakes.last.serverClose(1012);
  assert.ok(ctx.clock.pending.includes(500), `back to the base: ${ctx.clock.pending}`);
});

test('close() stops for good', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.client.close();
  assert.equal(ctx.client.state, 'closed');
  assert.equal(ctx.fakes.sockets[0].closedWith.code, 1000);
  await ctx.clock.advance(60000);
  assert.equal(ctx.fakes.sockets.length, 1);
});

test('a failing token endpoint is retried with backoff', async () => {
  let calls = 0;
  const ctx = setup({ getToken: async () => { calls += 1; if (calls === 1) throw new Error('503'); return 't'; } });
  ctx.client.connect();
  await flush();
  assert.equal(ctx.client.state, 'reconnecting');
  assert.equal(ctx.fakes.sockets.length, 0);
  await ctx.clock.advance(1000);
  assert.equal(ctx.fakes.sockets.length, 1);
});

test('a connection lost during the replay resumes from the last replayed update, not the head', async () => {
  const ctx = setup();
  await connect(ctx);
  ctx.fakes.last.serverSend({ type: 'update', channel: 'user_Usage_42', seq: 4, cursor: 'e-2:4',
    table: 'usage', data: {} });
  ctx.fakes.last.serverClose(1006);
  await ctx.clock.advance(10000);
  ctx.fakes.last.serverOpen();
  // The server answers with its heads (e-2:9), then replays 5..9; the link dies after 5.
  ctx.fakes.last.serverSend({ ...CONNECTED, resumed: true,
    cursors: { user_Subscription_42: 'e-1:0', user_Usage_42: 'e-2:9' } });
  assert.equal(ctx.client.cursors.user_Usage_42, 'e-2:4', 'the head is not taken before the replay');
  ctx.fakes.last.serverSend({ type: 'update', channel: 'user_Usage_42', seq: 5, cursor: 'e-2:5',
    table: 'usage', data: {} });
  ctx.fakes.last.serverClose(4009);
  await ctx.clock.advance(10000);
  ctx.fakes.last.serverOpen();
  assert.deepEqual(ctx.fakes.last.sent[0].resume, { user_Subscription_42: 'e-1:0', user_Usage_42: 'e-2:5' });
});

test('channels that were not resumed take the cursors of connected', async () => {
  const ctx = setup();
  await connect(ctx, { ...CONNECTED, channels: ['user_Subscription_42'],
    cursors: { user_Subscription_42: 'e-1:0' } });
  ctx.fakes.last.serverClose(1012);
  await ctx.clock.advance(10000);
  ctx.fakes.last.serverOpen();
  ctx.fakes.last.serverSend({ ...CONNECTED, resumed: false });
  assert.deepEqual(ctx.client.cursors, { user_Subscription_42: 'e-1:0', user_Usage_42: 'e-2:0' });
});

test('close() then connect() during a slow token fetch opens one socket, not two', async () => {
  const pending = [];
  const ctx = setup({ getToken: () => new Promise((resolve) => pending.push(resolve)) });
  ctx.client.connect();
  ctx.client.close();
  ctx.client.connect();
  pending.forEach((resolve, i) => resolve(`t${i}`));
  await flush();
  assert.equal(ctx.fakes.sockets.length, 1);
});

function fakeWindow() {
  const target = new EventTarget();
  target.navigator = { onLine: true };
  const added = new Map();
  const add = target.addEventListener.bind(target);
  const remove = target.removeEventListener.bind(target);
  target.addEventListener = (type, fn) => { added.set(type, (added.get(type) || 0) + 1); add(type, fn); };
  target.removeEventListener = (type, fn) => { added.set(type, added.get(type) - 1); remove(type, fn); };
  target.listening = () => [...added.values()].reduce((a, b) => a + b, 0);
  target.go = (type) => {
    target.navigator.onLine = type === 'online';
    target.dispatchEvent(new Event(type));
  };
  return target;
}

function fakeDocument() {
  const doc = new EventTarget();
  doc.visibilityState = 'visible';
  doc.show = (visibility) => {
    doc.visibilityState = visibility;
    doc.dispatchEvent(new Event('visibilitychange'));
  };
  return doc;
}

test('online/offline listeners are added by connect() and removed by close()', async () => {
  const win = fakeWindow();
  const ctx = setup({ eventTarget: win });
  assert.equal(win.listening(), 0, 'creating a client does not touch window');
  await connect(ctx);
  assert.ok(win.listening() > 0);
  ctx.client.close();
  assert.equal(win.listening(), 0);
});

test('a terminal close removes the listeners too', async () => {
  const win = fakeWindow();
  const ctx = setup({ eventTarget: win });
  await connect(ctx);
  ctx.fakes.last.serverClose(4003);
  assert.equal(win.listening(), 0);
});

test('going online reconnects at once instead of waiting out the backoff', async () => {
  const win = fakeWindow();
  const ctx = setup({ eventTarget: win, random: () => 0.99 });
  await connect(ctx);
  ctx.fakes.last.serverClose(1006);
  assert.equal(ctx.fakes.sockets.length, 1);
  win.go('online');
  await flush();
  assert.equal(ctx.fakes.sockets.length, 2);
});

test('offline: no attempts that would only fail and grow the backoff; online resumes', async () => {
  const win = fakeWindow();
  const ctx = setup({ eventTarget: win });
  await connect(ctx);
  win.go('offline');
  ctx.fakes.last.serverClose(1006);
  await ctx.clock.advance(7999);
  assert.equal(ctx.fakes.sockets.length, 1, 'no attempt while offline');
  assert.equal(ctx.client.state, 'reconnecting');
  win.go('online');
  await flush();
  assert.equal(ctx.fakes.sockets.length, 2);
  ctx.fakes.last.serverOpen();
  assert.ok(ctx.fakes.last.sent[0].resume, 'the new connection resumes');
});

test('a socket that lived through an offline spell is replaced when the network returns', async () => {
  const win = fakeWindow();
  const ctx = setup({ eventTarget: win });
  await connect(ctx);
  win.go('offline');
  win.go('online');
  await flush();
  assert.equal(ctx.fakes.sockets[0].closedWith.code, 4000);
  assert.equal(ctx.fakes.sockets.length, 2);
  ctx.fakes.last.serverOpen();
  assert.deepEqual(ctx.fakes.last.sent[0].resume, CONNECTED.cursors);
});

test('a hidden tab stays connected; coming back skips a pending backoff', async () => {
  const page = fakeDocument();
  const ctx = setup({ document: page, random: () => 0.99, backoff: { baseMs: 8000, capMs: 8000 } });
  await connect(ctx);
  page.show('hidden');
  for (let i = 0; i < 30; i++) {
    await ctx.clock.advance(20000);
    ctx.fakes.last.serverSend({ type: 'ping' });
  }
  assert.equal(ctx.fakes.sockets.length, 1);
  assert.equal(ctx.client.state, 'connected');
  ctx.fakes.last.serverClose(1012);
  await ctx.clock.advance(1000);
  assert.equal(ctx.fakes.sockets.length, 1, 'still waiting out a ~7.9 s backoff');
  page.show('visible');
  await flush();
  assert.equal(ctx.fakes.sockets.length, 2);
});

test('offline for longer than the cap: one safety-net attempt per cap, in case online never fires', async () => {
  const win = fakeWindow();
  const ctx = setup({ eventTarget: win });
  await connect(ctx);
  win.go('offline');
  ctx.fakes.last.serverClose(1006);
  await ctx.clock.advance(8000);
  assert.equal(ctx.fakes.sockets.length, 2);
  ctx.fakes.last.serverClose(1006);
  assert.deepEqual(ctx.clock.pending, [8000], 'the backoff did not grow while offline');
});

function fakeFetch(answers) {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push({ url, init });
    const { status = 200, body = {} } = answers.shift();
    return { ok: status >= 200 && status < 300, status, json: async () => body };
  };
  return { fetchImpl, calls };
}

test('default getToken: GET /api/auth/websocket-token with credentials, never cached', async () => {
  const { fetchImpl, calls } = fakeFetch([{ body: { token: 'from-app' } }]);
  const ctx = setup({ getToken: undefined, fetchImpl });
  await connect(ctx);
  assert.equal(calls[0].url, '/api/auth/websocket-token');
  assert.equal(calls[0].init.credentials, 'include');
  assert.equal(calls[0].init.cache, 'no-store');
  assert.deepEqual(ctx.fakes.last.sent[0], { type: 'auth', token: 'from-app' });
});

test('token endpoint 401 (signed out) stops instead of polling it forever', async () => {
  const { fetchImpl, calls } = fakeFetch([{ status: 401 }]);
  const ctx = setup({ getToken: undefined, fetchImpl });
  ctx.client.connect();
  await flush();
  await ctx.clock.advance(120000);
  assert.equal(calls.length, 1);
  assert.equal(ctx.client.state, 'closed');
  assert.equal(ctx.errors[0].status, 401);
  assert.equal(ctx.fakes.sockets.length, 0);
});

test('token endpoint 503 is retried with backoff', async () => {
  const { fetchImpl, calls } = fakeFetch([{ status: 503 }, { body: { token: 'ok' } }]);
  const ctx = setup({ getToken: undefined, fetchImpl });
  ctx.client.connect();
  await flush();
  assert.equal(ctx.client.state, 'reconnecting');
  await ctx.clock.advance(500);
  assert.equal(calls.length, 2);
  assert.equal(ctx.fakes.sockets.length, 1);
});

test('a throwing subscriber does not starve the others, and its error is not swallowed', async (t) => {
  const logged = [];
  t.mock.method(console, 'error', (...args) => logged.push(args));
  const clock = createClock();
  const fakes = createFakeSockets();
  const client = createSocketClient({
    url: 'ws://relay.test/ws', getToken: async () => 't', WebSocketImpl: fakes.FakeWebSocket,
    setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, eventTarget: null,
  });
  const seen = [];
  client.subscribe(() => { throw new Error('component bug'); });
  client.subscribe((u) => seen.push(u.seq));
  client.connect();
  await flush();
  fakes.last.serverOpen();
  fakes.last.serverSend(CONNECTED);
  fakes.last.serverSend({ type: 'update', channel: 'user_Usage_42', seq: 1, cursor: 'e-2:1', table: 'usage', data: {} });
  assert.deepEqual(seen, [1]);
  assert.equal(logged.length, 1, 'with no onError listener it goes to console.error');
  assert.match(String(logged[0][1]), /component bug/);
  client.close();
});

test('state events say why, centrifuge-js style: (state, { state, previous, code, reason })', async () => {
  const ctx = setup();
  const events = [];
  ctx.client.onState((state, event) => events.push([state, event]));
  await connect(ctx);
  ctx.fakes.last.serverClose(1012, 'server restarting');
  await ctx.clock.advance(10000);
  ctx.fakes.last.serverOpen();
  ctx.fakes.last.serverSend({ ...CONNECTED, resumed: true });
  ctx.fakes.last.serverClose(4003, 'forbidden');
  assert.deepEqual(events, [
    ['connecting', { state: 'connecting', previous: 'idle', code: 0, reason: 'connect called' }],
    ['authenticating', { state: 'authenticating', previous: 'connecting', code: 0, reason: 'connect called' }],
    ['connected', { state: 'connected', previous: 'authenticating', code: 0, reason: 'connected' }],
    ['reconnecting', { state: 'reconnecting', previous: 'connected', code: 1012, reason: 'server restarting' }],
    ['authenticating', { state: 'authenticating', previous: 'reconnecting', code: 1012, reason: 'server restarting' }],
    ['connected', { state: 'connected', previous: 'authenticating', code: 0, reason: 'resumed' }],
    ['closed', { state: 'closed', previous: 'connected', code: 4003, reason: 'forbidden' }],
  ]);
  assert.deepEqual(ctx.states, events.map(([state]) => state), 'one-argument listeners still get the string');
});

test('a connection dropped by the client itself is reported with 4000, and close() with 1000', async () => {
  const ctx = setup();
  const events = [];
  ctx.client.onState((state, event) => events.push(event));
  await connect(ctx, { ...CONNECTED, pingInterval: 2 });
  await ctx.clock.advance(5000);
  assert.deepEqual(events.at(-1), { state: 'reconnecting', previous: 'connected', code: 4000, reason: 'heartbeat timeout' });
  assert.deepEqual(ctx.client.lastClose, { code: 4000, reason: 'heartbeat timeout' });
  ctx.client.close();
  assert.deepEqual(events.at(-1), { state: 'closed', previous: 'reconnecting', code: 1000, reason: 'client closed' });
});

test('a state listener that throws does not break the client', async (t) => {
  t.mock.method(console, 'error', () => {});
  const ctx = setup();
  ctx.client.onState(() => { throw new Error('listener bug'); });
  await connect(ctx);
  assert.equal(ctx.client.state, 'connected');
  assert.ok(ctx.errors.some((e) => /listener bug/.test(e.message)));
});

test('a watchdog that fires late (throttled, frozen or asleep page) does not drop a healthy connection', async () => {
  const ctx = setup();
  await connect(ctx, { ...CONNECTED, pingInterval: 20 });
  // The page stalls for two minutes: no timer runs, then the watchdog fires 70 s late, with
  // the server's ping still queued behind it.
  ctx.clock.sleep(120000);
  await ctx.clock.advance(0);
  assert.equal(ctx.client.state, 'connected');
  ctx.fakes.last.serverSend({ type: 'ping' });
  await ctx.clock.advance(49999);
  assert.equal(ctx.client.state, 'connected');
  assert.equal(ctx.fakes.sockets.length, 1);
  assert.equal(ctx.fakes.last.closedWith, null);
});

test('after a late watchdog, a server that stays silent for another heartbeat is given up', async () => {
  const ctx = setup();
  await connect(ctx, { ...CONNECTED, pingInterval: 20 });
  ctx.clock.sleep(120000);
  await ctx.clock.advance(0);
  await ctx.clock.advance(24999);
  assert.equal(ctx.client.state, 'connected');
  await ctx.clock.advance(1);
  assert.equal(ctx.client.state, 'reconnecting');
  assert.equal(ctx.fakes.sockets[0].closedWith.code, 4000);
});

test('a tab shown again after sleep replaces a connection that heard nothing, at once, resuming', async () => {
  const page = fakeDocument();
  const ctx = setup({ document: page });
  await connect(ctx, { ...CONNECTED, pingInterval: 20 });
  page.show('hidden');
  ctx.clock.sleep(30000); // the machine slept; the socket still looks open
  page.show('visible');
  await flush();
  assert.deepEqual(ctx.fakes.sockets[0].closedWith, { code: 4000, reason: 'stale after sleep' });
  assert.equal(ctx.fakes.sockets.length, 2, 'no backoff wait');
  ctx.fakes.last.serverOpen();
  assert.deepEqual(ctx.fakes.last.sent[0].resume, CONNECTED.cursors);
});

test('a tab shown again with a connection that heard from the server lately keeps it', async () => {
  const page = fakeDocument();
  const ctx = setup({ document: page });
  await connect(ctx, { ...CONNECTED, pingInterval: 20 });
  page.show('hidden');
  await ctx.clock.advance(19000);
  ctx.fakes.last.serverSend({ type: 'ping' });
  await ctx.clock.advance(19000);
  page.show('visible');
  await flush();
  assert.equal(ctx.fakes.sockets.length, 1);
  assert.equal(ctx.client.state, 'connected');
});

test('resumeFrom: a connection taken over from another tab starts as a reconnect from its cursors', async () => {
  const ctx = setup({ resumeFrom: { cursors: { user_Usage_42: 'e-2:7' }, wasConnected: true,
    cause: { code: 0, reason: 'leader changed' } } });
  await connect(ctx);
  assert.deepEqual(ctx.fakes.last.sent[0], { type: 'auth', token: 'token-1', resume: { user_Usage_42: 'e-2:7' } });
  assert.equal(ctx.states[0], 'reconnecting');
});
