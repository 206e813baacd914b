//! A plain PostgreSQL with `wal_level = logical` on a loopback port, to publish to a
//! compute's subscriptions. Started from a copy of the template PGDATA, stopped by pid on drop.

use super::{PGBIN_DIR, TestDir, as_pg_user, free_port, pg_client, pid_alive};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Publisher {
    pub port: u16,
    child: Child,
    _dir: TestDir,
}

impl Publisher {
    pub fn start(name: &str) -> Publisher {
        let dir = TestDir::new(name);
        let pgdata = dir.pgdata_copy("pgdata");
        let sock = dir.socket_dir();
        let port = free_port();
        let log = std::fs::File::create(dir.join("postgres.log")).unwrap();
        let child = as_pg_user(Command::new(format!("{PGBIN_DIR}/postgres")).arg("-D").arg(&pgdata).args([
            "-c",
            &format!("port={port}"),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("unix_socket_directories={}", sock.display()),
            "-c",
            "wal_level=logical",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=20",
        ]))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
        let p = Publisher { port, child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = postgres::Config::new()
                .host("127.0.0.1")
                .port(port)
                .user(super::SUPERUSER)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(1))
                .connect(postgres::NoTls)
                .is_ok();
            if ok {
                return p;
            }
            assert!(Instant::now() < deadline, "publisher on port {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> postgres::Client {
        pg_client(self.port, "postgres")
    }

    /// A libpq connection string for `CREATE SUBSCRIPTION`.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user={} dbname=postgres", self.port, super::SUPERUSER)
    }

    /// Names of the replication slots on the publisher.
    pub fn slots(&self) -> Vec<String> {
        self.client()
            .query("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let pid = self.child.id();
        // SIGINT is Postgres's fast shutdown.
        let _ = Command::new("kill").arg("-INT").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if pid_alive(pid) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
