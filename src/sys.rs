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

/// In a child between fork and exec: ask the kernel to send `signal` to this process when its
/// parent dies, so that even a SIGKILLed compute_ctl leaves no Postgres behind. Must run after
/// the uid change (which clears the setting); returns an error if the parent is already gone.
pub fn set_parent_death_signal(signal: i32, parent: u32) -> io::Result<()> {
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

#[allow(dead_code)] // used by the PID 1 reaper (operational-surface issue)
/// When compute_ctl is PID 1: reaps one exited child that is not in `ours` (orphans that the
/// kernel re-parented to us), without touching the children that std's `Child::wait` owns.
/// Returns the reaped pid, or None when there is nothing to reap.
pub fn reap_one_orphan(ours: &dyn Fn(u32) -> bool) -> Option<u32> {
    // SAFETY: as in `wait_exited_nowait`; WNOHANG makes it return at once.
    let pid = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT | libc::WNOHANG);
        if rc != 0 {
            return None;
        }
        info.si_pid()
    };
    if pid <= 0 || ours(pid as u32) {
        return None;
    }
    // SAFETY: reaps exactly the zombie found above; a null status pointer is allowed.
    let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    (rc == pid).then_some(pid as u32)
}
