//! LSN leases of a `Static` compute: the stand-in pageserver answers `lease lsn ...` and
//! records each query; the compute starts from its basebackup like the storage tests.
//!
//! PostgreSQL 15 only, as the storage tests (the stand-in serves a 15 basebackup).

use crate::storage::{Neon, TOKEN};
use crate::support::pageserver::{Faults, Lease, LeaseAnswer, StandIn};
use crate::support::{self, TENANT, TIMELINE, http};
use serde_json::json;
use std::time::{Duration, Instant};

/// Far beyond the WAL of the backup: recovery waits there, open for reads.
const LSN: &str = "FF/0";

fn static_mode() -> serde_json::Value {
    json!({"Static": LSN})
}

/// Polls until `ps` has received at least `n` leases; fails after `timeout`.
fn wait_leases(ps: &StandIn, n: usize, timeout: Duration, log: &dyn Fn() -> String) -> Vec<Lease> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = ps.leases();
        if l.len() >= n {
            return l;
        }
        assert!(Instant::now() < deadline, "{} of {n} leases in {timeout:?}: {l:?}\nlog:\n{}", l.len(), log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `ps` receives no lease beyond the first `n` during `window`.
fn no_more_leases(ps: &StandIn, n: usize, window: Duration) {
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        let l = ps.leases();
        assert_eq!(l.len(), n, "an unexpected lease: {l:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn expected_query(tenant_shard: &str) -> String {
    format!("lease lsn {tenant_shard} {TIMELINE} {LSN} ")
}

fn terminate(c: &mut support::Compute) {
    let r = http::request(c.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(c.wait_exit(Duration::from_secs(30)).success(), "{}", c.log_text());
}

fn skip(test: &str) -> bool {
    support::skip_unless_major(15, &format!("leases::{test}"))
}

#[test]
fn a_static_compute_leases_its_lsn_with_neons_query() {
    if skip("a_static_compute_leases_its_lsn_with_neons_query") {
        return;
    }
    let n = Neon::new("lease-query", static_mode());
    let mut c = n.spawn(0);
    c.wait_running();
    let leases = wait_leases(&n.ps, 1, Duration::from_secs(20), &|| c.log_text());
    let l = &leases[0];
    assert_eq!(l.query, expected_query(TENANT), "trailing space, bare tenant id when unsharded");
    assert_eq!((l.tenant_shard.as_str(), l.timeline.as_str(), l.lsn.as_str()), (TENANT, TIMELINE, LSN));
    assert_eq!(l.password.as_deref(), Some(TOKEN), "storage_auth_token is the password, as for the basebackup");
    assert_eq!(n.source_row(), crate::storage::SOURCE_ROW);
    // Asked for as soon as the spec is known (as Neon does), before the basebackup.
    let log = c.log_text();
    let (leasing, unpacked) = (log.find("lsn lease: leasing LSN FF/0"), log.find("basebackup of "));
    assert!(leasing.is_some() && unpacked.is_some() && leasing < unpacked, "{log}");

    // The lease is shown in /status and /metrics (polled: the thread publishes after the answer).
    let status = support::poll(Duration::from_secs(10), "the lease in /status", || {
        c.status().filter(|s| s["lsn_lease"]["valid_until"].is_u64())
    });
    let lease = &status["lsn_lease"];
    assert_eq!(lease["lsn"], LSN);
    assert_eq!(lease["refused"], false);
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let until = lease["valid_until"].as_u64().unwrap();
    // The stand-in grants 600 s.
    assert!(until > now_ms + 500_000 && until <= now_ms + 600_000, "{until} vs now {now_ms}");
    let text = http::get(c.http_port, "/metrics").text();
    assert!(text.contains("\ncompute_ctl_lsn_lease_valid_until_seconds "), "{text}");
    assert!(text.contains("\ncompute_ctl_lsn_lease_refused 0\n"), "{text}");
    assert!(text.contains("\ncompute_ctl_lsn_lease_failures_total 0\n"), "{text}");
    match http::promtool_check(&text) {
        Some((ok, msg)) => assert!(ok, "promtool check metrics failed: {msg}\n{text}"),
        None => eprintln!("promtool not installed: Prometheus text checked by assertions only"),
    }
    // The next renewal is 540 s away: /terminate does not wait for it.
    let started = Instant::now();
    terminate(&mut c);
    assert!(started.elapsed() < Duration::from_secs(10), "terminate took {:?}", started.elapsed());
    assert!(c.log_text().contains("lsn lease: thread stopped"), "{}", c.log_text());
    assert_eq!(n.ps.leases().len(), 1);
}

#[test]
fn a_short_lease_is_renewed_before_it_runs_out() {
    if skip("a_short_lease_is_renewed_before_it_runs_out") {
        return;
    }
    let n = Neon::new("lease-renew", static_mode());
    n.ps.set_lease_answer(LeaseAnswer { valid_for: Some(Duration::from_secs(2)), ..LeaseAnswer::default() });
    let mut c = n.spawn(0);
    c.wait_running();
    // Valid 2 s: renewed at half time, 1 s after each answer.
    let leases = wait_leases(&n.ps, 3, Duration::from_secs(20), &|| c.log_text());
    for pair in leases.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(900) && gap < Duration::from_secs(2), "renewed after {gap:?}");
        assert_eq!(pair[1].query, expected_query(TENANT));
    }
    terminate(&mut c);
}

#[test]
fn failed_leases_are_retried_with_backoff() {
    if skip("failed_leases_are_retried_with_backoff") {
        return;
    }
    let n = Neon::new("lease-retry", static_mode());
    n.ps.set_lease_answer(LeaseAnswer { fail_first: 2, ..LeaseAnswer::default() });
    let mut c = n.spawn(0);
    c.wait_running();
    let leases = wait_leases(&n.ps, 3, Duration::from_secs(20), &|| c.log_text());
    // 500 ms after the first failure, 750 ms after the second (the upper bounds leave room for
    // a loaded machine, and are far below the next steps of a wrong schedule).
    let gaps: Vec<Duration> = leases.windows(2).map(|p| p[1].at - p[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(490) && gaps[0] < Duration::from_millis(1500), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(740) && gaps[1] < Duration::from_millis(2500), "{gaps:?}");
    let s = support::poll(Duration::from_secs(10), "the third lease in /status", || {
        c.status().filter(|s| s["lsn_lease"]["valid_until"].is_u64())
    });
    assert_eq!(s["lsn_lease"]["failures"], 2, "{s}");
    let text = http::get(c.http_port, "/metrics").text();
    assert!(text.contains("\ncompute_ctl_lsn_lease_failures_total 2\n"), "{text}");
    assert!(c.log_text().contains("injected lease failure 1"), "{}", c.log_text());
    // Granted for 600 s: no further lease soon.
    no_more_leases(&n.ps, 3, Duration::from_millis(1500));
    terminate(&mut c);
}

#[test]
fn a_refused_lease_stops_the_lease_thread() {
    if skip("a_refused_lease_stops_the_lease_thread") {
        return;
    }
    let n = Neon::new("lease-refused", static_mode());
    n.ps.set_lease_answer(LeaseAnswer { valid_for: None, ..LeaseAnswer::default() });
    let mut c = n.spawn(0);
    c.wait_running();
    wait_leases(&n.ps, 1, Duration::from_secs(20), &|| c.log_text());
    // Were a NULL taken for an error, the retry would come after 500 ms, then 750 ms.
    no_more_leases(&n.ps, 1, Duration::from_millis(2500));
    let s = c.status().unwrap();
    assert_eq!(s["lsn_lease"]["refused"], true, "{s}");
    assert_eq!(s["lsn_lease"]["valid_until"], serde_json::Value::Null, "{s}");
    let log = c.log_text();
    assert!(log.contains("the LSN is behind the GC cutoff") && log.contains("lsn lease: thread stopped"), "{log}");
    let text = http::get(c.http_port, "/metrics").text();
    assert!(text.contains("\ncompute_ctl_lsn_lease_refused 1\n"), "{text}");
    // The compute itself keeps running.
    assert_eq!(s["status"], "running");
    terminate(&mut c);
}

#[test]
fn every_pageserver_of_every_shard_gets_a_lease() {
    if skip("every_pageserver_of_every_shard_gets_a_lease") {
        return;
    }
    let mut n = Neon::new("lease-shards", static_mode());
    let other = StandIn::start(true);
    let ps = |s: &StandIn, id: u64| json!({"id": id, "libpq_url": s.connstr(), "grpc_url": null});
    n.s.spec["pageserver_connection_info"] = json!({
        "shard_count": 2,
        "stripe_size": 32768,
        "shards": {
            "0002": {"pageservers": [ps(&n.ps, 1), ps(&other, 2)]},
            "0102": {"pageservers": [ps(&other, 2)]}
        },
        "prefer_protocol": "libpq"
    });
    n.s.spec.as_object_mut().unwrap().remove("pageserver_connstring");
    let mut c = n.spawn(0);
    c.wait_running();
    let first = wait_leases(&n.ps, 1, Duration::from_secs(20), &|| c.log_text());
    let second = wait_leases(&other, 2, Duration::from_secs(20), &|| c.log_text());
    assert_eq!(first.iter().map(|l| l.query.clone()).collect::<Vec<_>>(), [expected_query(&format!("{TENANT}-0002"))]);
    let mut got: Vec<String> = second.iter().map(|l| l.query.clone()).collect();
    got.sort();
    assert_eq!(got, [expected_query(&format!("{TENANT}-0002")), expected_query(&format!("{TENANT}-0102"))]);
    // One round: nothing more until the renewal 540 s away.
    no_more_leases(&other, 2, Duration::from_millis(500));
    assert_eq!(n.ps.leases().len(), 1);
    terminate(&mut c);
}

#[test]
fn a_primary_takes_no_lease() {
    if skip("a_primary_takes_no_lease") {
        return;
    }
    let n = Neon::new("lease-primary", "Primary".into());
    let mut c = n.spawn(0);
    c.wait_running();
    // A /configure goes through the owner, which has then passed the point where a lease
    // thread would have been started.
    let spec = n.s.spec.clone();
    let r = http::post_json(c.http_port, "/configure", &json!({ "spec": spec, "compute_ctl_config": {} }));
    assert_eq!(r.status, 200, "{}", r.text());
    let s = c.status().unwrap();
    assert!(s.get("lsn_lease").is_none(), "{s}");
    assert!(!http::get(c.http_port, "/metrics").text().contains("compute_ctl_lsn_lease"));
    assert!(n.ps.leases().is_empty(), "{:?}", n.ps.leases());
    terminate(&mut c);
    assert!(n.ps.leases().is_empty(), "{:?}", n.ps.leases());
}

/// A live `/configure`, then `/refresh_configuration`, naming another pageserver: the next lease
/// goes there at once, not at the renewal 540 s away.
#[test]
fn a_live_spec_with_another_pageserver_moves_the_lease_there_at_once() {
    if skip("a_live_spec_with_another_pageserver_moves_the_lease_there_at_once") {
        return;
    }
    let n = Neon::new("lease-move", static_mode());
    let mut c = n.spawn(0);
    c.wait_running();
    wait_leases(&n.ps, 1, Duration::from_secs(20), &|| c.log_text());
    let other = StandIn::start(true);
    let mut spec = n.s.spec.clone();
    spec["pageserver_connstring"] = other.connstr().into();
    let sent = Instant::now();
    let r = http::post_json(c.http_port, "/configure", &json!({ "spec": spec, "compute_ctl_config": {} }));
    assert_eq!(r.status, 200, "{}", r.text());
    // The renewal was 540 s away: the new pageserver is asked as soon as the spec changes.
    let moved = wait_leases(&other, 1, Duration::from_secs(10), &|| c.log_text());
    assert!(moved[0].at - sent < Duration::from_secs(5), "{:?}", moved[0].at - sent);
    assert_eq!(moved[0].query, expected_query(TENANT));
    assert_eq!(n.ps.leases().len(), 1, "the old pageserver was asked again");

    // /refresh_configuration re-reads the -S file: a third pageserver named there is asked next.
    let third = StandIn::start(true);
    spec["pageserver_connstring"] = third.connstr().into();
    std::fs::write(n.s.dir.join("spec.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let sent = Instant::now();
    let r = http::request(c.http_port + 1, "POST", "/refresh_configuration", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let moved = wait_leases(&third, 1, Duration::from_secs(10), &|| c.log_text());
    assert!(moved[0].at - sent < Duration::from_secs(5), "{:?}", moved[0].at - sent);
    assert_eq!(other.leases().len(), 1, "the second pageserver was asked again");
    terminate(&mut c);
}

#[test]
fn a_lease_query_that_never_returns_delays_the_exit_by_one_query_timeout_at_most() {
    if skip("a_lease_query_that_never_returns_delays_the_exit_by_one_query_timeout_at_most") {
        return;
    }
    let n = Neon::new("lease-hang", static_mode());
    n.ps.set_lease_answer(LeaseAnswer { hang: true, ..LeaseAnswer::default() });
    let mut c = n.spawn(0);
    c.wait_running();
    wait_leases(&n.ps, 1, Duration::from_secs(20), &|| c.log_text());
    // /terminate answers once Postgres is down, without waiting for the lease thread ...
    let started = Instant::now();
    let r = http::request(c.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(8), "/terminate took {:?}", started.elapsed());
    // ... and the process waits for it at most the query timeout (10 s) before exiting.
    assert!(c.wait_exit(Duration::from_secs(20)).success(), "{}", c.log_text());
    assert!(started.elapsed() < Duration::from_secs(18), "exit took {:?}", started.elapsed());
    let log = c.log_text();
    assert!(log.contains("a lease query is still in flight; exiting without it"), "{log}");
    assert_eq!(n.ps.leases().len(), 1);
}

#[test]
fn a_failed_start_ends_the_lease_thread() {
    if skip("a_failed_start_ends_the_lease_thread") {
        return;
    }
    let mut n = Neon::new("lease-failed-start", static_mode());
    n.retries(0);
    n.ps.set_faults(Faults { error_at: Some(0), ..Faults::default() });
    // Renewed every second while the thread lives.
    n.ps.set_lease_answer(LeaseAnswer { valid_for: Some(Duration::from_secs(2)), ..LeaseAnswer::default() });
    let mut c = n.spawn(30);
    c.wait_status("failed", Duration::from_secs(30));
    let after_failure = n.ps.leases().len();
    assert!(after_failure <= 1, "{:?}", n.ps.leases());
    no_more_leases(&n.ps, after_failure, Duration::from_millis(2500));
    assert!(c.log_text().contains("lsn lease: thread stopped"), "{}", c.log_text());
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(20));
}
