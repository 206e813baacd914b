//! LFC prewarm and offload (reference 2026 §5.8) against a real Postgres and a stand-in
//! endpoint storage. The neon extension is not available here, so its SQL interface is
//! imitated in the real Postgres: schema `neon` with `get_local_cache_state()` (returns the
//! bytes a table holds), `prewarm_local_cache(bytea)` (records the bytes it gets, and can be
//! held in a loop so that a prewarm is seen running) and `get_prewarm_info()`.

use crate::support::endpoint_storage::EndpointStorage;
use crate::support::{self, Compute, Setup, http};
use serde_json::json;
use std::time::{Duration, Instant};

const TOKEN: &str = "lfc-secret-token-5f2a9c";
const EP: &str = "ep-lfc-test-1";
const T: Duration = Duration::from_secs(30);

/// The stand-in of the neon extension's functions, for `postgres --single -j` (a statement
/// ends with a semicolon and an empty line). `hold` keeps a call looping until it is cleared
/// (each statement of a volatile function sees other sessions' commits), at most 60 s.
const NEON_STANDIN: &str = "CREATE SCHEMA neon;

CREATE TABLE neon.standin_cache (id int PRIMARY KEY, state bytea, hold_prewarm bool NOT NULL DEFAULT false, hold_offload bool NOT NULL DEFAULT false);

INSERT INTO neon.standin_cache (id) VALUES (1);

CREATE TABLE neon.standin_received (n serial PRIMARY KEY, state bytea NOT NULL);

CREATE FUNCTION neon.standin_wait(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..6000 LOOP
    EXIT WHEN NOT (SELECT CASE WHEN what = 'prewarm' THEN c.hold_prewarm ELSE c.hold_offload END FROM neon.standin_cache c WHERE c.id = 1);
    PERFORM pg_catalog.pg_sleep(0.01);
  END LOOP;
END $$;

CREATE FUNCTION neon.get_local_cache_state() RETURNS bytea LANGUAGE plpgsql AS $$
BEGIN
  PERFORM neon.standin_wait('offload');
  RETURN (SELECT c.state FROM neon.standin_cache c WHERE c.id = 1);
END $$;

CREATE FUNCTION neon.prewarm_local_cache(bytes bytea) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM neon.standin_wait('prewarm');
  INSERT INTO neon.standin_received (state) VALUES (bytes);
END $$;

CREATE FUNCTION neon.get_prewarm_info(OUT total int, OUT prewarmed int, OUT skipped int) RETURNS record LANGUAGE sql AS $$
  SELECT pg_catalog.length(r.state), pg_catalog.length(r.state) / 3, pg_catalog.length(r.state) - pg_catalog.length(r.state) / 3
  FROM neon.standin_received r ORDER BY r.n DESC LIMIT 1
$$;
";

/// Installs the stand-in into a PGDATA whose Postgres is not running.
fn install_neon_standin(pgdata: &std::path::Path) {
    use std::io::Write;
    let mut cmd = std::process::Command::new(support::pgbin());
    cmd.args(["--single", "-j", "-D"]).arg(pgdata).arg("postgres");
    support::as_pg_user(&mut cmd);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(NEON_STANDIN.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("ERROR"), "postgres --single: {text}");
}

/// Deterministic bytes that compress a little (like a real cache state: page tags).
fn cache_state(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            if i % 4 == 0 { (x >> 24) as u8 } else { (i / 64) as u8 }
        })
        .collect()
}

fn zstd_encode(b: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
}

fn zstd_decode(mut z: &[u8]) -> Vec<u8> {
    use ruzstd::io::Read;
    let mut d = ruzstd::decoding::StreamingDecoder::new(&mut z).expect("a zstd frame");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = d.read(&mut buf).expect("decodes");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// A running compute with the stand-in installed (unless `vanilla`) and an endpoint storage.
struct Lfc {
    s: Setup,
    c: Compute,
    store: EndpointStorage,
}

impl Lfc {
    fn start(name: &str, tweak: impl FnOnce(&mut Setup, &EndpointStorage)) -> Lfc {
        Lfc::start_lingering(name, "0", tweak)
    }

    /// With `--exit-delay linger` seconds.
    fn start_lingering(name: &str, linger: &str, tweak: impl FnOnce(&mut Setup, &EndpointStorage)) -> Lfc {
        let store = EndpointStorage::start(TOKEN);
        let mut s = Setup::new(name);
        s.spec["endpoint_id"] = json!(EP);
        s.spec["endpoint_storage_addr"] = json!(store.addr());
        s.spec["endpoint_storage_token"] = json!(TOKEN);
        install_neon_standin(&s.pgdata);
        tweak(&mut s, &store);
        let mut args = s.args();
        let n = args.iter().position(|a| a == "--exit-delay").unwrap();
        args[n + 1] = linger.into();
        let mut c = Compute::spawn(&args, s.http_port);
        c.wait_running();
        Lfc { s, c, store }
    }

    fn req(&self, method: &str, path: &str) -> http::Response {
        http::request(self.s.http_port, method, path, &[], b"").unwrap()
    }

    /// GET `path` until its status is not `busy`.
    fn wait_end(&self, path: &str, busy: &str) -> serde_json::Value {
        let deadline = Instant::now() + T;
        loop {
            let v = self.req("GET", path).json();
            if v["status"] != busy {
                return v;
            }
            assert!(Instant::now() < deadline, "{path} still {busy}; log:\n{}", self.c.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn set_cache_state(&self, bytes: &[u8]) {
        self.s.client().execute("UPDATE neon.standin_cache SET state = $1 WHERE id = 1", &[&bytes]).unwrap();
    }

    fn hold(&self, what: &str, on: bool) {
        let sql = format!("UPDATE neon.standin_cache SET hold_{what} = $1 WHERE id = 1");
        self.s.client().execute(&sql, &[&on]).unwrap();
    }

    fn received(&self) -> Vec<Vec<u8>> {
        let rows = self.s.client().query("SELECT state FROM neon.standin_received ORDER BY n", &[]).unwrap();
        rows.iter().map(|r| r.get(0)).collect()
    }

    fn metric(&self, name: &str) -> u64 {
        let m = http::get(self.s.http_port, "/metrics").text();
        let line = m.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name}:\n{m}"));
        line.split(' ').nth(1).unwrap().parse().unwrap()
    }

    /// Waits until the stand-in's `what` call is running in Postgres (held in its loop).
    fn wait_held(&self, function: &str) {
        let deadline = Instant::now() + T;
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1";
        let pattern = format!("%neon.{function}%");
        while self.s.client().query_one(sql, &[&pattern]).unwrap().get::<_, i64>(0) == 0 {
            assert!(Instant::now() < deadline, "{function} never ran; log:\n{}", self.c.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn assert_token_not_logged(&mut self) {
        self.c.signal("TERM");
        self.c.wait_exit(T);
        let log = self.c.log_text();
        assert!(!log.contains(TOKEN), "the endpoint storage token is in the log:\n{log}");
    }
}

#[test]
fn offload_uploads_the_zstd_state_and_prewarm_loads_the_same_bytes_back() {
    let mut x = Lfc::start("lfc-roundtrip", |_, _| {});
    assert_eq!(x.req("GET", "/lfc/prewarm").json(), json!({"status": "not_prewarmed"}));
    assert_eq!(x.req("GET", "/lfc/offload").json(), json!({"status": "not_offloaded"}));
    // No state yet: the offload is skipped and nothing is uploaded.
    assert_eq!(x.req("POST", "/lfc/offload").status, 202);
    assert_eq!(x.wait_end("/lfc/offload", "offloading"), json!({"status": "skipped"}));
    assert_eq!(x.store.count("PUT"), 0);

    let state = cache_state(300_000, 1);
    x.set_cache_state(&state);
    let r = x.req("POST", "/lfc/offload");
    assert_eq!((r.status, r.body.len()), (202, 0));
    let done = x.wait_end("/lfc/offload", "offloading");
    assert_eq!(done["status"], "completed", "{done}");
    for k in ["state_query_time_ms", "compress_time_ms", "state_upload_time_ms"] {
        assert!(done[k].is_u64(), "{k} in {done}");
    }
    assert_eq!(done.as_object().unwrap().len(), 4, "{done}");
    let path = EndpointStorage::path(EP);
    let stored = x.store.object(&path).expect("the state was uploaded");
    assert!(stored.len() < state.len(), "compressed: {} of {}", stored.len(), state.len());
    assert_eq!(zstd_decode(&stored), state);
    let put = x.store.seen().into_iter().find(|s| s.method == "PUT").unwrap();
    assert_eq!(put.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));

    assert_eq!(x.req("POST", "/lfc/prewarm").status, 202);
    let done = x.wait_end("/lfc/prewarm", "prewarming");
    let n = state.len() as i64;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!((done["total"].as_i64(), done["prewarmed"].as_i64()), (Some(n), Some(n / 3)));
    assert_eq!(done["skipped"].as_i64(), Some(n - n / 3));
    for k in ["state_download_time_ms", "uncompress_time_ms", "prewarm_time_ms"] {
        assert!(done[k].is_u64(), "{k} in {done}");
    }
    assert_eq!(x.received(), [state]);
    assert_eq!(x.metric("compute_ctl_lfc_prewarms_total"), 1);
    assert_eq!(x.metric("compute_ctl_lfc_offloads_total"), 2);
    assert_eq!(x.metric("compute_ctl_lfc_prewarm_errors_total") + x.metric("compute_ctl_lfc_offload_errors_total"), 0);
    if let Some((ok, msg)) = http::promtool_check(&http::get(x.s.http_port, "/metrics").text()) {
        assert!(ok, "promtool: {msg}");
    }
    x.assert_token_not_logged();
}

#[test]
fn missing_state_is_skipped_storage_errors_fail_with_their_status_and_from_endpoint_picks_the_object() {
    let mut x = Lfc::start("lfc-errors", |_, _| {});
    let path = EndpointStorage::path(EP);
    assert_eq!(x.req("POST", "/lfc/prewarm").status, 202);
    assert_eq!(x.wait_end("/lfc/prewarm", "prewarming"), json!({"status": "skipped"}));

    x.store.force(&path, Some(500));
    assert_eq!(x.req("POST", "/lfc/prewarm").status, 202);
    let failed = x.wait_end("/lfc/prewarm", "prewarming");
    assert_eq!(failed, json!({"status": "failed", "error": "500 Internal Server Error querying endpoint storage"}));
    x.set_cache_state(b"some state");
    assert_eq!(x.req("POST", "/lfc/offload").status, 202);
    let failed = x.wait_end("/lfc/offload", "offloading");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["error"].as_str().unwrap().starts_with("500 "), "{failed}");
    x.store.force(&path, None);

    // A body that is not zstd fails with a clear error, and nothing reaches Postgres.
    x.store.put_object(&path, b"this is not zstd".to_vec());
    assert_eq!(x.req("POST", "/lfc/prewarm").status, 202);
    let failed = x.wait_end("/lfc/prewarm", "prewarming");
    assert!(failed["error"].as_str().unwrap().contains("not zstd"), "{failed}");
    assert!(x.received().is_empty());
    assert_eq!(x.metric("compute_ctl_lfc_prewarm_errors_total"), 2);
    assert_eq!(x.metric("compute_ctl_lfc_offload_errors_total"), 1);

    // ?from_endpoint= reads another endpoint's object.
    let other = cache_state(5000, 2);
    x.store.put_object(&EndpointStorage::path("ep-other-2"), zstd_encode(&other));
    assert_eq!(x.req("POST", "/lfc/prewarm?from_endpoint=ep-other-2").status, 202);
    assert_eq!(x.wait_end("/lfc/prewarm", "prewarming")["status"], "completed");
    assert_eq!(x.received(), [other]);
    let get = x.store.seen().into_iter().rev().find(|s| s.method == "GET").unwrap();
    assert_eq!(get.path, EndpointStorage::path("ep-other-2"));

    // A query without from_endpoint, or one that is not an id, is a plain-text 400.
    for q in ["?foo=bar", "?from_endpoint=a%2Fb", "?from_endpoint="] {
        let r = x.req("POST", &format!("/lfc/prewarm{q}"));
        assert_eq!(r.status, 400, "{q}");
        assert!(r.header("Content-Type").unwrap().starts_with("text/plain"), "{q}");
        assert!(r.text().starts_with("Failed to deserialize query string"), "{q}: {}", r.text());
    }
    assert_eq!(x.store.count("GET"), 4);
    x.assert_token_not_logged();
}

#[test]
fn a_second_request_gets_429_and_delete_cancels_a_running_prewarm_which_poisons_nothing() {
    let mut x = Lfc::start("lfc-cancel", |_, _| {});
    let state = cache_state(20_000, 3);
    x.store.put_object(&EndpointStorage::path(EP), zstd_encode(&state));
    // A cancel with nothing running changes nothing (Neon's next prewarm would be cancelled).
    assert_eq!(x.req("DELETE", "/lfc/prewarm").status, 202);
    assert_eq!(x.req("GET", "/lfc/prewarm").json(), json!({"status": "not_prewarmed"}));

    x.hold("prewarm", true);
    assert_eq!(x.req("POST", "/lfc/prewarm").status, 202);
    x.wait_held("prewarm_local_cache");
    let r = x.req("POST", "/lfc/prewarm");
    assert_eq!((r.status, r.json()), (429, json!({"error": "Multiple requests for prewarm are not allowed"})));
    assert_eq!(x.req("GET", "/lfc/prewarm").json(), json!({"status": "prewarming"}));
    let asked = Instant::now();
    assert_eq!(x.req("DELETE", "/lfc/prewarm").status, 202);
    assert_eq!(x.wait_end("/lfc/prewarm", "prewarming"), json!({"status": "cancelled"}));
    // Cancelled inside the function (it would hold 60 s), and nothing was recorded.
    assert!(asked.elapsed() < Duration::from_secs(20), "{:?}", asked.elapsed());
    assert!(x.received().is_empty());

    x.hold("prewarm", false);
    assert_eq!(x.req("POST", "/lfc/prewarm").status, 202);
    assert_eq!(x.wait_end("/lfc/prewarm", "prewarming")["status"], "completed");
    assert_eq!(x.received(), [state]);

    x.set_cache_state(b"held");
    x.hold("offload", true);
    assert_eq!(x.req("POST", "/lfc/offload").status, 202);
    x.wait_held("get_local_cache_state");
    let r = x.req("POST", "/lfc/offload");
    assert_eq!((r.status, r.json()), (429, json!({"error": "Multiple requests for prewarm offload are not allowed"})));
    x.hold("offload", false);
    assert_eq!(x.wait_end("/lfc/offload", "offloading")["status"], "completed");
    assert_eq!(x.metric("compute_ctl_lfc_prewarms_total"), 2);
    assert_eq!(x.metric("compute_ctl_lfc_offloads_total"), 1);
    assert_eq!(x.metric("compute_ctl_lfc_prewarm_errors_total"), 0);
    x.assert_token_not_logged();
}

/// `autoprewarm` loads the stored state once the compute runs (and again after `POST
/// /restart`); `offload_lfc_interval_seconds` uploads the state again and again, and stops
/// with Postgres. The endpoint storage is named
/// by the `neon.endpoint_storage_*` settings here, the fallback of the spec fields.
#[test]
fn autoprewarm_at_start_and_periodic_offload_until_postgres_stops() {
    let first = cache_state(40_000, 4);
    let mut x = Lfc::start_lingering("lfc-auto", "3", |s, store| {
        store.put_object(&EndpointStorage::path(EP), zstd_encode(&first));
        let spec = s.spec.as_object_mut().unwrap();
        spec.remove("endpoint_storage_addr");
        spec.remove("endpoint_storage_token");
        spec.insert("autoprewarm".into(), json!(true));
        spec.insert("offload_lfc_interval_seconds".into(), json!(1));
        s.setting("neon.endpoint_storage_addr", &store.addr(), "string");
        s.setting("neon.endpoint_storage_token", TOKEN, "string");
    });
    let done = x.wait_end("/lfc/prewarm", "prewarming");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(x.received(), [first]);

    let second = cache_state(50_000, 5);
    x.set_cache_state(&second);
    let deadline = Instant::now() + T;
    while x.store.object(&EndpointStorage::path(EP)).map(|z| zstd_decode(&z)) != Some(second.clone()) {
        assert!(Instant::now() < deadline, "the periodic offload never uploaded; log:\n{}", x.c.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(x.wait_end("/lfc/offload", "offloading")["status"], "completed");
    assert_eq!(x.metric("compute_ctl_lfc_prewarms_total"), 1);
    assert!(x.metric("compute_ctl_lfc_offloads_total") >= 1);

    // A restarted Postgres has a new, empty cache: autoprewarm runs again, with what the
    // periodic offload saved.
    let r = http::request(x.s.http_port, "POST", "/restart", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + T;
    while x.received().len() < 2 {
        assert!(Instant::now() < deadline, "no prewarm after the restart; log:\n{}", x.c.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(x.received()[1], second);
    assert_eq!(x.wait_end("/lfc/prewarm", "prewarming")["status"], "completed");
    assert_eq!(x.metric("compute_ctl_lfc_prewarms_total"), 2);

    // After Postgres stops (the compute lingers 3 s before exiting), no offload is attempted:
    // one would fail, and log it, within the 1 s interval.
    assert_eq!(http::request(x.s.http_port, "POST", "/terminate", &[], b"").unwrap().status, 200);
    let puts = x.store.count("PUT");
    x.c.wait_exit(T);
    assert_eq!(x.store.count("PUT"), puts, "an offload after Postgres stopped");
    let log = x.c.log_text();
    assert!(log.contains("LFC background tasks stopped"), "{log}");
    assert!(!log.contains("LFC offload failed"), "{log}");
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
}

/// On vanilla PostgreSQL (no neon functions) a prewarm and an offload are accepted and end
/// `failed`, naming the neon function that is missing; without a spec the request is a 412.
#[test]
fn vanilla_postgres_fails_naming_the_neon_function_and_no_spec_is_a_412() {
    let store = EndpointStorage::start(TOKEN);
    let mut s = Setup::new("lfc-vanilla");
    s.spec["endpoint_id"] = json!(EP);
    s.spec["endpoint_storage_addr"] = json!(store.addr());
    s.spec["endpoint_storage_token"] = json!(TOKEN);
    let mut c = s.spawn();
    c.wait_running();
    let p = s.http_port;
    for (path, busy, function) in [
        ("/lfc/prewarm", "prewarming", "neon.prewarm_local_cache(bytea)"),
        ("/lfc/offload", "offloading", "neon.get_local_cache_state()"),
    ] {
        assert_eq!(http::request(p, "POST", path, &[], b"").unwrap().status, 202, "{path}");
        let v = support::poll(T, &format!("{path} to end"), || {
            Some(http::get(p, path).json()).filter(|v| v["status"] != busy)
        });
        assert_eq!(v["status"], "failed", "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(function) && e.contains("neon extension"), "{e}");
    }
    assert!(store.seen().is_empty(), "nothing is asked of the storage");
    c.signal("TERM");
    c.wait_exit(T);

    let s = Setup::new("lfc-nospec");
    let _c = Compute::spawn(&s.base_args(), s.http_port);
    support::poll(T, "the HTTP server", || http::request(s.http_port, "GET", "/status", &[], b"").ok());
    let r = http::request(s.http_port, "POST", "/lfc/prewarm", &[], b"").unwrap();
    assert_eq!(r.status, 412);
    assert!(r.error().starts_with("no spec yet"), "{}", r.text());
    assert_eq!(http::get(s.http_port, "/lfc/prewarm").json(), json!({"status": "not_prewarmed"}));
    assert_eq!(http::request(s.http_port, "DELETE", "/lfc/prewarm", &[], b"").unwrap().status, 202);
}
