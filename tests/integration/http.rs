//! The HTTP server on raw sockets: malformed requests, limits, timeouts, crowds of idle and
//! slow clients. These run against a compute waiting in `empty` (no Postgres needed).

use crate::support::http::{self, Conn};
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

fn error_of(r: &http::Response) -> String {
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    r.json()["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", r.text())).to_string()
}

#[test]
fn malformed_requests_get_json_errors_with_their_codes() {
    let (s, _c) = waiting("http-malformed");
    let p = s.http_port;
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET /status\r\n\r\n".to_vec(), 400),
        (b"GET  /status HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET status HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"G(T /status HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"GET /status HTTP/2.0\r\n\r\n".to_vec(), 505),
        (b"GET /status HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(), 400),
        (b"GET /status HTTP/1.1\r\nBad Name: x\r\n\r\n".to_vec(), 400),
        (b"GET /status HTTP/1.1\r\nX: a\x01b\r\n\r\n".to_vec(), 400),
        (b"GET /st\xffatus HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"POST /configure HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec(), 400),
        (b"POST /configure HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx".to_vec(), 400),
        (b"POST /configure HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 411),
        (b"POST /configure HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501),
        (b"POST /configure HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n".to_vec(), 413),
    ];
    for (bytes, code) in cases {
        let r = http::raw(p, &bytes).unwrap();
        assert_eq!(r.status, code, "{:?} -> {r:?}", String::from_utf8_lossy(&bytes));
        assert!(!error_of(&r).is_empty());
        assert_eq!(r.header("connection"), Some("close"));
    }
}

#[test]
fn huge_or_too_many_headers_get_431_and_long_request_line_414() {
    let (s, _c) = waiting("http-431");
    let big = format!("GET /status HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let r = http::raw(s.http_port, big.as_bytes()).unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    error_of(&r);
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let r = http::raw(s.http_port, format!("GET /status HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    let long = format!("GET /status?{} HTTP/1.1\r\n\r\n", "q".repeat(20 * 1024));
    let r = http::raw(s.http_port, long.as_bytes()).unwrap();
    assert_eq!(r.status, 414, "{r:?}");
    // The server is fine afterwards.
    assert_eq!(http::get(s.http_port, "/status").status, 200);
}

#[test]
fn body_over_the_limit_is_refused_before_it_is_read() {
    let (s, _c) = waiting("http-413");
    let mut st = TcpStream::connect(("127.0.0.1", s.http_port)).unwrap();
    st.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // 100 MiB announced, nothing sent: the answer must not wait for the body.
    st.write_all(b"POST /configure HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
        .unwrap();
    let r = http::read_response(&mut st).unwrap();
    assert_eq!(r.status, 413);
    assert!(error_of(&r).contains("over the limit"));
}

#[test]
fn unknown_paths_and_wrong_methods() {
    let (s, _c) = waiting("http-404");
    let r = http::get(s.http_port, "/nope");
    assert_eq!(r.status, 404);
    assert!(error_of(&r).contains("/nope"));
    // Internal routes are not on the external port, and the other way round.
    assert_eq!(http::post_json(s.http_port, "/extensions", &serde_json::json!({})).status, 404);
    assert_eq!(http::get(s.http_port + 1, "/status").status, 404);
    for (m, path, allow) in [
        ("POST", "/status", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("GET", "/configure", "POST"),
        ("PUT", "/terminate", "POST"),
    ] {
        let r = http::request(s.http_port, m, path, &[], b"").unwrap();
        assert_eq!(r.status, 405, "{m} {path}");
        assert_eq!(r.header("allow"), Some(allow));
        error_of(&r);
    }
    let r = http::request(s.http_port + 1, "GET", "/grants", &[], b"").unwrap();
    assert_eq!(r.status, 405);
    // HEAD: the head of a GET, no body.
    let mut st = TcpStream::connect(("127.0.0.1", s.http_port)).unwrap();
    st.write_all(b"HEAD /status HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    st.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("\r\n\r\n"), "{text:?}");
    assert!(text.contains("Content-Length: "), "{text:?}");
}

#[test]
fn configure_checks_content_type_and_json_shape() {
    let (s, _c) = waiting("http-415");
    let body = serde_json::to_vec(&serde_json::json!({"spec": {}})).unwrap();
    let r = http::request(s.http_port, "POST", "/configure", &[("Content-Type", "text/plain")], &body).unwrap();
    assert_eq!(r.status, 415);
    error_of(&r);
    let r = http::request(s.http_port, "POST", "/configure", &[("Content-Type", "application/json")], b"{bad").unwrap();
    assert_eq!(r.status, 400);
    error_of(&r);
    // Valid JSON of the wrong shape (no compute_ctl_config, spec missing fields).
    let r = http::post_json(s.http_port, "/configure", &serde_json::json!({"spec": {"format_version": 1.0}}));
    assert_eq!(r.status, 422);
    error_of(&r);
    // A spec that decodes but fails validation: 400 naming the field.
    let mut bad = s.spec.clone();
    bad["tenant_id"] = "xyz".into();
    let r = http::post_json(s.http_port, "/configure", &serde_json::json!({"spec": bad, "compute_ctl_config": {}}));
    assert_eq!(r.status, 400);
    assert!(error_of(&r).contains("tenant_id"));
    assert_eq!(http::get(s.http_port, "/status").json()["status"], "empty");
}

#[test]
fn keep_alive_and_pipelined_requests() {
    let (s, _c) = waiting("http-keepalive");
    let mut conn = Conn::open(s.http_port);
    for _ in 0..50 {
        let r = conn.get("/status").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // Two requests in one write: two answers, in order.
    conn.stream.write_all(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(http::read_response(&mut conn.stream).unwrap().status, 200);
    assert_eq!(http::read_response(&mut conn.stream).unwrap().status, 404);
    let r = http::request(s.http_port, "GET", "/status", &[("X-Request-Id", "req-42")], b"").unwrap();
    assert_eq!(r.header("x-request-id"), Some("req-42"));
    // Without one, the server makes a UUIDv4, a new one per request.
    let a = http::get(s.http_port, "/status");
    let b = http::get(s.http_port, "/status");
    let (ida, idb) = (a.header("x-request-id").unwrap(), b.header("x-request-id").unwrap());
    assert_ne!(ida, idb);
    assert!(ida.len() == 36 && ida.as_bytes()[14] == b'4' && ida.split('-').count() == 5, "{ida}");
    // HTTP/1.0 closes by default.
    let r = http::raw(s.http_port, b"GET /status HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(r.header("connection"), Some("close"));
}

/// `/status` must answer within a second whatever other clients do.
fn assert_status_fast(port: u16) {
    let t = Instant::now();
    let r = http::get(port, "/status");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "/status took {:?}", t.elapsed());
}

#[test]
fn two_hundred_idle_connections_do_not_starve_status() {
    let (s, _c) = waiting("http-idle");
    let idle: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(("127.0.0.1", s.http_port)).unwrap()).collect();
    // Half of them also sent a partial request head.
    for st in idle.iter().step_by(2) {
        (&*st).write_all(b"GET /status HTTP/1.1\r\nHost").unwrap();
    }
    for _ in 0..20 {
        assert_status_fast(s.http_port);
    }
    drop(idle);
}

#[test]
fn slow_client_gets_408_and_does_not_block_others() {
    let (s, _c) = waiting("http-slow");
    let mut st = TcpStream::connect(("127.0.0.1", s.http_port)).unwrap();
    st.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let request = b"GET /status HTTP/1.1\r\nHost: localhost\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = Instant::now();
    let mut answer = Vec::new();
    // One byte per second; meanwhile other clients are served at once.
    for b in request.iter() {
        if st.write_all(&[*b]).is_err() {
            break;
        }
        assert_status_fast(s.http_port);
        let mut buf = [0u8; 4096];
        if let Ok(n) = st.read(&mut buf)
            && n > 0
        {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
        std::thread::sleep(Duration::from_millis(900));
    }
    st.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut rest = Vec::new();
    let _ = st.read_to_end(&mut rest);
    answer.extend_from_slice(&rest);
    let r = http::read_response(&mut answer.as_slice()).unwrap();
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&answer));
    error_of(&r);
    let took = started.elapsed();
    // The head deadline is 3 s from the first byte.
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(10), "408 after {took:?}");
}

#[test]
fn a_full_house_of_idle_connections_makes_room_for_status() {
    let (s, _c) = waiting("http-fullhouse");
    // More idle connections than the server has slots: without shedding, /status would get
    // 503 until the idle timeout (60 s).
    let mut idle = Vec::new();
    for _ in 0..1100 {
        match TcpStream::connect(("127.0.0.1", s.http_port)) {
            Ok(st) => idle.push(st),
            Err(e) => panic!("connect: {e}"),
        }
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    loop {
        if let Ok(r) = http::request(s.http_port, "GET", "/status", &[], b"")
            && r.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "/status still refused after {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(idle);
}

/// The API's connection threads yield to Postgres (SCHED_BATCH: no wake-up preemption), so a
/// client polling `/status` every millisecond does not slow a start; their answers still come.
#[test]
fn api_connection_threads_run_in_the_batch_policy() {
    let (s, c) = waiting("http-batch");
    let mut conn = Conn::open(s.http_port);
    assert_eq!(conn.get("/status").unwrap().status, 200);
    // The thread serving this open connection; `policy` is field 41 of /proc/PID/task/TID/stat.
    let policies: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", c.pid()))
        .unwrap()
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.trim() == "http-conn"))
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap();
            let after_comm = stat.rsplit_once(')').unwrap().1;
            // Fields from 3 (state) on; policy is field 41.
            after_comm.split_whitespace().nth(41 - 3).unwrap().to_string()
        })
        .collect();
    assert_eq!(policies, ["3"], "SCHED_BATCH is 3; one http-conn thread expected");
    assert_eq!(conn.get("/status").unwrap().status, 200);
}
