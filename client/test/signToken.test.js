// test-support/sign-token.mjs is how the Python suite gets a token signed by Node's
// jsonwebtoken; it must sign exactly like the app's endpoint, and refuse half a command line.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

import jwt from 'jsonwebtoken';

const script = fileURLToPath(new URL('../test-support/sign-token.mjs', import.meta.url));
const SECRET = 'x'.repeat(32);
const run = (...args) => spawnSync(process.execPath, [script, ...args], { encoding: 'utf8' });

test('signs { userId } for papr-app → papr-realtime, HS256, one hour', () => {
  const result = run('--user-id', '42', '--secret', SECRET);
  assert.equal(result.status, 0, result.stderr);
  const claims = jwt.verify(result.stdout.trim(), SECRET, {
    algorithms: ['HS256'], issuer: 'papr-app', audience: 'papr-realtime',
  });
  assert.equal(claims.userId, '42');
  assert.equal(claims.exp - claims.iat, 3600);
});

test('a missing or valueless flag is a usage error, not a token signed with the wrong secret', () => {
  for (const args of [['--user-id', '42'], ['--user-id', '42', '--secret'],
    ['--secret', SECRET, '--user-id', '--x'], ['--user', '42', '--secret', SECRET]]) {
    const result = run(...args);
    assert.equal(result.status, 2, args.join(' '));
    assert.equal(result.stdout, '');
  }
});
