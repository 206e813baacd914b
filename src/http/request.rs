//! A pure HTTP/1.1 request parser: bytes in, a request or an error with its status code out.
//! It never panics, never reads past its limits, and is what the fuzzer drives.

/// Size limits; anything over them is refused with the matching status code.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line (414 past it).
    pub max_request_line: usize,
    /// Most header lines.
    pub max_headers: usize,
    /// Longest head (request line plus headers).
    pub max_head_bytes: usize,
    /// Largest body (413 past it). A spec with thousands of roles is a few MiB.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_request_line: 8 * 1024, max_headers: 100, max_head_bytes: 32 * 1024, max_body: 64 * 1024 * 1024 }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoding not applied (routes are ASCII).
    pub path: String,
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a request could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not enough bytes yet; read more and try again.
    Incomplete,
    /// The request is bad; answer with this status and message, then close.
    Reject(u16, String),
}

fn reject(code: u16, msg: impl Into<String>) -> ParseError {
    ParseError::Reject(code, msg.into())
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        match self.header("connection").map(str::to_ascii_lowercase) {
            Some(v) if v.split(',').any(|t| t.trim() == "close") => false,
            Some(v) if v.split(',').any(|t| t.trim() == "keep-alive") => true,
            _ => self.minor_version >= 1,
        }
    }

    /// The value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k)? == name).then(|| percent_decode(v)).flatten()
        })
    }

    /// Writes the request back as bytes (for round-trip checks in tests and the fuzzer).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_bytes());
        if let Some(q) = &self.query {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        out.extend_from_slice(format!(" HTTP/1.{}\r\n", self.minor_version).as_bytes());
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Decodes `%XX` and `+` (as a space); None for invalid escapes or non-UTF-8 results.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A request head: the request with its body still empty, where the body starts, how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub request: Request,
    /// Bytes of the head, its blank line included: the body starts here.
    pub head_len: usize,
    /// `Content-Length` (0 without one); not yet checked against `Limits::max_body`.
    pub body_len: usize,
}

impl Head {
    /// 413 when the announced body is over the limit.
    pub fn check_body_len(&self, limits: &Limits) -> Result<(), ParseError> {
        if self.body_len > limits.max_body {
            return Err(reject(
                413,
                format!("body of {} bytes is over the limit of {} bytes", self.body_len, limits.max_body),
            ));
        }
        Ok(())
    }

    /// Whether `buf` holds all of the body.
    pub fn is_complete(&self, buf: &[u8]) -> bool {
        self.head_len.checked_add(self.body_len).is_some_and(|t| t <= buf.len())
    }

    /// The whole request and the bytes it used; None while `buf` does not hold all of its body.
    pub fn complete(self, buf: &[u8]) -> Option<(Request, usize)> {
        let total = self.head_len.checked_add(self.body_len)?;
        let body = buf.get(self.head_len..total)?;
        let mut req = self.request;
        req.body = body.to_vec();
        Some((req, total))
    }
}

/// Parses one request from the start of `buf`; on success returns it and how many bytes it
/// used (the rest belongs to the next request on a keep-alive connection).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<(Request, usize), ParseError> {
    let head = parse_head(buf, limits)?;
    head.check_body_len(limits)?;
    head.complete(buf).ok_or(ParseError::Incomplete)
}

/// Parses the head of the request at the start of `buf`, without waiting for its body, so that
/// a request can be refused (401, say) before a byte of its body is read.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Head, ParseError> {
    let head_end = match find(buf, b"\r\n\r\n") {
        Some(i) => i,
        // A client that ends lines with a bare LF would otherwise wait for a blank CRLF line
        // that never comes, until the head deadline.
        None if has_bare_lf(&buf[..buf.len().min(limits.max_head_bytes)]) => {
            return Err(reject(400, "request lines must end with CRLF, not a bare LF"));
        }
        None => {
            // A line or head right at its limit may be followed by part of its terminator
            // (`\r`, `\r\n`, `\r\n\r`); those bytes do not count, or a request would be
            // refused when a read ends inside its terminator and accepted when it does not.
            let partial = [&b"\r\n\r"[..], b"\r\n", b"\r"].iter().find(|t| buf.ends_with(t)).map_or(0, |t| t.len());
            let line_len = find(buf, b"\r\n").unwrap_or(buf.len() - usize::from(buf.ends_with(b"\r")));
            if line_len > limits.max_request_line {
                return Err(reject(414, "request line too long"));
            }
            if buf.len() - partial > limits.max_head_bytes {
                return Err(reject(431, "request header fields too large"));
            }
            return Err(ParseError::Incomplete);
        }
    };
    if head_end > limits.max_head_bytes {
        return Err(reject(431, "request header fields too large"));
    }
    if has_bare_lf(&buf[..head_end]) {
        return Err(reject(400, "request lines must end with CRLF, not a bare LF"));
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| reject(400, "request head is not valid UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    if request_line.len() > limits.max_request_line {
        return Err(reject(414, "request line too long"));
    }
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(reject(400, "malformed request line"));
    };
    if !is_token(method) {
        return Err(reject(400, "malformed method"));
    }
    let minor_version = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(reject(505, "only HTTP/1.0 and HTTP/1.1 are supported")),
    };
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(reject(400, "malformed request target"));
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };

    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == limits.max_headers {
            return Err(reject(431, "too many header fields"));
        }
        let (name, value) = line.split_once(':').ok_or_else(|| reject(400, "malformed header line"))?;
        if !is_token(name) {
            return Err(reject(400, "malformed header name"));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err(reject(400, "malformed header value"));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let req = Request { method: method.to_string(), path, query, minor_version, headers, body: Vec::new() };

    if let Some(te) = req.header("transfer-encoding") {
        return Err(if te.eq_ignore_ascii_case("chunked") {
            reject(411, "chunked request bodies are not supported; send Content-Length")
        } else {
            reject(501, format!("transfer-encoding {te:?} is not supported"))
        });
    }
    let mut lengths = req.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some((_, v)), None) => {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 19 {
                return Err(reject(400, "invalid Content-Length"));
            }
            v.parse::<usize>().map_err(|_| reject(400, "invalid Content-Length"))?
        }
        (Some(_), Some(_)) => return Err(reject(400, "more than one Content-Length")),
    };
    Ok(Head { request: req, head_len: head_end + 4, body_len: length })
}

/// The head (request line and headers, without the blank line) when `buf` holds all of it.
pub fn complete_head(buf: &[u8]) -> Option<&[u8]> {
    find(buf, b"\r\n\r\n").map(|i| &buf[..i])
}

/// Whether a head asks for `100 Continue` before it sends its body (`Expect: 100-continue`).
pub fn expects_continue(head: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(head) else { return false };
    text.split("\r\n").skip(1).any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("expect") && value.trim().eq_ignore_ascii_case("100-continue")
        })
    })
}

/// True when a line feed in `head` is not preceded by a carriage return.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<(Request, usize), ParseError> {
        parse(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn simple_get() {
        let (r, n) = p("GET /status?x=1 HTTP/1.1\r\nHost: a\r\n\r\nNEXT").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str(), r.query.as_deref()), ("GET", "/status", Some("x=1")));
        assert_eq!(n, "GET /status?x=1 HTTP/1.1\r\nHost: a\r\n\r\n".len());
        assert!(r.keep_alive());
    }

    #[test]
    fn body_needs_all_its_bytes() {
        assert_eq!(p("POST /configure HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc"), Err(ParseError::Incomplete));
        let (r, _) = p("POST /configure HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").unwrap();
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn the_head_is_known_before_the_body() {
        let text = "POST /configure HTTP/1.1\r\nAuthorization: Bearer x\r\nContent-Length: 999999999999\r\n\r\n{";
        let head = parse_head(text.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(head.request.header("authorization"), Some("Bearer x"));
        assert_eq!((head.head_len, head.body_len), (text.len() - 1, 999_999_999_999));
        assert!(matches!(head.check_body_len(&Limits::default()), Err(ParseError::Reject(413, _))));
        assert!(!head.is_complete(text.as_bytes()));
        assert_eq!(head.complete(text.as_bytes()), None);
    }

    #[test]
    fn rejections_carry_their_codes() {
        let code = |s: &str| match p(s) {
            Err(ParseError::Reject(c, _)) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(code("GET /\r\n\r\n"), 400);
        assert_eq!(code("GET / HTTP/2.0\r\n\r\n"), 505);
        assert_eq!(code("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), 411);
        assert_eq!(code("POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n"), 413);
        assert_eq!(code("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"), 400);
        assert_eq!(code("GET / HTTP/1.1\r\nNo colon\r\n\r\n"), 400);
        let many: String = (0..101).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(code(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
        let long = "a".repeat(40 * 1024);
        assert_eq!(code(&format!("GET / HTTP/1.1\r\nX: {long}")), 431);
    }

    #[test]
    fn limits_hold_whatever_the_read_boundaries() {
        let limits = Limits { max_request_line: 20, max_headers: 4, max_head_bytes: 40, ..Limits::default() };
        // A request line of exactly 20 bytes and a head of exactly 40, fed byte by byte.
        let line = "GET /aaaaaa HTTP/1.1";
        let text = format!("{line}\r\nX: {}\r\n\r\n", "b".repeat(40 - line.len() - 5));
        for cut in 0..text.len() {
            assert_eq!(parse(&text.as_bytes()[..cut], &limits), Err(ParseError::Incomplete), "{cut}");
        }
        assert!(parse(text.as_bytes(), &limits).is_ok());
        let longer = text.replacen("/a", "/aa", 1);
        assert!(matches!(parse(&longer.as_bytes()[..22], &limits), Err(ParseError::Reject(414, _))));
        let longer = text.replacen("X: ", "X: b", 1);
        assert!(matches!(parse(longer.as_bytes(), &limits), Err(ParseError::Reject(431, _))));
    }

    #[test]
    fn bare_lf_line_ends_are_refused_at_once() {
        for text in
            ["GET /status HTTP/1.1\nHost: a\n\n", "GET /status HTTP/1.1\n", "GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n"]
        {
            assert!(matches!(p(text), Err(ParseError::Reject(400, _))), "{text:?}");
        }
    }

    #[test]
    fn expect_continue_is_recognised() {
        let head = complete_head(b"POST /c HTTP/1.1\r\nEXPECT:  100-Continue\r\nContent-Length: 9\r\n\r\n").unwrap();
        assert!(expects_continue(head));
        assert!(!expects_continue(complete_head(b"POST /c HTTP/1.1\r\nX: 100-continue\r\n\r\n").unwrap()));
    }

    #[test]
    fn query_params_decode() {
        let (r, _) = p("GET /database_schema?database=my%20db%22&x HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.query_param("database").as_deref(), Some("my db\""));
        assert_eq!(r.query_param("y"), None);
    }

    #[test]
    fn encode_round_trips() {
        let text = "PUT /a?b HTTP/1.0\r\nA: 1\r\nContent-Length: 2\r\n\r\nhi";
        let (r, _) = p(text).unwrap();
        assert_eq!(String::from_utf8(r.encode()).unwrap(), text);
        assert!(!r.keep_alive());
    }
}
