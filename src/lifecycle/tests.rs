//! [`step`] for every event in every state, with a stand-in for Postgres: shell scripts named
//! `initdb` and `postgres` that make a PG_VERSION, write a `postmaster.pid` that says `ready`,
//! and exit 0 on SIGINT (a fast shutdown) or 7 on SIGTERM (an exit of its own). No Postgres,
//! no network: the connection string points at a closed port, so a live reconfiguration fails
//! at its first query.

use super::*;
use crate::postgres::{Node, process};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

// The traps come before `ready`, as Postgres sets its signal handlers before it writes it: a
// stop sent at once must find them (compute_ctl sees `ready` as soon as it is written).
const POSTGRES: &str = r#"#!/bin/sh
trap 'exit 0' INT
trap 'exit 7' TERM
printf '%s\n%s\n0\n0\n\n\n\nready\n' "$$" "$2" > "$2/postmaster.pid"
while :; do sleep 0.02; done
"#;
const INITDB_OK: &str = "#!/bin/sh\necho 15 > \"$2/PG_VERSION\"\n";
const INITDB_FAILS: &str = "#!/bin/sh\necho 'initdb: stand-in refuses' >&2\nexit 1\n";

/// A temporary node with the stand-in binaries; removed on drop.
struct Fake {
    dir: PathBuf,
    shared: Shared,
    parts: Option<Parts>,
}

impl Fake {
    fn new(name: &str, initdb: &str) -> Fake {
        let dir = std::env::temp_dir().join(format!("cc-step-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("pgdata")).unwrap();
        for (file, text) in [("postgres", POSTGRES), ("initdb", initdb)] {
            let p = dir.join("bin").join(file);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let node = Node {
            pgdata: dir.join("pgdata"),
            bindir: dir.join("bin"),
            connstr: "host=127.0.0.1 port=1 user=cloud_admin dbname=postgres connect_timeout=2".into(),
            run_as: None,
            internal_http_port: 3081,
            privileged_role: "neon_superuser".into(),
            interrupted: Arc::new(AtomicBool::new(false)),
            tls: None,
        };
        let shared = Shared::new();
        let parts = Parts {
            node,
            shared: shared.clone(),
            postmaster: Arc::new(Mutex::new(None)),
            on_postgres_exit: Arc::new(|_| {}),
            notifier: Arc::new(crate::notify::Notifier::disabled()),
            pre_stop_checkpoint: std::time::Duration::ZERO,
            refresh: None,
            rsyslog: crate::rsyslog::Settings::new(dir.join("rsyslog.d"), |_| None),
            extensions: Arc::new(crate::remote_ext::Installer::new(None, std::path::Path::new("/nowhere"))),
        };
        Fake { dir, shared, parts: Some(parts) }
    }

    /// The first state; the published status must agree with it after every step.
    fn empty(&mut self) -> State {
        State::new(self.parts.take().expect("one State per Fake"))
    }

    fn step(&self, state: State, event: Event) -> (State, Reply) {
        let (next, reply) = step(state, event);
        assert_eq!(self.shared.get().status, next.status(), "the new state is published");
        (next, reply)
    }

    fn running(&mut self) -> State {
        let empty = self.empty();
        let (s, r) = self.step(empty, Event::Init(spec()));
        assert_eq!((s.status(), r), (Status::Running, Reply::Done));
        s
    }

    /// A live reconfiguration that failed: Postgres (the stand-in) still runs.
    fn failed_live(&mut self) -> State {
        let running = self.running();
        let (s, r) = self.step(running, Event::Configure(spec()));
        assert!(matches!(r, Reply::Failed(_)), "{r:?}");
        assert_eq!((s.status(), s.exit()), (Status::Failed, None));
        s
    }

    fn terminated(&mut self) -> State {
        let empty = self.empty();
        let (s, r) = self.step(empty, Event::Terminate(Termination::Fast));
        assert_eq!((s.status(), r), (Status::Terminated, Reply::Terminated { lsn: None }));
        s
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec() -> ParsedSpec {
    ParsedSpec::parse(
        r#"{"format_version":1.0,"skip_pg_catalog_updates":true,"cluster":{"roles":[],"databases":[]},
        "tenant_id":"b0554b632bd4d547a63b86c3630317e8","timeline_id":"2414a61ffc94e428f14b5758fe308e13"}"#,
    )
    .unwrap()
}

fn postmaster_pid(state: &State) -> u32 {
    match state {
        State::Running(r) => r.postmaster_pid(),
        State::Failed(f) => f.postmaster_pid().expect("Postgres runs"),
        _ => panic!("no postmaster in {}", state.status()),
    }
}

/// Postgres exits by itself (the stand-in exits 7 on SIGTERM); returns once its reaper has
/// seen the exit, which is when the real `PostgresExited` event is sent.
fn exit_by_itself(state: &State) {
    let pid = postmaster_pid(state);
    crate::sys::kill(pid, libc::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let exited = || match state {
        State::Failed(f) => !f.postgres_running(),
        // The reaper records the exit status before it sends the real event.
        State::Running(r) => !r.postgres_alive(),
        _ => gone(pid),
    };
    while !exited() {
        assert!(std::time::Instant::now() < deadline, "the stand-in did not exit on SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Postgres exits by itself with code 7: the compute ends with that code, at once. `name`
/// names the fake compute, brought to the state under test by `to`.
fn ends_with_postgres_exit_code(name: &str, to: fn(&mut Fake) -> State) {
    let mut f = Fake::new(name, INITDB_OK);
    let s = to(&mut f);
    exit_by_itself(&s);
    let (s, _) = f.step(s, Event::PostgresExited);
    assert_eq!((s.status(), s.exit()), (Status::Terminated, Some(Exit { code: 7, linger: Linger::No })));
}

/// SIGTERM ends the compute in `s` (stopping Postgres), with exit code 1.
fn ends_on_sigterm(f: &Fake, s: State) {
    let (s, _) = f.step(s, Event::Signal(15));
    assert_eq!((s.status(), s.exit()), (Status::Terminated, Some(Exit { code: 1, linger: Linger::No })));
}

/// Each of `events` is refused with `WrongState` and changes nothing.
fn refuses(f: &Fake, mut s: State, events: Vec<Event>) -> State {
    let status = s.status();
    for event in events {
        let (next, r) = f.step(s, event);
        assert_eq!((next.status(), r), (status, Reply::WrongState(status)));
        s = next;
    }
    s
}

fn gone(pid: u32) -> bool {
    !process::pid_alive(pid)
}

#[test]
fn empty_starts_on_init_and_on_configure() {
    let mut f = Fake::new("empty-init", INITDB_OK);
    let s = f.running();
    assert_eq!(s.exit(), None);
    let pid = postmaster_pid(&s);
    drop(s);
    assert!(gone(pid), "dropping the state stops Postgres");

    let mut f = Fake::new("empty-configure", INITDB_OK);
    let empty = f.empty();
    let (s, r) = f.step(empty, Event::Configure(spec()));
    assert_eq!((s.status(), r), (Status::Running, Reply::Done));
}

#[test]
fn empty_refuses_queries_ignores_exits_and_ends_on_terminate_or_signal() {
    let mut f = Fake::new("empty-rest", INITDB_OK);
    let empty = f.empty();
    let (s, r) = f.step(empty, Event::Query);
    assert_eq!((s.status(), r), (Status::Empty, Reply::WrongState(Status::Empty)));
    let (s, r) = f.step(s, Event::Restart);
    assert_eq!((s.status(), r), (Status::Empty, Reply::WrongState(Status::Empty)));
    let (s, r) = f.step(s, Event::PostgresExited);
    assert_eq!((s.status(), r), (Status::Empty, Reply::Done));
    let (s, r) = f.step(s, Event::Signal(15));
    assert_eq!((s.status(), r), (Status::Terminated, Reply::Terminated { lsn: None }));
    assert_eq!(s.exit(), Some(Exit { code: 1, linger: Linger::No }));

    let mut f = Fake::new("empty-terminate", INITDB_OK);
    let s = f.terminated();
    assert_eq!(s.exit(), Some(Exit { code: 0, linger: Linger::ExitDelay }));
}

#[test]
fn a_failed_start_is_final_and_refuses_everything() {
    let mut f = Fake::new("failed-start", INITDB_FAILS);
    let empty = f.empty();
    let (s, r) = f.step(empty, Event::Init(spec()));
    let Reply::Failed(msg) = r else { panic!("{r:?}") };
    assert!(msg.contains("stand-in refuses"), "{msg}");
    assert_eq!(f.shared.get().error.as_deref(), Some(msg.as_str()), "the error is published");
    assert_eq!((s.status(), s.exit()), (Status::Failed, Some(Exit { code: 1, linger: Linger::ExitDelay })));
    let s = refuses(
        &f,
        s,
        vec![
            Event::Init(spec()),
            Event::Configure(spec()),
            Event::Terminate(Termination::Fast),
            Event::Query,
            Event::Restart,
        ],
    );
    // The exit of the Postgres a failed start stopped arrives after it: nothing changes.
    let (s, r) = f.step(s, Event::PostgresExited);
    assert_eq!((s.status(), r), (Status::Failed, Reply::Done));
    ends_on_sigterm(&f, s);
}

#[test]
fn running_answers_queries_refuses_init_and_fails_a_live_configure_with_postgres_up() {
    let mut f = Fake::new("running", INITDB_OK);
    let s = f.running();
    let (s, r) = f.step(s, Event::Query);
    assert_eq!((s.status(), r), (Status::Running, Reply::Done));
    let (s, r) = f.step(s, Event::Init(spec()));
    assert_eq!((s.status(), r), (Status::Running, Reply::WrongState(Status::Running)));
    // A restart (local storage) replaces the postmaster; the old one's exit event is stale.
    let old = postmaster_pid(&s);
    let (s, r) = f.step(s, Event::Restart);
    assert_eq!((s.status(), r), (Status::Running, Reply::Done));
    assert!(gone(old) && postmaster_pid(&s) != old);
    let (s, r) = f.step(s, Event::PostgresExited);
    assert_eq!((s.status(), r), (Status::Running, Reply::Done));
    let pid = postmaster_pid(&s);
    let (s, r) = f.step(s, Event::Configure(spec()));
    let Reply::Failed(msg) = r else { panic!("{r:?}") };
    assert!(msg.contains("connect"), "{msg}");
    assert_eq!((s.status(), s.exit(), postmaster_pid(&s)), (Status::Failed, None, pid));
    assert!(f.shared.get().postgres_up);
}

#[test]
fn running_ends_on_terminate_signal_and_exit() {
    let mut f = Fake::new("running-terminate", INITDB_OK);
    let s = f.running();
    let pid = postmaster_pid(&s);
    let (s, r) = f.step(s, Event::Terminate(Termination::Fast));
    // No pg_controldata beside the stand-in: no LSN.
    assert_eq!((s.status(), r), (Status::Terminated, Reply::Terminated { lsn: None }));
    assert_eq!(s.exit(), Some(Exit { code: 0, linger: Linger::ExitDelay }));
    assert!(gone(pid) && !f.shared.get().postgres_up);

    // Neon's `immediate` stops Postgres the same way, and lingers only briefly.
    let mut f = Fake::new("running-immediate", INITDB_OK);
    let s = f.running();
    let (s, r) = f.step(s, Event::Terminate(Termination::Immediate));
    assert_eq!((s.status(), r), (Status::Terminated, Reply::Terminated { lsn: None }));
    assert_eq!(s.exit(), Some(Exit { code: 0, linger: Linger::Brief }));

    let mut f = Fake::new("running-signal", INITDB_OK);
    let s = f.running();
    ends_on_sigterm(&f, s);

    ends_with_postgres_exit_code("running-exit", Fake::running);
}

#[test]
fn failed_with_postgres_up_takes_a_new_spec_refuses_the_rest_and_ends_on_signal_or_exit() {
    let mut f = Fake::new("failed-live", INITDB_OK);
    let s = f.failed_live();
    let pid = postmaster_pid(&s);
    let (s, r) = f.step(s, Event::Configure(spec()));
    assert!(matches!(r, Reply::Failed(_)), "a corrected spec is tried (and fails here too): {r:?}");
    let s =
        refuses(&f, s, vec![Event::Init(spec()), Event::Terminate(Termination::Fast), Event::Query, Event::Restart]);
    // A stale exit event while Postgres still runs changes nothing.
    let (s, r) = f.step(s, Event::PostgresExited);
    assert_eq!((s.status(), r, postmaster_pid(&s)), (Status::Failed, Reply::Done, pid));
    ends_on_sigterm(&f, s);
    assert!(gone(pid));

    ends_with_postgres_exit_code("failed-live-exit", Fake::failed_live);
}

#[test]
fn terminated_refuses_everything_and_a_signal_ends_the_lingering() {
    let mut f = Fake::new("terminated", INITDB_OK);
    let s = f.terminated();
    let s = refuses(&f, s, vec![Event::Init(spec()), Event::Configure(spec()), Event::Query, Event::Restart]);
    // A repeated /terminate gets the first answer's LSN again (answered 201).
    let (s, r) = f.step(s, Event::Terminate(Termination::Immediate));
    assert_eq!(r, Reply::AlreadyTerminated { lsn: None });
    let (s, r) = f.step(s, Event::PostgresExited);
    assert_eq!((s.exit(), r), (Some(Exit { code: 0, linger: Linger::ExitDelay }), Reply::Done));
    let (s, r) = f.step(s, Event::Signal(15));
    assert_eq!(
        (s.status(), s.exit(), r),
        (Status::Terminated, Some(Exit { code: 0, linger: Linger::No }), Reply::Done)
    );
}

/// The certificate watcher's event: a live reconfiguration with the current spec when
/// running (here it fails at its first query, which shows it ran, with Postgres still up);
/// nothing in the other states.
#[test]
fn certificate_changed_reconfigures_only_a_running_compute() {
    let mut f = Fake::new("cert-empty", INITDB_OK);
    let empty = f.empty();
    let (s, r) = f.step(empty, Event::CertificateChanged);
    assert_eq!((s.status(), r), (Status::Empty, Reply::Done));

    let mut f = Fake::new("cert-running", INITDB_OK);
    let s = f.running();
    let pid = postmaster_pid(&s);
    let (s, r) = f.step(s, Event::CertificateChanged);
    let Reply::Failed(msg) = r else { panic!("{r:?}") };
    assert!(msg.contains("connect"), "{msg}");
    assert_eq!((s.status(), s.exit(), postmaster_pid(&s)), (Status::Failed, None, pid));
    // The watcher stops on `failed`; a late event changes nothing.
    let (s, r) = f.step(s, Event::CertificateChanged);
    assert_eq!((s.status(), r), (Status::Failed, Reply::Done));
    ends_on_sigterm(&f, s);

    let mut f = Fake::new("cert-terminated", INITDB_OK);
    let s = f.terminated();
    let (s, r) = f.step(s, Event::CertificateChanged);
    assert_eq!((s.status(), r), (Status::Terminated, Reply::Done));
}
