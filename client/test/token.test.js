import assert from 'node:assert/strict';
import { test } from 'node:test';

import { tokenClaims } from '../src/token.js';
import { jwtFor } from './fakes.js';

test('reads userId (as a string) and exp from a JWT without verifying it', () => {
  assert.deepEqual(tokenClaims(jwtFor('42', { exp: 100 })), { userId: '42', exp: 100 });
  assert.deepEqual(tokenClaims(jwtFor(42, { exp: 100 })), { userId: '42', exp: 100 });
  // base64url with the characters base64 spells + and /
  assert.equal(tokenClaims(jwtFor('a>b?c~~~'))?.userId, 'a>b?c~~~');
  assert.equal(tokenClaims(jwtFor('Zoë'))?.userId, 'Zoë');
});

test('anything else is nobody\'s: no sharing for it', () => {
  for (const token of [undefined, '', 'opaque', 'a.b', 'a.!!!.c', jwtFor(''), jwtFor(null), jwtFor({ id: 1 })]) {
    assert.equal(tokenClaims(token), null, String(token));
  }
});
