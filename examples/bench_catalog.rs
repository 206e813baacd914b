//! Benchmark of the catalog apply: 1,000 roles and 100 databases from scratch, then the same
//! spec again; the baseline is the same DDL run by one `psql -f` on an identical cluster.
//!
//! Run as root or as a user that can run `initdb` (Postgres 15 in /usr/lib/postgresql/15/bin):
//! `cargo run --release --example bench_catalog`. Targets: re-apply under 200 ms with zero
//! statements, first apply within 2x of `psql -f`.
//!
//! It measures the catalog apply of the library in this process (the code `/configure` and
//! the start run), not the binary, so `$COMPUTE_CTL_BIN` does not apply. The re-apply is timed
//! twice: as a live `/configure` runs it (`catalog/noop_reapply`, the one with the target) and as
//! a restarted compute_ctl runs it, connecting to every database once
//! (`catalog/noop_reapply_after_restart`). Results are printed as `RESULT` lines (see
//! examples/bench.rs); a panic (nothing measured) exits non-zero.

#[path = "support/mod.rs"]
mod support;

use compute_ctl::postgres::apply::{self, Concurrency, catalog};
use compute_ctl::spec::ParsedSpec;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{PGBIN_DIR, as_postgres, chown, free_port, ms};

const ROLES: usize = 1000;
const DBS: usize = 100;

/// A Postgres started from `pgdata`, stopped (fast) by pid on drop.
struct Pg {
    child: Child,
    port: u16,
}

impl Pg {
    fn start(pgdata: &Path, sock: &Path, port: u16) -> Pg {
        let child = as_postgres(Command::new(format!("{PGBIN_DIR}/postgres")).arg("-D").arg(pgdata).args([
            "-c",
            &format!("port={port}"),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("unix_socket_directories={}", sock.display()),
            "-c",
            "max_connections=100",
            "-c",
            "fsync=off",
            "-c",
            "shared_buffers=64MB",
        ]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while postgres::Client::connect(&connstr(port), postgres::NoTls).is_err() {
            assert!(Instant::now() < deadline, "postgres on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Pg { child, port }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn connstr(port: u16) -> String {
    format!("postgresql://cloud_admin@127.0.0.1:{port}/postgres")
}

fn spec() -> ParsedSpec {
    let roles: Vec<serde_json::Value> = (0..ROLES)
        .map(|i| serde_json::json!({"name": format!("role_{i}"), "encrypted_password": format!("{i:032x}")}))
        .collect();
    let dbs: Vec<serde_json::Value> =
        (0..DBS).map(|i| serde_json::json!({"name": format!("db_{i}"), "owner": format!("role_{}", i * 10)})).collect();
    let json = serde_json::json!({
        "format_version": 1.0,
        "tenant_id": "b0554b632bd4d547a63b86c3630317e8",
        "timeline_id": "2414a61ffc94e428f14b5758fe308e13",
        "cluster": {"roles": roles, "databases": dbs,
                    "settings": [{"name": "max_connections", "value": "100", "vartype": "integer"}]}
    });
    ParsedSpec::parse(&json.to_string()).unwrap()
}

/// The DDL a from-scratch apply runs, as one psql script (planned by the same functions,
/// plus the per-database and final statements).
fn psql_script(spec: &ParsedSpec) -> String {
    let s = spec.spec();
    let mut snap = catalog::Snapshot::default();
    let mut out = String::new();
    let push = |stmts: Vec<catalog::Stmt>, out: &mut String| {
        for st in stmts {
            let _ = writeln!(out, "{};", st.sql);
        }
    };
    push(catalog::create_superuser(s, catalog::NEON_SUPERUSER, &mut snap), &mut out);
    push(
        catalog::create_and_alter_roles(s, catalog::NEON_SUPERUSER, &HashSet::new(), "cloud_admin", &mut snap),
        &mut out,
    );
    push(catalog::create_and_alter_databases(s, catalog::NEON_SUPERUSER, &mut snap), &mut out);
    out.push_str("CREATE SCHEMA IF NOT EXISTS neon;\n");
    for db in &s.cluster.databases {
        let _ = writeln!(out, "\\c {}", db.name);
        out.push_str(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO neon_superuser WITH GRANT OPTION;\n",
        );
        out.push_str(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO neon_superuser WITH GRANT OPTION;\n",
        );
    }
    out.push_str("\\c postgres\n");
    out.push_str(
        "CREATE TABLE IF NOT EXISTS health_check (id serial primary key, updated_at timestamptz default now());\n",
    );
    out.push_str("INSERT INTO health_check VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET updated_at = now();\n");
    out
}

/// Removes the work directory, also when a panic unwinds (after the Postgres guards stop).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let root = PathBuf::from(format!("/tmp/bench_catalog-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let _cleanup = RemoveDir(root.clone());
    chown(&root);
    let a = root.join("a");
    let out = as_postgres(Command::new(format!("{PGBIN_DIR}/initdb")).arg("-D").arg(&a).args([
        "-U",
        "cloud_admin",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C.UTF-8",
    ]))
    .output()
    .unwrap();
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    let b = root.join("b");
    assert!(Command::new("cp").arg("-a").arg(&a).arg(&b).status().unwrap().success());

    let spec = spec();
    let script = root.join("apply.sql");
    std::fs::write(&script, psql_script(&spec)).unwrap();
    chown(&script);

    // Baseline: psql -f on cluster b.
    let psql_time = {
        let pg = Pg::start(&b, &root, free_port());
        let started = Instant::now();
        let out = as_postgres(Command::new(format!("{PGBIN_DIR}/psql")).args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "cloud_admin",
            "-d",
            "postgres",
            "-f",
        ]))
        .arg(&script)
        .output()
        .unwrap();
        let t = started.elapsed();
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        t
    };

    let pg = Pg::start(&a, &root, free_port());
    let cs = connstr(pg.port);
    let first = apply::apply(&cs, spec.spec(), catalog::NEON_SUPERUSER, Concurrency::AtStart).unwrap();
    // What a live reconfigure with the same spec costs (databases already verified by this
    // process are not connected to again) ...
    let second = apply::apply(&cs, spec.spec(), catalog::NEON_SUPERUSER, Concurrency::Reconfigure(1)).unwrap();
    // ... and what a restart costs (a new process checks every database once).
    apply::per_db::forget_verified(None);
    let third = apply::apply(&cs, spec.spec(), catalog::NEON_SUPERUSER, Concurrency::AtStart).unwrap();
    drop(pg);

    let lines = psql_script(&spec).lines().filter(|l| !l.starts_with('\\')).count();
    println!(
        "catalog apply: {ROLES} roles, {DBS} databases, {} workers at start",
        apply::start_concurrency(spec.spec())
    );
    println!("psql -f baseline      : {:8.1} ms ({lines} statements)", ms(psql_time));
    println!(
        "first apply           : {:8.1} ms ({} statements: {:?})",
        ms(first.elapsed),
        first.total,
        first.statements
    );
    println!("ratio first/psql      : {:8.2} (target <= 2.0)", first.elapsed.as_secs_f64() / psql_time.as_secs_f64());
    println!(
        "re-apply (reconfigure): {:8.1} ms ({} statements) (target < 200 ms, 0 statements)",
        ms(second.elapsed),
        second.total
    );
    println!(
        "re-apply (restart, every database checked, {} workers): {:8.1} ms ({} statements)",
        apply::start_concurrency(spec.spec()),
        ms(third.elapsed),
        third.total
    );
    println!("RESULT catalog/psql_f {:.1} ms", ms(psql_time));
    println!("RESULT catalog/first_apply {:.1} ms baseline=catalog/psql_f target=2", ms(first.elapsed));
    println!("RESULT catalog/psql_f_statements {lines} count");
    println!("RESULT catalog/first_apply_statements {} count", first.total);
    println!("RESULT catalog/noop_reapply {:.1} ms target=200", ms(second.elapsed));
    println!("RESULT catalog/noop_reapply_statements {} count target=0", second.total);
    println!("RESULT catalog/noop_reapply_after_restart {:.1} ms", ms(third.elapsed));
    println!("RESULT catalog/noop_reapply_after_restart_statements {} count", third.total);
}
