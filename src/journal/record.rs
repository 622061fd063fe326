//! The journal's on-disk format: the segment header, record framing and the
//! three record payloads, plus a verifying reader for one segment file.
//!
//! Owns byte layout and validation only. It must not decide what to do with
//! damage (the journal truncates, this module only reports where and why),
//! and nothing it reads may panic or allocate more than the file holds:
//! every length is checked against a maximum and the bytes left in the file
//! before anything is allocated.

use super::crc32::crc32;
use super::JournalError;
use crate::id::EventId;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::Path;

/// Segment files start with this.
pub const MAGIC: &[u8; 8] = b"SSEDJRNL";
/// The format version this build writes. Version 2 added the event's
/// private flag; version 1 files still replay (their events were all
/// public: version 1 had no way to say otherwise).
pub const VERSION: u16 = 2;
/// The oldest format version this build reads.
pub const MIN_VERSION: u16 = 1;
/// Header flag: this file was rewritten by compaction and may stand in for
/// the segment numbers just before it, so a gap there is expected.
pub const FLAG_COMPACTED: u16 = 1;
/// Magic, version, flags (the reserved field), header CRC.
pub const HEADER_LEN: u64 = 16;
/// `u32 len | u32 crc` in front of every record body.
pub const FRAME_LEN: u64 = 8;
/// Largest record body (type byte and payload): a 16 MiB frame plus room for
/// its id and stream names. Anything longer on disk is damage.
pub const MAX_RECORD: u32 = 16 * 1024 * 1024 + 64 * 1024;
/// Most streams one event may be published to.
pub const MAX_STREAMS: usize = 64;

const T_EVENT: u8 = 1;
const T_DELETE: u8 = 2;
const T_CLOCK: u8 = 3;

/// Event flag (version 2): only subscribers allowed private updates of its
/// streams may see it.
const EV_PRIVATE: u8 = 1;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A published event: its id, the streams it went to, and its encoded
    /// SSE frame (opaque bytes to the journal).
    Event {
        /// The event id (the id clock's value).
        id: EventId,
        /// Streams it was published to (at most [`MAX_STREAMS`]).
        streams: Vec<String>,
        /// The wire bytes.
        frame: Vec<u8>,
        /// Only subscribers allowed private updates may see it (always
        /// `false` from a version 1 file).
        private: bool,
    },
    /// A `DELETE` of a stream: its history up to `floor_id` is gone.
    Delete {
        /// The stream name.
        stream: String,
        /// The id clock when it was deleted.
        floor_id: EventId,
    },
    /// The id clock, so it survives when every event is compacted away.
    Clock {
        /// The last id handed out.
        last_id: EventId,
    },
}

impl Record {
    /// The highest id this record vouches for (the id clock never goes
    /// below it after replay).
    pub fn id(&self) -> EventId {
        match self {
            Record::Event { id, .. } => *id,
            Record::Delete { floor_id, .. } => *floor_id,
            Record::Clock { last_id } => *last_id,
        }
    }
}

/// The 16-byte header of a new segment.
pub fn header(flags: u16) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&flags.to_le_bytes());
    let c = crc32(&h[..12]);
    h[12..].copy_from_slice(&c.to_le_bytes());
    h
}

/// Appends `rec`, framed, to `out`. Fails (leaving `out` as it was) for a
/// record this format cannot hold, so nothing unreadable reaches the disk.
pub fn encode(rec: &Record, out: &mut Vec<u8>) -> Result<(), JournalError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_LEN as usize]);
    let r = encode_body(rec, out);
    let len = out.len() - start - FRAME_LEN as usize;
    if let Err(e) = r {
        out.truncate(start);
        return Err(e);
    }
    if len > MAX_RECORD as usize {
        out.truncate(start);
        return Err(JournalError::Invalid("record longer than MAX_RECORD"));
    }
    let c = crc32(&out[start + FRAME_LEN as usize..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&c.to_le_bytes());
    Ok(())
}

fn put_name(out: &mut Vec<u8>, s: &str) -> Result<(), JournalError> {
    let n = u16::try_from(s.len()).map_err(|_| JournalError::Invalid("stream name too long"))?;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn encode_body(rec: &Record, out: &mut Vec<u8>) -> Result<(), JournalError> {
    match rec {
        Record::Event {
            id,
            streams,
            frame,
            private,
        } => {
            if streams.len() > MAX_STREAMS {
                return Err(JournalError::Invalid("event has too many streams"));
            }
            // Checked above, so the cast cannot truncate.
            let n = streams.len() as u16;
            out.push(T_EVENT);
            out.extend_from_slice(&id.get().to_le_bytes());
            out.push(if *private { EV_PRIVATE } else { 0 });
            out.extend_from_slice(&n.to_le_bytes());
            for s in streams {
                put_name(out, s)?;
            }
            out.extend_from_slice(frame);
        }
        Record::Delete { stream, floor_id } => {
            out.push(T_DELETE);
            out.extend_from_slice(&floor_id.get().to_le_bytes());
            put_name(out, stream)?;
        }
        Record::Clock { last_id } => {
            out.push(T_CLOCK);
            out.extend_from_slice(&last_id.get().to_le_bytes());
        }
    }
    Ok(())
}

/// A cursor over a record body that fails instead of panicking.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("record body too short");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, &'static str> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(b))
    }
    fn name(&mut self) -> Result<String, &'static str> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| "stream name is not UTF-8")
    }
}

/// Decodes a record body (type byte and payload) whose CRC already matched,
/// from a segment of format `version` (at least [`MIN_VERSION`]).
pub fn decode(body: &[u8], version: u16) -> Result<Record, &'static str> {
    let (&t, rest) = body.split_first().ok_or("empty record")?;
    let mut c = Cur(rest);
    let rec = match t {
        T_EVENT => {
            let id = EventId::new(c.u64()?);
            let private = if version >= 2 {
                let flags = c.u8()?;
                if flags & !EV_PRIVATE != 0 {
                    return Err("unknown event flags");
                }
                flags & EV_PRIVATE != 0
            } else {
                false
            };
            let n = c.u16()? as usize;
            if n > MAX_STREAMS {
                return Err("event has too many streams");
            }
            let mut streams = Vec::with_capacity(n);
            for _ in 0..n {
                streams.push(c.name()?);
            }
            let frame = c.0.to_vec();
            c.0 = &[];
            Record::Event {
                id,
                streams,
                frame,
                private,
            }
        }
        T_DELETE => {
            let floor_id = EventId::new(c.u64()?);
            let stream = c.name()?;
            Record::Delete { stream, floor_id }
        }
        T_CLOCK => Record::Clock {
            last_id: EventId::new(c.u64()?),
        },
        _ => return Err("unknown record type"),
    };
    if !c.0.is_empty() {
        return Err("trailing bytes in record");
    }
    Ok(rec)
}

/// What reading one segment found.
#[derive(Debug)]
pub struct Scan {
    /// Every valid record before the first damage, in order, with its framed
    /// length.
    pub records: Vec<(Record, u64)>,
    /// Bytes up to the end of the last valid record (0 if even the header
    /// is bad: the file holds nothing worth keeping).
    pub good_end: u64,
    /// The file's size.
    pub file_len: u64,
    /// Why reading stopped before `file_len` (torn write or corruption).
    pub problem: Option<&'static str>,
    /// The header's [`FLAG_COMPACTED`].
    pub compacted: bool,
    /// The header's format version (0 if the header is bad).
    pub version: u16,
}

/// Reads and verifies one segment. I/O errors and a newer format version are
/// errors; damage is not (it is reported in [`Scan::problem`]).
pub fn read_segment(path: &Path) -> Result<Scan, JournalError> {
    let io = |e| JournalError::io("read", path, e);
    let f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(64 * 1024, f);
    let mut scan = Scan {
        records: Vec::new(),
        good_end: 0,
        file_len,
        problem: None,
        compacted: false,
        version: 0,
    };
    let mut h = [0u8; HEADER_LEN as usize];
    if file_len < HEADER_LEN {
        scan.problem = Some("torn segment header");
        return Ok(scan);
    }
    r.read_exact(&mut h).map_err(io)?;
    let crc_ok = crc32(&h[..12]).to_le_bytes() == h[12..16];
    if &h[..8] != MAGIC || !crc_ok {
        scan.problem = Some("bad segment header");
        return Ok(scan);
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if !(MIN_VERSION..=VERSION).contains(&version) {
        // A valid header from another format: refuse rather than truncate
        // history a newer build wrote.
        return Err(JournalError::Version {
            path: path.to_path_buf(),
            version,
        });
    }
    scan.version = version;
    scan.compacted = u16::from_le_bytes([h[10], h[11]]) & FLAG_COMPACTED != 0;
    scan.good_end = HEADER_LEN;
    let mut pos = HEADER_LEN;
    while pos < file_len {
        if file_len - pos < FRAME_LEN {
            scan.problem = Some("torn record frame");
            break;
        }
        let mut fr = [0u8; FRAME_LEN as usize];
        if let Err(e) = r.read_exact(&mut fr) {
            if e.kind() == ErrorKind::UnexpectedEof {
                scan.problem = Some("file shrank while reading");
                break;
            }
            return Err(io(e));
        }
        let len = u32::from_le_bytes([fr[0], fr[1], fr[2], fr[3]]);
        let want = u32::from_le_bytes([fr[4], fr[5], fr[6], fr[7]]);
        if len == 0 || len > MAX_RECORD {
            scan.problem = Some("record length out of range");
            break;
        }
        if u64::from(len) > file_len - pos - FRAME_LEN {
            scan.problem = Some("record runs past the end of the file");
            break;
        }
        // Bounded by MAX_RECORD and by the bytes the file still holds.
        let mut body = vec![0u8; len as usize];
        if let Err(e) = r.read_exact(&mut body) {
            if e.kind() == ErrorKind::UnexpectedEof {
                scan.problem = Some("file shrank while reading");
                break;
            }
            return Err(io(e));
        }
        if crc32(&body) != want {
            scan.problem = Some("record CRC mismatch");
            break;
        }
        match decode(&body, version) {
            Ok(rec) => scan.records.push((rec, FRAME_LEN + u64::from(len))),
            Err(why) => {
                scan.problem = Some(why);
                break;
            }
        }
        pos += FRAME_LEN + u64::from(len);
        scan.good_end = pos;
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(rec: Record) {
        let mut out = vec![7u8]; // encode appends; earlier bytes stay
        encode(&rec, &mut out).unwrap();
        assert_eq!(out[0], 7);
        let len = u32::from_le_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, out.len() - 9);
        assert_eq!(
            crc32(&out[9..]),
            u32::from_le_bytes(out[5..9].try_into().unwrap())
        );
        assert_eq!(decode(&out[9..], VERSION).unwrap(), rec);
    }

    #[test]
    fn each_record_type_round_trips() {
        round_trip(Record::Event {
            id: EventId::new(u64::MAX - 3),
            streams: vec!["news".into(), "ünï".into(), String::new()],
            frame: b"id: 1\ndata: x\n\n".to_vec(),
            private: false,
        });
        round_trip(Record::Event {
            id: EventId::new(0),
            streams: vec![],
            frame: vec![],
            private: true,
        });
        round_trip(Record::Delete {
            stream: "news".into(),
            floor_id: EventId::new(42),
        });
        round_trip(Record::Clock {
            last_id: EventId::new(9),
        });
    }

    /// The bytes on disk, spelled out: an id is its number, little-endian,
    /// whatever type carries it in memory (files written before `EventId`
    /// replay unchanged).
    #[test]
    fn records_keep_their_byte_layout() {
        let body = |rec: &Record| {
            let mut out = Vec::new();
            encode(rec, &mut out).unwrap();
            out.split_off(FRAME_LEN as usize)
        };
        let id = [8, 7, 6, 5, 4, 3, 2, 1];
        let ev = Record::Event {
            id: EventId::new(0x0102_0304_0506_0708),
            streams: vec!["s".into()],
            frame: b"x".to_vec(),
            private: true,
        };
        let want: Vec<u8> = [&[T_EVENT][..], &id, &[EV_PRIVATE, 1, 0, 1, 0, b's', b'x']].concat();
        assert_eq!(body(&ev), want);
        let del = Record::Delete {
            stream: "s".into(),
            floor_id: EventId::new(0x0102_0304_0506_0708),
        };
        assert_eq!(body(&del), [&[T_DELETE][..], &id, &[1, 0, b's']].concat());
        let clock = Record::Clock {
            last_id: EventId::new(0x0102_0304_0506_0708),
        };
        assert_eq!(body(&clock), [&[T_CLOCK][..], &id].concat());
    }

    #[test]
    fn unencodable_records_are_refused_and_leave_the_buffer() {
        let mut out = b"keep".to_vec();
        let many = Record::Event {
            id: EventId::new(1),
            streams: vec!["s".into(); MAX_STREAMS + 1],
            frame: vec![],
            private: false,
        };
        let long_name = Record::Delete {
            stream: "x".repeat(70_000),
            floor_id: EventId::new(1),
        };
        let huge = Record::Event {
            id: EventId::new(1),
            streams: vec![],
            frame: vec![0; MAX_RECORD as usize],
            private: true,
        };
        for r in [many, long_name, huge] {
            assert!(matches!(
                encode(&r, &mut out),
                Err(JournalError::Invalid(_))
            ));
            assert_eq!(out, b"keep");
        }
    }

    #[test]
    fn hostile_bodies_fail_without_panicking() {
        for body in [
            &[][..],
            &[9],
            &[T_EVENT, 1, 2],
            &[T_EVENT, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF],
            &[T_EVENT, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xFF, 0xFF, b'a'],
            &[T_DELETE, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xFF],
            &[T_CLOCK, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert!(decode(body, 1).is_err(), "{body:?}");
        }
        for body in [
            &[T_EVENT, 0, 0, 0, 0, 0, 0, 0, 0][..],
            // A flag this version does not know.
            &[T_EVENT, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0],
            &[T_EVENT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xFF, 0xFF],
        ] {
            assert!(decode(body, VERSION).is_err(), "{body:?}");
        }
    }

    /// A version 1 event, byte for byte as version 1 wrote it (no flags
    /// byte), still decodes: as a public event, which it was.
    #[test]
    fn a_version_1_event_decodes_as_public() {
        let mut v1 = vec![T_EVENT];
        v1.extend_from_slice(&7u64.to_le_bytes());
        v1.extend_from_slice(&[1, 0, 4, 0]);
        v1.extend_from_slice(b"news");
        v1.extend_from_slice(b"id: 7\ndata: x\n\n");
        assert_eq!(
            v1,
            [
                1, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 4, 0, b'n', b'e', b'w', b's', b'i', b'd', b':',
                b' ', b'7', b'\n', b'd', b'a', b't', b'a', b':', b' ', b'x', b'\n', b'\n'
            ]
        );
        let want = Record::Event {
            id: EventId::new(7),
            streams: vec!["news".into()],
            frame: b"id: 7\ndata: x\n\n".to_vec(),
            private: false,
        };
        assert_eq!(decode(&v1, 1).unwrap(), want);
        // Read as version 2 the same bytes are damage, not a silent misread.
        assert!(decode(&v1, VERSION).is_err());
        // Version 2 spells the same event with a flags byte after the id.
        let mut out = Vec::new();
        encode(&want, &mut out).unwrap();
        assert_eq!(out[8..17], v1[..9]);
        assert_eq!(out[17], 0);
        assert_eq!(out[18..], v1[9..]);
    }
}
