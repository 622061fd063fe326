//! Small text helpers the apps share: uuid v4, random hex and alphanumeric
//! strings, ISO-8601 UTC timestamps and
//! an `event:` line that is written even for the `message` type.
//!
//! Written by hand because the crate takes no dependencies beyond the
//! reactor's. Everything here is pure (randomness comes in as an `Rng`,
//! time as microseconds), so it is unit-tested without a server. Nothing
//! here knows about connections, streams or HTTP.

use rand::Rng;

const HEX: &[u8; 16] = b"0123456789abcdef";
const ALNUM: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A random (version 4, RFC 4122 variant) UUID in its 36-character form.
pub fn uuid_v4(rng: &mut impl Rng) -> String {
    let mut b: [u8; 16] = rng.gen();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

/// Whether `s` looks like a UUID (8-4-4-4-12 hex digits).
#[cfg(test)]
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `n` random lowercase hex digits (chamber's `ngx.var.request_id` is 32).
pub fn random_hex(rng: &mut impl Rng, n: usize) -> String {
    (0..n).map(|_| HEX[rng.gen_range(0..16)] as char).collect()
}

/// A random string of ASCII letters and digits, its length drawn from `len`.
pub fn random_alnum(rng: &mut impl Rng, len: std::ops::RangeInclusive<usize>) -> String {
    let n = rng.gen_range(len);
    (0..n)
        .map(|_| ALNUM[rng.gen_range(0..ALNUM.len())] as char)
        .collect()
}

/// Days since 1970-01-01 to a civil (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// ISO-8601 UTC with milliseconds, e.g. `2021-11-03T02:06:35.123Z` (the
/// form Java's `Instant` prints, which the member-notification service's
/// clients parse).
pub fn iso8601_utc(unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let ms = (unix_us / 1000) % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// An HTTP-date (RFC 9110 IMF-fixdate), e.g. `Wed, 03 Nov 2021 02:06:35
/// GMT`, for apps whose originals send a `Date` header.
pub fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    // 1970-01-01 was a Thursday; both indices are reduced modulo the table size.
    let wd = DAYS[(days % 7) as usize];
    let mon = MONTHS[(m as usize + 11) % 12];
    format!(
        "{wd}, {d:02} {mon} {y:04} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// An event frame that always spells its `event:` line. `frame::encode`
/// leaves the line out for `message` (EventSource's default), but the
/// originals (workerman, lasse in MongooseIM, chamber's nginx) write it,
/// and raw-parsing clients of theirs may match on it. `message` leads with
/// its `event:` line, other types follow `id:`, as they always have here.
pub fn frame_typed(id: &str, event: &str, data: &str) -> Vec<u8> {
    let b = crate::frame::Block::with_capacity(data.len() + 48);
    if event == "message" {
        b.event(event).id(id).data(data)
    } else {
        b.id(id).event(event).data(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn uuid_shape() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..100 {
            let u = uuid_v4(&mut rng);
            assert!(is_uuid(&u), "{u}");
            assert_eq!(&u[14..15], "4");
            assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        }
        assert!(!is_uuid("36891c7f-cd3d-4e90-9295-5f450d66ae0"));
        assert!(is_uuid("36891c7f-cd3d-4e90-9295-5f450d66ae09"));
    }

    #[test]
    fn random_strings() {
        let mut rng = SmallRng::seed_from_u64(2);
        let h = random_hex(&mut rng, 32);
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|c| c.is_ascii_hexdigit()));
        for _ in 0..200 {
            let s = random_alnum(&mut rng, 10..=50);
            assert!((10..=50).contains(&s.len()));
            assert!(s.bytes().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn iso8601() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00.000Z");
        // 2021-11-03T02:06:35.123Z
        assert_eq!(
            iso8601_utc(1_635_905_195_123_456),
            "2021-11-03T02:06:35.123Z"
        );
        // Leap day.
        assert_eq!(iso8601_utc(951_782_400_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            iso8601_utc(4_102_444_799_999_999),
            "2099-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(1_635_905_195), "Wed, 03 Nov 2021 02:06:35 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn typed_frames() {
        assert_eq!(
            frame_typed("1", "message", "hello"),
            b"event: message\nid: 1\ndata: hello\n\n"
        );
        assert_eq!(
            frame_typed("x", "random", "a\nb"),
            b"id: x\nevent: random\ndata: a\ndata: b\n\n"
        );
    }
}
