//! One basebackup from a pageserver: the `basebackup` command over the Postgres wire protocol
//! (`COPY … TO STDOUT`), streamed straight into a directory with the `tar` crate.
//!
//! Memory stays constant whatever the size: the COPY reader hands over one CopyData message
//! at a time, and each tar entry is copied to its file as it arrives. Nothing is buffered or
//! written to a temporary file.
//!
//! What makes an unpack fail (so that a half-written PGDATA is never started):
//! - the COPY stream ends, or the connection drops, before the tar's end-of-archive blocks;
//! - an ErrorResponse arrives, in the middle or after the tar;
//! - anything but zero bytes follows the end-of-archive block;
//! - an entry would land outside the directory: an absolute path, a `..` component, a
//!   symbolic link whose target is absolute or climbs out, a hard link to such a path;
//! - an entry of a type a PGDATA never holds (devices, FIFOs).

use crate::error::{Error, db_error_text};
use crate::spec::{Id, Lsn};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tar::EntryType;

/// Connect timeout when the connection string sets none: a pageserver that does not answer
/// must become a logged, retried failure, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to ask the pageserver for.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// A libpq connection string or URL (the first shard's).
    pub connstr: &'a str,
    /// `storage_auth_token`: sent as the password, overriding any in `connstr`.
    pub token: Option<&'a str>,
    pub tenant: Id,
    pub timeline: Id,
    /// None asks for the latest LSN (a Replica).
    pub lsn: Option<Lsn>,
    /// `--replica`: every mode but Primary.
    pub replica: bool,
}

impl Request<'_> {
    /// `basebackup <tenant> <timeline> [<lsn>] [--replica]`. Neon also asks for `--gzip`;
    /// we take plain tar, having no gzip decoder among our dependencies.
    pub fn command(&self) -> String {
        let mut cmd = format!("basebackup {} {}", self.tenant, self.timeline);
        if let Some(lsn) = self.lsn {
            cmd.push_str(&format!(" {lsn}"));
        }
        if self.replica {
            cmd.push_str(" --replica");
        }
        cmd
    }

    /// `host:port` of the pageserver, for messages: the connection string may hold a password.
    pub fn server(&self) -> String {
        match self.connstr.parse::<postgres::Config>() {
            Ok(c) => {
                let host = match c.get_hosts().first() {
                    Some(postgres::config::Host::Tcp(h)) => h.clone(),
                    Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
                    None => "localhost".into(),
                };
                format!("{host}:{}", c.get_ports().first().copied().unwrap_or(5432))
            }
            Err(_) => "(unparsable connection string)".into(),
        }
    }
}

/// Figures of one successful fetch.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fetched {
    pub connect_micros: u64,
    /// Bytes of the COPY stream (the tar, with its trailing zero blocks).
    pub bytes: u64,
    /// From sending the command to the end of the unpack.
    pub ms: u64,
}

/// Connects, sends the command, and unpacks the stream into `dir` (which should be empty).
/// Errors are `Error::Basebackup` with the cause; the caller retries and cleans `dir`.
/// `interrupted` ends the wait at once with [`Error::Interrupted`], even when the pageserver
/// stopped sending: the transfer runs on its own thread, which stops at its next read (its
/// socket has no timeout to wake it earlier; the process is ending anyway).
pub fn fetch(req: &Request<'_>, dir: &Path, interrupted: &AtomicBool) -> Result<Fetched, Error> {
    let (connstr, token) = (req.connstr.to_string(), req.token.map(str::to_string));
    let owned = Request { connstr: "", token: None, ..req.clone() };
    let dir = dir.to_path_buf();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let stop2 = stop.clone();
    std::thread::Builder::new()
        .name("basebackup".into())
        .spawn(move || {
            let req = Request { connstr: &connstr, token: token.as_deref(), ..owned };
            let _ = tx.send(fetch_here(&req, &dir, &stop2));
        })
        .map_err(|e| Error::system("cannot start the basebackup thread", e))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(result) => return result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupted.load(Ordering::SeqCst) {
                    stop.store(true, Ordering::SeqCst);
                    return Err(Error::Interrupted);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Basebackup {
                    what: "the basebackup thread ended without an answer".into(),
                    source: None,
                });
            }
        }
    }
}

fn fetch_here(req: &Request<'_>, dir: &Path, interrupted: &AtomicBool) -> Result<Fetched, Error> {
    let mut config: postgres::Config =
        req.connstr.parse().map_err(|e| Error::basebackup("invalid pageserver connection string", e))?;
    if let Some(t) = req.token {
        config.password(t);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let started = Instant::now();
    let mut client = config
        .connect(postgres::NoTls)
        .map_err(|e| Error::basebackup(format!("cannot connect to {}", req.server()), e))?;
    let connect_micros = started.elapsed().as_micros() as u64;
    let started = Instant::now();
    let reader = client
        .copy_out(req.command().as_str())
        .map_err(|e| Error::basebackup(format!("{} refused", req.command()), e))?;
    let bytes = unpack(reader, dir, interrupted).map_err(|e| Error::basebackup("cannot unpack the basebackup", e))?;
    Ok(Fetched { connect_micros, bytes, ms: started.elapsed().as_millis() as u64 })
}

/// Why an unpack failed.
#[derive(Debug)]
pub enum UnpackError {
    /// The stream failed (connection lost, ErrorResponse) or a file could not be written.
    Io { during: String, source: io::Error },
    /// The stream ended before the end-of-archive block.
    Truncated { after_bytes: u64 },
    /// Something other than zeros after the end-of-archive block.
    TrailingData,
    /// An entry that would escape the directory, or of a type a PGDATA never holds.
    Refused { entry: String, reason: &'static str },
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UnpackError::Io { during, source } => write!(f, "{during}: {}", cause_text(source)),
            UnpackError::Truncated { after_bytes } => {
                write!(f, "the stream ended after {after_bytes} bytes, before the end of the tar archive")
            }
            UnpackError::TrailingData => write!(f, "unexpected data after the end of the tar archive"),
            UnpackError::Refused { entry, reason } => write!(f, "refusing tar entry {entry:?}: {reason}"),
        }
    }
}

impl std::error::Error for UnpackError {}

/// The innermost useful message of an I/O error: the server's own words for an
/// ErrorResponse, the tar crate's context plus its cause otherwise.
fn cause_text(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(pg) = s.downcast_ref::<postgres::Error>() {
            return db_error_text(pg);
        }
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// Counts what is read, remembers whether the stream reached its end, and stops reading
/// once a termination request arrived.
struct Counted<'a, R> {
    inner: R,
    bytes: u64,
    eof: bool,
    interrupted: &'a AtomicBool,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.interrupted.load(Ordering::Relaxed) {
            return Err(io::Error::other("interrupted by a termination request"));
        }
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Unpacks a tar stream into `dir`, entry by entry, and returns the bytes read. Succeeds only
/// when the archive ended with its end-of-archive blocks and the stream then ended cleanly.
pub fn unpack(stream: impl Read, dir: &Path, interrupted: &AtomicBool) -> Result<u64, UnpackError> {
    let mut archive = tar::Archive::new(Counted { inner: stream, bytes: 0, eof: false, interrupted });
    let entries = archive.entries().map_err(|source| UnpackError::Io { during: "reading the tar".into(), source })?;
    let mut buf = vec![0u8; COPY_BUF];
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Io { during: "reading a tar header".into(), source })?;
        let rel = check_entry(&entry)?;
        let io_err = |source| UnpackError::Io { during: format!("unpacking {}", rel.display()), source };
        if matches!(entry.header().entry_type(), EntryType::Regular | EntryType::Continuous) {
            write_file(&mut entry, &dir.join(&rel), &mut buf).map_err(io_err)?;
        } else if !entry.unpack_in(dir).map_err(io_err)? {
            // unpack_in skips what it considers unsafe; check_entry should have refused it first.
            return Err(UnpackError::Refused { entry: rel.display().to_string(), reason: "the tar crate refused it" });
        }
    }
    let mut counted = archive.into_inner();
    // A header read or a file body that hit the end of the stream means the tar crate stopped
    // at EOF, not at the zero block that ends an archive.
    if counted.eof {
        return Err(UnpackError::Truncated { after_bytes: counted.bytes });
    }
    // The rest must be zeros (the second end-of-archive block, any record padding) and end
    // cleanly: reading to the end is also what surfaces an ErrorResponse sent after the tar.
    let end_block = counted.bytes;
    let mut buf = [0u8; 8192];
    loop {
        let n =
            counted.read(&mut buf).map_err(|source| UnpackError::Io { during: "reading the stream".into(), source })?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(UnpackError::TrailingData);
        }
    }
    if counted.bytes < end_block + 512 {
        // One zero block only: a writer that stopped before finishing the archive.
        return Err(UnpackError::Truncated { after_bytes: counted.bytes });
    }
    Ok(counted.bytes)
}

/// Data files are copied in blocks this large: a fraction of the `tar` crate's per-entry
/// 8 KiB copies' system calls, and still a small constant amount of memory.
const COPY_BUF: usize = 256 * 1024;

/// Writes a regular file's data to `dst`. The bulk of a basebackup is here, so it is done in
/// large blocks rather than with `Entry::unpack_in`. The directory entries, links and the
/// checks of [`check_entry`] keep every path inside: a link can only lead deeper inside.
fn write_file(entry: &mut impl Read, dst: &Path, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // A repeated name replaces the earlier entry; `create_new` never writes through a link.
    // Owner-only, as Postgres keeps its files, whatever mode the archive says.
    if std::fs::symlink_metadata(dst).is_ok_and(|m| !m.is_dir()) {
        std::fs::remove_file(dst)?;
    }
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dst)?;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match entry.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        f.write_all(&buf[..filled])?;
        if filled < buf.len() {
            return Ok(());
        }
    }
}

/// The entry's path if it is safe to unpack under the destination; refuses it otherwise.
fn check_entry<R: Read>(entry: &tar::Entry<'_, R>) -> Result<PathBuf, UnpackError> {
    let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
    let refuse = |reason| UnpackError::Refused { entry: raw.clone(), reason };
    let path = entry.path().map_err(|_| refuse("the path is not valid"))?.into_owned();
    let rel = relative(&path).ok_or_else(|| refuse("the path is absolute or contains '..'"))?;
    match entry.header().entry_type() {
        EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
        EntryType::Symlink => {
            // No absolute target and no `..` at all: with every earlier link held to the same
            // rule, a link can then only lead deeper inside, however links are chained.
            let target = entry.link_name().ok().flatten().ok_or_else(|| refuse("a symbolic link without target"))?;
            if relative(&target).is_none() {
                return Err(refuse("a symbolic link whose target is absolute or contains '..'"));
            }
        }
        EntryType::Link => {
            let target = entry.link_name().ok().flatten().ok_or_else(|| refuse("a hard link without target"))?;
            if relative(&target).is_none() {
                return Err(refuse("a hard link to a path outside"));
            }
        }
        _ => return Err(refuse("an entry type a PGDATA never holds")),
    }
    Ok(rel)
}

/// `path` without `.` components if it is relative and has no `..`.
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
