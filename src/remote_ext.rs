//! Extension archives of today's Neon (reference 5.9): a zstd-compressed tar whose
//! `share/extension/*` files go into Postgres's share directory and `lib/*` into its library
//! directory.
//!
//! Contracts:
//! - [`read_archive`] is a pure parser of outside input (fuzzed): it decodes the whole archive
//!   in memory, within [`MAX_UNPACKED`], and returns the files to install or a clear error. It
//!   accepts regular files and directories under `share/extension/` and `lib/` only; a link, a
//!   device, an absolute path or `..` is an error, other top-level entries are ignored (Neon
//!   moves only those two directories).
//! - [`install`] writes nothing until the archive has been read completely: a truncated or
//!   unreadable archive installs nothing. Files are first written to a staging directory beside
//!   their target directory, then renamed into place one by one.
//! - [`download`] reads at most [`MAX_DOWNLOAD`] bytes, with a timeout.
//! - [`Installer`] (module `fetch`) puts the three together, once per archive name at a time;
//!   [`Preload`] (module `preload`) uses it before Postgres starts.

mod fetch;
mod preload;

pub use fetch::{Failure, Fetched, Installer, PgDirs, WAIT_LIMIT};
pub use preload::{Preload, Preloaded, libraries, lookup};

use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// The largest compressed archive accepted.
pub const MAX_DOWNLOAD: u64 = 256 * 1024 * 1024;
/// The largest total of the files in one archive.
pub const MAX_UNPACKED: u64 = 512 * 1024 * 1024;

const DOWNLOAD_TIMEOUT_SECS: u64 = 120;

/// Where a file of the archive goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `$(pg_config --sharedir)/extension`
    Share,
    /// `$(pg_config --pkglibdir)`
    Lib,
}

/// One file to install: where, its path below that directory, its mode and content.
#[derive(Debug)]
pub struct File {
    pub target: Target,
    pub path: PathBuf,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// What is wrong with an archive, or with getting it.
#[derive(Debug)]
pub enum ArchiveError {
    /// Not a zstd frame this build can decode (or a truncated one).
    Zstd(String),
    /// Not a readable tar, or a truncated one.
    Tar(String),
    /// An entry this installer refuses (a link, `..`, an absolute path).
    Entry(String),
    /// Larger than the limits.
    TooLarge(String),
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::Zstd(e) => write!(f, "the archive is not zstd data this build can read: {e}"),
            ArchiveError::Tar(e) => write!(f, "the archive is not a complete tar: {e}"),
            ArchiveError::Entry(e) => write!(f, "the archive has an entry that cannot be installed: {e}"),
            ArchiveError::TooLarge(e) => write!(f, "the archive is too large: {e}"),
        }
    }
}

/// `ruzstd`'s decoder as a `std::io::Read` (the crate is built without its `std` feature).
struct Zstd<'a>(ruzstd::decoding::StreamingDecoder<&'a [u8], ruzstd::decoding::FrameDecoder>);

impl Read for Zstd<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        ruzstd::io::Read::read(&mut self.0, buf).map_err(|e| std::io::Error::other(format!("zstd: {e}")))
    }
}

/// Decodes a `.tar.zst` archive into the files to install.
pub fn read_archive(compressed: &[u8]) -> Result<Vec<File>, ArchiveError> {
    let decoder =
        ruzstd::decoding::StreamingDecoder::new(compressed).map_err(|e| ArchiveError::Zstd(format!("{e:?}")))?;
    // One byte over the limit is read so that "exactly the limit" and "more" differ.
    let mut tar = tar::Archive::new(Zstd(decoder).take(MAX_UNPACKED + 1));
    let entries = tar.entries().map_err(|e| ArchiveError::Tar(e.to_string()))?;
    let mut files = Vec::new();
    let mut total = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Tar(e.to_string()))?;
        let raw = entry.path().map_err(|e| ArchiveError::Tar(e.to_string()))?.into_owned();
        let kind = entry.header().entry_type();
        let Some((target, path)) = place(&raw)? else { continue };
        if kind.is_dir() {
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(ArchiveError::Entry(format!("{} is a {kind:?}, not a regular file", raw.display())));
        }
        let size = entry.size();
        total = total.saturating_add(size);
        if total > MAX_UNPACKED {
            return Err(ArchiveError::TooLarge(format!("more than {MAX_UNPACKED} bytes of files")));
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        let mut data = Vec::with_capacity(usize::try_from(size.min(1 << 20)).unwrap_or(0));
        entry.read_to_end(&mut data).map_err(|e| ArchiveError::Tar(format!("{}: {e}", raw.display())))?;
        if data.len() as u64 != size {
            return Err(ArchiveError::Tar(format!("{} is cut short", raw.display())));
        }
        files.push(File { target, path, mode, data });
    }
    // The tar crate stops quietly at the end of its input: a stream cut short at an entry
    // boundary has no end-of-archive blocks. Check the zstd frame itself ended cleanly by
    // reading what is left (the zero blocks), which errors on a truncated frame.
    let mut rest = tar.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| ArchiveError::Zstd(e.to_string()))?;
    if rest.limit() == 0 {
        return Err(ArchiveError::TooLarge(format!("more than {MAX_UNPACKED} bytes decompressed")));
    }
    if !rest.into_inner().0.decoder.is_finished() {
        return Err(ArchiveError::Zstd("the zstd frame is cut short".into()));
    }
    Ok(files)
}

/// Maps an archive path to its target: `share/extension/X` and `lib/X`; other top-level
/// entries are skipped (None); `..` and absolute paths are errors.
fn place(raw: &Path) -> Result<Option<(Target, PathBuf)>, ArchiveError> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_owned()),
            Component::CurDir => {}
            _ => return Err(ArchiveError::Entry(format!("{} leaves the archive's directory", raw.display()))),
        }
    }
    let (target, skip) = match parts.as_slice() {
        [a, b, ..] if a == "share" && b == "extension" => (Target::Share, 2),
        [a, ..] if a == "lib" => (Target::Lib, 1),
        _ => return Ok(None),
    };
    let path: PathBuf = parts[skip..].iter().collect();
    Ok((!path.as_os_str().is_empty()).then_some((target, path)))
}

/// Downloads `url` (status 200 only) within the limits; the error is the message the route
/// answers with.
pub fn download(url: &str) -> Result<Vec<u8>, String> {
    let resp =
        minreq::get(url).with_timeout(DOWNLOAD_TIMEOUT_SECS).with_max_headers_size(64 * 1024).send_lazy().map_err(
            |e| {
                crate::metrics::count_remote_ext_request("unknown");
                format!("cannot download {url}: {e}")
            },
        )?;
    let label = if resp.reason_phrase.is_empty() {
        resp.status_code.to_string()
    } else {
        format!("{} {}", resp.status_code, resp.reason_phrase)
    };
    crate::metrics::count_remote_ext_request(&label);
    match resp.status_code {
        200 => {}
        503 => return Err("remote extensions server is temporarily unavailable".into()),
        code => {
            return Err(format!(
                "unexpected remote extensions server response status code: {code} {}",
                resp.reason_phrase
            ));
        }
    }
    let mut body = Vec::new();
    resp.take(MAX_DOWNLOAD + 1).read_to_end(&mut body).map_err(|e| format!("cannot download {url}: {e}"))?;
    if body.len() as u64 > MAX_DOWNLOAD {
        return Err(format!("{url}: the archive is larger than {MAX_DOWNLOAD} bytes"));
    }
    Ok(body)
}

/// Writes `files` into `share` and `lib`: each through a staging directory beside its target
/// directory, renamed into place once every file is written. Returns how many were installed.
pub fn install(files: &[File], share: &Path, lib: &Path) -> std::io::Result<usize> {
    let stages = [(Target::Share, share), (Target::Lib, lib)].map(|(t, dir)| {
        let stage = dir.join(format!(".compute_ctl-staging-{}-{}", std::process::id(), unique()));
        (t, dir, stage)
    });
    let result = (|| {
        for (t, _, stage) in &stages {
            for f in files.iter().filter(|f| f.target == *t) {
                let p = stage.join(&f.path);
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&p, &f.data)?;
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(f.mode | 0o444))?;
            }
        }
        let mut n = 0;
        for (t, dir, stage) in &stages {
            for f in files.iter().filter(|f| f.target == *t) {
                let to = dir.join(&f.path);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::rename(stage.join(&f.path), &to)?;
                n += 1;
            }
        }
        Ok(n)
    })();
    for (_, _, stage) in &stages {
        let _ = std::fs::remove_dir_all(stage);
    }
    result
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_placed_or_refused() {
        let ok = |p: &str| place(Path::new(p)).unwrap();
        assert_eq!(ok("share/extension/x.control"), Some((Target::Share, PathBuf::from("x.control"))));
        assert_eq!(ok("./lib/x.so"), Some((Target::Lib, PathBuf::from("x.so"))));
        assert_eq!(ok("lib/bitcode/x/a.bc"), Some((Target::Lib, PathBuf::from("bitcode/x/a.bc"))));
        assert_eq!(ok("share/doc/readme"), None);
        assert_eq!(ok("lib"), None);
        assert!(place(Path::new("lib/../../etc/passwd")).is_err());
        assert!(place(Path::new("/lib/x.so")).is_err());
    }

    /// A `tar -c share lib | zstd` archive (the fuzz seed): both files, in their targets; cut
    /// anywhere, it is an error, never a partial list.
    #[test]
    fn reads_a_zstd_cli_archive_and_refuses_every_truncation() {
        let bytes = include_bytes!("../fuzz/corpus/ext_archive/small.tar.zst");
        let files = read_archive(bytes).unwrap();
        let got: Vec<_> = files.iter().map(|f| (f.target, f.path.to_str().unwrap(), f.data.as_slice())).collect();
        assert_eq!(got, [(Target::Share, "x.control", &b"comment='x'\n"[..]), (Target::Lib, "x.so", b"x\n")]);
        for n in 0..bytes.len() {
            assert!(read_archive(&bytes[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn garbage_is_a_zstd_error() {
        assert!(matches!(read_archive(b"not zstd at all"), Err(ArchiveError::Zstd(_))));
        assert!(matches!(read_archive(b""), Err(ArchiveError::Zstd(_))));
    }
}
