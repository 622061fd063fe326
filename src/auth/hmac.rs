//! HMAC-SHA-256 (RFC 2104) and a constant-time byte comparison.
//! Owns only the MAC arithmetic; it must not parse tokens, hold keys
//! longer than a call, or compare secrets with `==` (which exits early).

#[cfg(feature = "mercure")]
use super::sha256::{sha256, Sha256};

#[cfg(feature = "mercure")]
const BLOCK: usize = 64;

/// HMAC-SHA-256 of `msg` under `key`; keys longer than one block are
/// hashed first, as RFC 2104 requires.
#[cfg(feature = "mercure")]
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&sha256(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let mut inner = Sha256::new();
    inner.update(&ipad);
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(&opad);
    outer.update(&inner);
    outer.finalize()
}

/// Whether `a == b`, without returning early at the first difference, so
/// the time taken says nothing about how much of a forged MAC was right.
/// The loop runs over `a.len()` whatever `b` is: pass the expected value
/// as `a`. Lengths are not secret; unequal lengths are simply unequal.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(all(test, feature = "mercure"))]
mod tests {
    use super::super::sha256::hex;
    use super::*;

    #[test]
    fn rfc4231_cases() {
        let k131 = [0xaau8; 131];
        let key4: Vec<u8> = (1..=25).collect();
        let cases: [(&[u8], &[u8], &str); 7] = [
            (&[0x0b; 20], b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            (&[0xaa; 20], &[0xdd; 50], "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            (&key4, &[0xcd; 50], "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
            // Case 5 publishes only the first 128 bits.
            (&[0x0c; 20], b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
            (&k131, b"Test Using Larger Than Block-Size Key - Hash Key First", "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
            (&k131, b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.", "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
        ];
        for (n, (key, msg, want)) in cases.iter().enumerate() {
            let got = hex(&hmac_sha256(key, msg));
            assert_eq!(&got[..want.len()], *want, "case {}", n + 1);
        }
    }

    #[test]
    fn constant_time_eq_cases() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"\0", b""));
    }
}
