// npm `@microsoft/fetch-event-source` 2.0.1 on Node 20 against ssed.
//
// It is written for browsers. With `openWhenHidden: true` it never adds a
// `visibilitychange` listener, yet its `dispose()` (run on every close,
// abort and fatal error) still calls `document.removeEventListener`, and
// it schedules retries with `window.setTimeout` / `window.clearTimeout`.
// Without these three it throws `ReferenceError: document is not defined`
// the first time a stream ends. Those three are all it needs: `fetch` is
// passed in through its `fetch` option (Node 20's global `fetch`), so no
// `window.fetch` is needed either.
globalThis.document ??= { removeEventListener() {} };
globalThis.window ??= { setTimeout, clearTimeout };

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fetchEventSource } from '@microsoft/fetch-event-source';
import { defineScenarios } from './lib/scenarios.mjs';
import { eventsUrl, startSsed, publish, waitFor } from './lib/ssed.mjs';

/** Thrown from `onclose` so that a clean end of the stream is retried. */
class StreamEnded extends Error {}

function fesClient({ base, streams, lastEventId, lastEventIdHeader, types }) {
  const st = { events: [], opens: 0, errors: 0, blocks: [] };
  const want = new Set(['message', ...types]);
  const ac = new AbortController();
  // Unlike EventSource it keeps no lastEventId on its messages (`id` is ''
  // on an event without an `id:` line, such as `gap`); remember it here.
  let lastId = '';
  // Lower case: it stores the id it sees as `last-event-id` in this same
  // object, and a `Last-Event-ID` key next to it would make fetch send both
  // joined ("12345, 1796…").
  const headers = lastEventIdHeader ? { 'last-event-id': lastEventIdHeader } : {};
  const done = fetchEventSource(eventsUrl(base, streams, lastEventId).toString(), {
    fetch,
    headers,
    signal: ac.signal,
    openWhenHidden: true,
    async onopen(res) {
      const ct = res.headers.get('content-type') || '';
      if (!res.ok || !ct.startsWith('text/event-stream')) throw new Error(`not an event stream: ${res.status} ${ct}`);
      st.opens += 1;
    },
    onmessage(m) {
      st.blocks.push(m);
      // It calls onmessage for every blank line, even one that ends a block
      // of only `retry:` or comments. ssed never sends such a block (its
      // `retry:` line is ended by the first event, its heartbeats are
      // comment lines without a blank line), so every message is recorded:
      // the scenarios fail on one nobody published.
      if (m.id !== '') lastId = m.id;
      const type = m.event || 'message';
      if (want.has(type)) st.events.push({ type, id: lastId, data: m.data });
    },
    // A clean end of the body (DELETE /streams/NAME, shutdown) resolves the
    // promise and never reconnects; throwing here turns it into an error,
    // which it retries after the server's `retry:`, sending `Last-Event-ID`.
    onclose() { throw new StreamEnded('server ended the stream'); },
    // Returning nothing retries after `retry:` ms; throwing would stop it.
    onerror() { st.errors += 1; },
  });
  return {
    st,
    snapshot: async () => ({ ...st, events: [...st.events] }),
    close: async () => { ac.abort(); await done; },
  };
}

const adapter = {
  headerResume: true,
  connect: async (a) => fesClient(a),
};

defineScenarios('@microsoft/fetch-event-source 2.0.1 (npm)', adapter);

// A quirk of its parser (`message.data ? data + '\n' + value : value`):
// leading empty `data:` lines are dropped, where EventSource keeps them.
// Pinned so that a version that fixes it fails here and the README's
// "what it needs" gets updated.
test('@microsoft/fetch-event-source 2.0.1 (npm): drops leading empty data lines', { timeout: 30000 }, async () => {
  const server = await startSsed();
  let c;
  try {
    const s = `lead-${process.pid}`;
    c = fesClient({ base: server.base, streams: [s], types: [] });
    await waitFor(async () => c.st.opens >= 1, 10000, 'the connection to open');
    const sent = [];
    for (const d of ['\nlead', '\n', 'a\n\nb']) sent.push((await publish(server.base, s, d)).id);
    await waitFor(async () => c.st.events.length >= 3, 10000, '3 events');
    assert.deepEqual(c.st.events.map(({ id, data }) => ({ id, data })), [
      { id: sent[0], data: 'lead' }, // EventSource: '\nlead'
      { id: sent[1], data: '' }, // EventSource: '\n'
      { id: sent[2], data: 'a\n\nb' }, // inner empty lines are kept
    ]);
  } finally {
    if (c) await c.close().catch(() => {});
    await server.stop();
  }
});
