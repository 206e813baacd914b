//! Being operated: systemd's notifications (in order, with the watchdog, and its silence
//! while the owner is stuck), the Kubernetes probes in every state, the pre-stop checkpoint,
//! and a restart-only setting changed live until `POST /restart` applies it.
//!
//! How a test makes the owner stuck, with no test-only hook: it holds the row lock of a role
//! (an open transaction that altered it) while a live `/configure` changes that role, so the
//! owner waits inside the catalog apply until the test rolls back. That is a real way for an
//! owner to hang.

use crate::support::{self, BIN, Compute, Setup, TestDir, http};
use serde_json::{Value, json};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A compute_ctl started with extra environment variables.
fn spawn_with_env(dir: &TestDir, args: &[String], http_port: u16, env: &[(&str, &str)]) -> Compute {
    static N: AtomicUsize = AtomicUsize::new(0);
    let log = dir.join(&format!("compute-env-{}.log", N.fetch_add(1, Ordering::SeqCst)));
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Compute { child: Some(cmd.spawn().unwrap()), http_port, log }
}

/// The notification socket, with an abstract name unique to this test.
fn notify_socket(tag: &str) -> (UnixDatagram, String) {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("compute_ctl-test-{tag}-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    (sock, format!("@{name}"))
}

fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The next message that is not a watchdog ping; panics after `timeout`.
fn next_state(sock: &UnixDatagram, timeout: Duration, c: &Compute) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no notification in {timeout:?}; log:\n{}", c.log_text());
        if let Some(m) = recv(sock, left)
            && m != "WATCHDOG=1"
        {
            return m;
        }
    }
}

/// Watchdog pings received in `window`, and every other message.
fn count_pings(sock: &UnixDatagram, window: Duration) -> (usize, Vec<String>) {
    let deadline = Instant::now() + window;
    let (mut pings, mut other) = (0, Vec::new());
    while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
        match recv(sock, left) {
            Some(m) if m == "WATCHDOG=1" => pings += 1,
            Some(m) => other.push(m),
            None => break,
        }
    }
    (pings, other)
}

/// Everything queued on the socket now.
fn drain(sock: &UnixDatagram) -> Vec<String> {
    sock.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    sock.set_nonblocking(false).unwrap();
    out
}

fn configure_body(spec: &Value) -> Value {
    json!({"spec": spec, "compute_ctl_config": {"jwks": {"keys": []}}})
}

fn code(port: u16, path: &str) -> u16 {
    http::get(port, path).status
}

/// Polls `path` until it answers `want` (readiness depends on a connection made within
/// 100 ms, which a busy machine may miss once).
fn wait_code(port: u16, path: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = http::get(port, path);
        if r.status == want {
            return;
        }
        assert!(Instant::now() < deadline, "{path} answers {} {}, not {want}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn systemd_hears_every_transition_and_no_watchdog_while_the_owner_is_stuck() {
    let mut s = Setup::new("notify");
    s.spec["cluster"]["roles"] =
        json!([{"name": "alice", "encrypted_password": "0123456789abcdef0123456789abcdef", "options": null}]);
    let (sock, name) = notify_socket("notify");
    // 200 ms: a ping every 100 ms while the owner turns.
    let env = [("NOTIFY_SOCKET", name.as_str()), ("WATCHDOG_USEC", "200000")];
    let mut c = spawn_with_env(&s.dir, &s.args(), s.http_port, &env);
    let t = Duration::from_secs(30);
    assert_eq!(next_state(&sock, t, &c), "STATUS=empty: waiting for a spec (POST /configure)");
    assert_eq!(next_state(&sock, t, &c), "STATUS=init: starting postgres");
    assert_eq!(next_state(&sock, t, &c), "READY=1\nSTATUS=running: postgres is up and configured");
    c.wait_running();
    let (pings, other) = count_pings(&sock, Duration::from_secs(1));
    assert!(pings >= 4, "{pings} watchdog pings in 1 s at a 100 ms pace");
    assert!(other.is_empty(), "{other:?}");

    // Stick the owner: a live configure that must change alice, whose row we hold locked.
    let mut holder = s.client();
    holder.batch_execute("BEGIN; ALTER ROLE alice CONNECTION LIMIT 5").unwrap();
    let mut spec = s.spec.clone();
    spec["cluster"]["roles"][0]["encrypted_password"] = json!("fedcba9876543210fedcba9876543210");
    let port = s.http_port;
    let configure = std::thread::spawn(move || http::post_json(port, "/configure", &configure_body(&spec)));
    let mut watcher = s.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'compute_ctl:apply_config' AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the apply never waited for the lock; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    // The owner is inside the apply: what it sent before is queued; from now on, nothing.
    let before: Vec<String> = drain(&sock).into_iter().filter(|m| m != "WATCHDOG=1").collect();
    assert_eq!(
        before,
        ["RELOADING=1\nSTATUS=configuration_pending: spec accepted", "STATUS=configuration: applying the spec"]
    );
    // Stuck but not for long: alive for /healthz, not ready, start-up long over.
    assert_eq!(code(s.http_port, "/healthz"), 200);
    assert_eq!(code(s.http_port, "/readyz"), 503);
    assert_eq!(code(s.http_port, "/startupz"), 200);
    let (pings, other) = count_pings(&sock, Duration::from_secs(1));
    assert_eq!((pings, other.len()), (0, 0), "a stuck owner fed the watchdog: {other:?}");

    holder.batch_execute("ROLLBACK").unwrap();
    let r = configure.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(next_state(&sock, t, &c), "READY=1\nSTATUS=running: postgres is up and configured");
    let (pings, _) = count_pings(&sock, Duration::from_secs(1));
    assert!(pings >= 4, "the watchdog did not resume: {pings} pings in 1 s");

    c.signal("TERM");
    assert_eq!(next_state(&sock, t, &c), "STOPPING=1\nSTATUS=termination_pending_fast: stopping postgres");
    assert_eq!(next_state(&sock, t, &c), "STATUS=terminated: postgres has stopped");
    c.wait_exit(Duration::from_secs(30));
    let log = c.log_text();
    assert!(log.contains("pre-stop checkpoint done in"), "{log}");
    // Postgres itself did not speak to systemd (it inherits no NOTIFY_SOCKET).
    assert!(drain(&sock).iter().all(|m| !m.contains("MAINPID")), "postgres notified systemd");
}

#[test]
fn probes_answer_in_every_state_without_the_token() {
    let s = Setup::new("probes");
    let token = s.dir.join("token");
    std::fs::write(&token, "probe-secret\n").unwrap();
    let mut args = s.base_args();
    args.extend(["--http-auth-token-file".into(), token.to_str().unwrap().into(), "--exit-delay".into(), "60".into()]);
    let mut c = Compute::spawn(&args, s.http_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http::request(s.http_port, "GET", "/healthz", &[], b"").is_err() {
        assert!(Instant::now() < deadline, "no HTTP server; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(10));
    }
    // empty: alive, started (waiting for a spec is where a pooled compute settles), not ready.
    assert_eq!(code(s.http_port, "/status"), 401, "other routes still need the token");
    assert_eq!(code(s.http_port, "/healthz"), 200);
    assert_eq!(code(s.http_port, "/startupz"), 200);
    assert_eq!(code(s.http_port, "/readyz"), 503);
    let auth = [("Authorization", "Bearer probe-secret"), ("Content-Type", "application/json")];
    let body = serde_json::to_vec(&configure_body(&s.spec)).unwrap();
    let r = http::request(s.http_port, "POST", "/configure", &auth, &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // running: ready once Postgres takes a connection within 100 ms.
    wait_code(s.http_port, "/readyz", 200);
    assert_eq!(code(s.http_port, "/startupz"), 200);
    assert_eq!(code(s.http_port, "/healthz"), 200);
    // The preStop hook: a fast termination through the API, with the token, waited for.
    let out = Command::new(BIN)
        .args(["--terminate", &s.http_port.to_string(), "--http-auth-token-file", token.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"lsn\""), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(c.log_text().contains("pre-stop checkpoint done in"));
    // terminated (lingering): alive, started, not ready.
    assert_eq!(code(s.http_port, "/readyz"), 503);
    assert_eq!(code(s.http_port, "/startupz"), 200);
    assert_eq!(code(s.http_port, "/healthz"), 200);
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(30));

    // failed start: /startupz says so with the error.
    let mut f = Setup::new("probes-failed");
    f.setting("shared_buffers", "lots", "string");
    let mut args = f.args();
    args.extend(["--exit-delay".into(), "60".into()]);
    let mut c = Compute::spawn(&args, f.http_port);
    c.wait_status("failed", Duration::from_secs(30));
    let r = http::get(f.http_port, "/startupz");
    assert_eq!(r.status, 500);
    assert!(r.text().contains("start failed"), "{}", r.text());
    assert_eq!(code(f.http_port, "/readyz"), 503);
    assert_eq!(code(f.http_port, "/healthz"), 200);
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(30));
}

#[test]
fn a_restart_only_setting_changed_live_waits_for_post_restart() {
    let s = Setup::new("restart");
    let mut c = s.spawn();
    c.wait_running();
    let show = |name: &str| -> String { s.client().query_one(&format!("SHOW {name}"), &[]).unwrap().get(0) };
    assert_eq!(show("max_connections"), "30");
    let pid_before = support::postmaster_pid(&s.pgdata).unwrap();

    let mut spec = s.spec.clone();
    let settings = spec["cluster"]["settings"].as_array_mut().unwrap();
    settings.retain(|x| x["name"] != "max_connections");
    settings.push(json!({"name": "max_connections", "value": "40", "vartype": "integer"}));
    settings.push(json!({"name": "work_mem", "value": "8MB", "vartype": "string"}));
    let r = http::post_json(s.http_port, "/configure", &configure_body(&spec));
    assert_eq!(r.status, 200, "{}", r.text());
    // Listed, not dropped and not half-applied: the reloadable one took effect, the other waits.
    assert_eq!(r.json()["pending_restart"], json!(["max_connections"]));
    assert_eq!(http::get(s.http_port, "/status").json()["pending_restart"], json!(["max_connections"]));
    let metrics = http::get(s.http_port, "/metrics").text();
    assert!(metrics.contains("compute_ctl_pending_restart{setting=\"max_connections\"} 1"), "{metrics}");
    assert!(metrics.contains("compute_ctl_pending_restart_settings 1"), "{metrics}");
    assert!(c.log_text().contains("take effect only after a restart (POST /restart): max_connections"));
    assert_eq!(show("max_connections"), "30");
    assert_eq!(show("work_mem"), "8MB");

    let r = http::request(s.http_port, "POST", "/restart", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.text(), c.log_text());
    assert_eq!(r.json()["status"], "running");
    assert_eq!(r.json()["pending_restart"], json!([]));
    assert_eq!(show("max_connections"), "40");
    assert_ne!(support::postmaster_pid(&s.pgdata).unwrap(), pid_before, "postgres was not restarted");
    assert!(!support::pid_alive(pid_before));
    let metrics = http::get(s.http_port, "/metrics").text();
    assert!(metrics.contains("compute_ctl_pending_restart_settings 0"), "{metrics}");
    // The old postmaster's exit did not end the compute: the next request still finds it.
    let r = http::post_json(s.http_port, "/configure", &configure_body(&spec));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), c.log_text());
    assert!(c.log_text().contains("pre-stop checkpoint done in"));
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(30));
}
