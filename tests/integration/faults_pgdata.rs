//! Regressions from trying to break PGDATA handling (issue 17): a kill during `initdb`, a
//! foreign postmaster on the same PGDATA, and PGDATA given as a symlink.

use crate::support::publisher::PlainPostgres;
use crate::support::{self, Setup, TestDir};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// True when a file named `name` exists at most two levels below `dir`.
fn has_file(dir: &Path, name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let p = e.path();
        p.file_name().is_some_and(|n| n == name) || (p.is_dir() && p.join(name).is_file())
    })
}

/// Starts compute_ctl on `s`, waits until its initdb has written `PG_VERSION` somewhere under
/// `watch`, then SIGKILLs compute_ctl and the initdb tree, as a crash of the node would.
fn kill_during_initdb(s: &Setup, watch: &dyn Fn() -> bool) {
    let mut c = s.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let initdb = loop {
        let kids = support::children_of(c.pid());
        if watch() && !kids.is_empty() {
            break kids;
        }
        assert!(c.try_wait().is_none(), "compute_ctl exited before initdb wrote anything:\n{}", c.log_text());
        assert!(Instant::now() < deadline, "initdb never started:\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(2));
    };
    c.signal("KILL");
    c.wait_exit(Duration::from_secs(10));
    // Every descendant (initdb runs `postgres --single` through a shell), so that nothing
    // of the killed start still writes when the next compute_ctl starts.
    let mut all = initdb.clone();
    let mut i = 0;
    while i < all.len() {
        let kids = support::children_of(all[i]);
        all.extend(kids);
        i += 1;
    }
    for p in &all {
        let _ = std::process::Command::new("kill").arg("-KILL").arg(p.to_string()).status();
    }
    for p in all {
        support::wait_pid_gone(p, Duration::from_secs(10));
    }
}

/// Regression: with `-D` an existing empty directory (a fresh volume), a kill during initdb
/// left `PG_VERSION` behind, and every later start took the half-made directory for a cluster.
#[test]
fn a_kill_during_initdb_into_an_empty_directory_leaves_a_pgdata_that_starts() {
    let s = Setup::empty("faults-initdb-empty");
    std::fs::create_dir(&s.pgdata).unwrap();
    let pgdata = s.pgdata.clone();
    kill_during_initdb(&s, &|| has_file(&pgdata, "PG_VERSION"));
    let mut c = s.spawn();
    c.wait_running();
    let n: i64 = s.client().query_one("SELECT count(*) FROM pg_database", &[]).unwrap().get(0);
    assert!(n >= 3);
    let leftovers: Vec<_> = std::fs::read_dir(&s.pgdata)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".compute_ctl"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn initdb_siblings(pgdata: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(pgdata.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".pgdata.initdb-"))
        .collect()
}

/// Regression: with a missing PGDATA, the `.NAME.initdb-PID` sibling (21 MB) of a killed
/// initdb was never removed.
#[test]
fn a_kill_during_initdb_into_a_missing_directory_leaves_no_sibling() {
    let s = Setup::empty("faults-initdb-missing");
    let pgdata = s.pgdata.clone();
    kill_during_initdb(&s, &|| initdb_siblings(&pgdata).iter().any(|d| has_file(d, "PG_VERSION")));
    assert!(!initdb_siblings(&s.pgdata).is_empty());
    let mut c = s.spawn();
    c.wait_running();
    assert_eq!(initdb_siblings(&s.pgdata), Vec::<PathBuf>::new());
}

/// Regression: with another postmaster on the same PGDATA, the start failed only at Postgres's
/// lock file, after `postgresql.conf`, `pg_hba.conf` and the override file were rewritten.
#[test]
fn a_foreign_postmaster_on_pgdata_is_refused_before_anything_is_written() {
    let plain = PlainPostgres::start("faults-foreign-pg", &[]);
    let pid = support::postmaster_pid(&plain.pgdata).expect("the plain postgres wrote postmaster.pid");
    // The top-level files (the running server keeps writing below).
    let before: Vec<_> =
        support::tree_snapshot(&plain.pgdata).into_iter().filter(|(p, _)| p.parent() == Some(&plain.pgdata)).collect();
    assert!(before.iter().any(|(p, _)| p.ends_with("pg_hba.conf")));
    let s = Setup::with_pgdata(TestDir::new("faults-foreign"), plain.pgdata.clone());
    let mut c = s.spawn();
    assert!(!c.wait_exit(Duration::from_secs(30)).success());
    let log = c.log_text();
    assert!(log.contains(&format!("pid {pid}")), "{log}");
    for (path, bytes) in before {
        if path.ends_with("postmaster.pid") || path.ends_with("postmaster.opts") {
            continue;
        }
        assert_eq!(std::fs::read(&path).unwrap_or_default(), bytes, "{} was changed", path.display());
    }
    assert!(!plain.pgdata.join("compute_ctl_temp_override.conf").exists());
    let one: i32 = plain.client("postgres").query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

/// Regression: a PGDATA given as a symlink was chowned only at the link, so Postgres (as the
/// postgres user) could not read the root-owned files behind it.
#[test]
fn a_symlinked_pgdata_is_resolved_and_chowned_through_the_link() {
    if !support::is_root() {
        return;
    }
    let dir = TestDir::new("faults-symlink");
    let real = dir.pgdata_copy("real");
    let st = std::process::Command::new("chown").args(["-R", "root:root"]).arg(&real).status().unwrap();
    assert!(st.success());
    let link = dir.join("pgdata");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let s = Setup::with_pgdata(dir, link.clone());
    let mut c = s.spawn();
    c.wait_running();
    let log = c.log_text();
    assert!(log.contains(&format!("PGDATA {} resolves to {}", link.display(), real.display())), "{log}");
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
}
