//! The compute spec: serde types for the JSON the control plane sends, compatible with Neon's
//! `ComputeSpec`, and [`ParsedSpec`], the validated value the rest of the program works with.
//!
//! Unknown keys are ignored and unknown `features` are kept as [`ComputeFeature::UnknownFeature`],
//! as in Neon. Validation happens once, in [`ParsedSpec::parse`]; nothing after it re-checks.

mod parsed;

pub use parsed::{Id, Lsn, ParsedSpec, StorageMode};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole spec, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputeSpec {
    pub format_version: f32,
    #[serde(default)]
    pub operation_uuid: Option<String>,
    #[serde(default)]
    pub features: Vec<ComputeFeature>,
    #[serde(default)]
    pub swap_size_bytes: Option<u64>,
    #[serde(default)]
    pub disk_quota_bytes: Option<u64>,
    #[serde(default)]
    pub disable_lfc_resizing: Option<bool>,
    pub cluster: Cluster,
    #[serde(default)]
    pub delta_operations: Option<Vec<DeltaOp>>,
    #[serde(default)]
    pub skip_pg_catalog_updates: bool,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub timeline_id: Option<String>,
    #[serde(default)]
    pub pageserver_connstring: Option<String>,
    #[serde(default)]
    pub safekeeper_connstrings: Vec<String>,
    #[serde(default)]
    pub mode: ComputeMode,
    #[serde(default)]
    pub storage_auth_token: Option<String>,
    #[serde(default)]
    pub remote_extensions: Option<RemoteExtSpec>,
    #[serde(default)]
    pub pgbouncer_settings: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub shard_stripe_size: Option<usize>,
    #[serde(default)]
    pub local_proxy_config: Option<LocalProxySpec>,
    #[serde(default = "default_reconfigure_concurrency")]
    pub reconfigure_concurrency: usize,
    #[serde(default)]
    pub drop_subscriptions_before_start: bool,
}

fn default_reconfigure_concurrency() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(default)]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    pub roles: Vec<Role>,
    pub databases: Vec<Database>,
    #[serde(default)]
    pub postgresql_conf: Option<String>,
    #[serde(default)]
    pub settings: Option<Vec<GenericOption>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    #[serde(default)]
    pub encrypted_password: Option<String>,
    #[serde(default)]
    pub options: Option<Vec<GenericOption>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Database {
    pub name: String,
    pub owner: String,
    #[serde(default)]
    pub options: Option<Vec<GenericOption>>,
    /// Derived from `pg_database`, never read from a spec (as in Neon).
    #[serde(skip_deserializing, default)]
    pub restrict_conn: bool,
    #[serde(skip_deserializing, default)]
    pub invalid: bool,
}

/// A setting or an SQL option: `vartype == "string"` is quoted, anything else is a bare token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenericOption {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    pub vartype: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaOp {
    pub action: String,
    pub name: String,
    #[serde(default)]
    pub new_name: Option<String>,
}

/// Externally tagged as in Neon: `"Primary"`, `{"Static": "0/169AD58"}`, `"Replica"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ComputeMode {
    #[default]
    Primary,
    Static(Lsn),
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComputeFeature {
    ActivityMonitorExperimental,
    AnonExtension,
    #[serde(other)]
    UnknownFeature,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteExtSpec {
    #[serde(default)]
    pub public_extensions: Option<Vec<String>>,
    #[serde(default)]
    pub custom_extensions: Option<Vec<String>>,
    pub library_index: BTreeMap<String, String>,
    pub extension_data: BTreeMap<String, ExtensionData>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtensionData {
    pub control_data: BTreeMap<String, String>,
    pub archive_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalProxySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<Vec<JwksSettings>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JwksSettings {
    pub id: String,
    pub role_names: Vec<String>,
    pub jwks_url: String,
    pub provider_name: String,
    #[serde(default)]
    pub jwt_audience: Option<String>,
}

/// The body of `POST /configure`.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigurationRequest {
    pub spec: ComputeSpec,
    /// Ignored, as in Neon: the keys fixed at start stay in force.
    #[allow(dead_code)]
    pub compute_ctl_config: serde_json::Value,
}

impl GenericOption {
    pub fn is_string(&self) -> bool {
        self.vartype == "string"
    }
}

/// Looks up an option by name: the value of the first option with that name, if not null.
pub fn find_option<'a>(options: &'a Option<Vec<GenericOption>>, name: &str) -> Option<&'a str> {
    options.as_deref()?.iter().find(|o| o.name == name)?.value.as_deref()
}

impl ComputeSpec {
    /// A `cluster.settings` value by name.
    pub fn setting(&self, name: &str) -> Option<&str> {
        find_option(&self.cluster.settings, name)
    }
}
