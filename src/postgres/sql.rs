//! Connections to the local Postgres.

use crate::error::{Error, Result};
use postgres::{Client, Config, NoTls};
use std::sync::Mutex;
use std::time::Duration;

/// Application names, as Neon sets them, so `pg_stat_activity` tells who is who.
pub const APP_APPLY: &str = "compute_ctl:apply_config";
pub const APP_MONITOR: &str = "compute_ctl:activity_monitor";
pub const APP_SUBSCRIPTIONS: &str = "compute_ctl:drop_subscriptions";
pub const APP_STATUS: &str = "compute_ctl:get_dbs_and_roles";

/// Connects with `--connstr`, optionally to another database, tagged with `app`.
pub fn connect(connstr: &str, dbname: Option<&str>, app: &str) -> Result<Client> {
    let mut config = config(connstr)?;
    if let Some(db) = dbname {
        config.dbname(db);
    }
    config.application_name(app);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let db = config.get_dbname().unwrap_or("postgres").to_string();
    config.connect(NoTls).map_err(|e| Error::sql("connect", db, e))
}

pub fn config(connstr: &str) -> Result<Config> {
    connstr.parse::<Config>().map_err(|e| Error::Usage(format!("-C/--connstr: cannot parse {connstr:?}: {e}")))
}

/// The user of `--connstr`: the superuser `initdb` creates in local mode.
pub fn connstr_user(connstr: &str) -> Result<String> {
    config(connstr)?
        .get_user()
        .map(str::to_string)
        .ok_or_else(|| Error::Usage(format!("-C/--connstr: {connstr:?} names no user")))
}

/// The database of `--connstr` (the "system database"), `postgres` by default.
pub fn connstr_dbname(connstr: &str) -> Result<String> {
    let c = config(connstr)?;
    Ok(c.get_dbname().or(c.get_user()).unwrap_or("postgres").to_string())
}

/// Connections one step of a start leaves open for a later step, by database: the drop of
/// inherited subscriptions hands its per-database connections to the catalog apply, which
/// then needs no backend start of its own there (the first one in a database after a server
/// start is the costly one: it rebuilds the relation cache file). At most `limit` are kept,
/// so others still find connection slots; whatever nobody took is closed by a thread when
/// this is dropped, so the backends' exits stay off the start's critical path.
pub struct Warm {
    clients: Mutex<Vec<(String, Client)>>,
    limit: usize,
}

impl Warm {
    pub fn new(limit: usize) -> Warm {
        Warm { clients: Mutex::new(Vec::new()), limit }
    }

    /// Keeps `client`, connected to `db`, unless `limit` are kept already (then it closes).
    pub fn put(&self, db: &str, client: Client) {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() < self.limit {
            clients.push((db.to_string(), client));
        }
    }

    /// A kept connection to `db` that is still open, if any.
    pub fn take(&self, db: &str) -> Option<Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|(_, c)| !c.is_closed());
        let at = clients.iter().position(|(d, _)| d == db)?;
        Some(clients.swap_remove(at).1)
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        let clients = std::mem::take(self.clients.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !clients.is_empty() {
            // If no thread can be started, the clients close here, which is only slower.
            let _ = std::thread::Builder::new().name("close-connections".into()).spawn(move || drop(clients));
        }
    }
}
