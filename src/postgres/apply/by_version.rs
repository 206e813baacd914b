//! The parts of the catalog apply that differ between PostgreSQL majors. The major comes from
//! `server_version_num`, read once per apply with the rest of the system state
//! ([`PgVersion`]); each branch names the version and the reason. The README's "PostgreSQL
//! versions" table lists every known difference.

use super::catalog::{Snapshot, Stmt};
use super::per_db::Exec;
use crate::error::{Error, Result};
use crate::escape::quote_ident;
use crate::postgres::version::PgVersion;
use crate::spec::ComputeSpec;

/// The predefined roles `neon_superuser` gets by major (16: `pg_create_subscription`, 17:
/// `pg_maintain`; see [`PgVersion::privileged_role_extra_memberships`]) that it is not a
/// member of yet: granted whether the role was just created or came from an older major
/// (after `pg_upgrade`), and never twice (the role query reads the memberships back).
pub fn privileged_role_memberships(version: PgVersion, privileged: &str, snap: &mut Snapshot) -> Vec<Stmt> {
    let missing: Vec<&str> = version
        .privileged_role_extra_memberships()
        .into_iter()
        .filter(|r| snap.roles.get(*r).is_some_and(|row| !row.granted_to_privileged))
        .collect();
    if missing.is_empty() {
        return Vec::new();
    }
    for r in &missing {
        if let Some(row) = snap.roles.get_mut(*r) {
            row.granted_to_privileged = true;
        }
    }
    let sql = format!("GRANT {} TO {}", missing.join(", "), quote_ident(privileged));
    vec![Stmt { what: sql.clone(), sql }]
}

/// Refuses, before any DDL, a database the apply would create with an option (or option
/// value) the running major does not know (16: `ICU_RULES`; 17: `BUILTIN_LOCALE`,
/// `LOCALE_PROVIDER builtin`): the error names the database, the option and both majors,
/// where Postgres would only say "syntax error" or "option not recognized". Databases that
/// exist, or that a `rename_db` will produce, are not created and not checked.
pub fn check_database_options(spec: &ComputeSpec, snap: &Snapshot, version: PgVersion) -> Result<()> {
    let renamed_to: Vec<&str> = spec
        .delta_operations
        .iter()
        .flatten()
        .filter(|op| op.action == "rename_db")
        .filter_map(|op| op.new_name.as_deref())
        .collect();
    let created = spec
        .cluster
        .databases
        .iter()
        .filter(|d| !snap.dbs.contains_key(&d.name) && !renamed_to.contains(&d.name.as_str()));
    for db in created {
        for o in db.options.iter().flatten() {
            match PgVersion::create_database_option_needs(&o.name, o.value.as_deref()) {
                Some(major) if !version.at_least(major) => {
                    return Err(Error::invalid(
                        format!("cluster.databases[{:?}].options", db.name),
                        format!(
                            "CREATE DATABASE option {} {} needs PostgreSQL {major} or later; this server runs {version}",
                            o.name,
                            o.value.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// 18+ only: md5 verifiers are deprecated there (setting one draws a WARNING from the
/// server; a later major may remove them). They still work, so the apply sets them as on
/// every major and says so once per apply, naming the roles.
pub fn warn_md5(spec: &ComputeSpec, version: PgVersion) {
    if !version.md5_deprecated() {
        return;
    }
    let md5: Vec<&str> = spec
        .cluster
        .roles
        .iter()
        .filter(|r| r.encrypted_password.as_deref().is_some_and(|p| !p.starts_with("SCRAM-SHA-256$")))
        .map(|r| r.name.as_str())
        .collect();
    if !md5.is_empty() {
        log::warn!(
            "{version}: md5 password verifiers are deprecated; roles {md5:?} still get theirs \
             (give them SCRAM-SHA-256 verifiers)"
        );
    }
}

/// The roles a role about to be dropped holds the ADMIN OPTION on, that `neon_superuser`
/// can take over: not itself, not a superuser, not a member of it (a membership loop), not
/// dropped too, not already administered by it.
const ADMIN_HELD_BY_DELETED: &str = "
SELECT DISTINCT r.rolname::text FROM pg_catalog.pg_auth_members m
  JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
 WHERE m.admin_option
   AND m.member IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY($1))
   AND r.rolname <> ALL($1) AND r.rolname <> $2::text AND NOT r.rolsuper
   AND NOT pg_catalog.pg_has_role(r.oid, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $2::text), 'MEMBER')
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_auth_members p JOIN pg_catalog.pg_roles s ON s.oid = p.member
                    WHERE p.roleid = r.oid AND s.rolname = $2::text AND p.admin_option)
 ORDER BY 1";

/// 16+ only: from 16 a `CREATEROLE` role may alter, grant and drop only the roles it holds
/// the ADMIN OPTION on, which it gets for the roles it creates; before 16 `CREATEROLE` alone
/// let every spec role manage every non-superuser role. When `delete_role` drops a role, the
/// roles it created would be left with nobody but the superuser able to manage them, so
/// `neon_superuser` first takes over its ADMIN OPTION (without INHERIT or SET: it gains none
/// of their privileges), and the spec roles, its members, manage them as on 15. The
/// `WITH ADMIN TRUE, INHERIT FALSE, SET FALSE` grant syntax is itself 16+.
pub fn hand_over_admin_of_deleted_roles(
    sys: &mut Exec<'_>,
    version: PgVersion,
    privileged: &str,
    deleting: &[String],
) -> Result<()> {
    for stmt in admin_to_take_over(sys.client, sys.db, version, privileged, deleting)? {
        sys.run("drop_roles", &stmt)?;
    }
    Ok(())
}

/// The grants [`hand_over_admin_of_deleted_roles`] would run now; only reads the catalog
/// (`compute_ctl plan` shows them).
pub fn admin_to_take_over(
    client: &mut postgres::Client,
    db: &str,
    version: PgVersion,
    privileged: &str,
    deleting: &[String],
) -> Result<Vec<Stmt>> {
    if !version.at_least(16) || deleting.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = client
        .query(ADMIN_HELD_BY_DELETED, &[&deleting, &privileged])
        .map_err(|e| Error::sql("drop_roles", db, e))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(names
        .into_iter()
        .map(|name| {
            let sql = format!(
                "GRANT {} TO {} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE",
                quote_ident(&name),
                quote_ident(privileged)
            );
            Stmt { what: sql.clone(), sql }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::apply::catalog::RoleRow;
    use crate::postgres::apply::test_spec as spec;

    #[test]
    fn predefined_roles_of_each_major_are_granted_once() {
        let mut snap = Snapshot::default();
        for r in ["pg_create_subscription", "pg_maintain"] {
            snap.roles.insert(r.into(), RoleRow::default());
        }
        assert!(privileged_role_memberships(PgVersion(150018), "neon_superuser", &mut snap).is_empty());
        let sql = |v: Vec<Stmt>| v.into_iter().map(|s| s.sql).collect::<Vec<_>>();
        assert_eq!(
            sql(privileged_role_memberships(PgVersion(160002), "neon_superuser", &mut snap)),
            ["GRANT pg_create_subscription TO \"neon_superuser\""]
        );
        assert_eq!(
            sql(privileged_role_memberships(PgVersion(180006), "neon_superuser", &mut snap)),
            ["GRANT pg_maintain TO \"neon_superuser\""]
        );
        assert!(privileged_role_memberships(PgVersion(180006), "neon_superuser", &mut snap).is_empty());
    }

    #[test]
    fn a_later_majors_database_option_is_refused_naming_database_option_and_majors() {
        let s = spec(
            r#""cluster":{"roles":[],"databases":[{"name":"d","owner":"o","options":[
                {"name":"ICU_RULES","value":"&a < b","vartype":"string"}]}]}"#,
        );
        let err = check_database_options(&s, &Snapshot::default(), PgVersion(150018)).unwrap_err().to_string();
        assert!(err.contains("\"d\"") && err.contains("ICU_RULES"), "{err}");
        assert!(err.contains("needs PostgreSQL 16 or later; this server runs PostgreSQL 15"), "{err}");
        assert!(check_database_options(&s, &Snapshot::default(), PgVersion(160002)).is_ok());
        // A rename's target is not created, so not checked.
        let r = spec(
            r#""cluster":{"roles":[],"databases":[{"name":"d","owner":"o","options":[
                {"name":"ICU_RULES","value":"&a < b","vartype":"string"}]}]},
                "delta_operations":[{"action":"rename_db","name":"old","new_name":"d"}]"#,
        );
        assert!(check_database_options(&r, &Snapshot::default(), PgVersion(150018)).is_ok());
    }
}
