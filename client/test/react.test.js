// The hook itself is thin (store.js holds the logic, store.test.js tests it) and is mounted
// for real in headless Chromium by tests/test_client_js.py. Here: what Next.js does on the
// server — render without effects, without window, without opening anything.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import React from 'react';
import { renderToString } from 'react-dom/server';

import { useRealtimeUpdates, useWebSocketUpdates } from '../src/react.js';
import { createSharedStore } from '../src/store.js';

test('server rendering reports not connected, no subscribers, and creates no client', () => {
  let made = 0;
  const store = createSharedStore(() => { made += 1; throw new Error('no client on the server'); });
  let seen = null;
  function Widget() {
    seen = useWebSocketUpdates(() => {}, { store });
    return React.createElement('p', null, String(seen.isConnected));
  }
  assert.equal(renderToString(React.createElement(Widget)), '<p>false</p>');
  assert.deepEqual(seen, { isConnected: false, subscriberCount: 0 });
  assert.equal(made, 0);
});

test('useRealtimeUpdates is the same hook (drop-in for the old name)', () => {
  assert.equal(useRealtimeUpdates, useWebSocketUpdates);
});
