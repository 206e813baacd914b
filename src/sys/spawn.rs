//! Starting the postmaster without copying compute_ctl: clone(2) with `CLONE_VM | CLONE_VFORK`,
//! as posix_spawn(3) does, plus the three things posix_spawn cannot do that the postmaster
//! needs: the change to the Postgres user, the parent-death signal and joining a cgroup.
//!
//! `Command::spawn` forks as soon as a uid or a `pre_exec` hook is set: the kernel copies
//! compute_ctl's page tables, compute_ctl then takes a copy-on-write fault on every page it
//! touches, and the child's exec tears the copy down again. Measured here (a 2-core VM), the
//! spawn of the postmaster took 0.6 to 5 ms that way, against about 0.2 ms sharing the address
//! space; it is on the path of every start (issue 18).
//!
//! The child shares our memory until it execs, and we stay suspended until then (or its exit).
//! So it must not allocate, lock or touch libc state: everything it reads is prepared here
//! beforehand, and it calls the kernel directly (`syscall(2)`), never libc's `setuid` and
//! friends, which in a threaded process signal every thread of the caller's (our) process.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// What the child becomes, and how (see [`spawn`]).
pub struct Launch<'a> {
    pub program: &'a Path,
    /// After argv\[0\], which is `program`.
    pub args: &'a [OsString],
    /// Set in, or (value `None`) removed from, compute_ctl's environment.
    pub env: &'a [(&'a str, Option<&'a str>)],
    /// uid and gid to run as (supplementary groups are dropped); `None`: ours.
    pub run_as: Option<(u32, u32)>,
    /// Sent to the child when the thread that spawned it dies, even by SIGKILL.
    pub death_signal: i32,
    /// An open `cgroup.procs` the child writes its pid to before it execs.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
    pub stdin: BorrowedFd<'a>,
    /// `None`: ours.
    pub stdout: Option<BorrowedFd<'a>>,
    pub stderr: BorrowedFd<'a>,
}

/// Which step of the child failed, for the error message.
const STEPS: [&str; 8] = [
    "",
    "redirecting stdin, stdout and stderr",
    "joining the cgroup",
    "setgid",
    "setgroups",
    "setuid",
    "setting the parent-death signal",
    "exec",
];

/// Everything the child reads, prepared by the parent: plain integers and pointers into
/// buffers that live until the child has exec'd or exited.
struct Plan {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    run_as: Option<(u32, u32)>,
    death_signal: i32,
    parent: i32,
    cgroup_procs: i32,
    stdin: i32,
    /// -1: ours.
    stdout: i32,
    stderr: i32,
    /// Written by the child when a step fails: the step (an index into [`STEPS`]) and errno.
    failed_step: AtomicI32,
    errno: AtomicI32,
}

/// Starts `launch` and returns the child's pid once it has exec'd. An error names the step
/// that failed in the child (its exec, the uid change, …); the failed child is reaped.
pub fn spawn(launch: &Launch<'_>) -> io::Result<u32> {
    let cstr = |s: &OsStr| CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let program = cstr(launch.program.as_os_str())?;
    let mut argv = vec![program.clone()];
    for a in launch.args {
        argv.push(cstr(a)?);
    }
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if !launch.env.iter().any(|(name, _)| OsStr::new(name) == k) {
            envp.push(cstr(&pair(&k, &v))?);
        }
    }
    for (k, v) in launch.env {
        if let Some(v) = v {
            envp.push(cstr(&pair(OsStr::new(k), OsStr::new(v)))?);
        }
    }
    // The child moves stdin, stdout and stderr to 0, 1 and 2: sources below 3 (when compute_ctl was
    // started with a standard descriptor closed) are copied above first.
    let mut copies = Vec::new();
    let stdin = above_stdio(launch.stdin, &mut copies)?;
    let stdout = launch.stdout.map(|fd| above_stdio(fd, &mut copies)).transpose()?.unwrap_or(-1);
    let stderr = above_stdio(launch.stderr, &mut copies)?;
    let argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).chain([std::ptr::null()]).collect();
    let envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).chain([std::ptr::null()]).collect();
    let plan = Plan {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        run_as: launch.run_as,
        death_signal: launch.death_signal,
        parent: std::process::id() as i32,
        cgroup_procs: launch.cgroup_procs.map_or(-1, |fd| fd.as_raw_fd()),
        stdin,
        stdout,
        stderr,
        failed_step: AtomicI32::new(0),
        errno: AtomicI32::new(0),
    };
    // The child's own stack (it shares our memory, not our stack): 64 KiB, 16-byte aligned, of
    // which it uses a few hundred bytes at the top. Left uninitialized: zeroing it would touch
    // (fault in) sixteen pages for nothing.
    let mut stack: Vec<std::mem::MaybeUninit<u128>> = Vec::with_capacity(4096);
    let pid = {
        // No handler of ours may run in the child: every signal is blocked around the clone,
        // and the child resets the handlers before it unblocks them.
        let _blocked = BlockedSignals::all()?;
        // SAFETY: `stack` is writable memory of ours that outlives the child's use of it (we are
        // suspended until the child execs or exits: CLONE_VFORK); `child` touches only `plan`,
        // which also outlives that, and its own stack; SIGCHLD makes it an ordinary child that
        // we reap with waitpid(2).
        unsafe {
            let top = stack.as_mut_ptr().add(stack.capacity()).cast::<libc::c_void>();
            libc::clone(
                child,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&plan as *const Plan).cast_mut().cast(),
            )
        }
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let step = plan.failed_step.load(Ordering::SeqCst);
    if step != 0 {
        let errno = plan.errno.load(Ordering::SeqCst);
        let _ = wait_status(pid as u32);
        let what = STEPS.get(step as usize).copied().unwrap_or("a step");
        let e = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(e.kind(), format!("{what} failed in the child: {e}")));
    }
    Ok(pid as u32)
}

/// The number the child moves to 0, 1 or 2: `fd` itself when it is 3 or above, else a copy
/// numbered above 2 (close-on-exec: std's `try_clone`), kept open in `copies` until the spawn
/// is over.
fn above_stdio(fd: BorrowedFd<'_>, copies: &mut Vec<std::os::fd::OwnedFd>) -> io::Result<i32> {
    if fd.as_raw_fd() >= 3 {
        return Ok(fd.as_raw_fd());
    }
    let copy = fd.try_clone_to_owned()?;
    let raw = copy.as_raw_fd();
    copies.push(copy);
    Ok(raw)
}

fn pair(k: &OsStr, v: &OsStr) -> OsString {
    let mut kv = k.to_os_string().into_vec();
    kv.push(b'=');
    kv.extend_from_slice(v.as_bytes());
    OsString::from_vec(kv)
}

/// Waits for child `pid` to exit and reaps it.
pub fn wait_status(pid: u32) -> io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on one pid, writing into a local that outlives the call.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        if rc == pid as i32 {
            return Ok(std::process::ExitStatus::from_raw(status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The calling thread's signal mask with every signal blocked, restored on drop.
struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    fn all() -> io::Result<BlockedSignals> {
        // SAFETY: sigfillset(3) and pthread_sigmask(3) write into locals that outlive the calls.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(BlockedSignals(old))
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores a mask pthread_sigmask(3) gave us; nothing is written.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// The kernel's `struct sigaction`, large enough for every architecture's layout (handler,
/// flags, restorer, mask): all zero is `SIG_DFL` with no flags everywhere.
type KernelSigaction = [u64; 4];
/// The kernel's sigset size (64 signals).
const SIGSET_SIZE: libc::c_long = 8;

/// The child, between clone and exec. Only raw system calls on memory prepared by [`spawn`]
/// (and locals): no allocation, no lock, no libc wrapper with process-wide state.
extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Plan` the parent keeps alive until we exec or exit (CLONE_VFORK).
    let plan = unsafe { &*(arg as *const Plan) };
    let result = prepare_and_exec(plan);
    if let Err((step, errno)) = result {
        plan.errno.store(errno, Ordering::SeqCst);
        plan.failed_step.store(step, Ordering::SeqCst);
    }
    // SAFETY: exit_group(2) ends this child (its own thread group); it does not return.
    unsafe { libc::syscall(libc::SYS_exit_group, 127) };
    127
}

/// The child's steps; returns only on failure, with the step's index in [`STEPS`] and errno.
fn prepare_and_exec(plan: &Plan) -> Result<(), (i32, i32)> {
    let check = |step: i32, rc: libc::c_long| if rc < 0 { Err((step, errno())) } else { Ok(()) };
    // SAFETY (for each system call below): integer arguments, or pointers to locals of this
    // function or to the parent's prepared buffers, all alive for the call.
    unsafe {
        // Our handlers must never run here; ignored signals stay ignored across exec except
        // SIGPIPE, which std ignores for itself (as std's own spawn does).
        let dfl: KernelSigaction = [0; 4];
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old: KernelSigaction = [0; 4];
            let no_new = std::ptr::null::<KernelSigaction>();
            if libc::syscall(libc::SYS_rt_sigaction, long(sig), no_new, &mut old, SIGSET_SIZE) != 0 {
                continue;
            }
            let handled = old[0] > 1; // neither SIG_DFL (0) nor SIG_IGN (1)
            if handled || (sig == libc::SIGPIPE && old[0] == 1) {
                let no_old = std::ptr::null_mut::<KernelSigaction>();
                libc::syscall(libc::SYS_rt_sigaction, long(sig), &dfl, no_old, SIGSET_SIZE);
            }
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            long(libc::SIG_SETMASK),
            &empty,
            std::ptr::null_mut::<u64>(),
            SIGSET_SIZE,
        );

        // The sources are 3 or above (see `spawn`), so none is overwritten by another;
        // dup3 leaves the copies open across exec.
        check(1, libc::syscall(libc::SYS_dup3, long(plan.stdin), 0 as libc::c_long, 0 as libc::c_long))?;
        if plan.stdout >= 0 {
            check(1, libc::syscall(libc::SYS_dup3, long(plan.stdout), 1 as libc::c_long, 0 as libc::c_long))?;
        }
        check(1, libc::syscall(libc::SYS_dup3, long(plan.stderr), 2 as libc::c_long, 0 as libc::c_long))?;
        if plan.cgroup_procs >= 0 {
            let mut digits = [0u8; 12];
            let line = pid_line(libc::syscall(libc::SYS_getpid) as u32, &mut digits);
            let n = libc::syscall(libc::SYS_write, long(plan.cgroup_procs), line.as_ptr(), line.len() as libc::c_long);
            check(2, n)?;
        }
        if let Some((uid, gid)) = plan.run_as {
            check(3, libc::syscall(libc::SYS_setgid, gid as libc::c_long))?;
            check(4, libc::syscall(libc::SYS_setgroups, 0 as libc::c_long, std::ptr::null::<libc::gid_t>()))?;
            check(5, libc::syscall(libc::SYS_setuid, uid as libc::c_long))?;
        }
        // After the uid change, which clears it.
        let pdeathsig = (long(libc::PR_SET_PDEATHSIG), long(plan.death_signal));
        check(
            6,
            libc::syscall(
                libc::SYS_prctl,
                pdeathsig.0,
                pdeathsig.1,
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            ),
        )?;
        if libc::syscall(libc::SYS_getppid) as i32 != plan.parent {
            return Err((6, libc::ESRCH));
        }
        libc::syscall(libc::SYS_execve, plan.program, plan.argv, plan.envp);
    }
    Err((7, errno()))
}

/// A system call argument: every integer goes as a full `long` (a variadic `int` would leave
/// the register's upper half undefined).
fn long(v: i32) -> libc::c_long {
    libc::c_long::from(v)
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// `pid\n` in `buf`, without allocating.
pub(super) fn pid_line(mut pid: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut at = buf.len() - 1;
    buf[at] = b'\n';
    loop {
        at -= 1;
        buf[at] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    /// `program args` as ourselves, no environment change, every standard descriptor on
    /// `devnull` but stdout (ours), SIGKILL when the spawning thread dies.
    fn quiet<'a>(program: &'a str, args: &'a [OsString], devnull: &'a std::fs::File) -> Launch<'a> {
        Launch {
            program: Path::new(program),
            args,
            env: &[],
            run_as: None,
            death_signal: libc::SIGKILL,
            cgroup_procs: None,
            stdin: devnull.as_fd(),
            stdout: None,
            stderr: devnull.as_fd(),
        }
    }

    /// Runs `program args` through [`spawn`] with `run_as`; returns what it wrote to stdout
    /// and stderr, and how it exited.
    fn run(program: &str, args: &[&str], env: &[(&str, Option<&str>)], run_as: Option<(u32, u32)>) -> (String, i32) {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let (mut r, w) = std::io::pipe().unwrap();
        let args: Vec<OsString> = args.iter().map(|a| a.into()).collect();
        let out = Some(w.as_fd());
        let launch = Launch { env, run_as, stdout: out, stderr: w.as_fd(), ..quiet(program, &args, &devnull) };
        let pid = spawn(&launch).unwrap();
        drop(w);
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        let status = wait_status(pid).unwrap();
        (out, status.code().unwrap_or(-1))
    }

    /// One hexadecimal mask line of /proc/self/status (`SigBlk:`, `SigIgn:`) as printed.
    fn mask(out: &str, name: &str) -> u64 {
        let line = out.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name} in {out}"));
        u64::from_str_radix(line.trim(), 16).unwrap()
    }

    #[test]
    fn the_child_gets_our_environment_with_the_changes_stdin_null_and_a_clean_signal_state() {
        // A signal blocked in the spawning thread must not stay blocked in the child; SIGPIPE,
        // which the Rust runtime ignores, must be back to its default.
        // SAFETY: pthread_sigmask(3) on this test thread's own mask, with locals.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        // SAFETY (set_var): no other thread of this test binary reads this variable.
        unsafe { std::env::set_var("COMPUTE_CTL_SPAWN_B", "inherited") };
        let env = [("COMPUTE_CTL_SPAWN_A", Some("set")), ("COMPUTE_CTL_SPAWN_B", None)];
        let script =
            "echo \"A=$COMPUTE_CTL_SPAWN_A B=${COMPUTE_CTL_SPAWN_B-unset}\" >&2; readlink /proc/self/fd/0; exit 3";
        let (out, code) = run("/bin/sh", &["-c", script], &env, None);
        assert_eq!(code, 3, "{out}");
        assert!(out.contains("A=set B=unset"), "{out}");
        assert!(out.contains("/dev/null"), "stdin is not /dev/null: {out}");
        // grep, not a shell: dash clears its signal mask itself.
        let (out, code) = run("/bin/grep", &["-E", "^Sig(Blk|Ign):", "/proc/self/status"], &[], None);
        assert_eq!(code, 0, "{out}");
        assert_eq!(mask(&out, "SigBlk:"), 0, "signals still blocked in the child: {out}");
        assert_eq!(mask(&out, "SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE still ignored: {out}");
    }

    #[test]
    fn as_root_the_child_runs_as_the_user_given_without_our_groups() {
        // SAFETY: getuid(2) takes nothing.
        if unsafe { libc::getuid() } != 0 {
            eprintln!("not root: the uid change cannot be tested");
            return;
        }
        let (out, code) = run("/bin/sh", &["-c", "echo $(id -u) $(id -g) $(id -G)"], &[], Some((4321, 4322)));
        assert_eq!((out.trim(), code), ("4321 4322 4322", 0));
    }

    #[test]
    fn a_program_that_cannot_be_run_is_an_error_naming_the_exec() {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let e = spawn(&quiet("/nonexistent/compute_ctl-test/postgres", &[], &devnull)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().starts_with("exec failed in the child"), "{e}");
    }

    #[test]
    fn the_child_dies_with_the_thread_that_spawned_it() {
        // The parent-death signal follows the spawning thread (as after fork); compute_ctl
        // spawns the postmaster on its main thread, which lives as long as the process.
        let pid = std::thread::spawn(|| {
            let devnull = std::fs::File::open("/dev/null").unwrap();
            spawn(&quiet("/bin/sleep", &["30".into()], &devnull)).unwrap()
        })
        .join()
        .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(wait_status(pid).unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn pid_lines() {
        let mut buf = [0u8; 12];
        assert_eq!(pid_line(0, &mut buf), b"0\n");
        assert_eq!(pid_line(u32::MAX, &mut buf), b"4294967295\n");
    }
}
