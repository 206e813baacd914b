//! Responses: status, JSON or text body, written with `Content-Length` (or chunked when the
//! body is a stream, as for `pg_dump` output).

use std::io::{self, Read, Write};

pub enum Body {
    Bytes(Vec<u8>),
    /// Sent with `Transfer-Encoding: chunked` as it is read.
    Stream(Box<dyn Read + Send>),
    /// `101 Switching Protocols`: after the head, the server hands the socket (and any bytes
    /// it read past the request) to this function and is done with the connection.
    Upgrade(Upgrade),
}

/// Takes over an upgraded connection: the socket, and the bytes already read after the request.
pub type Upgrade = Box<dyn FnOnce(std::net::TcpStream, Vec<u8>) + Send>;

pub struct Response {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Response {
    pub fn json(status: u16, value: &impl serde::Serialize) -> Response {
        let body = serde_json::to_vec(value).expect("our response types always serialize");
        Response { status, content_type: Some("application/json"), headers: Vec::new(), body: Body::Bytes(body) }
    }

    /// Neon's error body: `{"error": "…"}`.
    pub fn error(status: u16, msg: impl Into<String>) -> Response {
        Response::json(status, &serde_json::json!({ "error": msg.into() }))
    }

    pub fn empty(status: u16) -> Response {
        Response { status, content_type: None, headers: Vec::new(), body: Body::Bytes(Vec::new()) }
    }

    pub fn text(status: u16, content_type: &'static str, text: String) -> Response {
        Response { status, content_type: Some(content_type), headers: Vec::new(), body: Body::Bytes(text.into_bytes()) }
    }

    /// A `101` switching to the protocol named by the `Upgrade` header in `headers`.
    pub fn upgrade(headers: Vec<(&'static str, String)>, then: Upgrade) -> Response {
        Response { status: 101, content_type: None, headers, body: Body::Upgrade(then) }
    }

    /// Takes the upgrade out of a `101` response (the server calls it after writing the head).
    pub fn take_upgrade(&mut self) -> Option<Upgrade> {
        match std::mem::replace(&mut self.body, Body::Bytes(Vec::new())) {
            Body::Upgrade(u) => Some(u),
            other => {
                self.body = other;
                None
            }
        }
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    /// Writes the response; `keep_alive` decides the `Connection` header.
    pub fn write_to(self, out: &mut impl Write, keep_alive: bool, head_only: bool) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if let Some(ct) = self.content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if self.status == 101 {
            head.push_str("Connection: Upgrade\r\n\r\n");
            out.write_all(head.as_bytes())?;
            return out.flush();
        }
        head.push_str(if keep_alive { "Connection: keep-alive\r\n" } else { "Connection: close\r\n" });
        match self.body {
            Body::Bytes(b) => {
                head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
                let mut all = head.into_bytes();
                if !head_only {
                    all.extend_from_slice(&b);
                }
                out.write_all(&all)?;
            }
            Body::Upgrade(_) => {
                head.push_str("Content-Length: 0\r\n\r\n");
                out.write_all(head.as_bytes())?;
            }
            Body::Stream(mut r) => {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                out.write_all(head.as_bytes())?;
                if head_only {
                    return out.flush();
                }
                let mut buf = vec![0u8; 64 * 1024];
                // A read error (the producer failed midway) ends the response without the last
                // chunk, so the client sees a truncated body instead of a complete-looking one.
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(format!("{n:x}\r\n").as_bytes())?;
                    out.write_all(&buf[..n])?;
                    out.write_all(b"\r\n")?;
                }
                out.write_all(b"0\r\n\r\n")?;
            }
        }
        out.flush()
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
