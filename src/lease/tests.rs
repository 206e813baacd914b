use super::*;
use crate::spec::{Id, Lsn};

const TENANT: &str = "b0554b632bd4d547a63b86c3630317e8";
const TIMELINE: &str = "2414a61ffc94e428f14b5758fe308e13";

fn spec(extra: &str) -> ParsedSpec {
    let json = format!(
        r#"{{"format_version":1.0,"cluster":{{"roles":[],"databases":[]}},
        "tenant_id":"{TENANT}","timeline_id":"{TIMELINE}",{extra}}}"#
    );
    ParsedSpec::parse(&json).unwrap()
}

#[test]
fn tenant_shard_ids_are_neons_text() {
    let t: Id = TENANT.parse().unwrap();
    assert_eq!(tenant_shard_id(t, 0, 0), TENANT);
    assert_eq!(tenant_shard_id(t, 0, 2), format!("{TENANT}-0002"));
    assert_eq!(tenant_shard_id(t, 1, 4), format!("{TENANT}-0104"));
    // Two lower-case hex digits each, as the shard map keys.
    assert_eq!(tenant_shard_id(t, 10, 16), format!("{TENANT}-0a10"));
    assert_eq!(tenant_shard_id(t, 254, 255), format!("{TENANT}-feff"));
}

#[test]
fn the_query_ends_with_a_space() {
    let q = query(&format!("{TENANT}-0102"), TIMELINE.parse().unwrap(), Lsn(0x1_0169_AD58));
    assert_eq!(q, format!("lease lsn {TENANT}-0102 {TIMELINE} 1/169AD58 "));
}

#[test]
fn renewal_is_a_minute_early_or_at_half_time() {
    let s = Duration::from_secs;
    assert_eq!(renew_after(s(600)), s(540));
    assert_eq!(renew_after(s(120)), s(60));
    assert_eq!(renew_after(s(100)), s(50));
    assert_eq!(renew_after(Duration::from_millis(2000)), Duration::from_millis(1000));
    assert_eq!(renew_after(Duration::ZERO), Duration::ZERO);
}

#[test]
fn retries_back_off_by_half_up_to_a_minute() {
    let ms = |n| retry_after(n).as_millis();
    assert_eq!([ms(1), ms(2), ms(3), ms(4)], [500, 750, 1125, 1687]);
    // 500 ms × 1.5¹¹ is 43.2 s; × 1.5¹² would be 64.9 s, capped.
    assert_eq!(ms(12), 43_248);
    assert_eq!(retry_after(13), Duration::from_secs(60));
    assert_eq!(retry_after(u32::MAX), Duration::from_secs(60));
}

#[test]
fn valid_until_is_milliseconds_or_null() {
    assert_eq!(parse_valid_until(Some("1764500000123")), Ok(Some(1_764_500_000_123)));
    assert_eq!(parse_valid_until(None), Ok(None));
    assert!(parse_valid_until(Some("soon")).unwrap_err().contains("\"soon\""));
}

#[test]
fn only_a_static_pageserver_compute_leases() {
    assert_eq!(target(&spec(r#""mode":{"Static":"0/5"}"#)), None, "local mode");
    let ps = r#""pageserver_connstring":"postgresql://a@h:1","safekeeper_connstrings":["s:1"]"#;
    assert_eq!(target(&spec(&format!(r#"{ps},"mode":"Primary""#))), None);
    assert_eq!(target(&spec(&format!(r#"{ps},"mode":"Replica""#))), None);
    let t = target(&spec(&format!(r#"{ps},"mode":{{"Static":"0/5"}},"storage_auth_token":"tok""#))).unwrap();
    assert_eq!(t.lsn, Lsn(5));
    assert_eq!(t.token.as_deref(), Some("tok"));
    assert_eq!(t.pageservers, [Pageserver { tenant_shard: TENANT.into(), url: "postgresql://a@h:1".into() }]);
}

#[test]
fn legacy_connstring_lists_are_shards() {
    let t =
        target(&spec(r#""pageserver_connstring":"host=a,host=b","shard_stripe_size":32768,"mode":{"Static":"0/5"}"#))
            .unwrap();
    let shards: Vec<_> = t.pageservers.iter().map(|p| (p.tenant_shard.as_str(), p.url.as_str())).collect();
    assert_eq!(shards, [(&*format!("{TENANT}-0002"), "host=a"), (&*format!("{TENANT}-0102"), "host=b")]);
}

#[test]
fn every_pageserver_of_every_shard_is_asked() {
    let t = target(&spec(
        r#""mode":{"Static":"0/5"},"pageserver_connection_info":{"shard_count":2,"stripe_size":8,
        "prefer_protocol":"grpc","shards":{
        "0002":{"pageservers":[{"id":1,"libpq_url":"host=a","grpc_url":"grpc://a"},{"id":2,"libpq_url":"host=b"}]},
        "0102":{"pageservers":[{"id":3,"libpq_url":"host=c"},{"id":4,"grpc_url":"grpc://d"}]}}}"#,
    ))
    .unwrap();
    let got: Vec<_> = t.pageservers.iter().map(|p| format!("{} {}", p.tenant_shard, p.url)).collect();
    assert_eq!(
        got,
        [format!("{TENANT}-0002 host=a"), format!("{TENANT}-0002 host=b"), format!("{TENANT}-0102 host=c")]
    );
    assert_eq!(t.skipped, ["shard 0102 pageserver 4"]);
    assert!(t.grpc_preferred);
}
