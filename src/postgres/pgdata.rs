//! PGDATA on local storage: who owns it, making it with `initdb` when it is missing, and
//! refusing to touch a directory that is not a PGDATA.

use super::process::RunAs;
use super::{Node, Stopped};
use crate::error::{Error, Result};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

/// Runs `initdb` so that PGDATA appears whole or not at all: into a sibling temporary
/// directory that is renamed into place (or into the empty directory, emptied again on error).
/// Postgres must not run (`Stopped`); the superuser is `--connstr`'s user.
pub fn initdb(_proof: &Stopped, node: &Node) -> Result<()> {
    let (bindir, pgdata, run_as) = (&node.bindir, &node.pgdata, node.run_as);
    let superuser = &super::sql::connstr_user(&node.connstr)?;
    let state = inspect(pgdata)?;
    let target = match state {
        PgdataState::Initialized => return Ok(()),
        PgdataState::Empty => pgdata.to_path_buf(),
        PgdataState::Missing => {
            let name = pgdata.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = pgdata.with_file_name(format!(".{name}.initdb-{}", std::process::id()));
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
    let out = cmd.output().map_err(|e| Error::system("cannot run initdb", e));
    let result = match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(Error::Process {
            what: format!("initdb {}", super::process::describe_exit(o.status)),
            detail: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        }),
        Err(e) => Err(e),
    };
    match (result, state) {
        (Ok(()), PgdataState::Missing) => {
            std::fs::rename(&target, pgdata).map_err(|e| Error::io("cannot move the new PGDATA to", pgdata, e))
        }
        (Ok(()), _) => Ok(()),
        (Err(e), PgdataState::Missing) => {
            let _ = std::fs::remove_dir_all(&target);
            Err(e)
        }
        (Err(e), _) => {
            empty_dir(&target);
            Err(e)
        }
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
