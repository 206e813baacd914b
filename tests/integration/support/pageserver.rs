//! Test stand-ins for Neon storage (not shipped):
//! - [`StandIn`]: a pageserver that speaks enough of the Postgres v3 protocol (startup with
//!   SSLRequest refused, cleartext password, simple and extended query, CopyOut) to serve
//!   `basebackup <tenant> <timeline> …` from tar files, with switches to fail the first N
//!   connections, cut the stream or send an error at N bytes, and a record of what it saw;
//!   It also answers `lease lsn <tenant_shard> <timeline> <lsn> ` with a `valid_until` row
//!   (see [`LeaseAnswer`]) and records each one;
//! - [`Wrapper`]: a `postgres` script whose `--sync-safekeepers` prints a chosen LSN or fails,
//!   and which otherwise runs the real binary.
//!
//! Self-contained (std only), so that `examples/bench_basebackup.rs` can include it too.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the stand-in answers `lease lsn ...`.
#[derive(Debug, Clone)]
pub struct LeaseAnswer {
    /// `valid_until` is this long from the moment of the answer; None answers NULL (a refusal:
    /// the LSN is behind the GC cutoff).
    pub valid_for: Option<Duration>,
    /// Answer the first N lease queries with an ErrorResponse.
    pub fail_first: usize,
    /// Never answer: hold the connection until the client goes away.
    pub hang: bool,
}

impl Default for LeaseAnswer {
    fn default() -> LeaseAnswer {
        LeaseAnswer { valid_for: Some(Duration::from_secs(600)), fail_first: 0, hang: false }
    }
}

/// One lease query as received.
#[derive(Debug, Clone)]
pub struct Lease {
    pub at: Instant,
    /// The whole query text, trailing space included.
    pub query: String,
    pub tenant_shard: String,
    pub timeline: String,
    pub lsn: String,
    /// The password of the connection it came on, if one was asked for.
    pub password: Option<String>,
}

/// Misbehaviour on demand.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer the first N connections with a FATAL error right after the startup message.
    pub fail_first: usize,
    /// Close the connection after sending this many bytes of the tar.
    pub cut_at: Option<u64>,
    /// Send an ErrorResponse after this many bytes of the tar.
    pub error_at: Option<u64>,
    /// Send nothing more after this many bytes of the tar, until the client goes away.
    pub stall_at: Option<u64>,
}

/// What the stand-in saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub connections: usize,
    pub users: Vec<String>,
    pub passwords: Vec<String>,
    /// Every query text it ran (from Query or Execute), in order, but `lease lsn` (see `leases`).
    pub queries: Vec<String>,
    /// Streams it stopped sending on purpose (`Faults::stall_at`).
    pub stalled: usize,
    /// Every `lease lsn` query, in order.
    pub leases: Vec<Lease>,
}

struct Inner {
    tars: Mutex<HashMap<(String, String), PathBuf>>,
    faults: Mutex<Faults>,
    lease: Mutex<LeaseAnswer>,
    seen: Mutex<Seen>,
    ask_password: bool,
}

/// A pageserver on 127.0.0.1, stopped on drop.
pub struct StandIn {
    port: u16,
    inner: Arc<Inner>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// Starts listening; `ask_password` makes it request a cleartext password.
    pub fn start(ask_password: bool) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Inner {
            tars: Mutex::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            lease: Mutex::new(LeaseAnswer::default()),
            seen: Mutex::new(Seen::default()),
            ask_password,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (inner2, stop2) = (inner.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let inner = inner2.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                    let _ = serve(conn, &inner);
                });
            }
        });
        StandIn { port, inner, stop, thread: Some(thread) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string as Neon writes it.
    pub fn connstr(&self) -> String {
        format!("postgresql://no_user@127.0.0.1:{}", self.port)
    }

    /// Serves `tar` for this tenant and timeline.
    pub fn add_tar(&self, tenant: &str, timeline: &str, tar: &Path) {
        self.inner.tars.lock().unwrap().insert((tenant.into(), timeline.into()), tar.to_path_buf());
    }

    pub fn set_faults(&self, f: Faults) {
        *self.inner.faults.lock().unwrap() = f;
    }

    pub fn set_lease_answer(&self, a: LeaseAnswer) {
        *self.inner.lease.lock().unwrap() = a;
    }

    /// The lease queries received so far.
    pub fn leases(&self) -> Vec<Lease> {
        self.inner.seen.lock().unwrap().leases.clone()
    }

    pub fn stalled(&self) -> usize {
        self.inner.seen.lock().unwrap().stalled
    }

    pub fn seen(&self) -> Seen {
        self.inner.seen.lock().unwrap().clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const SSL_REQUEST: i32 = 80877103;
const GSS_REQUEST: i32 = 80877104;
const PROTOCOL_3: i32 = 196608;

fn read_exact_vec(s: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v)?;
    Ok(v)
}

fn read_i32(s: &mut impl Read) -> io::Result<i32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(i32::from_be_bytes(b))
}

/// One tagged message: (tag, body).
fn read_msg(s: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag)?;
    let len = read_i32(s)?;
    if !(4..=1 << 20).contains(&len) {
        return Err(io::Error::other(format!("bad message length {len}")));
    }
    Ok((tag[0], read_exact_vec(s, len as usize - 4)?))
}

fn send(w: &mut impl Write, tag: u8, body: &[u8]) -> io::Result<()> {
    w.write_all(&[tag])?;
    w.write_all(&(body.len() as i32 + 4).to_be_bytes())?;
    w.write_all(body)
}

fn error_body(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (f, v) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        b.push(f);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b.push(0);
    b
}

/// Null-terminated strings from the front of `b`.
fn cstrings(b: &[u8]) -> Vec<String> {
    b.split(|c| *c == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

fn serve(stream: TcpStream, inner: &Inner) -> io::Result<()> {
    let mut r = stream.try_clone()?;
    let mut w = BufWriter::with_capacity(256 * 1024, stream.try_clone()?);
    // Startup, refusing encryption requests with 'N'.
    let params = loop {
        let len = read_i32(&mut r)?;
        if !(8..=10_000).contains(&len) {
            return Err(io::Error::other("bad startup length"));
        }
        let body = read_exact_vec(&mut r, len as usize - 4)?;
        let code = i32::from_be_bytes(body[..4].try_into().unwrap());
        match code {
            SSL_REQUEST | GSS_REQUEST => {
                w.write_all(b"N")?;
                w.flush()?;
            }
            PROTOCOL_3 => break cstrings(&body[4..]),
            _ => return Err(io::Error::other(format!("unknown startup code {code}"))),
        }
    };
    let user = params.chunks(2).find(|kv| kv[0] == "user").and_then(|kv| kv.get(1)).cloned().unwrap_or_default();
    let n = {
        let mut seen = inner.seen.lock().unwrap();
        seen.connections += 1;
        seen.users.push(user);
        seen.connections
    };
    if n <= inner.faults.lock().unwrap().fail_first {
        send(&mut w, b'E', &error_body("FATAL", "08006", &format!("stand-in: refusing connection {n}")))?;
        return w.flush();
    }
    let mut password = None;
    if inner.ask_password {
        send(&mut w, b'R', &3i32.to_be_bytes())?;
        w.flush()?;
        let (tag, body) = read_msg(&mut r)?;
        if tag != b'p' {
            return Err(io::Error::other("expected a password message"));
        }
        let p = cstrings(&body).remove(0);
        inner.seen.lock().unwrap().passwords.push(p.clone());
        password = Some(p);
    }
    send(&mut w, b'R', &0i32.to_be_bytes())?;
    for (k, v) in [("server_version", "15.0"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY")] {
        send(&mut w, b'S', format!("{k}\0{v}\0").as_bytes())?;
    }
    send(&mut w, b'K', &[0, 0, 0, 1, 0, 0, 0, 2])?;
    send(&mut w, b'Z', b"I")?;
    w.flush()?;

    let mut statements: HashMap<String, String> = HashMap::new();
    let mut portals: HashMap<String, String> = HashMap::new();
    // After an error in the extended protocol, messages are skipped until Sync.
    let mut skipping = false;
    loop {
        let (tag, body) = read_msg(&mut r)?;
        if skipping && tag != b'S' {
            continue;
        }
        match tag {
            b'Q' => {
                let q = cstrings(&body).remove(0);
                run(&q, inner, &mut w, &password)?;
                send(&mut w, b'Z', b"I")?;
                w.flush()?;
            }
            b'P' => {
                let s = cstrings(&body);
                statements.insert(s[0].clone(), s[1].clone());
                send(&mut w, b'1', b"")?;
            }
            b'D' => {
                if body[0] == b'S' {
                    send(&mut w, b't', &0i16.to_be_bytes())?;
                }
                send(&mut w, b'n', b"")?;
            }
            b'B' => {
                let s = cstrings(&body);
                let q = statements.get(&s[1]).cloned().unwrap_or_default();
                portals.insert(s[0].clone(), q);
                send(&mut w, b'2', b"")?;
            }
            b'E' => {
                let portal = cstrings(&body).remove(0);
                let q = portals.get(&portal).cloned().unwrap_or_default();
                skipping = !run(&q, inner, &mut w, &password)?;
            }
            b'C' => send(&mut w, b'3', b"")?,
            b'H' => w.flush()?,
            b'S' => {
                skipping = false;
                send(&mut w, b'Z', b"I")?;
                w.flush()?;
            }
            b'X' => return Ok(()),
            other => return Err(io::Error::other(format!("unexpected message {:?}", other as char))),
        }
    }
}

/// Runs one query; false when it ended in an ErrorResponse.
fn run(query: &str, inner: &Inner, w: &mut BufWriter<TcpStream>, password: &Option<String>) -> io::Result<bool> {
    let words: Vec<&str> = query.split_whitespace().collect();
    if words.len() == 5 && words[..2] == ["lease", "lsn"] {
        return lease(query, &words, inner, w, password);
    }
    inner.seen.lock().unwrap().queries.push(query.to_string());
    if words.first() != Some(&"basebackup") || words.len() < 3 {
        send(w, b'E', &error_body("ERROR", "42601", &format!("stand-in: unsupported query {query:?}")))?;
        return Ok(false);
    }
    let tar = inner.tars.lock().unwrap().get(&(words[1].to_string(), words[2].to_string())).cloned();
    let Some(tar) = tar else {
        send(w, b'E', &error_body("ERROR", "XX000", &format!("stand-in: no timeline {}/{}", words[1], words[2])))?;
        return Ok(false);
    };
    let faults = inner.faults.lock().unwrap().clone();
    let mut file = std::fs::File::open(&tar)?;
    send(w, b'H', &[0, 0, 0])?;
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let limit = [faults.cut_at, faults.error_at, faults.stall_at].into_iter().flatten().min();
        if let Some(l) = limit {
            n = n.min((l - sent.min(l)) as usize);
        }
        if n > 0 {
            send(w, b'd', &buf[..n])?;
            sent += n as u64;
        }
        if faults.cut_at == Some(sent) {
            w.flush()?;
            w.get_ref().shutdown(Shutdown::Both)?;
            return Err(io::Error::other("cut on purpose"));
        }
        if faults.stall_at == Some(sent) {
            w.flush()?;
            inner.seen.lock().unwrap().stalled += 1;
            // The client sends nothing during a COPY: this ends when it closes.
            let mut s = w.get_ref().try_clone()?;
            s.set_read_timeout(None)?;
            while matches!(s.read(&mut [0u8; 64]), Ok(n) if n > 0) {}
            return Err(io::Error::other("stalled on purpose until the client left"));
        }
        if faults.error_at == Some(sent) {
            send(w, b'E', &error_body("ERROR", "XX000", "stand-in: injected failure in the middle of the basebackup"))?;
            w.flush()?;
            return Ok(false);
        }
    }
    send(w, b'c', b"")?;
    send(w, b'C', b"COPY 0\0")?;
    w.flush()?;
    Ok(true)
}

/// `lease lsn <tenant_shard> <timeline> <lsn> `: one row, one text column `valid_until`.
fn lease(
    query: &str,
    words: &[&str],
    inner: &Inner,
    w: &mut BufWriter<TcpStream>,
    password: &Option<String>,
) -> io::Result<bool> {
    let n = {
        let mut seen = inner.seen.lock().unwrap();
        seen.leases.push(Lease {
            at: Instant::now(),
            query: query.to_string(),
            tenant_shard: words[2].to_string(),
            timeline: words[3].to_string(),
            lsn: words[4].to_string(),
            password: password.clone(),
        });
        seen.leases.len()
    };
    let answer = inner.lease.lock().unwrap().clone();
    if answer.hang {
        let mut s = w.get_ref().try_clone()?;
        s.set_read_timeout(None)?;
        while matches!(s.read(&mut [0u8; 64]), Ok(n) if n > 0) {}
        return Err(io::Error::other("hung on purpose until the client left"));
    }
    if n <= answer.fail_first {
        send(w, b'E', &error_body("ERROR", "XX000", &format!("stand-in: injected lease failure {n}")))?;
        return Ok(false);
    }
    // RowDescription: one column "valid_until", text (oid 25), text format.
    let mut desc = Vec::new();
    desc.extend_from_slice(&1i16.to_be_bytes());
    desc.extend_from_slice(b"valid_until\0");
    desc.extend_from_slice(&0i32.to_be_bytes());
    desc.extend_from_slice(&0i16.to_be_bytes());
    desc.extend_from_slice(&25i32.to_be_bytes());
    desc.extend_from_slice(&(-1i16).to_be_bytes());
    desc.extend_from_slice(&(-1i32).to_be_bytes());
    desc.extend_from_slice(&0i16.to_be_bytes());
    send(w, b'T', &desc)?;
    let mut row = 1i16.to_be_bytes().to_vec();
    match answer.valid_for {
        Some(d) => {
            let ms = (SystemTime::now() + d).duration_since(UNIX_EPOCH).unwrap().as_millis().to_string();
            row.extend_from_slice(&(ms.len() as i32).to_be_bytes());
            row.extend_from_slice(ms.as_bytes());
        }
        None => row.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    send(w, b'D', &row)?;
    send(w, b'C', b"SELECT 1\0")?;
    Ok(true)
}

/// A `postgres` stand-in in its own bin directory, beside links to the real tools.
pub struct Wrapper {
    pub bin: PathBuf,
    ctl: PathBuf,
}

impl Wrapper {
    /// Writes `dir/bin/postgres` (and links to the other tools of `real_bindir`); its
    /// `--sync-safekeepers` prints `lsn`.
    pub fn new(dir: &Path, real_bindir: &str, lsn: &str) -> Wrapper {
        use std::os::unix::fs::PermissionsExt;
        let bindir = dir.join("bin");
        let ctl = dir.join("sync-ctl");
        std::fs::create_dir_all(&bindir).unwrap();
        std::fs::create_dir_all(&ctl).unwrap();
        for d in [&bindir, &ctl] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for tool in std::fs::read_dir(real_bindir).unwrap().flatten() {
            if tool.file_name() != "postgres" {
                std::os::unix::fs::symlink(tool.path(), bindir.join(tool.file_name())).unwrap();
            }
        }
        // The script runs as the postgres user: it must be able to write here.
        std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o777)).unwrap();
        let log = ctl.join("sync.log");
        std::fs::write(&log, "").unwrap();
        // The script runs as the postgres user: the log must be writable by anyone.
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let c = ctl.display();
        let script = format!(
            r#"#!/bin/sh
if [ "$1" = "--sync-safekeepers" ]; then
    echo "pgdata=$PGDATA token=$NEON_AUTH_TOKEN" >> '{c}/sync.log'
    if [ -f '{c}/hang' ]; then
        echo $$ > '{c}/sync.pid.tmp' && mv '{c}/sync.pid.tmp' '{c}/sync.pid'
        exec sleep 300
    fi
    if [ -f '{c}/fail' ]; then
        cat '{c}/fail'
        echo "sync-safekeepers stand-in: giving up" >&2
        exit 3
    fi
    cat '{c}/lsn'
    exit 0
fi
exec '{real_bindir}/postgres' "$@"
"#
        );
        let bin = bindir.join("postgres");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = Wrapper { bin, ctl };
        w.set_lsn(lsn);
        w
    }

    /// What `--sync-safekeepers` prints (padded, as a real one's output is trimmed).
    pub fn set_lsn(&self, lsn: &str) {
        std::fs::write(self.ctl.join("lsn"), format!("  {lsn}\n")).unwrap();
    }

    /// Makes `--sync-safekeepers` print `output` and exit 3.
    pub fn fail_with(&self, output: &str) {
        std::fs::write(self.ctl.join("fail"), output).unwrap();
    }

    /// Makes `--sync-safekeepers` hang (as `sleep`, its pid in [`Wrapper::sync_pid`]).
    pub fn hang(&self) {
        std::fs::write(self.ctl.join("hang"), "").unwrap();
    }

    /// The pid of a hanging `--sync-safekeepers`, once it runs.
    pub fn sync_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.ctl.join("sync.pid")).ok()?.trim().parse().ok()
    }

    /// One line per `--sync-safekeepers` run: `pgdata=… token=…`.
    pub fn sync_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.ctl.join("sync.log")).unwrap().lines().map(String::from).collect()
    }
}
