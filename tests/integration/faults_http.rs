//! Regressions from trying to break the HTTP server (issue 17): a crowd of slowloris clients,
//! `Expect: 100-continue`, bare-LF line ends.

use crate::support::http;
use crate::support::{Compute, Setup};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A compute_ctl with no spec: it answers HTTP and waits for `/configure`.
fn waiting(name: &str) -> (Setup, Compute) {
    let s = Setup::empty(name);
    let mut c = Compute::spawn(&s.base_args(), s.http_port);
    c.wait_status("empty", Duration::from_secs(20));
    (s, c)
}

/// Reads whatever arrives within `wait`.
fn read_for(st: &mut TcpStream, wait: Duration) -> Vec<u8> {
    st.set_read_timeout(Some(wait)).unwrap();
    let mut buf = vec![0u8; 4096];
    match st.read(&mut buf) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
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

/// Regression: `Expect: 100-continue` was not answered, so curl waited a second before
/// sending every large body.
#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let (s, _c) = waiting("faults-expect");
    let body = br#"{"spec": {}}"#;
    let mut st = TcpStream::connect(("127.0.0.1", s.http_port)).unwrap();
    let head = format!(
        "POST /configure HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    st.write_all(head.as_bytes()).unwrap();
    let interim = read_for(&mut st, Duration::from_secs(5));
    assert_eq!(String::from_utf8_lossy(&interim), "HTTP/1.1 100 Continue\r\n\r\n");
    st.write_all(body).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = http::read_response(&mut st).unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
}

/// Regression: a request with bare-LF line ends got no answer until the 408 (10 s).
#[test]
fn bare_lf_line_ends_get_400_at_once() {
    let (s, _c) = waiting("faults-bare-lf");
    let mut st = TcpStream::connect(("127.0.0.1", s.http_port)).unwrap();
    st.write_all(b"GET /status HTTP/1.1\nHost: x\n\n").unwrap();
    st.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let r = http::read_response(&mut st).expect("an answer within 2 s");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("CRLF"), "{}", r.text());
}
