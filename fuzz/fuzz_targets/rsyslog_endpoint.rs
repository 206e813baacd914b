//! The audit receiver's variables (`AUDIT_LOGGING_ENDPOINT`, `AUDIT_LOGGING_TLS_ENDPOINT`) and
//! the ids written into the rsyslog file: any text gives a target or an error naming the
//! variable, never a panic; a target has a host and a port; and whatever the ids hold, the
//! file keeps its shape (no value spills onto a line of its own).
#![no_main]

use compute_ctl::rsyslog::{audit_config, audit_target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (plain, tls) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (endpoint_id, project_id) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match audit_target(plain, tls) {
        Ok(t) => {
            assert!(!t.at.host.is_empty() && t.at.port > 0);
            assert_eq!(t.tls, !tls.is_empty());
            let shape = audit_config(std::path::Path::new("/d/log"), "e", "p", &t).lines().count();
            let conf = audit_config(std::path::Path::new("/d/log"), endpoint_id, project_id, &t);
            assert_eq!(conf.lines().count(), shape);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("AUDIT_LOGGING_ENDPOINT") || msg.contains("AUDIT_LOGGING_TLS_ENDPOINT"), "{msg}");
        }
    }
});
