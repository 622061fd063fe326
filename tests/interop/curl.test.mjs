// `curl -N` against ssed: the raw bytes on the wire. curl does not
// reconnect by itself, so the adapter does what a shell loop would: run curl
// again after `retry` ms with `-H "Last-Event-ID: <last id seen>"`.

import { spawn } from 'node:child_process';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defineScenarios } from './lib/scenarios.mjs';
import { startSsed, publish, publishSamples, waitFor } from './lib/ssed.mjs';

const live = new Set();
process.on('exit', () => { for (const p of live) p.kill('SIGKILL'); });

/** Parses complete SSE blocks out of `buf` (EventSource rules); returns the rest. */
function parseBlocks(buf, onBlock) {
  for (;;) {
    const m = /\r\n\r\n|\n\n|\r\r/.exec(buf);
    if (!m) return buf;
    onBlock(buf.slice(0, m.index).split(/\r\n|\r|\n/));
    buf = buf.slice(m.index + m[0].length);
  }
}

function curlClient({ base, streams, lastEventId, types }) {
  const st = { events: [], opens: 0, raw: [], retry: 1000, lastId: lastEventId || '' };
  let closed = false;
  let child = null;
  const want = new Set(['message', ...types]);
  const connectOnce = (first) => new Promise((resolve) => {
    const url = new URL('/events', base);
    for (const s of streams) url.searchParams.append('stream', s);
    const args = ['-sS', '-N', '-H', 'Accept: text/event-stream'];
    if (first && lastEventId) url.searchParams.set('last_event_id', lastEventId);
    else if (st.lastId) args.push('-H', `Last-Event-ID: ${st.lastId}`);
    args.push(url.toString());
    child = spawn('curl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let buf = '';
    const conn = { text: '' };
    st.raw.push(conn);
    let opened = false;
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      conn.text += d;
      // Open once the body starts: its first line (`retry:`) ends no block.
      if (!opened) { opened = true; st.opens += 1; }
      buf = parseBlocks(buf + d, (lines) => {
        let type = 'message';
        const data = [];
        let sawData = false;
        for (const l of lines) {
          if (l.startsWith(':')) continue;
          const i = l.indexOf(':');
          const f = i < 0 ? l : l.slice(0, i);
          let v = i < 0 ? '' : l.slice(i + 1);
          if (v.startsWith(' ')) v = v.slice(1);
          if (f === 'id') st.lastId = v;
          else if (f === 'event') type = v;
          else if (f === 'data') { data.push(v); sawData = true; }
          else if (f === 'retry' && /^\d+$/.test(v)) st.retry = Number(v);
        }
        if (sawData && want.has(type)) st.events.push({ type, id: st.lastId, data: data.join('\n') });
      });
    });
    child.once('exit', () => { live.delete(child); resolve(); });
  });
  const loop = (async () => {
    let first = true;
    while (!closed) {
      await connectOnce(first);
      first = false;
      if (!closed) await new Promise((r) => setTimeout(r, st.retry));
    }
  })();
  return {
    st,
    snapshot: async () => ({ ...st, events: [...st.events] }),
    close: async () => { closed = true; if (child) child.kill('SIGTERM'); await loop; },
  };
}

const adapter = { connect: async (a) => curlClient(a) };

defineScenarios('curl -N', adapter);

test('curl -N: byte-exact framing', { timeout: 30000 }, async () => {
  const server = await startSsed();
  const c = curlClient({ base: server.base, streams: ['framing'], types: [] });
  try {
    await waitFor(() => c.st.opens >= 1, 10000, 'the retry line');
    const want = await publishSamples(server.base, 'framing');
    const frames = want.map(({ id, type, data }) => `id: ${id}\n${type === 'message' ? '' : `event: ${type}\n`}${data.split('\n').map((l) => (l ? `data: ${l}\n` : 'data:\n')).join('')}\n`);
    const expected = frames.join('');
    await waitFor(() => c.st.raw[0].text.length >= expected.length, 10000, 'all frames');
    const text = c.st.raw[0].text;
    // A line, no blank line: the first event ends the block it opens.
    const m = /^retry: (\d+)\n/.exec(text);
    assert.ok(m, `starts with a retry line: ${JSON.stringify(text.slice(0, 40))}`);
    const n = Number(m[1]);
    assert.ok(n >= 300 && n < 600, `retry ${n} drawn from [300, 600)`);
    assert.equal(text.slice(m[0].length), expected);
  } finally {
    await c.close();
    await server.stop();
  }
});

test('curl -N: response headers', { timeout: 20000 }, async () => {
  const server = await startSsed();
  try {
    const out = await new Promise((resolve, reject) => {
      // --max-time bounds the stream: curl exits 28 after reading the headers.
      const p = spawn('curl', ['-sS', '-N', '-D', '-', '-o', '/dev/null', '--max-time', '1', `${server.base}/events?stream=hdr`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let s = '';
      p.stdout.on('data', (d) => { s += d; });
      p.once('exit', () => resolve(s));
      p.once('error', reject);
    });
    assert.match(out, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(out, /^content-type: text\/event-stream/im);
    assert.match(out, /^cache-control: no-cache/im);
    assert.match(out, /^x-accel-buffering: no/im);
    assert.doesNotMatch(out, /^content-encoding:/im);
    // HTTP/1.1 streams are chunked, so clients that fill a read buffer
    // (sseclient-py over urllib3) see each event as it is sent.
    assert.match(out, /^transfer-encoding: chunked\r$/im);
    assert.doesNotMatch(out, /^content-length:/im);
  } finally {
    await server.stop();
  }
});

test('curl -0 -N: HTTP/1.0 streams are the bare body until close', { timeout: 20000 }, async () => {
  const server = await startSsed();
  try {
    const out = await new Promise((resolve, reject) => {
      const p = spawn('curl', ['-sS', '-0', '-N', '-D', '-', '--max-time', '1', `${server.base}/events?stream=old`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let s = '';
      p.stdout.on('data', (d) => { s += d; });
      p.once('exit', () => resolve(s));
      p.once('error', reject);
    });
    assert.match(out, /^HTTP\/1\.0 200 OK\r\n/);
    assert.doesNotMatch(out, /^transfer-encoding:/im);
    assert.match(out, /\r\n\r\nretry: \d+\n$/);
  } finally {
    await server.stop();
  }
});

test('curl -N: heartbeat comment after --heartbeat seconds of silence', { timeout: 20000 }, async () => {
  const server = await startSsed({ heartbeat: 1 });
  const c = curlClient({ base: server.base, streams: ['hb'], types: [] });
  try {
    await waitFor(() => c.st.opens >= 1, 10000, 'the retry line');
    const t0 = Date.now();
    // A comment line and no blank line: nothing a client could dispatch.
    await waitFor(() => /^retry: \d+\n:\n/.test(c.st.raw[0].text), 5000, 'a `:` comment line');
    const dt = Date.now() - t0;
    assert.ok(dt >= 500, `heartbeat not before ~1 s of silence (came after ${dt} ms)`);
    assert.deepEqual(c.st.events, [], 'a comment is not an event');
    assert.doesNotMatch(c.st.raw[0].text, /\n\n/, 'no blank line before the first event');
  } finally {
    await c.close();
    await server.stop();
  }
});

test('curl -N: a Last-Event-ID header wins over ?last_event_id', { timeout: 20000 }, async () => {
  // EventSource keeps its first URL (with ?last_event_id) and adds the
  // header on reconnects: the header must win, or a reconnect replays twice.
  const server = await startSsed();
  try {
    const ids = [];
    for (const d of ['one', 'two', 'three']) ids.push((await publish(server.base, 'prec', d)).id);
    const out = await new Promise((resolve, reject) => {
      const p = spawn('curl', ['-sS', '-N', '--max-time', '1', '-H', `Last-Event-ID: ${ids[1]}`,
        `${server.base}/events?stream=prec&last_event_id=${ids[0]}`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let s = '';
      p.stdout.on('data', (d) => { s += d; });
      p.once('exit', () => resolve(s));
      p.once('error', reject);
    });
    assert.equal(out.replace(/^retry: \d+\n/, ''), `id: ${ids[2]}\ndata: three\n\n`);
  } finally {
    await server.stop();
  }
});
