// Drives headless Chromium (Debian's binary, never a downloaded one) through the example
// Next.js app the way a person would, for tests/test_nextjs_example.py:
// sign in as USER_ID, wait for relay's connection, click "Change plan", wait for the update.
// Prints one JSON line: what the page showed and every WebSocket frame it received.
// playwright-core comes from client/node_modules (the client's test dependency).
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const require = createRequire(join(import.meta.dirname, '..', 'client', 'package.json'));
const { chromium } = require('playwright-core');

const { APP_URL, USER_ID, CHROMIUM } = process.env;
const profile = mkdtempSync(join(tmpdir(), 'relay-nextjs-e2e-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const page = context.pages()[0] || await context.newPage();
const logs = [];
const frames = [];
page.on('console', (msg) => logs.push(msg.text()));
page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
page.on('websocket', (ws) => ws.on('framereceived', (frame) => frames.push(String(frame.payload))));
const text = (id) => page.getByTestId(id).textContent();
const until = (id, value, timeout = 20000) => page.waitForFunction(
  ([id, value]) => document.querySelector(`[data-testid="${id}"]`)?.textContent === value,
  [id, value], { timeout, polling: 20 });

const result = { ok: false };
try {
  await page.goto(`${APP_URL}/login`);
  await page.getByLabel('User id').fill(USER_ID);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(`${APP_URL}/`);
  result.heading = await page.getByRole('heading').textContent();
  await until('connection', 'connected');
  result.planBefore = await text('plan');
  result.updatesBefore = await text('updates');
  const clicked = Date.now();
  await page.getByRole('button', { name: 'Change plan' }).click();
  await until('updates', '1');
  result.clickToUpdateMs = Date.now() - clicked;
  result.planAfter = await text('plan');
  result.ok = true;
} catch (error) {
  result.error = String(error);
  result.logs = logs.slice(-20);
}
result.frames = frames;
process.stdout.write(`${JSON.stringify(result)}\n`);
await context.close();
rmSync(profile, { recursive: true, force: true });
