//! The compute spec: serde types for the JSON the control plane sends, compatible with Neon's
//! `ComputeSpec`, and [`ParsedSpec`], the validated value the rest of the program works with.
//!
//! Unknown keys are ignored and unknown `features` are kept as [`ComputeFeature::UnknownFeature`],
//! as in Neon. Validation happens once, in [`ParsedSpec::parse`]; nothing after it re-checks.

pub mod config;
mod parsed;

pub use config::{ComputeConfig, ComputeCtlConfig, Jwks, TlsConfig};
pub use parsed::{Id, Lsn, ParsedSpec, StorageMode};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroU64;

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
    /// Pages; Neon made it a `u32` in 2025, so larger values fail to parse.
    #[serde(default)]
    pub shard_stripe_size: Option<u32>,
    #[serde(default)]
    pub local_proxy_config: Option<LocalProxySpec>,
    #[serde(default = "default_reconfigure_concurrency")]
    pub reconfigure_concurrency: usize,
    #[serde(default)]
    pub drop_subscriptions_before_start: bool,
    /// Required by today's Neon; accepted when missing (it only sets the installed-extensions
    /// interval, so a default protects nothing less). `-1` or `0` mean 3600 s.
    #[serde(default)]
    pub suspend_timeout_seconds: Option<i64>,
    /// The preferred way to name pageservers; when present, `pageserver_connstring` and
    /// `shard_stripe_size` are ignored.
    #[serde(default)]
    pub pageserver_connection_info: Option<PageserverConnectionInfo>,
    /// When set, `neon.safekeepers` is written as `g#<N>:<list>`.
    #[serde(default)]
    pub safekeepers_generation: Option<u32>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub branch_id: Option<String>,
    #[serde(default)]
    pub endpoint_id: Option<String>,
    #[serde(default)]
    pub audit_log_level: AuditLogLevel,
    /// `host:port` of a syslog receiver for Postgres logs.
    #[serde(default)]
    pub logs_export_host: Option<String>,
    #[serde(default)]
    pub endpoint_storage_addr: Option<String>,
    #[serde(default)]
    pub endpoint_storage_token: Option<String>,
    #[serde(default)]
    pub autoprewarm: bool,
    /// Zero is refused by the type, as in Neon.
    #[serde(default)]
    pub offload_lfc_interval_seconds: Option<NonZeroU64>,
    /// Databricks (lakebase) settings; kept as given, not used by this build.
    #[serde(default)]
    pub databricks_settings: Option<serde_json::Value>,
}

/// Pageservers per shard (Neon's `PageserverConnectionInfo`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageserverConnectionInfo {
    /// 0: unsharded; N >= 1: N shards.
    pub shard_count: u8,
    #[serde(default)]
    pub stripe_size: Option<u32>,
    /// Shard index (`<number:02x><count:02x>`) to its pageservers.
    pub shards: BTreeMap<String, ShardInfo>,
    #[serde(default)]
    pub prefer_protocol: PageserverProtocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub pageservers: Vec<PageserverInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageserverInfo {
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub libpq_url: Option<String>,
    #[serde(default)]
    pub grpc_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageserverProtocol {
    #[default]
    Libpq,
    Grpc,
}

impl PageserverConnectionInfo {
    /// The key of shard `number` in [`Self::shards`].
    pub fn shard_key(&self, number: u8) -> String {
        format!("{number:02x}{:02x}", self.shard_count)
    }

    /// Shard numbers in order: `0..max(shard_count, 1)`.
    pub fn shard_numbers(&self) -> std::ops::Range<u8> {
        0..self.shard_count.max(1)
    }

    /// The first pageserver of each shard, in shard order; None for a missing shard.
    pub fn first_pageservers(&self) -> Vec<Option<&PageserverInfo>> {
        self.shard_numbers().map(|n| self.shards.get(&self.shard_key(n)).and_then(|s| s.pageservers.first())).collect()
    }
}

/// Neon's audit levels, PascalCase on the wire. `Log` is the old name of `Base`; `Hipaa`
/// behaves like `Extended`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AuditLogLevel {
    #[default]
    Disabled,
    Log,
    Base,
    Hipaa,
    Extended,
    Full,
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
    TlsExperimental,
    /// `anon_extension` was removed from Neon in 2025; it now parses as unknown.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
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
