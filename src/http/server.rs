//! The accept loop: one thread per connection, bounded, with deadlines so that idle or slow
//! clients can never starve `GET /status`.

use super::request::{self, Limits, ParseError, Request};
use super::response::Response;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Connection threads at most; past it a connection gets a 503 and is closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// A request must arrive whole within this time once its first byte is in (else 408).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Past this many connections, a connection idle for [`CROWDED_IDLE_TIMEOUT`] is closed, so
/// that a crowd of idle clients cannot fill every slot and starve `GET /status`.
pub const SHED_IDLE_ABOVE: usize = MAX_CONNECTIONS * 3 / 4;
/// The idle timeout while crowded (also the time a new connection has for its first request).
pub const CROWDED_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an idle connection checks whether it should make room.
const IDLE_CHECK: Duration = Duration::from_millis(500);

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// Binds `addr` and serves it on a background thread; returns the bound address.
pub fn spawn(addr: SocketAddr, name: &str, handler: Handler) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    let active = Arc::new(AtomicUsize::new(0));
    let name = name.to_string();
    std::thread::Builder::new().name(format!("http-{name}")).spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                let mut s = stream;
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = Response::error(503, "too many connections").write_to(&mut s, false, false);
                continue;
            }
            let handler = handler.clone();
            let active2 = active.clone();
            let spawned =
                std::thread::Builder::new().name("http-conn".into()).stack_size(256 * 1024).spawn(move || {
                    serve_connection(stream, &handler, &active2);
                    active2.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    })?;
    log::info!("{name} HTTP server listening on {local}");
    Ok(local)
}

fn serve_connection(mut stream: TcpStream, handler: &Handler, active: &AtomicUsize) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let limits = Limits::default();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    // The read timeout last set: a keep-alive client polling every millisecond should not
    // cost a setsockopt per request.
    let mut timeout_set: Option<Duration> = None;
    loop {
        let req = match read_request(&mut stream, &mut buf, &limits, active, &mut timeout_set) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(resp) => {
                let _ = resp.write_to(&mut stream, false, false);
                linger_close(stream);
                return;
            }
        };
        let keep_alive = req.keep_alive();
        let head_only = req.method == "HEAD";
        let resp = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&req)))
            .unwrap_or_else(|_| Response::error(500, "internal error while handling the request"));
        if resp.write_to(&mut stream, keep_alive, head_only).is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads one request; Ok(None) when the client closed or idled out between requests (or the
/// server is crowded and an idle connection makes room).
fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
    active: &AtomicUsize,
    set: &mut Option<Duration>,
) -> Result<Option<Request>, Response> {
    let mut started: Option<Instant> = if buf.is_empty() { None } else { Some(Instant::now()) };
    let idle_since = Instant::now();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if !buf.is_empty() {
            match request::parse(buf, limits) {
                Ok((req, used)) => {
                    buf.drain(..used);
                    return Ok(Some(req));
                }
                Err(ParseError::Incomplete) => {}
                Err(ParseError::Reject(code, msg)) => return Err(Response::error(code, msg)),
            }
        }
        let timeout = match started {
            Some(t) => REQUEST_DEADLINE.checked_sub(t.elapsed()),
            None => {
                // Crowded: idle connections get a short leash (a new one still has that long
                // to send its request), so the crowd drains and new clients get served.
                let limit =
                    if active.load(Ordering::Relaxed) > SHED_IDLE_ABOVE { CROWDED_IDLE_TIMEOUT } else { IDLE_TIMEOUT };
                limit.checked_sub(idle_since.elapsed()).map(|t| t.min(IDLE_CHECK))
            }
        };
        let Some(timeout) = timeout.filter(|t| !t.is_zero()) else {
            return if started.is_some() {
                Err(Response::error(408, "request not received in time"))
            } else {
                Ok(None)
            };
        };
        // Rounded up to 10 ms so that a timeout counting down is not set anew on every read.
        let timeout = Duration::from_millis((timeout.as_millis() as u64).div_ceil(10) * 10);
        if *set != Some(timeout) {
            let _ = stream.set_read_timeout(Some(timeout));
            *set = Some(timeout);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                started.get_or_insert_with(Instant::now);
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Closes after an error answer without losing it: a close with unread input makes the
/// kernel send a reset, which can destroy the answer before the client reads it. So stop
/// writing, then read and discard what the client still sends, for a bounded time and size.
fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut sink = [0u8; 16 * 1024];
    let mut total = 0usize;
    while total < 8 * 1024 * 1024 {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(500))));
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}
