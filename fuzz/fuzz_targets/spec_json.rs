//! The spec parser and validator on arbitrary bytes.
//!
//! Properties:
//! - parsing never panics, and `ParsedSpec::parse` agrees with deserialize + `validate`;
//! - a rejected spec gets a message that says what is wrong (never empty);
//! - a spec that validated keeps the invariants the rest of the program relies on without
//!   re-checking (names fit in NAMEDATALEN and have no NUL, settings have valid names);
//! - a valid spec, serialized again, parses and validates to the same value;
//! - the same bytes as a `-c` config file never panic, and a valid spec renders
//!   `postgresql.conf` without panicking.
#![no_main]

use compute_ctl::escape::is_conf_name;
use compute_ctl::spec::{ComputeSpec, ParsedSpec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = compute_ctl::spec::ComputeConfig::parse(text, "fuzz");
    let parsed = ParsedSpec::parse(text);
    let Ok(spec) = serde_json::from_str::<ComputeSpec>(text) else {
        let err = parsed.expect_err("parse accepted what serde_json refused");
        assert!(!err.to_string().is_empty());
        return;
    };
    let validated = ParsedSpec::validate(spec.clone());
    assert_eq!(parsed.as_ref().ok(), validated.as_ref().ok(), "parse and validate disagree");
    let valid = match validated {
        Ok(v) => v,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert_eq!(valid.spec(), &spec);
    check_invariants(valid.spec());
    let render = |ssl| compute_ctl::postgres::conf::render(&valid, 3081, false, "neon_superuser", ssl);
    let (plain, tls) = (render(false), render(true));
    for conf in [&plain, &tls] {
        assert!(conf.ends_with("include_if_exists = 'compute_ctl_temp_override.conf'\n"));
    }
    // The spec's own postgresql_conf text may hold anything; the flag adds exactly the ssl lines.
    let ssl_lines =
        |c: &str| c.matches("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n").count();
    assert_eq!(ssl_lines(&tls), ssl_lines(&plain) + 1, "the ssl flag adds the ssl lines once");

    let json = serde_json::to_string(&spec).expect("a valid spec serializes");
    let again = ParsedSpec::parse(&json).unwrap_or_else(|e| panic!("re-serialized spec refused: {e}\n{json}"));
    assert_eq!(again, valid, "re-serialized spec differs\n{json}");
});

fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && !name.contains('\0')
}

fn check_invariants(spec: &ComputeSpec) {
    for r in &spec.cluster.roles {
        assert!(name_ok(&r.name), "role name {:?} passed validation", r.name);
    }
    for d in &spec.cluster.databases {
        assert!(name_ok(&d.name) && name_ok(&d.owner), "database {:?}/{:?} passed validation", d.name, d.owner);
    }
    for s in spec.cluster.settings.iter().flatten() {
        assert!(is_conf_name(&s.name), "setting name {:?} passed validation", s.name);
        let v = s.value.as_deref().expect("a setting with a null value passed validation");
        assert!(!v.contains('\0'), "setting {:?} with a NUL passed validation", s.name);
    }
    assert!(spec.reconfigure_concurrency >= 1);
}
