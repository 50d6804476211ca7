import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createSharedStore } from '../src/store.js';

function fakeClient() {
  const listeners = new Set();
  return {
    state: 'idle', connects: 0, closes: 0,
    connect() { this.connects += 1; this.state = 'connected'; for (const l of listeners) l('connected'); },
    close() { this.closes += 1; this.state = 'closed'; },
    onState(cb) { listeners.add(cb); return () => listeners.delete(cb); },
  };
}

test('all subscribers share one client; subscriberCount counts them', async () => {
  const made = [];
  const store = createSharedStore(() => { const c = fakeClient(); made.push(c); return c; },
    { graceMs: 10 });
  const seen = [];
  store.watch((s) => seen.push(s));
  store.acquire();
  store.acquire();
  store.acquire();
  assert.equal(made.length, 1);
  assert.equal(made[0].connects, 1);
  assert.deepEqual(store.snapshot(), { isConnected: true, subscriberCount: 3 });
  store.release();
  assert.equal(store.snapshot().subscriberCount, 2);
  store.release();
  store.release();
  assert.equal(made[0].closes, 0, 'closed only after the grace period');
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(made[0].closes, 1);
  assert.deepEqual(store.snapshot(), { isConnected: false, subscriberCount: 0 });
});

test('a remount within the grace period keeps the connection', async () => {
  const made = [];
  const store = createSharedStore(() => { const c = fakeClient(); made.push(c); return c; },
    { graceMs: 20 });
  store.acquire();
  store.release();
  store.acquire();
  await new Promise((r) => setTimeout(r, 40));
  assert.equal(made.length, 1);
  assert.equal(made[0].closes, 0);
});

test('the snapshot keeps its identity until something changes (useSyncExternalStore needs that)', () => {
  const store = createSharedStore(fakeClient, { graceMs: 10 });
  const before = store.snapshot();
  assert.equal(store.snapshot(), before);
  store.acquire();
  const after = store.snapshot();
  assert.notEqual(after, before);
  assert.equal(store.snapshot(), after);
  assert.deepEqual(after, { isConnected: true, subscriberCount: 1 });
  store.release();
});

test('a client stopped by a terminal close gets one new attempt when a component mounts', () => {
  const made = [];
  const store = createSharedStore(() => { const c = fakeClient(); made.push(c); return c; });
  store.acquire();
  made[0].state = 'closed'; // e.g. the token endpoint said 401: signed out
  store.acquire();
  assert.equal(made.length, 1);
  assert.equal(made[0].connects, 2);
  store.release();
  store.release();
});
