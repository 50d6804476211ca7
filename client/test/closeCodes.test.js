import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CLOSE_CODE, CLOSE_CODES } from '../src/closeCodes.js';
import { reconnectPolicy } from '../src/reconnectPolicy.js';

test('terminal and client-bug codes do not reconnect', () => {
  for (const code of [4003, 1002, 1003, 1007, 1009]) assert.equal(reconnectPolicy(code), 'no');
});

test('transient codes reconnect, 4001 fetches a new token', () => {
  for (const code of [1001, 1006, 1011, 1012, 1013, 4000, 4008, 4009, 4010, 4011]) {
    assert.equal(reconnectPolicy(code), 'yes', String(code));
  }
  assert.equal(reconnectPolicy(4001), 'new-token');
});

test('the client closes a stale connection with the table\'s 4000, named STALE_CONNECTION', () => {
  assert.equal(CLOSE_CODE.STALE_CONNECTION, 4000);
  assert.deepEqual(Object.entries(CLOSE_CODE), CLOSE_CODES.map((entry) => [entry.name, entry.code]));
});

test('every relay close code has a reason under 123 bytes', () => {
  for (const entry of CLOSE_CODES) assert.ok(new TextEncoder().encode(entry.reason).length < 123);
});

// docs/protocol.md is what app developers read; the Python suite pins closeCodes.js to the
// Python table, this pins the table to the doc (skipped when the package is used on its own).
test('the table says what docs/protocol.md says: same codes, same advice', async (t) => {
  const { readFile } = await import('node:fs/promises');
  let doc;
  try {
    doc = await readFile(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
  } catch {
    t.skip('docs/protocol.md is not next to this package');
    return;
  }
  const section = doc.split(/^## Close codes$/m)[1].split(/^## /m)[0];
  const rows = [...section.matchAll(/^\| (\d{4}) \| [^|]+ \| ([^|]+) \|$/gm)]
    .map(([, code, advice]) => [Number(code), advice.trim()]);
  assert.ok(rows.length >= 10, 'found the close-code table');
  const expected = (advice) => {
    if (/new token/.test(advice)) return 'new-token';
    if (/^(do not|not) reconnect|^fix the client/.test(advice)) return 'no';
    return 'yes';
  };
  assert.deepEqual(rows.map(([code]) => code), CLOSE_CODES.map((entry) => entry.code));
  for (const [code, advice] of rows) {
    assert.equal(reconnectPolicy(code), expected(advice), `${code}: "${advice}"`);
  }
});
