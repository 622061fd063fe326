// Helpers shared by the interop and browser tests: start a real ssed on
// port 0, publish to it, and wait for conditions with a deadline.
//
// Every ssed started here is killed when the test process exits, whatever
// way it exits.

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';

export const SSED_BIN = process.env.SSED_BIN
  ? path.resolve(process.env.SSED_BIN)
  : path.resolve('target/debug/ssed');

const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try { p.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

/** Polls `check` every 20 ms until it returns a truthy value or `ms` pass. */
export async function waitFor(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves with the first `event` emitted by `emitter`, or rejects after `ms`. */
export function once(emitter, event, ms, what = event) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    emitter.once(event, (...a) => { clearTimeout(t); resolve(a); });
  });
}

/**
 * Starts ssed. `port` 0 picks a free port; a fixed port (used to restart a
 * server "in place") is retried for a few seconds in case the old socket
 * is still being released.
 */
export async function startSsed({ port = 0, args = [], retryMs = 300, cors = [], heartbeat = 0 } = {}) {
  const deadline = Date.now() + 8000;
  for (;;) {
    try {
      return await startOnce(port, args, retryMs, cors, heartbeat);
    } catch (e) {
      if (port === 0 || Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function startOnce(port, args, retryMs, cors, heartbeat) {
  const argv = ['--listen', `127.0.0.1:${port}`, '--heartbeat', String(heartbeat), '--retry', String(retryMs)];
  for (const o of cors) argv.push('--cors-origin', o);
  argv.push(...args);
  const proc = spawn(SSED_BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000); });
  const exited = new Promise((resolve) => proc.once('exit', (code, sig) => {
    live.delete(proc);
    resolve({ code, sig });
  }));
  const lines = createInterface({ input: proc.stdout });
  const first = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`ssed printed no "listening on" line within 10 s; stderr: ${stderr}`)), 10000);
    lines.once('line', (l) => { clearTimeout(t); resolve(l); });
    proc.once('error', (e) => { clearTimeout(t); reject(e); });
    exited.then(({ code, sig }) => {
      clearTimeout(t);
      reject(new Error(`ssed exited (code ${code}, signal ${sig}) before listening; stderr: ${stderr}`));
    });
  });
  const m = /^listening on http:\/\/127\.0\.0\.1:(\d+)$/.exec(first);
  if (!m) {
    proc.kill('SIGKILL');
    throw new Error(`unexpected first stdout line from ssed: ${JSON.stringify(first)}`);
  }
  const p = Number(m[1]);
  const server = {
    port: p,
    base: `http://127.0.0.1:${p}`,
    proc,
    get stderr() { return stderr; },
    /** SIGTERM, then SIGKILL if it has not exited within 6 s. */
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 6000);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
  return server;
}

/** Stops `server` and starts a new ssed on the same port with the same flags. */
export async function restartSsed(server, opts = {}) {
  await server.stop();
  return startSsed({ ...opts, port: server.port });
}

/**
 * Publishes one event. `opts.event` sets the type (query parameter for a
 * raw body, field for JSON); `opts.json` sends a JSON body instead of raw.
 * Returns the server's reply `{id, subscribers}`.
 */
export async function publish(base, stream, data, opts = {}) {
  const q = new URLSearchParams();
  for (const s of [].concat(stream)) q.append('stream', s);
  let body = data;
  const headers = {};
  if (opts.json) {
    const o = { data };
    if (opts.event) o.event = opts.event;
    body = JSON.stringify(o);
    headers['Content-Type'] = 'application/json';
  } else {
    if (opts.event) q.set('event', opts.event);
    headers['Content-Type'] = 'text/plain; charset=utf-8';
  }
  let r;
  try {
    r = await fetch(`${base}/events?${q}`, { method: 'POST', body, headers, signal: AbortSignal.timeout(5000) });
  } catch (e) {
    // undici says only "fetch failed"; the cause says what the socket did.
    throw new Error(`publish to ${stream}: ${e.message}: ${e.cause?.code ?? ''} ${e.cause?.message ?? e.cause ?? ''}`);
  }
  const text = await r.text();
  if (r.status !== 200) throw new Error(`publish to ${stream} answered ${r.status}: ${text}`);
  const reply = JSON.parse(text);
  if (typeof reply.id !== 'string' || !/^\d+$/.test(reply.id)) throw new Error(`publish reply has no decimal string id: ${text}`);
  return reply;
}

/** The subscribe URL: /events?stream=A&stream=B[&last_event_id=X]. */
export function eventsUrl(base, streams, lastEventId) {
  const url = new URL('/events', base);
  for (const s of streams) url.searchParams.append('stream', s);
  if (lastEventId) url.searchParams.set('last_event_id', lastEventId);
  return url;
}

/** DELETE /streams/NAME: closes the stream's subscribers. */
export async function deleteStream(base, name) {
  const r = await fetch(`${base}/streams/${encodeURIComponent(name)}`, { method: 'DELETE', signal: AbortSignal.timeout(5000) });
  const text = await r.text();
  if (r.status < 200 || r.status > 299) throw new Error(`DELETE /streams/${name} answered ${r.status}: ${text}`);
  return text;
}

/** GET /streams/NAME as JSON, or null on 404. */
export async function streamInfo(base, name) {
  const r = await fetch(`${base}/streams/${encodeURIComponent(name)}`, { signal: AbortSignal.timeout(5000) });
  if (r.status === 404) return null;
  return r.json();
}

/**
 * The events every client must deliver exactly, published one by one:
 * [stream, data, opts, expected type].
 */
export const SAMPLES = [
  ['a\nb\nc', {}, 'message'],
  ['héllo ✓ 日本', { event: 'greeting' }, 'greeting'],
  ['', {}, 'message'],
  ['', { json: true, event: 'empty' }, 'empty'],
  ['{"k":[1,2]}', { json: true }, 'message'],
  ['crlf\r\nsplit\rlines', { event: 'x.y-z_1' }, 'x.y-z_1'],
];
/** What a client sees for a sample's data (CR, LF and CRLF split lines). */
export const expectedData = (d) => d.replace(/\r\n|\r/g, '\n');
/** Every event type a client must listen to, besides `message`. */
export const SAMPLE_TYPES = ['greeting', 'empty', 'x.y-z_1', 'gap'];

/** Publishes every SAMPLE to `stream`; returns the expected events with ids. */
export async function publishSamples(base, stream) {
  const out = [];
  for (const [data, opts, type] of SAMPLES) {
    const r = await publish(base, stream, data, opts);
    out.push({ id: r.id, type, data: expectedData(data), subscribers: r.subscribers });
  }
  return out;
}
