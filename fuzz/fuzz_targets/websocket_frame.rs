//! The websocket frame parser and message assembler on arbitrary bytes (a client's stream),
//! with a small size limit so the fuzzer reaches it.
//!
//! Properties:
//! - it never panics; a violation carries one of the close codes the server sends (1002,
//!   1007, 1009);
//! - a parsed frame used at most the bytes given, its payload is within the limit, a control
//!   frame is final and at most 125 bytes, every shorter prefix of its bytes is incomplete, and
//!   re-encoded (masked) it parses to the same frame;
//! - assembled messages are within the limit.
#![no_main]

use compute_ctl::http::websocket::frame::{Assembler, Incoming, encode, parse};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 300;

fuzz_target!(|data: &[u8]| {
    let mut assembler = Assembler::new(MAX);
    let mut rest = data;
    loop {
        match parse(rest, MAX) {
            Ok(None) => break,
            Err(v) => {
                assert!(matches!(v.code, 1002 | 1009), "parser close code {}", v.code);
                assert!(!v.reason.is_empty() && v.reason.len() <= 123);
                break;
            }
            Ok(Some((frame, used))) => {
                assert!(used >= 6 && used <= rest.len());
                assert!(frame.payload.len() <= MAX);
                if frame.opcode.is_control() {
                    assert!(frame.fin && frame.payload.len() <= 125);
                }
                for cut in [0, 1, used / 2, used - 1] {
                    assert_eq!(parse(&rest[..cut], MAX), Ok(None), "prefix of {cut} of {used} bytes");
                }
                let mut again = Vec::new();
                encode(frame.fin, frame.opcode, &frame.payload, Some([0xa5, 0x01, 0x7f, 0x3c]), &mut again);
                assert_eq!(parse(&again, MAX), Ok(Some((frame.clone(), again.len()))));
                rest = &rest[used..];
                match assembler.push(frame) {
                    Ok(Some(Incoming::Text(t))) => assert!(t.len() <= MAX),
                    Ok(Some(Incoming::Binary(b))) => assert!(b.len() <= MAX),
                    Ok(_) => {}
                    Err(v) => {
                        assert!(matches!(v.code, 1002 | 1007 | 1009), "assembler close code {}", v.code);
                        break;
                    }
                }
            }
        }
    }
});
