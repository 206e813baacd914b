//! `drop_subscriptions_before_start` against a real publisher: a vanilla Postgres with
//! `wal_level = logical` on a loopback port.

use crate::support::cgexec::{self, Cgexec};
use crate::support::publisher::PlainPostgres;
use crate::support::{self, Compute, Setup, TestDir, http};
use std::time::{Duration, Instant};

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs statements one by one (CREATE SUBSCRIPTION cannot run in the implicit transaction
/// of a multi-statement batch).
fn run(db: &mut postgres::Client, statements: &[&str]) {
    for st in statements {
        db.batch_execute(st).unwrap_or_else(|e| panic!("{st}: {e}"));
    }
}

fn count(db: &mut postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0)
}

fn new_timeline() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    format!("{:016x}{:016x}", t, N.fetch_add(1, Ordering::SeqCst) ^ u64::from(std::process::id()))
}

/// Replication commands the publisher has received so far (START_REPLICATION means someone
/// asked to stream from a slot).
fn start_replication_count(publisher: &PlainPostgres) -> usize {
    publisher.log_text().matches("START_REPLICATION").count()
}

/// (slot_name, confirmed_flush_lsn) of every slot on the publisher.
fn slots(publisher: &PlainPostgres) -> Vec<(String, String)> {
    publisher
        .client("postgres")
        .query(
            "SELECT slot_name::text, coalesce(confirmed_flush_lsn::text, '') FROM pg_replication_slots ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Publishes `t` in each database of the publisher, with `rows` rows.
fn publish(publisher: &PlainPostgres, db: &str, rows: i32) {
    if db != "postgres" {
        publisher.client("postgres").batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    }
    let mut c = publisher.client(db);
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t").unwrap();
    c.execute("INSERT INTO t SELECT g, 'p' FROM generate_series(1, $1::int) g", &[&rows]).unwrap();
}

fn insert(publisher: &PlainPostgres, db: &str, from: i32, to: i32) {
    publisher
        .client(db)
        .execute("INSERT INTO t SELECT g, 'p' FROM generate_series($1::int, $2::int) g", &[&from, &to])
        .unwrap();
}

/// A parent compute subscribed (subscription `sub_<db>`) to `t` in each of `dbs`, caught up
/// with `rows` rows, then stopped cleanly.
fn parent(publisher: &PlainPostgres, name: &str, dbs: &[&str], rows: i64) -> Setup {
    let mut s = Setup::new(name);
    s.setting("max_logical_replication_workers", "12", "integer");
    s.setting("max_worker_processes", "20", "integer");
    let mut c = s.spawn();
    c.wait_running();
    for db in dbs {
        if *db != "postgres" {
            s.client().batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
        }
        let mut client = support::pg_client(s.pg_port, db);
        let create = format!("CREATE SUBSCRIPTION sub_{db} CONNECTION '{}' PUBLICATION pub", publisher.connstr(db));
        run(&mut client, &["CREATE TABLE t (id int PRIMARY KEY, v text)", &create]);
        wait_until("the parent's initial sync", Duration::from_secs(30), || count(&mut client, "t") == rows);
        // The rows are visible before the table-sync worker has handed over to the apply
        // worker; a stop in between leaves the table waiting for a sync slot the publisher has
        // already dropped, and the parent never catches up after its restart.
        wait_until("the parent's table sync to finish", Duration::from_secs(30), || {
            let pending: i64 = client
                .query_one("SELECT count(*) FROM pg_subscription_rel WHERE srsubstate <> 'r'", &[])
                .unwrap()
                .get(0);
            pending == 0
        });
    }
    terminate(&s, &mut c);
    s
}

fn terminate(s: &Setup, c: &mut Compute) {
    let r = http::request(s.http_port, "POST", "/terminate", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(c.wait_exit(Duration::from_secs(30)).success());
}

/// A branch: a copy of `from`'s (stopped) PGDATA with a new timeline and the flag on.
fn branch(from: &Setup, name: &str) -> Setup {
    let dir = TestDir::new(name);
    let pgdata = dir.join("pgdata");
    let st = std::process::Command::new("cp").arg("-a").arg(&from.pgdata).arg(&pgdata).status().unwrap();
    assert!(st.success());
    let _ = std::fs::remove_file(pgdata.join("postmaster.pid"));
    let mut s = Setup::with_pgdata(dir, pgdata);
    s.spec["cluster"]["settings"] = from.spec["cluster"]["settings"].clone();
    s.setting("port", &s.pg_port.to_string(), "integer");
    let sock = s.dir.socket_dir();
    s.setting("unix_socket_directories", sock.to_str().unwrap(), "string");
    s.spec["timeline_id"] = serde_json::json!(new_timeline());
    s.spec["drop_subscriptions_before_start"] = serde_json::json!(true);
    s
}

/// The branch's own subscription `mine` to a new publication `pub2` (table `t2`, one row),
/// synced; returns a client of the publisher to add rows with.
fn subscribe_own(publisher: &PlainPostgres, db: &mut postgres::Client) -> postgres::Client {
    let mut own = publisher.client("postgres");
    own.batch_execute(
        "CREATE TABLE t2 (id int PRIMARY KEY); CREATE PUBLICATION pub2 FOR TABLE t2; INSERT INTO t2 VALUES (1)",
    )
    .unwrap();
    let create = format!("CREATE SUBSCRIPTION mine CONNECTION '{}' PUBLICATION pub2", publisher.connstr("postgres"));
    run(db, &["CREATE TABLE t2 (id int PRIMARY KEY)", &create]);
    wait_until("the branch's own subscription to sync", Duration::from_secs(30), || count(db, "t2") == 1);
    own
}

fn subscriptions(db: &mut postgres::Client) -> Vec<String> {
    db.query("SELECT subname::text FROM pg_subscription ORDER BY 1", &[]).unwrap().iter().map(|r| r.get(0)).collect()
}

fn marker(db: &mut postgres::Client) -> Vec<(i32, String)> {
    db.query("SELECT id, timeline_id FROM neon.drop_subscriptions_done ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn branch_drops_inherited_subscriptions_once_per_timeline() {
    let publisher = PlainPostgres::publisher("sub-pub");
    publish(&publisher, "postgres", 10);
    let parent = parent(&publisher, "sub-parent", &["postgres"], 10);
    // Changes the parent has not consumed yet: a branch that took the slot would steal them.
    insert(&publisher, "postgres", 11, 20);
    let slots_before = slots(&publisher);
    let streams_before = start_replication_count(&publisher);

    let b = branch(&parent, "sub-branch");
    let mut bc = b.spawn();
    bc.wait_running();
    let mut db = b.client();
    assert!(subscriptions(&mut db).is_empty());
    assert_eq!(marker(&mut db), vec![(1, b.spec["timeline_id"].as_str().unwrap().to_string())]);
    assert_eq!(count(&mut db, "t"), 10);
    assert_eq!(slots(&publisher), slots_before, "the publisher's slots changed");
    assert_eq!(start_replication_count(&publisher), streams_before, "the branch streamed from the publisher");
    assert!(
        bc.log_text().contains("dropped 1 inherited subscription(s) in database \"postgres\""),
        "{}",
        bc.log_text()
    );

    // The parent, restarted, catches up on everything; the branch gets nothing new.
    let mut pc = parent.spawn();
    pc.wait_running();
    let mut pdb = parent.client();
    wait_until("the parent to catch up", Duration::from_secs(30), || count(&mut pdb, "t") == 20);
    insert(&publisher, "postgres", 21, 25);
    wait_until("the parent to get new rows", Duration::from_secs(30), || count(&mut pdb, "t") == 25);
    assert_eq!(count(&mut db, "t"), 10);

    // The branch's own subscription survives a restart with the same spec and replicates.
    let mut own = subscribe_own(&publisher, &mut db);
    drop(db);
    terminate(&b, &mut bc);
    let mut bc = b.spawn();
    bc.wait_running();
    let mut db = b.client();
    assert_eq!(subscriptions(&mut db), vec!["mine".to_string()]);
    own.batch_execute("INSERT INTO t2 VALUES (2)").unwrap();
    wait_until("the branch's own subscription to replicate after restart", Duration::from_secs(30), || {
        count(&mut db, "t2") == 2
    });
    drop(db);
    terminate(&b, &mut bc);

    // A branch of the branch drops again; the marker has one row, the newest timeline. The
    // slot of `mine` (whose subscriber is stopped) does not move; the parent's is live.
    let mine = |p: &PlainPostgres| slots(p).into_iter().filter(|(n, _)| n == "mine").collect::<Vec<_>>();
    let slots_before = mine(&publisher);
    assert_eq!(slots_before.len(), 1);
    let bb = branch(&b, "sub-branch2");
    let mut bbc = bb.spawn();
    bbc.wait_running();
    let mut db2 = bb.client();
    assert!(subscriptions(&mut db2).is_empty());
    assert_eq!(marker(&mut db2), vec![(1, bb.spec["timeline_id"].as_str().unwrap().to_string())]);
    assert_eq!(mine(&publisher), slots_before);
    drop(pc);
}

#[test]
fn five_databases_under_write_load_drop_in_parallel() {
    let publisher = PlainPostgres::publisher("sub5-pub");
    let dbs = ["d1", "d2", "d3", "d4", "d5"];
    for db in dbs {
        publish(&publisher, db, 5);
    }
    let parent = parent(&publisher, "sub5-parent", &dbs, 5);
    let slots_before = slots(&publisher);
    // Write load on the publisher while the branch starts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = dbs
        .iter()
        .map(|db| {
            let mut c = publisher.client(db);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 1000;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < 100_000 {
                    c.execute("INSERT INTO t VALUES ($1, 'load')", &[&i]).unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    let mut b = branch(&parent, "sub5-branch");
    // The catalog apply manages these databases too: it takes over the drop's connections.
    b.spec["cluster"]["databases"] =
        dbs.iter().map(|d| serde_json::json!({"name": d, "owner": "cloud_admin"})).collect();
    b.setting("log_connections", "on", "bool");
    let mut bc = b.spawn();
    bc.wait_running();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    for db in dbs {
        let mut c = support::pg_client(b.pg_port, db);
        assert_eq!(count(&mut c, "t"), 5, "database {db} received rows");
    }
    assert!(subscriptions(&mut b.client()).is_empty());
    // Every parent slot is intact: same names and positions.
    assert_eq!(slots(&publisher), slots_before);
    let metrics = http::get(b.http_port, "/metrics.json").json();
    assert!(metrics["drop_subscriptions_ms"].as_u64().is_some(), "{metrics}");
    // One backend per database served both the drop and the apply.
    let log = bc.log_text();
    for db in dbs {
        let opened = log
            .lines()
            .filter(|l| l.contains(&format!("connection authorized: user=cloud_admin database={db} ")))
            .filter(|l| l.contains("compute_ctl:drop_subscriptions") || l.contains("compute_ctl:apply_config"))
            .count();
        assert_eq!(opened, 1, "drop and apply connections to {db}:\n{log}");
    }
    assert!(log.contains("catalog applied"), "{log}");
    // The drop's connections (kept open for the catalog apply) do not linger once running.
    let mut admin = b.client();
    wait_until("the drop's connections to close", Duration::from_secs(10), || {
        let row = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name IN ('compute_ctl:drop_subscriptions', 'compute_ctl:apply_config')",
                &[],
            )
            .unwrap();
        row.get::<_, i64>(0) == 0
    });
}

#[test]
fn publisher_down_does_not_slow_the_branch_start() {
    let mut publisher = PlainPostgres::publisher("subdown-pub");
    publish(&publisher, "postgres", 3);
    let parent = parent(&publisher, "subdown-parent", &["postgres"], 3);
    publisher.stop();
    let b = branch(&parent, "subdown-branch");
    let started = Instant::now();
    let mut bc = b.spawn();
    bc.wait_running();
    let took = started.elapsed();
    assert!(subscriptions(&mut b.client()).is_empty());
    // connect_timeout alone would be 1 s per attempt; nothing here waits on the publisher.
    assert!(took < Duration::from_secs(5), "start took {took:?}");
}

#[test]
fn unfinished_table_sync_slots_on_the_publisher_are_left_alone() {
    let publisher = PlainPostgres::publisher("subsync-pub");
    publish(&publisher, "postgres", 3);
    let mut s = Setup::new("subsync-parent");
    s.setting("max_logical_replication_workers", "8", "integer");
    let mut c = s.spawn();
    c.wait_running();
    // A row that conflicts with the initial copy keeps the table sync from ever finishing, so
    // the publisher holds a table-sync slot of the parent's.
    let create = format!("CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub", publisher.connstr("postgres"));
    run(
        &mut s.client(),
        &["CREATE TABLE t (id int PRIMARY KEY, v text)", "INSERT INTO t VALUES (2, 'conflict')", &create],
    );
    wait_until("a table-sync slot on the publisher", Duration::from_secs(30), || {
        slots(&publisher).iter().any(|(n, _)| n.contains("_sync_"))
    });
    terminate(&s, &mut c);
    let before: Vec<String> = slots(&publisher).into_iter().map(|(n, _)| n).collect();
    let b = branch(&s, "subsync-branch");
    let mut bc = b.spawn();
    bc.wait_running();
    assert!(subscriptions(&mut b.client()).is_empty());
    let after: Vec<String> = slots(&publisher).into_iter().map(|(n, _)| n).collect();
    assert_eq!(after, before, "a slot of the parent was dropped");
}

#[test]
fn a_crash_between_drops_and_marker_is_finished_by_the_next_start() {
    let publisher = PlainPostgres::publisher("subcrash-pub");
    for db in ["c1", "c2"] {
        publish(&publisher, db, 4);
    }
    let parent = parent(&publisher, "subcrash-parent", &["c1", "c2"], 4);
    let slots_before = slots(&publisher);
    // The state a crash leaves: subscriptions dropped in c1 but not c2, and no marker. Made
    // by a start with the flag off and the launcher off, dropping c1's by hand.
    let mut b = branch(&parent, "subcrash-branch");
    b.spec["drop_subscriptions_before_start"] = serde_json::json!(false);
    b.setting("max_logical_replication_workers", "0", "integer");
    let mut bc = b.spawn();
    bc.wait_running();
    support::pg_client(b.pg_port, "c1")
        .batch_execute("ALTER SUBSCRIPTION sub_c1 DISABLE; ALTER SUBSCRIPTION sub_c1 SET (slot_name = NONE)")
        .unwrap();
    run(&mut support::pg_client(b.pg_port, "c1"), &["DROP SUBSCRIPTION sub_c1"]);
    assert_eq!(subscriptions(&mut b.client()), vec!["sub_c2".to_string()]);
    // Killed, not stopped: the next start also has to recover.
    let pm = support::postmaster_pid(&b.pgdata).unwrap();
    bc.signal("KILL");
    bc.wait_exit(Duration::from_secs(10));
    support::wait_pid_gone(pm, Duration::from_secs(20));

    b.spec["drop_subscriptions_before_start"] = serde_json::json!(true);
    b.setting("max_logical_replication_workers", "4", "integer");
    let mut bc = b.spawn();
    bc.wait_running();
    let mut db = b.client();
    assert!(subscriptions(&mut db).is_empty());
    assert_eq!(marker(&mut db), vec![(1, b.spec["timeline_id"].as_str().unwrap().to_string())]);
    assert_eq!(slots(&publisher), slots_before);
    terminate(&b, &mut bc);
    // After the marker, the next start drops nothing: a new subscription survives.
    let mut bc = b.spawn();
    bc.wait_running();
    assert!(bc.log_text().contains("no guard needed") || bc.log_text().contains("already dropped"));
}

#[test]
fn flag_with_skip_pg_catalog_updates_still_drops_and_releases_the_guard() {
    let publisher = PlainPostgres::publisher("subskip-pub");
    publish(&publisher, "postgres", 2);
    let parent = parent(&publisher, "subskip-parent", &["postgres"], 2);
    let mut b = branch(&parent, "subskip-branch");
    b.spec["skip_pg_catalog_updates"] = serde_json::json!(true);
    let mut bc = b.spawn();
    bc.wait_running();
    let mut db = b.client();
    assert!(subscriptions(&mut db).is_empty());
    // The guard is released: a subscription created now replicates without a restart.
    let mut p = publisher.client("postgres");
    p.batch_execute(
        "CREATE TABLE t3 (id int PRIMARY KEY); CREATE PUBLICATION pub3 FOR TABLE t3; INSERT INTO t3 VALUES (7)",
    )
    .unwrap();
    let create = format!("CREATE SUBSCRIPTION fresh CONNECTION '{}' PUBLICATION pub3", publisher.connstr("postgres"));
    run(&mut db, &["CREATE TABLE t3 (id int PRIMARY KEY)", &create]);
    wait_until("a new subscription to replicate", Duration::from_secs(30), || count(&mut db, "t3") == 1);
}

#[test]
fn configure_with_the_flag_on_a_running_compute_drops_nothing() {
    let publisher = PlainPostgres::publisher("subcfg-pub");
    publish(&publisher, "postgres", 2);
    let mut s = Setup::new("subcfg");
    let mut c = s.spawn();
    c.wait_running();
    let mut db = s.client();
    let create = format!("CREATE SUBSCRIPTION live CONNECTION '{}' PUBLICATION pub", publisher.connstr("postgres"));
    run(&mut db, &["CREATE TABLE t (id int PRIMARY KEY, v text)", &create]);
    s.spec["drop_subscriptions_before_start"] = serde_json::json!(true);
    let r = http::post_json(
        s.http_port,
        "/configure",
        &serde_json::json!({"spec": s.spec, "compute_ctl_config": {"jwks": {"keys": []}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(subscriptions(&mut db), vec!["live".to_string()]);
    wait_until("the live subscription to keep replicating", Duration::from_secs(30), || count(&mut db, "t") == 2);
}

#[test]
fn a_clean_cluster_without_subscriptions_skips_the_single_user_pass() {
    let mut s = Setup::new("subnone");
    s.spec["drop_subscriptions_before_start"] = serde_json::json!(true);
    let mut c = s.spawn();
    c.wait_running();
    let log = c.log_text();
    assert!(log.contains("pg_subscription is empty in a cleanly shut down cluster"), "{log}");
    assert!(!log.contains("single-user pass"), "{log}");
    assert_eq!(marker(&mut s.client()), vec![(1, support::TIMELINE.to_string())]);
}

/// With AUTOSCALING, the single-user pass runs in the memory cgroup like the postmaster:
/// through `cgexec` when it is on `PATH`, before the postmaster's own call.
#[test]
fn with_autoscaling_the_single_user_pass_runs_through_cgexec() {
    let mut s = Setup::new("sub-cgexec");
    let mut c = s.spawn();
    c.wait_running();
    // A subscription that never connected: in the catalog without a publisher.
    let create = "CREATE SUBSCRIPTION inherited CONNECTION 'host=127.0.0.1 port=1 dbname=postgres' \
                  PUBLICATION p WITH (connect = false)";
    run(&mut s.client(), &[create]);
    terminate(&s, &mut c);
    s.spec["timeline_id"] = serde_json::json!(new_timeline());
    s.spec["drop_subscriptions_before_start"] = serde_json::json!(true);
    let root = s.dir.join("cgroup-root");
    let cgroup = cgexec::imitation_cgroup(&root, "neon-postgres");
    let cg = Cgexec::new(&s.dir.path, &root);
    let mut args = s.args();
    let vm = format!("127.0.0.1:{}", support::free_port());
    args.extend(["--cgroup-root".into(), root.to_str().unwrap().into(), "--vm-monitor-addr".into(), vm]);
    let mut c = Compute::spawn_env(&args, s.http_port, &[("AUTOSCALING", "1"), ("PATH", &cg.path())]);
    c.wait_running();
    assert!(subscriptions(&mut s.client()).is_empty());
    assert!(c.log_text().contains("single-user pass disabled inherited subscriptions"), "{}", c.log_text());
    let (pgbin, pgdata) = (support::pgbin(), s.pgdata.to_str().unwrap().to_string());
    let calls = cg.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0][..6], ["-g", "memory:neon-postgres", &pgbin, "--single", "-D", &pgdata], "{calls:?}");
    assert_eq!(calls[1], ["-g", "memory:neon-postgres", &pgbin, "-D", &pgdata]);
    let members = cgexec::members(&cgroup);
    assert_eq!(members.len(), 2, "{members:?}");
    assert_eq!(Some(members[1]), support::postmaster_pid(&s.pgdata));
}

/// `pg_basebackup -Ft -X fetch` of a running server on `port` into `dir`; returns `base.tar`.
fn tar_backup(port: u16, dir: &std::path::Path) -> std::path::PathBuf {
    let st = std::process::Command::new(format!("{}/pg_basebackup", support::PG15_BIN_DIR))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", support::SUPERUSER, "-D"])
        .arg(dir)
        .args(["-Ft", "-X", "fetch", "-c", "fast", "--no-manifest", "--no-sync"])
        .status()
        .unwrap();
    assert!(st.success(), "pg_basebackup failed");
    dir.join("base.tar")
}

#[test]
fn pageserver_branch_of_a_running_subscriber_drops_once_per_timeline() {
    if support::skip_unless_major(
        15,
        "subscriptions::pageserver_branch_of_a_running_subscriber_drops_once_per_timeline",
    ) {
        return;
    }
    use crate::support::pageserver::{StandIn, Wrapper};
    let publisher = PlainPostgres::publisher("subps-pub");
    publish(&publisher, "postgres", 6);
    // The parent runs and streams while its basebackup is taken.
    let mut parent = Setup::new("subps-parent");
    parent.setting("max_logical_replication_workers", "8", "integer");
    let mut pc = parent.spawn();
    pc.wait_running();
    let mut pdb = parent.client();
    let create = format!("CREATE SUBSCRIPTION sub CONNECTION '{}' PUBLICATION pub", publisher.connstr("postgres"));
    run(&mut pdb, &["CREATE TABLE t (id int PRIMARY KEY, v text)", &create]);
    wait_until("the parent's initial sync", Duration::from_secs(30), || count(&mut pdb, "t") == 6);
    let work = TestDir::new("subps-tars");
    let tar = tar_backup(parent.pg_port, &work.join("parent"));

    // The branch: its own timeline, served by the stand-in pageserver.
    let tl = new_timeline();
    let ps = StandIn::start(true);
    ps.add_tar(support::TENANT, &tl, &tar);
    let mut b = Setup::empty("subps-branch");
    let wrapper = Wrapper::new(&b.dir.path, support::PG15_BIN_DIR, "0/169AD58");
    b.setting("max_logical_replication_workers", "8", "integer");
    b.spec["timeline_id"] = serde_json::json!(tl);
    b.spec["pageserver_connstring"] = ps.connstr().into();
    b.spec["safekeeper_connstrings"] = serde_json::json!(["127.0.0.1:1"]);
    b.spec["storage_auth_token"] = "token".into();
    b.spec["drop_subscriptions_before_start"] = serde_json::json!(true);
    let spawn = |b: &Setup| {
        let mut args = b.args();
        let i = args.iter().position(|a| a == "-b").unwrap();
        args[i + 1] = wrapper.bin.to_str().unwrap().into();
        Compute::spawn(&args, b.http_port)
    };
    let streams_before = start_replication_count(&publisher);
    let mut bc = spawn(&b);
    bc.wait_running();
    let mut db = b.client();
    assert!(subscriptions(&mut db).is_empty());
    assert_eq!(marker(&mut db), vec![(1, tl.clone())]);
    assert_eq!(count(&mut db, "t"), 6);
    assert_eq!(start_replication_count(&publisher), streams_before, "the branch streamed from the publisher");
    // The parent keeps replicating.
    insert(&publisher, "postgres", 7, 9);
    wait_until("the parent to keep replicating", Duration::from_secs(30), || count(&mut pdb, "t") == 9);
    assert_eq!(count(&mut db, "t"), 6);

    // The branch subscribes on its own; storage now holds that state (a new basebackup of the
    // branch), and a restart with the same spec starts from it: the subscription survives.
    let mut own = subscribe_own(&publisher, &mut db);
    let tar2 = tar_backup(b.pg_port, &work.join("branch"));
    ps.add_tar(support::TENANT, &tl, &tar2);
    drop(db);
    terminate(&b, &mut bc);
    let mut bc = spawn(&b);
    bc.wait_running();
    let mut db = b.client();
    assert_eq!(subscriptions(&mut db), vec!["mine".to_string()]);
    own.batch_execute("INSERT INTO t2 VALUES (2)").unwrap();
    wait_until("the branch's own subscription to replicate", Duration::from_secs(30), || count(&mut db, "t2") == 2);
    drop(pc);
}
