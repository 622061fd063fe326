//! Unpadded base64url (RFC 4648 §5), the alphabet JWT segments use.
//! Owns only the byte transform; it must not accept padding, the standard
//! `+`/`/` alphabet or whitespace, and must not decode past a caller's
//! length cap, so a hostile token bounds its own allocation.

/// Why a base64url string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base64Error {
    /// More input bytes than the caller allows.
    TooLong,
    /// A `=`: JWT segments are unpadded.
    Padding,
    /// A byte outside `A-Z a-z 0-9 - _`.
    BadChar,
    /// A length of 4n+1 cannot encode whole bytes.
    BadLength,
    /// Leftover bits are not zero, so another string decodes to the same
    /// bytes; refusing keeps one spelling per signature.
    NonCanonical,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn value(c: u8) -> Result<u32, Base64Error> {
    Ok(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        b'=' => return Err(Base64Error::Padding),
        _ => return Err(Base64Error::BadChar),
    } as u32)
}

/// Decodes `input`, refusing anything longer than `max_input` bytes.
pub fn decode(input: &str, max_input: usize) -> Result<Vec<u8>, Base64Error> {
    let input = input.as_bytes();
    if input.len() > max_input {
        return Err(Base64Error::TooLong);
    }
    if input.len() % 4 == 1 {
        return Err(Base64Error::BadLength);
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    for chunk in input.chunks(4) {
        let mut acc = 0u32;
        for &c in chunk {
            acc = (acc << 6) | value(c)?;
        }
        // A short final chunk of 2 or 3 chars carries 1 or 2 bytes plus 4 or 2 spare bits.
        let (bytes, spare) = match chunk.len() {
            4 => (3, 0),
            3 => (2, 2),
            _ => (1, 4),
        };
        if acc & ((1 << spare) - 1) != 0 {
            return Err(Base64Error::NonCanonical);
        }
        let acc = acc >> spare;
        for i in (0..bytes).rev() {
            out.push((acc >> (8 * i)) as u8);
        }
    }
    Ok(out)
}

/// Encodes `data` without padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut acc = 0u32;
        for &b in chunk {
            acc = (acc << 8) | u32::from(b);
        }
        acc <<= 8 * (3 - chunk.len());
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(acc >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_round_trip() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc, 100).as_deref(), Ok(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all), 1000), Ok(all));
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn refusals() {
        assert_eq!(decode("Zg==", 100), Err(Base64Error::Padding));
        assert_eq!(decode("Zm9v+A", 100), Err(Base64Error::BadChar));
        assert_eq!(decode("Zm9v/A", 100), Err(Base64Error::BadChar));
        assert_eq!(decode("Zm 9", 100), Err(Base64Error::BadChar));
        assert_eq!(decode("Zm9vY", 100), Err(Base64Error::BadLength));
        assert_eq!(decode("Zh", 100), Err(Base64Error::NonCanonical));
        assert_eq!(decode("Zm9", 100), Err(Base64Error::NonCanonical));
        assert_eq!(decode("Zm9vYmFy", 7), Err(Base64Error::TooLong));
        assert_eq!(decode("Zm9vYmFy", 8), Ok(b"foobar".to_vec()));
        assert_eq!(decode("é", 100), Err(Base64Error::BadChar));
    }
}
