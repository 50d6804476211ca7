// Tabs sharing one connection, simulated in one process: each "tab" is a client with its own
// getToken and document, all on one BroadcastChannel hub, one lock manager and one relay made
// of fake sockets. The real thing runs in headless Chromium (tests/test_browser_tabs.py).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createRealtimeClient } from '../src/client.js';
import {
  CONNECTED, createBroadcastHub, createClock, createFakeSockets, createLockManager, jwtFor, settle,
} from './fakes.js';

function fakeDocument() {
  const doc = new EventTarget();
  doc.visibilityState = 'visible';
  doc.fire = (type, visibility) => {
    if (visibility) doc.visibilityState = visibility;
    doc.dispatchEvent(new Event(type));
  };
  return doc;
}

function world({ locks = createLockManager() } = {}) {
  const clock = createClock();
  const hub = createBroadcastHub();
  const relay = createFakeSockets();
  const tabs = [];

  function tab(userId, extra = {}) {
    const t = { userId, updates: [], states: [], resyncs: [], errors: [], tokenCalls: 0, page: fakeDocument() };
    t.client = createRealtimeClient({
      url: 'ws://relay.test/ws',
      getToken: async () => {
        t.tokenCalls += 1;
        if (t.refuse) throw Object.assign(new Error('401'), { status: t.refuse });
        return t.token ?? jwtFor(t.userId, { n: t.tokenCalls });
      },
      WebSocketImpl: relay.FakeWebSocket,
      BroadcastChannelImpl: hub.FakeBroadcastChannel,
      locks,
      setTimeout: clock.setTimeout,
      clearTimeout: clock.clearTimeout,
      now: clock.now,
      random: () => 0.5,
      backoff: { baseMs: 1000, capMs: 8000 },
      eventTarget: null,
      document: t.page,
      ...extra,
    });
    t.client.subscribe((u) => t.updates.push(`${u.channel}#${u.seq}`));
    t.client.onState((s) => t.states.push(s));
    t.client.onResync((r) => t.resyncs.push(r));
    t.client.onError((e) => t.errors.push(e));
    tabs.push(t);
    return t;
  }

  const open = () => relay.sockets.filter((s) => s.readyState !== 3);

  // The relay's side of the newest socket: accept it for `userId`, as `connected` says.
  async function accept(userId, { resumed = false, seq = 0 } = {}) {
    await settle();
    const socket = open().at(-1);
    socket.serverOpen();
    socket.userId = userId;
    socket.serverSend({ ...CONNECTED, userId, resumed,
      channels: [`user_Subscription_${userId}`, `user_Usage_${userId}`],
      cursors: { [`user_Subscription_${userId}`]: `e:${seq}`, [`user_Usage_${userId}`]: `e:${seq}` } });
    await settle();
    await settle();
    return socket;
  }

  function update(socket, seq, channel = `user_Subscription_${socket.userId}`) {
    socket.serverSend({ type: 'update', table: 'subscription', channel, seq, cursor: `e:${seq}`, data: { seq } });
  }

  async function until(predicate, what) {
    for (let i = 0; i < 50; i++) {
      if (predicate()) return;
      await settle();
    }
    assert.fail(`never: ${what}`);
  }

  return { clock, hub, relay, tabs, tab, open, accept, update, until, settle };
}

async function threeTabs(w, userId = '42') {
  const tabs = [w.tab(userId), w.tab(userId), w.tab(userId)];
  for (const t of tabs) t.client.connect();
  await w.until(() => w.relay.sockets.length === 1, 'one socket');
  const socket = await w.accept(userId);
  await w.until(() => tabs.every((t) => t.client.state === 'connected'), 'all connected');
  return { tabs, socket };
}

const roles = (tabs) => tabs.map((t) => t.client.role).sort();

test('three tabs of one user share one socket; an update reaches each tab once', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  assert.equal(w.relay.sockets.length, 1);
  assert.deepEqual(roles(tabs), ['follower', 'follower', 'leader']);
  w.update(socket, 1);
  await w.until(() => tabs.every((t) => t.updates.length === 1), 'update everywhere');
  await w.settle();
  for (const t of tabs) assert.deepEqual(t.updates, ['user_Subscription_42#1']);
  assert.equal(tabs[0].tokenCalls, 1, 'the token that found the group opened the socket');
  for (const t of tabs) assert.deepEqual(t.client.cursors, { user_Subscription_42: 'e:1', user_Usage_42: 'e:0' });
});

test('the leader closes: another tab leads, resumes from the cursors, and nothing is lost or doubled', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  const leader = tabs.find((t) => t.client.role === 'leader');
  const rest = tabs.filter((t) => t !== leader);
  w.update(socket, 1);
  w.update(socket, 2);
  await w.until(() => rest.every((t) => t.updates.length === 2), 'two updates');
  leader.client.close();
  assert.equal(socket.closedWith.code, 1000);
  await w.until(() => w.relay.sockets.length === 2, 'a new socket');
  const next = await w.settle().then(() => w.relay.last);
  next.serverOpen();
  assert.deepEqual(next.sent[0].resume, { user_Subscription_42: 'e:2', user_Usage_42: 'e:0' });
  next.userId = '42';
  next.serverSend({ ...CONNECTED, resumed: true, cursors: { user_Subscription_42: 'e:4', user_Usage_42: 'e:0' } });
  // The replay: the two updates committed during the hand-over, and (as if still in flight
  // from the old leader) update 2 again.
  w.update(next, 2);
  w.update(next, 3);
  w.update(next, 4);
  await w.until(() => rest.every((t) => t.updates.length === 4), 'the replay everywhere');
  await w.settle();
  for (const t of rest) {
    assert.deepEqual(t.updates, [1, 2, 3, 4].map((n) => `user_Subscription_42#${n}`));
    assert.deepEqual(t.resyncs, []);
    assert.equal(t.client.state, 'connected');
  }
  assert.deepEqual(roles(rest), ['follower', 'leader']);
  assert.equal(w.open().length, 1);
});

test('a hand-over to another relay instance: one resync, reported once in each tab', async () => {
  const w = world();
  const { tabs } = await threeTabs(w);
  tabs.find((t) => t.client.role === 'leader').client.close();
  const rest = tabs.filter((t) => t.client.role !== 'none');
  await w.until(() => w.relay.sockets.length === 2, 'a new socket');
  await w.settle();
  const next = w.relay.last;
  next.serverOpen();
  next.serverSend({ ...CONNECTED, resumed: false, cursors: { user_Subscription_42: 'f:0', user_Usage_42: 'f:0' } });
  next.serverSend({ type: 'resync', reason: 'history unavailable', channels: ['user_Subscription_42', 'user_Usage_42'],
    cursors: { user_Subscription_42: 'f:0', user_Usage_42: 'f:0' } });
  await w.until(() => rest.every((t) => t.resyncs.length === 1), 'the resync everywhere');
  await w.settle();
  for (const t of rest) {
    assert.deepEqual(t.resyncs, [{ reason: 'history unavailable', channels: ['user_Subscription_42', 'user_Usage_42'] }]);
    assert.deepEqual(t.client.cursors, { user_Subscription_42: 'f:0', user_Usage_42: 'f:0' });
  }
});

test('tabs of two users never share: two sockets, and each sees only its own updates', async () => {
  const w = world();
  const a = [w.tab('ann'), w.tab('ann')];
  const b = [w.tab('bob'), w.tab('bob')];
  a[0].client.connect();
  await w.until(() => w.relay.sockets.length === 1, 'ann socket');
  const annSocket = await w.accept('ann');
  b[0].client.connect();
  await w.until(() => w.relay.sockets.length === 2, 'bob socket');
  const bobSocket = await w.accept('bob');
  a[1].client.connect();
  b[1].client.connect();
  await w.until(() => [...a, ...b].every((t) => t.client.state === 'connected'), 'all connected');
  assert.equal(w.relay.sockets.length, 2);
  w.update(annSocket, 1);
  w.update(bobSocket, 1);
  await w.until(() => [...a, ...b].every((t) => t.updates.length === 1), 'one update each');
  await w.settle();
  for (const t of a) assert.deepEqual(t.updates, ['user_Subscription_ann#1']);
  for (const t of b) assert.deepEqual(t.updates, ['user_Subscription_bob#1']);
});

test('a leader whose token now names another user moves to that user; the others take over', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  const leader = tabs.find((t) => t.client.role === 'leader');
  const rest = tabs.filter((t) => t !== leader);
  leader.userId = 'eve'; // signed in as someone else, in this tab only
  socket.serverClose(1012, 'server restarting');
  await w.clock.advance(1000);
  await w.until(() => w.relay.sockets.length === 3, 'eve\'s socket and the takeover');
  await w.settle();
  // Whichever opened first, the old user's socket resumes, the new user's does not.
  const [x, y] = w.relay.sockets.slice(1);
  x.serverOpen();
  y.serverOpen();
  const eve = [x, y].find((s) => !s.sent[0].resume);
  const ann = [x, y].find((s) => s.sent[0].resume);
  assert.ok(eve && ann, 'one fresh socket for eve, one resuming socket for 42');
  eve.userId = 'eve';
  ann.userId = '42';
  eve.serverSend({ ...CONNECTED, userId: 'eve', channels: ['user_Subscription_eve'], cursors: { user_Subscription_eve: 'e:0' } });
  ann.serverSend({ ...CONNECTED, resumed: true, cursors: { user_Subscription_42: 'e:0', user_Usage_42: 'e:0' } });
  w.update(ann, 1);
  w.update(eve, 1);
  await w.until(() => [leader, ...rest].every((t) => t.updates.length === 1), 'one update each');
  await w.settle();
  assert.deepEqual(leader.updates, ['user_Subscription_eve#1']);
  for (const t of rest) assert.deepEqual(t.updates, ['user_Subscription_42#1']);
  assert.deepEqual(leader.resyncs, [{ reason: 'user changed', channels: ['user_Subscription_eve'] }]);
  assert.equal(leader.client.role, 'leader');
  assert.deepEqual(roles(rest), ['follower', 'leader']);
});

test('a follower checks its user when the server asks for a new token, and moves if it changed', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  const follower = tabs.find((t) => t.client.role === 'follower');
  follower.userId = 'eve';
  socket.serverSend({ type: 'token_expiring', expiresAt: 1, in: 60 });
  await w.until(() => w.relay.sockets.length === 2, 'eve\'s socket');
  const eve = await w.accept('eve');
  w.update(socket, 1);
  w.update(eve, 1);
  await w.until(() => tabs.every((t) => t.updates.length === 1), 'one update each');
  await w.settle();
  assert.deepEqual(follower.updates, ['user_Subscription_eve#1']);
  for (const t of tabs.filter((x) => x !== follower)) assert.deepEqual(t.updates, ['user_Subscription_42#1']);
  assert.ok(socket.sent.some((m) => m.type === 'refresh'), 'the leader refreshed its own token');
});

test('a terminal close (4003) stops every tab of the user, each reporting it', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  socket.serverClose(4003, 'forbidden');
  await w.until(() => tabs.every((t) => t.client.state === 'closed'), 'all closed');
  await w.clock.advance(60000);
  assert.equal(w.relay.sockets.length, 1);
  for (const t of tabs) {
    assert.equal(t.errors.length, 1);
    assert.deepEqual(t.client.lastClose, { code: 4003, reason: 'forbidden' });
  }
});

test('the leader signed out (token endpoint 401): only that tab stops, another leads', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  const leader = tabs.find((t) => t.client.role === 'leader');
  leader.refuse = 401;
  socket.serverClose(4001, 'token expired');
  await w.clock.advance(1000);
  await w.until(() => w.relay.sockets.length === 2, 'the takeover');
  await w.accept('42', { resumed: true });
  await w.until(() => tabs.filter((t) => t !== leader).every((t) => t.client.state === 'connected'), 'rest connected');
  assert.equal(leader.client.state, 'closed');
  assert.equal(leader.errors[0].status, 401);
  assert.deepEqual(roles(tabs.filter((t) => t !== leader)), ['follower', 'leader']);
});

test('where tabs cannot share, each has its own socket: no BroadcastChannel, share: false, opaque tokens', async () => {
  for (const extra of [{ BroadcastChannelImpl: null }, { share: false }, { opaque: true }]) {
    const w = world();
    const tabs = [w.tab('42', extra.opaque ? {} : extra), w.tab('42', extra.opaque ? {} : extra)];
    if (extra.opaque) for (const t of tabs) t.token = 'not-a-jwt';
    for (const t of tabs) t.client.connect();
    await w.until(() => w.relay.sockets.length === 2, `two sockets (${JSON.stringify(extra)})`);
    for (const s of w.relay.sockets) {
      s.serverOpen();
      s.userId = '42';
      s.serverSend(CONNECTED);
      w.update(s, 1);
    }
    await w.settle();
    for (const t of tabs) {
      assert.equal(t.client.role, 'single');
      assert.deepEqual(t.updates, ['user_Subscription_42#1']);
    }
  }
});

test('without Web Locks the tabs elect over BroadcastChannel: one socket, and a quick takeover', async () => {
  const w = world({ locks: null });
  const tabs = [1, 2, 3].map((n) => w.tab('42', { random: () => n / 10 }));
  for (const t of tabs) t.client.connect();
  await w.settle();
  await w.clock.advance(300);
  await w.until(() => w.relay.sockets.length >= 1, 'a socket');
  await w.clock.advance(2000);
  await w.settle();
  assert.equal(w.open().length, 1, 'one leader, whatever the first claims were');
  await w.accept('42');
  await w.until(() => tabs.every((t) => t.client.state === 'connected'), 'all connected');
  assert.deepEqual(roles(tabs), ['follower', 'follower', 'leader']);
  const before = w.relay.sockets.length;
  tabs.find((t) => t.client.role === 'leader').client.close();
  await w.settle();
  // The goodbye: no need to wait for the lease (3 s). Two tabs that claim at once hear
  // each other and one steps back.
  await w.clock.advance(100);
  await w.until(() => w.relay.sockets.length > before && w.open().length === 1, 'the takeover');
  assert.deepEqual(roles(tabs).filter((r) => r !== 'none'), ['follower', 'leader']);
});

test('a frozen leader hands over at once and follows when it runs again', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  const leader = tabs.find((t) => t.client.role === 'leader');
  leader.page.fire('freeze');
  assert.equal(socket.closedWith.code, 1000);
  await w.until(() => w.relay.sockets.length === 2, 'the takeover');
  const next = await w.accept('42', { resumed: true });
  leader.page.fire('resume');
  await w.settle();
  await w.settle();
  assert.equal(leader.client.role, 'follower');
  w.update(next, 1);
  await w.until(() => tabs.every((t) => t.updates.length === 1), 'the update everywhere');
  assert.equal(w.open().length, 1);
});

test('a follower shown again after sleep makes the leader replace a silent connection', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  const follower = tabs.find((t) => t.client.role === 'follower');
  w.clock.sleep(60000);
  follower.page.fire('visibilitychange', 'visible');
  await w.until(() => w.relay.sockets.length === 2, 'a new socket');
  assert.deepEqual(socket.closedWith, { code: 4000, reason: 'stale after sleep' });
});

test('a tab that missed updates (frozen while they were dropped) is told to refetch', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  w.update(socket, 1);
  await w.until(() => tabs.every((t) => t.updates.length === 1), 'first update');
  w.update(socket, 3); // update 2 never reached any tab
  await w.until(() => tabs.every((t) => t.updates.length === 2), 'third update');
  for (const t of tabs) assert.deepEqual(t.resyncs, [{ reason: 'missed updates', channels: ['user_Subscription_42'] }]);
});

test('close() then connect() as another user: the other user\'s group, no old cursors, one "user changed"', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  const follower = tabs.find((t) => t.client.role === 'follower');
  w.update(socket, 1);
  await w.until(() => follower.updates.length === 1, 'update');
  follower.client.close();
  follower.userId = 'eve';
  follower.client.connect();
  await w.until(() => w.relay.sockets.length === 2, 'eve\'s socket');
  await w.accept('eve');
  await w.until(() => follower.client.state === 'connected', 'eve connected');
  assert.deepEqual(Object.keys(follower.client.cursors).sort(), ['user_Subscription_eve', 'user_Usage_eve']);
  assert.deepEqual(follower.resyncs, [{ reason: 'user changed', channels: ['user_Subscription_eve', 'user_Usage_eve'] }]);
});

test('a follower that left and rejoins its group is told to refetch what it missed', async () => {
  const w = world();
  const { tabs, socket } = await threeTabs(w);
  const follower = tabs.find((t) => t.client.role === 'follower');
  follower.client.close();
  w.update(socket, 1); // missed by the closed tab
  follower.client.connect();
  await w.until(() => follower.client.state === 'connected', 'connected again');
  assert.deepEqual(follower.resyncs, [{ reason: 'reconnected', channels: ['user_Subscription_42', 'user_Usage_42'] }]);
  assert.deepEqual(follower.updates, []);
});
