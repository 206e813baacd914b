//! What every benchmark needs, written once: where the Postgres binaries are, free loopback
//! ports, medians, running Postgres tools as the `postgres` OS user when we are root, and the
//! compute_ctl binary under test. Each bench includes it with `#[path = "support/mod.rs"]`.
#![allow(dead_code)] // each bench uses a different part

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// PostgreSQL 15's binaries.
pub const PGBIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// A command for a Postgres tool in [`PGBIN_DIR`], run as the `postgres` user when we are root.
pub fn pg_cmd(tool: &str) -> Command {
    let mut c = Command::new(format!("{PGBIN_DIR}/{tool}"));
    as_postgres(&mut c);
    c
}

/// uid and gid of the `postgres` OS user when we are root (Postgres refuses to run as root).
pub fn postgres_ids() -> Option<(u32, u32)> {
    if std::fs::metadata("/proc/self").ok()?.uid() != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let f: Vec<&str> = passwd.lines().find(|l| l.starts_with("postgres:"))?.split(':').collect();
    Some((f[2].parse().ok()?, f[3].parse().ok()?))
}

/// Makes `cmd` run as the `postgres` user when we are root.
pub fn as_postgres(cmd: &mut Command) -> &mut Command {
    if let Some((u, g)) = postgres_ids() {
        cmd.uid(u).gid(g);
    }
    cmd
}

/// Gives `p` to the `postgres` user when we are root.
pub fn chown(p: &Path) {
    if let Some((u, g)) = postgres_ids() {
        std::os::unix::fs::chown(p, Some(u), Some(g)).unwrap();
    }
}

pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A free loopback port whose next port is free too (compute_ctl's internal HTTP server takes
/// it), below the kernel's ephemeral range's end.
pub fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        if port < 65000 && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The binary under test: `$COMPUTE_CTL_BIN`, else target/release/compute_ctl beside this
/// bench, built first with `$CARGO build --release` when cargo runs us.
pub fn compute_ctl_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("COMPUTE_CTL_BIN") {
        return PathBuf::from(p);
    }
    if let Some(cargo) = std::env::var_os("CARGO") {
        let st = Command::new(cargo).args(["build", "--release", "--quiet", "--bin", "compute_ctl"]).status();
        assert!(st.is_ok_and(|s| s.success()), "cargo build --release --bin compute_ctl failed");
    }
    let exe = std::env::current_exe().unwrap();
    // target/release/examples/bench_x -> target/release/compute_ctl
    let bin = exe.parent().and_then(Path::parent).unwrap().join("compute_ctl");
    assert!(bin.exists(), "{} not found; build it or set COMPUTE_CTL_BIN", bin.display());
    bin
}
