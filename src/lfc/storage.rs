//! The endpoint storage (reference 2026 §5.8): one object per endpoint,
//! `http://{addr}/{tenant_id}/{timeline_id}/{endpoint_id}/lfc_state`, read and written with
//! `Authorization: Bearer {token}`; its content is a zstd frame of the LFC state.
//!
//! Contracts:
//! - [`decompress`] is a pure parser of outside input (fuzzed): it decodes every frame within
//!   [`MAX_STATE`] bytes, and anything else (not zstd, cut short, larger) is an error.
//! - [`get`] and [`put`] read at most [`MAX_STATE`] bytes, within [`TIMEOUT_SECS`], never
//!   follow a redirect (the token would go with it), and never put the token into an error.

use std::io::Read;

/// The largest LFC state accepted, compressed or not (64 MiB: the state of a cache of about
/// 8 million pages is a few MiB).
pub const MAX_STATE: usize = 64 << 20;
/// Each request's timeout.
pub const TIMEOUT_SECS: u64 = 60;

/// Where one endpoint's LFC state lives, and the token that opens it. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct Object {
    pub url: String,
    token: String,
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Object").field("url", &self.url).field("token", &"<hidden>").finish()
    }
}

impl Object {
    pub fn new(addr: &str, tenant: &str, timeline: &str, endpoint: &str, token: &str) -> Object {
        Object { url: format!("http://{addr}/{tenant}/{timeline}/{endpoint}/lfc_state"), token: token.to_string() }
    }

    fn request(&self, r: minreq::Request) -> minreq::Request {
        r.with_header("Authorization", format!("Bearer {}", self.token))
            .with_timeout(TIMEOUT_SECS)
            .with_max_headers_size(64 * 1024)
            .with_max_status_line_length(1024)
            .with_follow_redirects(false)
    }
}

/// What a GET found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// 200: the object's bytes.
    Found(Vec<u8>),
    /// 404: nothing stored for this endpoint yet.
    Missing,
}

/// `<code> <reason>` of a response, the reason cut to printable ASCII (it comes from outside).
fn status_text(code: u16, reason: &str) -> String {
    let reason: String = reason.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect();
    let reason = reason.trim();
    if reason.is_empty() { code.to_string() } else { format!("{code} {reason}") }
}

/// GETs the object: 200 → its bytes, 404 → [`Fetched::Missing`], another status →
/// `<status> querying endpoint storage` (Neon's words).
pub fn get(object: &Object) -> Result<Fetched, String> {
    let resp = object
        .request(minreq::get(&object.url))
        .send_lazy()
        .map_err(|e| format!("cannot reach endpoint storage at {}: {e}", object.url))?;
    match resp.status_code {
        200 => {}
        404 => return Ok(Fetched::Missing),
        code => return Err(format!("{} querying endpoint storage", status_text(code, &resp.reason_phrase))),
    }
    let mut body = Vec::new();
    resp.take(MAX_STATE as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read the LFC state from {}: {e}", object.url))?;
    if body.len() > MAX_STATE {
        return Err(format!("the LFC state at {} is larger than {MAX_STATE} bytes", object.url));
    }
    Ok(Fetched::Found(body))
}

/// PUTs `body` as the object; a status other than 200 is an error naming it.
pub fn put(object: &Object, body: Vec<u8>) -> Result<(), String> {
    let resp = object
        .request(minreq::put(&object.url))
        .with_body(body)
        .send_lazy()
        .map_err(|e| format!("cannot reach endpoint storage at {}: {e}", object.url))?;
    match resp.status_code {
        200 => Ok(()),
        code => Err(format!("{} storing the LFC state in endpoint storage", status_text(code, &resp.reason_phrase))),
    }
}

/// `ruzstd`'s reader error as text (the crate is built without its `std` feature).
fn zstd_text(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

/// Decodes the zstd frames of `input`, at most `limit` bytes in all.
pub fn decompress(mut input: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    use ruzstd::decoding::StreamingDecoder;
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use ruzstd::io::Read as _;
    if input.is_empty() {
        return Err("the LFC state is empty, not a zstd frame".into());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !input.is_empty() {
        let mut frame = match StreamingDecoder::new(&mut input) {
            Ok(f) => f,
            // A skippable frame (its 8-byte header already read): skip its content.
            Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                input = input.get(length..).ok_or("the LFC state's skippable zstd frame is cut short")?;
                continue;
            }
            Err(e) => return Err(format!("the LFC state is not zstd data: {e}")),
        };
        loop {
            let n =
                frame.read(&mut buf).map_err(|e| format!("the LFC state's zstd data is damaged: {}", zstd_text(e)))?;
            if n == 0 {
                break;
            }
            if out.len() + n > limit {
                return Err(format!("the LFC state decompresses to more than {limit} bytes"));
            }
            out.extend_from_slice(&buf[..n]);
        }
        if !frame.into_frame_decoder().is_finished() {
            return Err("the LFC state's zstd frame is cut short".into());
        }
    }
    Ok(out)
}

/// One zstd frame of `data` (ruzstd's fastest level, about zstd's level 1; Neon uses the
/// default level). A panic inside the encoder becomes an error rather than a stuck state.
pub fn compress(data: &[u8]) -> Result<Vec<u8>, String> {
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};
    std::panic::catch_unwind(|| compress_to_vec(data, CompressionLevel::Fastest))
        .map_err(|_| "the zstd encoder failed on the LFC state".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter mixed with a small LCG.
        let mut x = 7u32;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 3 == 0 { (x >> 24) as u8 } else { (i / 7) as u8 }
            })
            .collect()
    }

    #[test]
    fn compress_then_decompress_gives_the_bytes_back() {
        for n in [0, 1, 1000, 300_000] {
            let data = sample(n);
            let z = compress(&data).unwrap();
            assert_eq!(decompress(&z, MAX_STATE).unwrap(), data, "{n} bytes");
        }
    }

    #[test]
    fn two_frames_and_a_skippable_one_decode_in_order() {
        let (a, b) = (sample(5000), sample(7000));
        let mut z = compress(&a).unwrap();
        z.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        z.extend_from_slice(&3u32.to_le_bytes());
        z.extend_from_slice(b"xyz");
        z.extend(compress(&b).unwrap());
        assert_eq!(decompress(&z, MAX_STATE).unwrap(), [a, b].concat());
    }

    #[test]
    fn truncated_garbage_empty_and_oversized_input_are_errors() {
        let data = sample(100_000);
        let z = compress(&data).unwrap();
        for cut in [1, 4, 10, z.len() / 2, z.len() - 1] {
            assert!(decompress(&z[..cut], MAX_STATE).is_err(), "cut at {cut}");
        }
        assert!(decompress(b"", MAX_STATE).unwrap_err().contains("empty"));
        assert!(decompress(b"not zstd", MAX_STATE).unwrap_err().contains("not zstd"));
        let err = decompress(&z, 99_999).unwrap_err();
        assert_eq!(err, "the LFC state decompresses to more than 99999 bytes");
    }

    /// What the zstd command line writes (as Neon's encoder does: a checksum, or none) reads
    /// back, one frame or two.
    #[test]
    fn reads_frames_of_the_zstd_cli() {
        let seed = b"page tags 0001 0002 0003 0004 0005 0006 0007 0008 page tags 0001 0002";
        for (file, want) in [
            (&include_bytes!("../../fuzz/corpus/lfc_state/zstd_cli.zst")[..], seed.to_vec()),
            (&include_bytes!("../../fuzz/corpus/lfc_state/zstd_cli_nocheck.zst")[..], seed.to_vec()),
            (&include_bytes!("../../fuzz/corpus/lfc_state/two_frames.zst")[..], [&seed[..], &seed[..]].concat()),
        ] {
            assert_eq!(decompress(file, MAX_STATE).unwrap(), want);
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let o = Object::new("h:1", "t", "l", "e", "s3cr3t");
        assert_eq!(o.url, "http://h:1/t/l/e/lfc_state");
        assert!(!format!("{o:?}").contains("s3cr3t"));
    }
}
