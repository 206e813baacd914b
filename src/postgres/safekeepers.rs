//! `postgres --sync-safekeepers`: the LSN a Primary starts from, and the sync after it stops.
//!
//! Contracts of [`sync`]:
//! - prerequisites: `pgdata/postgresql.conf` names the safekeepers, tenant and timeline (the
//!   child reads them from there; `-D` cannot be used in this mode);
//! - on success: the LSN the child printed (`X/Y`, trimmed);
//! - on error: the exit status with the child's stdout and last stderr lines, or
//!   [`Error::Interrupted`] when a termination request arrived (the child is then stopped).
//!   The child never outlives compute_ctl: it gets SIGKILL when its parent dies.

use super::process::{LogTail, RunAs, describe_exit, forward_log};
use crate::error::{Error, Result};
use crate::spec::Lsn;
use crate::sys;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// More stdout than this is not an LSN; the rest is discarded so a chatty child cannot grow us.
const MAX_STDOUT: u64 = 64 * 1024;

/// How long the child gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// Runs `pgbin --sync-safekeepers` with `PGDATA=pgdata` (and `NEON_AUTH_TOKEN=token`) as the
/// Postgres user, and returns the LSN it prints. `interrupted` is polled while it runs.
pub fn sync(
    pgbin: &Path,
    pgdata: &Path,
    token: Option<&str>,
    run_as: Option<RunAs>,
    interrupted: &AtomicBool,
) -> Result<Lsn> {
    // In the memory cgroup when AUTOSCALING is set (see `cgroup`).
    let mut cmd = crate::cgroup::command(pgbin)?;
    cmd.arg("--sync-safekeepers")
        .env("PGDATA", pgdata)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("NEON_AUTH_TOKEN", t);
    }
    if let Some(u) = run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    sys::die_with_parent(&mut cmd, sys::SIGKILL);
    let started = Instant::now();
    let mut child =
        cmd.spawn().map_err(|e| Error::system(format!("cannot run {} --sync-safekeepers", pgbin.display()), e))?;
    log::info!("running postgres --sync-safekeepers (pid {})", child.id());
    let stdout = child.stdout.take().expect("stdout was piped above");
    let out_thread = std::thread::Builder::new()
        .name("sync-sk-stdout".into())
        .spawn(move || {
            let mut text = Vec::new();
            let _ = stdout.take(MAX_STDOUT).read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
        .expect("spawning a thread only fails when the system is out of resources");
    let tail = LogTail::default();
    let err_thread = forward_log(child.stderr.take().expect("stderr was piped above"), tail.clone());

    let status = wait(&mut child, interrupted);
    // Both pipes close when the child exits (it has no children of its own that keep them).
    let stdout = out_thread.join().unwrap_or_default();
    let _ = err_thread.join();
    let status = status?;
    if !status.success() {
        return Err(Error::Process {
            what: format!("postgres --sync-safekeepers {}", describe_exit(status)),
            detail: format!("stdout: {:?}; stderr: {:?}", stdout.trim(), tail.text()),
        });
    }
    let lsn = stdout
        .trim()
        .parse::<Lsn>()
        .map_err(|e| Error::Process { what: "postgres --sync-safekeepers printed no LSN".into(), detail: e })?;
    log::info!("safekeepers synced at LSN {lsn} in {} ms", started.elapsed().as_millis());
    Ok(lsn)
}

/// Waits for the child, stopping it (SIGTERM, then SIGKILL) when `interrupted` is set. The
/// child is reaped only by this function, so its pid cannot be recycled while we signal it.
fn wait(child: &mut Child, interrupted: &AtomicBool) -> Result<ExitStatus> {
    let reap = |child: &mut Child| {
        child.try_wait().map_err(|e| Error::system("cannot wait for postgres --sync-safekeepers", e))
    };
    loop {
        if let Some(status) = reap(child)? {
            return Ok(status);
        }
        if interrupted.load(Ordering::SeqCst) {
            log::info!("stopping postgres --sync-safekeepers (pid {}): termination requested", child.id());
            let _ = sys::kill(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + TERM_GRACE;
            while reap(child)?.is_none() {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            return Err(Error::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("postgres");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("cc-sk-{name}-{}", std::process::id()))
    }

    #[test]
    fn reads_the_trimmed_lsn_and_passes_pgdata_and_token() {
        let dir = tmp("ok");
        let bin = script(
            &dir,
            r#"[ "$1 $PGDATA $NEON_AUTH_TOKEN" = "--sync-safekeepers /x tok" ] || exit 9; echo "  1/2A ""#,
        );
        let lsn = sync(&bin, Path::new("/x"), Some("tok"), None, &AtomicBool::new(false)).unwrap();
        assert_eq!(lsn.to_string(), "1/2A");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failure_names_status_and_output() {
        let dir = tmp("fail");
        let bin = script(&dir, "echo no quorum; echo 'FATAL: bad' >&2; exit 3");
        let err = sync(&bin, Path::new("/x"), None, None, &AtomicBool::new(false)).unwrap_err().to_string();
        assert!(err.contains("exited with code 3") && err.contains("no quorum") && err.contains("FATAL: bad"), "{err}");
        let bin = script(&dir, "echo nonsense");
        let err = sync(&bin, Path::new("/x"), None, None, &AtomicBool::new(false)).unwrap_err().to_string();
        assert!(err.contains("printed no LSN") && err.contains("nonsense"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn interruption_stops_the_child() {
        let dir = tmp("int");
        let bin = script(&dir, "exec sleep 30");
        let started = Instant::now();
        let err = sync(&bin, Path::new("/x"), None, None, &AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
