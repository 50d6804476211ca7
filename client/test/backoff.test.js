import assert from 'node:assert/strict';
import { test } from 'node:test';

import { createBackoff } from '../src/backoff.js';

test('full jitter stays within [0, min(cap, base * 2^n))', () => {
  for (const r of [0, 0.25, 0.999999]) {
    const backoff = createBackoff({ baseMs: 100, capMs: 1000, random: () => r });
    const waits = Array.from({ length: 8 }, () => backoff.next());
    const ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
    waits.forEach((wait, i) => {
      assert.ok(wait >= 0 && wait < ceilings[i], `wait ${wait} for attempt ${i}`);
      assert.equal(wait, Math.floor(r * ceilings[i]));
    });
  }
});

test('random waits are spread, not all equal', () => {
  const backoff = createBackoff({ baseMs: 1000, capMs: 1000 });
  const waits = new Set(Array.from({ length: 50 }, () => backoff.next()));
  assert.ok(waits.size > 10);
});

test('reset starts again from the base', () => {
  const backoff = createBackoff({ baseMs: 100, capMs: 10000, random: () => 0.5 });
  backoff.next();
  backoff.next();
  backoff.next();
  assert.equal(backoff.attempt, 3);
  backoff.reset();
  assert.equal(backoff.next(), 50);
});
