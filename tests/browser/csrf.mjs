// Cross-site request forgery in headless Chromium: a page served from
// ANOTHER loopback origin (a tiny static server on 127.0.0.2) tries a
// no-cors `fetch` POST and a plain HTML form POST to ssed's /events. Without
// --publish-token only plainly local requests may publish, and a browser
// request from a foreign page is not: both get 403, and a real subscriber
// (reading the stream over HTTP from Node) receives neither. The demo page
// that ssed serves itself can still publish. Prints `N passed, M failed`;
// exits 1 on any failure.
//
//   SSED_BIN=target/debug/ssed node tests/browser/csrf.mjs

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startSsed, publish, waitFor } from '../interop/lib/ssed.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const T = 10000;
const STREAM = 'csrf';

let passed = 0;
let failed = 0;
let n = 0;
let broken = false;

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

/** A subscriber over plain HTTP: collects the data lines of every event. */
function subscribe(base, stream) {
  const events = [];
  const req = http.get(`${base}/events?stream=${stream}`, { headers: { Accept: 'text/event-stream' } });
  let buf = '';
  req.on('response', (res) => {
    res.setEncoding('utf8');
    res.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart());
        if (data.length) events.push(data.join('\n'));
      }
    });
  });
  req.on('error', () => {});
  return { events, close: () => req.destroy() };
}

/** The attacker's page, on its own origin. */
function evilServer(target) {
  const page = `<!doctype html><title>evil</title>
<form id="f" method="POST" action="${target}/events">
  <input name="topic" value="${STREAM}"><input name="data" value="forged-form">
</form>
<script>
  window.fetchDone = fetch('${target}/events?stream=${STREAM}', {
    method: 'POST', mode: 'no-cors', body: 'forged-fetch', headers: { 'Content-Type': 'text/plain' },
  }).then(() => 'sent', (e) => 'error: ' + e);
</script>`;
  const srv = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(page);
  });
  return new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.2', () => resolve(srv));
  });
}

async function stats(base) {
  const r = await fetch(`${base}/stats`, { signal: AbortSignal.timeout(T) });
  return r.json();
}

async function main() {
  const server = await startSsed();
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ssed-csrf-chromium-'));
  let context = null;
  let evil = null;
  const sub = subscribe(server.base, STREAM);
  try {
    await waitFor(async () => (await stats(server.base)).connections.sse === 1, T, 'the subscriber');
    evil = await evilServer(server.base);
    const evilBase = `http://127.0.0.2:${evil.address().port}`;
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 30000,
    });
    const page = context.pages()[0] || await context.newPage();

    await check(`a no-cors fetch POST from ${evilBase} is refused`, async () => {
      await page.goto(`${evilBase}/`, { timeout: T });
      const r = await page.evaluate(() => window.fetchDone);
      assert(r === 'sent', `fetch: ${r}`);
      await waitFor(async () => (await stats(server.base)).rejected.forbidden_not_local === 1, T, 'the refused fetch');
    });

    await check('a plain HTML form POST from that page gets 403 naming --publish-token', async () => {
      const [resp] = await Promise.all([
        page.waitForNavigation({ timeout: T }),
        page.evaluate(() => document.getElementById('f').submit()),
      ]);
      assert(resp.status() === 403, `status ${resp.status()}`);
      const body = await resp.text();
      assert(/another origin/.test(body) && /--publish-token/.test(body), body);
      const s = await stats(server.base);
      assert(s.rejected.forbidden_not_local === 2, JSON.stringify(s.rejected));
    });

    await check('the subscriber received neither forged event', async () => {
      await publish(server.base, STREAM, 'marker');
      await waitFor(() => sub.events.includes('marker'), T, 'the marker');
      assert(JSON.stringify(sub.events) === '["marker"]', JSON.stringify(sub.events));
    });

    await check('the demo page served by ssed itself still publishes', async () => {
      await page.goto(`${server.base}/`, { timeout: T });
      await page.fill('#pub-stream', STREAM);
      await page.fill('#pub-event', 'message');
      await page.fill('#pub-data', 'from-demo');
      await page.click('#publish');
      await waitFor(() => sub.events.includes('from-demo'), T, 'the demo page event');
      // The event can reach the subscriber before the page has read the
      // reply to its fetch: wait for the page to show it.
      let cls = '';
      await waitFor(async () => {
        cls = (await page.locator('#pub-reply').getAttribute('class')) || '';
        return /\bok\b/.test(cls) || /\berr\b/.test(cls);
      }, T, 'the publish reply on the page').catch(() => {});
      assert(/\bok\b/.test(cls), `reply class ${cls}`);
      assert(JSON.stringify(sub.events) === '["marker","from-demo"]', JSON.stringify(sub.events));
    });
  } catch (e) {
    failed += 1;
    console.log(`not ok - setup: ${e?.stack || e}`);
  } finally {
    sub.close();
    if (context) await context.close().catch(() => {});
    if (evil) evil.close();
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
