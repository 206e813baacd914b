//! Prometheus metrics: the process-wide counters, and the text exposition format written by
//! hand (version 0.0.4, what `promtool check metrics` reads).
//!
//! Neon's families (reference 2026 §8) keep their names and labels; empty label families are
//! left out and scalars are always present, as Neon does: `compute_ctl_up{build_tag,status}`
//! (one sample, the current status in its kebab-case form), the downtime pair
//! `compute_pg_current_downtime_ms`/`compute_pg_downtime_ms_total` (fed by the monitor), the
//! LFC and `pg_cctl_*` counters. Added: `compute_ctl_startup_duration_seconds{step}` and
//! `compute_ctl_startup_bytes{what}` (the `/metrics.json` fields), and
//! `compute_ctl_http_requests_total{server,route,code}`, and
//! `compute_ctl_pending_restart_settings` with `compute_ctl_pending_restart{setting}`. Neon's
//! `compute_audit_log_dir_size` is set by the audit log GC ([`crate::rsyslog::gc`]).
//!
//! The counters are process-wide by nature (the control-plane fetch happens before any HTTP
//! server exists), so they live in one global registry rather than being threaded through.

use crate::lifecycle::Snapshot;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// The `build_tag` label: `BUILD_TAG` at compile time, `latest` without it, as Neon.
pub const BUILD_TAG: &str = match option_env!("BUILD_TAG") {
    Some(t) => t,
    None => "latest",
};

/// Counters that are plain numbers, always exported (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counter {
    LfcPrewarms,
    LfcPrewarmErrors,
    LfcOffloads,
    LfcOffloadErrors,
    /// `/refresh_configuration` calls (Neon's name).
    PagestreamRequestErrors,
    ConfigureStatementTimeoutErrors,
}

impl Counter {
    const ALL: [(Counter, &'static str, &'static str); 6] = [
        (Counter::LfcPrewarms, "compute_ctl_lfc_prewarms_total", "Total number of LFC prewarms requested"),
        (Counter::LfcPrewarmErrors, "compute_ctl_lfc_prewarm_errors_total", "Total number of LFC prewarm errors"),
        (Counter::LfcOffloads, "compute_ctl_lfc_offloads_total", "Total number of LFC offloads requested"),
        (Counter::LfcOffloadErrors, "compute_ctl_lfc_offload_errors_total", "Total number of LFC offload errors"),
        (
            Counter::PagestreamRequestErrors,
            "pg_cctl_pagestream_request_errors_total",
            "Number of configuration refreshes requested of compute_ctl",
        ),
        (
            Counter::ConfigureStatementTimeoutErrors,
            "pg_cctl_configure_statement_timeout_errors_total",
            "Number of catalog statements cancelled by statement_timeout",
        ),
    ];
}

/// The monitor's view of Postgres's availability.
#[derive(Default)]
struct Downtime {
    last_up: Option<Instant>,
    last_check: Option<Instant>,
    current_ms: f64,
    total_ms: f64,
}

/// One installed extension, aggregated over databases.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InstalledExtension {
    pub name: String,
    pub version: String,
    pub owned_by_superuser: bool,
}

#[derive(Default)]
struct Registry {
    /// `compute_ctl_cplane_requests_total`: (rpc, http_status) → count.
    cplane: BTreeMap<(String, String), u64>,
    /// `compute_ctl_remote_ext_requests_total`: http_status → count (no remote extensions in
    /// this build, so it stays empty and is left out).
    remote_ext: BTreeMap<String, u64>,
    /// `compute_ctl_db_migration_failed_total`: migration_id → count.
    migration_failed: BTreeMap<String, u64>,
    /// `compute_installed_extensions`: extension → number of databases.
    installed: BTreeMap<InstalledExtension, u64>,
    /// `compute_ctl_http_requests_total`: (server, route, code) → count.
    http: BTreeMap<(&'static str, &'static str, u16), u64>,
    counters: BTreeMap<Counter, u64>,
    downtime: Downtime,
    /// `compute_audit_log_dir_size`: bytes of `PGDATA/log` (set by the audit log GC).
    audit_log_dir_size: u64,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    // A poisoned lock means a panic while bumping a counter; the maps are still valid.
    let mut guard: MutexGuard<'_, Option<Registry>> = crate::locks::lock(&REGISTRY);
    f(guard.get_or_insert_with(Registry::default))
}

/// Counts one control-plane request; `http_status` is e.g. `200 OK`, or `unknown` for a
/// network error (Neon's labels).
pub fn count_cplane_request(rpc: &str, http_status: &str) {
    with(|r| *r.cplane.entry((rpc.to_string(), http_status.to_string())).or_default() += 1);
}

/// Counts one request to the extension storage; `http_status` as for the control plane.
pub fn count_remote_ext_request(http_status: &str) {
    with(|r| *r.remote_ext.entry(http_status.to_string()).or_default() += 1);
}

/// Counts one failed migration.
pub fn count_migration_failed(migration_id: &str) {
    with(|r| *r.migration_failed.entry(migration_id.to_string()).or_default() += 1);
}

/// Counts one answered HTTP request. `route` must be one of a fixed set (or `other`) so that
/// the label's cardinality stays bounded.
pub fn count_http_request(server: &'static str, route: &'static str, code: u16) {
    with(|r| *r.http.entry((server, route, code)).or_default() += 1);
}

/// Sets `compute_audit_log_dir_size` (the audit log GC, after each pass).
pub fn set_audit_log_dir_size(bytes: u64) {
    with(|r| r.audit_log_dir_size = bytes);
}

/// Adds one to a scalar counter.
pub fn count(counter: Counter) {
    with(|r| *r.counters.entry(counter).or_default() += 1);
}

/// One monitor check at `now`: Postgres answered (`up`) or not. While it does not, the
/// current downtime is the time since the last good check and the total grows by the time
/// since the previous check, as Neon counts.
pub fn monitor_check(up: bool, now: Instant) {
    with(|r| r.downtime.check(up, now));
}

impl Downtime {
    fn check(&mut self, up: bool, now: Instant) {
        let since = |t: Option<Instant>| t.map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64() * 1000.0);
        if up {
            self.last_up = Some(now);
            self.current_ms = 0.0;
        } else {
            self.current_ms = since(self.last_up.or(self.last_check));
            self.total_ms += since(self.last_check);
        }
        self.last_check = Some(now);
    }
}

/// Replaces the installed-extension gauge (after a start or a reconfiguration).
pub fn set_installed_extensions(exts: BTreeMap<InstalledExtension, u64>) {
    with(|r| r.installed = exts);
}

/// The Prometheus text for the current registry and `snap`.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    with(|r| {
        family(
            &mut out,
            "compute_installed_extensions",
            "gauge",
            "Number of databases where the version of extension is installed",
            r.installed.iter().map(|(e, n)| {
                (
                    vec![
                        ("extension_name", e.name.as_str()),
                        ("version", e.version.as_str()),
                        ("owned_by_superuser", if e.owned_by_superuser { "1" } else { "0" }),
                    ],
                    *n as f64,
                )
            }),
        );
        family(
            &mut out,
            "compute_ctl_cplane_requests_total",
            "counter",
            "Total number of control plane requests made by compute_ctl by status",
            r.cplane
                .iter()
                .map(|((rpc, st), n)| (vec![("rpc", rpc.as_str()), ("http_status", st.as_str())], *n as f64)),
        );
        family(
            &mut out,
            "compute_ctl_remote_ext_requests_total",
            "counter",
            "Total number of requests made by compute_ctl to download extensions from S3 proxy by status",
            r.remote_ext.iter().map(|(st, n)| (vec![("http_status", st.as_str())], *n as f64)),
        );
        family(
            &mut out,
            "compute_ctl_db_migration_failed_total",
            "counter",
            "Total number of failed database migrations",
            r.migration_failed.iter().map(|(id, n)| (vec![("migration_id", id.as_str())], *n as f64)),
        );
        let codes: Vec<(&str, &str, String, u64)> =
            r.http.iter().map(|((s, route, code), n)| (*s, *route, code.to_string(), *n)).collect();
        family(
            &mut out,
            "compute_ctl_http_requests_total",
            "counter",
            "HTTP requests answered by compute_ctl, by server, route and status code",
            codes.iter().map(|(s, route, code, n)| {
                (vec![("server", *s), ("route", *route), ("code", code.as_str())], *n as f64)
            }),
        );
        for (counter, name, help) in Counter::ALL {
            let n = r.counters.get(&counter).copied().unwrap_or(0);
            family(&mut out, name, "counter", help, std::iter::once((Vec::new(), n as f64)));
        }
        family(
            &mut out,
            "compute_pg_current_downtime_ms",
            "gauge",
            "Time since Postgres last answered the monitor, while it does not (0 when it does)",
            std::iter::once((Vec::new(), r.downtime.current_ms)),
        );
        family(
            &mut out,
            "compute_pg_downtime_ms_total",
            "counter",
            "Total time Postgres did not answer the monitor",
            std::iter::once((Vec::new(), r.downtime.total_ms)),
        );
        family(
            &mut out,
            "compute_audit_log_dir_size",
            "gauge",
            "Size of audit log directory in bytes",
            std::iter::once((Vec::new(), r.audit_log_dir_size as f64)),
        );
    });
    family(
        &mut out,
        "compute_ctl_up",
        "gauge",
        "Compute is up, with its build tag and current status",
        std::iter::once((vec![("build_tag", BUILD_TAG), ("status", snap.status.display_name())], 1.0)),
    );
    family(
        &mut out,
        "compute_ctl_pending_restart_settings",
        "gauge",
        "Number of settings changed live that wait for a restart (POST /restart applies them)",
        std::iter::once((Vec::new(), snap.pending_restart.len() as f64)),
    );
    family(
        &mut out,
        "compute_ctl_pending_restart",
        "gauge",
        "1 for each setting changed live that waits for a restart",
        snap.pending_restart.iter().map(|name| (vec![("setting", name.as_str())], 1.0)),
    );
    let m = &snap.metrics;
    let ms = |v: u64| v as f64 / 1000.0;
    let steps = [
        ("wait_for_spec", ms(m.wait_for_spec_ms)),
        ("sync_sk_check", ms(m.sync_sk_check_ms)),
        ("sync_safekeepers", ms(m.sync_safekeepers_ms)),
        ("pageserver_connect", m.pageserver_connect_micros as f64 / 1e6),
        ("basebackup", ms(m.basebackup_ms)),
        ("start_postgres", ms(m.start_postgres_ms)),
        ("config", ms(m.config_ms)),
        ("total_startup", ms(m.total_startup_ms)),
        ("load_ext", ms(m.load_ext_ms)),
        ("drop_subscriptions", ms(m.drop_subscriptions_ms)),
    ];
    family(
        &mut out,
        "compute_ctl_startup_duration_seconds",
        "gauge",
        "Duration of each start-up step of the last start (the /metrics.json timings)",
        steps.iter().map(|(step, v)| (vec![("step", *step)], *v)),
    );
    let bytes = [
        ("basebackup", m.basebackup_bytes),
        ("largest_ext", m.largest_ext_size),
        ("total_ext_download", m.total_ext_download_size),
    ];
    family(
        &mut out,
        "compute_ctl_startup_bytes",
        "gauge",
        "Bytes transferred during the last start (the /metrics.json sizes)",
        bytes.iter().map(|(what, v)| (vec![("what", *what)], *v as f64)),
    );
    family(
        &mut out,
        "compute_ctl_extensions_downloaded",
        "gauge",
        "Extensions downloaded during the last start",
        std::iter::once((Vec::new(), m.num_ext_downloaded as f64)),
    );
    crate::vm_monitor::render_metrics(&mut out);
    crate::lease::render_metrics(&mut out);
    out
}

/// Writes one family: `# HELP`, `# TYPE` and its samples; nothing when it has no samples.
pub(crate) fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl Iterator<Item = (Vec<(&'a str, &'a str)>, f64)>,
) {
    let mut samples = samples.peekable();
    if samples.peek().is_none() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape_label(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// HELP text escapes backslash and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        family(&mut out, "m", "gauge", "h", std::iter::once((vec![("l", "a\"b\\c\nd")], 1.0)));
        assert_eq!(out, "# HELP m h\n# TYPE m gauge\nm{l=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn downtime_counts_from_the_last_good_check() {
        let mut d = Downtime::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + std::time::Duration::from_millis(n);
        let mut check = |up, at| {
            d.check(up, at);
            (d.current_ms, d.total_ms)
        };
        assert_eq!(check(true, ms(0)), (0.0, 0.0));
        assert_eq!(check(false, ms(500)), (500.0, 500.0));
        assert_eq!(check(false, ms(1000)), (1000.0, 1000.0));
        assert_eq!(check(true, ms(1500)), (0.0, 1000.0));
    }

    #[test]
    fn empty_families_are_left_out() {
        let mut out = String::new();
        family(&mut out, "m", "counter", "h", std::iter::empty());
        assert!(out.is_empty());
    }
}
