//! systemd's variables (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`) as compute_ctl reads
//! them: any text gives a notifier or an error naming the variable, never a panic, and a
//! watchdog interval only from a positive number.
#![no_main]

use compute_ctl::notify::{Env, Notifier};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n').map(String::from);
    let env = Env { notify_socket: parts.next(), watchdog_usec: parts.next(), watchdog_pid: parts.next() };
    match Notifier::from_env(&env) {
        Ok(n) => {
            if let Some(every) = n.watchdog_interval() {
                let usec: u64 = env.watchdog_usec.as_deref().unwrap().trim().parse().unwrap();
                assert!(usec > 0 && every.as_micros() == u128::from(usec / 2));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("NOTIFY_SOCKET") || msg.contains("WATCHDOG_USEC"), "{msg}");
        }
    }
});
