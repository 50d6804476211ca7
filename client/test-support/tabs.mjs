// Drives headless Chromium (Debian's binary, never a downloaded one) with several browser
// contexts and pages, for tests/test_browser_tabs.py: one command per line on stdin, one
// JSON answer per line on stdout.
//   {"step":"context","context":"a","init":<script run before every page of it, optional>}
//   {"step":"serve","context":"a","url":…,"body":…,"contentType":…}  (answer that URL)
//   {"step":"open","context":"a","page":"p1","url":…}
//   {"step":"wait","pages":["p1",…],"expr":…,"timeoutMs":…,"any":false}
//       → {"ms":…,"page":<the first page that satisfied it, with any>}
//   {"step":"eval","page":"p1","expr":…}
//   {"step":"close-page","page":"p1"} | {"step":"close-context","context":"a"}
//   {"step":"freeze","page":"p1"} | {"step":"resume","page":"p1"}  (Page Lifecycle)
//   {"step":"logs"}  (the pages' console since the last call)
//   {"step":"close"}
// Playwright's launch() gives the browser a fresh temporary --user-data-dir of its own (and
// removes it); each context is as separate as another browser profile.
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
    // Pages answered by route() count as public; let them reach relay on loopback.
    '--disable-features=LocalNetworkAccessChecks'],
});
const contexts = new Map();
const pages = new Map();
const frozen = new Map(); // page → the CDP session that holds its JavaScript
const logs = [];

const reply = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);

async function waitOn(names, expr, timeoutMs, any) {
  const started = Date.now();
  const waits = names.map((name) => pages.get(name)
    .waitForFunction(expr, null, { timeout: timeoutMs, polling: 20 })
    .then(() => name));
  const page = any ? await Promise.any(waits) : (await Promise.all(waits))[0];
  return { ms: Date.now() - started, page };
}

for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  try {
    if (cmd.step === 'context') {
      const context = await browser.newContext();
      if (cmd.init) await context.addInitScript(cmd.init);
      contexts.set(cmd.context, context);
      reply({ ok: true });
    } else if (cmd.step === 'serve') {
      await contexts.get(cmd.context).route(cmd.url,
        (route) => route.fulfill({ body: cmd.body, contentType: cmd.contentType }));
      reply({ ok: true });
    } else if (cmd.step === 'open') {
      const page = await contexts.get(cmd.context).newPage();
      page.on('console', (msg) => logs.push(`${cmd.page}: ${msg.text()}`));
      page.on('pageerror', (err) => logs.push(`${cmd.page}: pageerror: ${err.message}`));
      pages.set(cmd.page, page);
      await page.goto(cmd.url);
      reply({ ok: true });
    } else if (cmd.step === 'wait') {
      reply({ ok: true, ...(await waitOn(cmd.pages, cmd.expr, cmd.timeoutMs || 10000, cmd.any)) });
    } else if (cmd.step === 'eval') {
      reply({ ok: true, value: await pages.get(cmd.page).evaluate(cmd.expr) });
    } else if (cmd.step === 'close-page') {
      await pages.get(cmd.page).close();
      pages.delete(cmd.page);
      reply({ ok: true });
    } else if (cmd.step === 'close-context') {
      await contexts.get(cmd.context).close();
      contexts.delete(cmd.context);
      for (const [name, page] of pages) if (page.isClosed()) pages.delete(name);
      reply({ ok: true });
    } else if (cmd.step === 'freeze') {
      // What a browser does to a frozen page (headless Chromium ignores CDP's
      // Page.setWebLifecycleState): fire `freeze`, then run none of its JavaScript (timers,
      // messages, socket events wait) until it is resumed.
      const page = pages.get(cmd.page);
      await page.evaluate(() => document.dispatchEvent(new Event('freeze')));
      const session = await page.context().newCDPSession(page);
      const hold = { session, paused: false };
      session.on('Debugger.paused', () => { hold.paused = true; });
      await session.send('Debugger.enable');
      await session.send('Debugger.pause'); // takes effect at its next statement
      frozen.set(cmd.page, hold);
      reply({ ok: true });
    } else if (cmd.step === 'resume') {
      const { session, paused } = frozen.get(cmd.page);
      frozen.delete(cmd.page);
      if (paused) await session.send('Debugger.resume');
      await session.send('Debugger.disable'); // also drops a pause that never took effect
      await session.detach();
      await pages.get(cmd.page).evaluate(() => document.dispatchEvent(new Event('resume')));
      reply({ ok: true });
    } else if (cmd.step === 'logs') {
      reply({ ok: true, value: logs.splice(0) });
    } else if (cmd.step === 'close') {
      reply({ ok: true });
      break;
    } else {
      reply({ ok: false, error: `unknown step ${cmd.step}` });
    }
  } catch (error) {
    const detail = error instanceof AggregateError ? error.errors.map(String).join('; ') : String(error);
    reply({ ok: false, error: detail, logs: logs.slice(-30) });
  }
}
await browser.close();
// stdin may still be open (the test keeps its end): do not wait for it.
process.exit(0);
