// The Mercure hub in headless Chromium: a page's EventSource subscribes to
// /.well-known/mercure?topic=... with a JWT (in the `authorization` query
// parameter, then in the mercureAuthorization cookie), a `fetch` POST with
// a bearer JWT publishes a private update with a custom id, and the event
// arrives with that `lastEventId`; the same with draft-08 (an at+jwt
// token, `match_urlpattern=`, multi-line data, an anonymous `match=`
// EventSource that never sees the private update). Prints `N passed, M failed`; exits 1 on
// any failure.
//
//   SSED_BIN=target/debug/ssed node tests/browser/mercure.mjs

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startSsed } from '../interop/lib/ssed.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const T = 10000;
const KEY = 'browser-mercure-test-key-0123456789abcdef';
const TOPIC = 'https://example.com/books/{id}';

const b64 = (s) => Buffer.from(s).toString('base64url');
/** An HS256 JWT minted with node:crypto (nothing of ssed's own code). */
function mint(claims, typ = 'JWT') {
  const signed = `${b64(JSON.stringify({ alg: 'HS256', typ }))}.${b64(JSON.stringify(claims))}`;
  return `${signed}.${crypto.createHmac('sha256', KEY).update(signed).digest('base64url')}`;
}

let passed = 0;
let failed = 0;
async function check(label, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`ok ${passed + failed} - ${label}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok ${passed + failed} - ${label}`);
    for (const l of String(e?.stack || e).split('\n')) console.log(`  # ${l}`);
  }
}

/** In the page: subscribe (with `query` appended), publish with `pubToken`, return the event seen. */
async function roundTrip(page, { query, pubToken, topic, id, data }) {
  return page.evaluate(async ({ query, pubToken, topic, id, data, TOPIC, T }) => {
    const url = `/.well-known/mercure?topic=${encodeURIComponent(TOPIC)}${query}`;
    const es = new EventSource(url);
    try {
      await new Promise((ok, bad) => {
        es.onopen = ok;
        es.onerror = () => bad(new Error('EventSource error before open'));
        setTimeout(() => bad(new Error('no open')), T);
      });
      const got = new Promise((ok, bad) => {
        es.onmessage = (e) => ok({ data: e.data, lastEventId: e.lastEventId });
        setTimeout(() => bad(new Error('no event')), T);
      });
      // The subscription is live once /stats counts it.
      for (let i = 0; ; i++) {
        const s = await (await fetch('/stats')).json();
        if (s.connections.sse === 1) break;
        if (i > 500) throw new Error('subscriber never counted');
        await new Promise((r) => setTimeout(r, 20));
      }
      const body = new URLSearchParams({ topic, data, private: 'on', id });
      const r = await fetch('/.well-known/mercure', {
        method: 'POST', headers: { Authorization: `Bearer ${pubToken}` }, body,
      });
      const reply = await r.text();
      if (r.status !== 200) throw new Error(`publish: ${r.status} ${reply}`);
      return { reply, ctype: r.headers.get('content-type'), ...(await got) };
    } finally {
      es.close();
    }
  }, { query, pubToken, topic, id, data, TOPIC, T });
}

async function main() {
  const server = await startSsed({ args: ['--jwt-key', KEY] });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ssed-mercure-chromium-'));
  let context = null;
  try {
    context = await chromium.launchPersistentContext(dir, {
      executablePath: CHROMIUM, headless: true, args: FLAGS, timeout: 30000,
    });
    const page = context.pages()[0] || await context.newPage();
    await page.goto(`${server.base}/healthz`, { timeout: T });
    const sub = mint({ mercure: { subscribe: [TOPIC] } });
    const pub = mint({ mercure: { publish: [TOPIC] } });

    await check('EventSource with ?authorization= gets a private update with its custom id', async () => {
      const e = await roundTrip(page, {
        query: `&authorization=${sub}`, pubToken: pub,
        topic: 'https://example.com/books/1', id: 'urn:uuid:browser-1', data: 'private, via query',
      });
      if (e.reply !== 'urn:uuid:browser-1') throw new Error(`reply ${e.reply}`);
      if (!/^text\/plain/.test(e.ctype)) throw new Error(`content-type ${e.ctype}`);
      if (e.lastEventId !== 'urn:uuid:browser-1') throw new Error(`lastEventId ${e.lastEventId}`);
      if (e.data !== 'private, via query') throw new Error(`data ${e.data}`);
    });

    await check('EventSource with the mercureAuthorization cookie gets one too', async () => {
      await context.addCookies([{ name: 'mercureAuthorization', value: sub, url: server.base }]);
      const e = await roundTrip(page, {
        query: '', pubToken: pub,
        topic: 'https://example.com/books/2', id: 'urn:uuid:browser-2', data: 'private, via cookie',
      });
      if (e.lastEventId !== 'urn:uuid:browser-2' || e.data !== 'private, via cookie') {
        throw new Error(JSON.stringify(e));
      }
    });

    await check('draft-08: match_urlpattern EventSource gets a private multi-line update; an anonymous one only the public', async () => {
      await context.clearCookies(); // the anonymous EventSource must carry no token
      const aud = `${server.base}/.well-known/mercure`;
      const exp = Math.floor(Date.now() / 1000) + 300;
      const detail = (actions) => [{
        type: 'https://mercure.rocks/authorization-detail', actions,
        topics: [{ match: 'https://example.com/authors/:id', match_type: 'urlpattern' }],
      }];
      const subAt = mint({ aud, exp, authorization_details: detail(['subscribe']) }, 'at+jwt');
      const pubAt = mint({ aud, exp, authorization_details: detail(['publish']) }, 'at+jwt');
      const r = await page.evaluate(async ({ subAt, pubAt, T }) => {
        const open = (url) => new Promise((ok, bad) => {
          const es = new EventSource(url);
          const seen = [];
          es.onmessage = (e) => seen.push({ data: e.data, lastEventId: e.lastEventId });
          es.onopen = () => ok({ es, seen });
          es.onerror = () => bad(new Error(`EventSource error before open: ${url}`));
          setTimeout(() => bad(new Error('no open')), T);
        });
        const pattern = encodeURIComponent('https://example.com/authors/:id');
        const authed = await open(`/.well-known/mercure?match_urlpattern=${pattern}&authorization=${subAt}`);
        const anon = await open(`/.well-known/mercure?match=${encodeURIComponent('https://example.com/authors/9')}`);
        try {
          for (let i = 0; ; i++) {
            const s = await (await fetch('/stats')).json();
            if (s.connections.sse === 2) break;
            if (i > 500) throw new Error('subscribers never counted');
            await new Promise((res) => setTimeout(res, 20));
          }
          const send = async (form) => {
            const res = await fetch('/.well-known/mercure', {
              method: 'POST', headers: { Authorization: `Bearer ${pubAt}` }, body: new URLSearchParams(form),
            });
            return { status: res.status, ctype: res.headers.get('content-type'), body: await res.text() };
          };
          const priv = await send({ topic: 'https://example.com/authors/9', data: 'line 1\nline 2', private: 'on', id: 'author-9-secret' });
          const pub = await send({ topic: 'https://example.com/authors/9', data: 'public', id: 'author-9-public' });
          for (let i = 0; authed.seen.length < 2 || anon.seen.length < 1; i++) {
            if (i > 500) break;
            await new Promise((res) => setTimeout(res, 20));
          }
          // Past the public update nothing private can still be in flight to anon.
          return { priv, pub, authed: authed.seen, anon: anon.seen };
        } finally {
          authed.es.close();
          anon.es.close();
        }
      }, { subAt, pubAt, T });
      const want = JSON.stringify({
        priv: { status: 200, ctype: 'text/plain; charset=utf-8', body: 'author-9-secret' },
        pub: { status: 200, ctype: 'text/plain; charset=utf-8', body: 'author-9-public' },
        authed: [{ data: 'line 1\nline 2', lastEventId: 'author-9-secret' }, { data: 'public', lastEventId: 'author-9-public' }],
        anon: [{ data: 'public', lastEventId: 'author-9-public' }],
      });
      if (JSON.stringify(r) !== want) throw new Error(`got ${JSON.stringify(r)}\nwant ${want}`);
    });

    await check('a publish whose token misses the topic is 403', async () => {
      const status = await page.evaluate(async (tok) => (await fetch('/.well-known/mercure', {
        method: 'POST', headers: { Authorization: `Bearer ${tok}` },
        body: new URLSearchParams({ topic: 'urn:elsewhere', data: 'x' }),
      })).status, pub);
      if (status !== 403) throw new Error(`status ${status}`);
    });
  } catch (e) {
    failed += 1;
    console.log(`not ok - setup: ${e?.stack || e}`);
  } finally {
    if (context) await context.close().catch(() => {});
    await server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
