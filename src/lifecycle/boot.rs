//! The start-up procedure shared by `Init` and `Configuration<Cold>`, and the live
//! reconfiguration of `Configuration<Live>`.
//!
//! A start is two types: [`Boot`] while Postgres is down (it holds the [`Stopped`] proof) and
//! [`Ready`] once the postmaster accepts connections (it holds the subscription guard).
//!
//! While `Boot` prepares PGDATA, the preload of remote `shared_preload_libraries` runs beside
//! it (as in Neon); the spawn of Postgres takes the [`Preloaded`] proof that only waiting for
//! that preload makes, so Postgres never starts before its libraries are installed.
//!
//! Contracts of [`start`]:
//! - prerequisites: a validated spec; no Postgres of ours runs on PGDATA;
//! - on success: the preload libraries are installed, Postgres is ready, configured,
//!   subscriptions handled, status `running`;
//! - on error: any Postgres it started is stopped (dropping [`Postmaster`] does that), status
//!   `failed` with the cause; a local PGDATA is never wiped. A preload that fails (a library
//!   named by `shared_preload_libraries` that can be neither fetched nor found installed)
//!   fails the start before Postgres is spawned, naming the library.

use super::Context;
use super::states::{Failed, Running, synced_after_exit};
use crate::error::{Error, Result};
use crate::postgres::process::Postmaster;
use crate::postgres::subscriptions::{self, Guard};
use crate::postgres::{Stopped, apply, conf, hba, pgdata, sql, storage, tls};
use crate::remote_ext::{Preload, Preloaded};
use crate::spec::{AuditLogLevel, ComputeMode, ParsedSpec, StorageMode};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long Postgres may take to become ready (Neon: 60 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A compute on its way to `Running`, Postgres not started yet. Only the pre-`Running` states
/// can make one, and it alone holds the [`Stopped`] proof that preparing PGDATA and guarding
/// subscriptions need; starting Postgres hands the proof to the postmaster.
pub struct Boot {
    ctx: Context,
    spec: ParsedSpec,
    proof: Stopped,
    guard: Option<Guard>,
    /// The preload of remote libraries, running beside the PGDATA preparation until
    /// [`Boot::preloaded`] waits for it.
    preload: Option<Preload>,
}

/// Postgres has started and accepts connections but the compute is not open yet: drops
/// inherited subscriptions (with the guard [`Boot`] made), applies the catalog.
pub struct Ready {
    ctx: Context,
    spec: ParsedSpec,
    postmaster: Postmaster,
    guard: Option<Guard>,
    /// Connections the subscriptions drop leaves for the catalog apply.
    warm: Option<sql::Warm>,
    /// Microseconds since `main` began when Postgres was spawned and when it was ready.
    spawned_us: u64,
    ready_us: u64,
}

/// A start that went wrong: what is needed to clean up and enter `Failed`.
struct Aborted {
    ctx: Context,
    spec: ParsedSpec,
    postmaster: Option<Postmaster>,
    error: Error,
}

pub(super) fn start(ctx: Context, spec: ParsedSpec) -> Result<Running, Failed> {
    let started = Instant::now();
    let mut boot = Boot { ctx, spec, proof: Stopped::minted_by_boot(), guard: None, preload: None };
    // A spec that would weaken compute_ctl's own roles is refused before PGDATA is touched.
    let superuser = sql::connstr_user(&boot.ctx.node.connstr);
    let privileged = boot.ctx.node.privileged_role.clone();
    let checked = superuser.and_then(|me| apply::privileged::check(boot.spec.spec(), &me, &privileged));
    // On an error the preload is not waited for: its downloads end on their own, and what they
    // install counts for a later start (the installer remembers it).
    let prepared = checked
        .and_then(|()| boot.start_preload())
        .and_then(|()| boot.wait_for_cert())
        .and_then(|()| boot.prepare_pgdata())
        .and_then(|()| boot.configure_rsyslog())
        .and_then(|()| boot.preloaded())
        .and_then(|p| boot.check_interrupted().map(|()| p));
    let preloaded = match prepared {
        Ok(p) => p,
        Err(error) => return Err(abort(Aborted { ctx: boot.ctx, spec: boot.spec, postmaster: None, error })),
    };
    let mut ready = boot.start_postgres(preloaded).map_err(|a| abort(*a))?;
    match ready.configure(started) {
        Ok(()) => {
            // One line that splits the start into before-spawn, Postgres start and after-ready
            // (examples/bench_start.rs reads it).
            log::info!(
                "start timing: postgres spawned at {} us, ready at {} us, running at {} us since main",
                ready.spawned_us,
                ready.ready_us,
                crate::time::since_process_start_us()
            );
            Ok(Running::enter(ready.ctx, ready.spec, ready.postmaster))
        }
        Err(error) => {
            ready.warm = None;
            Err(abort(Aborted { ctx: ready.ctx, spec: ready.spec, postmaster: Some(ready.postmaster), error }))
        }
    }
}

/// Stops the Postgres a failed start left running, syncs after it, and enters `Failed`.
fn abort(mut a: Aborted) -> Failed {
    // The sync after exit clears the termination flag: remember here that a signal ended it.
    if a.ctx.node.interrupted.load(Ordering::SeqCst) && !matches!(a.error, Error::Interrupted) {
        log::info!("after a termination signal: {}", a.error.report());
        a.error = Error::Interrupted;
    }
    if let Some(pm) = a.postmaster {
        log::info!("start failed: stopping postgres (pid {})", pm.pid());
        pm.shutdown(Duration::from_secs(10));
        // Postgres ran, so a Primary may have written WAL: sync it as after any exit.
        synced_after_exit(&a.ctx, &a.spec);
    }
    a.ctx.set_handle(None);
    Failed::enter(a.ctx, a.error, None)
}

impl Boot {
    fn check_interrupted(&self) -> Result<()> {
        if self.ctx.node.interrupted.load(Ordering::SeqCst) { Err(Error::Interrupted) } else { Ok(()) }
    }

    /// With `compute_ctl_config.tls` (whatever the features, as Neon), waits until the
    /// certificate file is readable, at most [`tls::cert_wait`] (Neon waits for ever); when
    /// Postgres is to serve TLS, the key must be readable too. Before PGDATA is touched.
    fn wait_for_cert(&self) -> Result<()> {
        let node = &self.ctx.node;
        let Some(t) = &node.tls else { return Ok(()) };
        tls::wait_readable(std::path::Path::new(&t.cert_path), tls::cert_wait(), &node.interrupted)?;
        if node.ssl(&self.spec) {
            std::fs::File::open(&t.key_path)
                .map_err(|e| Error::io("compute_ctl_config.tls.key_path: cannot read", &t.key_path, e))?;
        }
        Ok(())
    }

    /// Starts fetching the remote libraries `shared_preload_libraries` names (reference 5.9
    /// step 7) on their own thread; a library the spec's index maps to an extension it does
    /// not list fails here, before PGDATA is touched.
    fn start_preload(&mut self) -> Result<()> {
        self.preload = Some(Preload::start(&self.ctx.extensions, self.spec.spec())?);
        Ok(())
    }

    /// Waits for the preload (each download is bounded by its timeout; a termination request
    /// ends the wait) and gives the proof the spawn of Postgres takes.
    fn preloaded(&mut self) -> Result<Preloaded> {
        let started = Instant::now();
        let preload = self.preload.take().expect("the preload is started before it is waited for, once per start");
        let preloaded = preload.finish(&self.ctx.node.interrupted)?;
        log::debug!("waited {} ms for the preload after preparing PGDATA", elapsed_ms(started));
        Ok(preloaded)
    }

    /// Makes PGDATA ready to start: local mode keeps it (running `initdb` when it is missing
    /// or empty), pageserver mode fetches it anew. Then writes the configuration files and,
    /// when the subscriptions flag asks for it, keeps apply workers from ever starting.
    pub fn prepare_pgdata(&mut self) -> Result<()> {
        let node = &self.ctx.node;
        let pgdata = &node.pgdata;
        pgdata::refuse_foreign_postmaster(pgdata)?;
        match self.spec.storage() {
            StorageMode::Local => {
                pgdata::initdb(&self.proof, node)?;
                pgdata::ensure_owned(pgdata, node.run_as)?;
            }
            StorageMode::Pageserver { .. } => {
                let t = storage::prepare_from_pageserver(&self.proof, node, &self.spec)?;
                self.ctx.shared.update(|s| {
                    s.metrics.sync_safekeepers_ms = t.sync_safekeepers_ms;
                    s.metrics.pageserver_connect_micros = t.pageserver_connect_micros;
                    s.metrics.basebackup_ms = t.basebackup_ms;
                    s.metrics.basebackup_bytes = t.basebackup_bytes;
                });
            }
        }
        // One read of pg_hba.conf, and a write only when it changes (the first start).
        hba::prepare(&self.proof, node, matches!(self.spec.storage(), StorageMode::Local))?;
        // The key and certificate first: the conf that names them must not be seen without them.
        let ssl = node.ssl(&self.spec);
        if let Some(t) = node.tls.as_ref().filter(|_| ssl) {
            tls::install(node, t)?;
        }
        // Written here in both modes: pageserver mode wrote it before the sync too, but a
        // basebackup may carry the source's own postgresql.conf, which must not win.
        let text = conf::render(
            &self.spec,
            node.internal_http_port,
            self.spec.spec().drop_subscriptions_before_start,
            &node.privileged_role,
            ssl,
        );
        // Only what changed is written (a restart of the same spec writes nothing), unsynced:
        // see `conf::write_if_changed`.
        conf::write_if_changed(&pgdata.join("postgresql.conf"), text.as_bytes())?;
        conf::write_if_changed(&pgdata.join(conf::TEMP_OVERRIDE), b"")?;
        let standby = pgdata.join("standby.signal");
        if matches!(self.spec.mode(), ComputeMode::Static(_) | ComputeMode::Replica) && !standby.exists() {
            std::fs::write(&standby, b"").map_err(|e| Error::io("cannot create", &standby, e))?;
        }
        if let Some(u) = node.run_as {
            use std::os::unix::fs::MetadataExt;
            for f in ["postgresql.conf", "pg_hba.conf", conf::TEMP_OVERRIDE, "standby.signal"] {
                let p = pgdata.join(f);
                // A stat, not a chown per start: a chown to the same owner still dirties the inode.
                if std::fs::metadata(&p).is_ok_and(|m| m.uid() != u.uid || m.gid() != u.gid) {
                    std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid))
                        .map_err(|e| Error::io("cannot chown", &p, e))?;
                }
            }
        }
        let guard_started = Instant::now();
        self.guard = Some(subscriptions::guard_before_start(&self.proof, node, &self.spec)?);
        let ms = elapsed_ms(guard_started);
        self.ctx.shared.update(|s| s.metrics.drop_subscriptions_ms += ms);
        Ok(())
    }

    /// Between PGDATA and the spawn, as Neon: compliance audit logging (rsyslog file, restart,
    /// GC of the audit files) and the Postgres logs export file. Then, with an audit level,
    /// the libraries it preloads must exist, or Postgres would refuse to start with only a
    /// line in its log.
    fn configure_rsyslog(&mut self) -> Result<()> {
        let s = self.spec.spec();
        let settings = &self.ctx.rsyslog;
        if matches!(s.audit_log_level, AuditLogLevel::Hipaa | AuditLogLevel::Extended | AuditLogLevel::Full) {
            let ids = (s.endpoint_id.as_deref().unwrap_or(""), s.project_id.as_deref().unwrap_or(""));
            crate::rsyslog::configure_audit(settings, &self.ctx.node.pgdata, ids.0, ids.1)?;
        }
        crate::rsyslog::configure_logs_export(settings, s.logs_export_host.as_deref())?;
        if let Some(preload) = conf::audit_preload(&self.spec) {
            check_audit_libraries(&self.ctx.node, s.audit_log_level, &preload)?;
        }
        Ok(())
    }

    /// Starts `postgres -D PGDATA` as the Postgres user, giving it the [`Stopped`] proof, and
    /// waits until it is ready. It takes the [`Preloaded`] proof: the libraries Postgres
    /// preloads from the remote extension storage are installed.
    fn start_postgres(self, _preloaded: Preloaded) -> Result<Ready, Box<Aborted>> {
        let started = Instant::now();
        let Boot { ctx, spec, proof, guard, preload: _ } = self;
        let token = spec.spec().storage_auth_token.clone();
        let env: Vec<(&str, &str)> = token.as_deref().map(|t| ("NEON_AUTH_TOKEN", t)).into_iter().collect();
        let on_exit = ctx.on_postgres_exit.clone();
        let spawned_us = crate::time::since_process_start_us();
        let spawned = Postmaster::spawn(proof, &ctx.node, &env, Box::new(move |status| on_exit(status)));
        let pm = match spawned {
            Ok(pm) => pm,
            Err(error) => return Err(Box::new(Aborted { ctx, spec, postmaster: None, error })),
        };
        ctx.set_handle(Some(pm.handle()));
        if let Err(error) = pm.wait_ready(READY_TIMEOUT, &ctx.node.interrupted) {
            return Err(Box::new(Aborted { ctx, spec, postmaster: Some(pm), error }));
        }
        let ready_us = crate::time::since_process_start_us();
        let ms = elapsed_ms(started);
        log::info!("postgres is ready after {ms} ms");
        ctx.shared.update(|s| s.metrics.start_postgres_ms = ms);
        Ok(Ready { ctx, spec, postmaster: pm, guard, warm: None, spawned_us, ready_us })
    }
}

impl Ready {
    fn configure(&mut self, started: Instant) -> Result<()> {
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

    /// Drops the subscriptions inherited from the parent, once per timeline, when the spec
    /// asks for it (even with `skip_pg_catalog_updates`: it is a safety step).
    pub fn drop_subscriptions_before_start(&mut self) -> Result<()> {
        let Some(guard) = self.guard.as_ref().filter(|_| subscriptions::wanted(&self.spec)) else { return Ok(()) };
        let started = Instant::now();
        self.warm = Some(subscriptions::drop_inherited(&self.ctx.node, &self.spec, guard)?);
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
        let node = &self.ctx.node;
        apply::apply_spec(
            &node.connstr,
            &self.spec,
            &node.privileged_role,
            apply::Concurrency::AtStart,
            warm.as_ref(),
        )?;
        crate::postgres::migrations::run(&node.connstr, &node.privileged_role);
        Ok(())
    }

    /// Lets subscriptions created from now on replicate.
    fn release_guard(&mut self) -> Result<()> {
        match self.guard.take() {
            Some(guard) => subscriptions::release_guard(&self.ctx.node, &self.spec, guard, &self.postmaster),
            None => Ok(()),
        }
    }
}

/// The live reconfiguration: new `postgresql.conf`, reload, catalog apply. Never restarts
/// Postgres, never drops subscriptions. Returns the settings that changed but wait for a
/// restart (`pg_settings.pending_restart` once the reload was taken).
pub(super) fn reconfigure(ctx: &Context, spec: &ParsedSpec, pm: &Postmaster) -> Result<Vec<String>> {
    if pm.exit_status().is_some() {
        return Err(Error::PostgresStart { reason: "postgres is not running".into(), log_tail: pm.log_tail() });
    }
    let node = &ctx.node;
    apply::privileged::check(spec.spec(), &sql::connstr_user(&node.connstr)?, &node.privileged_role)?;
    // Before postgresql.conf, as Neon: the file Postgres's syslog output is forwarded by.
    crate::rsyslog::configure_logs_export(&ctx.rsyslog, spec.spec().logs_export_host.as_deref())?;
    // The key and certificate are copied again (a renewed certificate), and put back if the
    // reload is refused or does not take them.
    let ssl = node.ssl(spec);
    let installed = match node.tls.as_ref().filter(|_| ssl) {
        Some(t) => Some(tls::install(node, t)?),
        None => None,
    };
    let pending = match reload(ctx, spec, pm, ssl) {
        Ok(pending) => pending,
        Err(e) => {
            if let Some(installed) = installed.filter(tls::Installed::changed) {
                installed.restore(node.run_as)?;
                // Postgres may have read the new ones (and refused them): it reads the old again.
                pm.reload();
                log::info!("reconfigure failed: the previous TLS key and certificate were put back");
            }
            return Err(e);
        }
    };
    let s = spec.spec();
    if !s.skip_pg_catalog_updates && s.mode == ComputeMode::Primary {
        let concurrency = apply::Concurrency::Reconfigure(s.reconfigure_concurrency);
        apply::apply_spec(&node.connstr, spec, &node.privileged_role, concurrency, None)?;
        pm.reload();
    }
    log::info!(
        "finished reconfiguration of compute node for operation {}",
        s.operation_uuid.as_deref().unwrap_or("unknown")
    );
    Ok(pending)
}

/// The configuration part of [`reconfigure`], once the TLS files are in place: the new
/// `postgresql.conf`, checked, then reloaded, and (with TLS) the check that Postgres took the
/// key and certificate. On an error the old `postgresql.conf` is back.
fn reload(ctx: &Context, spec: &ParsedSpec, pm: &Postmaster, ssl: bool) -> Result<Vec<String>> {
    let node = &ctx.node;
    // A running compute never re-arms the subscriber guard: nothing here drops subscriptions.
    let text = conf::render(spec, node.internal_http_port, false, &node.privileged_role, ssl);
    let path = node.pgdata.join("postgresql.conf");
    let old = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    conf::write_postgres_conf(&node.pgdata, &text)?;
    // A value Postgres refuses would be ignored by the reload and would stop the next start:
    // put the old file back and fail with the setting named.
    let check = match apply::settings::check_postgresql_conf(&node.connstr) {
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
    if let Err(e) = apply::settings::check_startable(&node.postgres_bin(), &node.pgdata, node.run_as) {
        conf::write_atomically(&path, &old)?;
        return Err(e);
    }
    if !check.need_restart.is_empty() {
        log::info!("reconfigure: {} take effect only after a restart", check.need_restart.join(", "));
    }
    let mut client = sql::connect(&node.connstr, None, sql::APP_APPLY)?;
    let loaded_before = apply::settings::conf_load_time(&mut client)?;
    if ssl {
        pm.capture_log();
    }
    pm.reload();
    let pending = apply::settings::pending_restart(&mut client, &loaded_before, Duration::from_secs(5));
    drop(client);
    if ssl {
        // Checked only after a reload that was taken; the capture ends either way.
        let confirmed = match &pending {
            Ok(_) => tls::confirm_reload(&node.connstr, pm, &loaded_before, Duration::from_secs(5)),
            Err(_) => Ok(()),
        };
        pm.end_capture();
        if let Err(e) = confirmed {
            // The old conf goes back too (it may not have had the ssl lines); the caller puts
            // the old files back and reloads.
            conf::write_atomically(&path, &old)?;
            return Err(e);
        }
    }
    pending
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
/// the same PGDATA with the configuration already there. Nothing else of a start runs (no
/// PGDATA preparation, no subscription handling, no catalog apply). The [`Stopped`] proof is
/// minted only once `old` has exited.
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
    ctx.set_handle(None);
    let proof = Stopped::minted_by_boot();
    let token = spec.spec().storage_auth_token.clone();
    let env: Vec<(&str, &str)> = token.as_deref().map(|t| ("NEON_AUTH_TOKEN", t)).into_iter().collect();
    let on_exit = ctx.on_postgres_exit.clone();
    let pm = Postmaster::spawn(proof, &ctx.node, &env, Box::new(move |status| on_exit(status)))?;
    ctx.set_handle(Some(pm.handle()));
    pm.wait_ready(READY_TIMEOUT, &ctx.node.interrupted)?;
    log::info!("restart: postgres is ready again after {} ms", elapsed_ms(started));
    Ok(pm)
}

/// Fails, naming them, when `pg_config --pkglibdir` lacks a library the audit level preloads.
/// When `pg_config` cannot say (missing, or a relocated build whose directory does not
/// exist), Postgres's own start-up is left to report it.
fn check_audit_libraries(node: &crate::postgres::Node, level: AuditLogLevel, preload: &str) -> Result<()> {
    let pg_config = node.bindir.join("pg_config");
    let out = std::process::Command::new(&pg_config).arg("--pkglibdir").stdin(std::process::Stdio::null()).output();
    let dir = match out {
        Ok(o) if o.status.success() => std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        _ => {
            log::warn!("cannot run {} to check the audit libraries; postgres will", pg_config.display());
            return Ok(());
        }
    };
    if !dir.is_dir() {
        return Ok(());
    }
    let missing = conf::missing_libraries(preload, &dir);
    if missing.is_empty() {
        return Ok(());
    }
    let libs = missing.iter().map(|m| format!("{m}.so")).collect::<Vec<_>>().join(", ");
    Err(Error::Process {
        what: format!("audit_log_level {level:?}"),
        detail: format!(
            "shared_preload_libraries='{preload}' needs {libs}, which {} lacks: install pgaudit and \
             pgauditlogtofile, or set audit_log_level to Disabled; postgres was not started",
            dir.display()
        ),
    })
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    /// The [`Stopped`] proof is crate-visible to be minted here; no other file may mint one.
    #[test]
    fn only_boot_mints_the_stopped_proof() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut minters = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if std::fs::read_to_string(&p).unwrap().contains(concat!("minted_by_", "boot()")) {
                    minters.push(p.strip_prefix(&src).unwrap().display().to_string());
                }
            }
        }
        minters.sort();
        assert_eq!(minters, ["lifecycle/boot.rs", "postgres/mod.rs"]);
    }
}
