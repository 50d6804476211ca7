// Drives headless Chromium (Debian's binary, never a downloaded one) through relay's /demo
// page, one step per line on stdin, answering one JSON line per step on stdout:
//   {"step":"serve","url":…,"body":…,"contentType":…} | {"step":"open","url":…} | {"step":"wait","expr":…,"timeoutMs":…} | {"step":"eval","expr":…}
//   | {"step":"close"}
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const profile = mkdtempSync(join(tmpdir(), 'relay-e2e-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  bypassCSP: true, // lets the driver evaluate its checks; the page itself keeps its CSP
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
    // Pages answered by page.route() count as public; let them reach relay on loopback.
    '--disable-features=LocalNetworkAccessChecks'],
});
const page = context.pages()[0] || await context.newPage();
const logs = [];
page.on('console', (msg) => logs.push(msg.text()));
page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));

const reply = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  try {
    if (cmd.step === 'serve') {
      // Answer this URL from the test itself (the page stays on relay's origin).
      await page.route(cmd.url, (route) => route.fulfill({ body: cmd.body, contentType: cmd.contentType }));
      reply({ ok: true });
    } else if (cmd.step === 'open') {
      await page.goto(cmd.url);
      reply({ ok: true });
    } else if (cmd.step === 'wait') {
      const started = Date.now();
      await page.waitForFunction(cmd.expr, null, { timeout: cmd.timeoutMs || 10000, polling: 20 });
      reply({ ok: true, ms: Date.now() - started });
    } else if (cmd.step === 'eval') {
      reply({ ok: true, value: await page.evaluate(cmd.expr) });
    } else if (cmd.step === 'close') {
      reply({ ok: true });
      break;
    }
  } catch (error) {
    reply({ ok: false, error: String(error), logs: logs.slice(-20) });
  }
}
await context.close();
rmSync(profile, { recursive: true, force: true });
// stdin may still be open (the test keeps its end): do not wait for it.
process.exit(0);
