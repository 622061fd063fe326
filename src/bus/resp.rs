//! RESP2 wire format: encodes commands as arrays of bulk strings and
//! decodes replies incrementally.
//!
//! Owns framing only: it knows nothing about sockets or commands. It must
//! never panic or allocate on a length it has not checked: every length
//! is bounded (bulk <= `max_bulk`, array <= [`MAX_ARRAY`], nesting <=
//! [`MAX_DEPTH`], line <= [`MAX_LINE`]) before anything is reserved, and a
//! bulk's bytes are copied once, when all of them have arrived.

use std::fmt;

/// Default largest bulk string accepted: 64 MiB plus a margin for framing.
pub const DEFAULT_MAX_BULK: usize = (64 << 20) + (64 << 10);
/// Largest array length accepted, also counted over all the arrays
/// nested in one value (so one reply holds at most this many items).
pub const MAX_ARRAY: usize = 1 << 20;
/// Deepest array nesting accepted (the outermost array is depth 1).
pub const MAX_DEPTH: usize = 8;
/// Longest header or simple line (type byte to CR) accepted.
pub const MAX_LINE: usize = 64 << 10;

/// One decoded RESP2 value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+text`
    Simple(Vec<u8>),
    /// `-text`
    Error(Vec<u8>),
    /// `:n`
    Int(i64),
    /// `$n` bytes, `None` for `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*n` values, `None` for `*-1`.
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The bytes of a simple or bulk string.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Simple(b) | Value::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }
    /// The items of a non-null array.
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(Some(v)) => Some(v),
            _ => None,
        }
    }
}

/// Why input is not valid (or not acceptable) RESP2. The stream is
/// unusable after any of these: drop the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespError {
    /// A type byte that RESP2 does not define.
    BadType(u8),
    /// A length or integer that is not a decimal `i64`, or a negative
    /// length other than -1.
    BadNumber,
    /// A line not ended by CRLF, or a bulk not followed by CRLF.
    BadTerminator,
    /// A line longer than [`MAX_LINE`].
    LineTooLong,
    /// A bulk longer than the decoder's limit.
    BulkTooLong(i64),
    /// An array longer than [`MAX_ARRAY`].
    ArrayTooLong(i64),
    /// Arrays nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RespError::BadType(b) => write!(f, "unknown RESP type byte 0x{b:02x}"),
            RespError::BadNumber => write!(f, "bad RESP length or integer"),
            RespError::BadTerminator => write!(f, "missing CRLF"),
            RespError::LineTooLong => write!(f, "RESP line over {MAX_LINE} bytes"),
            RespError::BulkTooLong(n) => write!(f, "bulk of {n} bytes over the limit"),
            RespError::ArrayTooLong(n) => write!(f, "array of {n} items over the limit"),
            RespError::TooDeep => write!(f, "arrays nested over {MAX_DEPTH} deep"),
        }
    }
}

impl std::error::Error for RespError {}

fn push_len(out: &mut Vec<u8>, tag: u8, n: usize) {
    out.push(tag);
    out.extend_from_slice(n.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `args` to `out` as one command: an array of bulk strings.
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    push_len(out, b'*', args.len());
    for a in args {
        encode_bulk(a, out);
    }
}

/// Appends one bulk string (for building a command in pieces).
pub fn encode_bulk(arg: &[u8], out: &mut Vec<u8>) {
    push_len(out, b'$', arg.len());
    out.extend_from_slice(arg);
    out.extend_from_slice(b"\r\n");
}

/// Appends an array header of `n` items.
pub fn encode_array_header(n: usize, out: &mut Vec<u8>) {
    push_len(out, b'*', n);
}

/// A strict decimal `i64`: optional `-`, 1 to 19 digits, no overflow.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -n } else { n })
}

/// An incremental RESP2 decoder.
///
/// Contract: call [`Decoder::decode`] with all unconsumed input; between
/// calls that return `Ok(None)` the caller may only append to that input.
/// `Ok(Some((value, used)))` means the first `used` bytes are consumed and
/// the decoder is fresh again. Work is proportional to new bytes: parsed
/// headers and finished items are kept, and a pending bulk is only
/// length-checked until it is complete.
#[derive(Debug)]
pub struct Decoder {
    max_bulk: usize,
    /// Bytes of the current input already parsed into `stack`/`bulk`.
    pos: usize,
    /// Bytes from `pos` already searched for LF without finding one.
    scanned: usize,
    /// A bulk header was read; its payload of this length starts at `pos`.
    bulk: Option<usize>,
    /// Open arrays: items so far and the declared length.
    stack: Vec<(Vec<Value>, usize)>,
    /// Items declared by every array of the current value.
    items: usize,
    /// Bytes of the finished items kept in `stack` (see [`Decoder::held`]).
    held: usize,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new(DEFAULT_MAX_BULK)
    }
}

impl Decoder {
    /// A decoder rejecting bulks longer than `max_bulk` bytes.
    pub fn new(max_bulk: usize) -> Decoder {
        Decoder {
            max_bulk,
            pos: 0,
            scanned: 0,
            bulk: None,
            stack: Vec::new(),
            items: 0,
            held: 0,
        }
    }

    /// Forgets any partial value (after an error or a reconnect).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.scanned = 0;
        self.bulk = None;
        self.stack.clear();
        self.items = 0;
        self.held = 0;
    }

    /// Bytes of a value being decoded that it holds as finished items (a
    /// copy of what the input buffer still holds), for the memory account.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Decodes the next value from `buf` (see the type's contract):
    /// `Ok(None)` needs more bytes.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
        loop {
            let Some(scalar) = self.step(buf)? else {
                return Ok(None);
            };
            let Some(mut v) = scalar else {
                continue; // an array or a bulk header was opened
            };
            loop {
                let Some((items, n)) = self.stack.last_mut() else {
                    let used = self.pos;
                    self.reset();
                    return Ok(Some((v, used)));
                };
                self.held += std::mem::size_of::<Value>()
                    + match &v {
                        Value::Bulk(Some(b)) => b.len(),
                        _ => 0,
                    };
                items.push(v);
                if items.len() < *n {
                    break;
                }
                let Some((items, _)) = self.stack.pop() else {
                    break; // unreachable: last_mut was Some
                };
                v = Value::Array(Some(items));
            }
        }
    }

    /// Parses one element at `pos`: `None` = need more bytes,
    /// `Some(None)` = opened an array or bulk, `Some(Some(v))` = a value.
    fn step(&mut self, buf: &[u8]) -> Result<Option<Option<Value>>, RespError> {
        if let Some(n) = self.bulk {
            let end = self.pos + n;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::BadTerminator);
            }
            let v = Value::Bulk(Some(buf[self.pos..end].to_vec()));
            self.pos = end + 2;
            self.bulk = None;
            return Ok(Some(Some(v)));
        }
        let Some(cr) = self.find_line(buf)? else {
            return Ok(None);
        };
        let kind = buf[self.pos];
        let line = &buf[self.pos + 1..cr];
        let next = cr + 2;
        let num = || parse_int(line).ok_or(RespError::BadNumber);
        let v = match kind {
            b'+' => Value::Simple(line.to_vec()),
            b'-' => Value::Error(line.to_vec()),
            b':' => Value::Int(num()?),
            b'$' => match num()? {
                -1 => Value::Bulk(None),
                n if n < 0 => return Err(RespError::BadNumber),
                n if n as u64 > self.max_bulk as u64 => return Err(RespError::BulkTooLong(n)),
                n => {
                    self.bulk = Some(n as usize);
                    self.pos = next;
                    return Ok(Some(None));
                }
            },
            b'*' => match num()? {
                -1 => Value::Array(None),
                0 => Value::Array(Some(Vec::new())),
                n if n < 0 => return Err(RespError::BadNumber),
                n if n as u64 > (MAX_ARRAY - self.items) as u64 => {
                    return Err(RespError::ArrayTooLong(n))
                }
                n => {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(RespError::TooDeep);
                    }
                    let n = n as usize;
                    self.items += n;
                    self.stack.push((Vec::with_capacity(n.min(64)), n));
                    self.pos = next;
                    self.scanned = 0;
                    return Ok(Some(None));
                }
            },
            other => return Err(RespError::BadType(other)),
        };
        self.pos = next;
        self.scanned = 0;
        Ok(Some(Some(v)))
    }

    /// The index of the CR ending the line at `pos`, if it has arrived.
    fn find_line(&mut self, buf: &[u8]) -> Result<Option<usize>, RespError> {
        let from = self.pos + self.scanned;
        if from >= buf.len() {
            return Ok(None);
        }
        match buf[from..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let lf = from + i;
                if lf < self.pos + 2 || buf[lf - 1] != b'\r' {
                    return Err(RespError::BadTerminator);
                }
                if lf - self.pos > MAX_LINE {
                    return Err(RespError::LineTooLong);
                }
                self.scanned = 0;
                Ok(Some(lf - 1))
            }
            None => {
                self.scanned = buf.len() - self.pos;
                if self.scanned > MAX_LINE {
                    return Err(RespError::LineTooLong);
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn bulk(s: &str) -> Value {
        Value::Bulk(Some(s.as_bytes().to_vec()))
    }

    /// What a half-read reply holds as finished items is counted (the
    /// memory account's `bus` kind), and given back when the value is done.
    #[test]
    fn held_counts_finished_items_of_an_open_value() {
        let mut d = Decoder::default();
        let whole = b"*3\r\n$5\r\nhello\r\n$3\r\nabc\r\n:7\r\n";
        let cut = whole.len() - 4;
        assert_eq!(d.decode(&whole[..cut]).unwrap(), None);
        let item = std::mem::size_of::<Value>();
        assert_eq!(d.held(), 2 * item + 5 + 3);
        let (v, used) = d.decode(whole).unwrap().unwrap();
        assert_eq!(used, whole.len());
        assert_eq!(
            v,
            Value::Array(Some(vec![bulk("hello"), bulk("abc"), Value::Int(7)]))
        );
        assert_eq!(d.held(), 0);
    }

    fn samples() -> Vec<(&'static [u8], Value)> {
        vec![
            (b"+OK\r\n", Value::Simple(b"OK".to_vec())),
            (b"-ERR no\r\n", Value::Error(b"ERR no".to_vec())),
            (b":-42\r\n", Value::Int(-42)),
            (b"$5\r\nhello\r\n", bulk("hello")),
            (b"$0\r\n\r\n", bulk("")),
            (b"$-1\r\n", Value::Bulk(None)),
            (b"*-1\r\n", Value::Array(None)),
            (b"*0\r\n", Value::Array(Some(vec![]))),
            (b"$4\r\na\r\nb\r\n", bulk("a\r\nb")),
            (
                b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n*2\r\n:1\r\n*1\r\n$-1\r\n",
                Value::Array(Some(vec![
                    bulk("message"),
                    bulk("c"),
                    Value::Array(Some(vec![
                        Value::Int(1),
                        Value::Array(Some(vec![Value::Bulk(None)])),
                    ])),
                ])),
            ),
        ]
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&[b"SET", b"k", b""], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        let mut d = Decoder::default();
        let (v, used) = d.decode(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            v,
            Value::Array(Some(vec![bulk("SET"), bulk("k"), bulk("")]))
        );
    }

    #[test]
    fn every_split_is_partial_then_the_same_value() {
        for (wire, want) in samples() {
            for k in 0..wire.len() {
                let mut d = Decoder::default();
                assert_eq!(d.decode(&wire[..k]), Ok(None), "{wire:?} at {k}");
                assert_eq!(d.decode(wire), Ok(Some((want.clone(), wire.len()))));
            }
            // Byte by byte with one decoder, and with trailing data.
            let mut d = Decoder::default();
            for k in 0..wire.len() {
                assert_eq!(d.decode(&wire[..k]), Ok(None));
            }
            let mut two = wire.to_vec();
            two.extend_from_slice(b"+next\r\n");
            assert_eq!(d.decode(&two), Ok(Some((want, wire.len()))));
            let (v, _) = d.decode(&two[wire.len()..]).unwrap().unwrap();
            assert_eq!(v, Value::Simple(b"next".to_vec()));
        }
    }

    #[test]
    fn rejects_bad_input() {
        let bad: &[(&[u8], RespError)] = &[
            (b"$-2\r\n", RespError::BadNumber),
            (b"$abc\r\n", RespError::BadNumber),
            (b"$\r\n", RespError::BadNumber),
            (b":12x\r\n", RespError::BadNumber),
            (b":99999999999999999999\r\n", RespError::BadNumber),
            (b"*99999999999\r\n", RespError::ArrayTooLong(99999999999)),
            (b"$9999999999999\r\n", RespError::BulkTooLong(9999999999999)),
            (b"$3\r\nabcd\r\n", RespError::BadTerminator),
            (b"+OK\n", RespError::BadTerminator),
            (b"\r\n", RespError::BadTerminator),
            (b"%2\r\n", RespError::BadType(b'%')),
            (
                b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",
                RespError::TooDeep,
            ),
        ];
        for (wire, err) in bad {
            assert_eq!(
                Decoder::default().decode(wire),
                Err(err.clone()),
                "{wire:?}"
            );
        }
        let mut d = Decoder::new(10);
        assert_eq!(d.decode(b"$11\r\n"), Err(RespError::BulkTooLong(11)));
        let long = vec![b'+'; MAX_LINE + 2];
        assert_eq!(
            Decoder::default().decode(&long),
            Err(RespError::LineTooLong)
        );
        // 1M items in all, not per array.
        let mut d = Decoder::default();
        assert_eq!(d.decode(b"*2\r\n*1048574\r\n"), Ok(None));
        assert_eq!(
            d.decode(b"*2\r\n*1048574\r\n*2\r\n"),
            Err(RespError::ArrayTooLong(2))
        );
        // Depth 8 is fine.
        let mut deep = b"*1\r\n".repeat(8);
        deep.extend_from_slice(b":1\r\n");
        assert!(Decoder::default().decode(&deep).unwrap().is_some());
    }

    #[test]
    fn large_bulk_in_small_reads_is_linear() {
        let n = 16 << 20;
        let mut wire = format!("${n}\r\n").into_bytes();
        wire.resize(wire.len() + n, b'x');
        wire.extend_from_slice(b"\r\n");
        let mut d = Decoder::default();
        let start = std::time::Instant::now();
        let mut got = None;
        for end in (1024..=wire.len()).step_by(1024).chain([wire.len()]) {
            if let Some(v) = d.decode(&wire[..end]).unwrap() {
                got = Some(v);
                break;
            }
        }
        let (v, used) = got.unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(v.bytes().map(<[u8]>::len), Some(n));
        // Linear is milliseconds; quadratic re-parsing of 16 MiB is minutes.
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn random_mutations_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let all: Vec<Vec<u8>> = samples().into_iter().map(|(w, _)| w.to_vec()).collect();
        let alphabet = b"+-:$*\r\n0123456789-x";
        for _ in 0..20_000 {
            let mut wire = all[rng.gen_range(0..all.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..=wire.len());
                let b = if rng.gen_bool(0.7) {
                    alphabet[rng.gen_range(0..alphabet.len())]
                } else {
                    rng.gen()
                };
                match rng.gen_range(0..3) {
                    0 if i < wire.len() => wire[i] = b,
                    1 if i < wire.len() => drop(wire.remove(i)),
                    _ => wire.insert(i, b),
                }
            }
            // Feed in random chunks; consume values as they complete.
            let mut d = Decoder::new(1 << 20);
            let (mut start, mut end) = (0, 0);
            while end < wire.len() {
                end = (end + rng.gen_range(1..8)).min(wire.len());
                loop {
                    match d.decode(&wire[start..end]) {
                        Ok(Some((_, used))) => {
                            assert!(used > 0 && start + used <= end);
                            start += used;
                        }
                        Ok(None) => break,
                        Err(_) => {
                            end = wire.len();
                            break;
                        }
                    }
                }
            }
        }
    }
}
