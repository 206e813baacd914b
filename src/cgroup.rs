//! Postgres in the memory cgroup, as Neon's compute_ctl does when `AUTOSCALING` is set: the
//! postmaster and `postgres --sync-safekeepers` (Neon's list), and the single-user pass of
//! `drop_subscriptions_before_start` (which Neon does not have), start inside the cgroup the
//! vm-monitor watches (`--cgroup`, default `neon-postgres`), so that the memory the monitor
//! reports and the autoscaler acts on is Postgres's.
//!
//! How a child gets there: through `cgexec -g memory:<name>` when `cgexec` is on `PATH`
//! (Neon's way), else by writing the child's pid into `<root>/<name>/cgroup.procs` between
//! fork and exec (see `sys::join_cgroup_before_exec`). Either way the cgroup must exist
//! before compute_ctl starts (NeonVM's vm-builder creates it); a missing one is a start-up
//! error naming it, never a silent start outside it. Without `AUTOSCALING` nothing changes.
//!
//! `--cgroup-root DIR` (for tests, and hosts that mount cgroup v2 elsewhere) replaces
//! `/sys/fs/cgroup` where compute_ctl itself looks: the check that the cgroup exists, the
//! `cgroup.procs` it writes without `cgexec`, the `memory.stat` the monitor samples. It does
//! not decide between the two ways: `cgexec` finds the hierarchy from the mount table, so it
//! is used whenever it is on `PATH`. A test may point the root at a directory of plain files
//! that imitates a cgroup (`cgroup.procs`, `memory.stat`); it then gives compute_ctl a `PATH`
//! without `cgexec`, or with a stand-in that writes into that directory.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const DEFAULT_NAME: &str = "neon-postgres";
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// Where children of compute_ctl that run Postgres are placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// `AUTOSCALING` is not set: children run in compute_ctl's own cgroup.
    Inherit,
    /// `cgexec -g memory:<name> <program> …`; `dir` is the cgroup's directory.
    Cgexec { cgexec: PathBuf, name: String, dir: PathBuf },
    /// The child writes its pid into `<dir>/cgroup.procs` before exec.
    Procs { name: String, dir: PathBuf },
}

impl Placement {
    /// Decides the placement. With `autoscaling`, the cgroup `<root>/<name>` must exist;
    /// `path` is the `PATH` to look for `cgexec` in.
    pub fn new(autoscaling: bool, name: &str, root: Option<&Path>, path: Option<&str>) -> Result<Placement> {
        if !autoscaling {
            return Ok(Placement::Inherit);
        }
        if name.is_empty() || name.split('/').any(|c| c == "..") {
            return Err(Error::Usage(format!("--cgroup: not a cgroup name: {name:?}")));
        }
        let dir = root.unwrap_or(Path::new(DEFAULT_ROOT)).join(name.trim_start_matches('/'));
        let procs = dir.join("cgroup.procs");
        if !procs.is_file() {
            return Err(Error::Usage(format!(
                "AUTOSCALING is set but the memory cgroup {name:?} does not exist ({} is missing): create it \
                 before starting compute_ctl (cgroup v2 with the memory controller), or name another with --cgroup",
                procs.display()
            )));
        }
        Ok(match path.and_then(find_cgexec) {
            Some(cgexec) => Placement::Cgexec { cgexec, name: name.to_string(), dir },
            None => Placement::Procs { name: name.to_string(), dir },
        })
    }

    /// The cgroup's directory, when there is one.
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Placement::Inherit => None,
            Placement::Cgexec { dir, .. } | Placement::Procs { dir, .. } => Some(dir),
        }
    }

    /// A command that runs `program` in this placement; arguments are added by the caller.
    pub fn command(&self, program: &Path) -> Result<Command> {
        let w = self.wrap(program)?;
        let mut cmd = Command::new(&w.program);
        cmd.args(&w.args);
        if let Some(procs) = w.procs {
            crate::sys::join_cgroup_before_exec(&mut cmd, procs);
        }
        Ok(cmd)
    }

    /// How `program` runs in this placement: what to exec with which leading arguments, and
    /// the `cgroup.procs` the child writes its pid to (opened here, so that a missing or
    /// forbidden one is an error before anything is spawned).
    pub fn wrap(&self, program: &Path) -> Result<Wrapped> {
        match self {
            Placement::Inherit => Ok(Wrapped { program: program.to_path_buf(), args: Vec::new(), procs: None }),
            Placement::Cgexec { cgexec, name, .. } => Ok(Wrapped {
                program: cgexec.clone(),
                args: vec!["-g".into(), format!("memory:{name}").into(), program.into()],
                procs: None,
            }),
            Placement::Procs { name, dir } => {
                let procs = dir.join("cgroup.procs");
                let file = std::fs::OpenOptions::new().append(true).open(&procs).map_err(|e| {
                    Error::io(format!("cannot place {} in cgroup {name:?}: cannot open", program.display()), &procs, e)
                })?;
                Ok(Wrapped { program: program.to_path_buf(), args: Vec::new(), procs: Some(file) })
            }
        }
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            Placement::Inherit => "postgres runs in compute_ctl's cgroup (AUTOSCALING is not set)".into(),
            Placement::Cgexec { cgexec, name, .. } => {
                format!("postgres runs in cgroup {name:?} through {} -g memory:{name}", cgexec.display())
            }
            Placement::Procs { name, dir } => {
                format!("postgres runs in cgroup {name:?}, joined through {}/cgroup.procs", dir.display())
            }
        }
    }
}

fn find_cgexec(path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|d| d.join("cgexec"))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A program as its placement runs it (see [`Placement::wrap`]).
pub struct Wrapped {
    pub program: PathBuf,
    /// Before the program's own arguments.
    pub args: Vec<std::ffi::OsString>,
    /// `cgroup.procs`, open for appending.
    pub procs: Option<std::fs::File>,
}

static PLACEMENT: OnceLock<Placement> = OnceLock::new();

/// Sets the process-wide placement once, at start-up (later calls are ignored). Process-wide
/// because it is fixed for the life of the process, like the environment it comes from.
pub fn set(placement: Placement) {
    log::info!("{}", placement.describe());
    let _ = PLACEMENT.set(placement);
}

/// The process-wide placement ([`Placement::Inherit`] until [`set`]).
pub fn placement() -> &'static Placement {
    PLACEMENT.get().unwrap_or(&Placement::Inherit)
}

/// A command running `program` (a Postgres binary) in the process-wide placement.
pub fn command(program: &Path) -> Result<Command> {
    placement().command(program)
}

/// `program` (the postmaster) as the process-wide placement runs it.
pub fn wrap(program: &Path) -> Result<Wrapped> {
    placement().wrap(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("compute_ctl-cgroup-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("pg")).unwrap();
        d
    }

    #[test]
    fn without_autoscaling_nothing_changes() {
        assert_eq!(Placement::new(false, "missing", None, None).unwrap(), Placement::Inherit);
        let cmd = Placement::Inherit.command(Path::new("/bin/true")).unwrap();
        assert_eq!(cmd.get_program(), "/bin/true");
    }

    #[test]
    fn missing_cgroup_is_named() {
        let root = dir("missing");
        let e = Placement::new(true, "pg", Some(&root), None).unwrap_err().to_string();
        assert!(e.contains("\"pg\"") && e.contains("cgroup.procs is missing"), "{e}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn cgexec_from_path_whatever_the_root() {
        let root = dir("cgexec");
        std::fs::write(root.join("pg/cgroup.procs"), "").unwrap();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("cgexec"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(bin.join("cgexec"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());
        let p = Placement::new(true, "pg", Some(&root), Some(&path)).unwrap();
        assert_eq!(p, Placement::Cgexec { cgexec: bin.join("cgexec"), name: "pg".into(), dir: root.join("pg") });
        // Not on PATH: the pid is written into cgroup.procs.
        let p = Placement::new(true, "pg", Some(&root), Some("/nonexistent")).unwrap();
        assert!(matches!(p, Placement::Procs { .. }), "{p:?}");
        let c = Placement::Cgexec { cgexec: bin.join("cgexec"), name: "pg".into(), dir: root.join("pg") }
            .command(Path::new("/usr/bin/postgres"))
            .unwrap();
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["-g", "memory:pg", "/usr/bin/postgres"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn procs_placement_writes_the_child_pid() {
        let root = dir("procs");
        std::fs::write(root.join("pg/cgroup.procs"), "").unwrap();
        let p = Placement::new(true, "pg", Some(&root), None).unwrap();
        let child = p.command(Path::new("/bin/true")).unwrap().spawn().unwrap();
        let pid = child.id();
        let mut child = child;
        child.wait().unwrap();
        let text = std::fs::read_to_string(root.join("pg/cgroup.procs")).unwrap();
        assert_eq!(text, format!("{pid}\n"));
        std::fs::remove_dir_all(root).unwrap();
    }
}
