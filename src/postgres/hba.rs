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
        let fields: Vec<&str> = body.split_whitespace().collect();
        if INITDB_TRUST.contains(&fields.as_slice()) {
            // Quoted, so that a name like `all` or `+group` means just that role.
            let mut f: Vec<String> = fields.iter().map(|s| s.to_string()).collect();
            f[2] = format!("\"{superuser}\"");
            out.push_str(&f.join("\t"));
            out.push_str(&line[body.len()..]);
            changed += 1;
        } else {
            out.push_str(line);
        }
    }
    Ok((out, changed))
}

/// Applies [`trust_only`] to `PGDATA/pg_hba.conf` (written whole, atomically) and makes sure
/// roles with passwords can use the socket. Returns how many trust lines were rewritten.
/// Postgres must not run (`Stopped`): it would not see the change before a reload anyway.
pub fn restrict_local(_proof: &Stopped, node: &Node) -> Result<usize> {
    let superuser = &super::sql::connstr_user(&node.connstr)?;
    let path = node.pgdata.join("pg_hba.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // initdb always writes one; without it there is nothing to restrict, and the line
        // below makes the file.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io("cannot read", &path, e)),
    };
    let (fixed, changed) = trust_only(&text, superuser)?;
    if changed > 0 {
        super::conf::write_atomically(&path, fixed.as_bytes())?;
        log::info!(
            "{}: {changed} trust line(s) for every role now trust only {superuser:?}; other roles log in with their password",
            path.display()
        );
    }
    super::conf::line_in_file(&path, LOCAL_ALL_MD5)?;
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
}
