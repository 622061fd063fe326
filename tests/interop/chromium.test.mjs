// Headless Chromium's native EventSource against ssed, from a page on
// another loopback origin (http://127.0.0.2:PORT), so every request is
// cross-origin: this is also the CORS test (ssed runs with
// --cors-origin http://127.0.0.2:PORT, and without it the browser must
// not deliver a single event).

import http from 'node:http';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { defineScenarios } from './lib/scenarios.mjs';
import { startSsed, publishSamples, waitFor, SAMPLE_TYPES } from './lib/ssed.mjs';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

const PAGE = `<!doctype html><meta charset="utf-8"><title>ssed interop</title>
<script>
const q = new URLSearchParams(location.search);
const st = window.st = { events: [], opens: 0, errors: 0 };
const es = window.es = new EventSource(q.get('sse'), { withCredentials: q.get('cred') === '1' });
es.addEventListener('open', () => { st.opens += 1; });
es.addEventListener('error', () => { st.errors += 1; });
for (const t of ['message', ...JSON.parse(q.get('types'))]) {
  es.addEventListener(t, (e) => st.events.push({ type: e.type, id: e.lastEventId, data: e.data }));
}
</script>`;

let setup = null;
/** Starts the page server and Chromium once for the whole file. */
function env() {
  setup ??= (async () => {
    const pageServer = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
      res.end(PAGE);
    });
    await new Promise((resolve, reject) => {
      pageServer.once('error', reject);
      pageServer.listen(0, '127.0.0.2', resolve);
    });
    const origin = `http://127.0.0.2:${pageServer.address().port}`;
    const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ssed-chromium-'));
    const context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS, timeout: 30000,
    });
    return { pageServer, origin, context, userDataDir };
  })();
  return setup;
}

after(async () => {
  if (!setup) return;
  const { pageServer, context, userDataDir } = await setup;
  await context.close().catch(() => {});
  pageServer.close();
  pageServer.closeAllConnections();
  fs.rmSync(userDataDir, { recursive: true, force: true });
});

async function openPage({ base, streams, lastEventId, types, cred = false }) {
  const { origin, context } = await env();
  const sse = new URL('/events', base);
  for (const s of streams) sse.searchParams.append('stream', s);
  if (lastEventId) sse.searchParams.set('last_event_id', lastEventId);
  const page = await context.newPage();
  const console = [];
  page.on('console', (m) => console.push(m.text()));
  const u = new URL('/', origin);
  u.searchParams.set('sse', sse.toString());
  u.searchParams.set('types', JSON.stringify(types));
  if (cred) u.searchParams.set('cred', '1');
  await page.goto(u.toString(), { timeout: 10000 });
  return {
    page,
    console,
    snapshot: () => page.evaluate(() => JSON.parse(JSON.stringify({ ...window.st, readyState: window.es.readyState }))),
    close: () => page.close(),
  };
}

const adapter = { connect: openPage };
// ssed allows the page's origin, known once the page server listens.
const corsOpts = async () => ({ cors: [(await env()).origin] });

test('chromium: launches and serves the page origin', { timeout: 40000 }, async () => {
  const e = await env();
  assert.match(e.origin, /^http:\/\/127\.0\.0\.2:\d+$/);
});

defineScenarios('chromium EventSource (CORS)', adapter, corsOpts);

test('chromium EventSource (CORS): withCredentials: true', { timeout: 30000 }, async () => {
  const server = await startSsed(await corsOpts());
  let c = null;
  try {
    c = await openPage({ base: server.base, streams: ['cred'], types: SAMPLE_TYPES, cred: true });
    await waitFor(async () => (await c.snapshot()).opens >= 1, 10000, 'the connection to open');
    const want = await publishSamples(server.base, 'cred');
    const got = await waitFor(async () => {
      const s = await c.snapshot();
      return s.events.length >= want.length ? s : null;
    }, 10000, 'all events');
    assert.deepEqual(got.events, want.map(({ type, id, data }) => ({ type, id, data })));
  } finally {
    if (c) await c.close();
    await server.stop();
  }
});

test('chromium (CORS): a page on another origin publishes JSON (preflight) and reads the reply', { timeout: 30000 }, async () => {
  const server = await startSsed(await corsOpts());
  let c = null;
  try {
    c = await openPage({ base: server.base, streams: ['xpub'], types: SAMPLE_TYPES });
    await waitFor(async () => (await c.snapshot()).opens >= 1, 10000, 'the connection to open');
    const reply = await c.page.evaluate(async (url) => {
      const r = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ data: 'from the browser ✓', event: 'greeting' }),
      });
      return { status: r.status, body: await r.json() };
    }, `${server.base}/events?stream=xpub`);
    assert.equal(reply.status, 200);
    assert.match(reply.body.id, /^\d+$/);
    const got = await waitFor(async () => {
      const s = await c.snapshot();
      return s.events.length >= 1 ? s : null;
    }, 10000, 'the event published by the page');
    assert.deepEqual(got.events, [{ type: 'greeting', id: reply.body.id, data: 'from the browser ✓' }]);
  } finally {
    if (c) await c.close();
    await server.stop();
  }
});

for (const [label, cors] of [
  ['without --cors-origin', []],
  ['with a different --cors-origin', ['http://127.0.0.3:9']],
]) {
  test(`chromium EventSource (CORS): ${label} the browser gets no event`, { timeout: 30000 }, async () => {
    const server = await startSsed({ cors });
    let c = null;
    try {
      c = await openPage({ base: server.base, streams: ['nocors'], types: SAMPLE_TYPES });
      // A CORS failure fails the connection for good: readyState CLOSED.
      const s = await waitFor(async () => {
        const x = await c.snapshot();
        return x.readyState === 2 ? x : null;
      }, 10000, 'EventSource to fail (readyState CLOSED)');
      await publishSamples(server.base, 'nocors');
      const after = await c.snapshot();
      assert.equal(s.opens, 0, 'never opened');
      assert.ok(s.errors >= 1, 'error event fired');
      assert.deepEqual(after.events, [], 'no event delivered');
      assert.equal(after.readyState, 2, 'stays closed');
      assert.ok(c.console.some((m) => /CORS/.test(m)), `Chromium reports a CORS block: ${JSON.stringify(c.console)}`);
    } finally {
      if (c) await c.close();
      await server.stop();
    }
  });
}
