//! The Local File Cache size, set through `neon.file_cache_size_limit` (reference 7).
//!
//! Only where the neon extension defines that setting: on vanilla PostgreSQL the monitor logs
//! once per connection that it skips file-cache resizing and goes on without it (Neon's
//! monitor instead dropped every agent connection there). With `disable_lfc_resizing` in the
//! spec the monitor does not connect at all.

use super::decide::{MIB, mib};
use postgres::{Client, Config, NoTls};
use std::time::Duration;

/// A connection that can resize the file cache.
pub struct FileCache {
    client: Client,
    config: Config,
}

fn text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

impl FileCache {
    /// Connects and checks that the setting exists; `Ok(None)` (logged) when it does not.
    pub fn connect(connstr: &str, timeout: Duration) -> Result<Option<FileCache>, String> {
        let mut config: Config = connstr.parse().map_err(|e| format!("cannot parse the file-cache connstr: {e}"))?;
        if config.get_application_name().is_none() {
            config.application_name("compute_ctl:vm-monitor");
        }
        config.connect_timeout(timeout.max(Duration::from_millis(100)));
        let mut client = config.connect(NoTls).map_err(|e| format!("cannot connect to postgres: {}", text(&e)))?;
        let row = client
            .query_one("SELECT current_setting('neon.file_cache_size_limit', true)", &[])
            .map_err(|e| format!("cannot read neon.file_cache_size_limit: {}", text(&e)))?;
        if row.get::<_, Option<String>>(0).is_none() {
            log::info!(
                "vm-monitor: neon.file_cache_size_limit does not exist (the neon extension is not loaded): \
                 file-cache resizing skipped"
            );
            return Ok(None);
        }
        Ok(Some(FileCache { client, config }))
    }

    /// Reads a size setting in bytes, reconnecting and retrying once on failure.
    fn size_setting(&mut self, name: &str) -> Result<u64, String> {
        let sql = format!("SELECT pg_size_bytes(current_setting('{name}'))");
        let attempt = |c: &mut Client| c.query_one(sql.as_str(), &[]).map(|r| r.get::<_, i64>(0));
        let v = match attempt(&mut self.client) {
            Ok(v) => v,
            Err(first) => {
                log::warn!("vm-monitor: reading {name} failed ({}); reconnecting once", text(&first));
                self.client = self.config.connect(NoTls).map_err(|e| format!("cannot reconnect: {}", text(&e)))?;
                attempt(&mut self.client).map_err(|e| format!("cannot read {name}: {}", text(&e)))?
            }
        };
        Ok(u64::try_from(v).unwrap_or(0))
    }

    /// Sets the cache to `bytes`, capped by `neon.max_file_cache_size`, in whole MiB; returns
    /// the size set and a sentence for the decision's status.
    pub fn set_size(&mut self, bytes: u64) -> Result<(u64, String), String> {
        let max = self.size_setting("neon.max_file_cache_size")?;
        let capped = bytes.min(max);
        let n = capped / MIB;
        // Two statements: ALTER SYSTEM refuses to run inside the implicit transaction of a
        // multi-statement query.
        self.client
            .batch_execute(&format!("ALTER SYSTEM SET neon.file_cache_size_limit = {n}"))
            .and_then(|()| self.client.batch_execute("SELECT pg_reload_conf()"))
            .map_err(|e| format!("cannot set neon.file_cache_size_limit: {}", text(&e)))?;
        let note = if capped < bytes { " (capped by neon.max_file_cache_size)" } else { "" };
        Ok((n * MIB, format!("set file cache size to {}{note}", mib(n * MIB))))
    }
}
