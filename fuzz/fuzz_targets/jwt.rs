//! The `Authorization` header through the JWT check: the scheme, base64url, the header's and
//! the claims' JSON, the signature, the claim rules.
//!
//! Properties: it never panics; every refusal is 400, 401 or 403; base64url text that decodes
//! re-encodes to itself (one encoding per byte string).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    compute_ctl::auth::fuzz_check(&String::from_utf8_lossy(data));
});
