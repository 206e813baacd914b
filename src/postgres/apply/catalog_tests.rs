//! Unit tests of the catalog statements (kept beside `catalog.rs`, which they test).

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
        ["CREATE ROLE \"r\" INHERIT CREATEROLE BYPASSRLS REPLICATION IN ROLE \"neon_superuser\" NOLOGIN NOCREATEDB \
             CONNECTION LIMIT 3 PASSWORD NULL"]
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
    let db =
        DbRow { owner: "o".into(), restrict_conn: false, invalid: false, is_template: false, oid: None, connlimit: -1 };
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
        DbRow { owner: "o".into(), restrict_conn: true, invalid: false, is_template: true, oid: None, connlimit: -1 },
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
