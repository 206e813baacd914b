//! The server's PostgreSQL version, read once per set of connections (one catalog apply), and
//! the facts that differ between majors. Every statement that depends on the major is chosen
//! where it is built, with a comment naming the version and the reason; this module only says
//! which major is running and which of the version-bound names exist there.

/// `server_version_num` of the server (e.g. 150018, 160002, 180006).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgVersion(pub u32);

impl PgVersion {
    /// From the text of `server_version_num`. The server always sends digits; anything else
    /// would be a server bug, read as the oldest major compute_ctl knows (14), whose
    /// statements are the conservative ones.
    pub fn parse(server_version_num: &str) -> PgVersion {
        PgVersion(server_version_num.trim().parse().unwrap_or(140000))
    }

    /// The major version: 15, 16, 18, …
    pub fn major(self) -> u32 {
        self.0 / 10000
    }

    /// True on PostgreSQL `major` and later.
    pub fn at_least(self, major: u32) -> bool {
        self.major() >= major
    }

    /// Predefined roles the privileged role is made a member of beyond those it is created
    /// in (`pg_read_all_data`, `pg_write_all_data`, both from 14), by the major that brought
    /// each one.
    pub fn privileged_role_extra_memberships(self) -> Vec<&'static str> {
        let mut out = Vec::new();
        // 16: CREATE SUBSCRIPTION is open to non-superusers that are members of the new
        // predefined role pg_create_subscription (15 requires a superuser). Neon grants it to
        // the privileged role (its migration 0003); without it the spec roles cannot
        // subscribe at all.
        if self.at_least(16) {
            out.push("pg_create_subscription");
        }
        // 17: the MAINTAIN privilege and the predefined role pg_maintain (VACUUM, ANALYZE,
        // CLUSTER, REFRESH MATERIALIZED VIEW, REINDEX, LOCK TABLE on every relation). The
        // privileged role already reads and writes all data; before 17 its members could
        // VACUUM or ANALYZE only what they own.
        if self.at_least(17) {
            out.push("pg_maintain");
        }
        out
    }

    /// The major that introduced a `CREATE DATABASE` option, or a value of one, that older
    /// servers reject with a bare syntax error; None when every supported major takes it.
    pub fn create_database_option_needs(name: &str, value: Option<&str>) -> Option<u32> {
        match name.to_ascii_uppercase().as_str() {
            // 16: ICU tailoring rules.
            "ICU_RULES" => Some(16),
            // 17: the builtin locale provider and its locale option.
            "BUILTIN_LOCALE" => Some(17),
            "LOCALE_PROVIDER" if value.is_some_and(|v| v.trim().trim_matches('\'').eq_ignore_ascii_case("builtin")) => {
                Some(17)
            }
            _ => None,
        }
    }

    /// True when md5 password verifiers are deprecated (18: setting one draws a WARNING, and
    /// a later major may remove them). They still work there.
    pub fn md5_deprecated(self) -> bool {
        self.at_least(18)
    }
}

impl std::fmt::Display for PgVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

#[cfg(test)]
mod tests {
    use super::PgVersion;

    #[test]
    fn memberships_and_options_follow_the_major() {
        assert!(PgVersion(150018).privileged_role_extra_memberships().is_empty());
        assert_eq!(PgVersion(160002).privileged_role_extra_memberships(), ["pg_create_subscription"]);
        assert_eq!(PgVersion(180006).privileged_role_extra_memberships(), ["pg_create_subscription", "pg_maintain"]);
        assert_eq!(PgVersion::create_database_option_needs("icu_rules", Some("&a < b")), Some(16));
        assert_eq!(PgVersion::create_database_option_needs("LOCALE_PROVIDER", Some("builtin")), Some(17));
        assert_eq!(PgVersion::create_database_option_needs("LOCALE_PROVIDER", Some("libc")), None);
        assert_eq!(PgVersion::create_database_option_needs("TEMPLATE", Some("template0")), None);
        assert!(!PgVersion(170000).md5_deprecated() && PgVersion(180000).md5_deprecated());
        assert_eq!(PgVersion(160002).to_string(), "PostgreSQL 16");
        assert_eq!(PgVersion::parse("180006").major(), 18);
        assert_eq!(PgVersion::parse("x").major(), 14);
    }
}
