//! What to lease, from a validated spec: pure functions, no I/O.

use crate::spec::{ComputeMode, Id, Lsn, PageserverProtocol, ParsedSpec, StorageMode};
use std::time::Duration;

/// A lease is renewed this long before it runs out (Neon: 60 s), or at half its validity
/// when that is later (a short lease).
const RENEW_MARGIN: Duration = Duration::from_secs(60);
/// First pause after a failed round; each next one is 1.5 times longer (Neon's schedule).
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest pause between failed rounds.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// One pageserver to ask: the tenant shard it serves and how to reach it over libpq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pageserver {
    /// `<tenant>` when unsharded, else `<tenant>-<number:02x><count:02x>`.
    pub tenant_shard: String,
    pub url: String,
}

/// Everything one lease round needs; a new value wakes the thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub timeline: Id,
    pub lsn: Lsn,
    /// `storage_auth_token`, sent as the password (as the basebackup does).
    pub token: Option<String>,
    pub pageservers: Vec<Pageserver>,
    /// Pageservers listed without a `libpq_url` (reachable over gRPC only), for the log.
    pub skipped: Vec<String>,
    /// `prefer_protocol` was `grpc`: this build asks over libpq anyway.
    pub grpc_preferred: bool,
}

/// Neon's `TenantShardId` text: the bare tenant id for an unsharded tenant (count 0), else
/// `<tenant>-<NNCC>` with the shard number and count as two lower-case hex digits each.
pub fn tenant_shard_id(tenant: Id, number: u8, count: u8) -> String {
    if count == 0 { tenant.to_string() } else { format!("{tenant}-{number:02x}{count:02x}") }
}

/// The lease query. Neon's text ends with a space; the pageserver splits on it.
pub fn query(tenant_shard: &str, timeline: Id, lsn: Lsn) -> String {
    format!("lease lsn {tenant_shard} {timeline} {lsn} ")
}

/// What to lease for this spec: None unless the compute is `Static` in pageserver mode.
pub fn target(spec: &ParsedSpec) -> Option<Target> {
    let ComputeMode::Static(lsn) = spec.mode() else { return None };
    let StorageMode::Pageserver { connstrings, .. } = spec.storage() else { return None };
    let s = spec.spec();
    let tenant = spec.tenant_id();
    let mut t = Target {
        timeline: spec.timeline_id(),
        lsn,
        token: s.storage_auth_token.clone(),
        pageservers: Vec::new(),
        skipped: Vec::new(),
        grpc_preferred: false,
    };
    match &s.pageserver_connection_info {
        // Every pageserver of every shard (reference 2026 §10.2).
        Some(info) => {
            t.grpc_preferred = info.prefer_protocol == PageserverProtocol::Grpc;
            for n in info.shard_numbers() {
                let key = info.shard_key(n);
                let Some(shard) = info.shards.get(&key) else { continue };
                for (i, ps) in shard.pageservers.iter().enumerate() {
                    match ps.libpq_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
                        Some(url) => t.pageservers.push(Pageserver {
                            tenant_shard: tenant_shard_id(tenant, n, info.shard_count),
                            url: url.to_string(),
                        }),
                        None => t.skipped.push(format!("shard {key} pageserver {}", ps.id.unwrap_or(i as u64))),
                    }
                }
            }
        }
        // The legacy list: one entry is unsharded, N entries are shards 0..N of N.
        None => {
            let count = if connstrings.len() > 1 { connstrings.len() as u8 } else { 0 };
            for (n, url) in connstrings.iter().enumerate() {
                t.pageservers
                    .push(Pageserver { tenant_shard: tenant_shard_id(tenant, n as u8, count), url: url.clone() });
            }
        }
    }
    Some(t)
}

/// How long to wait before renewing a lease that is valid for `valid` more:
/// `max(valid - 60 s, valid / 2)`.
pub fn renew_after(valid: Duration) -> Duration {
    valid.saturating_sub(RENEW_MARGIN).max(valid / 2)
}

/// The pause after the `failures`-th failed round in a row (1-based): 500 ms × 1.5ⁿ⁻¹,
/// at most 60 s.
pub fn retry_after(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(64) as i32;
    FIRST_RETRY.mul_f64(1.5f64.powi(exp)).min(MAX_RETRY)
}

/// The `valid_until` column: milliseconds since the epoch, or NULL (None) for a refusal.
pub fn parse_valid_until(text: Option<&str>) -> Result<Option<u64>, String> {
    match text {
        None => Ok(None),
        Some(t) => t.trim().parse::<u64>().map(Some).map_err(|_| format!("valid_until {t:?} is not milliseconds")),
    }
}
