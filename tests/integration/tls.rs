//! TLS for Postgres (issue 13, reference 2026 §10.1): `compute_ctl_config.tls` with the
//! feature `tls_experimental`, on a real Postgres. Keys and certificates are made here with
//! the `openssl` command; clients are `psql` (the `postgres` crate here has no TLS) and
//! `openssl s_client -starttls postgres`, which shows the certificate the server sends.

use crate::support::{self, Compute, Setup, http};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `openssl` command is needed to make keys; a machine without it skips these tests.
fn have_openssl(test: &str) -> bool {
    let ok = Command::new("openssl").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !ok {
        support::skipped(&format!("{test}: no openssl command to make keys with"));
    }
    ok
}

/// Whether the Postgres under test was built with OpenSSL (the PyPI builds of 16 and 18 used
/// for the version matrix were not: `ssl = on` stops them with "SSL is not supported by this
/// build"); the tests that need Postgres to serve TLS skip otherwise.
fn postgres_has_ssl(test: &str) -> bool {
    let ok = built_with_ssl();
    if !ok {
        support::skipped(&format!("{test}: this Postgres was built without SSL"));
    }
    ok
}

fn built_with_ssl() -> bool {
    let out = Command::new(format!("{}/pg_config", support::pg_bin_dir())).arg("--configure").output();
    let configure = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    configure.contains("--with-openssl") || configure.contains("--with-ssl=openssl")
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A key and a self-signed certificate for it.
struct Pair {
    key: PathBuf,
    cert: PathBuf,
}

/// An ECDSA P-256 key (SEC1 PEM, as Neon wants it) and a certificate signed with SHA-256.
fn ec_pair(dir: &Path, name: &str) -> Pair {
    let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
    openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key.to_str().unwrap()]);
    let subj = format!("/CN={name}");
    openssl(
        &["req", "-new", "-x509", "-sha256", "-days", "2", "-subj", &subj, "-key", key.to_str().unwrap(), "-out"]
            .into_iter()
            .chain([cert.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    Pair { key, cert }
}

/// An RSA key (PKCS#8 PEM, which Neon cannot use) and its certificate.
fn rsa_pair(dir: &Path, name: &str) -> Pair {
    let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
    let subj = format!("/CN={name}");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &subj,
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    Pair { key, cert }
}

/// Writes the `-c` file with `tls` in `compute_ctl_config`, and returns the arguments.
fn config_args(s: &Setup, spec: &Value, key: &Path, cert: &Path) -> Vec<String> {
    let path = s.dir.join("config.json");
    let tls = json!({"key_path": key, "cert_path": cert});
    let config = json!({"spec": spec, "compute_ctl_config": {"jwks": {"keys": []}, "tls": tls}});
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let mut a = s.base_args();
    a.extend(["-c".into(), path.to_str().unwrap().into()]);
    a
}

fn tls_spec(s: &Setup) -> Value {
    let mut spec = s.spec.clone();
    spec["features"] = json!(["tls_experimental"]);
    spec
}

/// Replaces `dst` by a copy of `src` with a rename, as a certificate provisioner would.
fn replace(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("new");
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// `psql` over TCP with `sslmode=require`: whether this session is encrypted.
fn psql_ssl(port: u16) -> Result<String, String> {
    let psql = format!("{}/psql", support::pg_bin_dir());
    let conn = format!("host=127.0.0.1 port={port} user={} dbname=postgres sslmode=require", support::SUPERUSER);
    let out = Command::new(psql)
        .args([&conn, "-XAtc", "SELECT ssl, version FROM pg_catalog.pg_stat_ssl WHERE pid = pg_backend_pid()"])
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The certificate the server sends, as PEM (`openssl s_client -starttls postgres`).
fn served_cert(port: u16) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-starttls", "postgres", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----");
    let end = text.find("-----END CERTIFICATE-----");
    match (begin, end) {
        (Some(b), Some(e)) => text[b..e + "-----END CERTIFICATE-----".len()].to_string(),
        _ => String::new(),
    }
}

fn pem(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

fn show(port: u16, name: &str) -> String {
    support::pg_client(port, "postgres").query_one(&format!("SHOW {name}"), &[]).unwrap().get(0)
}

fn count(text: &str, what: &str) -> usize {
    text.matches(what).count()
}

const PENDING: &str = "compute status: configuration_pending";

/// Polls until the log holds `n` reconfigurations asked for and the compute is running again.
fn wait_reconfigured(c: &mut Compute, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = c.log_text();
        if count(&log, PENDING) >= n && c.status().is_some_and(|s| s["status"] == "running") {
            // The log line of the transition back comes after the pending one.
            let after = log.rsplit(PENDING).next().unwrap_or("");
            if after.contains("compute status: running") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no reconfiguration #{n} in 30 s; log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_private(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600, "{} mode", path.display());
    if support::is_root() {
        let (u, g) = support::postgres_ids();
        assert_eq!((m.uid(), m.gid()), (u, g), "{} owner", path.display());
    }
}

/// With the feature: the ssl lines, the files in PGDATA (0600, the Postgres user's), a
/// client with `sslmode=require` gets TLS with this certificate. The watcher reconfigures
/// once on `running` and again when the certificate is replaced, and the new one is served;
/// a replacement Postgres refuses fails the reconfiguration with its reason while the
/// previous certificate stays served and in PGDATA.
#[test]
fn tls_ecdsa_served_and_renewed_certificate_taken() {
    if !have_openssl("tls_ecdsa_served_and_renewed_certificate_taken")
        || !postgres_has_ssl("tls_ecdsa_served_and_renewed_certificate_taken")
    {
        return;
    }
    let s = Setup::new("tls-ec");
    let certs = s.dir.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let (a, b, c) = (ec_pair(&certs, "a"), ec_pair(&certs, "b"), ec_pair(&certs, "c"));
    let (key, cert) = (certs.join("tls.key"), certs.join("tls.crt"));
    replace(&a.key, &key);
    replace(&a.cert, &cert);
    let args = config_args(&s, &tls_spec(&s), &key, &cert);
    let mut cc = Compute::spawn_env(&args, s.http_port, &[("COMPUTE_CTL_TLS_POLL_MS", "100")]);
    cc.wait_running();

    let conf = std::fs::read_to_string(s.pgdata.join("postgresql.conf")).unwrap();
    assert!(
        conf.contains("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nlc_messages="),
        "{conf}"
    );
    assert_private(&s.pgdata.join("server.key"));
    assert_private(&s.pgdata.join("server.crt"));
    assert_eq!(show(s.pg_port, "ssl"), "on");
    let got = psql_ssl(s.pg_port).unwrap_or_else(|e| panic!("psql sslmode=require: {e}"));
    assert!(got.starts_with("t|TLSv1."), "{got}");
    assert_eq!(served_cert(s.pg_port), pem(&a.cert));

    // Once on the first `running`, as Neon.
    wait_reconfigured(&mut cc, 1);

    // A renewed pair: the key first, then the certificate the watcher reads.
    replace(&b.key, &key);
    replace(&b.cert, &cert);
    let deadline = Instant::now() + Duration::from_secs(30);
    while served_cert(s.pg_port) != pem(&b.cert) {
        assert!(Instant::now() < deadline, "new certificate not served in 30 s; log:\n{}", cc.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_reconfigured(&mut cc, 2);
    assert_eq!(std::fs::read(s.pgdata.join("server.crt")).unwrap(), std::fs::read(&b.cert).unwrap());
    assert_private(&s.pgdata.join("server.key"));

    // A certificate that does not belong to the key: Postgres keeps serving b and says why.
    replace(&c.cert, &cert);
    let status = cc.wait_status("failed", Duration::from_secs(30));
    let error = status["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.starts_with("postgres did not load the new TLS key or certificate of compute_ctl_config.tls"),
        "{error}"
    );
    assert!(error.contains("could not load private key file \"server.key\": key values mismatch"), "{error}");
    assert_eq!(served_cert(s.pg_port), pem(&b.cert));
    assert_eq!(std::fs::read(s.pgdata.join("server.crt")).unwrap(), std::fs::read(&b.cert).unwrap());
    assert!(psql_ssl(s.pg_port).is_ok_and(|r| r.starts_with("t|")));

    cc.signal("TERM");
    cc.wait_exit(Duration::from_secs(30));
}

/// An RSA certificate with a PKCS#8 key, which Neon cannot use, works when Postgres takes it.
#[test]
fn tls_rsa_pkcs8_key_works() {
    if !have_openssl("tls_rsa_pkcs8_key_works") || !postgres_has_ssl("tls_rsa_pkcs8_key_works") {
        return;
    }
    let s = Setup::new("tls-rsa");
    let pair = rsa_pair(&s.dir.path, "rsa");
    assert!(std::fs::read_to_string(&pair.key).unwrap().contains("BEGIN PRIVATE KEY"), "a PKCS#8 key");
    let args = config_args(&s, &tls_spec(&s), &pair.key, &pair.cert);
    let mut cc = Compute::spawn(&args, s.http_port);
    cc.wait_running();
    let got = psql_ssl(s.pg_port).unwrap_or_else(|e| panic!("psql sslmode=require: {e}"));
    assert!(got.starts_with("t|"), "{got}");
    assert_eq!(served_cert(s.pg_port), pem(&pair.cert));
    let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    cc.wait_exit(Duration::from_secs(30));
}

/// Without the feature, `compute_ctl_config.tls` does not turn TLS on: no ssl lines, no
/// files copied, `sslmode=require` refused.
#[test]
fn tls_without_feature_stays_off() {
    if !have_openssl("tls_without_feature_stays_off") {
        return;
    }
    let s = Setup::new("tls-off");
    let pair = ec_pair(&s.dir.path, "off");
    let args = config_args(&s, &s.spec, &pair.key, &pair.cert);
    let mut cc = Compute::spawn(&args, s.http_port);
    cc.wait_running();
    let conf = std::fs::read_to_string(s.pgdata.join("postgresql.conf")).unwrap();
    assert!(!conf.contains("ssl"), "{conf}");
    assert!(!s.pgdata.join("server.key").exists() && !s.pgdata.join("server.crt").exists());
    assert_eq!(show(s.pg_port, "ssl"), "off");
    assert_eq!(served_cert(s.pg_port), "", "no certificate served");
    if built_with_ssl() {
        let err = psql_ssl(s.pg_port).unwrap_err();
        assert!(err.contains("server does not support SSL"), "{err}");
    }
    let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    cc.wait_exit(Duration::from_secs(30));
}

/// A key that does not match the certificate: Postgres refuses to start, its reason is in
/// the error, no Postgres is left, PGDATA is intact.
#[test]
fn tls_mismatched_pair_fails_start_with_postgres_reason() {
    if !have_openssl("tls_mismatched_pair_fails_start_with_postgres_reason")
        || !postgres_has_ssl("tls_mismatched_pair_fails_start_with_postgres_reason")
    {
        return;
    }
    let s = Setup::new("tls-mismatch");
    let (a, b) = (ec_pair(&s.dir.path, "a"), ec_pair(&s.dir.path, "b"));
    let args = config_args(&s, &tls_spec(&s), &a.key, &b.cert);
    let mut cc = Compute::spawn(&args, s.http_port);
    let st = cc.wait_exit(Duration::from_secs(60));
    assert_eq!(st.code(), Some(1));
    let log = cc.log_text();
    // The error quotes Postgres's own line.
    let error = log.split("compute failed: ").nth(1).unwrap_or_else(|| panic!("{log}"));
    assert!(error.starts_with("postgres did not start: exited with code 1"), "{log}");
    assert!(error.contains("FATAL:  could not load private key file \"server.key\": key values mismatch"), "{log}");
    if let Some(pid) = support::postmaster_pid(&s.pgdata) {
        assert!(!support::pid_alive(pid), "postgres {pid} left running");
    }
    assert!(s.pgdata.join("PG_VERSION").exists() && s.pgdata.join("global/pg_control").exists());
    assert_eq!(support::cluster_state(&s.pgdata), "shut down");
}

/// A certificate file that never appears fails the start after the (shortened) wait, naming
/// the file, before Postgres or PGDATA is touched; a missing key file is named too.
#[test]
fn tls_missing_files_fail_start_naming_them() {
    if !have_openssl("tls_missing_files_fail_start_naming_them") {
        return;
    }
    let s = Setup::new("tls-missing");
    let pair = ec_pair(&s.dir.path, "m");
    let before = support::tree_snapshot(&s.pgdata);
    let missing_cert = s.dir.join("nowhere/server.crt");
    let args = config_args(&s, &tls_spec(&s), &pair.key, &missing_cert);
    let mut cc = Compute::spawn_env(&args, s.http_port, &[("COMPUTE_CTL_TLS_CERT_WAIT_SECS", "1")]);
    assert_eq!(cc.wait_exit(Duration::from_secs(30)).code(), Some(1));
    let log = cc.log_text();
    let want = format!("compute_ctl_config.tls.cert_path: not readable after 1 s: {}", missing_cert.display());
    assert!(log.contains(&want), "{log}");
    assert_eq!(support::tree_snapshot(&s.pgdata), before, "PGDATA untouched");

    let missing_key = s.dir.join("nowhere/server.key");
    let args = config_args(&s, &tls_spec(&s), &missing_key, &pair.cert);
    let mut cc = Compute::spawn(&args, s.http_port);
    assert_eq!(cc.wait_exit(Duration::from_secs(30)).code(), Some(1));
    let log = cc.log_text();
    let want = format!("compute_ctl_config.tls.key_path: cannot read {}", missing_key.display());
    assert!(log.contains(&want), "{log}");
    assert_eq!(support::tree_snapshot(&s.pgdata), before, "PGDATA untouched");
}

/// TLS settings are fixed at start: the `compute_ctl_config.tls` of a `/configure` body is
/// ignored, as in Neon, even with the feature in the spec.
#[test]
fn tls_in_a_configure_body_is_ignored() {
    if !have_openssl("tls_in_a_configure_body_is_ignored") {
        return;
    }
    let s = Setup::new("tls-configure");
    let pair = ec_pair(&s.dir.path, "cfg");
    let path = s.dir.join("config.json");
    let config = json!({"spec": null, "compute_ctl_config": {"jwks": {"keys": []}}});
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let mut args = s.base_args();
    args.extend(["-c".into(), path.to_str().unwrap().into()]);
    let mut cc = Compute::spawn(&args, s.http_port);
    cc.wait_status("empty", Duration::from_secs(30));
    let tls = json!({"key_path": pair.key, "cert_path": pair.cert});
    let body = json!({"spec": tls_spec(&s), "compute_ctl_config": {"jwks": {"keys": []}, "tls": tls}});
    let r = http::post_json(s.http_port, "/configure", &body);
    assert_eq!(r.status, 200, "{}", cc.log_text());
    cc.wait_running();
    let conf = std::fs::read_to_string(s.pgdata.join("postgresql.conf")).unwrap();
    assert!(!conf.contains("ssl"), "{conf}");
    assert!(!s.pgdata.join("server.key").exists());
    assert_eq!(show(s.pg_port, "ssl"), "off");
    let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    cc.wait_exit(Duration::from_secs(30));
}
