//! The two roles a spec must never weaken: compute_ctl's own superuser (the `--connstr`
//! user, e.g. `cloud_admin`) and the privileged role (`--privileged-role-name`, by default
//! `neon_superuser`), which every spec role is a member of.
//!
//! Neon's own configurations list the superuser with a password, so it may appear in
//! `cluster.roles`: its password is applied, and options that keep it a superuser that can
//! log in are applied too. An option that would take away its superuser or login, or a delta
//! operation that would rename or delete either role, is refused before anything changes:
//! with it, the next start could not connect or not apply the catalog. A spec entry named
//! like the privileged role is ignored (with a warning): the apply owns that role.

use crate::error::{Error, Result};
use crate::spec::{ComputeSpec, Role};

/// Refuses a spec that would take the superuser's powers away or rename or delete one of the
/// privileged roles.
pub fn check(spec: &ComputeSpec, superuser: &str, privileged: &str) -> Result<()> {
    for (i, role) in spec.cluster.roles.iter().enumerate() {
        if role.name != superuser {
            continue;
        }
        for o in role.options.iter().flatten() {
            let taken = match o.name.to_ascii_uppercase().as_str() {
                "NOSUPERUSER" => "superuser",
                "NOLOGIN" => "login",
                _ => continue,
            };
            return Err(Error::invalid(
                format!("cluster.roles[{i}].options"),
                format!(
                    "{} would take {taken} away from {superuser:?}, compute_ctl's own superuser (the --connstr \
                     user); remove the option",
                    o.name
                ),
            ));
        }
    }
    for (i, op) in spec.delta_operations.iter().flatten().enumerate() {
        if !matches!(op.action.as_str(), "delete_role" | "rename_role") {
            continue;
        }
        let names = std::iter::once(op.name.as_str()).chain(op.new_name.as_deref());
        for name in names {
            if name == superuser || name == privileged {
                return Err(Error::invalid(
                    format!("delta_operations[{i}]"),
                    format!("{} of {name:?} refused: compute_ctl needs that role as it is", op.action),
                ));
            }
        }
    }
    Ok(())
}

/// The spec roles the apply creates and alters: all but the privileged role (warned about).
pub fn managed<'a>(spec: &'a ComputeSpec, privileged: &'a str) -> impl Iterator<Item = &'a Role> {
    spec.cluster.roles.iter().filter(move |r| {
        let ours = r.name == privileged;
        if ours {
            log::warn!("cluster.roles: {privileged:?} is managed by compute_ctl; the spec entry is ignored");
        }
        !ours
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mut json: serde_json::Value) -> ComputeSpec {
        json["cluster"]["databases"] = serde_json::json!([]);
        json["format_version"] = serde_json::json!(1.0);
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn superuser_options_that_take_its_powers_are_refused() {
        for opt in ["NOSUPERUSER", "nologin"] {
            let s = spec(serde_json::json!({"cluster": {"roles": [
                {"name": "cloud_admin", "options": [{"name": opt, "vartype": "bool"}]}
            ]}}));
            let err = check(&s, "cloud_admin", "neon_superuser").unwrap_err().to_string();
            assert!(err.contains("cluster.roles[0].options") && err.contains("cloud_admin"), "{err}");
        }
        let ok = spec(serde_json::json!({"cluster": {"roles": [
            {"name": "cloud_admin", "encrypted_password": "b093c0d3b281ba6da1eacc608620abd8"},
            {"name": "alice", "options": [{"name": "NOLOGIN", "vartype": "bool"}]}
        ]}}));
        check(&ok, "cloud_admin", "neon_superuser").unwrap();
    }

    #[test]
    fn renaming_or_deleting_a_privileged_role_is_refused() {
        for (action, name, new) in [
            ("delete_role", "cloud_admin", None),
            ("delete_role", "neon_superuser", None),
            ("rename_role", "alice", Some("neon_superuser")),
        ] {
            let s = spec(serde_json::json!({"cluster": {"roles": []},
                "delta_operations": [{"action": action, "name": name, "new_name": new}]}));
            assert!(check(&s, "cloud_admin", "neon_superuser").is_err(), "{action} {name}");
        }
    }
}
