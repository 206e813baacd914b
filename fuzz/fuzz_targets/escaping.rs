//! The quoting functions against small readers written here from PostgreSQL's rules (the SQL
//! lexer for identifiers, literals and dollar quotes; the `postgresql.conf` lexer for values),
//! independent of `compute_ctl::escape::unquote_conf_value`.
//!
//! Properties, for any text without NUL (which Postgres refuses anywhere and validation
//! refuses first):
//! - each quoted form is one whole token that reads back as exactly the input;
//! - a literal means the same whether `standard_conforming_strings` is on or off;
//! - a conf value never contains a line break, so it cannot end its line or start another;
//! - a value `is_bare_conf_token` lets stand unquoted is one value token of the conf lexer.
#![no_main]

use compute_ctl::escape::{conf_value, dollar_quote, is_bare_conf_token, quote_ident, quote_literal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if text.contains('\0') {
        return;
    }
    let text = text.as_ref();

    let q = quote_ident(text);
    assert_eq!(read_ident(&q).as_deref(), Some(text), "identifier {q:?}");

    let q = quote_literal(text);
    assert_eq!(read_literal(&q, true).as_deref(), Some(text), "literal {q:?}, standard_conforming_strings on");
    assert_eq!(read_literal(&q, false).as_deref(), Some(text), "literal {q:?}, standard_conforming_strings off");

    let q = dollar_quote(text);
    assert_eq!(read_dollar(&q).as_deref(), Some(text), "dollar quote {q:?}");

    let q = conf_value(text);
    assert!(!q.contains(['\n', '\r']), "conf value {q:?} breaks its line");
    assert_eq!(read_conf_string(&q).as_deref(), Some(text), "conf value {q:?}");

    if is_bare_conf_token(text) {
        assert!(is_one_conf_value_token(text), "bare conf value {text:?} is not one conf token");
    }
});

/// `"…"` with `""` standing for `"`; None unless the whole input is one such token.
fn read_ident(q: &str) -> Option<String> {
    let mut chars = q.strip_prefix('"')?.chars().peekable();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        if c == '"' {
            if chars.peek() == Some(&'"') {
                chars.next();
                out.push('"');
            } else {
                return chars.next().is_none().then_some(out);
            }
        } else {
            out.push(c);
        }
    }
    None // no closing quote
}

/// `'…'` or `E'…'` as the SQL lexer reads it. `''` is a quote in both forms; backslash escapes
/// apply in `E'…'` always and in `'…'` only when `standard_conforming_strings` is off.
fn read_literal(q: &str, standard_conforming_strings: bool) -> Option<String> {
    let (escapes, rest) = match q.strip_prefix(['E', 'e']) {
        Some(r) => (true, r),
        None => (!standard_conforming_strings, q),
    };
    let mut chars = rest.strip_prefix('\'')?.chars().peekable();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            '\'' => return chars.next().is_none().then_some(out),
            '\\' if escapes => match chars.next()? {
                'b' => out.push('\u{8}'),
                'f' => out.push('\u{c}'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                // Octal, hex and Unicode escapes change the meaning of what follows: quoting
                // must never produce them.
                c @ ('0'..='7' | 'x' | 'u' | 'U') => panic!("escape \\{c} in {q:?}"),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// `$tag$…$tag$`: the body ends at the first closing tag; the tag is `$` or `$name$` with a
/// name that does not start with a digit.
fn read_dollar(q: &str) -> Option<String> {
    let rest = q.strip_prefix('$')?;
    let name_len = rest.find('$')?;
    let name = &rest[..name_len];
    let name_ok = name.chars().next().is_none_or(|c| c.is_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    if !name_ok {
        return None;
    }
    let tag = &q[..name_len + 2];
    let after = &q[tag.len()..];
    let end = after.find(tag)?;
    (end + tag.len() == after.len()).then(|| after[..end].to_string())
}

/// A quoted string of `postgresql.conf` (PostgreSQL's guc-file.l: `'([^'\\\n]|\\.|'')*'`,
/// decoded as its DeconstructQuotedString does: `\b \f \n \r \t`, one to three octal digits,
/// any other escaped character stands for itself).
fn read_conf_string(q: &str) -> Option<String> {
    let b = q.as_bytes();
    if b.first() != Some(&b'\'') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = 1;
    loop {
        match *b.get(i)? {
            b'\n' => return None,
            b'\'' if b.get(i + 1) == Some(&b'\'') => {
                out.push(b'\'');
                i += 2;
            }
            b'\'' => return (i + 1 == b.len()).then(|| String::from_utf8(out).ok()).flatten(),
            b'\\' => {
                let e = *b.get(i + 1)?;
                i += 2;
                match e {
                    b'\n' => return None,
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        for _ in 0..2 {
                            match b.get(i) {
                                Some(d @ b'0'..=b'7') => {
                                    v = v * 8 + u32::from(d - b'0');
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        out.push(v as u8);
                    }
                    other => out.push(other),
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
}

/// Whether `v` alone is one token the conf parser takes as a value: guc-file.l's ID,
/// UNQUOTED_STRING, INTEGER (with unit letters) or REAL. Not a QUALIFIED_ID (`a.b`): it lexes
/// first as its own token, which the parser refuses as a value (PostgreSQL 15 says "contains
/// errors" for `application_name = a.b`, and takes `a.b.c`, `a:b`, `1e`, `.5`; checked).
fn is_one_conf_value_token(v: &str) -> bool {
    let b = v.as_bytes();
    let letter = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
    let digit = |c: u8| c.is_ascii_digit();
    if b.first().is_some_and(|&c| letter(c)) {
        // UNQUOTED_STRING {LETTER}({LETTER_OR_DIGIT}|[-._:/])*, which covers ID.
        let id = |p: &[u8]| p.first().is_some_and(|&c| letter(c)) && p.iter().all(|&c| letter(c) || digit(c));
        let qualified = matches!(v.split_once('.'), Some((l, r)) if id(l.as_bytes()) && id(r.as_bytes()));
        return !qualified && b.iter().all(|&c| letter(c) || digit(c) || b"-._:/".contains(&c));
    }
    let unsigned = b.strip_prefix(b"+").or_else(|| b.strip_prefix(b"-")).unwrap_or(b);
    // INTEGER {DIGIT}+{UNIT_LETTER}* (hex forms are not needed to decide about our tokens)
    let digits = unsigned.iter().take_while(|&&c| digit(c)).count();
    if digits > 0 && unsigned[digits..].iter().all(u8::is_ascii_alphabetic) {
        return true;
    }
    // REAL {DIGIT}*"."{DIGIT}*{EXPONENT}?, EXPONENT [Ee]{SIGN}?{DIGIT}+
    let int = unsigned.iter().take_while(|&&c| digit(c)).count();
    let Some(rest) = unsigned[int..].strip_prefix(b".") else {
        return false;
    };
    let frac = rest.iter().take_while(|&&c| digit(c)).count();
    let rest = &rest[frac..];
    if rest.is_empty() {
        return true;
    }
    let Some(exp) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) else {
        return false;
    };
    let exp = exp.strip_prefix(b"+").or_else(|| exp.strip_prefix(b"-")).unwrap_or(exp);
    !exp.is_empty() && exp.iter().all(|&c| digit(c))
}
