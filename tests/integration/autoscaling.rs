//! AUTOSCALING: the vm-monitor against a test agent, and Postgres in the memory cgroup, with
//! the real binary and a real Postgres. The cgroup is a directory imitating one
//! (`--cgroup-root`), except in the test that uses a real cgroup v2 directory. compute_ctl
//! gets a `PATH` without `cgexec` (it writes `cgroup.procs` itself), or with the stand-in of
//! `support::cgexec` in the tests of the `cgexec` way.

use crate::support::agent::{Agent, Frame};
use crate::support::cgexec::{self, Cgexec};
use crate::support::{self, Compute, Setup, http};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(10);

/// A compute with AUTOSCALING set, its imitation cgroup and its vm-monitor port.
struct Auto {
    s: Setup,
    cgroup: PathBuf,
    vm_port: u16,
    c: Compute,
    /// The stand-in `cgexec` on compute_ctl's `PATH`, if any (else `PATH` has none).
    cgexec: Option<Cgexec>,
}

fn write_stat(cgroup: &Path, anon: u64) {
    // Whole-file replacement, as the kernel's file always reads whole.
    let tmp = cgroup.join("memory.stat.tmp");
    let half = anon / 2;
    std::fs::write(&tmp, format!("anon {anon}\nfile 4096\nactive_anon {half}\ninactive_anon {}\n", anon - half))
        .unwrap();
    std::fs::rename(&tmp, cgroup.join("memory.stat")).unwrap();
}

impl Auto {
    fn start(name: &str) -> Auto {
        Auto::start_with(name, |_| {})
    }

    fn start_with(name: &str, tweak: impl FnOnce(&mut Vec<String>)) -> Auto {
        Auto::launch(name, tweak, false)
    }

    /// With the stand-in `cgexec` on compute_ctl's `PATH`.
    fn start_cgexec(name: &str) -> Auto {
        Auto::launch(name, |_| {}, true)
    }

    fn launch(name: &str, tweak: impl FnOnce(&mut Vec<String>), with_cgexec: bool) -> Auto {
        let s = Setup::new(name);
        let root = s.dir.join("cgroup-root");
        let cgroup = cgexec::imitation_cgroup(&root, "neon-postgres");
        write_stat(&cgroup, 10 * MIB);
        let cgexec = with_cgexec.then(|| Cgexec::new(&s.dir.path, &root));
        let path = cgexec.as_ref().map_or_else(cgexec::path_without_cgexec, Cgexec::path);
        let vm_port = support::free_port();
        let mut args = s.args();
        args.extend([
            "--cgroup-root".into(),
            root.to_str().unwrap().into(),
            "--vm-monitor-addr".into(),
            format!("127.0.0.1:{vm_port}"),
        ]);
        tweak(&mut args);
        let mut c = Compute::spawn_env(&args, s.http_port, &[("AUTOSCALING", "1"), ("PATH", &path)]);
        c.wait_running();
        Auto { s, cgroup, vm_port, c, cgexec }
    }

    /// `/status`'s `vm_monitor` once the monitor has started.
    fn wait_monitor(&mut self) -> serde_json::Value {
        let deadline = Instant::now() + T;
        loop {
            let st = self.c.status().unwrap_or_default();
            let vm = &st["vm_monitor"];
            if !vm["listening"].is_null() || !vm["error"].is_null() {
                return vm.clone();
            }
            assert!(Instant::now() < deadline, "no vm_monitor in /status: {st}\n{}", self.c.log_text());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn agent(&mut self) -> Agent {
        self.wait_monitor();
        let mut a = Agent::connect(self.vm_port);
        a.negotiate();
        a
    }

    fn metrics(&self) -> String {
        http::get(self.s.http_port, "/metrics").text()
    }

    fn metric(&self, line_start: &str) -> Option<String> {
        self.metrics().lines().find_map(|l| l.strip_prefix(line_start).map(|v| v.trim().to_string()))
    }
}

/// Downscale requests until the monitor has enough samples to judge; the reply.
fn downscale(a: &mut Agent, mem: u64, id: &mut u64, until: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + T;
    loop {
        *id += 2;
        let r = a.call("DownscaleRequest", json!({"target": {"cpu": 0.25, "mem": mem}}), *id);
        assert_eq!(r["type"], "DownscaleResult", "{r}");
        if until(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "no such downscale result in time, last: {r}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vm_monitor_negotiates_and_echoes_health_checks() {
    let mut x = Auto::start("vm-health");
    let mut a = x.agent();
    for id in [2u64, 4, 6] {
        let r = a.call("HealthCheck", json!({}), id);
        assert_eq!(r, json!({"type": "HealthCheck", "id": id}));
    }
    // A websocket ping is answered with the same payload.
    a.send_frame(true, 9, b"hi");
    assert_eq!(a.recv(T), Some(Frame::Pong(b"hi".to_vec())));
    // A message in fragments, with a ping in between.
    let msg = br#"{"type":"HealthCheck","content":{},"id":8}"#;
    a.send_frame(false, 1, &msg[..10]);
    a.send_frame(true, 9, b"");
    a.send_frame(true, 0, &msg[10..]);
    assert_eq!(a.recv(T), Some(Frame::Pong(Vec::new())));
    assert_eq!(a.recv_json(T), json!({"type": "HealthCheck", "id": 8}));
    assert_eq!(x.metric("compute_ctl_vm_monitor_agent_connected ").as_deref(), Some("1"));
    assert_eq!(x.metric("compute_ctl_vm_monitor_listening ").as_deref(), Some("1"));
    // Other paths and plain GETs are not websockets.
    assert_eq!(http::get(x.vm_port, "/monitor").status, 426);
    assert_eq!(http::get(x.vm_port, "/other").status, 404);
}

#[test]
fn downscale_is_approved_when_it_fits_and_denied_with_the_reason() {
    let mut x = Auto::start("vm-downscale");
    let mut a = x.agent();
    let mut id = 0;
    // 10 MiB in use; 1 GiB leaves a threshold of 785.4 MiB.
    let ok = downscale(&mut a, 1 << 30, &mut id, |r| r["Ok"] == true);
    let status = ok["Status"].as_str().unwrap();
    assert!(
        status.starts_with(
            "approved: new threshold 785.4 MiB (85% of 924 MiB usable of 1024 MiB) covers current usage 10 MiB"
        ),
        "{status}"
    );
    assert!(status.contains("the neon extension is not loaded"), "vanilla Postgres: {status}");
    let threshold = (924.0 * MIB as f64 * 0.85) as u64;
    assert_eq!(x.metric("compute_ctl_vm_monitor_memory_threshold_bytes "), Some(threshold.to_string()));
    // 900 MiB in use: a downscale to 1 GiB no longer fits.
    write_stat(&x.cgroup, 900 * MIB);
    let denied = downscale(&mut a, 1 << 30, &mut id, |r| r["Status"].as_str().unwrap().contains("900 MiB"));
    assert_eq!(denied["Ok"], false);
    assert_eq!(
        denied["Status"],
        "denied: new threshold 785.4 MiB (85% of 924 MiB usable of 1024 MiB) is below current usage 900 MiB + \
         100 MiB downscale buffer"
    );
    let m = x.metrics();
    assert!(m.contains("compute_ctl_vm_monitor_decisions_total{decision=\"downscale_denied\"}"), "{m}");
    assert!(m.contains("compute_ctl_vm_monitor_last_decision{kind=\"downscale\",result=\"denied\""), "{m}");
}

#[test]
fn upscale_notification_raises_the_threshold_and_is_confirmed() {
    let mut x = Auto::start("vm-upscale");
    let mut a = x.agent();
    let r = a.call("UpscaleNotification", json!({"granted": {"cpu": 2, "mem": 2u64 << 30}}), 2);
    assert_eq!(r, json!({"type": "UpscaleConfirmation", "id": 2}));
    let threshold = ((2048 - 100) as f64 * MIB as f64 * 0.85) as u64;
    assert_eq!(x.metric("compute_ctl_vm_monitor_memory_threshold_bytes "), Some(threshold.to_string()));
    assert!(x.metrics().contains("result=\"applied\""));
}

#[test]
fn memory_pressure_sends_upscale_requests_at_most_once_a_second() {
    let mut x = Auto::start("vm-pressure");
    let mut a = x.agent();
    // Threshold 785.4 MiB, then 900 MiB in use.
    a.call("UpscaleNotification", json!({"granted": {"cpu": 1, "mem": 1u64 << 30}}), 2);
    write_stat(&x.cgroup, 900 * MIB);
    let mut seen: Vec<(Instant, u64)> = Vec::new();
    let deadline = Instant::now() + T;
    // Collect requests over 2.5 s after the first.
    while seen.first().is_none_or(|(t, _)| t.elapsed() < Duration::from_millis(2500)) {
        assert!(Instant::now() < deadline, "no UpscaleRequest; log:\n{}", x.c.log_text());
        // Health checks keep flowing meanwhile.
        if let Some(Frame::Text(t)) = a.recv(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "UpscaleRequest" {
                seen.push((Instant::now(), v["id"].as_u64().unwrap()));
            }
        }
    }
    assert!((2..=4).contains(&seen.len()), "requests: {seen:?}");
    for w in seen.windows(2) {
        assert!(w[1].0 - w[0].0 >= Duration::from_millis(900), "two requests within a second: {seen:?}");
        assert_eq!(w[1].1, w[0].1 + 2);
    }
    assert!(seen.iter().all(|(_, id)| id % 2 == 1), "the monitor's ids are odd: {seen:?}");
    let sent: u64 = x.metric("compute_ctl_vm_monitor_upscale_requests_total ").unwrap().parse().unwrap();
    assert!(sent >= seen.len() as u64);
}

#[test]
fn a_second_agent_replaces_the_first() {
    let mut x = Auto::start("vm-replace");
    let mut first = x.agent();
    let mut second = x.agent();
    let (code, reason) = first.recv_close(T);
    assert_eq!(code, Some(1001));
    assert!(reason.contains("newer agent connection"), "{reason}");
    assert_eq!(second.call("HealthCheck", json!({}), 2)["type"], "HealthCheck");
}

#[test]
fn garbage_and_oversized_frames_get_their_close_codes_and_the_server_keeps_serving() {
    let mut x = Auto::start("vm-garbage");
    // A malformed message: InvalidMessage, and the connection stays usable.
    let mut a = x.agent();
    a.send_text(r#"{"type":"DownscaleRequest","content":{"target":{"cpu":1}},"id":4}"#);
    let r = a.recv_json(T);
    assert_eq!((r["type"].as_str(), r["id"].as_u64()), (Some("InvalidMessage"), Some(4)), "{r}");
    assert!(r["error"].as_str().unwrap().contains("target.mem"), "{r}");
    a.send_text("not json");
    assert_eq!(a.recv_json(T)["type"], "InvalidMessage");
    assert_eq!(a.call("HealthCheck", json!({}), 6)["type"], "HealthCheck");

    // An unmasked frame: protocol error.
    a.send_raw(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(a.recv_close(T).0, Some(1002));
    // A frame announcing 1 MiB: too big, refused from its header.
    let mut b = x.agent();
    b.send_raw(&[0x81, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4]);
    assert_eq!(b.recv_close(T).0, Some(1009));
    // Invalid UTF-8 in a text frame.
    let mut c = x.agent();
    c.send_frame(true, 1, &[0xff, 0xfe]);
    assert_eq!(c.recv_close(T).0, Some(1007));
    // Reserved opcode.
    let mut d = x.agent();
    d.send_frame(true, 3, b"");
    assert_eq!(d.recv_close(T).0, Some(1002));

    let mut e = x.agent();
    assert_eq!(e.call("HealthCheck", json!({}), 2)["type"], "HealthCheck");
    assert_eq!(x.c.status().unwrap()["status"], "running");
}

#[test]
fn versions_above_one_get_the_error_object_and_the_process_lives() {
    let mut x = Auto::start("vm-versions");
    x.wait_monitor();
    let mut a = Agent::connect(x.vm_port);
    a.send_text(r#"{"min":2,"max":3}"#);
    let v = a.recv_json(T);
    assert_eq!(v, json!({"error": "Received protocol version range v2.0 to v3.0 which does not overlap with v1.0"}));
    assert_eq!(a.recv_close(T).0, Some(1002));
    assert!(x.c.try_wait().is_none(), "compute_ctl died:\n{}", x.c.log_text());
    assert_eq!(x.c.status().unwrap()["status"], "running");
    let mut b = x.agent();
    assert_eq!(b.call("HealthCheck", json!({}), 2)["type"], "HealthCheck");
}

#[test]
fn setup_not_finished_in_four_seconds_is_closed() {
    let mut x = Auto::start("vm-deadline");
    x.wait_monitor();
    let mut a = Agent::connect(x.vm_port);
    let started = Instant::now();
    let (code, reason) = a.recv_close(T);
    assert_eq!(code, Some(1008));
    assert!(reason.contains("4 s"), "{reason}");
    assert!(started.elapsed() >= Duration::from_millis(3500), "closed after {:?}", started.elapsed());
}

#[test]
fn terminate_closes_the_agent_connection_first() {
    let mut x = Auto::start("vm-terminate");
    let mut a = x.agent();
    let r = http::request(x.s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    let (code, reason) = a.recv_close(T);
    assert_eq!((code, reason.as_str()), (Some(1001), "postgres is stopping"));
    x.c.wait_exit(Duration::from_secs(20));
}

#[test]
fn restart_closes_the_agent_first_and_lets_a_new_one_in_once_postgres_runs() {
    let mut x = Auto::start("vm-restart");
    let mut a = x.agent();
    let old = support::postmaster_pid(&x.s.pgdata).unwrap();
    let r = http::request(x.s.http_port, "POST", "/restart", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (code, reason) = a.recv_close(T);
    assert_eq!((code, reason.as_str()), (Some(1001), "postgres is stopping"));
    let new = support::postmaster_pid(&x.s.pgdata).unwrap();
    assert_ne!(new, old, "postgres was restarted");
    // The agent was closed before the old Postgres was asked to stop, and let in again after.
    let log = x.c.log_text();
    let at = |what: &str| log.find(what).unwrap_or_else(|| panic!("no {what:?} in the log:\n{log}"));
    assert!(at("vm-monitor stopped") < at(&format!("postgres (pid {old}) exited")), "{log}");
    assert!(at(&format!("postgres (pid {old}) exited")) < at("vm-monitor resumed"), "{log}");
    let mut b = x.agent();
    assert_eq!(b.call("HealthCheck", json!({}), 2), json!({"type": "HealthCheck", "id": 2}));
    assert_eq!(x.metric("compute_ctl_vm_monitor_agent_connected ").as_deref(), Some("1"));
}

#[test]
fn bind_failure_is_shown_in_status_and_metrics_and_postgres_runs() {
    let port = support::free_port();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut x = Auto::start_with("vm-bind", |args| {
        let i = args.iter().position(|a| a == "--vm-monitor-addr").unwrap();
        args[i + 1] = format!("127.0.0.1:{port}");
    });
    let vm = x.wait_monitor();
    assert!(vm["error"].as_str().unwrap().contains(&format!("cannot bind the vm-monitor to 127.0.0.1:{port}")), "{vm}");
    assert_eq!(x.metric("compute_ctl_vm_monitor_listening ").as_deref(), Some("0"));
    assert!(x.metrics().contains("compute_ctl_vm_monitor_bind_error{error=\"cannot bind"));
    let one: i32 = x.s.client().query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

#[test]
fn postmaster_joins_the_imitation_cgroup() {
    let x = Auto::start("cg-imitation");
    let pid = support::postmaster_pid(&x.s.pgdata).unwrap();
    let procs = std::fs::read_to_string(x.cgroup.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l == pid.to_string()), "postmaster {pid} not in cgroup.procs: {procs:?}");
}

/// With `cgexec` on `PATH`, the postmaster starts as Neon's wrapper starts it,
/// `cgexec -g memory:neon-postgres <pgbin> -D <pgdata>`; cgexec execs Postgres, so the pid
/// compute_ctl supervises and signals is the postmaster's, and it is the one in the cgroup.
#[test]
fn postmaster_starts_through_cgexec_when_it_is_on_path() {
    let mut x = Auto::start_cgexec("cg-cgexec");
    let cg = x.cgexec.as_ref().unwrap();
    let pgdata = x.s.pgdata.to_str().unwrap().to_string();
    let wrapped = ["-g".to_string(), "memory:neon-postgres".into(), support::pgbin(), "-D".into(), pgdata];
    assert_eq!(cg.calls(), vec![wrapped.to_vec()]);
    let pid = support::postmaster_pid(&x.s.pgdata).unwrap();
    assert_eq!(cgexec::members(&x.cgroup), vec![pid]);
    let log = x.c.log_text();
    assert!(log.contains(&format!("through {} -g memory:neon-postgres", cg.bin().display())), "{log}");
    assert!(log.contains(&format!("started postgres, pid {pid}")), "{log}");
    let one: i32 = x.s.client().query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    // The monitor samples the same cgroup.
    let mut a = x.agent();
    let r = downscale(&mut a, 1 << 30, &mut 0, |r| r["Ok"] == true);
    assert!(r["Status"].as_str().unwrap().contains("covers current usage 10 MiB"), "{r}");
    // Stopped by that pid.
    let r = http::request(x.s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    assert!(x.c.wait_exit(Duration::from_secs(20)).success(), "{}", x.c.log_text());
    assert!(!support::pid_alive(pid));
}

#[test]
fn without_autoscaling_the_cgroup_is_left_alone() {
    let s = Setup::new("cg-off");
    let root = s.dir.join("cgroup-root");
    std::fs::create_dir_all(root.join("neon-postgres")).unwrap();
    std::fs::write(root.join("neon-postgres/cgroup.procs"), "").unwrap();
    let mut args = s.args();
    args.extend(["--cgroup-root".into(), root.to_str().unwrap().into()]);
    let mut c = Compute::spawn(&args, s.http_port);
    let st = c.wait_running();
    assert!(st.get("vm_monitor").is_none(), "{st}");
    assert_eq!(std::fs::read_to_string(root.join("neon-postgres/cgroup.procs")).unwrap(), "");
    assert!(!http::get(s.http_port, "/metrics").text().contains("vm_monitor"));
}

#[test]
fn missing_cgroup_fails_the_start_naming_it() {
    let s = Setup::new("cg-missing");
    let root = s.dir.join("cgroup-root");
    std::fs::create_dir_all(&root).unwrap();
    let mut args = s.args();
    args.extend(["--cgroup-root".into(), root.to_str().unwrap().into(), "--cgroup".into(), "no-such-group".into()]);
    let mut c = Compute::spawn_env(&args, s.http_port, &[("AUTOSCALING", "")]);
    let st = c.wait_exit(T);
    assert!(!st.success());
    let log = c.log_text();
    assert!(log.contains("memory cgroup \"no-such-group\" does not exist"), "{log}");
    assert!(support::postmaster_pid(&s.pgdata).is_none_or(|p| !support::pid_alive(p)));
}

/// A real cgroup v2 directory (this machine mounts cgroup2 at /sys/fs/cgroup/unified without
/// the memory controller, which is enough to check membership); skipped where there is none.
#[test]
fn postgres_pid_is_in_a_real_cgroup_v2() {
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|r| r.join("cgroup.controllers").is_file());
    let Some(root) = root.filter(|_| support::is_root()) else {
        eprintln!("no writable cgroup v2 hierarchy here; the imitation test covers cgroup.procs");
        return;
    };
    let name = format!("compute_ctl-test-{}", std::process::id());
    let dir = root.join(&name);
    if std::fs::create_dir(&dir).is_err() {
        eprintln!("cannot create a cgroup under {}; skipped", root.display());
        return;
    }
    let s = Setup::new("cg-real");
    let mut args = s.args();
    args.extend(["--cgroup-root".into(), root.to_str().unwrap().into(), "--cgroup".into(), name.clone()]);
    args.extend(["--vm-monitor-addr".into(), format!("127.0.0.1:{}", support::free_port())]);
    // compute_ctl writes cgroup.procs itself (a real cgexec would move the Postgres user's
    // process, which needs the cgroup delegated to that user).
    let path = cgexec::path_without_cgexec();
    let mut c = Compute::spawn_env(&args, s.http_port, &[("AUTOSCALING", "1"), ("PATH", &path)]);
    c.wait_running();
    let pid = support::postmaster_pid(&s.pgdata).unwrap();
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
    let members: Vec<&str> = procs.lines().collect();
    assert!(members.contains(&pid.to_string().as_str()), "postmaster {pid} not in {}: {procs:?}", dir.display());
    // Its children (checkpointer, walwriter, …) were forked inside, so they are members too.
    assert!(members.len() > 1, "{procs:?}");
    let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200);
    c.wait_exit(Duration::from_secs(20));
    // Empty again once Postgres has gone, so it can be removed.
    let deadline = Instant::now() + T;
    while std::fs::remove_dir(&dir).is_err() {
        assert!(Instant::now() < deadline, "cgroup {} not empty after postgres exited", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
