//! PGDATA on local storage: who owns it, making it with `initdb` when it is missing, and
//! refusing to touch a directory that is not a PGDATA.

use super::process::RunAs;
use super::{Node, Stopped};
use crate::error::{Error, Result};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// True when compute_ctl runs as root (then Postgres runs as `--pg-user`).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Looks `name` up in `/etc/passwd` (no NSS: the image is static and small).
pub fn lookup_user(name: &str) -> Result<RunAs> {
    let text = std::fs::read_to_string("/etc/passwd").map_err(|e| Error::io("cannot read", "/etc/passwd", e))?;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name).then(|| Some(RunAs { uid: f[2].parse().ok()?, gid: f[3].parse().ok()? }))?
        })
        .next()
        .ok_or_else(|| Error::Usage(format!("--pg-user: no user {name:?} in /etc/passwd")))
}

/// The user Postgres runs as: `--pg-user` when we are root, ourselves otherwise.
pub fn postgres_identity(pg_user: &str) -> Result<Option<RunAs>> {
    if running_as_root() { lookup_user(pg_user).map(Some) } else { Ok(None) }
}

/// The directory holding `postgres`, `initdb`, `pg_ctl`: beside `pgbin`, or found on PATH.
pub fn bindir(pgbin: &Path) -> Result<PathBuf> {
    let resolved = if pgbin.components().count() > 1 {
        pgbin.to_path_buf()
    } else {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(pgbin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Usage(format!("-b/--pgbin: {} is not on PATH; give its full path", pgbin.display()))
            })?
    };
    if !resolved.is_file() {
        return Err(Error::Usage(format!("-b/--pgbin: {} does not exist", resolved.display())));
    }
    Ok(resolved.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf))
}

/// What is at the PGDATA path.
#[derive(Debug, PartialEq, Eq)]
pub enum PgdataState {
    Missing,
    Empty,
    Initialized,
}

/// Looks at PGDATA without changing it; a non-empty directory without `PG_VERSION` is an
/// error, so a wrong `-D` never gets `initdb` run into someone's files.
pub fn inspect(pgdata: &Path) -> Result<PgdataState> {
    // The usual case first, with one stat: a directory holding PG_VERSION is not empty.
    if pgdata.join("PG_VERSION").is_file() {
        return Ok(PgdataState::Initialized);
    }
    match std::fs::read_dir(pgdata) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PgdataState::Missing),
        Err(e) => Err(Error::io("cannot read PGDATA", pgdata, e)),
        Ok(mut entries) => {
            if entries.next().is_none() {
                Ok(PgdataState::Empty)
            } else if pgdata.join("PG_VERSION").is_file() {
                Ok(PgdataState::Initialized)
            } else {
                Err(Error::io(
                    "refusing to use a non-empty directory that is not a PGDATA (no PG_VERSION) as",
                    pgdata,
                    std::io::Error::other("move it away or point -D elsewhere"),
                ))
            }
        }
    }
}

/// The real directory behind a PGDATA given through a symlink (anywhere on its path), so
/// that chown, initdb and Postgres all work on it rather than on the link; the path as given
/// when it does not exist yet.
pub fn resolve(pgdata: &Path) -> PathBuf {
    match std::fs::canonicalize(pgdata) {
        Ok(real) if real != pgdata => {
            log::info!("PGDATA {} resolves to {}: working on the latter", pgdata.display(), real.display());
            real
        }
        _ => pgdata.to_path_buf(),
    }
}

/// Refuses a PGDATA that a live postmaster compute_ctl did not start runs on, before anything
/// in it is written: its `postmaster.pid` names a live process whose working directory is
/// this PGDATA (Postgres changes into it), or, when that cannot be read, which is a `postgres`.
pub fn refuse_foreign_postmaster(pgdata: &Path) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else { return Ok(()) };
    // A single-user backend writes its pid negated.
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i64>().ok()).map(i64::unsigned_abs) else {
        return Ok(());
    };
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'));
    if !alive || pid == u64::from(std::process::id()) {
        return Ok(());
    }
    let runs_here = match std::fs::read_link(format!("/proc/{pid}/cwd")) {
        Ok(cwd) => std::fs::canonicalize(pgdata).is_ok_and(|real| real == cwd),
        Err(_) => std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"),
    };
    if !runs_here {
        return Ok(());
    }
    Err(Error::Process {
        what: format!("PGDATA {} is in use", pgdata.display()),
        detail: format!("a postmaster compute_ctl did not start runs on it (pid {pid}); stop it first"),
    })
}

/// A file compute_ctl puts in an empty PGDATA before `initdb` runs into [`STAGING`] inside it,
/// and removes once the result has been moved up, `PG_VERSION` last. While it exists the
/// directory holds only what compute_ctl made there.
const MARKER: &str = ".compute_ctl-initdb-in-progress";
/// Where `initdb` runs inside an existing empty PGDATA (which may be a mount point, so the
/// result cannot be renamed into its place from a sibling).
const STAGING: &str = ".compute_ctl-initdb";

/// Runs `initdb` so that PGDATA is only ever taken for initialized once initdb finished:
/// a missing PGDATA is made in a sibling temporary directory and renamed into place; an
/// existing empty one gets a marker, initdb runs into a directory inside it, and the result is
/// moved up with `PG_VERSION` last before the marker goes. What an interrupted initdb left
/// (a sibling of a compute_ctl that is gone, or a PGDATA with the marker) is removed first;
/// nothing without the marker is ever removed. A termination request (`node.interrupted`)
/// kills initdb at once. Postgres must not run (`Stopped`); the superuser is `--connstr`'s user.
pub fn initdb(_proof: &Stopped, node: &Node) -> Result<()> {
    let (bindir, pgdata, run_as) = (&node.bindir, &node.pgdata, node.run_as);
    let superuser = &super::sql::connstr_user(&node.connstr)?;
    remove_interrupted_siblings(pgdata);
    finish_or_undo_interrupted(pgdata)?;
    let state = inspect(pgdata)?;
    let target = match state {
        PgdataState::Initialized => return Ok(()),
        PgdataState::Empty => {
            let marker = pgdata.join(MARKER);
            std::fs::write(&marker, b"").map_err(|e| Error::io("cannot create", &marker, e))?;
            set_owner_and_mode(pgdata, run_as)?;
            let staging = pgdata.join(STAGING);
            std::fs::create_dir(&staging).map_err(|e| Error::io("cannot create", &staging, e))?;
            staging
        }
        PgdataState::Missing => {
            let tmp = sibling(pgdata, std::process::id());
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io("cannot create", &tmp, e))?;
            tmp
        }
    };
    set_owner_and_mode(&target, run_as)?;
    log::info!("PGDATA {} is {state:?}: running initdb", pgdata.display());
    let mut cmd = Command::new(bindir.join("initdb"));
    cmd.arg("-D")
        .arg(&target)
        .args(["-U", superuser, "-E", "UTF8", "--locale=C.UTF-8", "--auth=trust"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(u) = run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    let result = run_interruptible(cmd, "initdb", &node.interrupted);
    match (result, state) {
        (Ok(()), PgdataState::Missing) => {
            std::fs::rename(&target, pgdata).map_err(|e| Error::io("cannot move the new PGDATA to", pgdata, e))
        }
        (Ok(()), _) => move_up(&target, pgdata),
        (Err(e), PgdataState::Missing) => {
            let _ = std::fs::remove_dir_all(&target);
            Err(e)
        }
        (Err(e), _) => {
            empty_dir(pgdata);
            Err(e)
        }
    }
}

/// The temporary sibling a compute_ctl with this pid runs initdb into.
fn sibling(pgdata: &Path, pid: u32) -> PathBuf {
    let name = pgdata.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    pgdata.with_file_name(format!(".{name}.initdb-{pid}"))
}

/// Removes `.NAME.initdb-PID` siblings whose compute_ctl is gone.
fn remove_interrupted_siblings(pgdata: &Path) {
    let Some(parent) = pgdata.parent() else { return };
    let Some(name) = pgdata.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let prefix = format!(".{name}.initdb-");
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        log::warn!("removing {}, left by an interrupted initdb", entry.path().display());
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// A PGDATA with the marker: if `PG_VERSION` made it up (it moves last), initdb finished and
/// only the marker is removed; otherwise everything in it is initdb's and is removed.
fn finish_or_undo_interrupted(pgdata: &Path) -> Result<()> {
    let marker = pgdata.join(MARKER);
    if !marker.exists() {
        return Ok(());
    }
    if pgdata.join("PG_VERSION").is_file() {
        log::info!("PGDATA {}: finishing the move of an interrupted initdb", pgdata.display());
        let _ = std::fs::remove_dir_all(pgdata.join(STAGING));
    } else {
        log::warn!("PGDATA {}: removing what an interrupted initdb left", pgdata.display());
        for entry in std::fs::read_dir(pgdata).map_err(|e| Error::io("cannot read", pgdata, e))?.flatten() {
            if entry.file_name() != MARKER {
                let p = entry.path();
                let r = if p.is_dir() { remove_dir_all_settling(&p) } else { std::fs::remove_file(&p) };
                r.map_err(|e| Error::io("cannot remove", &p, e))?;
            }
        }
    }
    std::fs::remove_file(&marker).map_err(|e| Error::io("cannot remove", &marker, e))
}

/// `remove_dir_all`, retried for a few seconds while the directory keeps filling up: when
/// compute_ctl was killed during initdb, initdb's own child (`postgres --single`, reading
/// initdb's pipe) may still be writing into it until it sees the end of its input.
fn remove_dir_all_settling(dir: &Path) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && std::time::Instant::now() < deadline => {
                log::info!("{} is still being written (an orphaned initdb child?): retrying", dir.display());
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Moves initdb's result from `staging` up into `pgdata`, `PG_VERSION` last, then removes
/// the staging directory and the marker.
fn move_up(staging: &Path, pgdata: &Path) -> Result<()> {
    let entries = std::fs::read_dir(staging).map_err(|e| Error::io("cannot read", staging, e))?;
    let mut names: Vec<std::ffi::OsString> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort_by_key(|n| n == "PG_VERSION");
    for name in names {
        let (from, to) = (staging.join(&name), pgdata.join(&name));
        std::fs::rename(&from, &to).map_err(|e| Error::io("cannot move the new PGDATA entry to", &to, e))?;
    }
    std::fs::remove_dir(staging).map_err(|e| Error::io("cannot remove", staging, e))?;
    let marker = pgdata.join(MARKER);
    std::fs::remove_file(&marker).map_err(|e| Error::io("cannot remove", &marker, e))
}

/// Runs `cmd` to the end, killing it as soon as `interrupted` is set; its stderr becomes the
/// error's detail.
fn run_interruptible(mut cmd: Command, what: &str, interrupted: &AtomicBool) -> Result<()> {
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Process { what: format!("cannot run {what}"), detail: e.to_string() })?;
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let status = loop {
        if interrupted.load(Ordering::SeqCst) {
            log::info!("interrupted: killing {what} (pid {})", child.id());
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            return Err(Error::Interrupted);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(Error::Process { what: format!("cannot wait for {what}"), detail: e.to_string() }),
        }
    };
    let detail = reader.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(Error::Process {
            what: format!("{what} {}", super::process::describe_exit(status)),
            detail: detail.trim().to_string(),
        })
    }
}

fn empty_dir(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
    }
}

/// Makes `dir` mode 0700 and owned by the Postgres user, as Postgres insists.
pub fn set_owner_and_mode(dir: &Path, run_as: Option<RunAs>) -> Result<()> {
    if let Some(u) = run_as {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid)).map_err(|e| Error::io("cannot chown", dir, e))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| Error::io("cannot chmod", dir, e))
}

/// Gives the whole tree to the Postgres user when its top is not already theirs (a PGDATA
/// copied or unpacked by root); cheap when nothing needs changing.
pub fn ensure_owned(pgdata: &Path, run_as: Option<RunAs>) -> Result<()> {
    let Some(u) = run_as else { return Ok(()) };
    let meta = std::fs::metadata(pgdata).map_err(|e| Error::io("cannot stat", pgdata, e))?;
    if meta.uid() != u.uid || meta.gid() != u.gid {
        chown_tree(pgdata, u)?;
    }
    set_owner_and_mode(pgdata, run_as)
}

pub fn chown_tree(path: &Path, u: RunAs) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid)).map_err(|e| Error::io("cannot chown", path, e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).map_err(|e| Error::io("cannot read", path, e))? {
            let entry = entry.map_err(|e| Error::io("cannot read", path, e))?;
            chown_tree(&entry.path(), u)?;
        }
    }
    Ok(())
}

/// "Latest checkpoint location" from `pg_controldata` (as the Postgres user when we are root),
/// i.e. the shutdown checkpoint's LSN after a fast shutdown. None if unreadable.
pub fn checkpoint_lsn(node: &Node) -> Option<String> {
    let mut cmd = Command::new(node.bindir.join("pg_controldata"));
    cmd.arg(&node.pgdata).env("LC_ALL", "C").stdin(Stdio::null());
    if let Some(u) = node.run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    let out = match cmd.output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            log::warn!("pg_controldata failed: {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        Err(e) => {
            log::warn!("cannot run pg_controldata: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let lsn = text.lines().find_map(|l| l.strip_prefix("Latest checkpoint location:")).map(|v| v.trim().to_string());
    lsn.filter(|v| v.split_once('/').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty()))
}
