//! The `-c/--config` file: Neon's `ComputeConfig`, `{"spec": ComputeSpec | null,
//! "compute_ctl_config": {...}}` (reference 2026 §1.4).
//!
//! A null or missing `spec` means "not attached yet": compute_ctl waits in `empty` for
//! `POST /configure`. `compute_ctl_config` is required, as in Neon, and its `jwks` too; the
//! keys are kept as raw JSON objects for whoever verifies tokens with them.

use super::{ComputeSpec, ParsedSpec};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
pub struct ComputeConfig {
    #[serde(default)]
    pub spec: Option<ComputeSpec>,
    pub compute_ctl_config: ComputeCtlConfig,
}

/// Settings of compute_ctl itself that come with the spec, fixed at process start (a
/// `/configure` body's copy is ignored, as in Neon).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ComputeCtlConfig {
    pub jwks: Jwks,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// A JWK Set (RFC 7517): the keys that verify the control plane's tokens, unparsed.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Jwks {
    pub keys: Vec<serde_json::Value>,
}

/// PEM files of the compute's server certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsConfig {
    pub key_path: String,
    pub cert_path: String,
}

impl ComputeConfig {
    /// Parses the file's text; a spec, if present, is validated as any other.
    pub fn parse(json: &str, origin: &str) -> Result<(Option<ParsedSpec>, ComputeCtlConfig)> {
        let config: ComputeConfig = serde_json::from_str(json).map_err(|e| Error::invalid(origin, e.to_string()))?;
        let spec = config.spec.map(ParsedSpec::validate).transpose()?;
        Ok((spec, config.compute_ctl_config))
    }

    /// Reads and parses `-c FILE`.
    pub fn load(path: &Path) -> Result<(Option<ParsedSpec>, ComputeCtlConfig)> {
        let json = std::fs::read_to_string(path).map_err(|e| Error::io("cannot read config file", path, e))?;
        ComputeConfig::parse(&json, &format!("config file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Neon's docker-compose `--config` file, byte for byte, with its placeholders replaced
    /// as Neon's compose script does.
    #[test]
    fn neon_compose_config_parses() {
        let text = include_str!("../../tests/data/neon_compute_config_2026.json")
            .replace("TENANT_ID", "b0554b632bd4d547a63b86c3630317e8")
            .replace("TIMELINE_ID", "2414a61ffc94e428f14b5758fe308e13");
        let (spec, ctl) = ComputeConfig::parse(&text, "config").unwrap();
        let spec = spec.expect("the compose file carries a spec");
        assert_eq!(spec.spec().suspend_timeout_seconds, Some(-1));
        assert_eq!(spec.spec().cluster.roles[0].name, "cloud_admin");
        assert_eq!(ctl.jwks.keys.len(), 1);
        assert_eq!(ctl.jwks.keys[0]["alg"], "EdDSA");
        assert_eq!(ctl.tls, None);
    }

    #[test]
    fn null_spec_means_wait() {
        let (spec, ctl) =
            ComputeConfig::parse(r#"{"spec":null,"compute_ctl_config":{"jwks":{"keys":[]}}}"#, "c").unwrap();
        assert!(spec.is_none() && ctl.jwks.keys.is_empty());
        let (spec, _) = ComputeConfig::parse(r#"{"compute_ctl_config":{"jwks":{"keys":[]}}}"#, "c").unwrap();
        assert!(spec.is_none());
    }

    #[test]
    fn a_bare_spec_is_refused_with_the_missing_key_named() {
        let bare = include_str!("../../tests/data/neon_cluster_spec_2026.json");
        let err = ComputeConfig::parse(bare, "config file x.json").unwrap_err().to_string();
        assert!(err.starts_with("invalid spec: config file x.json: missing field `compute_ctl_config`"), "{err}");
        let err = ComputeConfig::parse(r#"{"spec":null,"compute_ctl_config":{}}"#, "c").unwrap_err().to_string();
        assert!(err.contains("missing field `jwks`"), "{err}");
    }
}
