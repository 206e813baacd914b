//! A plain PostgreSQL server (no compute_ctl) for tests that need a second server, such as a
//! logical-replication publisher. Started as the postgres user, stopped by pid on drop.

use super::{SUPERUSER, TestDir, as_pg_user, free_port, pg_bin_dir, pg_client};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PlainPostgres {
    pub dir: TestDir,
    pub pgdata: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl PlainPostgres {
    /// A publisher: `wal_level = logical`, replication commands logged (so tests can tell
    /// whether anyone asked for a slot).
    pub fn publisher(name: &str) -> PlainPostgres {
        PlainPostgres::start(
            name,
            &["wal_level=logical", "log_replication_commands=on", "max_wal_senders=30", "max_replication_slots=30"],
        )
    }

    pub fn start(name: &str, settings: &[&str]) -> PlainPostgres {
        let dir = TestDir::new(name);
        let pgdata = dir.pgdata_copy("pgdata");
        let log = dir.join("postgres.log");
        let mut pg = PlainPostgres {
            port: free_port(),
            pgdata,
            log,
            child: None,
            extra: settings.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        pg.restart();
        pg
    }

    /// (Re)starts the server on the same port and PGDATA and waits until it accepts
    /// connections.
    pub fn restart(&mut self) {
        self.stop();
        let sock = self.dir.socket_dir();
        let mut cmd = Command::new(format!("{}/postgres", pg_bin_dir()));
        cmd.arg("-D").arg(&self.pgdata);
        let mut settings = vec![
            format!("port={}", self.port),
            "listen_addresses=127.0.0.1".to_string(),
            format!("unix_socket_directories={}", sock.display()),
            "fsync=off".into(),
            "shared_buffers=16MB".into(),
            "max_connections=60".into(),
        ];
        settings.extend(self.extra.iter().cloned());
        for s in &settings {
            cmd.arg("-c").arg(s);
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        as_pg_user(&mut cmd).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = postgres::Config::new()
                .host("127.0.0.1")
                .port(self.port)
                .user(SUPERUSER)
                .dbname("postgres")
                .connect_timeout(Duration::from_secs(2))
                .connect(postgres::NoTls)
                .is_ok();
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "postgres on {} did not start: {}", self.port, self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fast shutdown, waiting for the process.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-INT").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.wait();
        }
    }

    pub fn client(&self, db: &str) -> postgres::Client {
        pg_client(self.port, db)
    }

    pub fn connstr(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={SUPERUSER} dbname={db}", self.port)
    }

    /// Names of the replication slots on this server.
    pub fn slot_names(&self) -> Vec<String> {
        self.client("postgres")
            .query("SELECT slot_name::text FROM pg_replication_slots ORDER BY 1", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PlainPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
