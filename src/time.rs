//! RFC 3339 timestamps in UTC without a date-time dependency.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// When `main` began: the origin of the start-up timing line (see `lifecycle::boot`).
static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records the start of the process; the first call wins.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

/// Microseconds since [`mark_process_start`] (or since this first call, when it never ran).
pub fn since_process_start_us() -> u64 {
    PROCESS_START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// `2025-02-20T17:14:16.123456789Z`, as chrono serializes a `DateTime<Utc>` (Neon's
/// `start_time`).
pub fn rfc3339_z(t: SystemTime) -> String {
    let (date, nanos) = civil(t);
    format!("{date}.{nanos:09}Z")
}

/// `2025-02-20T17:20:01.000123+00:00`, as chrono's `to_rfc3339()` writes it (Neon's
/// `last_active`).
pub fn rfc3339_offset(t: SystemTime) -> String {
    let (date, nanos) = civil(t);
    format!("{date}.{:06}+00:00", nanos / 1000)
}

fn civil(t: SystemTime) -> (String, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let text = format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
    (text, d.subsec_nanos())
}

/// Parses the `YYYY-MM-DDTHH:MM:SS.ffffffZ` text the activity monitor asks Postgres for.
pub fn parse_utc_micros(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    let frac = s.get(19..)?.trim_end_matches('Z');
    let micros = match frac.strip_prefix('.') {
        Some(f) if !f.is_empty() && f.len() <= 9 => format!("{f:0<9}").parse::<u64>().ok()? / 1000,
        None if frac.is_empty() => 0,
        _ => return None,
    };
    // days-from-civil, the inverse of the above.
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2.rem_euclid(400);
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + sec).ok()?;
    Some(UNIX_EPOCH + std::time::Duration::from_secs(secs) + std::time::Duration::from_micros(micros))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::new(1_740_071_656, 123_456_789);
        assert_eq!(rfc3339_z(t), "2025-02-20T17:14:16.123456789Z");
        assert_eq!(rfc3339_offset(t), "2025-02-20T17:14:16.123456+00:00");
        assert_eq!(rfc3339_z(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn parses_what_it_formats() {
        let t = UNIX_EPOCH + Duration::new(1_740_071_656, 123_456_000);
        assert_eq!(parse_utc_micros("2025-02-20T17:14:16.123456Z"), Some(t));
        assert_eq!(
            parse_utc_micros("2024-02-29T00:00:00.000000Z").map(rfc3339_z).as_deref(),
            Some("2024-02-29T00:00:00.000000000Z")
        );
        assert_eq!(parse_utc_micros("garbage"), None);
    }
}
