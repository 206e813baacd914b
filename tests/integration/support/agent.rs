//! A test autoscaler-agent: a websocket client written here, independently of the server's
//! code, speaking the vm-monitor protocol (RFC 6455 frames, masked as a client must).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A frame from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<u16>, String),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

pub struct Agent {
    pub stream: TcpStream,
    buf: Vec<u8>,
    mask_seed: u32,
}

/// The key of RFC 6455's example, and its accept value (computed with Python's hashlib).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

impl Agent {
    /// Opens `GET /monitor` as a websocket; panics unless the server switches protocols.
    pub fn connect(port: u16) -> Agent {
        let (status, head, agent) = Agent::try_connect(port, "/monitor");
        assert_eq!(status, 101, "handshake refused: {head}");
        let accept = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-accept")))
            .map(|(_, v)| v.trim().to_string());
        assert_eq!(accept.as_deref(), Some(ACCEPT), "{head}");
        agent
    }

    /// Sends the handshake for `path`; the status code, the response head, and the agent.
    pub fn try_connect(port: u16, path: &str) -> (u16, String, Agent) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the vm-monitor");
        stream.set_nodelay(true).unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).unwrap();
        let mut agent = Agent { stream, buf: Vec::new(), mask_seed: 0x9e37_79b9 };
        let deadline = Instant::now() + Duration::from_secs(10);
        let end = loop {
            if let Some(i) = agent.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            assert!(agent.fill(deadline), "no handshake response");
        };
        let head = String::from_utf8_lossy(&agent.buf[..end]).into_owned();
        agent.buf.drain(..end + 4);
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head, agent)
    }

    /// Reads more bytes; false on EOF, error or deadline.
    fn fill(&mut self, deadline: Instant) -> bool {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
            return false;
        };
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift: masks differ from frame to frame, as a real client's would.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_be_bytes()
    }

    /// One masked frame; `opcode` 1 text, 2 binary, 8 close, 9 ping, 10 pong, 0 continuation.
    pub fn frame_bytes(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else if payload.len() <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        let mask = self.next_mask();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let bytes = self.frame_bytes(fin, opcode, payload);
        self.send_raw(&bytes);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, 1, text.as_bytes());
    }

    pub fn send_json(&mut self, v: &serde_json::Value) {
        self.send_text(&v.to_string());
    }

    /// The next frame, or None at the deadline or when the socket ends.
    pub fn recv(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((f, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(f);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// The next text message parsed as JSON (pongs are skipped); panics on anything else.
    pub fn recv_json(&mut self, timeout: Duration) -> serde_json::Value {
        loop {
            match self.recv(timeout) {
                Some(Frame::Text(t)) => return serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
                Some(Frame::Pong(_)) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Waits for the server's close frame (skipping messages); its code and reason.
    pub fn recv_close(&mut self, timeout: Duration) -> (Option<u16>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(Frame::Close(c, r)) => return (c, r),
                Some(_) => continue,
                None => panic!("no close frame within {timeout:?}"),
            }
        }
    }

    /// True once the server has closed the TCP connection (read gives EOF).
    pub fn socket_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return false;
            };
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false;
                }
                Err(_) => return true,
                Ok(_) => {}
            }
        }
    }

    /// Sends `{"min":1,"max":1}` and checks the answer `{"version":1}`.
    pub fn negotiate(&mut self) {
        self.send_text(r#"{"min":1,"max":1}"#);
        let v = self.recv_json(Duration::from_secs(10));
        assert_eq!(v, serde_json::json!({"version": 1}));
    }

    /// Sends `{"type": kind, "content": content, "id": id}` and returns the reply with this id
    /// (skipping the monitor's own `UpscaleRequest`s).
    pub fn call(&mut self, kind: &str, content: serde_json::Value, id: u64) -> serde_json::Value {
        self.send_json(&serde_json::json!({"type": kind, "content": content, "id": id}));
        loop {
            let v = self.recv_json(Duration::from_secs(10));
            if v["type"] == "UpscaleRequest" {
                continue;
            }
            assert_eq!(v["id"], id, "reply to {kind} {id}: {v}");
            return v;
        }
    }
}

/// Parses one unmasked server frame.
fn parse_server_frame(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
    let (len, at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().unwrap()) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = b.get(at..at + len)?.to_vec();
    let f = match b[0] & 0x0f {
        1 => Frame::Text(String::from_utf8(payload).expect("server text is UTF-8")),
        2 => Frame::Binary(payload),
        8 => {
            let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            Frame::Close(code, String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).into_owned())
        }
        9 => Frame::Ping(payload),
        10 => Frame::Pong(payload),
        op => panic!("server sent opcode {op}"),
    };
    Some((f, at + len))
}
