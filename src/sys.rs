//! The few system calls std does not offer. This is the only module with `unsafe`: each block
//! is one libc call with plain integer arguments (or a pointer to a local), so its safety
//! argument is local. `libc` is already in the tree through `signal-hook`.
#![allow(unsafe_code)]

use std::io;

pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGQUIT};

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Blocks until child `pid` has exited, without reaping it, so that its pid stays reserved
/// (a zombie) until the caller reaps it under its own lock: a signal sent by pid before that
/// can never reach a recycled process.
pub fn wait_exited_nowait(pid: u32) -> io::Result<()> {
    loop {
        // SAFETY: `info` is a zeroed local that waitid(2) fills in; the pointer outlives the call.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Makes the child `cmd` spawns get `signal` when compute_ctl dies, even by SIGKILL, so it
/// never outlives us; the spawn fails if compute_ctl is already gone by then. Safe for every
/// caller: the only thing it installs between fork and exec is [`set_parent_death_signal`],
/// which captures two integers and calls two async-signal-safe functions. std runs the hook
/// after the uid change (which would clear the setting).
pub fn die_with_parent(cmd: &mut std::process::Command, signal: i32) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: `pre_exec` is unsafe because the closure runs in the forked child, where only
    // async-signal-safe functions may be called; this one calls prctl(2) and getppid(2) and
    // allocates nothing (an `io::Error` made from errno is a plain integer).
    unsafe {
        cmd.pre_exec(move || set_parent_death_signal(signal, parent));
    }
}

/// In a child between fork and exec: ask the kernel to send `signal` to this process when its
/// parent dies. Returns an error if the parent is already gone.
fn set_parent_death_signal(signal: i32, parent: u32) -> io::Result<()> {
    // SAFETY: prctl(2) with PR_SET_PDEATHSIG takes integers only; getppid(2) takes none. Both
    // are async-signal-safe, as required between fork and exec.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() as u32 != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// The pids of our zombie children: processes in state `Z` whose parent is us, read from
/// `/proc` (which must be this PID namespace's `/proc`, as in a container).
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so split after
        // the last `)`.
        let mut rest = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace();
        let (Some(state), Some(ppid)) = (rest.next(), rest.next().and_then(|p| p.parse::<u32>().ok())) else {
            continue;
        };
        if state == "Z" && ppid == me {
            out.push(pid);
        }
    }
    out
}

/// Reaps zombie child `pid` if it still is one; true when it was reaped here.
pub fn reap(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    // SAFETY: waitpid(2) on one pid with WNOHANG; a null status pointer is allowed.
    let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    rc == pid
}

/// When compute_ctl is PID 1 (a container's entrypoint), orphans anywhere in the container are
/// re-parented to it and, unless it reaps them, stay zombies forever. This thread reaps every
/// zombie child that is not ours: each second it lists the zombie children, and reaps those
/// already seen a second earlier that `is_ours` does not claim. Our own children (the
/// postmaster, `initdb`, `pg_dump`, …) are always waited for by their owner right away, so one
/// still unreaped after a second has no waiter; the postmaster is also excluded by pid, since
/// its reaper holds the zombie on purpose for a moment (see `wait_exited_nowait`).
pub fn spawn_orphan_reaper(is_ours: impl Fn(u32) -> bool + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new().name("pid1-reaper".into()).spawn(move || {
        let mut seen: Vec<u32> = Vec::new();
        loop {
            let now: Vec<u32> = zombie_children().into_iter().filter(|p| !is_ours(*p)).collect();
            for pid in &now {
                if seen.contains(pid) && reap(*pid) {
                    log::info!("reaped orphaned process {pid}");
                }
            }
            seen = now;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    })?;
    Ok(())
}
