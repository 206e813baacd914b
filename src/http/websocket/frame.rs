//! RFC 6455 frames, as pure functions: [`parse`] reads one client frame from the start of a
//! buffer, [`Assembler`] joins fragments into messages and sorts out control frames, and
//! [`encode`] writes a frame. No I/O here; this is what the fuzzer drives.
//!
//! What a client must do, and the close code it gets when it does not:
//! - mask every frame; leave the reserved bits clear; use a defined opcode (1002);
//! - keep control frames unfragmented and at most 125 bytes (1002);
//! - keep a message within the size limit, counted over all its fragments (1009);
//! - send valid UTF-8 in text messages and close reasons (1007);
//! - continue only a fragmented message, and not start a new one inside it (1002).

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One frame, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: Opcode,
    pub payload: Vec<u8>,
}

/// Close codes (RFC 6455 7.4.1).
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// The client broke the protocol: close the connection with `code`, saying `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: String,
}

fn violation(code: u16, reason: impl Into<String>) -> Violation {
    Violation { code, reason: reason.into() }
}

/// Control frames carry at most this much (RFC 6455 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Parses one client frame from the start of `buf`. `Ok(None)` means more bytes are needed;
/// `Ok(Some((frame, used)))` gives the frame and how many bytes it took. A payload larger
/// than `max_payload` is refused from its header alone, before its bytes are read.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, Violation> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(violation(code::PROTOCOL_ERROR, "reserved bits set without a negotiated extension"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0f)
        .ok_or_else(|| violation(code::PROTOCOL_ERROR, format!("unknown opcode {}", b0 & 0x0f)))?;
    if b1 & 0x80 == 0 {
        return Err(violation(code::PROTOCOL_ERROR, "client frames must be masked"));
    }
    let len7 = b1 & 0x7f;
    if opcode.is_control() && (!fin || len7 as usize > MAX_CONTROL_PAYLOAD) {
        return Err(violation(code::PROTOCOL_ERROR, "control frames must be unfragmented and at most 125 bytes"));
    }
    let (len, mut at) = match len7 {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let n = u64::from_be_bytes(b.try_into().expect("the slice is 8 bytes"));
                if n >> 63 != 0 {
                    return Err(violation(code::PROTOCOL_ERROR, "payload length has its top bit set"));
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > max_payload as u64 {
        return Err(violation(code::TOO_BIG, format!("frame of {len} bytes is over the limit of {max_payload}")));
    }
    let len = len as usize;
    let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    let Some(data) = buf.get(at..at + len) else { return Ok(None) };
    let payload = data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
    Ok(Some((Frame { fin, opcode, payload }, at + len)))
}

/// Writes one frame; servers send unmasked frames (`mask` None), clients masked ones.
pub fn encode(fin: bool, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// The payload of a close frame: the code, then the reason cut to fit 125 bytes on a
/// character boundary.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// What the connection should act on, once frames are put together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The peer's close: its code (None when it gave none) and reason.
    Close(Option<u16>, String),
}

/// Joins fragments into messages of at most `max_message` bytes.
#[derive(Debug)]
pub struct Assembler {
    max_message: usize,
    /// The opcode and bytes so far of a fragmented message.
    partial: Option<(Opcode, Vec<u8>)>,
}

impl Assembler {
    pub fn new(max_message: usize) -> Assembler {
        Assembler { max_message, partial: None }
    }

    /// Feeds one frame; `Ok(None)` when it was a fragment of an unfinished message.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Incoming>, Violation> {
        match frame.opcode {
            Opcode::Ping => Ok(Some(Incoming::Ping(frame.payload))),
            Opcode::Pong => Ok(Some(Incoming::Pong)),
            Opcode::Close => close(&frame.payload).map(Some),
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(violation(code::PROTOCOL_ERROR, "new message started inside a fragmented one"));
                }
                if frame.fin {
                    return finish(frame.opcode, frame.payload).map(Some);
                }
                self.check_size(frame.payload.len())?;
                self.partial = Some((frame.opcode, frame.payload));
                Ok(None)
            }
            Opcode::Continuation => {
                let Some((_, so_far)) = &self.partial else {
                    return Err(violation(code::PROTOCOL_ERROR, "continuation frame without a message to continue"));
                };
                self.check_size(so_far.len() + frame.payload.len())?;
                let (opcode, mut data) = self.partial.take().expect("checked just above");
                data.extend_from_slice(&frame.payload);
                if frame.fin {
                    finish(opcode, data).map(Some)
                } else {
                    self.partial = Some((opcode, data));
                    Ok(None)
                }
            }
        }
    }

    fn check_size(&self, n: usize) -> Result<(), Violation> {
        if n > self.max_message {
            return Err(violation(code::TOO_BIG, format!("message over the limit of {} bytes", self.max_message)));
        }
        Ok(())
    }
}

fn finish(opcode: Opcode, data: Vec<u8>) -> Result<Incoming, Violation> {
    match opcode {
        Opcode::Text => String::from_utf8(data)
            .map(Incoming::Text)
            .map_err(|_| violation(code::INVALID_DATA, "text message is not valid UTF-8")),
        _ => Ok(Incoming::Binary(data)),
    }
}

fn close(payload: &[u8]) -> Result<Incoming, Violation> {
    match payload {
        [] => Ok(Incoming::Close(None, String::new())),
        [_] => Err(violation(code::PROTOCOL_ERROR, "close frame with a 1-byte payload")),
        [a, b, reason @ ..] => {
            let c = u16::from_be_bytes([*a, *b]);
            let valid = matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(violation(code::PROTOCOL_ERROR, format!("invalid close code {c}")));
            }
            let reason = std::str::from_utf8(reason)
                .map_err(|_| violation(code::INVALID_DATA, "close reason is not valid UTF-8"))?;
            Ok(Incoming::Close(Some(c), reason.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn masked(fin: bool, op: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(fin, op, payload, Some(MASK), &mut v);
        v
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 5.7: a single-frame masked text message "Hello".
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (f, used) = parse(&bytes, 100).unwrap().unwrap();
        assert_eq!((f.fin, f.opcode, &f.payload[..], used), (true, Opcode::Text, &b"Hello"[..], 11));
        assert_eq!(masked(true, Opcode::Text, b"Hello"), bytes);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut], 100), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn lengths_16_and_64_bit() {
        for n in [125usize, 126, 65535, 65536] {
            let p = vec![7u8; n];
            let b = masked(true, Opcode::Binary, &p);
            let (f, used) = parse(&b, 1 << 20).unwrap().unwrap();
            assert_eq!((f.payload.len(), used), (n, b.len()));
        }
    }

    #[test]
    fn violations_have_their_codes() {
        let code_of = |b: &[u8]| parse(b, 1000).unwrap_err().code;
        assert_eq!(code_of(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']), code::PROTOCOL_ERROR, "unmasked");
        assert_eq!(code_of(&[0xc1, 0x80, 0, 0, 0, 0]), code::PROTOCOL_ERROR, "rsv1");
        assert_eq!(code_of(&[0x83, 0x80, 0, 0, 0, 0]), code::PROTOCOL_ERROR, "opcode 3");
        assert_eq!(code_of(&[0x09, 0x80, 0, 0, 0, 0]), code::PROTOCOL_ERROR, "fragmented ping");
        assert_eq!(code_of(&[0x89, 0xfe, 0, 126]), code::PROTOCOL_ERROR, "126-byte ping");
        let mut huge = vec![0x82, 0xff];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(code_of(&huge), code::PROTOCOL_ERROR, "top bit of length");
        // Over the limit: refused from the header, without the payload.
        assert_eq!(code_of(&[0x82, 0xfe, 0x03, 0xe9]), code::TOO_BIG);
    }

    #[test]
    fn fragments_join_with_control_frames_between() {
        let mut a = Assembler::new(10);
        let f = |fin, op, p: &[u8]| Frame { fin, opcode: op, payload: p.to_vec() };
        assert_eq!(a.push(f(false, Opcode::Text, b"He")), Ok(None));
        assert_eq!(a.push(f(true, Opcode::Ping, b"x")), Ok(Some(Incoming::Ping(b"x".to_vec()))));
        assert_eq!(a.push(f(false, Opcode::Continuation, b"ll")), Ok(None));
        assert_eq!(a.push(f(true, Opcode::Continuation, b"o")), Ok(Some(Incoming::Text("Hello".into()))));
        // Over the limit across fragments.
        assert_eq!(a.push(f(false, Opcode::Binary, b"123456")), Ok(None));
        assert_eq!(a.push(f(true, Opcode::Continuation, b"78901")).unwrap_err().code, code::TOO_BIG);
        let mut a = Assembler::new(10);
        assert_eq!(a.push(f(true, Opcode::Continuation, b"x")).unwrap_err().code, code::PROTOCOL_ERROR);
        assert_eq!(a.push(f(false, Opcode::Text, b"x")), Ok(None));
        assert_eq!(a.push(f(true, Opcode::Text, b"y")).unwrap_err().code, code::PROTOCOL_ERROR);
        let mut a = Assembler::new(10);
        assert_eq!(a.push(f(true, Opcode::Text, &[0xff])).unwrap_err().code, code::INVALID_DATA);
    }

    #[test]
    fn close_frames() {
        let mut a = Assembler::new(10);
        let f = |p: &[u8]| Frame { fin: true, opcode: Opcode::Close, payload: p.to_vec() };
        assert_eq!(a.push(f(b"")), Ok(Some(Incoming::Close(None, String::new()))));
        assert_eq!(a.push(f(&[3, 232, b'b', b'y', b'e'])), Ok(Some(Incoming::Close(Some(1000), "bye".into()))));
        assert_eq!(a.push(f(&[3])).unwrap_err().code, code::PROTOCOL_ERROR);
        assert_eq!(a.push(f(&[3, 237])).unwrap_err().code, code::PROTOCOL_ERROR, "1005 is never sent");
        assert_eq!(a.push(f(&[3, 232, 0xff])).unwrap_err().code, code::INVALID_DATA);
        let long = "é".repeat(100);
        let p = close_payload(1000, &long);
        assert!(p.len() <= MAX_CONTROL_PAYLOAD && std::str::from_utf8(&p[2..]).is_ok());
    }
}
