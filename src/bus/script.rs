//! The Redis data model, the publish Lua script, and the pub/sub envelope.
//!
//! Owns what lives in Redis and what crosses the channel; it does no I/O.
//!
//! Keys, under a prefix `P` (default `ssed`):
//! * `P:id`: string, the last id allocated by any node.
//! * `P:last`: hash, stream name -> the last id published to it.
//! * `P:s:<name>`: a Redis stream per ssed stream; the entry for ssed id
//!   `N` has stream id `N-1` and fields `f` (payload) and `p` (the
//!   stream's previous ssed id, 0 for none), trimmed by `MAXLEN ~ history`.
//! * `P:events`: the pub/sub channel every publish announces itself on.
//!
//! An event published with [`Retain::Announce`] (a Mercure subscription
//! update: one topic per subscription, read only as it happens) gets an id
//! and an announcement but no stream entry and no `P:last` field, so such
//! topics leave nothing behind in Redis.
//!
//! Envelope (one pub/sub message), binary-safe, decimal ASCII numbers,
//! each token ended by one space:
//! `S1 <id> <n> {<len(name)> <name> <prev> }*n <payload bytes to the end>`,
//! e.g. `S1 17 2 1 a 0 4 news 12 {"data":"x"}`.
//!
//! Ids must stay below 2^53 (Lua numbers are doubles): microsecond
//! timestamps reach that in the year 2255.

use super::resp::{encode_array_header, encode_bulk};

/// The publish script: a batch of events, each to its own streams, in
/// one call. KEYS: `P:id`, `P:last`, then `P:s:<name>` of every stream
/// the batch touches (each once). ARGV: floor, history, channel, the
/// names of those streams (in KEYS order), then per event: its stream
/// count `n` (`an` for an event only announced, [`Retain::Announce`]), `n`
/// indexes into that list (1-based), its payload. Returns
/// one id per event, in order: each above the one before, the last id,
/// the server clock in µs, the floor, and every target stream's previous
/// id. All reads and checks come before the first write, so it never
/// writes part of a batch; every event is announced on its own (the
/// envelope below), with its own predecessor per stream.
pub const PUBLISH_LUA: &str = r#"
local function num(s) return tonumber(string.match(s, '^%d+')) or 0 end
local fmt = string.format
local id = num(redis.call('GET', KEYS[1]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = tonumber(ARGV[1]) + 1
local k = #KEYS - 2
local last, lasts, tag = {}, {}, {}
for i = 1, k do
  local name = ARGV[3 + i]
  local prev = num(redis.call('HGET', KEYS[2], name) or '0')
  local top = redis.call('XREVRANGE', KEYS[2 + i], '+', '-', 'COUNT', 1)[1]
  if top then
    local tp = num(top[1])
    if tp > prev then prev = tp end
  end
  last[i] = prev
  lasts[i] = fmt('%.0f', prev)
  tag[i] = #name .. ' ' .. name .. ' '
end
local ids, hist, chan = {}, ARGV[2], ARGV[3]
local a, argc = 4 + k, #ARGV
local kept = {}
while a <= argc do
  local ns = ARGV[a]
  local keep = string.sub(ns, 1, 1) ~= 'a'
  local n = tonumber(keep and ns or string.sub(ns, 2))
  local e = id + 1
  if now > e then e = now end
  if floor > e then e = floor end
  for j = a + 1, a + n do
    local p = last[tonumber(ARGV[j])] + 1
    if p > e then e = p end
  end
  local es = fmt('%.0f', e)
  local payload = ARGV[a + n + 1]
  local env = {'S1 ', es, ' ', n, ' '}
  for j = a + 1, a + n do
    local s = tonumber(ARGV[j])
    local ps = lasts[s]
    env[#env + 1] = tag[s] .. ps .. ' '
    if keep then
      redis.call('XADD', KEYS[2 + s], 'MAXLEN', '~', hist, es .. '-1', 'f', payload, 'p', ps)
      last[s], lasts[s], kept[s] = e, es, true
    end
  end
  env[#env + 1] = payload
  redis.call('PUBLISH', chan, table.concat(env))
  ids[#ids + 1] = es
  id = e
  a = a + n + 2
end
redis.call('SET', KEYS[1], fmt('%.0f', id))
local h = {}
for i = 1, k do
  if kept[i] then
    h[#h + 1] = ARGV[3 + i]
    h[#h + 1] = lasts[i]
  end
end
if #h > 0 then redis.call('HSET', KEYS[2], unpack(h)) end
return ids
"#;

/// The fetch script: entries of one stream after an id, in pages bounded
/// in bytes as well as in count, so no reply outgrows what a node reads
/// (a stream may hold far more than that in Redis). KEYS: `P:s:<name>`.
/// ARGV: the exclusive start (`(N-1`), the most entries, the byte budget.
/// Returns `[oldest entry's id or "", entries, more]`: `more` is 1 when the
/// budget ended the page before the count did. The first entry is always
/// taken, so a page makes progress; it reads at most 16 entries past the
/// budget at a time, so Redis never holds more than that either.
pub const FETCH_LUA: &str = r#"
local top = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local first = top and top[1] or ''
local left = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local out, bytes, start = {}, 0, ARGV[1]
while left > 0 do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', math.min(left, 16))
  if #page == 0 then break end
  for _, e in ipairs(page) do
    local size = #e[1]
    for _, f in ipairs(e[2]) do size = size + #f + 16 end
    if #out > 0 and bytes + size > budget then return {first, out, 1} end
    out[#out + 1] = e
    bytes = bytes + size
    left = left - 1
  end
  start = '(' .. page[#page][1]
end
return {first, out, 0}
"#;

/// Most streams one publish may target (and an envelope may name).
pub const MAX_STREAMS: usize = 256;
/// Largest id the script can represent exactly.
pub const MAX_ID: u64 = (1 << 53) - 2;
/// Most events in one script call.
pub const MAX_BATCH_EVENTS: usize = 256;
/// Payload bytes past which a batch takes no further event (one larger
/// event still goes, alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// The key names for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// `P:events`.
    pub channel: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            channel: format!("{prefix}:events"),
        }
    }
    /// `P:id`.
    pub fn id(&self) -> String {
        format!("{}:id", self.prefix)
    }
    /// `P:s:<name>`.
    pub fn stream(&self, name: &str) -> String {
        format!("{}:s:{name}", self.prefix)
    }
}

/// What Redis keeps of a published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retain {
    /// A stream entry (history other nodes fetch) and the stream's last id.
    History,
    /// Only the id and the announcement: for topics read only as they
    /// happen, which would otherwise leave a key each behind for good.
    Announce,
}

/// Events gathered for one publish script call (see [`PUBLISH_LUA`]).
#[derive(Debug, Default)]
pub struct Batch {
    names: Vec<String>,
    /// Each event: indexes into `names`, whether it is only announced,
    /// and its payload.
    events: Vec<(Vec<u16>, bool, Vec<u8>)>,
    bytes: usize,
    floor: u64,
}

impl Batch {
    /// Payload bytes gathered (for the memory account).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether no event is gathered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether an event to `streams` with `len` payload bytes may join
    /// (an empty batch takes anything).
    pub fn takes(&self, streams: &[&str], len: usize) -> bool {
        if self.events.is_empty() {
            return true;
        }
        let new = streams
            .iter()
            .filter(|s| !self.names.iter().any(|n| n == *s))
            .count();
        self.events.len() < MAX_BATCH_EVENTS
            && self.bytes + len <= MAX_BATCH_BYTES
            && self.names.len() + new <= MAX_STREAMS
    }

    /// Adds an event (`streams` distinct, at most [`MAX_STREAMS`]); the
    /// batch's floor is the highest asked.
    pub fn push(&mut self, streams: &[&str], payload: &[u8], floor: u64, retain: Retain) {
        let idx = streams
            .iter()
            .map(|s| match self.names.iter().position(|n| n == s) {
                Some(i) => i as u16,
                None => {
                    self.names.push(s.to_string());
                    (self.names.len() - 1) as u16
                }
            })
            .collect();
        self.events
            .push((idx, retain == Retain::Announce, payload.to_vec()));
        self.bytes += payload.len();
        self.floor = self.floor.max(floor);
    }

    /// Encodes numkeys, KEYS and ARGV for the script.
    pub fn args(&self, keys: &Keys, history: usize) -> PublishArgs {
        let mut bytes = Vec::with_capacity(self.bytes + 64 + self.events.len() * 16);
        let mut count = 0;
        let mut arg = |a: &[u8]| {
            encode_bulk(a, &mut bytes);
            count += 1;
        };
        arg((self.names.len() + 2).to_string().as_bytes());
        arg(keys.id().as_bytes());
        arg(format!("{}:last", keys.prefix).as_bytes());
        for s in &self.names {
            arg(keys.stream(s).as_bytes());
        }
        arg(self.floor.to_string().as_bytes());
        arg(history.max(1).to_string().as_bytes());
        arg(keys.channel.as_bytes());
        for s in &self.names {
            arg(s.as_bytes());
        }
        for (idx, announce, payload) in &self.events {
            let n = idx.len().to_string();
            if *announce {
                arg(format!("a{n}").as_bytes());
            } else {
                arg(n.as_bytes());
            }
            for i in idx {
                arg((i + 1).to_string().as_bytes());
            }
            arg(payload);
        }
        PublishArgs { bytes, count }
    }
}

/// The part of a publish command after `EVALSHA sha` / `EVAL script`,
/// kept so a NOSCRIPT reply can be retried as EVAL.
#[derive(Debug)]
pub struct PublishArgs {
    bytes: Vec<u8>,
    count: usize,
}

impl PublishArgs {
    /// Bytes it holds (kept until the reply, for a `NOSCRIPT` retry).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends `cmd first <args>` (`EVALSHA sha` or `EVAL script`).
    pub fn encode(&self, cmd: &[u8], first: &[u8], out: &mut Vec<u8>) {
        encode_array_header(self.count + 2, out);
        encode_bulk(cmd, out);
        encode_bulk(first, out);
        out.extend_from_slice(&self.bytes);
    }
}

/// One decoded pub/sub announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The published id.
    pub id: u64,
    /// Each target stream and its previous id (0 for none).
    pub streams: Vec<(String, u64)>,
    /// The caller's opaque payload.
    pub payload: Vec<u8>,
}

/// Reads a decimal number ended by a space.
fn token(b: &mut &[u8]) -> Option<u64> {
    let sp = b.iter().take(21).position(|&c| c == b' ')?;
    let (digits, rest) = b.split_at(sp);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    *b = &rest[1..];
    Some(n)
}

/// Parses an envelope; `None` for anything malformed.
pub fn parse_envelope(mut b: &[u8]) -> Option<Envelope> {
    b = b.strip_prefix(b"S1 ")?;
    let id = token(&mut b)?;
    let n = usize::try_from(token(&mut b)?).ok()?;
    if n > MAX_STREAMS {
        return None;
    }
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let len = usize::try_from(token(&mut b)?).ok()?;
        if len >= b.len() || b[len] != b' ' {
            return None;
        }
        let name = std::str::from_utf8(&b[..len]).ok()?.to_string();
        b = &b[len + 1..];
        streams.push((name, token(&mut b)?));
    }
    Some(Envelope {
        id,
        streams,
        payload: b.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envelopes() {
        let e = parse_envelope(b"S1 17 2 1 a 0 6 ne ws  12 {\"x\": 1} ").unwrap();
        assert_eq!(e.id, 17);
        assert_eq!(e.streams, vec![("a".into(), 0), ("ne ws ".into(), 12)]);
        assert_eq!(e.payload, b"{\"x\": 1} ");
        let e = parse_envelope(b"S1 5 0 ").unwrap();
        assert!(e.streams.is_empty() && e.payload.is_empty());
        for bad in [
            &b"S2 1 0 "[..],
            b"S1 1",
            b"S1 x 0 ",
            b"S1 1 1 5 a 0 ",
            b"S1 1 1 1 a",
            b"S1 1 999 ",
            b"S1 99999999999999999999999 0 ",
            b"S1 1 1 1 \xff 0 ",
        ] {
            assert_eq!(parse_envelope(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn batch_args_encode_a_command() {
        let keys = Keys::new("t");
        let mut batch = Batch::default();
        batch.push(&["a"], b"pay", 7, Retain::History);
        batch.push(&["b", "a"], b"two", 3, Retain::History);
        batch.push(&["b"], b"now", 0, Retain::Announce);
        let args = batch.args(&keys, 0);
        let mut out = Vec::new();
        args.encode(b"EVALSHA", b"abc", &mut out);
        let mut d = super::super::resp::Decoder::default();
        let (v, _) = d.decode(&out).unwrap().unwrap();
        let words: Vec<&[u8]> = v
            .items()
            .unwrap()
            .iter()
            .map(|v| v.bytes().unwrap())
            .collect();
        let want: Vec<&[u8]> = vec![
            b"EVALSHA",
            b"abc",
            b"4",
            b"t:id",
            b"t:last",
            b"t:s:a",
            b"t:s:b",
            b"7",
            b"1",
            b"t:events",
            b"a",
            b"b",
            b"1",
            b"1",
            b"pay",
            b"2",
            b"2",
            b"1",
            b"two",
            b"a1",
            b"2",
            b"now",
        ];
        assert_eq!(words, want);
    }

    #[test]
    fn batches_are_bounded() {
        let mut batch = Batch::default();
        let big = vec![0; MAX_BATCH_BYTES + 1];
        assert!(
            batch.takes(&["a"], big.len()),
            "an empty batch takes anything"
        );
        batch.push(&["a"], &big, 0, Retain::History);
        assert!(!batch.takes(&["a"], 1), "over the byte bound");
        let mut batch = Batch::default();
        for _ in 0..MAX_BATCH_EVENTS {
            assert!(batch.takes(&["a"], 1));
            batch.push(&["a"], b"x", 0, Retain::History);
        }
        assert!(!batch.takes(&["a"], 1), "over the event bound");
        let mut batch = Batch::default();
        let names: Vec<String> = (0..MAX_STREAMS).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        batch.push(&refs, b"x", 0, Retain::History);
        assert!(batch.takes(&["s1"], 1), "known streams cost nothing");
        assert!(!batch.takes(&["new"], 1), "over the stream bound");
    }
}
