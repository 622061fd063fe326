// The built-in demo page (GET /) in headless Chromium, driven like a user:
// pick a stream, connect, publish through the page's publish box, and see
// the event appear with the id the server returned. Saves a screenshot at
// target/demo.png. Prints `N passed, M failed`; exits 1 on any failure.
//
//   SSED_BIN=target/debug/ssed node tests/browser/demo.mjs

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startSsed, restartSsed, publish, deleteStream } from '../interop/lib/ssed.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const T = 10000;
const STREAM = 'browser-demo';

let passed = 0;
let failed = 0;
let n = 0;
let broken = false;

/** Runs one named check; after a failure the later checks are skipped as failed. */
async function check(label, fn) {
  n += 1;
  if (broken) {
    failed += 1;
    console.log(`not ok ${n} - ${label} # skipped after an earlier failure`);
    return;
  }
  try {
    await fn();
    passed += 1;
    console.log(`ok ${n} - ${label}`);
  } catch (e) {
    failed += 1;
    broken = true;
    console.log(`not ok ${n} - ${label}`);
    for (const l of String(e?.stack || e).split('\n')) console.log(`  # ${l}`);
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

const stateText = (page) => page.locator('#state-text').textContent();
const buttonText = (page) => page.locator('#connect').textContent();
const waitState = (page, s) => page.waitForFunction(
  (want) => document.getElementById('state-text').textContent === want, s, { timeout: T });

/** Publishes through the page's publish box; returns the parsed JSON reply. */
async function publishFromPage(page, { stream, type, data }) {
  await page.fill('#pub-stream', stream);
  await page.fill('#pub-event', type);
  await page.fill('#pub-data', data);
  // Blank the reply first: two publishes may get the same answer.
  await page.evaluate(() => { document.getElementById('pub-reply').textContent = ''; });
  await page.click('#publish');
  await page.waitForFunction(
    () => document.getElementById('pub-reply').textContent !== '', null, { timeout: T });
  const cls = await page.locator('#pub-reply').getAttribute('class');
  const text = await page.locator('#pub-reply').textContent();
  return { ok: /\bok\b/.test(cls), text };
}

/** Waits for the row of event `id` and returns its cells. */
async function row(page, id) {
  const tr = page.locator(`#events tr[data-id="${id}"]`);
  await tr.waitFor({ timeout: T });
  return {
    id: await tr.locator('td.id').textContent(),
    type: await tr.locator('td.type').textContent(),
    data: await tr.locator('td.data').textContent(),
    time: await tr.locator('td.time').textContent(),
  };
}

async function main() {
  let server = await startSsed();
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ssed-demo-chromium-'));
  let context = null;
  const pageErrors = [];
  try {
    await check('GET / serves src/apps/demo.html as HTML', async () => {
      const r = await fetch(`${server.base}/`, { signal: AbortSignal.timeout(T) });
      assert(r.status === 200, `status ${r.status}`);
      assert(/^text\/html/.test(r.headers.get('content-type') || ''), `content-type ${r.headers.get('content-type')}`);
      const body = await r.text();
      const file = fs.readFileSync(path.join(root, 'src/apps/demo.html'), 'utf8');
      assert(body === file, `body (${body.length} chars) differs from src/apps/demo.html (${file.length} chars)`);
    });

    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 30000,
      viewport: { width: 1100, height: 760 },
    });
    const page = context.pages()[0] || await context.newPage();
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });

    await check('the page loads and connects to "demo" by itself', async () => {
      await page.goto(`${server.base}/`, { timeout: T });
      await waitState(page, 'open');
      assert(await page.locator('#streams').inputValue() === 'demo', 'default stream is demo');
      assert(await buttonText(page) === 'Disconnect', `button says ${await buttonText(page)} while connected`);
    });

    await check('the curl command the empty page suggests publishes to it', async () => {
      const hint = await page.locator('#curl-hint').textContent();
      const m = /^curl -d data=hello '(http:\/\/[^']+)'$/.exec(hint);
      assert(m && m[1] === `${server.base}/events?stream=demo`, `hint: ${hint}`);
      const out = execFileSync('curl', ['-sS', '--max-time', '5', '-d', 'data=hello', m[1]], { encoding: 'utf8' });
      const c = await row(page, JSON.parse(out).id);
      assert(c.type === 'message' && c.data === 'hello', JSON.stringify(c));
    });

    await check(`connecting to "${STREAM}" opens an EventSource to it`, async () => {
      await page.fill('#streams', STREAM);
      await page.fill('#types', 'other');
      // Other streams typed in: the button offers to connect to them.
      assert(await buttonText(page) === 'Connect', `button says ${await buttonText(page)} with new streams typed`);
      await page.click('#connect');
      await waitState(page, 'open');
      assert(await buttonText(page) === 'Disconnect', `button says ${await buttonText(page)} while connected`);
      const url = await page.locator('#url').textContent();
      // "resume from last id" is on: the id seen on "demo" is the cursor.
      const last = await page.locator('#last-id').textContent();
      assert(url === `/events?stream=${STREAM}&last_event_id=${last}`, `url shown: ${url}`);
      const gaps = await page.locator('#events tr.gap').count();
      assert(gaps === 0, 'no gap when resuming from a cursor this server issued');
    });

    let first;
    await check('publishing from the page shows the server reply', async () => {
      const r = await publishFromPage(page, { stream: STREAM, type: 'greeting', data: 'héllo ✓ 日本\nsecond line' });
      assert(r.ok, `reply not ok: ${r.text}`);
      first = JSON.parse(r.text);
      assert(/^\d+$/.test(first.id), `id: ${r.text}`);
      assert(first.subscribers === 1, `subscribers: ${r.text}`);
    });

    await check('the event appears with the id the server returned', async () => {
      const c = await row(page, first.id);
      assert(c.id === first.id, `id cell ${c.id}`);
      assert(c.type === 'greeting', `type cell ${c.type}`);
      assert(c.data === 'héllo ✓ 日本\nsecond line', `data cell ${JSON.stringify(c.data)}`);
      assert(/^\d\d:\d\d:\d\d\.\d{3}$/.test(c.time), `timestamp ${c.time}`);
      assert(await page.locator('#last-id').textContent() === first.id, 'last id shown');
    });

    await check('a type typed into the publish box is shown without listing it first', async () => {
      const types = await page.locator('#types').inputValue();
      assert(!types.includes('fresh.type'), `types field: ${types}`);
      const r = await publishFromPage(page, { stream: STREAM, type: 'fresh.type', data: 'new kind' });
      assert(r.ok, `reply not ok: ${r.text}`);
      const c = await row(page, JSON.parse(r.text).id);
      assert(c.type === 'fresh.type' && c.data === 'new kind', JSON.stringify(c));
      assert(await stateText(page) === 'open', 'no reconnect needed');
      assert(await page.locator('#reconnects').textContent() === '0', 'no reconnect happened');
    });

    await check('a rejected publish shows the server error', async () => {
      const r = await publishFromPage(page, { stream: STREAM, type: 'bad type', data: 'x' });
      assert(!r.ok, `expected an error, got ${r.text}`);
      assert(/^HTTP 400: \S/.test(r.text), `error text: ${r.text}`);
    });

    await check('a plain message (no type) appears as "message"', async () => {
      const r = await publishFromPage(page, { stream: STREAM, type: '', data: 'plain' });
      assert(r.ok, `reply not ok: ${r.text}`);
      const c = await row(page, JSON.parse(r.text).id);
      assert(c.type === 'message' && c.data === 'plain', JSON.stringify(c));
    });

    await check('after DELETE /streams/NAME the page reconnects and gets what it missed', async () => {
      await deleteStream(server.base, STREAM);
      const away = await publish(server.base, STREAM, 'published while the page was away');
      await page.waitForFunction(() => document.getElementById('reconnects').textContent === '1', null, { timeout: T });
      const c = await row(page, away.id);
      assert(c.data === 'published while the page was away', JSON.stringify(c));
      await waitState(page, 'open');
      const dup = await page.locator(`#events tr[data-id="${first.id}"]`).count();
      assert(dup === 1, `first event shown ${dup} times`);
    });

    await check('a named type the page listens to shows up too', async () => {
      const r = await publish(server.base, STREAM, '{"n":1}', { json: true, event: 'other' });
      const c = await row(page, r.id);
      assert(c.type === 'other' && c.data === '{"n":1}', JSON.stringify(c));
    });

    await check('after ssed restarts the page shows a gap row and goes on', async () => {
      const before = await page.locator('#last-id').textContent();
      server = await restartSsed(server);
      const gap = page.locator('#events tr.gap');
      await gap.waitFor({ timeout: 15000 });
      const data = await gap.locator('td.data').textContent();
      assert(data.includes(`after id ${before} in ${STREAM}`), `gap row: ${data}`);
      await waitState(page, 'open');
      const r = await publish(server.base, STREAM, 'after the restart');
      const c = await row(page, r.id);
      assert(c.data === 'after the restart', JSON.stringify(c));
    });

    await check('screenshot saved to target/demo.png', async () => {
      const r = await publishFromPage(page, { stream: STREAM, type: 'greeting', data: 'Hello from the ssed demo page ✓' });
      await row(page, JSON.parse(r.text).id);
      fs.mkdirSync(path.join(root, 'target'), { recursive: true });
      await page.screenshot({ path: path.join(root, 'target/demo.png'), fullPage: true });
    });

    await check('Disconnect closes the connection; the button then says Reconnect', async () => {
      assert(await buttonText(page) === 'Disconnect', `button says ${await buttonText(page)}`);
      await page.click('#connect');
      await waitState(page, 'closed');
      assert(await stateText(page) === 'closed', 'closed');
      assert(await buttonText(page) === 'Reconnect', `button says ${await buttonText(page)} when closed`);
      // The server sees the subscriber go.
      const until = Date.now() + T;
      for (;;) {
        const st = await (await fetch(`${server.base}/streams/${STREAM}`, { signal: AbortSignal.timeout(T) })).json();
        if (st.subscribers === 0) break;
        assert(Date.now() < until, `still subscribed: ${JSON.stringify(st)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    });

    await check('Reconnect opens it again and resumes', async () => {
      const away = await publish(server.base, STREAM, 'while disconnected');
      await page.click('#connect');
      await waitState(page, 'open');
      assert(await buttonText(page) === 'Disconnect', `button says ${await buttonText(page)}`);
      const c = await row(page, away.id);
      assert(c.data === 'while disconnected', JSON.stringify(c));
    });

    await check('with --publish-token the page publishes with the token typed in', async () => {
      const tokened = await startSsed({ args: ['--publish-token', 's3cret'] });
      const p2 = await context.newPage();
      p2.on('pageerror', (e) => pageErrors.push(String(e)));
      try {
        await p2.goto(`${tokened.base}/`, { timeout: T });
        await waitState(p2, 'open');
        const no = await publishFromPage(p2, { stream: 'demo', type: '', data: 'no token' });
        assert(!no.ok && /^HTTP 401: \S/.test(no.text), `without a token: ${no.text}`);
        await p2.fill('#pub-token', 'wrong');
        const bad = await publishFromPage(p2, { stream: 'demo', type: '', data: 'wrong token' });
        assert(!bad.ok && /^HTTP 401: /.test(bad.text), `wrong token: ${bad.text}`);
        await p2.fill('#pub-token', 's3cret');
        const ok = await publishFromPage(p2, { stream: 'demo', type: '', data: 'with the token' });
        assert(ok.ok, `with the token: ${ok.text}`);
        const c = await row(p2, JSON.parse(ok.text).id);
        assert(c.data === 'with the token', JSON.stringify(c));
      } finally {
        await p2.close();
        await tokened.stop();
      }
    });

    await check('no JavaScript errors on the page', async () => {
      // A 400 from the rejected publish is logged by Chromium as a failed
      // resource load; that one is expected.
      const real = pageErrors.filter((e) => !/status of 40[013]/.test(e));
      assert(real.length === 0, real.join('\n'));
    });
  } catch (e) {
    failed += 1;
    console.log(`not ok - setup: ${e?.stack || e}`);
  } finally {
    if (context) await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
    await server.stop();
    if (failed && server.stderr) console.log(`--- ssed stderr (tail) ---\n${server.stderr}`);
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (e) => {
  console.log(`not ok - ${e?.stack || e}`);
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
