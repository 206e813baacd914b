//! Who may call the HTTP API: control-plane JWTs checked against `compute_ctl_config.jwks`
//! (as today's Neon does), a static bearer token from `--http-auth-token-file`, or neither.
//!
//! An [`Authorizer`] is made once at start and handed to an HTTP server, which asks it about
//! each request from the request head alone, before any body is read. It knows nothing of
//! routes: the server decides which paths are public.

pub mod base64url;
pub mod jwks;
pub mod jwt;

use std::collections::HashMap;
use std::sync::RwLock;

pub use jwks::KeySet;
pub use jwt::Refusal;

/// A static bearer token. Its `Debug` never shows it, so it cannot leak into a log line.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    pub fn new(token: &str) -> Token {
        Token(token.as_bytes().to_vec())
    }

    /// Reads the token file: the token is its content without surrounding whitespace. A file
    /// that group or others may read gives a warning (the token is a password).
    pub fn from_file(path: &std::path::Path) -> crate::Result<Token> {
        use std::os::unix::fs::PermissionsExt;
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::io("cannot read --http-auth-token-file", path, e))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(crate::Error::Usage(format!("--http-auth-token-file {}: the file is empty", path.display())));
        }
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            log::warn!(
                "--http-auth-token-file {} can be read by group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        Ok(Token::new(token))
    }

    /// The token itself, to send it (`compute_ctl --terminate`; never to log it).
    pub fn reveal(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// Compares in time that depends only on the lengths, never on where the bytes differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        let mut diff = self.0.len() ^ given.len();
        for (i, b) in self.0.iter().enumerate() {
            diff |= usize::from(b ^ given.get(i).copied().unwrap_or(!b));
        }
        std::hint::black_box(diff) == 0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a request was refused: its status code and message (`{"error": message}`), and
/// whether to send `WWW-Authenticate: Bearer` (the static token's 401 does, as before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    pub status: u16,
    pub message: &'static str,
    pub challenge: bool,
}

/// Verified tokens kept by their bytes until their `exp`, so that a control plane sending the
/// same token on every request pays for one signature check, not one per request.
const CACHE_ENTRIES: usize = 256;

struct Jwt {
    keys: KeySet,
    compute_id: String,
    /// Read-locked on every request, write-locked only to add or drop a token: concurrent
    /// requests with cached tokens never wait for each other.
    cache: RwLock<HashMap<Box<[u8]>, jwt::Verified>>,
}

/// The decision rule of one HTTP server, fixed at start.
pub struct Authorizer {
    token: Option<Token>,
    jwt: Option<Jwt>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("token", &self.token)
            .field("jwt_keys", &self.jwt.as_ref().map(|j| &j.keys))
            .finish()
    }
}

impl Authorizer {
    /// Everyone is let in.
    pub fn open() -> Authorizer {
        Authorizer { token: None, jwt: None }
    }

    /// `token`: the static token; `keys`: the JWT keys (None: JWTs are not configured) for
    /// the compute `compute_id`. With both, either one lets a request in.
    pub fn new(token: Option<Token>, keys: Option<KeySet>, compute_id: &str) -> Authorizer {
        let jwt = keys.map(|keys| Jwt { keys, compute_id: compute_id.to_string(), cache: RwLock::new(HashMap::new()) });
        Authorizer { token, jwt }
    }

    /// Whether any request can be refused.
    pub fn is_guarded(&self) -> bool {
        self.token.is_some() || self.jwt.is_some()
    }

    /// Decides from the `Authorization` header's value (None when absent) at `now` (seconds
    /// since the epoch).
    pub fn check(&self, authorization: Option<&str>, now: u64) -> Result<(), Denied> {
        if !self.is_guarded() {
            return Ok(());
        }
        let credentials = authorization.and_then(bearer);
        if let (Some(token), Some(given)) = (&self.token, credentials)
            && token.matches(given.as_bytes())
        {
            return Ok(());
        }
        let Some(jwt) = &self.jwt else {
            return Err(Denied { status: 401, message: "missing or invalid bearer token", challenge: true });
        };
        let Some(given) = credentials else {
            return Err(Denied { status: 400, message: "invalid authorization token", challenge: false });
        };
        jwt.check(given.as_bytes(), now).map_err(|r| Denied {
            status: r.status(),
            message: r.message(),
            challenge: false,
        })
    }
}

impl Jwt {
    fn check(&self, token: &[u8], now: u64) -> Result<(), Refusal> {
        let cached = self.cache.read().unwrap_or_else(|p| p.into_inner()).get(token).copied();
        if cached.is_some_and(|v| v.live_at(now)) {
            return Ok(());
        }
        // Verified without the lock: other requests' cache hits need not wait for it.
        let verified = jwt::verify(token, &self.keys.keys, &self.compute_id, now);
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let verified = match verified {
            Ok(v) => v,
            Err(r) => {
                if cached.is_some() {
                    cache.remove(token);
                }
                return Err(r);
            }
        };
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, v| v.live_at(now));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(token.into(), verified);
        Ok(())
    }
}

/// The credentials of `Bearer <credentials>`, the scheme compared case-insensitively (RFC 9110
/// 11.1); None for another scheme or no credentials.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty()).then_some(rest)
}

/// Seconds since the epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the fuzzer drives: every parser of outside input on the way in (the header, base64url,
/// the JWT's JSON parts and signature), with a key set of one made-up key.
#[doc(hidden)]
pub fn fuzz_check(header: &str) {
    // Made once: deriving the key is most of the cost of an input otherwise.
    static AUTH: std::sync::OnceLock<Authorizer> = std::sync::OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        let seed = ed25519_compact::Seed::new([3; 32]);
        let key = jwks::Key { name: "fuzz".into(), key: ed25519_compact::KeyPair::from_seed(seed).pk };
        Authorizer::new(None, Some(KeySet { keys: vec![key], skipped: Vec::new() }), "compute-1")
    });
    let decision = auth.check(Some(header), 1_800_000_000);
    if let Err(d) = decision {
        assert!(matches!(d.status, 400 | 401 | 403), "{d:?}");
    }
    if let Some(b) = base64url::decode(header.as_bytes()) {
        assert_eq!(base64url::encode(&b), header, "base64url has one encoding per byte string");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_compact::{KeyPair, Seed};
    use serde_json::json;

    fn authorizer(token: Option<&str>) -> (Authorizer, KeyPair) {
        let pair = KeyPair::from_seed(Seed::new([5; 32]));
        let keys = KeySet { keys: vec![jwks::Key { name: "k".into(), key: pair.pk }], skipped: Vec::new() };
        (Authorizer::new(token.map(Token::new), Some(keys), "c1"), pair)
    }

    #[test]
    fn header_codes_and_scheme_case() {
        let (a, pair) = authorizer(None);
        let t = jwt::sign(&json!({"alg": "EdDSA"}), &json!({"compute_id": "c1"}), &pair.sk);
        assert_eq!(a.check(None, 0).unwrap_err().status, 400);
        assert_eq!(a.check(Some("Basic abc"), 0).unwrap_err().status, 400);
        assert_eq!(a.check(Some("Bearer"), 0).unwrap_err().status, 400);
        assert_eq!(
            a.check(Some("Bearer x"), 0).unwrap_err(),
            Denied { status: 401, message: "failed to verify authorization token", challenge: false }
        );
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert_eq!(a.check(Some(&format!("{scheme} {t}")), 0), Ok(()), "{scheme}");
        }
    }

    #[test]
    fn cache_keeps_a_token_until_its_exp() {
        let (a, pair) = authorizer(None);
        let t = jwt::sign(&json!({"alg": "EdDSA"}), &json!({"compute_id": "c1", "exp": 1000}), &pair.sk);
        let h = format!("Bearer {t}");
        assert_eq!(a.check(Some(&h), 1000), Ok(()));
        assert_eq!(a.jwt.as_ref().unwrap().cache.read().unwrap().len(), 1);
        assert_eq!(a.check(Some(&h), 1060), Ok(()));
        assert_eq!(a.check(Some(&h), 1061).unwrap_err().status, 401, "the cache does not outlive exp");
        assert!(a.jwt.as_ref().unwrap().cache.read().unwrap().is_empty());
    }

    #[test]
    fn static_token_alone_and_beside_keys() {
        let t = Authorizer::new(Some(Token::new("s3cret")), None, "c1");
        assert_eq!(t.check(Some("bearer s3cret"), 0), Ok(()));
        let d = t.check(Some("Bearer s3cres"), 0).unwrap_err();
        assert_eq!((d.status, d.challenge), (401, true));
        assert_eq!(t.check(None, 0).unwrap_err().status, 401);
        let (both, _) = authorizer(Some("s3cret"));
        assert_eq!(both.check(Some("Bearer s3cret"), 0), Ok(()));
        assert_eq!(both.check(None, 0).unwrap_err().status, 400);
        assert!(!Authorizer::open().is_guarded());
        assert_eq!(Authorizer::open().check(None, 0), Ok(()));
    }

    #[test]
    fn token_compare_and_debug() {
        let t = Token::new("s3cret");
        assert!(t.matches(b"s3cret"));
        assert!(!t.matches(b"s3cres"));
        assert!(!t.matches(b"s3cret2"));
        assert!(!t.matches(b"s3cre"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}
