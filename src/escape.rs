//! Quoting of everything that reaches SQL text or `postgresql.conf`.
//!
//! No SQL is built from a user string without going through this module. The rules:
//! - identifiers are always double-quoted with `"` doubled, so any name (quotes, `$`, `%`,
//!   tabs, emoji) is taken literally;
//! - literals are single-quoted with `'` doubled; when the text has a backslash the `E'…'`
//!   form is used with `\` doubled, so the result means the same whatever
//!   `standard_conforming_strings` says;
//! - `postgresql.conf` values are single-quoted with `'` doubled and `\`, newline, carriage
//!   return and tab written as backslash escapes (which the server's config lexer decodes), so a
//!   value can never end its line or start another one;
//! - dollar-quoted bodies get a tag that does not occur in the body.

/// `"name"` with every `"` doubled.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A string literal that means `text` in any `standard_conforming_strings` setting.
pub fn quote_literal(text: &str) -> String {
    let backslash = text.contains('\\');
    let mut out = String::with_capacity(text.len() + 3);
    if backslash {
        out.push('E');
    }
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A quoted `postgresql.conf` value that the server reads back as exactly `text`.
pub fn conf_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// True when `value` can stand unquoted in `postgresql.conf` as one value token of the
/// server's config lexer: a word (`on`, `logical`) or a number with an optional unit or
/// fraction (`-1`, `128MB`, `0.5`). Anything else is written quoted, which the server accepts
/// for every type: other unquoted forms are traps (`pg_catalog.english` lexes as a qualified
/// name, which the server refuses as a value; `1e5` and `1:2` are two tokens).
pub fn is_bare_conf_token(value: &str) -> bool {
    let word = value.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let unsigned = value.strip_prefix(['+', '-']).unwrap_or(value);
    let digits = unsigned.bytes().take_while(u8::is_ascii_digit).count();
    let rest = &unsigned[digits..];
    let number = digits > 0
        && (rest.bytes().all(|b| b.is_ascii_alphabetic())
            || rest.strip_prefix('.').is_some_and(|f| f.bytes().all(|b| b.is_ascii_digit())));
    word || number
}

/// True for a valid `postgresql.conf` parameter name (`work_mem`, `neon.timeline_id`).
pub fn is_conf_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut bytes = part.bytes();
            matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
        })
}

/// `$tag$body$tag$` with a tag that does not occur in `body`, so the body cannot end the
/// quoting early whatever names it embeds.
pub fn dollar_quote(body: &str) -> String {
    let mut tag = String::from("$cc$");
    let mut n = 0u32;
    // The closing tag is the first occurrence of the tag after the opening one, so it must
    // not occur in the body, nor straddle the body's end.
    while format!("{body}{tag}").find(&tag) != Some(body.len()) {
        n += 1;
        tag = format!("$cc{n}$");
    }
    format!("{tag}{body}{tag}")
}

/// One `CREATE ROLE`/`CREATE DATABASE` option as Neon renders it: `NAME 'escaped'` for
/// vartype `string`, `NAME value` for other vartypes, `NAME` alone for a null value. Spec
/// validation has already limited names to keywords and unquoted values to plain tokens.
pub fn sql_option(name: &str, value: Option<&str>, is_string: bool) -> String {
    match value {
        None => name.to_string(),
        Some(v) if is_string => format!("{name} {}", quote_literal(v)),
        Some(v) => format!("{name} {v}"),
    }
}

/// `"a", "b"`: a list of quoted identifiers for `GRANT … TO`.
pub fn quote_ident_list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(quote_ident).collect::<Vec<_>>().join(", ")
}

/// Reads a quoted conf value back (the subset of the server's lexer that [`conf_value`]
/// produces); used by tests and the fuzzer to check round trips.
pub fn unquote_conf_value(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('\'')?.strip_suffix('\'')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                if chars.next()? != '\'' {
                    return None;
                }
                out.push('\'');
            }
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                other => out.push(other),
            },
            '\n' | '\r' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_double_their_quotes() {
        assert_eq!(quote_ident("name"), "\"name\"");
        assert_eq!(quote_ident("\"name\";\n select 1;"), "\"\"\"name\"\";\n select 1;\"");
    }

    #[test]
    fn literals_match_neon_cases() {
        assert_eq!(quote_literal("test"), "'test'");
        assert_eq!(quote_literal("test'"), "'test'''");
        assert_eq!(quote_literal("test\\'"), "E'test\\\\'''");
        assert_eq!(quote_literal("test\\'\\'"), "E'test\\\\''\\\\'''");
    }

    #[test]
    fn conf_values_never_break_a_line() {
        let nasty = "here's a backslash \\ and a quote ' and a \"\nnew line\r\tend";
        let q = conf_value(nasty);
        assert!(!q.contains('\n') && !q.contains('\r'));
        assert_eq!(unquote_conf_value(&q).as_deref(), Some(nasty));
        assert_eq!(
            conf_value("here's a backslash \\ and a quote ' and a double-quote \" hooray"),
            "'here''s a backslash \\\\ and a quote '' and a double-quote \" hooray'"
        );
    }

    #[test]
    fn dollar_quote_avoids_tags_in_body() {
        assert_eq!(dollar_quote("select 1"), "$cc$select 1$cc$");
        let q = dollar_quote("a $cc$ b");
        assert_eq!(q, "$cc1$a $cc$ b$cc1$");
        let q = dollar_quote("x$cc");
        assert!(q.starts_with("$cc1$"), "{q}");
    }

    #[test]
    fn sql_options_quote_only_strings() {
        assert_eq!(sql_option("LC_COLLATE", Some("C'; DROP"), true), "LC_COLLATE 'C''; DROP'");
        assert_eq!(sql_option("CONNECTION LIMIT", Some("5"), false), "CONNECTION LIMIT 5");
        assert_eq!(sql_option("NOLOGIN", None, false), "NOLOGIN");
        assert_eq!(quote_ident_list(["a\"b", "$$"]), "\"a\"\"b\", \"$$\"");
    }

    #[test]
    fn hostile_names_stay_one_token() {
        // Every name the catalog tests use comes back out of an identifier or literal
        // unchanged when the quoting is undone.
        for name in ["a\"b", "it's", "$$", "$x$", "%I", "';", "tab\there", "🐘 emoji", "\\back"] {
            let q = quote_ident(name);
            let inner = &q[1..q.len() - 1];
            assert_eq!(inner.replace("\"\"", "\""), name);
            assert!(!inner.replace("\"\"", "").contains('"'));
            let l = quote_literal(name);
            let body = l.trim_start_matches('E');
            let body = &body[1..body.len() - 1];
            let back = if l.starts_with('E') { body.replace("\\\\", "\\") } else { body.to_string() };
            assert_eq!(back.replace("''", "'"), name);
        }
    }

    #[test]
    fn bare_conf_values_are_one_token() {
        for v in ["off", "logical", "128MB", "5min", "-1", "+1", "0.5", "1."] {
            assert!(is_bare_conf_token(v), "{v}");
        }
        // Each of these, unquoted, makes PostgreSQL 15 refuse the whole file.
        for v in ["pg_catalog.english", "1e5", "1:2", "-", "+", "1.2.3", "1.5MB", "a b", ""] {
            assert!(!is_bare_conf_token(v), "{v}");
        }
    }

    #[test]
    fn conf_names() {
        assert!(is_conf_name("neon.timeline_id"));
        assert!(is_conf_name("work_mem"));
        assert!(!is_conf_name("a b"));
        assert!(!is_conf_name("x\ny"));
        assert!(!is_conf_name("1abc"));
        assert!(!is_conf_name("a..b"));
    }
}
