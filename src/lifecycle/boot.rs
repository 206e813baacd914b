//! The start-up procedure shared by `Init` and `Configuration<Cold>`, and the live
//! reconfiguration of `Configuration<Live>`.
//!
//! Contracts of [`start`]:
//! - prerequisites: a validated spec; no Postgres of ours runs on PGDATA;
//! - on success: Postgres is ready, configured, subscriptions handled, status `running`;
//! - on error: any Postgres it started is stopped (dropping [`Postmaster`] does that), status
//!   `failed` with the cause; a local PGDATA is never wiped.

use super::{Context, Failed, Running, clear_handle, elapsed_ms};
use crate::error::{Error, Result};
use crate::postgres::process::Postmaster;
use crate::postgres::{apply, conf, pgdata, sql, storage, subscriptions};
use crate::spec::{ComputeMode, ParsedSpec, StorageMode};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long Postgres may take to become ready (Neon: 60 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A compute on its way to `Running`. Only the pre-`Running` states can make one, so the
/// operations here (preparing PGDATA, dropping inherited subscriptions) cannot be reached
/// from a running compute.
pub struct Boot {
    ctx: Context,
    spec: ParsedSpec,
    postmaster: Option<Postmaster>,
    guard: subscriptions::Guard,
    /// Connections the subscriptions drop leaves for the catalog apply.
    warm: Option<sql::Warm>,
}

pub(super) fn start(ctx: Context, spec: ParsedSpec) -> Result<Running, Failed> {
    let started = Instant::now();
    let mut boot = Boot { ctx, spec, postmaster: None, guard: subscriptions::Guard::None, warm: None };
    match boot.run(started) {
        Ok(()) => {
            let postmaster = boot.postmaster.take().expect("run() leaves a started postmaster on success");
            Ok(Running::enter(boot.ctx, boot.spec, postmaster))
        }
        Err(e) => {
            boot.warm = None;
            if let Some(pm) = boot.postmaster.take() {
                log::info!("start failed: stopping postgres (pid {})", pm.pid());
                pm.shutdown(Duration::from_secs(10));
                // Postgres ran, so a Primary may have written WAL: sync it as after any exit.
                if let Err(e) = storage::sync_after_exit(&boot.ctx, &boot.spec) {
                    log::error!("{e}");
                }
            }
            clear_handle(&boot.ctx);
            Err(Failed::enter(boot.ctx, e, None))
        }
    }
}

impl Boot {
    fn run(&mut self, started: Instant) -> Result<()> {
        self.prepare_pgdata()?;
        self.check_interrupted()?;
        self.start_postgres()?;
        let config_started = Instant::now();
        self.drop_subscriptions_before_start()?;
        self.apply_catalog()?;
        self.release_guard()?;
        let config_ms = elapsed_ms(config_started);
        self.ctx.shared.update(|s| {
            s.metrics.config_ms = config_ms;
            s.metrics.total_startup_ms = s.start_time.elapsed().map_or(elapsed_ms(started), |d| d.as_millis() as u64);
        });
        Ok(())
    }

    fn check_interrupted(&self) -> Result<()> {
        if self.ctx.interrupted.load(Ordering::SeqCst) { Err(Error::Interrupted) } else { Ok(()) }
    }

    /// Makes PGDATA ready to start: local mode keeps it (running `initdb` when it is missing
    /// or empty), pageserver mode fetches it anew. Then writes the configuration files and,
    /// when the subscriptions flag asks for it, keeps apply workers from ever starting.
    pub fn prepare_pgdata(&mut self) -> Result<()> {
        let args = &self.ctx.args;
        let pgdata = &args.pgdata;
        match self.spec.storage() {
            StorageMode::Local => {
                let superuser = sql::connstr_user(&args.connstr)?;
                pgdata::initdb(&self.ctx.bindir, pgdata, &superuser, self.ctx.run_as)?;
                pgdata::ensure_owned(pgdata, self.ctx.run_as)?;
            }
            StorageMode::Pageserver { .. } => {
                storage::prepare_from_pageserver(&self.ctx, &self.spec)?;
            }
        }
        // Written here in both modes: pageserver mode wrote it before the sync too, but a
        // basebackup may carry the source's own postgresql.conf, which must not win.
        let text = conf::render(&self.spec, args.internal_http_port, self.spec.spec().drop_subscriptions_before_start);
        conf::write_postgres_conf(pgdata, &text)?;
        conf::line_in_file(&pgdata.join("pg_hba.conf"), conf::PG_HBA_ALL_MD5)?;
        conf::write_atomically(&pgdata.join(conf::TEMP_OVERRIDE), b"")?;
        let standby = pgdata.join("standby.signal");
        if matches!(self.spec.mode(), ComputeMode::Static(_) | ComputeMode::Replica) && !standby.exists() {
            std::fs::write(&standby, b"").map_err(|e| Error::io("cannot create", &standby, e))?;
        }
        if let Some(u) = self.ctx.run_as {
            for f in ["postgresql.conf", "pg_hba.conf", conf::TEMP_OVERRIDE, "standby.signal"] {
                let p = pgdata.join(f);
                if p.exists() {
                    std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid))
                        .map_err(|e| Error::io("cannot chown", &p, e))?;
                }
            }
        }
        let guard_started = Instant::now();
        self.guard = subscriptions::guard_before_start(&self.ctx, &self.spec)?;
        let ms = elapsed_ms(guard_started);
        self.ctx.shared.update(|s| s.metrics.drop_subscriptions_ms += ms);
        Ok(())
    }

    /// Starts `postgres -D PGDATA` as the Postgres user and waits until it is ready.
    pub fn start_postgres(&mut self) -> Result<()> {
        let started = Instant::now();
        let args = &self.ctx.args;
        let token = self.spec.spec().storage_auth_token.clone();
        let env: Vec<(&str, &str)> = token.as_deref().map(|t| ("NEON_AUTH_TOKEN", t)).into_iter().collect();
        let on_exit = self.ctx.on_postgres_exit.clone();
        let pm = Postmaster::spawn(
            &self.ctx.bindir.join("postgres"),
            &args.pgdata,
            self.ctx.run_as,
            &env,
            Box::new(move |status| on_exit(0, status)),
        )?;
        *self.ctx.postmaster.lock().unwrap_or_else(|p| p.into_inner()) = Some(pm.handle());
        let pm = self.postmaster.insert(pm);
        pm.wait_ready(READY_TIMEOUT, &self.ctx.interrupted)?;
        let ms = elapsed_ms(started);
        log::info!("postgres is ready after {ms} ms");
        self.ctx.shared.update(|s| s.metrics.start_postgres_ms = ms);
        Ok(())
    }

    /// Drops the subscriptions inherited from the parent, once per timeline, when the spec
    /// asks for it (even with `skip_pg_catalog_updates`: it is a safety step).
    pub fn drop_subscriptions_before_start(&mut self) -> Result<()> {
        if !subscriptions::wanted(&self.spec) {
            return Ok(());
        }
        let started = Instant::now();
        self.warm = Some(subscriptions::drop_inherited(&self.ctx, &self.spec, &self.guard)?);
        let ms = elapsed_ms(started);
        self.ctx.shared.update(|s| s.metrics.drop_subscriptions_ms += ms);
        Ok(())
    }

    /// Applies roles, databases and the rest of the catalog (Primary only, unless
    /// `skip_pg_catalog_updates`).
    pub fn apply_catalog(&mut self) -> Result<()> {
        // Whatever the apply does not take is closed when this goes.
        let warm = self.warm.take();
        let spec = self.spec.spec();
        if spec.skip_pg_catalog_updates || spec.mode != ComputeMode::Primary {
            return Ok(());
        }
        apply::apply_spec(&self.ctx.args.connstr, &self.spec, apply::Concurrency::AtStart, warm.as_ref())
    }

    /// Lets subscriptions created from now on replicate.
    fn release_guard(&mut self) -> Result<()> {
        let guard = std::mem::replace(&mut self.guard, subscriptions::Guard::None);
        let pm = self.postmaster.as_ref().expect("the guard is released after Postgres started");
        subscriptions::release_guard(&self.ctx, &self.spec, guard, pm)
    }
}

/// The live reconfiguration: new `postgresql.conf`, reload, catalog apply. Never restarts
/// Postgres, never drops subscriptions. Returns the settings that changed but wait for a
/// restart (`pg_settings.pending_restart` once the reload was taken).
pub(super) fn reconfigure(ctx: &Context, spec: &ParsedSpec, pm: &Postmaster) -> Result<Vec<String>> {
    if pm.exit_status().is_some() {
        return Err(Error::PostgresStart { reason: "postgres is not running".into(), log_tail: pm.log_tail() });
    }
    // A running compute never re-arms the subscriber guard: nothing here drops subscriptions.
    let text = conf::render(spec, ctx.args.internal_http_port, false);
    let path = ctx.args.pgdata.join("postgresql.conf");
    let old = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    conf::write_postgres_conf(&ctx.args.pgdata, &text)?;
    // A value Postgres refuses would be ignored by the reload and would stop the next start:
    // put the old file back and fail with the setting named.
    let check = match apply::settings::check_postgresql_conf(&ctx.args.connstr) {
        Ok(c) if c.invalid.is_empty() => c,
        Ok(c) => {
            conf::write_atomically(&path, &old)?;
            let reason = format!("Postgres refuses {}; postgresql.conf was left as it was", c.invalid.join(", "));
            return Err(Error::invalid("cluster.settings", reason));
        }
        Err(e) => {
            conf::write_atomically(&path, &old)?;
            return Err(e);
        }
    };
    if !check.need_restart.is_empty() {
        log::info!("reconfigure: {} take effect only after a restart", check.need_restart.join(", "));
    }
    let mut client = sql::connect(&ctx.args.connstr, None, sql::APP_APPLY)?;
    let loaded_before = apply::settings::conf_load_time(&mut client)?;
    pm.reload();
    let pending = apply::settings::pending_restart(&mut client, &loaded_before, Duration::from_secs(5))?;
    drop(client);
    let s = spec.spec();
    if !s.skip_pg_catalog_updates && s.mode == ComputeMode::Primary {
        apply::apply_spec(&ctx.args.connstr, spec, apply::Concurrency::Reconfigure(s.reconfigure_concurrency), None)?;
        pm.reload();
    }
    log::info!(
        "finished reconfiguration of compute node for operation {}",
        s.operation_uuid.as_deref().unwrap_or("unknown")
    );
    Ok(pending)
}

/// A restart keeps PGDATA, which only local storage allows: a pageserver compute's PGDATA
/// is fetched anew for every start, after its safekeepers are synced.
pub(super) fn restart_allowed(spec: &ParsedSpec) -> Result<(), String> {
    match spec.storage() {
        StorageMode::Local => Ok(()),
        StorageMode::Pageserver { .. } => Err("a compute on a pageserver cannot restart Postgres on its own: \
             PGDATA must be fetched anew after a safekeeper sync; the control plane must restart the compute"
            .into()),
    }
}

/// `POST /restart` in local mode: a fast shutdown of `old`, then Postgres started again on
/// the same PGDATA with the configuration already there. Nothing else of a start runs.
pub(super) fn restart(ctx: &Context, spec: &ParsedSpec, old: Postmaster) -> Result<Postmaster> {
    let started = Instant::now();
    old.stop(crate::postgres::process::StopMode::Fast);
    let status = old.wait_exit(None).expect("waiting without a timeout returns a status");
    log::info!(
        "restart: postgres stopped ({}) in {} ms",
        crate::postgres::process::describe_exit(status),
        elapsed_ms(started)
    );
    drop(old);
    clear_handle(ctx);
    let token = spec.spec().storage_auth_token.clone();
    let env: Vec<(&str, &str)> = token.as_deref().map(|t| ("NEON_AUTH_TOKEN", t)).into_iter().collect();
    let on_exit = ctx.on_postgres_exit.clone();
    let pm = Postmaster::spawn(
        &ctx.bindir.join("postgres"),
        &ctx.args.pgdata,
        ctx.run_as,
        &env,
        Box::new(move |status| on_exit(0, status)),
    )?;
    *ctx.postmaster.lock().unwrap_or_else(|p| p.into_inner()) = Some(pm.handle());
    pm.wait_ready(READY_TIMEOUT, &ctx.interrupted)?;
    log::info!("restart: postgres is ready again after {} ms", elapsed_ms(started));
    Ok(pm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"{"format_version":1.0,"cluster":{"roles":[],"databases":[]},
        "tenant_id":"b0554b632bd4d547a63b86c3630317e8","timeline_id":"2414a61ffc94e428f14b5758fe308e13"}"#;

    #[test]
    fn restart_is_for_local_storage_only_and_says_who_restarts_otherwise() {
        assert_eq!(restart_allowed(&ParsedSpec::parse(MIN).unwrap()), Ok(()));
        let json = MIN.replacen('{', r#"{"pageserver_connstring":"postgresql://x@127.0.0.1:1","mode":"Replica","#, 1);
        let why = restart_allowed(&ParsedSpec::parse(&json).unwrap()).unwrap_err();
        assert!(why.contains("control plane must restart the compute"), "{why}");
    }
}
