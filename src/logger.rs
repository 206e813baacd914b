//! A logger that never panics. `simple_logger` writes with `eprintln!`, which panics when
//! stderr is a closed pipe (a restarted log shipper): every thread then died at its next log
//! line, the signal thread first, and compute_ctl went deaf to SIGTERM. Here a failed write is
//! dropped, and each line is written whole under the stderr lock.

use std::io::Write;

struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = crate::time::rfc3339_z(std::time::SystemTime::now());
        // Milliseconds are enough in a log line: `2026-11-25T22:53:53.497Z`.
        let stamp = format!("{}Z", &now[..23]);
        let line = format!("{stamp} {:<5} [{}] {}\n", record.level(), record.target(), record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Installs the logger once; the level comes from `RUST_LOG` (`error` … `trace`, `off`),
/// `info` by default. A second call does nothing.
pub fn init(rust_log: Option<&str>) {
    let level = rust_log.and_then(|v| v.trim().parse::<log::LevelFilter>().ok()).unwrap_or(log::LevelFilter::Info);
    // Leaked once: the logger lives as long as the process.
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
