//! The HTTP request parser on arbitrary bytes, with small limits so the fuzzer reaches them.
//!
//! Properties:
//! - it never panics, and a rejection carries one of the status codes the server sends;
//! - it never accepts, nor asks for more bytes of, a request over its limits;
//! - what it accepts uses only the bytes it says, every shorter prefix of them is
//!   `Incomplete` (so a request read in pieces parses the same), and the request re-encodes to
//!   bytes that parse to an equal request.
#![no_main]

use compute_ctl::http::request::{Limits, ParseError, parse};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits { max_request_line: 200, max_headers: 8, max_head_bytes: 600, max_body: 300 };

fuzz_target!(|data: &[u8]| {
    let head_end = find(data, b"\r\n\r\n");
    match parse(data, &LIMITS) {
        Err(ParseError::Reject(code, msg)) => {
            assert!(matches!(code, 400 | 411 | 413 | 414 | 431 | 501 | 505), "unexpected status {code}");
            assert!(!msg.is_empty());
        }
        Err(ParseError::Incomplete) => match head_end {
            // Still reading the head: it must be within the limits so far, not counting a
            // partial terminator at the end (`\r`, `\r\n`, `\r\n\r`).
            None => {
                let partial =
                    [&b"\r\n\r"[..], b"\r\n", b"\r"].iter().find(|t| data.ends_with(t)).map_or(0, |t| t.len());
                let head = data.len() - partial;
                assert!(head <= LIMITS.max_head_bytes, "asks for more of a {head}-byte head");
                let line = find(data, b"\r\n").unwrap_or(data.len() - usize::from(data.ends_with(b"\r")));
                assert!(line <= LIMITS.max_request_line, "asks for more of a {line}-byte request line");
            }
            // Reading the body: the head was fine and the declared length within the limit.
            Some(end) => {
                assert!(end <= LIMITS.max_head_bytes);
                let length = content_length(&data[..end]).expect("Incomplete without a valid Content-Length");
                assert!(length <= LIMITS.max_body && data.len() < end + 4 + length);
            }
        },
        Ok((req, used)) => {
            let end = head_end.expect("accepted without an end of head");
            assert!(used <= data.len());
            assert!(end <= LIMITS.max_head_bytes, "accepted a {end}-byte head");
            let line = find(data, b"\r\n").unwrap_or(end);
            assert!(line <= LIMITS.max_request_line, "accepted a {line}-byte request line");
            assert!(req.headers.len() <= LIMITS.max_headers, "accepted {} headers", req.headers.len());
            assert!(req.body.len() <= LIMITS.max_body, "accepted a {}-byte body", req.body.len());
            assert_eq!(used, end + 4 + req.body.len());
            assert_eq!(&data[end + 4..used], &req.body[..]);

            // The bytes it used, alone, give the same request; any shorter prefix is Incomplete.
            assert_eq!(parse(&data[..used], &LIMITS), Ok((req.clone(), used)));
            for cut in [used - 1, used / 2, end + 3, end + 1] {
                if cut < used {
                    assert_eq!(parse(&data[..cut], &LIMITS), Err(ParseError::Incomplete), "prefix of {cut} bytes");
                }
            }

            // Re-encoding normalizes spacing (`Name: value`), which may lengthen the head, so the
            // re-parse gets limits that fit it; equivalence is the property here, not limits.
            let bytes = req.encode();
            let roomy = Limits { max_head_bytes: bytes.len(), ..LIMITS };
            let (again, n) = parse(&bytes, &roomy).unwrap_or_else(|e| panic!("re-encoded request refused: {e:?}"));
            assert_eq!(n, bytes.len());
            assert_eq!(again, req);
            assert_eq!(again.keep_alive(), req.keep_alive());
        }
    }
});

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    (0..haystack.len().saturating_sub(needle.len() - 1)).find(|&i| haystack[i..].starts_with(needle))
}

/// An independent reading of the head's Content-Length (absent means 0).
fn content_length(head: &[u8]) -> Option<usize> {
    let head = std::str::from_utf8(head).ok()?;
    let mut found = None;
    for line in head.split("\r\n").skip(1) {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case("content-length") {
            if found.is_some() {
                return None;
            }
            found = Some(value.trim_matches([' ', '\t']).parse::<usize>().ok()?);
        }
    }
    Some(found.unwrap_or(0))
}
