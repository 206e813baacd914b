//! Connections to the local Postgres, and the statements more than one step sends.

use crate::error::{Error, Result};
use crate::escape::{quote_ident, quote_literal};
use postgres::{Client, Config, NoTls};
use std::sync::Mutex;
use std::time::Duration;

/// Application names, as Neon sets them, so `pg_stat_activity` tells who is who.
pub const APP_APPLY: &str = "compute_ctl:apply_config";
pub const APP_MONITOR: &str = "compute_ctl:activity_monitor";
pub const APP_SUBSCRIPTIONS: &str = "compute_ctl:drop_subscriptions";
pub const APP_STATUS: &str = "compute_ctl:get_dbs_and_roles";

/// Start-up options of every maintenance connection: they override per-database and per-role
/// settings that would break the catalog apply or the subscriptions drop (options from the
/// client win over `ALTER DATABASE … SET`, and no statement is needed).
const MAINTENANCE_OPTIONS: &str = "-c role=none -c default_transaction_read_only=off -c search_path=public \
     -c statement_timeout=0 -c lock_timeout=0 -c idle_in_transaction_session_timeout=0";

/// Connects with `--connstr`, optionally to another database, tagged with `app`.
pub fn connect(connstr: &str, dbname: Option<&str>, app: &str) -> Result<Client> {
    open(connstr, dbname, app, None)
}

/// A maintenance connection (start-up options that override per-database and per-role
/// settings), for the catalog apply and the subscriptions drop.
pub fn connect_maintenance(connstr: &str, dbname: Option<&str>, app: &str) -> Result<Client> {
    open(connstr, dbname, app, Some(MAINTENANCE_OPTIONS))
}

/// The one way compute_ctl connects: a 10 s connect timeout unless `--connstr` sets one, and
/// any `options` after those of `--connstr`.
fn open(connstr: &str, dbname: Option<&str>, app: &str, options: Option<&str>) -> Result<Client> {
    let mut config = config(connstr)?;
    if let Some(db) = dbname {
        config.dbname(db);
    }
    config.application_name(app);
    if let Some(extra) = options {
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {extra}"),
            _ => extra.to_string(),
        };
        config.options(&options);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let db = default_dbname(&config).to_string();
    config.connect(NoTls).map_err(|e| Error::sql("connect", db, e))
}

/// The database a connection goes to: the one named, else the user's own (as libpq does),
/// else `postgres`.
fn default_dbname(config: &Config) -> &str {
    config.get_dbname().or(config.get_user()).unwrap_or("postgres")
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

/// The database of `--connstr` (the "system database").
pub fn connstr_dbname(connstr: &str) -> Result<String> {
    Ok(default_dbname(&config(connstr)?).to_string())
}

/// A connection string that cannot connect: a subscription about to be dropped gets it, so
/// `DROP SUBSCRIPTION` cannot reach the publisher (not even to drop table-sync slots).
const NOWHERE: &str = "host=/nonexistent/compute_ctl/detached port=1 dbname=none connect_timeout=1";

/// The statements that drop subscription `name` and leave the publisher alone: disable it,
/// point its connection nowhere, detach its slot (so `DROP` does not drop the slot), drop.
/// Used by the drop of inherited subscriptions and by the deletion of a database.
pub fn detach_and_drop(name: &str) -> [String; 4] {
    let q = quote_ident(name);
    [
        format!("ALTER SUBSCRIPTION {q} DISABLE"),
        format!("ALTER SUBSCRIPTION {q} CONNECTION {}", quote_literal(NOWHERE)),
        format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)"),
        format!("DROP SUBSCRIPTION {q}"),
    ]
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
        let mut clients = crate::locks::lock(&self.clients);
        if clients.len() < self.limit {
            clients.push((db.to_string(), client));
        }
    }

    /// A kept connection to `db` that is still open, if any.
    pub fn take(&self, db: &str) -> Option<Client> {
        let mut clients = crate::locks::lock(&self.clients);
        clients.retain(|(_, c)| !c.is_closed());
        let at = clients.iter().position(|(d, _)| d == db)?;
        Some(clients.swap_remove(at).1)
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        let clients = std::mem::take(crate::locks::get_mut(&mut self.clients));
        if !clients.is_empty() {
            // If no thread can be started, the clients close here, which is only slower.
            let _ = std::thread::Builder::new().name("close-connections".into()).spawn(move || drop(clients));
        }
    }
}
