//! A raw HTTP/1.1 client over a TcpStream, so tests see exactly what the server sends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The `error` field of a JSON error body; panics (naming the body) when there is none.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error field: {}", self.text())).to_string()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends one request on a new connection (`Connection: close`) and reads the response.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut s)
}

pub fn get(port: u16, path: &str) -> Response {
    request(port, "GET", path, &[], b"").unwrap()
}

pub fn post_json(port: u16, path: &str, body: &serde_json::Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    request(port, "POST", path, &[("Content-Type", "application/json")], &bytes).unwrap()
}

/// Reads one response (Content-Length, chunked, or until close).
/// A stand-in server's read of one request head, byte by byte up to the blank line (10 s at
/// most); None when the client went away first.
pub fn read_head(s: &mut TcpStream) -> Option<String> {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

pub fn read_response(s: &mut impl Read) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the head ended"));
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let find = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = find("content-length") {
        let len: usize = len.parse().unwrap();
        body.resize(len, 0);
        s.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                s.read_exact(&mut byte)?;
                line.push(byte[0]);
            }
            let n = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16).unwrap();
            let mut chunk = vec![0u8; n + 2];
            s.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        s.read_to_end(&mut body)?;
    }
    Ok(Response { status, headers, body })
}

/// Sends raw bytes on a new connection and reads one response (for malformed requests).
pub fn raw(port: u16, bytes: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(bytes)?;
    read_response(&mut s)
}

/// A keep-alive connection that sends requests one after the other.
pub struct Conn {
    pub stream: TcpStream,
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        self.stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
        read_response(&mut self.stream)
    }
}

/// A scripted HTTP server on 127.0.0.1:0 standing in for the control plane: it answers the
/// n-th request with the n-th (status, body) of the script (the last one repeats) and records
/// every request head it receives.
pub struct StandIn {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl StandIn {
    pub fn start(script: Vec<(u16, String)>) -> StandIn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut s) = stream else { continue };
                let head = read_head(&mut s).unwrap_or_default();
                seen.lock().unwrap().push(head);
                let (status, body) = script[n.min(script.len() - 1)].clone();
                let resp = format!(
                    "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes());
            }
        });
        StandIn { port, requests }
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// Like `Compute::spawn`, with extra environment variables (set on the child only, so
/// parallel tests do not see each other's), logging to `log`.
pub fn spawn_with_env(
    args: &[String],
    http_port: u16,
    env: &[(&str, &str)],
    log: std::path::PathBuf,
) -> super::Compute {
    let f = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(super::BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    super::Compute { child: Some(child), http_port, log }
}

/// `promtool check metrics` on `text`; None when promtool is not installed.
pub fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Neon names two metrics with `_ms` (`compute_pg_current_downtime_ms`,
    // `compute_pg_downtime_ms_total`, kept for its dashboards; README "Metrics"): promtool's
    // lint against abbreviated units is the one complaint accepted, for exactly those names.
    let neon_ms_lint_only = !out.status.success()
        && out.status.code() == Some(3)
        && msg.lines().filter(|l| !l.trim().is_empty()).all(|l| {
            l.ends_with("metric names should not contain abbreviated units")
                && NEON_MS_NAMES.iter().any(|n| l.starts_with(&format!("{n} ")))
        });
    Some((out.status.success() || neon_ms_lint_only, msg))
}

/// Neon's metric names that promtool's unit lint objects to (see [`promtool_check`]).
const NEON_MS_NAMES: [&str; 2] = ["compute_pg_current_downtime_ms", "compute_pg_downtime_ms_total"];
