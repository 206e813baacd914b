//! `pg_hba.conf` in local mode: trust only for the `--connstr` superuser, on the local socket
//! and loopback; every other role logs in with its password (md5 in `pg_hba.conf` also accepts
//! a SCRAM secret, by SCRAM), so a role without one cannot log in.
//!
//! `initdb --auth=trust` writes six lines that trust every role. Each of them, recognised by
//! its fields exactly as initdb writes them, is rewritten in place to name the superuser
//! instead of `all`; no other line is touched, so lines a user added stay as they are. A
//! PGDATA made by an earlier version, which still has those lines, is fixed on its next start,
//! once: after that there is nothing left to recognise.

use super::{Node, Stopped};
use crate::error::{Error, Result};

/// Lets any role with a password in over the local socket (the TCP line is `conf::PG_HBA_ALL_MD5`).
pub const LOCAL_ALL_MD5: &str = "local\tall\t\tall\t\t\t\t\tmd5";

/// The fields of initdb's trust-everything lines.
const INITDB_TRUST: [&[&str]; 6] = [
    &["local", "all", "all", "trust"],
    &["host", "all", "all", "127.0.0.1/32", "trust"],
    &["host", "all", "all", "::1/128", "trust"],
    &["local", "replication", "all", "trust"],
    &["host", "replication", "all", "127.0.0.1/32", "trust"],
    &["host", "replication", "all", "::1/128", "trust"],
];

/// Rewrites `text`: initdb's trust lines for every role become trust lines for `superuser`.
/// Returns the new text and how many lines changed.
pub fn trust_only(text: &str, superuser: &str) -> Result<(String, usize)> {
    if superuser.is_empty() || superuser.contains(['"', '\n', '\r', '\0']) {
        return Err(Error::Usage(format!(
            "-C/--connstr: user name {superuser:?} cannot be written into pg_hba.conf (empty, or a quote or line break in it)"
        )));
    }
    let mut changed = 0;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        // Compared field by field without collecting them: the file is read on every start.
        let initdb_line = INITDB_TRUST.iter().find(|pattern| body.split_whitespace().eq(pattern.iter().copied()));
        if let Some(pattern) = initdb_line {
            // Quoted, so that a name like `all` or `+group` means just that role.
            let quoted = format!("\"{superuser}\"");
            let fields: Vec<&str> =
                pattern.iter().enumerate().map(|(i, f)| if i == 2 { quoted.as_str() } else { f }).collect();
            out.push_str(&fields.join("\t"));
            out.push_str(&line[body.len()..]);
            changed += 1;
        } else {
            out.push_str(line);
        }
    }
    Ok((out, changed))
}

/// Appends `line` to `text` unless some line already equals it (a line break first when the
/// text does not end with one). Returns whether it was added.
fn ensure_line(text: &mut String, line: &str) -> bool {
    if text.lines().any(|l| l == line) {
        return false;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    true
}

/// What a start makes of `pg_hba.conf`'s `text`: in local mode (`superuser` given) initdb's
/// trust lines name the superuser ([`trust_only`]) and roles with passwords may use the
/// socket ([`LOCAL_ALL_MD5`]); in both modes they may connect over TCP
/// ([`conf::PG_HBA_ALL_MD5`](super::conf::PG_HBA_ALL_MD5)). Returns the new text and how many
/// trust lines were rewritten.
pub fn render(text: &str, superuser: Option<&str>) -> Result<(String, usize)> {
    let (mut out, changed) = match superuser {
        Some(su) => trust_only(text, su)?,
        None => (text.to_string(), 0),
    };
    if superuser.is_some() {
        ensure_line(&mut out, LOCAL_ALL_MD5);
    }
    ensure_line(&mut out, super::conf::PG_HBA_ALL_MD5);
    Ok((out, changed))
}

/// Brings `PGDATA/pg_hba.conf` to what [`render`] makes of it: one read, and one write (whole,
/// durable, atomic) only when something changed, which after the first start is never. The
/// file is durable because lines a user added are in it and cannot be re-derived. `local`:
/// local mode, where only the `--connstr` superuser is trusted. Returns how many trust lines
/// were rewritten. Postgres must not run (`Stopped`): it would not see the change before a
/// reload anyway.
pub fn prepare(_proof: &Stopped, node: &Node, local: bool) -> Result<usize> {
    let superuser = if local { Some(super::sql::connstr_user(&node.connstr)?) } else { None };
    let path = node.pgdata.join("pg_hba.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // initdb always writes one (a basebackup carries one); without it there is nothing to
        // restrict, and the lines below make the file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("cannot read", &path, e)),
    };
    let (fixed, changed) = render(&text, superuser.as_deref())?;
    if fixed != text {
        super::conf::write_atomically(&path, fixed.as_bytes())?;
    }
    if let (true, Some(su)) = (changed > 0, &superuser) {
        log::info!(
            "{}: {changed} trust line(s) for every role now trust only {su:?}; other roles log in with their password",
            path.display()
        );
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITDB: &str = "# TYPE  DATABASE        USER            ADDRESS                 METHOD\n\
        local   all             all                                     trust\n\
        host    all             all             127.0.0.1/32            trust\n\
        host    all             all             ::1/128                 trust\n\
        local   replication     all                                     trust\n\
        host    replication     all             127.0.0.1/32            trust\n\
        host    replication     all             ::1/128                 trust\n\
        host    sameuser        all             10.0.0.0/8              trust\n\
        # local all all trust\n\
        host\tall\t\tall\t\tall\t\tmd5";

    #[test]
    fn initdb_lines_name_the_superuser_and_nothing_else_changes() {
        let (text, n) = trust_only(INITDB, "cloud_admin").unwrap();
        assert_eq!(n, 6);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "local\tall\t\"cloud_admin\"\ttrust");
        assert_eq!(lines[3], "host\tall\t\"cloud_admin\"\t::1/128\ttrust");
        assert_eq!(lines[6], "host\treplication\t\"cloud_admin\"\t::1/128\ttrust");
        // A user's own line, a comment and the md5 line are untouched, byte for byte.
        assert_eq!(&lines[7..], &INITDB.lines().collect::<Vec<_>>()[7..]);
        assert!(!text.ends_with('\n'), "the file's own ending is kept");
        // Once fixed, there is nothing left to fix.
        assert_eq!(trust_only(&text, "cloud_admin").unwrap(), (text.clone(), 0));
    }

    #[test]
    fn a_name_that_cannot_be_quoted_is_refused() {
        assert!(trust_only(INITDB, "a\"b").is_err());
        assert!(trust_only(INITDB, "").is_err());
    }

    /// The same bytes the three separate steps (trust lines rewritten, then the local and the
    /// host md5 lines each appended unless present) made, from one read.
    #[test]
    fn render_is_the_former_three_steps_in_one() {
        let (local, n) = render(INITDB, Some("cloud_admin")).unwrap();
        assert_eq!(n, 6);
        let (trusted, _) = trust_only(INITDB, "cloud_admin").unwrap();
        // INITDB ends without a line break and already has the host md5 line.
        assert_eq!(local, format!("{trusted}\n{LOCAL_ALL_MD5}\n"));
        assert_eq!(render(&local, Some("cloud_admin")).unwrap(), (local.clone(), 0), "a second start changes nothing");

        let pageserver = render("local all all trust\n", None).unwrap();
        assert_eq!(pageserver, (format!("local all all trust\n{}\n", crate::postgres::conf::PG_HBA_ALL_MD5), 0));
        assert_eq!(render("", None).unwrap().0, format!("{}\n", crate::postgres::conf::PG_HBA_ALL_MD5));
    }
}
