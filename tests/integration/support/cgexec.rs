//! AUTOSCALING fixtures: an imitation memory cgroup, and a stand-in for libcgroup's `cgexec`
//! that compute_ctl finds on its `PATH` (libcgroup is not installed on the test machines).
//!
//! The stand-in keeps the part of the real CLI contract compute_ctl relies on:
//! `cgexec -g <controllers>:<path> [--sticky] <command> [<args>…]` moves itself into the
//! cgroup, then execs the command (found on `PATH`, like `execvp`), so the command keeps
//! cgexec's pid. It accepts only the `memory` controller and fails, as the real one does, when
//! the cgroup does not exist. Each call is recorded before anything else, one line per call,
//! the arguments after `argv[0]` separated by tabs. `PATH` is given to the compute_ctl child
//! only, so tests running in parallel never see the stand-in.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An imitation cgroup `<root>/<name>`: `cgroup.procs` (writable by the Postgres user, who
/// runs `cgexec`: a cgroup delegated to it) and a `memory.stat` saying 10 MiB in use.
pub fn imitation_cgroup(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for d in [root, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, "").unwrap();
    std::fs::set_permissions(&procs, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::write(dir.join("memory.stat"), "anon 10485760\nactive_anon 5242880\ninactive_anon 5242880\n").unwrap();
    dir
}

/// `PATH` with every directory holding a `cgexec` left out: for tests that imitate a cgroup
/// and expect compute_ctl to write `cgroup.procs` itself, on machines where libcgroup is
/// installed too.
pub fn path_without_cgexec() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<PathBuf> = std::env::split_paths(&path).filter(|d| !d.join("cgexec").exists()).collect();
    std::env::join_paths(kept).unwrap().into_string().unwrap()
}

/// The stand-in `cgexec` in a directory of its own, writing into the cgroups under `root`.
pub struct Cgexec {
    bin_dir: PathBuf,
    calls: PathBuf,
}

impl Cgexec {
    /// Writes `dir/cgexec-bin/cgexec`; cgroup `NAME` means the directory `root/NAME`.
    pub fn new(dir: &Path, root: &Path) -> Cgexec {
        let bin_dir = dir.join("cgexec-bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let calls = bin_dir.join("calls");
        std::fs::write(&calls, "").unwrap();
        // The Postgres user runs it (compute_ctl drops to it before the exec).
        std::fs::set_permissions(&calls, std::fs::Permissions::from_mode(0o666)).unwrap();
        let script = format!(
            r#"#!/bin/sh
# Stand-in for libcgroup's cgexec (see tests/integration/support/cgexec.rs).
line=''
for a in "$@"; do line="$line$(printf '\t')$a"; done
printf '%s\n' "${{line#?}}" >> '{calls}'
group=''
while [ $# -gt 0 ]; do
    case "$1" in
        -g) [ $# -ge 2 ] || {{ echo "cgexec: -g needs <controllers>:<path>" >&2; exit 1; }}
            group=$2; shift 2 ;;
        -g*) group=${{1#-g}}; shift ;;
        --sticky) shift ;;
        --) shift; break ;;
        -*) echo "cgexec: unknown option $1" >&2; exit 1 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || {{ echo "cgexec: no command given" >&2; exit 1; }}
case "$group" in
    memory:?*) name=${{group#memory:}} ;;
    *) echo "cgexec: this stand-in knows -g memory:<cgroup> only, not '$group'" >&2; exit 1 ;;
esac
procs='{root}'/"${{name#/}}"/cgroup.procs
[ -f "$procs" ] || {{ echo "cgroup change of group failed: cgroup $name does not exist" >&2; exit 96; }}
echo $$ >> "$procs" || exit 1
exec "$@"
"#,
            calls = calls.display(),
            root = root.display(),
        );
        let bin = bin_dir.join("cgexec");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Cgexec { bin_dir, calls }
    }

    /// The `PATH` for compute_ctl: the stand-in first, then this process's `PATH` without any
    /// real `cgexec`.
    pub fn path(&self) -> String {
        format!("{}:{}", self.bin_dir.display(), path_without_cgexec())
    }

    /// The stand-in itself, as compute_ctl's start-up log names it.
    pub fn bin(&self) -> PathBuf {
        self.bin_dir.join("cgexec")
    }

    /// Every call so far: the arguments after `argv[0]`.
    pub fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.calls)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').map(String::from).collect())
            .collect()
    }
}

/// The pids in the imitation cgroup `dir` (its `cgroup.procs` only grows: it is a plain file).
pub fn members(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs")).unwrap().lines().map(|l| l.trim().parse().unwrap()).collect()
}
