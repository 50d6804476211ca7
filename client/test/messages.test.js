import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MESSAGE_TYPE } from '../src/messages.js';

// The doc is what server and app developers read: every type in its two message tables is a
// named constant here, and nothing else is (skipped when the package is used on its own).
test('MESSAGE_TYPE names exactly the types of docs/protocol.md', async (t) => {
  const { readFile } = await import('node:fs/promises');
  let doc;
  try {
    doc = await readFile(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
  } catch {
    t.skip('docs/protocol.md is not next to this package');
    return;
  }
  const types = new Set();
  for (const heading of ['## Server → client', '## Client → server']) {
    const section = doc.split(heading)[1].split(/^## /m)[0];
    for (const [, cell] of section.matchAll(/^\| (.+?) \| .+ \|$/gm)) {
      if (cell === 'message' || /^-+$/.test(cell)) continue;
      const json = cell.match(/"type":\s*"(\w+)"/);
      types.add(json ? json[1] : cell.replace(/`/g, ''));
    }
  }
  assert.deepEqual([...types].sort(), Object.values(MESSAGE_TYPE).sort());
});

test('the constants are frozen', () => {
  assert.throws(() => { MESSAGE_TYPE.UPDATE = 'x'; }, TypeError);
});
