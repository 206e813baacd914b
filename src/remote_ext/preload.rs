//! The start-up preload (reference 5.9 step 7): the libraries `shared_preload_libraries` names
//! (in the spec's settings and in its `postgresql_conf` text) that `remote_extensions.library_index`
//! lists are downloaded and installed before Postgres starts, `neon` and `databricks_auth`
//! excepted. It runs on its own thread, beside the preparation of PGDATA; [`Preload::finish`]
//! waits for it and alone makes the [`Preloaded`] proof that the spawn of Postgres takes.
//!
//! A library that cannot be fetched fails the start, with the library named, unless a file of
//! that name is in Postgres's library directory already (then a warning): Postgres would refuse
//! to start without it anyway, and would say less. Neon only logs the failure and lets
//! Postgres fail on the missing file. A library whose extension the spec does not list (or
//! has no `extension_data` for) fails the start before anything is touched, as in Neon.

use super::{Fetched, Installer};
use crate::error::{Error, Result};
use crate::spec::{ComputeSpec, RemoteExtSpec};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How often a wait for the preload looks at the termination flag.
const INTERRUPT_CHECK: Duration = Duration::from_millis(100);

/// Libraries Neon never downloads at start-up.
const NEVER_PRELOADED: [&str; 2] = ["neon", "databricks_auth"];

/// The extension whose archive provides `name` (a library when `is_library`, `.so…` dropped
/// and mapped through `library_index`), if the spec lists it; otherwise the reason, Neon's words.
pub fn lookup(remote: &RemoteExtSpec, name: &str, is_library: bool) -> Result<String, String> {
    let mut name = name.to_string();
    if is_library {
        if let Some(i) = name.find(".so") {
            name.truncate(i);
        }
        match remote.library_index.get(&name) {
            Some(ext) => name = ext.clone(),
            None => return Err(format!("library {name} is not found")),
        }
    }
    let listed =
        [&remote.public_extensions, &remote.custom_extensions].into_iter().flatten().any(|l| l.contains(&name));
    if !listed {
        return Err(format!("extension {name} is not found"));
    }
    if !remote.extension_data.contains_key(&name) {
        return Err(format!("real_ext_name {name} is not found"));
    }
    Ok(name)
}

/// The libraries to preload: named by `shared_preload_libraries` (settings first, then the
/// `postgresql_conf` line), listed in `library_index`, without `neon`, `databricks_auth` and
/// repeats.
pub fn libraries(spec: &ComputeSpec) -> Vec<String> {
    let Some(remote) = &spec.remote_extensions else { return Vec::new() };
    let from_conf = spec
        .cluster
        .postgresql_conf
        .as_deref()
        .and_then(|t| crate::postgres::conf::find_in_conf_text(t, "shared_preload_libraries"));
    let mut out: Vec<String> = Vec::new();
    for value in [spec.setting("shared_preload_libraries"), from_conf].into_iter().flatten() {
        for lib in value.split(',').map(|l| l.trim().trim_matches(['\'', '"', ' '])) {
            let wanted = !lib.is_empty() && !NEVER_PRELOADED.contains(&lib) && remote.library_index.contains_key(lib);
            if wanted && !out.iter().any(|l| l == lib) {
                out.push(lib.to_string());
            }
        }
    }
    out
}

/// Proof that the start's preload finished and installed what it had to (or had nothing to
/// do). Only [`Preload::finish`] makes one; it cannot be built outside its module (E0451):
/// ```compile_fail,E0451
/// let _ = compute_ctl::remote_ext::Preloaded { _private: () };
/// ```
/// ```no_run
/// fn f(p: compute_ctl::remote_ext::Preloaded) -> compute_ctl::remote_ext::Preloaded { p }
/// ```
#[derive(Debug)]
pub struct Preloaded {
    _private: (),
}

/// A preload under way (or nothing to do): its thread sends the outcome once.
pub struct Preload {
    outcome: Option<Receiver<Result<()>>>,
}

impl Preload {
    /// Starts the preload for `spec` on its own thread. Fails at once, before anything is
    /// touched, when a library `library_index` maps names an extension the spec does not list.
    /// Without `--remote-ext-base-url` nothing is fetched (as Neon): Postgres finds the
    /// libraries where they are, or fails.
    pub fn start(installer: &Arc<Installer>, spec: &ComputeSpec) -> Result<Preload> {
        let libs = libraries(spec);
        let (Some(remote), false) = (&spec.remote_extensions, libs.is_empty()) else {
            return Ok(Preload { outcome: None });
        };
        if installer.base_url().is_none() {
            log::warn!("no --remote-ext-base-url: not preloading {}", libs.join(", "));
            return Ok(Preload { outcome: None });
        }
        let mut wanted = Vec::new();
        for lib in libs {
            let ext = lookup(remote, &lib, true).map_err(|reason| preload_error(&lib, reason))?;
            wanted.push((lib, ext));
        }
        let installer = installer.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("preload".into())
            .spawn(move || {
                let _ = tx.send(preload(&installer, &wanted));
            })
            .map_err(|e| Error::system("cannot start the preload thread", e))?;
        Ok(Preload { outcome: Some(rx) })
    }

    /// Waits for the preload to end (each download is bounded by its timeout), or gives up
    /// with `Error::Interrupted` soon after `interrupted` is set (a termination request); the
    /// downloads then end on their own.
    pub fn finish(self, interrupted: &AtomicBool) -> Result<Preloaded> {
        if let Some(rx) = self.outcome {
            loop {
                match rx.recv_timeout(INTERRUPT_CHECK) {
                    Ok(outcome) => break outcome?,
                    Err(RecvTimeoutError::Timeout) if interrupted.load(Ordering::SeqCst) => {
                        return Err(Error::Interrupted);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(preload_error("(all)", "the preload thread panicked (see the log)".into()));
                    }
                }
            }
        }
        Ok(Preloaded { _private: () })
    }
}

fn preload_error(library: &str, reason: String) -> Error {
    Error::Preload { library: library.to_string(), reason }
}

/// Fetches every archive at once, one thread each; the first failure (in the order given) that
/// the library directory cannot make up for is the error.
fn preload(installer: &Installer, wanted: &[(String, String)]) -> Result<()> {
    let started = Instant::now();
    let names: Vec<&str> = wanted.iter().map(|(l, _)| l.as_str()).collect();
    log::info!("preloading shared libraries from the remote extension storage: {}", names.join(", "));
    let results: Vec<_> = std::thread::scope(|s| {
        let running: Vec<_> = wanted.iter().map(|(_, ext)| s.spawn(move || installer.fetch(ext))).collect();
        running.into_iter().map(|h| h.join()).collect()
    });
    let mut downloaded = 0;
    for ((lib, ext), result) in wanted.iter().zip(results) {
        let failure = match result {
            Ok(Ok(Fetched::Downloaded { .. })) => {
                downloaded += 1;
                continue;
            }
            Ok(Ok(Fetched::AlreadyInstalled | Fetched::Waited)) => continue,
            Ok(Err(f)) => f.to_string(),
            Err(_) => "its download panicked (see the log)".to_string(),
        };
        let file = installer
            .dirs()
            .ok()
            .map(|d| d.lib.join(if lib.ends_with(".so") { lib.clone() } else { format!("{lib}.so") }));
        match file.filter(|f| f.exists()) {
            Some(f) => log::warn!(
                "cannot preload {lib} (extension {ext}): {failure}; starting with the {} already there",
                f.display()
            ),
            None => return Err(preload_error(lib, format!("extension {ext}: {failure}"))),
        }
    }
    log::info!(
        "preloaded {} shared librar{} ({downloaded} downloaded) in {} ms",
        wanted.len(),
        if wanted.len() == 1 { "y" } else { "ies" },
        started.elapsed().as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(settings: &str, conf: &str, index: &str) -> ComputeSpec {
        let json = format!(
            r#"{{"format_version":1.0,"cluster":{{"roles":[],"databases":[],"settings":[{settings}],"postgresql_conf":{conf}}},
                "remote_extensions":{{"public_extensions":["anon","pgx"],"library_index":{index},
                "extension_data":{{"anon":{{"control_data":{{}},"archive_path":""}}}}}}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn libraries_come_from_settings_and_conf_text_and_skip_neon_and_unindexed_ones() {
        let s = spec(
            r#"{"name":"shared_preload_libraries","value":"neon, anon,pg_stat_statements","vartype":"string"}"#,
            r#""port=5432\nshared_preload_libraries='databricks_auth,pgx,anon'\n""#,
            r#"{"anon":"anon","pgx":"pgx","neon":"neon","databricks_auth":"databricks_auth"}"#,
        );
        assert_eq!(libraries(&s), ["anon", "pgx"]);
        assert!(libraries(&spec("", "null", "{}")).is_empty());
    }

    #[test]
    fn lookup_says_what_is_missing() {
        let s = spec("", "null", r#"{"anon":"anon","pgx":"pgx","lost":"lost"}"#);
        let r = s.remote_extensions.as_ref().unwrap();
        assert_eq!(lookup(r, "anon.so.1", true), Ok("anon".into()));
        assert_eq!(lookup(r, "nope", true), Err("library nope is not found".into()));
        assert_eq!(lookup(r, "lost", true), Err("extension lost is not found".into()));
        assert_eq!(lookup(r, "pgx", false), Err("real_ext_name pgx is not found".into()));
    }

    /// A termination request ends the wait for a preload that does not end.
    #[test]
    fn a_termination_request_ends_the_wait() {
        let (tx, rx) = mpsc::channel();
        let err = Preload { outcome: Some(rx) }.finish(&AtomicBool::new(true)).unwrap_err();
        assert!(matches!(err, Error::Interrupted), "{err:?}");
        drop(tx);
    }

    /// A library the index maps to an unlisted extension fails the start before any thread
    /// runs, naming the library.
    #[test]
    fn an_unlisted_library_fails_at_once() {
        let s = spec(
            r#"{"name":"shared_preload_libraries","value":"lost","vartype":"string"}"#,
            "null",
            r#"{"lost":"lost"}"#,
        );
        let installer = Arc::new(Installer::new(Some("http://127.0.0.1:1/".into()), std::path::Path::new("/nowhere")));
        let err = Preload::start(&installer, &s).err().unwrap();
        assert_eq!(
            err.report().to_string(),
            "cannot preload shared library lost (named by shared_preload_libraries): extension lost is not found"
        );
    }
}
