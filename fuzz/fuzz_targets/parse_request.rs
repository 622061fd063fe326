//! Coverage-guided fuzzing of the request parser: `ssed::http::parse`,
//! `parse_resume` and `decode_chunked` must never panic, never report
//! consuming more than they were given, agree with themselves on prefixes,
//! and a resumed parse must agree with one from scratch.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ssed::internals::http::{self, Limits, Parsed};

fuzz_target!(|input: &[u8]| {
    // An odd first byte selects small limits so the limit paths are reached;
    // otherwise the server's defaults apply.
    let (limits, data) = match input.split_first() {
        Some((&b, rest)) if b & 1 == 1 => (
            Limits {
                max_header_bytes: 16 + usize::from(b) * 4,
                max_body: usize::from(b),
            },
            rest,
        ),
        _ => (
            Limits {
                max_header_bytes: 8192,
                max_body: 1 << 20,
            },
            input,
        ),
    };

    match http::parse(data, limits) {
        Ok(Parsed::Complete(req, used)) => {
            assert!(used > 0 && used <= data.len());
            assert!(req.body.len() <= limits.max_body);
            // The request parses from exactly its own bytes...
            match http::parse(&data[..used], limits) {
                Ok(Parsed::Complete(_, again)) => assert_eq!(again, used),
                other => panic!("own bytes gave {other:?}"),
            }
            // ...and every shorter prefix is merely incomplete.
            if used > 1 {
                let k = used / 2;
                assert!(matches!(
                    http::parse(&data[..k], limits),
                    Ok(Parsed::Partial)
                ));
            }
        }
        Ok(Parsed::Partial) => {
            assert!(data.len() <= limits.max_header_bytes + 40 * limits.max_body + 64);
        }
        Err(e) => {
            assert!(matches!(
                e.status(),
                400 | 411 | 413 | 414 | 431 | 501 | 505
            ));
            assert!(!e.message().is_empty());
        }
    }

    // Fed in two pieces, resuming the chunked scan, the parse agrees with
    // one from scratch at each step.
    let summary = |r: &Result<Parsed<'_>, http::HttpError>| match r {
        Ok(Parsed::Partial) => (0, 0, 0),
        Ok(Parsed::Complete(req, used)) => (1, *used, req.body.len()),
        Err(e) => (2, usize::from(e.status()), 0),
    };
    let cut = data.len() / 2;
    let mut scan = http::Scan::default();
    let first = http::parse_resume(&data[..cut], limits, &mut scan);
    assert_eq!(summary(&first), summary(&http::parse(&data[..cut], limits)));
    if matches!(first, Ok(Parsed::Partial)) {
        let second = http::parse_resume(data, limits, &mut scan);
        assert_eq!(summary(&second), summary(&http::parse(data, limits)));
    }

    match http::decode_chunked(data, limits.max_body) {
        Ok(Some((body, used))) => {
            assert!(used <= data.len());
            assert!(body.len() <= limits.max_body);
            match http::decode_chunked(&data[..used], limits.max_body) {
                Ok(Some((b2, u2))) => assert!(b2 == body && u2 == used),
                other => panic!("own bytes gave {other:?}"),
            }
        }
        Ok(None) => {}
        Err(e) => assert!(matches!(e.status(), 400 | 413)),
    }
});
