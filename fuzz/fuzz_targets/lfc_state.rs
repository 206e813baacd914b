//! The LFC state from the endpoint storage (outside input): any bytes decompress to at most
//! the limit or give an error, never a panic; and what the offload compresses decompresses to
//! exactly the same bytes.
#![no_main]

use compute_ctl::lfc::storage::{compress, decompress};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = decompress(data, LIMIT) {
        assert!(out.len() <= LIMIT);
    }
    let z = compress(data).expect("the encoder takes any bytes");
    assert_eq!(decompress(&z, LIMIT.max(data.len())).expect("its own frame decodes"), data);
});
