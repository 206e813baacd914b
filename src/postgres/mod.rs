//! Everything that touches Postgres: PGDATA, config files, the process, SQL.

pub mod apply;
pub mod basebackup;
pub mod conf;
pub mod pgdata;
pub mod process;
pub mod safekeepers;
pub mod sql;
pub mod stop;
pub mod storage;
pub mod subscriptions;
