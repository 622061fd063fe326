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
//! Envelope (one pub/sub message), binary-safe, decimal ASCII numbers,
//! each token ended by one space:
//! `S1 <id> <n> {<len(name)> <name> <prev> }*n <payload bytes to the end>`,
//! e.g. `S1 17 2 1 a 0 4 news 12 {"data":"x"}`.
//!
//! Ids must stay below 2^53 (Lua numbers are doubles): microsecond
//! timestamps reach that in the year 2255.

use super::resp::{encode_array_header, encode_bulk};

/// The publish script. KEYS: `P:id`, `P:last`, then each `P:s:<name>`.
/// ARGV: floor, history, channel, payload, then each name. Returns the
/// new id: above the last id, the server clock in µs, the floor, and
/// every target stream's previous id. All reads and checks come before
/// the first write, so it never writes half a publish.
pub const PUBLISH_LUA: &str = r#"
local function num(s) return tonumber(string.match(s, '^%d+')) or 0 end
local id = num(redis.call('GET', KEYS[1]) or '0') + 1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > id then id = now end
local floor = tonumber(ARGV[1]) + 1
if floor > id then id = floor end
local prevs = {}
for i = 3, #KEYS do
  local prev = num(redis.call('HGET', KEYS[2], ARGV[i + 2]) or '0')
  local top = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)[1]
  if top then
    local t = num(top[1])
    if t > prev then prev = t end
  end
  if prev + 1 > id then id = prev + 1 end
  prevs[i] = string.format('%.0f', prev)
end
local ids = string.format('%.0f', id)
redis.call('SET', KEYS[1], ids)
local env = {'S1 ', ids, ' ', tostring(#KEYS - 2), ' '}
for i = 3, #KEYS do
  local name = ARGV[i + 2]
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[2], ids .. '-1', 'f', ARGV[4], 'p', prevs[i])
  redis.call('HSET', KEYS[2], name, ids)
  env[#env + 1] = tostring(#name) .. ' ' .. name .. ' ' .. prevs[i] .. ' '
end
env[#env + 1] = ARGV[4]
redis.call('PUBLISH', ARGV[3], table.concat(env))
return ids
"#;

/// Most streams one publish may target (and an envelope may name).
pub const MAX_STREAMS: usize = 256;
/// Largest id the script can represent exactly.
pub const MAX_ID: u64 = (1 << 53) - 2;

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
    /// `P:s:<name>`.
    pub fn stream(&self, name: &str) -> String {
        format!("{}:s:{name}", self.prefix)
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
    /// Encodes numkeys, KEYS and ARGV for one publish.
    pub fn new(keys: &Keys, streams: &[&str], payload: &[u8], floor: u64, history: usize) -> Self {
        let mut bytes = Vec::with_capacity(payload.len() + 64 + streams.len() * 48);
        let mut count = 0;
        let mut arg = |a: &[u8]| {
            encode_bulk(a, &mut bytes);
            count += 1;
        };
        arg((streams.len() + 2).to_string().as_bytes());
        arg(format!("{}:id", keys.prefix).as_bytes());
        arg(format!("{}:last", keys.prefix).as_bytes());
        for s in streams {
            arg(keys.stream(s).as_bytes());
        }
        arg(floor.to_string().as_bytes());
        arg(history.max(1).to_string().as_bytes());
        arg(keys.channel.as_bytes());
        arg(payload);
        for s in streams {
            arg(s.as_bytes());
        }
        PublishArgs { bytes, count }
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
    fn publish_args_encode_a_command() {
        let keys = Keys::new("t");
        let args = PublishArgs::new(&keys, &["a"], b"pay", 7, 0);
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
            b"3",
            b"t:id",
            b"t:last",
            b"t:s:a",
            b"7",
            b"1",
            b"t:events",
            b"pay",
            b"a",
        ];
        assert_eq!(words, want);
    }
}
