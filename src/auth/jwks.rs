//! The key set of `compute_ctl_config.jwks`: the Ed25519 keys that verify control-plane JWTs.
//!
//! A key this build cannot use (RS256, which only Databricks' deployment sends; a curve other
//! than Ed25519; an `x` that is not 32 bytes of base64url, as in Neon's own docker-compose
//! config) is skipped with a warning naming its `kid`. It never fails the start and is never
//! used. A set left with no usable key turns JWT authorization off (`http::listen` decides).

use super::base64url;
use serde_json::Value;

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    /// The key's `kid`, or `#N` (its position) when it has none; for log lines.
    pub name: String,
    pub key: ed25519_compact::PublicKey,
}

/// The usable keys, and what was skipped and why.
#[derive(Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// (key name, reason) for every key that was skipped.
    pub skipped: Vec<(String, String)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        f.debug_struct("KeySet").field("keys", &names).field("skipped", &self.skipped).finish()
    }
}

/// Reads `compute_ctl_config` (the object holding `jwks`). `None` when it holds no `jwks` at
/// all, i.e. JWT authorization is not configured; otherwise the usable keys, possibly none.
pub fn from_compute_ctl_config(config: &Value) -> Option<KeySet> {
    let jwks = config.get("jwks").filter(|j| !j.is_null())?;
    let mut set = KeySet::default();
    let Some(keys) = jwks.get("keys").and_then(Value::as_array) else {
        set.skipped.push(("jwks".into(), "has no \"keys\" array; no token can be verified".into()));
        return Some(set);
    };
    Some(from_keys(keys))
}

/// The usable keys among `keys` (the JWKS's `keys` array), and what was skipped and why.
pub fn from_keys(keys: &[Value]) -> KeySet {
    let mut set = KeySet::default();
    for (i, jwk) in keys.iter().enumerate() {
        let name = match jwk.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("{kid:?}"),
            None => format!("#{i} (no kid)"),
        };
        match usable(jwk) {
            Ok(key) => set.keys.push(Key { name, key }),
            Err(why) => set.skipped.push((name, why)),
        }
    }
    set
}

fn usable(jwk: &Value) -> Result<ed25519_compact::PublicKey, String> {
    let field = |k: &str| jwk.get(k).and_then(Value::as_str);
    if !jwk.is_object() {
        return Err("not a JSON object".into());
    }
    match field("alg") {
        None | Some("EdDSA") => {}
        Some("RS256") => return Err("alg RS256 is not supported (only EdDSA keys are used)".into()),
        Some(other) => return Err(format!("alg {other:?} is not supported (only EdDSA)")),
    }
    if field("kty") != Some("OKP") || field("crv") != Some("Ed25519") {
        return Err(format!("kty {:?}, crv {:?}: only OKP Ed25519 keys are used", field("kty"), field("crv")));
    }
    if let Some(u) = jwk.get("use").filter(|u| !u.is_null())
        && u.as_str() != Some("sig")
    {
        return Err(format!("use {u} is not \"sig\""));
    }
    let x = field("x").ok_or("no \"x\" (the public key)")?;
    let bytes = base64url::decode(x.as_bytes()).ok_or("\"x\" is not unpadded base64url")?;
    ed25519_compact::PublicKey::from_slice(&bytes)
        .map_err(|_| format!("\"x\" is {} bytes, an Ed25519 public key is 32", bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn okp(kid: &str, x: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "key_ops": ["verify"], "kid": kid, "x": x})
    }

    #[test]
    fn neon_docker_compose_key_is_skipped_by_kid() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/neon_compute_config_2026.json"))
                .unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        let set = from_compute_ctl_config(&config["compute_ctl_config"]).unwrap();
        assert!(set.keys.is_empty());
        assert_eq!(set.skipped.len(), 1);
        assert!(set.skipped[0].0.starts_with("\"ZGIxMzAz"), "{:?}", set.skipped);
    }

    #[test]
    fn usable_and_unusable_keys() {
        let good = base64url::encode(&[7u8; 32]);
        let config = json!({"jwks": {"keys": [
            okp("a", &good),
            {"kty": "RSA", "alg": "RS256", "kid": "r", "n": "xx", "e": "AQAB"},
            okp("short", &base64url::encode(&[1u8; 31])),
            okp("padded", &format!("{good}=")),
            {"kty": "OKP", "crv": "Ed448", "x": good, "kid": "448"},
            {"kty": "OKP", "crv": "Ed25519", "x": good},
            "not an object"
        ]}});
        let set = from_compute_ctl_config(&config).unwrap();
        let names: Vec<&str> = set.keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["\"a\"", "#5 (no kid)"]);
        let skipped: Vec<&str> = set.skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(skipped, ["\"r\"", "\"short\"", "\"padded\"", "\"448\"", "#6 (no kid)"]);
        assert!(set.skipped[0].1.contains("RS256"));
        assert!(set.skipped[1].1.contains("31 bytes"));
    }

    #[test]
    fn no_jwks_means_not_configured_and_empty_means_refuse_all() {
        assert!(from_compute_ctl_config(&json!({})).is_none());
        assert!(from_compute_ctl_config(&json!({"jwks": null})).is_none());
        let set = from_compute_ctl_config(&json!({"jwks": {"keys": []}})).unwrap();
        assert!(set.keys.is_empty() && set.skipped.is_empty());
        let set = from_compute_ctl_config(&json!({"jwks": {}})).unwrap();
        assert!(set.keys.is_empty() && set.skipped.len() == 1);
    }
}
