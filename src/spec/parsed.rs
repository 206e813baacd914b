//! Validation at the edge: JSON in, [`ParsedSpec`] or an error naming the field out.

use super::{ComputeMode, ComputeSpec, GenericOption, PageserverProtocol};
use crate::error::{Error, Result};
use crate::escape;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A tenant or timeline id: 16 bytes written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id([u8; 16]);

impl FromStr for Id {
    type Err = String;
    fn from_str(s: &str) -> Result<Id, String> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("expected 32 hex digits, got {s:?}"));
        }
        let mut out = [0u8; 16];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Id(out))
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A WAL position, written `X/Y` in upper-case hex as Postgres does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("expected an LSN like \"0/169AD58\", got {s:?}");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(hi) || !ok(lo) {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(hi << 32 | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where PGDATA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageMode {
    /// No pageserver: PGDATA is kept across restarts and made by `initdb` when missing.
    Local,
    /// Every start is a fresh basebackup from the pageserver (first shard of the list).
    Pageserver { connstrings: Vec<String>, safekeepers: Vec<String> },
}

/// A spec that passed validation. Fields are read-only: a `ParsedSpec` is a value.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSpec {
    spec: Box<ComputeSpec>,
    tenant_id: Id,
    timeline_id: Id,
    storage: StorageMode,
}

/// Longest name Postgres keeps (NAMEDATALEN - 1): a longer one would be silently truncated.
const MAX_NAME_BYTES: usize = 63;

impl ParsedSpec {
    /// Parses and validates JSON text.
    pub fn parse(json: &str) -> Result<ParsedSpec> {
        let spec: ComputeSpec = serde_json::from_str(json).map_err(Error::SpecJson)?;
        ParsedSpec::validate(spec)
    }

    /// Validates a deserialized spec.
    pub fn validate(spec: ComputeSpec) -> Result<ParsedSpec> {
        let id = |field: &str, setting: &str| -> Result<Id> {
            let text = match spec_str(&spec, field, setting) {
                Some(t) => t,
                None => {
                    return Err(Error::invalid(
                        field,
                        format!("missing (also not given as cluster.settings {setting})"),
                    ));
                }
            };
            text.parse::<Id>().map_err(|e| Error::invalid(field, e))
        };
        let tenant_id = id("tenant_id", "neon.tenant_id")?;
        let timeline_id = id("timeline_id", "neon.timeline_id")?;

        let storage = match pageservers(&spec)? {
            None => StorageMode::Local,
            Some(connstrings) => {
                let mut safekeepers = spec.safekeeper_connstrings.clone();
                if safekeepers.is_empty()
                    && let Some(s) = spec.setting("neon.safekeepers")
                {
                    safekeepers = s.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                }
                if spec.mode == ComputeMode::Primary {
                    check_safekeepers(&safekeepers)?;
                } else {
                    safekeepers.clear();
                }
                StorageMode::Pageserver { connstrings, safekeepers }
            }
        };
        if let Some(host) = &spec.logs_export_host
            && let Err(why) = crate::rsyslog::HostPort::parse(host)
        {
            return Err(Error::invalid("logs_export_host", format!("{host:?}: {why}")));
        }

        // A number past f32's range parses as infinity, which serializes as null: refuse it
        // here rather than hand on a spec that does not survive its own round trip.
        if !spec.format_version.is_finite() {
            return Err(Error::invalid("format_version", "out of range for a 32-bit float"));
        }
        if spec.reconfigure_concurrency == 0 {
            return Err(Error::invalid("reconfigure_concurrency", "must be at least 1"));
        }
        validate_settings(&spec)?;
        validate_catalog(&spec)?;
        Ok(ParsedSpec { spec: Box::new(spec), tenant_id, timeline_id, storage })
    }

    pub fn spec(&self) -> &ComputeSpec {
        &self.spec
    }
    pub fn tenant_id(&self) -> Id {
        self.tenant_id
    }
    pub fn timeline_id(&self) -> Id {
        self.timeline_id
    }
    pub fn storage(&self) -> &StorageMode {
        &self.storage
    }
    pub fn mode(&self) -> ComputeMode {
        self.spec.mode
    }
    /// `endpoint_storage_addr`, else the setting `neon.endpoint_storage_addr` (reference 2026
    /// §3.5); an empty value counts as missing.
    pub fn endpoint_storage_addr(&self) -> Option<&str> {
        let s = &self.spec;
        s.endpoint_storage_addr.as_deref().or_else(|| s.setting("neon.endpoint_storage_addr")).filter(|v| !v.is_empty())
    }
    /// `endpoint_storage_token`, else the setting `neon.endpoint_storage_token`.
    pub fn endpoint_storage_token(&self) -> Option<&str> {
        let s = &self.spec;
        s.endpoint_storage_token
            .as_deref()
            .or_else(|| s.setting("neon.endpoint_storage_token"))
            .filter(|v| !v.is_empty())
    }
}

/// The pageserver of each shard (its libpq URL, in shard order), or None for local mode.
/// `pageserver_connection_info` wins over the legacy connstring fields (reference 2026 §3.4);
/// a description that names storage but cannot be used is an error, never local mode.
fn pageservers(spec: &ComputeSpec) -> Result<Option<Vec<String>>> {
    if let Some(info) = &spec.pageserver_connection_info {
        const FIELD: &str = "pageserver_connection_info";
        if info.shard_count > 0 && info.stripe_size.is_none() {
            return Err(Error::invalid(
                format!("{FIELD}.stripe_size"),
                format!("required with shard_count {}", info.shard_count),
            ));
        }
        if info.prefer_protocol == PageserverProtocol::Grpc {
            log::warn!("{FIELD}.prefer_protocol is grpc; this build fetches basebackups over libpq only");
        }
        let mut urls = Vec::new();
        for n in info.shard_numbers() {
            let key = info.shard_key(n);
            let field = format!("{FIELD}.shards[{key:?}]");
            let shard = info.shards.get(&key).ok_or_else(|| {
                Error::invalid(FIELD, format!("shard {key} missing from pageserver_connection_info shard map"))
            })?;
            let first = shard.pageservers.first().ok_or_else(|| {
                Error::invalid(format!("{field}.pageservers"), "empty; each shard needs a pageserver")
            })?;
            match first.libpq_url.as_deref().map(str::trim) {
                Some(url) if !url.is_empty() => urls.push(url.to_string()),
                _ => {
                    return Err(Error::invalid(
                        format!("{field}.pageservers[0].libpq_url"),
                        "missing; this build reaches pageservers over libpq only (no gRPC)",
                    ));
                }
            }
        }
        if let Some(extra) = info.shards.keys().find(|k| !info.shard_numbers().any(|n| info.shard_key(n) == **k)) {
            return Err(Error::invalid(
                FIELD,
                format!("shard {extra:?} is not one of the {} shards named by shard_count", info.shard_count.max(1)),
            ));
        }
        return Ok(Some(urls));
    }
    let Some(list) = spec_str(spec, "pageserver_connstring", "neon.pageserver_connstring") else {
        return Ok(None);
    };
    let connstrings: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
    if connstrings.iter().any(|c| c.is_empty()) {
        return Err(Error::invalid("pageserver_connstring", "empty entry in the comma-separated list"));
    }
    // One entry per shard, and a shard count is a u8 on the wire (shard ids, lease queries).
    if connstrings.len() > usize::from(u8::MAX) {
        return Err(Error::invalid(
            "pageserver_connstring",
            format!("{} entries; at most {} shards", connstrings.len(), u8::MAX),
        ));
    }
    if connstrings.len() > 1 {
        let stripe = spec.shard_stripe_size.is_some()
            || spec.setting("neon.stripe_size").is_some_and(|v| v.trim().parse::<u32>().is_ok());
        if !stripe {
            return Err(Error::invalid(
                "shard_stripe_size",
                format!("{} shards but no stripe_size (nor cluster.settings neon.stripe_size)", connstrings.len()),
            ));
        }
    }
    Ok(Some(connstrings))
}

/// A Primary writes WAL through its safekeepers: at least one, each named once.
fn check_safekeepers(safekeepers: &[String]) -> Result<()> {
    const FIELD: &str = "safekeeper_connstrings";
    if safekeepers.is_empty() {
        return Err(Error::invalid(
            FIELD,
            "a Primary in pageserver mode needs safekeepers (or cluster.settings neon.safekeepers)",
        ));
    }
    let mut sorted: Vec<&String> = safekeepers.iter().collect();
    sorted.sort();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(FIELD, format!("duplicate entry {:?}", w[0])));
    }
    Ok(())
}

/// A top-level string field, or the legacy `cluster.settings` entry that stands in for it.
fn spec_str<'a>(spec: &'a ComputeSpec, field: &str, setting: &str) -> Option<&'a str> {
    let top = match field {
        "tenant_id" => spec.tenant_id.as_deref(),
        "timeline_id" => spec.timeline_id.as_deref(),
        "pageserver_connstring" => spec.pageserver_connstring.as_deref(),
        _ => unreachable!("spec_str is called only for the three legacy-capable fields"),
    };
    top.or_else(|| spec.setting(setting))
}

fn validate_settings(spec: &ComputeSpec) -> Result<()> {
    // Postgres stops reading a configuration file at a NUL byte and then refuses the rest,
    // so the next start would fail.
    if let Some(i) = spec.cluster.postgresql_conf.as_deref().and_then(|t| t.find('\0')) {
        let line = spec.cluster.postgresql_conf.as_deref().unwrap_or_default()[..i].lines().count().max(1);
        return Err(Error::invalid("cluster.postgresql_conf", format!("contains a NUL byte (line {line})")));
    }
    for (i, opt) in spec.cluster.settings.iter().flatten().enumerate() {
        let field = format!("cluster.settings[{i}] ({:?})", opt.name);
        if !escape::is_conf_name(&opt.name) {
            return Err(Error::invalid(field, "not a valid configuration parameter name"));
        }
        match &opt.value {
            None => return Err(Error::invalid(field, "value is null; postgresql.conf needs a value")),
            Some(v) if v.contains('\0') => return Err(Error::invalid(field, "value contains a NUL byte")),
            Some(v) if !opt.is_string() && v.chars().any(char::is_control) => {
                return Err(Error::invalid(
                    field,
                    format!("value {v:?} of a {} setting contains control characters", opt.vartype),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn validate_name(field: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "name is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(
            field,
            format!("{name:?} is {} bytes; Postgres names are at most {MAX_NAME_BYTES}", name.len()),
        ));
    }
    if name.contains('\0') {
        return Err(Error::invalid(field, format!("{name:?} contains a NUL byte")));
    }
    Ok(())
}

/// SQL options are spliced into `CREATE ROLE`/`CREATE DATABASE`: names must be keywords
/// (`CONNECTION LIMIT`), and unquoted values plain tokens, so nothing but what they say runs.
fn validate_sql_options(field: &str, options: &Option<Vec<GenericOption>>) -> Result<()> {
    for (i, opt) in options.iter().flatten().enumerate() {
        let field = format!("{field}.options[{i}] ({:?})", opt.name);
        let keyword = !opt.name.is_empty()
            && opt.name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b' ')
            && !opt.name.starts_with(' ')
            && !opt.name.ends_with(' ');
        if !keyword {
            return Err(Error::invalid(field, "option name must be an SQL keyword such as CONNECTION LIMIT"));
        }
        if let Some(v) = &opt.value {
            if v.contains('\0') {
                return Err(Error::invalid(field, "value contains a NUL byte"));
            }
            let token = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !opt.is_string() && !token {
                return Err(Error::invalid(
                    field,
                    format!("value {v:?} is not a plain token; give vartype \"string\" to quote it"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_catalog(spec: &ComputeSpec) -> Result<()> {
    for (i, role) in spec.cluster.roles.iter().enumerate() {
        let field = format!("cluster.roles[{i}]");
        validate_name(&format!("{field}.name"), &role.name)?;
        validate_sql_options(&field, &role.options)?;
        if let Some(p) = &role.encrypted_password {
            let md5 = p.len() == 32 && p.bytes().all(|b| b.is_ascii_hexdigit());
            let scram = p.starts_with("SCRAM-SHA-256$")
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"$:+/=-".contains(&b));
            if !md5 && !scram {
                return Err(Error::invalid(
                    format!("{field}.encrypted_password"),
                    "expected an md5 hash (32 hex digits, without the md5 prefix) or a SCRAM-SHA-256$ verifier",
                ));
            }
        }
    }
    for (i, db) in spec.cluster.databases.iter().enumerate() {
        let field = format!("cluster.databases[{i}]");
        validate_name(&format!("{field}.name"), &db.name)?;
        validate_name(&format!("{field}.owner"), &db.owner)?;
        validate_sql_options(&field, &db.options)?;
    }
    for (i, op) in spec.delta_operations.iter().flatten().enumerate() {
        let field = format!("delta_operations[{i}]");
        validate_name(&format!("{field}.name"), &op.name)?;
        match op.action.as_str() {
            "rename_role" | "rename_db" => match &op.new_name {
                Some(n) => validate_name(&format!("{field}.new_name"), n)?,
                None => return Err(Error::invalid(format!("{field}.new_name"), format!("required for {}", op.action))),
            },
            "delete_role" | "delete_db" => {}
            other => {
                return Err(Error::invalid(
                    format!("{field}.action"),
                    format!("unknown action {other:?}; expected delete_db, rename_db, delete_role or rename_role"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"{"format_version":1.0,"cluster":{"roles":[],"databases":[]},
        "tenant_id":"b0554b632bd4d547a63b86c3630317e8","timeline_id":"2414a61ffc94e428f14b5758fe308e13"}"#;

    /// A spec written by Neon's own tooling (shared/data), kept byte for byte in tests/data.
    #[test]
    fn neon_legacy_spec_parses_with_ids_from_settings() {
        let p = ParsedSpec::parse(include_str!("../../tests/data/neon_cluster_spec_legacy.json")).unwrap();
        assert_eq!(p.tenant_id().to_string(), "b0554b632bd4d547a63b86c3630317e8");
        assert_eq!(p.timeline_id().to_string(), "2414a61ffc94e428f14b5758fe308e13");
        assert_eq!(p.mode(), ComputeMode::Primary);
        match p.storage() {
            StorageMode::Pageserver { connstrings, safekeepers } => {
                assert_eq!(connstrings, &["host=127.0.0.1 port=6400".to_string()]);
                assert_eq!(safekeepers, &["127.0.0.1:6502", "127.0.0.1:6503", "127.0.0.1:6501"]);
            }
            other => panic!("expected pageserver mode, got {other:?}"),
        }
        let s = p.spec();
        assert_eq!(s.cluster.roles.len(), 6);
        assert_eq!(s.cluster.databases[0].name, "DB2");
        assert_eq!(s.delta_operations.as_ref().map(Vec::len), Some(4));
        assert!(s.remote_extensions.is_some() && s.pgbouncer_settings.is_some());
        assert!(s.features.is_empty());
        assert_eq!(s.reconfigure_concurrency, 1);
        let conf = crate::postgres::conf::render(&p, 3081, false, "neon_superuser", false);
        assert!(
            conf.contains("\ntest.escaping = 'here''s a backslash \\\\ and a quote '' and a double-quote \" hooray'\n")
        );
    }

    #[test]
    fn minimal_local_spec() {
        let p = ParsedSpec::parse(MIN).unwrap();
        assert_eq!(p.storage(), &StorageMode::Local);
        assert_eq!(p.timeline_id().to_string(), "2414a61ffc94e428f14b5758fe308e13");
        assert_eq!(p.spec().reconfigure_concurrency, 1);
    }

    /// Regression: a NUL in `postgresql_conf` passed validation and broke the start.
    #[test]
    fn a_nul_in_postgresql_conf_is_refused() {
        let json = MIN.replace(r#""roles":[]"#, r#""roles":[],"postgresql_conf":"a = 1\nb = '\u0000'\n""#);
        let err = ParsedSpec::parse(&json).unwrap_err().to_string();
        assert_eq!(err, "invalid spec: cluster.postgresql_conf: contains a NUL byte (line 2)");
    }

    #[test]
    fn bad_timeline_names_the_field() {
        let json = MIN.replace("2414a61ffc94e428f14b5758fe308e13", "xyz");
        let err = ParsedSpec::parse(&json).unwrap_err().to_string();
        assert_eq!(err, "invalid spec: timeline_id: expected 32 hex digits, got \"xyz\"");
    }

    #[test]
    fn format_version_must_be_finite() {
        let err = ParsedSpec::parse(&MIN.replace("1.0", "1e39")).unwrap_err().to_string();
        assert_eq!(err, "invalid spec: format_version: out of range for a 32-bit float");
        ParsedSpec::parse(&MIN.replace("1.0", "3.4e38")).unwrap();
    }

    #[test]
    fn lsn_round_trips() {
        let l: Lsn = "0/169AD58".parse().unwrap();
        assert_eq!(l.to_string(), "0/169AD58");
        assert_eq!("1/0".parse::<Lsn>().unwrap().0, 1 << 32);
        assert!("169AD58".parse::<Lsn>().is_err());
        assert!("0/".parse::<Lsn>().is_err());
    }

    #[test]
    fn modes_parse_as_neon_writes_them() {
        for (m, want) in [
            (r#""Primary""#, ComputeMode::Primary),
            (r#""Replica""#, ComputeMode::Replica),
            (r#"{"Static":"0/169AD58"}"#, ComputeMode::Static(Lsn(0x169AD58))),
        ] {
            let json = MIN.replacen('{', &format!("{{\"mode\":{m},"), 1);
            assert_eq!(ParsedSpec::parse(&json).unwrap().mode(), want);
        }
    }

    #[test]
    fn unknown_features_and_keys_are_kept_and_ignored() {
        let json = MIN.replacen('{', r#"{"features":["foo_bar","activity_monitor_experimental"],"extra":1,"#, 1);
        let p = ParsedSpec::parse(&json).unwrap();
        assert_eq!(
            p.spec().features,
            vec![
                super::super::ComputeFeature::UnknownFeature,
                super::super::ComputeFeature::ActivityMonitorExperimental
            ]
        );
    }

    #[test]
    fn pageserver_primary_needs_safekeepers() {
        let json = MIN.replacen('{', r#"{"pageserver_connstring":"postgresql://x@127.0.0.1:1","#, 1);
        let err = ParsedSpec::parse(&json).unwrap_err().to_string();
        assert!(err.contains("safekeeper_connstrings"), "{err}");
        let json = MIN.replacen('{', r#"{"pageserver_connstring":"postgresql://x@127.0.0.1:1","mode":"Replica","#, 1);
        assert!(matches!(ParsedSpec::parse(&json).unwrap().storage(), StorageMode::Pageserver { .. }));
    }

    /// Neon's test spec of March 2026, byte for byte: the new fields parse, and its legacy
    /// `cluster.settings` storage entries still select pageserver mode.
    #[test]
    fn neon_2026_spec_parses() {
        let p = ParsedSpec::parse(include_str!("../../tests/data/neon_cluster_spec_2026.json")).unwrap();
        assert_eq!(p.spec().suspend_timeout_seconds, Some(3600));
        assert!(matches!(p.storage(), StorageMode::Pageserver { .. }));
    }

    #[test]
    fn pageserver_connection_info_wins_over_the_connstring() {
        let json = MIN.replacen(
            '{',
            r#"{"pageserver_connstring":"host=old","safekeeper_connstrings":["sk:1"],
            "pageserver_connection_info":{"shard_count":0,"shards":{"0000":{"pageservers":[
                {"id":null,"libpq_url":"postgresql://no_user@new:6400","grpc_url":"grpc://new:51051"}]}}},"#,
            1,
        );
        match ParsedSpec::parse(&json).unwrap().storage() {
            StorageMode::Pageserver { connstrings, .. } => assert_eq!(connstrings, &["postgresql://no_user@new:6400"]),
            other => panic!("expected pageserver mode, got {other:?}"),
        }
    }

    #[test]
    fn unusable_pageserver_connection_info_is_an_error_not_local_mode() {
        for (info, want) in [
            (r#"{"shard_count":0,"shards":{}}"#, "shard 0000 missing"),
            (r#"{"shard_count":2,"shards":{"0002":{"pageservers":[{"libpq_url":"x"}]}}}"#, "stripe_size"),
            (r#"{"shard_count":0,"shards":{"0000":{"pageservers":[]}}}"#, "pageservers"),
            (r#"{"shard_count":0,"shards":{"0000":{"pageservers":[{"grpc_url":"g"}]}}}"#, "libpq_url"),
            (
                r#"{"shard_count":0,"shards":{"0000":{"pageservers":[{"libpq_url":"x"}]},"0001":{"pageservers":[]}}}"#,
                "\"0001\" is not one of",
            ),
        ] {
            let json = MIN.replacen(
                '{',
                &format!(r#"{{"pageserver_connection_info":{info},"safekeeper_connstrings":["sk:1"],"#),
                1,
            );
            let err = ParsedSpec::parse(&json).unwrap_err().to_string();
            assert!(err.contains(want), "{info}: {err}");
        }
    }

    #[test]
    fn lenient_where_strictness_protects_nothing() {
        // No suspend_timeout_seconds (today's Neon requires it); anon_extension is now unknown.
        let json = MIN.replacen('{', r#"{"features":["anon_extension","tls_experimental"],"#, 1);
        let p = ParsedSpec::parse(&json).unwrap();
        assert_eq!(p.spec().suspend_timeout_seconds, None);
        assert_eq!(
            p.spec().features,
            [super::super::ComputeFeature::UnknownFeature, super::super::ComputeFeature::TlsExperimental]
        );
        let err = ParsedSpec::parse(&MIN.replacen('{', r#"{"offload_lfc_interval_seconds":0,"#, 1)).unwrap_err();
        let text = format!("{err:?}");
        assert!(text.contains("nonzero") || text.contains("zero"), "{text}");
        let err = ParsedSpec::parse(&MIN.replacen('{', r#"{"logs_export_host":"nohost","#, 1)).unwrap_err();
        assert!(err.to_string().contains("logs_export_host"), "{err}");
    }

    #[test]
    fn more_legacy_shards_than_a_shard_count_holds_are_refused() {
        let list = vec!["host=a"; 256].join(",");
        let json = MIN.replacen(
            '{',
            &format!(r#"{{"pageserver_connstring":"{list}","shard_stripe_size":8,"mode":"Replica","#),
            1,
        );
        let err = ParsedSpec::parse(&json).unwrap_err().to_string();
        assert!(err.contains("256 entries; at most 255 shards"), "{err}");
        let list = vec!["host=a"; 255].join(",");
        let json = MIN.replacen(
            '{',
            &format!(r#"{{"pageserver_connstring":"{list}","shard_stripe_size":8,"mode":"Replica","#),
            1,
        );
        ParsedSpec::parse(&json).unwrap();
    }

    #[test]
    fn names_longer_than_postgres_keeps_are_refused() {
        let long = "r".repeat(64);
        let json = MIN.replace(r#""roles":[]"#, &format!(r#""roles":[{{"name":"{long}"}}]"#));
        let err = ParsedSpec::parse(&json).unwrap_err().to_string();
        assert!(err.contains("cluster.roles[0].name") && err.contains("64 bytes"), "{err}");
        let ok = "r".repeat(63);
        let json = MIN.replace(r#""roles":[]"#, &format!(r#""roles":[{{"name":"{ok}"}}]"#));
        ParsedSpec::parse(&json).unwrap();
    }

    #[test]
    fn unquoted_sql_option_values_must_be_tokens() {
        let json = MIN.replace(
            r#""roles":[]"#,
            r#""roles":[{"name":"a","options":[{"name":"CONNECTION LIMIT","value":"1; DROP TABLE x","vartype":"integer"}]}]"#,
        );
        let err = ParsedSpec::parse(&json).unwrap_err().to_string();
        assert!(err.contains("cluster.roles[0].options[0]"), "{err}");
    }
}
