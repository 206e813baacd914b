//! The catalog as Postgres has it (a snapshot read once per apply) and the plan of the
//! cluster-wide phases: pure functions from (spec, snapshot) to statements, so that the
//! same spec applied twice plans nothing.
//!
//! Every statement is built here from [`crate::escape`] helpers; names are never spliced raw, and no
//! `DO` block is used, so a name can never meet a dollar quote.

use crate::escape::{quote_ident, quote_ident_list, quote_literal, sql_option};
use crate::spec::{ComputeSpec, Database, GenericOption, Role};
use std::collections::{HashMap, HashSet};

/// The default privileged role, the one every spec role is a member of (reference 4.8); the
/// name comes from `--privileged-role-name`.
pub const NEON_SUPERUSER: &str = "neon_superuser";

/// One SQL statement and what to call it in logs and errors (never the password).
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub sql: String,
    pub what: String,
}

impl Stmt {
    fn new(sql: String) -> Stmt {
        let what = sql.clone();
        Stmt { sql, what }
    }
    fn secret(sql: String, what: String) -> Stmt {
        Stmt { sql, what }
    }
}

/// A `pg_authid` row: what the apply compares against the spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoleRow {
    pub password: Option<String>,
    pub login: bool,
    pub superuser: bool,
    pub inherit: bool,
    pub createrole: bool,
    pub createdb: bool,
    pub replication: bool,
    pub bypassrls: bool,
    pub connlimit: i32,
    /// The privileged role is a direct member of this role (for the predefined roles it is
    /// granted by major, see [`super::by_version::privileged_role_memberships`]).
    pub granted_to_privileged: bool,
}

/// A `pg_database` row.
#[derive(Debug, Clone, PartialEq)]
pub struct DbRow {
    pub owner: String,
    pub restrict_conn: bool,
    pub invalid: bool,
    pub is_template: bool,
    /// None for a database this apply creates.
    pub oid: Option<u32>,
    pub connlimit: i32,
}

/// The mutable context of one apply: phases update it as they plan, as Neon's
/// `MutableApplyContext` does.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub roles: HashMap<String, RoleRow>,
    pub dbs: HashMap<String, DbRow>,
}

pub const ROLES_QUERY: &str = "SELECT a.rolname::text, a.rolpassword, a.rolcanlogin, a.rolsuper, a.rolinherit, \
     a.rolcreaterole, a.rolcreatedb, a.rolreplication, a.rolbypassrls, a.rolconnlimit, \
     EXISTS (SELECT FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_authid s ON s.oid = m.member \
             WHERE m.roleid = a.oid AND s.rolname = $1::text) \
     FROM pg_catalog.pg_authid a";
pub const DBS_QUERY: &str = "SELECT datname::text, pg_catalog.pg_get_userbyid(datdba)::text, NOT datallowconn, \
     datconnlimit = -2, datistemplate, oid, datconnlimit FROM pg_catalog.pg_database";

impl Snapshot {
    /// `privileged`: the privileged role, whose memberships the role rows report.
    pub fn load(client: &mut postgres::Client, privileged: &str) -> Result<Snapshot, postgres::Error> {
        let mut snap = Snapshot::default();
        for r in client.query(ROLES_QUERY, &[&privileged])? {
            let row = RoleRow {
                password: r.get(1),
                login: r.get(2),
                superuser: r.get(3),
                inherit: r.get(4),
                createrole: r.get(5),
                createdb: r.get(6),
                replication: r.get(7),
                bypassrls: r.get(8),
                connlimit: r.get(9),
                granted_to_privileged: r.get(10),
            };
            snap.roles.insert(r.get(0), row);
        }
        for r in client.query(DBS_QUERY, &[])? {
            let row = DbRow {
                owner: r.get(1),
                restrict_conn: r.get(2),
                invalid: r.get(3),
                is_template: r.get(4),
                oid: Some(r.get(5)),
                connlimit: r.get(6),
            };
            snap.dbs.insert(r.get(0), row);
        }
        Ok(snap)
    }
}

/// The privileged role (`neon_superuser` by default), created once with the memberships Neon
/// gives it (reference 4.8 phase 1).
pub fn create_superuser(spec: &ComputeSpec, privileged: &str, snap: &mut Snapshot) -> Vec<Stmt> {
    if snap.roles.contains_key(privileged) {
        return Vec::new();
    }
    let role = quote_ident(privileged);
    let mut out = vec![Stmt::new(format!(
        "CREATE ROLE {role} CREATEDB CREATEROLE NOLOGIN REPLICATION BYPASSRLS \
         IN ROLE pg_read_all_data, pg_write_all_data"
    ))];
    snap.roles.insert(
        privileged.into(),
        RoleRow { createdb: true, createrole: true, replication: true, bypassrls: true, ..RoleRow::default() },
    );
    let existing: Vec<&str> = super::privileged::managed(spec, privileged)
        .map(|r| r.name.as_str())
        .filter(|n| snap.roles.contains_key(*n))
        .collect();
    if !existing.is_empty() {
        out.push(Stmt::new(format!("GRANT {role} TO {}", quote_ident_list(existing.iter().copied()))));
        for name in existing {
            out.push(Stmt::new(format!("ALTER ROLE {} CREATEROLE CREATEDB", quote_ident(name))));
            if let Some(r) = snap.roles.get_mut(name) {
                r.createrole = true;
                r.createdb = true;
            }
        }
    }
    let dbs: Vec<&str> =
        spec.cluster.databases.iter().map(|d| d.name.as_str()).filter(|n| snap.dbs.contains_key(*n)).collect();
    if !dbs.is_empty() {
        out.push(Stmt::new(format!(
            "GRANT ALL PRIVILEGES ON DATABASE {} TO {role}",
            quote_ident_list(dbs.iter().copied())
        )));
    }
    out
}

/// Databases a crashed `DROP DATABASE` left behind (`datconnlimit = -2`).
pub fn drop_invalid_databases(snap: &mut Snapshot) -> Vec<Stmt> {
    let mut names: Vec<String> = snap.dbs.iter().filter(|(_, d)| d.invalid).map(|(n, _)| n.clone()).collect();
    names.sort();
    for n in &names {
        snap.dbs.remove(n);
    }
    names.into_iter().map(|n| Stmt::new(format!("DROP DATABASE IF EXISTS {}", quote_ident(&n)))).collect()
}

/// `rename_role` delta operations: only when the old role exists and the new one does not,
/// so a rename already done is a no-op (Neon panics there).
pub fn rename_roles(spec: &ComputeSpec, snap: &mut Snapshot) -> Vec<Stmt> {
    let mut out = Vec::new();
    for op in spec.delta_operations.iter().flatten().filter(|op| op.action == "rename_role") {
        let new = op.new_name.as_deref().expect("validation requires new_name for rename_role");
        if !snap.roles.contains_key(&op.name) {
            continue;
        }
        if snap.roles.contains_key(new) {
            log::warn!("rename_role {:?} -> {:?}: both roles exist; leaving them as they are", op.name, new);
            continue;
        }
        let mut row = snap.roles.remove(&op.name).expect("checked above");
        // Postgres clears an md5 password on rename (its salt is the name).
        if row.password.as_deref().is_some_and(|p| p.starts_with("md5")) {
            row.password = None;
        }
        snap.roles.insert(new.to_string(), row);
        out.push(Stmt::new(format!("ALTER ROLE {} RENAME TO {}", quote_ident(&op.name), quote_ident(new))));
    }
    out
}

/// The password as `pg_authid` stores it: `md5` + lowercase hex, or the SCRAM verifier.
pub fn stored_password(spec_password: &str) -> String {
    if spec_password.starts_with("SCRAM-SHA-256$") {
        spec_password.to_string()
    } else {
        // Postgres recognises an md5 hash only in lowercase; an uppercase one would be taken
        // for a clear-text password and hashed again.
        format!("md5{}", spec_password.to_ascii_lowercase())
    }
}

/// Option keywords that name a `pg_authid` column, for comparing a spec role with its row.
fn option_family(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    let base = upper.strip_prefix("NO").unwrap_or(&upper);
    Some(match base {
        "SUPERUSER" => "SUPERUSER",
        "CREATEDB" => "CREATEDB",
        "CREATEROLE" => "CREATEROLE",
        "INHERIT" => "INHERIT",
        "LOGIN" => "LOGIN",
        "REPLICATION" => "REPLICATION",
        "BYPASSRLS" => "BYPASSRLS",
        _ if upper == "CONNECTION LIMIT" => "CONNECTION LIMIT",
        _ => return None,
    })
}

/// True when every option the spec gives (that maps to a column) matches the row.
fn options_match(options: &[GenericOption], row: &RoleRow) -> bool {
    options.iter().all(|o| {
        let upper = o.name.to_ascii_uppercase();
        let want = !upper.starts_with("NO");
        match option_family(&o.name) {
            Some("SUPERUSER") => row.superuser == want,
            Some("CREATEDB") => row.createdb == want,
            Some("CREATEROLE") => row.createrole == want,
            Some("INHERIT") => row.inherit == want,
            Some("LOGIN") => row.login == want,
            Some("REPLICATION") => row.replication == want,
            Some("BYPASSRLS") => row.bypassrls == want,
            Some("CONNECTION LIMIT") => o.value.as_deref().and_then(|v| v.parse().ok()) == Some(row.connlimit),
            // An option with no column to compare (VALID UNTIL, …) is applied on create and
            // whenever something else changes.
            _ => true,
        }
    })
}

/// `<options> [LOGIN] PASSWORD …`: LOGIN is added unless the options say LOGIN or NOLOGIN
/// (both would be "conflicting or redundant options").
fn role_options(role: &Role) -> (String, String) {
    let opts = role.options.as_deref().unwrap_or_default();
    let mut parts: Vec<String> = opts.iter().map(|o| sql_option(&o.name, o.value.as_deref(), o.is_string())).collect();
    if !opts.iter().any(|o| option_family(&o.name) == Some("LOGIN")) {
        parts.push("LOGIN".into());
    }
    let shown = parts.join(" ");
    let password = match &role.encrypted_password {
        Some(p) => format!("PASSWORD {}", quote_literal(&stored_password(p))),
        None => "PASSWORD NULL".into(),
    };
    parts.push(password);
    (parts.join(" "), shown)
}

/// Creates missing spec roles; alters existing ones whose password, login or option columns
/// differ. The md5 hash is compared with its `md5` prefix, so an unchanged role is left alone.
/// `me` is compute_ctl's own superuser: listed without a password, its password is left as
/// it is (see [`super::privileged`]).
pub fn create_and_alter_roles(
    spec: &ComputeSpec,
    privileged: &str,
    jwks_roles: &HashSet<String>,
    me: &str,
    snap: &mut Snapshot,
) -> Vec<Stmt> {
    let privileged_role = privileged;
    let privileged = quote_ident(privileged);
    let mut out = Vec::new();
    for role in super::privileged::managed(spec, privileged_role) {
        let keep_password = role.name == me && role.encrypted_password.is_none();
        let want_password = match &role.encrypted_password {
            Some(p) => Some(stored_password(p)),
            None => snap.roles.get(&role.name).filter(|_| keep_password).and_then(|r| r.password.clone()),
        };
        let opts = role.options.as_deref().unwrap_or_default();
        let wants_login = !opts.iter().any(|o| o.name.eq_ignore_ascii_case("NOLOGIN"));
        let (options, shown) = role_options(role);
        let options = if keep_password { shown.clone() } else { options };
        let name = quote_ident(&role.name);
        match snap.roles.get(&role.name) {
            Some(row) => {
                if row.password == want_password && row.login == wants_login && options_match(opts, row) {
                    continue;
                }
                out.push(Stmt::secret(
                    format!("ALTER ROLE {name} {options}"),
                    format!("ALTER ROLE {name} {shown} PASSWORD <redacted>"),
                ));
            }
            None if jwks_roles.contains(&role.name) => out.push(Stmt::secret(
                format!("CREATE ROLE {name} {options}"),
                format!("CREATE ROLE {name} {shown} PASSWORD <redacted>"),
            )),
            None => {
                // Neon's defaults, minus any the spec's options set themselves (both would be
                // "conflicting or redundant options").
                let defaults: Vec<&str> = ["INHERIT", "CREATEROLE", "CREATEDB", "BYPASSRLS", "REPLICATION"]
                    .into_iter()
                    .filter(|d| !opts.iter().any(|o| option_family(&o.name) == Some(d)))
                    .collect();
                let defaults = defaults.join(" ");
                out.push(Stmt::secret(
                    format!("CREATE ROLE {name} {defaults} IN ROLE {privileged} {options}"),
                    format!("CREATE ROLE {name} {defaults} IN ROLE {privileged} {shown} PASSWORD <redacted>"),
                ));
            }
        }
        let mut row = snap.roles.get(&role.name).cloned().unwrap_or(RoleRow { inherit: true, ..RoleRow::default() });
        row.password = want_password;
        row.login = wants_login;
        snap.roles.insert(role.name.clone(), row);
    }
    out
}

/// A database rename or delete, in the order the delta operations give.
#[derive(Debug, Clone, PartialEq)]
pub enum DbDelta {
    /// Drop the subscriptions of `name` first (connecting to it), then run `stmts`.
    Delete {
        name: String,
        allow_connections_first: bool,
        stmts: Vec<Stmt>,
    },
    Rename(Stmt),
}

pub fn rename_and_delete_databases(spec: &ComputeSpec, snap: &mut Snapshot) -> Vec<DbDelta> {
    let mut out = Vec::new();
    for op in spec.delta_operations.iter().flatten() {
        match op.action.as_str() {
            "delete_db" => {
                let Some(row) = snap.dbs.remove(&op.name) else { continue };
                let name = quote_ident(&op.name);
                let mut stmts = Vec::new();
                if row.is_template {
                    stmts.push(Stmt::new(format!("ALTER DATABASE {name} IS_TEMPLATE false")));
                }
                stmts.push(Stmt::new(format!("DROP DATABASE {name} WITH (FORCE)")));
                out.push(DbDelta::Delete { name: op.name.clone(), allow_connections_first: row.restrict_conn, stmts });
            }
            "rename_db" => {
                let new = op.new_name.as_deref().expect("validation requires new_name for rename_db");
                if !snap.dbs.contains_key(&op.name) || snap.dbs.contains_key(new) {
                    continue;
                }
                let row = snap.dbs.remove(&op.name).expect("checked above");
                snap.dbs.insert(new.to_string(), row);
                out.push(DbDelta::Rename(Stmt::new(format!(
                    "ALTER DATABASE {} RENAME TO {}",
                    quote_ident(&op.name),
                    quote_ident(new)
                ))));
            }
            _ => {}
        }
    }
    out
}

/// Creates missing spec databases (one at a time: `CREATE DATABASE` copies a template that
/// must not be in use) and corrects owners.
pub fn create_and_alter_databases(spec: &ComputeSpec, privileged: &str, snap: &mut Snapshot) -> Vec<Stmt> {
    let privileged = quote_ident(privileged);
    let mut out = Vec::new();
    for db in &spec.cluster.databases {
        let name = quote_ident(&db.name);
        match snap.dbs.get_mut(&db.name) {
            Some(row) => {
                if row.owner != db.owner {
                    out.push(Stmt::new(format!("ALTER DATABASE {name} OWNER TO {}", quote_ident(&db.owner))));
                    row.owner = db.owner.clone();
                }
                let changes = alterable_option_changes(db, row);
                if !changes.is_empty() {
                    out.push(Stmt::new(format!("ALTER DATABASE {name} WITH {}", changes.join(" "))));
                }
            }
            None => {
                out.push(Stmt::new(format!("CREATE DATABASE {name} {}", database_options(db))));
                out.push(Stmt::new(format!("GRANT ALL PRIVILEGES ON DATABASE {name} TO {privileged}")));
                let mut row = DbRow {
                    owner: db.owner.clone(),
                    restrict_conn: false,
                    invalid: false,
                    is_template: false,
                    oid: None,
                    connlimit: -1,
                };
                // What the options just set, so later phases know (a database that refuses
                // connections is not visited).
                alterable_option_changes(db, &mut row);
                snap.dbs.insert(db.name.clone(), row);
            }
        }
    }
    out
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" | "t" => Some(true),
        "false" | "off" | "no" | "0" | "f" => Some(false),
        _ => None,
    }
}

/// The options `ALTER DATABASE … WITH` can change (`CONNECTION LIMIT`, `ALLOW_CONNECTIONS`,
/// `IS_TEMPLATE`) whose spec value differs from `row`; `row` is updated to the spec's values.
/// The others (`TEMPLATE`, `LC_COLLATE`, `ENCODING`, …) only mean something at creation.
fn alterable_option_changes(db: &Database, row: &mut DbRow) -> Vec<String> {
    let mut out = Vec::new();
    for o in db.options.iter().flatten() {
        let Some(v) = o.value.as_deref() else { continue };
        let differs = match o.name.to_ascii_uppercase().as_str() {
            "CONNECTION LIMIT" | "CONNECTION_LIMIT" => match v.trim().parse::<i32>() {
                Ok(n) if n != row.connlimit => {
                    row.connlimit = n;
                    true
                }
                _ => false,
            },
            "ALLOW_CONNECTIONS" => match parse_bool(v) {
                Some(b) if b == row.restrict_conn => {
                    row.restrict_conn = !b;
                    true
                }
                _ => false,
            },
            "IS_TEMPLATE" => match parse_bool(v) {
                Some(b) if b != row.is_template => {
                    row.is_template = b;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if differs {
            out.push(sql_option(&o.name, Some(v), o.is_string()));
        }
    }
    out
}

fn database_options(db: &Database) -> String {
    let mut parts: Vec<String> =
        db.options.iter().flatten().map(|o| sql_option(&o.name, o.value.as_deref(), o.is_string())).collect();
    parts.push(format!("OWNER {}", quote_ident(&db.owner)));
    parts.join(" ")
}

/// `delete_role` operations whose role exists.
pub fn roles_to_delete(spec: &ComputeSpec, snap: &Snapshot) -> Vec<String> {
    spec.delta_operations
        .iter()
        .flatten()
        .filter(|op| op.action == "delete_role" && snap.roles.contains_key(&op.name))
        .map(|op| op.name.clone())
        .collect()
}

pub fn drop_roles(names: &[String], snap: &mut Snapshot) -> Vec<Stmt> {
    names
        .iter()
        .filter(|n| snap.roles.remove(n.as_str()).is_some())
        .map(|n| Stmt::new(format!("DROP ROLE IF EXISTS {}", quote_ident(n))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::apply::test_spec as spec;

    fn sqls(v: &[Stmt]) -> Vec<&str> {
        v.iter().map(|s| s.sql.as_str()).collect()
    }

    #[test]
    fn a_stored_md5_hash_is_not_altered_again() {
        let s = spec(
            r#""cluster":{"roles":[{"name":"a","encrypted_password":"0123456789ABCDEF0123456789ABCDEF"}],"databases":[]}"#,
        );
        let mut snap = Snapshot::default();
        let first = create_and_alter_roles(&s, NEON_SUPERUSER, &HashSet::new(), "cloud_admin", &mut snap);
        assert_eq!(
            sqls(&first),
            ["CREATE ROLE \"a\" INHERIT CREATEROLE CREATEDB BYPASSRLS REPLICATION IN ROLE \"neon_superuser\" LOGIN \
                 PASSWORD 'md50123456789abcdef0123456789abcdef'"]
        );
        assert!(!first[0].what.contains("0123456789"), "the log form hides the hash: {}", first[0].what);
        // What Postgres stores after that statement:
        let row = RoleRow {
            password: Some("md50123456789abcdef0123456789abcdef".into()),
            login: true,
            inherit: true,
            createrole: true,
            createdb: true,
            replication: true,
            bypassrls: true,
            connlimit: -1,
            ..RoleRow::default()
        };
        let mut snap = Snapshot::default();
        snap.roles.insert("a".into(), row);
        assert!(create_and_alter_roles(&s, NEON_SUPERUSER, &HashSet::new(), "cloud_admin", &mut snap).is_empty());
    }

    #[test]
    fn spec_options_replace_conflicting_defaults() {
        let s = spec(
            r#""cluster":{"roles":[{"name":"r","options":[
                {"name":"NOLOGIN","value":null,"vartype":"bool"},
                {"name":"NOCREATEDB","value":null,"vartype":"bool"},
                {"name":"CONNECTION LIMIT","value":"3","vartype":"integer"}]}],"databases":[]}"#,
        );
        let plan = create_and_alter_roles(&s, NEON_SUPERUSER, &HashSet::new(), "cloud_admin", &mut Snapshot::default());
        assert_eq!(
            sqls(&plan),
            [
                "CREATE ROLE \"r\" INHERIT CREATEROLE BYPASSRLS REPLICATION IN ROLE \"neon_superuser\" NOLOGIN NOCREATEDB \
                 CONNECTION LIMIT 3 PASSWORD NULL"
            ]
        );
        let row = RoleRow { connlimit: 3, inherit: true, ..RoleRow::default() };
        let mut snap = Snapshot::default();
        snap.roles.insert("r".into(), row.clone());
        assert!(create_and_alter_roles(&s, NEON_SUPERUSER, &HashSet::new(), "cloud_admin", &mut snap).is_empty());
        snap.roles.insert("r".into(), RoleRow { connlimit: 4, ..row });
        assert_eq!(create_and_alter_roles(&s, NEON_SUPERUSER, &HashSet::new(), "cloud_admin", &mut snap).len(), 1);
    }

    #[test]
    fn renames_happen_once_and_never_over_an_existing_name() {
        let s = spec(
            r#""cluster":{"roles":[],"databases":[]},"delta_operations":[
                {"action":"rename_role","name":"$x$","new_name":"%I"},
                {"action":"rename_db","name":"a\"b","new_name":"c"}]"#,
        );
        let mut snap = Snapshot::default();
        snap.roles.insert("$x$".into(), RoleRow { password: Some("md5aa".into()), ..RoleRow::default() });
        let db = DbRow {
            owner: "o".into(),
            restrict_conn: false,
            invalid: false,
            is_template: false,
            oid: None,
            connlimit: -1,
        };
        snap.dbs.insert("a\"b".into(), db.clone());
        assert_eq!(sqls(&rename_roles(&s, &mut snap)), ["ALTER ROLE \"$x$\" RENAME TO \"%I\""]);
        assert_eq!(snap.roles["%I"].password, None, "Postgres clears an md5 password on rename");
        assert!(rename_roles(&s, &mut snap).is_empty());
        assert_eq!(
            rename_and_delete_databases(&s, &mut snap),
            [DbDelta::Rename(Stmt::new("ALTER DATABASE \"a\"\"b\" RENAME TO \"c\"".into()))]
        );
        assert!(rename_and_delete_databases(&s, &mut snap).is_empty());
        // Both names taken: left alone.
        snap.roles.insert("$x$".into(), RoleRow::default());
        assert!(rename_roles(&s, &mut snap).is_empty());
    }

    #[test]
    fn deleting_a_template_database_unmarks_it_first() {
        let s = spec(r#""cluster":{"roles":[],"databases":[]},"delta_operations":[{"action":"delete_db","name":"t"}]"#);
        let mut snap = Snapshot::default();
        snap.dbs.insert(
            "t".into(),
            DbRow {
                owner: "o".into(),
                restrict_conn: true,
                invalid: false,
                is_template: true,
                oid: None,
                connlimit: -1,
            },
        );
        let plan = rename_and_delete_databases(&s, &mut snap);
        let DbDelta::Delete { stmts, allow_connections_first, .. } = &plan[0] else { panic!("{plan:?}") };
        assert!(allow_connections_first);
        assert_eq!(sqls(stmts), ["ALTER DATABASE \"t\" IS_TEMPLATE false", "DROP DATABASE \"t\" WITH (FORCE)"]);
        assert!(rename_and_delete_databases(&s, &mut snap).is_empty());
    }

    #[test]
    fn databases_are_created_with_options_and_owner_changes_compare_plain_names() {
        let s = spec(
            r#""cluster":{"roles":[],"databases":[{"name":"d","owner":"we\"ird","options":[
                {"name":"LC_COLLATE","value":"C","vartype":"string"},
                {"name":"TEMPLATE","value":"template0","vartype":"enum"}]}]}"#,
        );
        let mut snap = Snapshot::default();
        assert_eq!(
            sqls(&create_and_alter_databases(&s, NEON_SUPERUSER, &mut snap)),
            [
                "CREATE DATABASE \"d\" LC_COLLATE 'C' TEMPLATE template0 OWNER \"we\"\"ird\"",
                "GRANT ALL PRIVILEGES ON DATABASE \"d\" TO \"neon_superuser\""
            ]
        );
        // pg_get_userbyid gives the plain name, so an owner that needs quoting compares equal.
        assert!(create_and_alter_databases(&s, NEON_SUPERUSER, &mut snap).is_empty());
        // Options that ALTER DATABASE can change are compared with the row.
        let s2 = spec(
            r#""cluster":{"roles":[],"databases":[{"name":"d","owner":"we\"ird","options":[
                {"name":"CONNECTION LIMIT","value":"7","vartype":"integer"},
                {"name":"IS_TEMPLATE","value":"false","vartype":"bool"}]}]}"#,
        );
        assert_eq!(
            sqls(&create_and_alter_databases(&s2, NEON_SUPERUSER, &mut snap)),
            ["ALTER DATABASE \"d\" WITH CONNECTION LIMIT 7"]
        );
        assert!(create_and_alter_databases(&s2, NEON_SUPERUSER, &mut snap).is_empty());
        snap.dbs.get_mut("d").unwrap().owner = "other".into();
        assert_eq!(
            sqls(&create_and_alter_databases(&s, NEON_SUPERUSER, &mut snap)),
            ["ALTER DATABASE \"d\" OWNER TO \"we\"\"ird\""]
        );
    }
}
