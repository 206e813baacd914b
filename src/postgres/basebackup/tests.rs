use super::*;
use tar::{EntryType, Header};

static NO: AtomicBool = AtomicBool::new(false);

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cc-bb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("pgdata")).unwrap();
    d
}

/// One tar entry written by hand, so that names the `tar` builder refuses can be tested.
fn raw_entry(name: &str, kind: EntryType, link: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut h = Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0; 1024]);
    out
}

fn good() -> Vec<u8> {
    archive(&[
        raw_entry("PG_VERSION", EntryType::Regular, None, b"15\n"),
        raw_entry("base/", EntryType::Directory, None, b""),
        raw_entry("base/1", EntryType::Regular, None, &[7u8; 3000]),
        raw_entry("lnk", EntryType::Symlink, Some("base/1"), b""),
        raw_entry("hard", EntryType::Link, Some("PG_VERSION"), b""),
    ])
}

#[test]
fn a_whole_archive_unpacks_and_counts_its_bytes() {
    let d = tmp("good");
    let tar = good();
    let n = unpack(&tar[..], &d.join("pgdata"), &NO).unwrap();
    assert_eq!(n, tar.len() as u64);
    assert_eq!(std::fs::read(d.join("pgdata/base/1")).unwrap(), vec![7u8; 3000]);
    assert_eq!(std::fs::read(d.join("pgdata/lnk")).unwrap().len(), 3000);
    assert_eq!(std::fs::read(d.join("pgdata/hard")).unwrap(), b"15\n");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_stream_cut_anywhere_fails() {
    let tar = good();
    // Inside a header, inside a file body, on an entry boundary, and with one end block only.
    for cut in [100, 512 * 3 + 10, 512 * 2, tar.len() - 1024, tar.len() - 512] {
        let d = tmp("cut");
        let err = unpack(&tar[..cut], &d.join("pgdata"), &NO).unwrap_err();
        assert!(matches!(err, UnpackError::Truncated { .. } | UnpackError::Io { .. }), "cut at {cut}: {err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn data_after_the_end_of_archive_fails() {
    let d = tmp("trail");
    let mut tar = good();
    tar.extend_from_slice(b"ERROR");
    assert!(matches!(unpack(&tar[..], &d.join("pgdata"), &NO), Err(UnpackError::TrailingData)));
    std::fs::remove_dir_all(&d).unwrap();
}

/// A reader that fails after `ok` bytes, as the COPY reader does on an ErrorResponse.
struct FailAfter<'a> {
    data: &'a [u8],
    ok: usize,
}

impl Read for FailAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::other("ERROR: pageserver went away"));
        }
        let n = buf.len().min(self.ok).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn an_error_mid_stream_or_after_the_tar_fails_with_its_text() {
    let tar = good();
    for ok in [700, tar.len() - 1024 + 512] {
        let d = tmp("err");
        let err = unpack(FailAfter { data: &tar, ok }, &d.join("pgdata"), &NO).unwrap_err().to_string();
        assert!(err.contains("pageserver went away"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn entries_that_would_land_outside_are_refused() {
    for (i, (entry, reason)) in [
        (raw_entry("../x", EntryType::Regular, None, b"evil"), "absolute or contains '..'"),
        (raw_entry("a/../../x", EntryType::Regular, None, b"evil"), "absolute or contains '..'"),
        (raw_entry("ABS", EntryType::Regular, None, b"evil"), "absolute or contains '..'"),
        (raw_entry("s", EntryType::Symlink, Some("../.."), b""), "symbolic link"),
        (raw_entry("s", EntryType::Symlink, Some("/etc"), b""), "symbolic link"),
        (raw_entry("h", EntryType::Link, Some("../x"), b""), "hard link"),
        (raw_entry("fifo", EntryType::Fifo, None, b""), "entry type"),
    ]
    .into_iter()
    .enumerate()
    {
        let d = tmp(&format!("evil{i}"));
        let outside = d.join("x");
        // The absolute case names a file beside PGDATA, so a wrong unpack would be seen.
        let entry = if i == 2 {
            let name = outside.to_str().unwrap().to_string();
            raw_entry(&name, EntryType::Regular, None, b"evil")
        } else {
            entry
        };
        let tar = archive(&[entry]);
        let err = unpack(&tar[..], &d.join("pgdata"), &NO).unwrap_err().to_string();
        assert!(err.contains(reason), "{i}: {err}");
        assert!(!outside.exists(), "{i}: wrote outside");
        assert_eq!(std::fs::read_dir(d.join("pgdata")).unwrap().count(), 0, "{i}: wrote inside");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn command_is_neons_without_gzip() {
    let tenant: Id = "b0554b632bd4d547a63b86c3630317e8".parse().unwrap();
    let timeline: Id = "2414a61ffc94e428f14b5758fe308e13".parse().unwrap();
    let mut req = Request {
        connstr: "postgresql://no_user:secret@ps.local:6400",
        token: None,
        tenant,
        timeline,
        lsn: Some(Lsn(0x1_0169_AD58)),
        replica: false,
    };
    assert_eq!(req.command(), format!("basebackup {tenant} {timeline} 1/169AD58"));
    req.lsn = None;
    req.replica = true;
    assert_eq!(req.command(), format!("basebackup {tenant} {timeline} --replica"));
    assert_eq!(req.server(), "ps.local:6400");
}

#[test]
fn a_termination_request_stops_the_unpack() {
    let d = tmp("int");
    let err = unpack(&good()[..], &d.join("pgdata"), &AtomicBool::new(true)).unwrap_err().to_string();
    assert!(err.contains("interrupted"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}
