// The scenarios every SSE client must pass against a real ssed. A client
// file supplies an adapter:
//
//   connect({ base, streams, lastEventId, types }) -> {
//     snapshot(): Promise<{ events: [{type, id, data}], opens, readyState? }>,
//     close(): Promise<void>,
//   }
//
// `events` holds every event the client dispatched, in order, `message` and
// each of `types` (which includes `gap`). An adapter that can set request
// headers also takes `lastEventIdHeader` (sent as `Last-Event-ID` on the
// first connection) and declares `headerResume: true`. `opens` counts successful
// connections. The adapter reconnects by itself the way its client does
// (EventSource) or the way a user of it would (curl, httpx-sse), always
// resuming with the last id it saw.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startSsed, restartSsed, publish, deleteStream, publishSamples,
  waitFor, SAMPLE_TYPES,
} from './ssed.mjs';

const WAIT = 10000;
let uniq = 0;
const name = (p) => `${p}-${process.pid}-${++uniq}`;
const plain = (evs) => evs.map(({ type, id, data }) => ({ type, id, data }));
const strip = (evs) => plain(evs).filter((e) => e.type !== 'gap');

async function withServer(opts, fn) {
  let server = await startSsed(opts);
  const handle = {
    get server() { return server; },
    async restart() { server = await restartSsed(server, opts); return server; },
  };
  const clients = [];
  const connect = async (adapter, a) => {
    const c = await adapter.connect({ types: SAMPLE_TYPES, ...a, base: server.base });
    clients.push(c);
    return c;
  };
  try {
    await fn(handle, connect);
  } catch (e) {
    if (server.stderr) e.message += `\n--- ssed stderr (tail) ---\n${server.stderr}`;
    throw e;
  } finally {
    for (const c of clients) await c.close().catch(() => {});
    await server.stop();
  }
}

async function eventsOf(client, n, what) {
  const s = await waitFor(async () => {
    const s = await client.snapshot();
    return s.events.length >= n ? s : null;
  }, WAIT, what);
  return s;
}

/** Waits until the server has sent `n` more heartbeats than `from`. */
async function heartbeatsPast(base, from, n) {
  return waitFor(async () => {
    const hb = (await (await fetch(`${base}/stats`)).json()).heartbeats;
    return hb >= from + n ? hb : null;
  }, WAIT, `${n} heartbeats`);
}

/** Defines the common scenarios for one client. */
export function defineScenarios(label, adapter, serverOpts = () => ({})) {
  // ssed opens every stream with a `retry:` line and sends `:` comment
  // heartbeats; clients that dispatch any block ending in a blank line (with
  // no data, or the previous id) would report events nobody published. The
  // adapters record every event their client dispatches, empty ones too.
  // Heartbeats are awaited on the server's counter, and an event published
  // after them, once received, proves the client read past them.
  test(`${label}: dispatches no event nobody published (connect, heartbeats, resume)`, { timeout: 30000 }, async () => {
    await withServer({ ...(await serverOpts()), heartbeat: 0.2 }, async (h, connect) => {
      const base = h.server.base;
      const s = name('nothing');
      const first = await publish(base, s, 'before');
      const c = await connect(adapter, { streams: [s] });
      await waitFor(async () => (await c.snapshot()).opens >= 1, WAIT, 'the connection to open');
      let hb = await heartbeatsPast(base, 0, 3);
      const want = [];
      const pub = async (d) => {
        const r = await publish(base, s, d);
        want.push({ type: 'message', id: r.id, data: d });
      };
      await pub('after the retry line and heartbeats');
      let got = await eventsOf(c, 1, 'the first event');
      assert.deepEqual(plain(got.events), want, 'nothing on connect or on heartbeats before the first event');
      hb = await heartbeatsPast(base, hb, 3);
      await pub('after heartbeats that follow an event with an id');
      got = await eventsOf(c, 2, 'the second event');
      assert.deepEqual(plain(got.events), want, 'nothing on heartbeats after an event');
      // A resume from the first event replays what followed it, nothing more.
      const r = await connect(adapter, { streams: [s], lastEventId: first.id });
      got = await eventsOf(r, 2, 'the replay');
      hb = await heartbeatsPast(base, hb, 3);
      await pub('live after the resume');
      got = await eventsOf(r, 3, 'the live event after the replay');
      assert.deepEqual(plain(got.events), want, 'nothing but the replay and the live event on resume');
      got = await eventsOf(c, 3, 'the live event on the first connection');
      assert.deepEqual(plain(got.events), want);
    });
  });

  test(`${label}: exact data, types and ids`, { timeout: 30000 }, async () => {
    await withServer(await serverOpts(), async (h, connect) => {
      const s = name('exact');
      const c = await connect(adapter, { streams: [s] });
      await waitFor(async () => (await c.snapshot()).opens >= 1, WAIT, 'the connection to open');
      const want = await publishSamples(h.server.base, s);
      const got = await eventsOf(c, want.length, `${want.length} events`);
      assert.deepEqual(plain(got.events), want.map(({ type, id, data }) => ({ type, id, data })));
      assert.deepEqual(want.map((w) => w.subscribers), want.map(() => 1), 'publish replies count the one subscriber');
      const ids = want.map((w) => BigInt(w.id));
      for (let i = 1; i < ids.length; i++) assert.ok(ids[i] > ids[i - 1], 'ids grow');
    });
  });

  test(`${label}: one connection reads two streams in id order`, { timeout: 30000 }, async () => {
    await withServer(await serverOpts(), async (h, connect) => {
      const a = name('two-a');
      const b = name('two-b');
      const c = await connect(adapter, { streams: [a, b] });
      await waitFor(async () => (await c.snapshot()).opens >= 1, WAIT, 'the connection to open');
      const want = [];
      for (const [st, d] of [[a, 'first on a'], [b, 'first on b'], [a, 'second on a']]) {
        const r = await publish(h.server.base, st, d);
        want.push({ type: 'message', id: r.id, data: d });
      }
      const got = await eventsOf(c, 3, '3 events from two streams');
      assert.deepEqual(plain(got.events), want);
    });
  });

  test(`${label}: first connection resumes from ?last_event_id`, { timeout: 30000 }, async () => {
    await withServer(await serverOpts(), async (h, connect) => {
      const s = name('query');
      const sent = [];
      for (const d of ['one', 'two', 'three']) {
        const r = await publish(h.server.base, s, d);
        sent.push({ type: 'message', id: r.id, data: d });
      }
      const c = await connect(adapter, { streams: [s], lastEventId: sent[0].id });
      const got = await eventsOf(c, 2, 'the 2 events after the cursor');
      const live = await publish(h.server.base, s, 'four');
      sent.push({ type: 'message', id: live.id, data: 'four' });
      const all = await eventsOf(c, 3, 'the live event after the replay');
      assert.deepEqual(plain(all.events), sent.slice(1), 'replays exactly the events after the cursor, then goes live');
      assert.equal(got.events.filter((e) => e.type === 'gap').length, 0, 'no gap for a retained cursor');
    });
  });

  if (adapter.headerResume) {
    test(`${label}: a Last-Event-ID header the server does not know gives a gap`, { timeout: 30000 }, async () => {
      await withServer(await serverOpts(), async (h, connect) => {
        const s = name('unknown');
        const kept = await publish(h.server.base, s, 'retained');
        const unknown = '12345';
        const c = await connect(adapter, { streams: [s], lastEventIdHeader: unknown });
        const first = await eventsOf(c, 2, 'the gap event and the retained event');
        assert.equal(first.events[0].type, 'gap', 'the first event is the gap');
        const g = JSON.parse(first.events[0].data);
        assert.equal(g.last_event_id, unknown, 'gap names the id the client sent');
        assert.deepEqual(g.streams, [s], 'gap names the stream');
        const r = await publish(h.server.base, s, 'live');
        const got = await eventsOf(c, 3, 'the live event after the gap');
        assert.deepEqual(got.events.map((e) => e.type), ['gap', 'message', 'message']);
        assert.deepEqual(strip(got.events), [
          { type: 'message', id: kept.id, data: 'retained' },
          { type: 'message', id: r.id, data: 'live' },
        ], 'the gap, then what the server still holds, then live');
      });
    });
  }

  test(`${label}: resumes without loss after DELETE /streams/NAME`, { timeout: 30000 }, async () => {
    await withServer(await serverOpts(), async (h, connect) => {
      const s = name('delete');
      const c = await connect(adapter, { streams: [s] });
      await waitFor(async () => (await c.snapshot()).opens >= 1, WAIT, 'the connection to open');
      const want = [];
      const pub = async (d, opts) => {
        const r = await publish(h.server.base, s, d, opts);
        want.push({ type: opts?.event ?? 'message', id: r.id, data: d });
        return r;
      };
      await pub('before 1');
      await pub('before 2', { event: 'greeting' });
      await eventsOf(c, 2, 'the 2 events before DELETE');
      await deleteStream(h.server.base, s);
      // The client is now disconnected and waits `retry` ms (300..600) before
      // it reconnects: these are published while it is away.
      const away = await pub('while away 1');
      await pub('while away 2\nsecond line', { event: 'greeting' });
      await pub('while away 3');
      assert.equal(away.subscribers, 0, 'DELETE closed the subscriber (nobody to queue to right after it)');
      await eventsOf(c, 5, 'the 3 events published while disconnected');
      const snap = await c.snapshot();
      assert.ok(snap.opens >= 2, `reconnected (opens=${snap.opens})`);
      await pub('live again');
      const got = await eventsOf(c, 6, 'a live event after the reconnect');
      assert.deepEqual(plain(got.events), want, 'every event exactly once, in order, no gap');
    });
  });

  test(`${label}: sees a gap event after ssed restarts`, { timeout: 40000 }, async () => {
    await withServer(await serverOpts(), async (h, connect) => {
      const s = name('restart');
      const c = await connect(adapter, { streams: [s] });
      await waitFor(async () => (await c.snapshot()).opens >= 1, WAIT, 'the connection to open');
      const r1 = await publish(h.server.base, s, 'before restart');
      await eventsOf(c, 1, 'the event before the restart');
      await h.restart();
      const snap = await waitFor(async () => {
        const x = await c.snapshot();
        return x.events.some((e) => e.type === 'gap') ? x : null;
      }, 15000, 'a gap event from the restarted server');
      const gaps = snap.events.filter((e) => e.type === 'gap');
      assert.equal(gaps.length, 1, 'exactly one gap');
      const g = JSON.parse(gaps[0].data);
      assert.equal(g.last_event_id, r1.id, 'gap names the id the client resumed from');
      assert.deepEqual(g.streams, [s], 'gap names the stream');
      const r2 = await publish(h.server.base, s, 'after restart');
      assert.ok(BigInt(r2.id) > BigInt(r1.id), `ids grow across restarts (${r1.id} then ${r2.id})`);
      const got = await eventsOf(c, 3, 'the event after the restart');
      assert.deepEqual(got.events.map((e) => e.type), ['message', 'gap', 'message']);
      assert.deepEqual(strip(got.events), [
        { type: 'message', id: r1.id, data: 'before restart' },
        { type: 'message', id: r2.id, data: 'after restart' },
      ]);
    });
  });
}
