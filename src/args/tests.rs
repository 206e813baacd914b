//! The command line: every flag, its errors and its environment fallbacks.

use super::*;

fn run(args: &[&str]) -> Result<Command> {
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    parse(&argv, |_| None)
}

fn args(a: &[&str]) -> Args {
    match run(a).unwrap() {
        Command::Run(a) => *a,
        other => panic!("expected Run, got {other:?}"),
    }
}

const BASE: [&str; 4] = ["-D", "/tmp/pg", "-C", "postgresql://cloud_admin@127.0.0.1:5432/postgres"];

#[test]
fn defaults_follow_neon() {
    let a = args(&BASE);
    assert_eq!(a.external_http_port, 3080);
    assert_eq!(a.internal_http_port, 3081);
    assert_eq!(a.pgbin, PathBuf::from("postgres"));
    assert_eq!(a.spec, SpecSource::Wait);
    assert_eq!(a.pg_user, "postgres");
    assert!(a.compute_id.starts_with("compute-"));
    assert_eq!(a.http_bind, None, "decided at start from whether requests are authorized");
    assert_eq!(a.internal_http_bind, IpAddr::from([127, 0, 0, 1]));
}

#[test]
fn bind_addresses() {
    let mut v = BASE.to_vec();
    v.extend(["--http-bind", "::", "--internal-http-bind=0.0.0.0"]);
    let a = args(&v);
    assert_eq!(a.http_bind, Some(IpAddr::from([0u16; 8])));
    assert_eq!(a.internal_http_bind, IpAddr::from([0, 0, 0, 0]));
    let mut v = BASE.to_vec();
    v.extend(["--internal-http-bind", "localhost"]);
    assert!(run(&v).unwrap_err().to_string().contains("--internal-http-bind: not an IP address"));
}

#[test]
fn long_and_short_forms() {
    let mut v = BASE.to_vec();
    v.extend(["--http-port=4000", "-S", "/x.json", "--pg-user", "pg"]);
    let a = args(&v);
    assert_eq!((a.external_http_port, a.internal_http_port), (4000, 4001));
    assert_eq!(a.spec, SpecSource::File("/x.json".into()));
    assert_eq!(a.pg_user, "pg");
    let mut v = BASE.to_vec();
    v.extend(["--external-http-port", "4000", "-c", "/c.json"]);
    let a = args(&v);
    assert_eq!((a.external_http_port, a.internal_http_port), (4000, 3081));
    assert_eq!(a.spec, SpecSource::Config("/c.json".into()));
}

#[test]
fn todays_neon_flags() {
    let mut v = BASE.to_vec();
    v.extend([
        "--privileged-role-name",
        "my_admin",
        "-r",
        "https://example.com/subpath",
        "--installed-extensions-collection-interval",
        "60",
        "--dev",
        "--lakebase-mode",
        "false",
        "--pg-init-timeout",
        "10",
        "-i",
        "compute-1",
        "--rsyslog-dir",
        "/tmp/r",
    ]);
    let a = args(&v);
    assert_eq!(a.rsyslog_dir, PathBuf::from("/tmp/r"));
    assert_eq!(a.privileged_role_name, "my_admin");
    assert_eq!(a.remote_ext_base_url.as_deref(), Some("https://example.com/subpath/"));
    assert_eq!(a.installed_extensions_interval, Duration::from_secs(60));
    assert!(a.dev);
    assert_eq!(a.compute_id, "compute-1");
    let d = args(&BASE);
    assert_eq!(d.privileged_role_name, "neon_superuser");
    assert_eq!(d.installed_extensions_interval, Duration::from_secs(3600));
    assert!(!d.dev && d.remote_ext_base_url.is_none());
    assert_eq!(d.rsyslog_dir, PathBuf::from("/etc/rsyslog.d"), "Neon's directory by default");
    assert_eq!(ext_base_url("-r", "https://example.com//").unwrap(), "https://example.com/");
}

#[test]
fn todays_neon_flags_refuse_bad_values() {
    for (extra, want) in [
        (&["--privileged-role-name", "Neon-Admin"][..], "^[a-z_]+$"),
        (&["--privileged-role-name", "x; drop"][..], "^[a-z_]+$"),
        (&["-r", "http://gw/?a=1"][..], "query"),
        (&["-r", "s3://bucket"][..], "not an http"),
        (&["--lakebase-mode", "yes"][..], "true or false"),
        (&["--http-port", "4000", "--internal-http-port", "4001"][..], "cannot be used with"),
        (&["-c", "/c.json", "-p", "http://cp"][..], "at most one"),
        (&["--installed-extensions-collection-interval", "-1"][..], "expected seconds"),
    ] {
        let mut v = BASE.to_vec();
        v.extend(extra);
        let e = run(&v).unwrap_err().to_string();
        assert!(e.contains(want), "{extra:?}: {e}");
    }
}

#[test]
fn errors_name_the_flag() {
    let e = run(&["-D"]).unwrap_err().to_string();
    assert_eq!(e, "-D needs a value (see --help)");
    let e = run(&["--bogus"]).unwrap_err().to_string();
    assert!(e.contains("--bogus"), "{e}");
    let e = run(&["-C", "x"]).unwrap_err().to_string();
    assert!(e.contains("--pgdata"), "{e}");
    let mut v = BASE.to_vec();
    v.extend(["-s", "{}", "-S", "f"]);
    assert!(run(&v).unwrap_err().to_string().contains("at most one"));
}

#[test]
fn plan_and_terminate_forms() {
    let Command::Plan(p) = run(&["plan", "-C", "postgresql://a@127.0.0.1:5/postgres", "-S", "/s.json"]).unwrap() else {
        panic!()
    };
    assert_eq!(p.spec, PlanSpec::File("/s.json".into()));
    assert!(run(&["plan", "-S", "/s.json"]).unwrap_err().to_string().contains("-C"));
    let e = run(&["plan", "-C", "postgresql://a@h/p", "-S", "a", "-c", "b"]).unwrap_err().to_string();
    assert!(e.contains("only one"), "{e}");
    let Command::Terminate { port, token_file } = run(&["--terminate", "--http-auth-token-file", "/t"]).unwrap() else {
        panic!()
    };
    assert_eq!((port, token_file), (3081, Some(PathBuf::from("/t"))), "the internal port by default");
    assert!(matches!(run(&["--terminate", "4000"]).unwrap(), Command::Terminate { port: 4000, token_file: None }));
    let mut v = BASE.to_vec();
    v.extend(["--pre-stop-checkpoint", "0"]);
    assert_eq!(args(&v).pre_stop_checkpoint, Duration::ZERO);
    assert_eq!(args(&BASE).pre_stop_checkpoint, Duration::from_secs(10));
}

#[test]
fn autoscaling_flags() {
    let a = args(&BASE);
    assert!(!a.autoscaling.enabled);
    assert_eq!(a.autoscaling.cgroup, "neon-postgres");
    assert_eq!(a.autoscaling.vm_monitor_addr.to_string(), "0.0.0.0:10301");
    let mut v = BASE.to_vec();
    v.extend(["--cgroup", "pg", "--vm-monitor-addr=127.0.0.1:4000", "--cgroup-root", "/tmp/cg"]);
    let argv: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    let Command::Run(a) = parse(&argv, |k| (k == "AUTOSCALING").then(String::new)).unwrap() else { panic!() };
    assert!(a.autoscaling.enabled, "an empty AUTOSCALING counts, as in Neon");
    assert_eq!(a.autoscaling.cgroup, "pg");
    assert_eq!(a.autoscaling.vm_monitor_addr.port(), 4000);
    assert_eq!(a.autoscaling.cgroup_root, Some(PathBuf::from("/tmp/cg")));
    let mut v = BASE.to_vec();
    v.extend(["--vm-monitor-addr", "localhost:10301"]);
    assert!(run(&v).unwrap_err().to_string().contains("--vm-monitor-addr"));
}

#[test]
fn pgbin_from_env() {
    let argv: Vec<String> = BASE.iter().map(|s| s.to_string()).collect();
    let Command::Run(a) = parse(&argv, |k| (k == "POSTGRES_PATH").then(|| "/opt/pg/bin/postgres".into())).unwrap()
    else {
        panic!()
    };
    assert_eq!(a.pgbin, PathBuf::from("/opt/pg/bin/postgres"));
}
