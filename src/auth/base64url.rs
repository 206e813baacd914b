//! Base64url without padding (RFC 4648 section 5, as JWTs and JWKs use it), decoding only.
//!
//! Strict, like the decoder Neon's JWT library uses: no `=` padding, no other alphabet, no
//! whitespace, and the unused low bits of the last character must be zero, so every byte string
//! has exactly one accepted encoding.

/// The 6-bit value of one base64url character.
fn value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    }))
}

/// Decodes `text`; None when it is not canonical unpadded base64url.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    // A lone character in the last group carries 6 bits: not even one byte.
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for group in text.chunks(4) {
        let mut acc = 0u32;
        for &c in group {
            acc = acc << 6 | value(c)?;
        }
        // Left-align the group's bits in 24 and keep the whole bytes.
        let bits = 6 * group.len();
        acc <<= 24 - bits;
        let bytes = bits / 8;
        if acc & ((1 << (24 - 8 * bytes)) - 1) != 0 {
            return None;
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + bytes]);
    }
    Some(out)
}

/// Encodes `bytes` (for tests and tools that make tokens; the server only decodes).
pub fn encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut acc = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            acc |= u32::from(b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(acc >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors_without_padding() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc.as_bytes()).as_deref(), Some(plain.as_bytes()), "{enc}");
        }
        assert_eq!(decode(b"-_8").unwrap(), [0xfb, 0xff]);
    }

    #[test]
    fn refuses_what_is_not_canonical_base64url() {
        for bad in ["Zg==", "Zm8=", "Z", "Zh", "Zm9", "Zm+v", "Zm/v", "Zm9v\n", " Zm9v", "Zm9v!"] {
            // "Zh" and "Zm9" are refused for their non-zero unused bits.
            assert_eq!(decode(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            assert_eq!(decode(encode(&data[..n]).as_bytes()).as_deref(), Some(&data[..n]));
        }
    }
}
