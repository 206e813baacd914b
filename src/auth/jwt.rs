//! Verifying a control-plane JWT the way today's Neon does (reference 6): an EdDSA (Ed25519)
//! signature by one of the configured keys, `exp` checked with 60 s of leeway when present,
//! then the claims: `compute_id` equal to this compute's id, or the admin scope with
//! `"compute"` in the `aud` array.
//!
//! The signature is checked before the claims are read, so nothing an unsigned payload says
//! is ever looked at beyond what it takes to refuse it.

use super::base64url;
use super::jwks::Key;
use serde::Deserialize;

/// Neon's leeway on `exp`, in seconds (the JWT library's default).
pub const EXP_LEEWAY_SECS: u64 = 60;

/// Why a token was refused: the status code and Neon's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401: malformed, wrong `alg`, bad signature, expired, claims of the wrong type.
    Unverified,
    /// 401: admin scope without `aud`.
    MissingAudience,
    /// 401: admin scope, `aud` without `"compute"`.
    InvalidAudience,
    /// 403: not admin and no `compute_id`.
    MissingComputeId,
    /// 403: not admin and another compute's id.
    WrongComputeId,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::Unverified | Refusal::MissingAudience | Refusal::InvalidAudience => 401,
            Refusal::MissingComputeId | Refusal::WrongComputeId => 403,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::Unverified => "failed to verify authorization token",
            Refusal::MissingAudience => "missing audience in authorization token claims",
            Refusal::InvalidAudience => "invalid audience in authorization token claims",
            Refusal::MissingComputeId => "missing compute_id in authorization token claims",
            Refusal::WrongComputeId => "invalid compute ID in authorization token claims",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Neon's `ComputeClaims`, plus `exp`. Unknown claims are ignored; a known one of the wrong
/// type (a string `aud`, an unknown `scope`, a non-integer `exp`) fails the whole token.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    compute_id: Option<String>,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    aud: Option<Vec<String>>,
    #[serde(default)]
    exp: Option<u64>,
}

#[derive(Deserialize, PartialEq, Eq)]
enum Scope {
    #[serde(rename = "compute_ctl:admin")]
    Admin,
}

/// A verified token: what the cache keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// `exp` when the token has one (seconds since the epoch).
    pub exp: Option<u64>,
}

impl Verified {
    /// Whether the token is still good at `now`, with Neon's leeway.
    pub fn live_at(self, now: u64) -> bool {
        self.exp.is_none_or(|exp| exp.saturating_add(EXP_LEEWAY_SECS) >= now)
    }
}

/// Verifies `token` (the bearer credentials, `header.payload.signature`) against `keys` for
/// the compute `compute_id` at time `now` (seconds since the epoch).
pub fn verify(token: &[u8], keys: &[Key], compute_id: &str, now: u64) -> Result<Verified, Refusal> {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Unverified);
    };
    let header: Header = decode_json(header).ok_or(Refusal::Unverified)?;
    if header.alg != "EdDSA" {
        return Err(Refusal::Unverified);
    }
    let signature = base64url::decode(signature).ok_or(Refusal::Unverified)?;
    let signature = ed25519_compact::Signature::from_slice(&signature).map_err(|_| Refusal::Unverified)?;
    let signed = &token[..token.len() - signature_len(token)];
    if !keys.iter().any(|k| k.key.verify(signed, &signature).is_ok()) {
        return Err(Refusal::Unverified);
    }
    let claims: Claims = decode_json(payload).ok_or(Refusal::Unverified)?;
    let verified = Verified { exp: claims.exp };
    if !verified.live_at(now) {
        return Err(Refusal::Unverified);
    }
    if claims.scope == Some(Scope::Admin) {
        let aud = claims.aud.ok_or(Refusal::MissingAudience)?;
        if !aud.iter().any(|a| a == "compute") {
            return Err(Refusal::InvalidAudience);
        }
        return Ok(verified);
    }
    match claims.compute_id {
        None => Err(Refusal::MissingComputeId),
        Some(id) if id != compute_id => Err(Refusal::WrongComputeId),
        Some(_) => Ok(verified),
    }
}

/// The length of `.signature` at the end of a three-part token.
fn signature_len(token: &[u8]) -> usize {
    token.iter().rev().position(|&b| b == b'.').map_or(0, |p| p + 1)
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &[u8]) -> Option<T> {
    serde_json::from_slice(&base64url::decode(part)?).ok()
}

/// Makes a signed token (for tests and benchmarks; compute_ctl itself never signs).
pub fn sign(header: &serde_json::Value, claims: &serde_json::Value, key: &ed25519_compact::SecretKey) -> String {
    let mut text = base64url::encode(header.to_string().as_bytes());
    text.push('.');
    text.push_str(&base64url::encode(claims.to_string().as_bytes()));
    let signature = key.sign(text.as_bytes(), None);
    text.push('.');
    text.push_str(&base64url::encode(signature.as_ref()));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_compact::{KeyPair, Seed};
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    fn pair(seed: u8) -> KeyPair {
        KeyPair::from_seed(Seed::new([seed; 32]))
    }

    fn keys() -> Vec<Key> {
        vec![Key { name: "other".into(), key: pair(9).pk }, Key { name: "cp".into(), key: pair(1).pk }]
    }

    fn check(claims: serde_json::Value) -> Result<Verified, Refusal> {
        let t = sign(&json!({"alg": "EdDSA", "typ": "JWT"}), &claims, &pair(1).sk);
        verify(t.as_bytes(), &keys(), "compute-1", NOW)
    }

    #[test]
    fn neon_claim_rules() {
        assert_eq!(check(json!({"compute_id": "compute-1"})), Ok(Verified { exp: None }));
        assert_eq!(check(json!({"compute_id": "compute-1", "exp": NOW})), Ok(Verified { exp: Some(NOW) }));
        assert_eq!(check(json!({"compute_id": "compute-1", "iat": 1, "x": [1]})).map(|v| v.exp), Ok(None));
        assert_eq!(check(json!({"compute_id": "compute-2"})), Err(Refusal::WrongComputeId));
        assert_eq!(check(json!({})), Err(Refusal::MissingComputeId));
        assert!(check(json!({"scope": "compute_ctl:admin", "aud": ["x", "compute"]})).is_ok());
        assert_eq!(check(json!({"scope": "compute_ctl:admin"})), Err(Refusal::MissingAudience));
        assert_eq!(check(json!({"scope": "compute_ctl:admin", "aud": ["pageserver"]})), Err(Refusal::InvalidAudience));
        // Wrong types fail the whole token, as in Neon.
        assert_eq!(check(json!({"scope": "compute_ctl:admin", "aud": "compute"})), Err(Refusal::Unverified));
        assert_eq!(check(json!({"scope": "admin", "compute_id": "compute-1"})), Err(Refusal::Unverified));
        assert_eq!(check(json!({"compute_id": "compute-1", "exp": "soon"})), Err(Refusal::Unverified));
    }

    #[test]
    fn exp_has_sixty_seconds_of_leeway() {
        assert!(check(json!({"compute_id": "compute-1", "exp": NOW - 60})).is_ok());
        assert_eq!(check(json!({"compute_id": "compute-1", "exp": NOW - 61})), Err(Refusal::Unverified));
    }

    #[test]
    fn signature_alg_and_shape() {
        let claims = json!({"compute_id": "compute-1"});
        let v = |t: &str| verify(t.as_bytes(), &keys(), "compute-1", NOW);
        let foreign = sign(&json!({"alg": "EdDSA"}), &claims, &pair(2).sk);
        assert_eq!(v(&foreign), Err(Refusal::Unverified));
        let hs = sign(&json!({"alg": "HS256"}), &claims, &pair(1).sk);
        assert_eq!(v(&hs), Err(Refusal::Unverified));
        let good = sign(&json!({"alg": "EdDSA"}), &claims, &pair(1).sk);
        assert!(v(&good).is_ok());
        let (head, _) = good.rsplit_once('.').unwrap();
        assert_eq!(v(&format!("{head}.")), Err(Refusal::Unverified), "alg none style: no signature");
        let none = format!(
            "{}.{}.",
            base64url::encode(br#"{"alg":"none"}"#),
            base64url::encode(claims.to_string().as_bytes())
        );
        assert_eq!(v(&none), Err(Refusal::Unverified));
        // The payload swapped under a valid signature.
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            base64url::encode(br#"{"scope":"compute_ctl:admin","aud":["compute"]}"#),
            parts[2]
        );
        assert_eq!(v(&forged), Err(Refusal::Unverified));
        for bad in ["", ".", "..", "a.b.c", "a.b.c.d", &format!("{good}="), &good.replace('.', "!")] {
            assert_eq!(v(bad), Err(Refusal::Unverified), "{bad:?}");
        }
        assert_eq!(verify(good.as_bytes(), &[], "compute-1", NOW), Err(Refusal::Unverified), "no key, no token passes");
    }
}
