//! The accept loop: one thread per connection, bounded, with deadlines so that idle or slow
//! clients can never starve `GET /status`.
//!
//! A slow client that trickles a request head (slowloris) holds a thread. Three things keep a
//! crowd of them from taking every slot: a head must be whole within [`HEAD_DEADLINE`] of its
//! first byte; one address may have at most [`HEADS_PER_ADDRESS`] connections waiting for a
//! head (its oldest is closed to make room); and when all [`MAX_CONNECTIONS`] slots are taken, a
//! new connection closes the oldest one still waiting for its head instead of being refused.
//! A client that sends its request at once is never the oldest waiting, so it is served.

use super::request::{self, Head, Limits, ParseError, Request};
use super::response::Response;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection threads at most; past it the oldest connection waiting for its head is closed,
/// and when there is none, a new connection gets a 503 and is closed.
pub const MAX_CONNECTIONS: usize = 1024;
/// A request head must arrive whole within this time once its first byte is in (else 408).
pub const HEAD_DEADLINE: Duration = Duration::from_secs(3);
/// A request must arrive whole (head and body) within this time once its first byte is in.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Connections from one address that may wait for their head at once.
pub const HEADS_PER_ADDRESS: usize = 256;
/// An idle keep-alive connection is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Past this many connections, a connection idle for [`CROWDED_IDLE_TIMEOUT`] is closed, so
/// that a crowd of idle clients cannot fill every slot and starve `GET /status`.
pub const SHED_IDLE_ABOVE: usize = MAX_CONNECTIONS * 3 / 4;
/// The idle timeout while crowded (also the time a new connection has for its first request).
pub const CROWDED_IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an idle connection checks whether it should make room.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// Connections waiting for a request head: the ones that may be closed to make room.
#[derive(Default)]
struct Heads {
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, Waiting>>,
}

struct Waiting {
    since: Instant,
    ip: IpAddr,
    /// A second handle on the socket; shutting it down wakes the reader at once.
    stream: Arc<TcpStream>,
}

impl Heads {
    fn enter(&self, peer: &Peer) -> Option<u64> {
        let (ip, stream) = (peer.ip?, peer.handle.clone()?);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, Waiting { since: Instant::now(), ip, stream });
        Some(id)
    }

    fn leave(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, ip: IpAddr) -> usize {
        self.lock().values().filter(|w| w.ip == ip).count()
    }

    /// Closes the connection that has waited longest for its head (from `ip` only, when
    /// given); false when there is none.
    fn shed_oldest(&self, ip: Option<IpAddr>) -> bool {
        let mut waiting = self.lock();
        let oldest = waiting
            .iter()
            .filter(|(_, w)| ip.is_none_or(|ip| w.ip == ip))
            .min_by_key(|(_, w)| w.since)
            .map(|(id, _)| *id);
        let Some(w) = oldest.and_then(|id| waiting.remove(&id)) else { return false };
        let _ = w.stream.shutdown(Shutdown::Both);
        true
    }
}

/// Keeps a connection in [`Heads`] until its head is complete (or it goes).
struct HeadWait<'a> {
    heads: &'a Heads,
    id: Option<u64>,
}

impl HeadWait<'_> {
    fn done(&mut self) {
        if let Some(id) = self.id.take() {
            self.heads.leave(id);
        }
    }
}

impl Drop for HeadWait<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

thread_local! {
    /// The client of the request this connection thread is handling, for [`client_gone`].
    static CLIENT: std::cell::RefCell<Option<Arc<TcpStream>>> = const { std::cell::RefCell::new(None) };
}

/// From inside a handler: true when the client of the request being handled has closed its
/// connection (or it broke), so work done only for it (a `pg_dump` waiting on a lock, say)
/// can stop. False outside a handler and while the client is still there.
pub fn client_gone() -> bool {
    CLIENT.with_borrow(|c| {
        let Some(stream) = c else { return false };
        // The read timeout is the connection's own, set again before every read of a request.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(1)));
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
            }
        }
    })
}

/// Binds `addr` and serves it on a background thread; returns the bound address.
/// Asked about each request as soon as its head is in, before any of its body is read (the
/// request it gets has an empty body). `Err(response)` refuses it: the response is sent and
/// the connection closed without the body being read.
pub type Gate = Arc<dyn Fn(&Request) -> Result<(), Response> + Send + Sync>;

/// How a request could not be read.
enum Unread {
    /// The client sent something unparseable, too big or too slow.
    Bad(Response),
    /// The gate refused it.
    Refused(Response),
}

/// Binds `addr` and serves it on a background thread; returns the bound address.
pub fn spawn(addr: SocketAddr, name: &str, gate: Gate, handler: Handler) -> io::Result<SocketAddr> {
    let bound = bind(addr, name)?;
    let local = bound.local;
    bound.serve(gate, handler)?;
    Ok(local)
}

/// A listening socket nobody accepts on yet: connections wait in its backlog until
/// [`Bound::serve`].
pub struct Bound {
    listener: TcpListener,
    local: SocketAddr,
    name: String,
    /// Connection threads in `SCHED_BATCH` (see [`Bound::yield_to_postgres`]).
    batch: bool,
}

/// Binds `addr` (and listens): the half of [`spawn`] that can fail for a reason a user must
/// see (the address is taken, say).
pub fn bind(addr: SocketAddr, name: &str) -> io::Result<Bound> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    log::info!("{name} HTTP server listening on {local}");
    Ok(Bound { listener, local, name: name.to_string(), batch: false })
}

impl Bound {
    /// Serves each connection on a thread in the `SCHED_BATCH` policy: a request that arrives
    /// while Postgres keeps the CPUs busy waits for its turn instead of preempting Postgres. A
    /// control plane polling `/status` every millisecond while Postgres starts (the two cores
    /// here) slowed that start by preempting it; the answer itself is not slower when a CPU is
    /// free, and the thread's share of the CPU is unchanged. Not for the vm-monitor, whose
    /// agent expects answers within a millisecond whatever Postgres does.
    pub fn yield_to_postgres(mut self) -> Bound {
        self.batch = true;
        self
    }

    /// Accepts connections on a thread of its own, each served on its own thread.
    pub fn serve(self, gate: Gate, handler: Handler) -> io::Result<()> {
        let Bound { listener, name, batch, .. } = self;
        let active = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Heads::default());
        std::thread::Builder::new().name(format!("http-{name}")).spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else {
                    // Out of file descriptors, say: do not spin.
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let ip = stream.peer_addr().ok().map(|a| a.ip());
                if let Some(ip) = ip
                    && heads.count(ip) >= HEADS_PER_ADDRESS
                {
                    heads.shed_oldest(Some(ip));
                }
                // A shed connection's thread ends on its own; until then it still counts, so the
                // bound is soft by the connections being closed right now.
                let n = active.fetch_add(1, Ordering::SeqCst);
                if n >= MAX_CONNECTIONS && (n >= MAX_CONNECTIONS + HEADS_PER_ADDRESS || !heads.shed_oldest(None)) {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let mut s = stream;
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = Response::error(503, "too many connections").write_to(&mut s, false, false);
                    continue;
                }
                let handler = handler.clone();
                let gate = gate.clone();
                let active2 = active.clone();
                let heads2 = heads.clone();
                let spawned =
                    std::thread::Builder::new().name("http-conn".into()).stack_size(256 * 1024).spawn(move || {
                        if batch && let Err(e) = crate::sys::batch_scheduling() {
                            log::debug!("SCHED_BATCH refused for an HTTP connection thread: {e}");
                        }
                        serve_connection(stream, ip, &gate, &handler, &active2, &heads2);
                        active2.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
        Ok(())
    }
}

/// The client's address and a second handle on its socket, made once per connection (not per
/// request: a control plane may poll `/status` every millisecond on one connection).
struct Peer {
    ip: Option<IpAddr>,
    handle: Option<Arc<TcpStream>>,
}

/// What reading a request needs beside the socket and its buffer.
struct Conn<'a> {
    peer: Peer,
    limits: Limits,
    active: &'a AtomicUsize,
    heads: &'a Heads,
    gate: &'a Gate,
}

fn serve_connection(
    mut stream: TcpStream,
    ip: Option<IpAddr>,
    gate: &Gate,
    handler: &Handler,
    active: &AtomicUsize,
    heads: &Heads,
) {
    let peer = Peer { ip, handle: stream.try_clone().ok().map(Arc::new) };
    let conn = Conn { peer, limits: Limits::default(), active, heads, gate };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    // The read timeout last set: a keep-alive client polling every millisecond should not
    // cost a setsockopt per request.
    let mut timeout_set: Option<Duration> = None;
    loop {
        let req = match read_request(&mut stream, &conn, &mut buf, &mut timeout_set) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(Unread::Bad(resp)) => {
                let _ = resp.write_to(&mut stream, false, false);
                linger_close(stream, 8 * 1024 * 1024, Duration::from_secs(2));
                return;
            }
            Err(Unread::Refused(resp)) => {
                // Only a short grace for what is already on its way, so that the answer is not
                // lost to a reset; the body itself is never read into memory.
                let _ = resp.write_to(&mut stream, false, false);
                linger_close(stream, 256 * 1024, Duration::from_millis(500));
                return;
            }
        };
        let keep_alive = req.keep_alive();
        let head_only = req.method == "HEAD";
        CLIENT.set(conn.peer.handle.clone());
        let mut resp = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&req)))
            .unwrap_or_else(|_| Response::error(500, "internal error while handling the request"));
        CLIENT.set(None);
        if let Some(upgrade) = resp.take_upgrade() {
            // The connection now speaks another protocol; its new owner gets the socket.
            if resp.write_to(&mut stream, false, false).is_ok() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    upgrade(stream, std::mem::take(&mut buf))
                }));
            }
            return;
        }
        if resp.write_to(&mut stream, keep_alive, head_only).is_err() || !keep_alive {
            return;
        }
    }
}

/// Reads one request; Ok(None) when the client closed or idled out between requests (or the
/// server is crowded and an idle connection makes room, or it was shed while waiting for its
/// head).
fn read_request(
    stream: &mut TcpStream,
    conn: &Conn<'_>,
    buf: &mut Vec<u8>,
    set: &mut Option<Duration>,
) -> Result<Option<Request>, Unread> {
    let mut started: Option<Instant> = if buf.is_empty() { None } else { Some(Instant::now()) };
    let idle_since = Instant::now();
    let mut chunk = [0u8; 16 * 1024];
    let Conn { peer, limits, active, heads, gate } = conn;
    let mut waiting = HeadWait { heads, id: heads.enter(peer) };
    let mut continued = false;
    let mut parsed: Option<Head> = None;
    loop {
        let mut head_done = false;
        if !buf.is_empty() {
            if parsed.is_none() {
                match request::parse_head(buf, limits) {
                    Ok(h) => {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gate(&h.request)))
                            .unwrap_or_else(|_| {
                                Err(Response::error(500, "internal error while authorizing the request"))
                            })
                            .map_err(Unread::Refused)?;
                        h.check_body_len(limits).map_err(reject)?;
                        parsed = Some(h);
                    }
                    Err(ParseError::Incomplete) => {}
                    Err(e) => return Err(reject(e)),
                }
            }
            if parsed.as_ref().is_some_and(|h| h.is_complete(buf))
                && let Some((req, used)) = parsed.take().and_then(|h| h.complete(buf))
            {
                buf.drain(..used);
                return Ok(Some(req));
            }
            // Only a head the gate let through is told to send its body.
            if parsed.is_some()
                && let Some(head) = request::complete_head(buf)
            {
                head_done = true;
                waiting.done();
                // The head is accepted and the body is awaited: tell a client that waits for
                // it to send the body (curl waits a second otherwise).
                if !continued && request::expects_continue(head) {
                    continued = true;
                    let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
            }
        }
        let timeout = match started {
            Some(t) => (if head_done { REQUEST_DEADLINE } else { HEAD_DEADLINE }).checked_sub(t.elapsed()),
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
                Err(Unread::Bad(Response::error(408, "request not received in time")))
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

fn reject(e: ParseError) -> Unread {
    match e {
        ParseError::Reject(code, msg) => Unread::Bad(Response::error(code, msg)),
        ParseError::Incomplete => Unread::Bad(Response::error(400, "incomplete request")),
    }
}

/// Closes after an error answer without losing it: a close with unread input makes the
/// kernel send a reset, which can destroy the answer before the client reads it. So stop
/// writing, then read and discard what the client still sends, for a bounded time and size. At most `max` bytes for at most `time`, into a small buffer on the stack.
fn linger_close(mut stream: TcpStream, max: usize, time: Duration) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + time;
    let mut sink = [0u8; 16 * 1024];
    let mut total = 0usize;
    while total < max {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(500))));
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}
