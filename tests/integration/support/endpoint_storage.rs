//! A stand-in for Neon's endpoint storage on 127.0.0.1:0: PUT stores a body by path, GET
//! serves it (404 when absent); a request without `Authorization: Bearer <token>` gets 401;
//! a status can be forced for a path. Every request is recorded (method, path, auth header).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Inner {
    objects: HashMap<String, Vec<u8>>,
    forced: HashMap<String, u16>,
    seen: Vec<Seen>,
}

pub struct EndpointStorage {
    pub port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl EndpointStorage {
    pub fn start(token: &str) -> EndpointStorage {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (shared, token) = (inner.clone(), format!("Bearer {token}"));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { continue };
                let (shared, token) = (shared.clone(), token.clone());
                std::thread::spawn(move || serve(s, &shared, &token));
            }
        });
        EndpointStorage { port, inner }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The object's path for `endpoint` of the tests' tenant and timeline.
    pub fn path(endpoint: &str) -> String {
        format!("/{}/{}/{endpoint}/lfc_state", super::TENANT, super::TIMELINE)
    }

    pub fn object(&self, path: &str) -> Option<Vec<u8>> {
        self.inner.lock().unwrap().objects.get(path).cloned()
    }

    pub fn put_object(&self, path: &str, bytes: Vec<u8>) {
        self.inner.lock().unwrap().objects.insert(path.to_string(), bytes);
    }

    /// Answers every request for `path` with `status` (None: serve normally again).
    pub fn force(&self, path: &str, status: Option<u16>) {
        let mut i = self.inner.lock().unwrap();
        match status {
            Some(s) => i.forced.insert(path.to_string(), s),
            None => i.forced.remove(path),
        };
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    pub fn count(&self, method: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method).count()
    }
}

fn serve(mut s: std::net::TcpStream, shared: &Mutex<Inner>, token: &str) {
    let Some(head) = super::http::read_head(&mut s) else { return };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (first.next().unwrap_or_default().to_string(), first.next().unwrap_or_default().to_string());
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    if s.read_exact(&mut body).is_err() {
        return;
    }
    let authorization = header("authorization");
    let (status, reply) = {
        let mut i = shared.lock().unwrap();
        i.seen.push(Seen { method: method.clone(), path: path.clone(), authorization: authorization.clone() });
        if authorization.as_deref() != Some(token) {
            (401, Vec::new())
        } else if let Some(&st) = i.forced.get(&path) {
            (st, b"forced".to_vec())
        } else if method == "PUT" {
            i.objects.insert(path, body);
            (200, Vec::new())
        } else if method == "GET" {
            match i.objects.get(&path) {
                Some(b) => (200, b.clone()),
                None => (404, Vec::new()),
            }
        } else {
            (405, Vec::new())
        }
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Whatever",
    };
    let resp = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", reply.len());
    let _ = s.write_all(resp.as_bytes());
    let _ = s.write_all(&reply);
}
