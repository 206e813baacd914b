//! A websocket server side (RFC 6455) on the hand-rolled HTTP server: the handshake answered
//! with `101 Switching Protocols` (the server then hands the socket to [`upgrade`]'s
//! callback), and [`WebSocket`], which reads messages and answers pings and closes.
//!
//! Limits: a message (all fragments together) is at most [`MAX_MESSAGE`] bytes, checked from
//! each frame's header, so an oversized frame is refused (close code 1009) before its payload
//! is read. No extensions (no compression) and no subprotocols are negotiated.

pub mod frame;
mod sha1;

use super::request::Request;
use super::response::Response;
use frame::{Assembler, Incoming, Opcode, Violation, code};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// The largest message accepted; the vm-monitor's messages are under 200 bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// How late [`WebSocket::read`] may return its timeout: the socket's read timeout is set again
/// only when the one set would overshoot by more than this, or is less than half of what is
/// left, instead of before every read (a system call per message otherwise).
const TIMEOUT_SLACK: Duration = Duration::from_millis(1);

/// The GUID RFC 6455 appends to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub fn accept_key(client_key: &str) -> String {
    sha1::base64(&sha1::sha1(format!("{client_key}{GUID}").as_bytes()))
}

fn has_token(req: &Request, header: &str, token: &str) -> bool {
    req.header(header).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Checks the opening handshake; the accept key, or the error response to send.
pub fn check_handshake(req: &Request) -> Result<String, Response> {
    if req.method != "GET" {
        return Err(Response::error(405, "a websocket opens with GET").with_header("Allow", "GET".into()));
    }
    if req.minor_version < 1 {
        return Err(Response::error(400, "a websocket needs HTTP/1.1"));
    }
    if !has_token(req, "upgrade", "websocket") || !has_token(req, "connection", "upgrade") {
        return Err(Response::error(426, "expected a websocket upgrade (Upgrade: websocket, Connection: Upgrade)")
            .with_header("Upgrade", "websocket".into()));
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(Response::error(426, "unsupported websocket version; this server speaks 13")
            .with_header("Sec-WebSocket-Version", "13".into()));
    }
    let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
    if !sha1::is_base64_of_16_bytes(key) {
        return Err(Response::error(400, "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(accept_key(key))
}

/// Answers a websocket handshake: a `101` that hands the socket to `on_open`, or the error
/// response. `on_open` runs on the connection's thread after the `101` has been written.
pub fn upgrade(req: &Request, on_open: impl FnOnce(WebSocket) + Send + 'static) -> Response {
    match check_handshake(req) {
        Ok(accept) => Response::upgrade(
            vec![("Upgrade", "websocket".into()), ("Sec-WebSocket-Accept", accept)],
            Box::new(move |stream, leftover| on_open(WebSocket::new(stream, leftover))),
        ),
        Err(resp) => resp,
    }
}

/// A complete message from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// What a read found.
#[derive(Debug)]
pub enum Received {
    Message(Message),
    /// Nothing arrived before the timeout; the connection is fine.
    Timeout,
    /// The connection is over: the peer closed it, broke the protocol (we sent the close code
    /// in `code`), or the socket failed. `reason` says which, for the log.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// The server end of an open websocket. Pings are answered and pongs ignored inside
/// [`WebSocket::read`]; a peer's close is answered with the same code.
pub struct WebSocket {
    stream: TcpStream,
    buf: Vec<u8>,
    assembler: Assembler,
    closed: bool,
    /// The read timeout set on the socket, if any.
    armed: Option<Duration>,
}

impl WebSocket {
    fn new(stream: TcpStream, leftover: Vec<u8>) -> WebSocket {
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        WebSocket { stream, buf: leftover, assembler: Assembler::new(MAX_MESSAGE), closed: false, armed: None }
    }

    /// A handle on the socket, to shut it down from another thread.
    pub fn try_clone_stream(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Waits for the next message, at most `timeout` (plus [`TIMEOUT_SLACK`]).
    pub fn read(&mut self, timeout: Duration) -> Received {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            if self.closed {
                return Received::Closed { code: None, reason: "connection already closed".into() };
            }
            // Everything already buffered is handled before reading more.
            match frame::parse(&self.buf, MAX_MESSAGE) {
                Ok(Some((f, used))) => {
                    self.buf.drain(..used);
                    match self.assembler.push(f) {
                        Ok(None) => continue,
                        Ok(Some(incoming)) => match self.handle(incoming) {
                            Some(r) => return r,
                            None => continue,
                        },
                        Err(v) => return self.fail(v),
                    }
                }
                Ok(None) => {}
                Err(v) => return self.fail(v),
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return Received::Timeout;
            };
            if self.armed.is_none_or(|a| a > left + TIMEOUT_SLACK || a < left / 2) {
                self.armed = self.stream.set_read_timeout(Some(left)).ok().map(|()| left);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    return Received::Closed {
                        code: None,
                        reason: "peer closed the socket without a close frame".into(),
                    };
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // A timeout set earlier, shorter than what is left: the loop checks the deadline.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    self.armed = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = true;
                    return Received::Closed { code: None, reason: format!("read failed: {e}") };
                }
            }
        }
    }

    fn handle(&mut self, incoming: Incoming) -> Option<Received> {
        match incoming {
            Incoming::Text(t) => Some(Received::Message(Message::Text(t))),
            Incoming::Binary(b) => Some(Received::Message(Message::Binary(b))),
            Incoming::Ping(p) => {
                if let Err(e) = self.send(Opcode::Pong, &p) {
                    self.closed = true;
                    return Some(Received::Closed { code: None, reason: format!("cannot answer a ping: {e}") });
                }
                None
            }
            Incoming::Pong => None,
            Incoming::Close(c, reason) => {
                // Echo the peer's code (or none), then end: the peer closes the TCP connection.
                let payload = c.map(|c| frame::close_payload(c, "")).unwrap_or_default();
                let _ = self.send(Opcode::Close, &payload);
                self.finish();
                Some(Received::Closed { code: c, reason: format!("peer closed the websocket: {reason:?}") })
            }
        }
    }

    fn fail(&mut self, v: Violation) -> Received {
        self.close(v.code, &v.reason);
        Received::Closed { code: Some(v.code), reason: v.reason }
    }

    fn send(&mut self, opcode: Opcode, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 10);
        frame::encode(true, opcode, payload, None, &mut out);
        self.stream.write_all(&out)
    }

    /// Sends one text message.
    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "websocket is closed"));
        }
        self.send(Opcode::Text, text.as_bytes())
    }

    /// Sends a close frame with `code` and `reason`, and ends the connection.
    pub fn close(&mut self, code: u16, reason: &str) {
        if self.closed {
            return;
        }
        let _ = self.send(Opcode::Close, &frame::close_payload(code, reason));
        self.finish();
    }

    /// Stops writing and drains what the peer still sends for a moment, so that our close
    /// frame is not destroyed by a reset caused by unread input.
    fn finish(&mut self) {
        self.closed = true;
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut sink = [0u8; 4096];
        self.armed = None;
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for WebSocket {
    fn drop(&mut self) {
        if !self.closed {
            self.close(code::GOING_AWAY, "server is closing the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_accept_key_example() {
        // RFC 6455 1.3.
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/monitor".into(),
            query: None,
            minor_version: 1,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn handshake_checks() {
        let good = [
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert_eq!(check_handshake(&req(&good)).ok().as_deref(), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(check_handshake(&req(&good[1..])).err().map(|r| r.status), Some(426));
        let mut v8 = good;
        v8[2].1 = "8";
        assert_eq!(check_handshake(&req(&v8)).err().map(|r| r.status), Some(426));
        let mut bad_key = good;
        bad_key[3].1 = "short";
        assert_eq!(check_handshake(&req(&bad_key)).err().map(|r| r.status), Some(400));
    }
}
