//! The test harness itself: what keeps parallel runs from colliding.

use crate::support;

/// Regression: the suite picked ports by binding and releasing them in a range that overlapped
/// the kernel's ephemeral ports, so an outgoing connection could take one before the test bound
/// it (`storage::first_failed_connections_are_retried` failed that way under load), and two
/// test binaries could pick the same port.
#[test]
fn test_ports_are_outside_the_ephemeral_range_and_locked_per_run() {
    let (low, high) = ephemeral_range();
    for _ in 0..8 {
        let port = support::free_port();
        for p in [port, port + 1] {
            assert!(p < low || p > high, "port {p} is in the ephemeral range {low}-{high}");
        }
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/tmp/compute_ctl-test-ports/{port}"))
            .unwrap_or_else(|e| panic!("no lock file for port {port}: {e}"));
        assert!(lock.try_lock().is_err(), "port {port} is not locked for this run");
    }
}

fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut it = text.split_whitespace().map(|n| n.parse::<u16>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}
