import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CLOSE_CODES } from '../src/closeCodes.js';
import { reconnectPolicy } from '../src/reconnectPolicy.js';

test('terminal and client-bug codes do not reconnect', () => {
  for (const code of [4003, 1002, 1003, 1007, 1009]) assert.equal(reconnectPolicy(code), 'no');
});

test('transient codes reconnect, 4001 fetches a new token', () => {
  for (const code of [1001, 1006, 1011, 1012, 1013, 4008, 4009, 4010, 4011]) {
    assert.equal(reconnectPolicy(code), 'yes', String(code));
  }
  assert.equal(reconnectPolicy(4001), 'new-token');
});

test('every relay close code has a reason under 123 bytes', () => {
  for (const entry of CLOSE_CODES) assert.ok(new TextEncoder().encode(entry.reason).length < 123);
});
