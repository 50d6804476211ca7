import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createCursorBook } from '../src/cursors.js';

const update = (seq, epoch = 'e', channel = 'c') => ({ type: 'update', table: 't', channel, seq, cursor: `${epoch}:${seq}`, data: null });

test('in order: new; again or older: duplicate; a jump: gap (delivered, cursor moves)', () => {
  const book = createCursorBook();
  assert.equal(book.accept(update(1)), 'new');
  assert.equal(book.accept(update(2)), 'new');
  assert.equal(book.accept(update(2)), 'duplicate');
  assert.equal(book.accept(update(1)), 'duplicate');
  assert.equal(book.accept(update(5)), 'gap');
  assert.equal(book.accept(update(6)), 'new');
  assert.deepEqual(book.snapshot(), { c: 'e:6' });
});

test('another epoch starts afresh; channels are independent; no cursor means no verdict', () => {
  const book = createCursorBook();
  book.accept(update(9));
  assert.equal(book.accept(update(1, 'f')), 'new');
  assert.equal(book.accept(update(4, 'f', 'd')), 'new');
  assert.equal(book.accept({ ...update(1), cursor: undefined }), 'new');
  assert.deepEqual(book.snapshot(), { c: 'f:1', d: 'f:4' });
});

test('adopt: only missing channels, unless replacing (a resync), where null forgets', () => {
  const book = createCursorBook();
  book.accept(update(7));
  book.adopt({ c: 'e:3', d: 'e:1' });
  assert.deepEqual(book.snapshot(), { c: 'e:7', d: 'e:1' });
  book.adopt({ c: 'e:3', d: null }, { replace: true });
  assert.deepEqual(book.snapshot(), { c: 'e:3' });
  assert.equal(book.accept(update(4)), 'new');
  book.clear();
  assert.deepEqual(book.snapshot(), {});
});

test('durable cursors "<epoch>:<seq>:<tag>": the same verdicts, the tag does not count', () => {
  const book = createCursorBook();
  const durable = (seq, tag) => ({ ...update(seq), cursor: `a1b2c3d4e5f6:${seq}:${tag}` });
  assert.equal(book.accept(durable(1, '00000011')), 'new');
  assert.equal(book.accept(durable(2, '9f2c01ab')), 'new');
  assert.equal(book.accept(durable(2, '9f2c01ab')), 'duplicate');
  assert.equal(book.accept(durable(1, '00000011')), 'duplicate');
  assert.equal(book.accept(durable(4, '00000099')), 'gap');
  assert.equal(book.accept(update(1, 'memory-1')), 'new'); // another epoch: afresh
  assert.deepEqual(book.snapshot(), { c: 'memory-1:1' });
});
