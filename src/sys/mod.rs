//! The few system calls std does not offer. This is the only module with `unsafe`: each block
//! is one libc call with plain integer arguments (or a pointer to a local), so its safety
//! argument is local; `spawn` (the postmaster's clone) argues its own. `libc` is already in the tree through `signal-hook`.
#![allow(unsafe_code)]

mod alloc;
mod spawn;

use std::io;

pub use alloc::LargeBlockCache;

pub use spawn::{Launch, spawn, wait_status};

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

/// Makes `cmd`'s child join the cgroup whose `cgroup.procs` is open as `file` before it
/// execs: the file is opened by the parent (so the open is checked with our credentials,
/// before the child drops to the Postgres user), and the child writes its own pid into it.
///
/// The closure registered below does only async-signal-safe things with memory prepared
/// before the fork (getpid, write to an already open descriptor), so the function is safe for
/// every caller: nothing a caller passes can make the child allocate or lock. The descriptor
/// is close-on-exec and closed in the parent when `cmd` is dropped.
pub fn join_cgroup_before_exec(cmd: &mut std::process::Command, file: std::fs::File) {
    use std::os::unix::io::AsRawFd;
    use std::os::unix::process::CommandExt;
    let hook = move || {
        let fd = file.as_raw_fd();
        // SAFETY: getpid(2) takes nothing.
        let pid = unsafe { libc::getpid() } as u32;
        let mut digits = [0u8; 12];
        let line = spawn::pid_line(pid, &mut digits);
        // SAFETY: write(2) of a stack buffer to a descriptor we own; both outlive the call.
        let n = unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
        if n == line.len() as isize { Ok(()) } else { Err(io::Error::last_os_error()) }
    };
    // SAFETY: `hook` runs between fork and exec, where only async-signal-safe calls are
    // allowed: it calls getpid and write on memory that exists before the fork, and nothing
    // else (no allocation, no lock, no panic path: the arithmetic cannot overflow).
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// A watch on one directory (not its subdirectories) for files created, written, closed
/// after writing, renamed into it or removed: how the start notices at once that Postgres
/// wrote `ready` into `postmaster.pid`, instead of on a polling tick.
///
/// Dropping it removes the watch but does not close the inotify instance: the descriptor goes
/// back to [`SPARE_INOTIFY`] for the next watch. Closing an inotify descriptor blocks until the
/// kernel has freed its marks (`fsnotify_destroy_group` waits for an SRCU grace period): 10 to
/// 20 ms measured here, which the start paid between seeing `ready` and publishing `running`.
/// Removing a watch (inotify_rm_watch(2)) leaves that freeing to a kernel worker and returns
/// at once.
pub struct DirWatch {
    fd: Option<std::os::fd::OwnedFd>,
    wd: i32,
}

/// inotify descriptors without a watch, kept open for reuse (see [`DirWatch`]); at most as many
/// as watches ever existed at the same time (one per start or restart: usually one).
static SPARE_INOTIFY: std::sync::Mutex<Vec<std::os::fd::OwnedFd>> = std::sync::Mutex::new(Vec::new());

impl DirWatch {
    pub fn new(dir: &std::path::Path) -> io::Result<DirWatch> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let spare = crate::locks::lock(&SPARE_INOTIFY).pop();
        let fd = match spare {
            Some(fd) => {
                // Events left from its last watch (IN_IGNORED at least) would only cost one
                // needless look at the directory; drop them anyway.
                drain(fd.as_raw_fd());
                fd
            }
            None => {
                // SAFETY: inotify_init1(2) takes integer flags only.
                let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
                if raw < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `raw` is a descriptor we just opened and own alone.
                unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) }
            }
        };
        let mask = libc::IN_MODIFY | libc::IN_CLOSE_WRITE | libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_DELETE;
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
        if wd < 0 {
            let err = io::Error::last_os_error();
            crate::locks::lock(&SPARE_INOTIFY).push(fd);
            return Err(err);
        }
        Ok(DirWatch { fd: Some(fd), wd })
    }

    /// Waits until something changed in the directory, at most `timeout`; the pending
    /// events are consumed. True when there was a change.
    pub fn wait(&self, timeout: std::time::Duration) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let fd = self.fd.as_ref().expect("the descriptor is taken only by drop").as_raw_fd();
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one pollfd, a local that outlives the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(err) };
        }
        if rc == 0 {
            return Ok(false);
        }
        // The events only say "look again"; drain them and let the caller read.
        drain(fd);
        Ok(true)
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let Some(fd) = self.fd.take() else { return };
        // SAFETY: inotify_rm_watch(2) takes two integers. If it fails (the directory's watch
        // is already gone, e.g. the directory was removed) the descriptor has no watch anyway.
        unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), self.wd) };
        crate::locks::lock(&SPARE_INOTIFY).push(fd);
    }
}

/// Reads (non-blocking) and discards the pending events of inotify descriptor `fd`.
fn drain(fd: i32) {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads at most `buf.len()` bytes into a local buffer that outlives the call.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
    }
}

/// Puts the calling thread in the `SCHED_BATCH` policy: when it wakes it does not preempt the
/// running thread (Postgres), it waits for its turn; its share of the CPU is unchanged.
pub fn batch_scheduling() -> io::Result<()> {
    // The system call itself, not libc's wrapper: musl's sched_setscheduler always fails
    // (ENOSYS), since POSIX means the process and Linux sets one thread.
    let priority: libc::c_int = 0;
    // SAFETY: sched_setscheduler(2) on the calling thread (0) with a pointer to a local
    // `struct sched_param` (one int) that outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_sched_setscheduler, 0 as libc::c_long, libc::SCHED_BATCH as libc::c_long, &priority)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Fills `buf` from the kernel's random generator (getrandom(2): one system call, no file to
/// open, unlike /dev/urandom).
pub fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`, which outlives the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A watch made after another was dropped (and may reuse its descriptor) wakes for its own
    /// directory only.
    #[test]
    fn a_watch_after_a_dropped_one_sees_its_own_directory_only() {
        let root = std::env::temp_dir().join(format!("compute_ctl-dirwatch-{}", std::process::id()));
        let (a, b) = (root.join("a"), root.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let first = DirWatch::new(&a).unwrap();
        std::fs::write(a.join("f"), b"1").unwrap();
        assert!(first.wait(Duration::from_secs(10)).unwrap(), "a write in a was not seen");
        drop(first);

        let second = DirWatch::new(&b).unwrap();
        std::fs::write(a.join("f"), b"2").unwrap();
        assert!(!second.wait(Duration::from_millis(100)).unwrap(), "a write in a woke the watch on b");
        std::fs::write(b.join("f"), b"3").unwrap();
        assert!(second.wait(Duration::from_secs(10)).unwrap(), "a write in b was not seen");
        drop(second);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
