//! Regressions from trying to break the HTTP server (issue 17): a crowd of slowloris clients.

use crate::support::http;
use crate::support::{Compute, Setup};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A compute_ctl with no spec: it answers HTTP and waits for `/configure`.
fn waiting(name: &str) -> (Setup, Compute) {
    let s = Setup::empty(name);
    let mut c = Compute::spawn(&s.base_args(), s.http_port);
    c.wait_status("empty", Duration::from_secs(20));
    (s, c)
}

/// Regression: 1,100 connections that each trickled a partial head took every connection slot
/// until their 408 (10 s): `/status` got 503 or no answer meanwhile.
#[test]
fn slowloris_connections_do_not_starve_status() {
    let (s, _c) = waiting("faults-slowloris");
    let mut slow = Vec::new();
    for _ in 0..1100 {
        let st = TcpStream::connect(("127.0.0.1", s.http_port)).unwrap();
        (&st).write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        st.set_nonblocking(true).unwrap();
        slow.push(st);
    }
    // Keep trickling while probing: every probe must be answered 200, promptly.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut probes = 0;
    while Instant::now() < deadline {
        for st in &slow {
            let _ = (&*st).write_all(b"a");
        }
        let t = Instant::now();
        let r = http::request(s.http_port, "GET", "/status", &[], b"").expect("probe connection");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(t.elapsed() < Duration::from_secs(1), "/status took {:?}", t.elapsed());
        probes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(probes >= 10);
    drop(slow);
}
