//! Remote extensions (reference 5.9): one download per archive however many requests ask for
//! it at once, the outcome (success or failure) handed to every request that waited, and the
//! start-up preload of `shared_preload_libraries`, against a stand-in extension storage and a
//! real Postgres.

use crate::support::http;
use crate::support::{self, Compute, Setup};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A file server standing in for the extension storage: answers a GET for a known path with
/// its bytes, anything else with 404, and records the paths asked for. Paths in `fail_first`
/// are answered 500 the first time. While held, it records each request and then waits for
/// [`FileServer::release`] before answering (one connection at a time, so a second download
/// queues behind the first and is still counted).
pub struct FileServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<String>>>,
    gate: Arc<(Mutex<bool>, Condvar)>,
}

impl FileServer {
    pub fn start(files: Vec<(String, Vec<u8>)>) -> FileServer {
        FileServer::start_with(files, Vec::new(), false)
    }

    pub fn start_with(files: Vec<(String, Vec<u8>)>, mut fail_first: Vec<String>, held: bool) -> FileServer {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(!held), Condvar::new()));
        let (log, open) = (seen.clone(), gate.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                log.lock().unwrap().push(path.clone());
                // Bounded: a test that never releases still ends (with a wrong answer).
                let (lock, cv) = &*open;
                let _ = cv.wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(60), |open| !*open).unwrap();
                let (status, body) = if let Some(i) = fail_first.iter().position(|p| *p == path) {
                    fail_first.remove(i);
                    ("500 Internal Server Error", Vec::new())
                } else {
                    match files.iter().find(|(p, _)| *p == path) {
                        Some((_, b)) => ("200 OK", b.clone()),
                        None => ("404 Not Found", Vec::new()),
                    }
                };
                let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&body);
            }
        });
        FileServer { port, seen, gate }
    }

    /// Lets the held requests (and all later ones) be answered.
    pub fn release(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }

    /// How many requests asked for `path`.
    pub fn count(&self, path: &str) -> usize {
        self.seen.lock().unwrap().iter().filter(|p| *p == path).count()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/base/", self.port)
    }
}

/// Removes what a test installed into the system's Postgres directories.
pub struct Installed(pub Vec<PathBuf>);

impl Drop for Installed {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `tar -c <top> | zstd` of the tree under `dir/src-NAME`, whose files `fill` writes.
fn archive_of(dir: &Path, name: &str, top: &str, fill: impl FnOnce(&Path)) -> Vec<u8> {
    let src = dir.join(format!("src-{name}"));
    fill(&src);
    let tar = dir.join(format!("{name}.tar"));
    let st = std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&src).arg(top).status().unwrap();
    assert!(st.success());
    let out = std::process::Command::new("zstd").args(["-q", "-c"]).arg(&tar).output().expect("the zstd tool");
    assert!(out.status.success());
    out.stdout
}

/// A `.tar.zst` of a SQL-only extension `name` (control file and script), made with the
/// `zstd` command-line tool.
pub fn extension_archive(dir: &Path, name: &str) -> Vec<u8> {
    archive_of(dir, name, "share", |src| {
        let ext = src.join("share/extension");
        std::fs::create_dir_all(&ext).unwrap();
        std::fs::write(
            ext.join(format!("{name}.control")),
            "comment = 'test'\ndefault_version = '1.0'\nrelocatable = true\ntrusted = true\n",
        )
        .unwrap();
        std::fs::write(
            ext.join(format!("{name}--1.0.sql")),
            format!("CREATE FUNCTION {name}_answer() RETURNS int LANGUAGE sql AS 'SELECT 42';\n"),
        )
        .unwrap();
    })
}

/// Postgres's directories as `pg_config` gives them: (share/extension, pkglibdir, major).
pub fn pg_dirs() -> (PathBuf, PathBuf, String) {
    let out = std::process::Command::new(format!("{}/pg_config", support::pg_bin_dir()))
        .args(["--sharedir", "--pkglibdir", "--version"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().map(str::trim);
    let share = PathBuf::from(lines.next().unwrap()).join("extension");
    let lib = PathBuf::from(lines.next().unwrap());
    // "PostgreSQL 15.10 (…)" → "15"
    let major = lines.next().unwrap().split_whitespace().nth(1).unwrap().split('.').next().unwrap().to_string();
    (share, lib, major)
}

/// The path of `{ext}.tar.zst` at the stand-in, as today's Neon asks for it.
pub fn remote_path(major: &str, ext: &str) -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("/base/latest/{arch}/v{major}/extensions/{ext}.tar.zst")
}

/// `remote_extensions` listing `exts`, with `library_index`.
fn remote_extensions(exts: &[&str], library_index: serde_json::Value) -> serde_json::Value {
    let data = serde_json::json!({"control_data": {}, "archive_path": ""});
    let extension_data: serde_json::Map<_, _> = exts.iter().map(|e| (e.to_string(), data.clone())).collect();
    serde_json::json!({
        "public_extensions": exts,
        "custom_extensions": null,
        "library_index": library_index,
        "extension_data": extension_data,
    })
}

/// POSTs `/extension_server/{ext}` on a thread.
fn ask(internal: u16, ext: &str) -> std::thread::JoinHandle<http::Response> {
    let path = format!("/extension_server/{ext}");
    std::thread::spawn(move || http::request(internal, "POST", &path, &[], b"").unwrap())
}

/// Two requests for one archive while its download runs: the stand-in sees one download,
/// both get 200, a repeat downloads nothing. When that one download fails (500 from the
/// stand-in), the request that waited gets the failure too (Neon's never returns), and a
/// later request downloads it again and succeeds.
#[test]
fn extension_server_downloads_an_archive_once_and_gives_waiters_its_outcome() {
    let n = std::process::id();
    let (good, flaky) = (format!("cctest_once_{n}"), format!("cctest_flaky_{n}"));
    let mut s = Setup::new("ext-dedup");
    let (share, _, major) = pg_dirs();
    let _cleanup = Installed(
        [&good, &flaky]
            .iter()
            .flat_map(|e| [share.join(format!("{e}.control")), share.join(format!("{e}--1.0.sql"))])
            .collect(),
    );
    let (good_path, flaky_path) = (remote_path(&major, &good), remote_path(&major, &flaky));
    let files = vec![
        (good_path.clone(), extension_archive(&s.dir.path, &good)),
        (flaky_path.clone(), extension_archive(&s.dir.path, &flaky)),
    ];
    let server = FileServer::start_with(files, vec![flaky_path.clone()], true);
    s.spec["remote_extensions"] = remote_extensions(&[&good, &flaky], serde_json::json!({}));
    let mut args = s.args();
    args.extend(["--remote-ext-base-url".into(), server.base_url()]);
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();
    let internal = s.http_port + 1;
    // The second request is waiting once compute_ctl logs so for this archive.
    let waiting = |ext: &str| {
        let line = format!("{ext}.tar.zst: a download is already running; waiting for it");
        support::poll(Duration::from_secs(20), &line, || c.log_text().contains(&line).then_some(()));
    };

    let first = ask(internal, &good);
    support::poll(Duration::from_secs(20), "the first download", || (server.count(&good_path) == 1).then_some(()));
    let second = ask(internal, &good);
    waiting(&good);
    server.release();
    for r in [first.join().unwrap(), second.join().unwrap()] {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(server.count(&good_path), 1, "one download for two requests");
    let r = http::request(internal, "POST", &format!("/extension_server/{good}"), &[], b"").unwrap();
    assert_eq!((r.status, server.count(&good_path)), (200, 1), "installed: no download again");
    s.client().batch_execute(&format!("CREATE EXTENSION {good}")).unwrap();

    // The stand-in answers at once now; the waiter must still be waiting when the failure
    // comes, so hold the stand-in again.
    *server.gate.0.lock().unwrap() = false;
    let first = ask(internal, &flaky);
    support::poll(Duration::from_secs(20), "the flaky download", || (server.count(&flaky_path) == 1).then_some(()));
    let second = ask(internal, &flaky);
    waiting(&flaky);
    server.release();
    let (first, second) = (first.join().unwrap(), second.join().unwrap());
    assert_eq!(first.status, 500, "{}", first.text());
    assert!(first.error().contains("status code: 500"), "{}", first.text());
    assert_eq!(second.status, 500, "the waiter gets the failure: {}", second.text());
    let e = second.error();
    assert!(e.contains("the download another request started failed") && e.contains("status code: 500"), "{e}");
    assert_eq!(server.count(&flaky_path), 1);
    assert!(!share.join(format!("{flaky}.control")).exists());
    // A failure is not remembered as installed: the next request downloads again.
    let r = http::request(internal, "POST", &format!("/extension_server/{flaky}"), &[], b"").unwrap();
    assert_eq!((r.status, server.count(&flaky_path)), (200, 2), "{}", r.text());
    s.client().batch_execute(&format!("CREATE EXTENSION {flaky}")).unwrap();
}

/// A `.tar.zst` whose `lib/{lib}.so` is a copy of the contrib library `auto_explain`:
/// Postgres loads a module by file name and checks only its magic block, so the copy loads
/// under the new name and defines auto_explain's settings.
fn library_archive(dir: &Path, pkglib: &Path, lib: &str) -> Vec<u8> {
    let so = std::fs::read(pkglib.join("auto_explain.so")).expect("the contrib module auto_explain");
    archive_of(dir, lib, "lib", |src| {
        std::fs::create_dir_all(src.join("lib")).unwrap();
        std::fs::write(src.join("lib").join(format!("{lib}.so")), so).unwrap();
    })
}

/// A spec whose `shared_preload_libraries` names a library the `library_index` maps to a
/// remote extension: the archive is downloaded once and its `lib/*.so` installed before
/// Postgres starts, and Postgres runs with the library loaded (its settings exist).
#[test]
fn preload_installs_a_remote_shared_preload_library_before_postgres_starts() {
    let n = std::process::id();
    let (lib, ext) = (format!("cctest_prelib_{n}"), format!("cctest_preext_{n}"));
    let mut s = Setup::new("ext-preload");
    let (_, pkglib, major) = pg_dirs();
    let so = pkglib.join(format!("{lib}.so"));
    let _cleanup = Installed(vec![so.clone()]);
    let path = remote_path(&major, &ext);
    let server = FileServer::start(vec![(path.clone(), library_archive(&s.dir.path, &pkglib, &lib))]);
    s.setting("shared_preload_libraries", &lib, "string");
    s.spec["remote_extensions"] = remote_extensions(&[&ext], serde_json::json!({ &lib: &ext }));
    let mut args = s.args();
    args.extend(["--remote-ext-base-url".into(), server.base_url()]);
    let mut c = Compute::spawn(&args, s.http_port);
    c.wait_running();

    assert_eq!(server.count(&path), 1);
    assert!(so.exists());
    let mut client = s.client();
    let loaded: String = client.query_one("SHOW shared_preload_libraries", &[]).unwrap().get(0);
    assert_eq!(loaded, lib);
    let gucs: i64 =
        client.query_one("SELECT count(*) FROM pg_settings WHERE name LIKE 'auto_explain.%'", &[]).unwrap().get(0);
    assert!(gucs > 0, "the preloaded library defined no settings");
    // The preload counts as installed for the extension server too.
    let r = http::request(s.http_port + 1, "POST", &format!("/extension_server/{lib}.so?is_library=true"), &[], b"")
        .unwrap();
    assert_eq!((r.status, server.count(&path)), (200, 1), "{}", r.text());
    let log = c.log_text();
    let (preloaded, spawned) = (log.find("preloaded 1 shared library"), log.find("postgres is ready"));
    assert!(preloaded.is_some() && preloaded < spawned, "{log}");
}

/// A preload library the extension storage cannot give (404) and that is not installed: the
/// start fails with the library named, and no Postgres is left running.
#[test]
fn a_preload_that_cannot_be_fetched_fails_the_start_naming_the_library() {
    let n = std::process::id();
    let lib = format!("cctest_missinglib_{n}");
    let mut s = Setup::new("ext-preload-fail");
    let (_, pkglib, _) = pg_dirs();
    assert!(!pkglib.join(format!("{lib}.so")).exists());
    let server = FileServer::start(Vec::new());
    // From the postgresql_conf text this time (the other test uses the settings).
    s.spec["cluster"]["postgresql_conf"] = serde_json::json!(format!("shared_preload_libraries='{lib}'\n"));
    s.spec["remote_extensions"] = remote_extensions(&[&lib], serde_json::json!({ &lib: &lib }));
    let mut args = s.args();
    args.extend(["--remote-ext-base-url".into(), server.base_url()]);
    // Stay to answer /status after the failure.
    let i = args.iter().position(|a| a == "--exit-delay").unwrap();
    args[i + 1] = "60".into();
    let mut c = Compute::spawn(&args, s.http_port);
    let st = c.wait_status("failed", Duration::from_secs(30));
    let err = st["error"].as_str().unwrap_or_default();
    assert!(err.contains(&format!("cannot preload shared library {lib}")) && err.contains("404"), "{st}");
    assert_eq!(server.seen.lock().unwrap().len(), 1);
    assert!(support::postmaster_pid(&s.pgdata).is_none_or(|p| !support::pid_alive(p)), "a Postgres was started");
    assert!(std::net::TcpStream::connect(("127.0.0.1", s.pg_port)).is_err(), "something listens on the Postgres port");
}
