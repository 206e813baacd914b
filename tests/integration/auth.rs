//! Authorization as today's Neon does it: JWTs signed here with a key pair made here, checked
//! against the `compute_ctl_config.jwks` the control plane sends at start; the static token
//! file beside it; refusals decided from the request head; nothing in the log.

use crate::support::http::{self, StandIn};
use crate::support::{self, Compute, Setup};
use compute_ctl::auth::base64url;
use ed25519_compact::{KeyPair, Seed};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const COMPUTE_ID: &str = "compute-auth-7";

fn key_pair(seed: u8) -> KeyPair {
    KeyPair::from_seed(Seed::new([seed; 32]))
}

/// `header.payload.signature`, signed with `kp`.
fn sign(header: &Value, claims: &Value, kp: &KeyPair) -> String {
    let signed = format!(
        "{}.{}",
        base64url::encode(header.to_string().as_bytes()),
        base64url::encode(claims.to_string().as_bytes())
    );
    let sig = kp.sk.sign(signed.as_bytes(), None);
    format!("{signed}.{}", base64url::encode(sig.as_ref()))
}

fn eddsa(claims: Value) -> String {
    sign(&json!({"alg": "EdDSA", "typ": "JWT"}), &claims, &key_pair(1))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The control plane's `compute_ctl_config`: the test key, plus two that cannot be used.
fn jwks() -> Value {
    let x = base64url::encode(key_pair(1).pk.as_ref());
    json!({"jwks": {"keys": [
        {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "databricks-rsa", "n": "sXch", "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "hex-not-bytes",
         "x": "MGQ4ZDFhOTdmNTM0NmUwMDc3ZmJkN2Q0MWE0ZmI3M2NhNWE3YjFjOTNkM2IyYzRkZTQzOGM3MjBkZTk3N2E5ZAo="},
        {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "key_ops": ["verify"], "kid": "test-key", "x": x}
    ]}})
}

/// A compute in `empty` whose control plane sent the test keys; returns it once its public
/// `/metrics` answers.
fn start_with_keys(s: &Setup, extra: &[&str]) -> (Compute, StandIn) {
    start_with_keys_env(s, extra, &[])
}

fn start_with_keys_env(s: &Setup, extra: &[&str], env: &[(&str, &str)]) -> (Compute, StandIn) {
    let body = json!({"status": "empty", "spec": null, "compute_ctl_config": jwks()}).to_string();
    let cp = StandIn::start(vec![(200, body)]);
    let mut args = s.base_args();
    args.extend(["-p".into(), cp.uri(), "-i".into(), COMPUTE_ID.into()]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut c = http::spawn_with_env(&args, s.http_port, env, s.dir.join("compute.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while http::request(s.http_port, "GET", "/metrics", &[], b"").map(|r| r.status).ok() != Some(200) {
        assert!(c.try_wait().is_none(), "compute_ctl exited: {}", c.log_text());
        assert!(Instant::now() < deadline, "no /metrics; log:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    (c, cp)
}

fn with_auth(port: u16, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> http::Response {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    http::request(port, method, path, &headers, body).unwrap()
}

fn probe(port: u16) -> Option<i32> {
    let out = std::process::Command::new(support::BIN).args(["--probe", &port.to_string()]).output().unwrap();
    out.status.code()
}

fn status_with(port: u16, token: &str) -> Value {
    let r = with_auth(port, "GET", "/status", Some(&format!("Bearer {token}")), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn each_bad_token_gets_neons_code_and_a_refused_configure_applies_nothing() {
    let s = Setup::empty("auth-jwt");
    let (mut c, _cp) = start_with_keys(&s, &[]);
    let valid = eddsa(json!({"compute_id": COMPUTE_ID, "exp": now() + 600}));
    let admin = eddsa(json!({"scope": "compute_ctl:admin", "aud": ["compute"]}));
    let claims = json!({"compute_id": COMPUTE_ID});
    let unsigned =
        format!("{}.{}", base64url::encode(br#"{"alg":"none"}"#), base64url::encode(claims.to_string().as_bytes()));
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("missing header", None, 400, "invalid authorization token"),
        ("another scheme", Some("Basic Y2xvdWRfYWRtaW46eA==".into()), 400, "invalid authorization token"),
        (
            "malformed base64",
            Some(format!("Bearer {}", valid.replacen('.', ".*", 1))),
            401,
            "failed to verify authorization token",
        ),
        ("alg none", Some(format!("Bearer {unsigned}.")), 401, "failed to verify authorization token"),
        (
            "alg HS256",
            Some(format!("Bearer {}", sign(&json!({"alg": "HS256"}), &claims, &key_pair(1)))),
            401,
            "failed to verify authorization token",
        ),
        (
            "another key",
            Some(format!("Bearer {}", sign(&json!({"alg": "EdDSA"}), &claims, &key_pair(2)))),
            401,
            "failed to verify authorization token",
        ),
        (
            "expired",
            Some(format!("Bearer {}", eddsa(json!({"compute_id": COMPUTE_ID, "exp": now() - 120})))),
            401,
            "failed to verify authorization token",
        ),
        (
            "admin without aud",
            Some(format!("Bearer {}", eddsa(json!({"scope": "compute_ctl:admin"})))),
            401,
            "missing audience in authorization token claims",
        ),
        (
            "admin, other aud",
            Some(format!("Bearer {}", eddsa(json!({"scope": "compute_ctl:admin", "aud": ["pageserver"]})))),
            401,
            "invalid audience in authorization token claims",
        ),
        (
            "no compute_id",
            Some(format!("Bearer {}", eddsa(json!({"exp": now() + 600})))),
            403,
            "missing compute_id in authorization token claims",
        ),
        (
            "another compute",
            Some(format!("Bearer {}", eddsa(json!({"compute_id": "compute-other"})))),
            403,
            "invalid compute ID in authorization token claims",
        ),
    ];
    let configure = serde_json::to_vec(&json!({"spec": s.spec, "compute_ctl_config": {}})).unwrap();
    for (what, auth, code, message) in &cases {
        for (method, path, body) in [("GET", "/status", &b""[..]), ("POST", "/configure", &configure[..])] {
            let r = with_auth(s.http_port, method, path, auth.as_deref(), body);
            assert_eq!(r.status, *code, "{what}: {method} {path}: {}", r.text());
            assert_eq!(r.json()["error"], *message, "{what}");
        }
        // Nothing changed: still waiting, no PGDATA, no Postgres.
        assert_eq!(status_with(s.http_port, &valid)["status"], "empty", "{what}");
        assert!(!s.pgdata.exists(), "{what}: a refused /configure touched PGDATA");
    }
    // The scheme in any case; the admin scope with its audience; public and unknown routes.
    assert_eq!(status_with(s.http_port, &admin)["status"], "empty");
    let r = with_auth(s.http_port, "GET", "/status", Some(&format!("bEARer {valid}")), b"");
    assert_eq!(r.status, 200);
    assert_eq!(with_auth(s.http_port, "GET", "/metrics", None, b"").status, 200);
    // The Kubernetes probes need no token either (the kubelet cannot send one); they answer
    // for the state (`empty`: alive, start-up over, not ready), while /restart stays guarded.
    assert_eq!(with_auth(s.http_port, "GET", "/healthz", None, b"").status, 200);
    assert_eq!(with_auth(s.http_port, "GET", "/startupz", None, b"").status, 200);
    let r = with_auth(s.http_port, "GET", "/readyz", None, b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("empty"), "{}", r.text());
    assert_eq!(with_auth(s.http_port, "POST", "/restart", None, b"").status, 400);
    assert_eq!(with_auth(s.http_port, "GET", "/no_such_route", None, b"").status, 404);
    assert_eq!(with_auth(s.http_port, "GET", "/metrics.json", None, b"").status, 400);

    // The Docker health check needs no token: it reads the public /metrics.
    assert_eq!(probe(s.http_port), Some(1), "empty is not healthy");
    let r = with_auth(s.http_port, "POST", "/configure", Some(&format!("Bearer {valid}")), &configure);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "running");
    assert_eq!(probe(s.http_port), Some(0));
    assert_eq!(with_auth(s.http_port, "GET", "/readyz", None, b"").status, 200, "running and accepting");
    let r = with_auth(s.http_port, "POST", "/terminate", Some(&format!("Bearer {admin}")), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    c.wait_exit(Duration::from_secs(30));

    let log = c.log_text();
    assert!(log.contains("\"databricks-rsa\" skipped") && log.contains("\"hex-not-bytes\" skipped"), "{log}");
    for (_, auth, _, _) in &cases {
        if let Some(a) = auth {
            let credentials = a.split_once(' ').unwrap().1;
            assert!(!log.contains(credentials), "a token reached the log:\n{log}");
        }
    }
    for t in [&valid, &admin] {
        for part in t.split('.') {
            assert!(!log.contains(part), "part of a token reached the log:\n{log}");
        }
    }
}

/// Sends only the head of a 50 MB upload and reads the answer: it must come without a byte of
/// the body, and the connection must be closed after it.
fn refused_before_the_body(port: u16, auth: &str, length: usize) -> (http::Response, Duration) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let head = format!(
        "POST /configure HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let r = http::read_response(&mut s).unwrap();
    let took = started.elapsed();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing follows the answer");
    (r, took)
}

#[test]
fn an_unauthorized_upload_is_answered_before_its_body() {
    let s = Setup::empty("auth-head");
    let token_file = s.dir.join("token");
    std::fs::write(&token_file, "static-tok-1\n").unwrap();
    crate::support::set_mode(&token_file, 0o600);
    let (mut c, _cp) = start_with_keys(&s, &["--http-auth-token-file", token_file.to_str().unwrap()]);
    let (r, took) = refused_before_the_body(s.http_port, "Bearer not.a.jwt", 50_000_000);
    assert_eq!((r.status, r.header("connection")), (401, Some("close")));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Over the 64 MiB body limit: still the 401, the authorization comes first.
    let (r, _) = refused_before_the_body(s.http_port, "Bearer not.a.jwt", 1 << 40);
    assert_eq!(r.status, 401);
    // The static token is an alternative to a JWT, its scheme in any case.
    assert_eq!(with_auth(s.http_port, "GET", "/status", Some("BEARER static-tok-1"), b"").status, 200);
    assert_eq!(with_auth(s.http_port, "GET", "/status", Some("Bearer static-tok-2"), b"").status, 401);
    assert!(!c.log_text().contains("can be read by group or others"), "{}", c.log_text());
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(20));
    assert!(!c.log_text().contains("static-tok"), "the token reached the log");
}

#[test]
fn instance_id_does_not_turn_authorization_off() {
    let s = Setup::empty("auth-instance");
    let (mut c, _cp) = start_with_keys_env(&s, &[], &[("INSTANCE_ID", "hadron-1")]);
    assert_eq!(with_auth(s.http_port, "GET", "/status", None, b"").status, 400);
    assert_eq!(with_auth(s.http_port, "POST", "/terminate", Some("Bearer x.y.z"), b"").status, 401);
    assert!(c.log_text().contains("INSTANCE_ID is set"), "{}", c.log_text());
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(20));
}

#[test]
fn without_keys_or_token_the_api_listens_on_loopback_and_says_so() {
    let s = Setup::empty("auth-open");
    let args: Vec<String> = s.base_args().into_iter().filter(|a| a != "--http-bind" && a != "127.0.0.1").collect();
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_status("empty", Duration::from_secs(20));
    let log = c.log_text();
    assert!(log.contains(&format!("external HTTP server listening on 127.0.0.1:{}", s.http_port)), "{log}");
    assert!(log.contains(&format!("internal HTTP server listening on 127.0.0.1:{}", s.http_port + 1)), "{log}");
    assert!(log.contains("the external HTTP API is unauthenticated"), "{log}");
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(20));
}

/// A preStop hook cannot sign a JWT: `compute_ctl --terminate` asks the internal API on
/// loopback, which takes no JWT, while the external API still refuses the unsigned request.
#[test]
fn the_pre_stop_hook_terminates_through_the_internal_api_when_jwt_keys_are_configured() {
    let s = Setup::new("auth-prestop");
    let (mut c, _cp) = start_with_keys(&s, &[]);
    let valid = eddsa(json!({"compute_id": COMPUTE_ID, "exp": now() + 600}));
    let configure = serde_json::to_vec(&json!({"spec": s.spec, "compute_ctl_config": {}})).unwrap();
    let r = with_auth(s.http_port, "POST", "/configure", Some(&format!("Bearer {valid}")), &configure);
    assert_eq!(r.status, 200, "{}", r.text());
    let hook = |port: u16| {
        let out = std::process::Command::new(support::BIN).args(["--terminate", &port.to_string()]).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = hook(s.http_port);
    assert!(!ok && text.contains("400"), "the external API wants a JWT: {text}");
    assert_eq!(status_with(s.http_port, &valid)["status"], "running", "the refused hook stopped nothing");
    let (ok, text) = hook(s.http_port + 1);
    assert!(ok && text.contains("\"lsn\""), "{text}\n{}", c.log_text());
    c.wait_exit(Duration::from_secs(30));
    let log = c.log_text();
    assert!(log.contains("pre-stop checkpoint done") && log.contains("POST /terminate -> 200"), "{log}");
}

#[test]
fn a_token_file_others_can_read_gives_a_warning() {
    let s = Setup::empty("auth-mode");
    let token_file = s.dir.join("token");
    std::fs::write(&token_file, "tok-mode-9\n").unwrap();
    crate::support::set_mode(&token_file, 0o644);
    let mut args = s.base_args();
    args.extend(["--http-auth-token-file".into(), token_file.to_str().unwrap().into()]);
    let mut c = Compute::spawn(&args, s.http_port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.log_text().contains("listening on") {
        assert!(Instant::now() < deadline, "{}", c.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.log_text().contains("can be read by group or others (mode 644)"), "{}", c.log_text());
    c.signal("TERM");
    c.wait_exit(Duration::from_secs(20));
}

fn refused_for_its_password(r: Result<postgres::Client, postgres::Error>, who: &str) {
    let e = r.err().unwrap_or_else(|| panic!("{who} got in"));
    let code = e.code().map(|c| c.code().to_string());
    assert_eq!(code.as_deref(), Some("28P01"), "{who}: {e}");
}

#[test]
fn local_mode_roles_log_in_with_their_password_and_old_trust_lines_are_fixed_once() {
    let s = Setup::new("auth-hba");
    // The template was made by `initdb --auth=trust`, as earlier versions made every PGDATA.
    let hba = s.pgdata.join("pg_hba.conf");
    let mine = "host    all    all    192.0.2.1/32    trust   # added by hand";
    let before = std::fs::read_to_string(&hba).unwrap();
    assert!(before.contains("127.0.0.1/32            trust"), "{before}");
    std::fs::write(&hba, format!("{before}{mine}\n")).unwrap();

    let mut c = s.spawn();
    c.wait_running();
    let mut su = s.client();
    su.batch_execute("CREATE ROLE alice LOGIN PASSWORD 'right-pw'; CREATE ROLE bob LOGIN").unwrap();
    let port = s.pg_port;
    refused_for_its_password(support::pg_connect_with_password(port, "alice", "wrong-pw"), "alice, wrong password");
    support::pg_connect_with_password(port, "alice", "right-pw").unwrap().batch_execute("SELECT 1").unwrap();
    refused_for_its_password(support::pg_connect_with_password(port, "bob", ""), "bob, no password");
    refused_for_its_password(support::pg_connect_with_password(port, "bob", "anything"), "bob, no password set");
    let fixed = std::fs::read_to_string(&hba).unwrap();
    assert!(fixed.contains(&format!("\n{mine}\n")), "a hand-made line changed:\n{fixed}");
    assert!(fixed.contains("host\tall\t\"cloud_admin\"\t127.0.0.1/32\ttrust"), "{fixed}");
    let fix_line = "trust line(s) for every role now trust only";
    assert_eq!(c.log_text().matches(fix_line).count(), 1, "{}", c.log_text());
    assert_eq!(http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap().status, 200);
    c.wait_exit(Duration::from_secs(30));

    // The next start finds nothing to fix and changes nothing.
    let mut c = s.spawn();
    c.wait_running();
    assert_eq!(std::fs::read_to_string(&hba).unwrap(), fixed);
    assert!(!c.log_text().contains(fix_line), "{}", c.log_text());
    support::pg_connect_with_password(port, "alice", "right-pw").unwrap().batch_execute("SELECT 1").unwrap();
    refused_for_its_password(support::pg_connect_with_password(port, "alice", "right-pw2"), "alice after restart");
    s.client().batch_execute("SELECT 1").unwrap();
}
