//! The monitor's rules, as pure functions of numbers (reference 5): the memory threshold, the
//! file-cache size, the rolling average of samples, whether a downscale fits, and when to ask
//! for more memory. Every decision comes with a sentence saying what was decided and why.

use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;
/// Subtracted from the VM's memory to get what Postgres may use.
pub const SYS_BUFFER: u64 = 100 * MIB;
/// Headroom a downscale must leave above current usage.
pub const DOWNSCALE_BUFFER: u64 = 100 * MIB;
/// Samples in the rolling average (5 × 100 ms).
pub const HISTORY: usize = 5;
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A downscale is refused (as an internal error) when the last sample is older than this.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// At most one `UpscaleRequest` per this interval.
pub const UPSCALE_INTERVAL: Duration = Duration::from_secs(1);

/// 85 % of `mem`, truncated.
pub fn threshold(mem: u64) -> u64 {
    (mem as f64 * 0.85) as u64
}

/// What Postgres may use of `mem`.
pub fn usable(mem: u64) -> u64 {
    mem.saturating_sub(SYS_BUFFER)
}

/// The file-cache size for `total` bytes: the smaller of 75 % and (total − 256 MiB) / 1.1,
/// rounded down to a whole MiB.
pub fn cache_size(total: u64) -> u64 {
    let available = total.saturating_sub(256 * MIB);
    if available == 0 {
        return 0;
    }
    let spread = (available as f64 / 1.1) as u64;
    let normal = (total as f64 * 0.75) as u64;
    spread.min(normal) / MIB * MIB
}

pub fn mib(bytes: u64) -> String {
    let v = bytes as f64 / MIB as f64;
    if bytes.is_multiple_of(MIB) { format!("{v:.0} MiB") } else { format!("{v:.1} MiB") }
}

/// The last [`HISTORY`] samples of non-reclaimable memory (`active_anon + inactive_anon`).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    recent: [u64; HISTORY],
    /// Samples taken since the connection began.
    pub count: u64,
    pub last_at: Option<Instant>,
}

impl Samples {
    pub fn push(&mut self, value: u64, at: Instant) {
        self.recent[(self.count % HISTORY as u64) as usize] = value;
        self.count += 1;
        self.last_at = Some(at);
    }

    /// The integer mean of the most recent `min(count, 5)` samples; 0 before any.
    pub fn average(&self) -> u64 {
        let n = self.count.min(HISTORY as u64);
        if n == 0 {
            return 0;
        }
        let sum: u128 = self.recent[..n as usize].iter().map(|v| u128::from(*v)).sum();
        (sum / u128::from(n)) as u64
    }
}

/// What a `DownscaleRequest` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Downscale {
    /// Fits: the new threshold for the monitor, and the reason.
    Approve { threshold: u64, usable: u64, reason: String },
    /// Does not fit, or cannot be judged yet.
    Deny(String),
    /// No recent memory sample: answered as `InternalError`.
    Stale(String),
}

/// Decides a downscale to `target_mem` bytes from the memory samples.
pub fn downscale(samples: &Samples, now: Instant, target_mem: u64) -> Downscale {
    let u = usable(target_mem);
    let new = threshold(u);
    match samples.last_at {
        Some(t) if now.saturating_duration_since(t) > STALE_AFTER => {
            return Downscale::Stale(format!(
                "no cgroup memory sample for {:.1} s (over {} s)",
                now.saturating_duration_since(t).as_secs_f64(),
                STALE_AFTER.as_secs()
            ));
        }
        _ => {}
    }
    if samples.count <= 1 {
        return Downscale::Deny(format!(
            "denied: haven't received enough cgroup memory stats yet ({} of 2 samples needed)",
            samples.count
        ));
    }
    let used = samples.average();
    let needed = used.saturating_add(DOWNSCALE_BUFFER);
    let why = format!(
        "new threshold {} (85% of {} usable of {}) {} current usage {} + {} downscale buffer",
        mib(new),
        mib(u),
        mib(target_mem),
        if new < needed { "is below" } else { "covers" },
        mib(used),
        mib(DOWNSCALE_BUFFER)
    );
    if new < needed {
        Downscale::Deny(format!("denied: {why}"))
    } else {
        Downscale::Approve { threshold: new, usable: u, reason: format!("approved: {why}") }
    }
}

/// Whether to send an `UpscaleRequest` now: usage at or over the threshold, and the last
/// request at least [`UPSCALE_INTERVAL`] ago.
pub fn want_upscale(average: u64, threshold: u64, last_request: Option<Instant>, now: Instant) -> bool {
    average >= threshold && last_request.is_none_or(|t| now.saturating_duration_since(t) >= UPSCALE_INTERVAL)
}

/// Parses `memory.stat` and returns `active_anon + inactive_anon`.
pub fn non_reclaimable(memory_stat: &str) -> Result<u64, String> {
    let mut active = None;
    let mut inactive = None;
    for line in memory_stat.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next()) else { continue };
        let slot = match k {
            "active_anon" => &mut active,
            "inactive_anon" => &mut inactive,
            _ => continue,
        };
        *slot = Some(v.parse::<u64>().map_err(|_| format!("{k} is not a number: {v:?}"))?);
    }
    match (active, inactive) {
        (Some(a), Some(i)) => Ok(a.saturating_add(i)),
        _ => Err("memory.stat lacks active_anon or inactive_anon".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_values_from_the_reference() {
        // (m, cache_size(m), usable(m), cache_size(usable), threshold(usable) in MiB × 10)
        let rows = [
            (512, 232, 412, 141, 3502),
            (1024, 698, 924, 607, 7854),
            (2048, 1536, 1948, 1461, 16558),
            (4096, 3072, 3996, 2997, 33966),
            (8192, 6144, 8092, 6069, 68782),
        ];
        for (m, cache, u, cache_u, thr10) in rows {
            let m = m * MIB;
            assert_eq!(cache_size(m), cache * MIB, "cache_size({m})");
            assert_eq!(usable(m), u * MIB);
            assert_eq!(cache_size(usable(m)), cache_u * MIB);
            assert_eq!((threshold(usable(m)) as f64 * 10.0 / MIB as f64).round() as u64, thr10, "threshold of {m}");
        }
        assert_eq!(cache_size(200 * MIB), 0);
        assert_eq!(usable(50 * MIB), 0);
    }

    #[test]
    fn rolling_average_of_the_last_five() {
        let now = Instant::now();
        let mut s = Samples::default();
        assert_eq!(s.average(), 0);
        s.push(10, now);
        s.push(20, now);
        assert_eq!(s.average(), 15);
        for v in [100, 100, 100, 100, 100] {
            s.push(v, now);
        }
        assert_eq!((s.average(), s.count), (100, 7));
    }

    fn samples(used: u64, n: u64, at: Instant) -> Samples {
        let mut s = Samples::default();
        for _ in 0..n {
            s.push(used, at);
        }
        s
    }

    #[test]
    fn downscale_rules() {
        let now = Instant::now();
        // 1 GiB target: usable 924 MiB, threshold 785.4 MiB.
        let d = downscale(&samples(10 * MIB, 5, now), now, 1 << 30);
        let Downscale::Approve { threshold: t, reason, .. } = d else { panic!("{d:?}") };
        assert_eq!(t, threshold(924 * MIB));
        assert!(
            reason.starts_with("approved: new threshold 785.4 MiB (85% of 924 MiB usable of 1024 MiB) covers"),
            "{reason}"
        );
        let d = downscale(&samples(700 * MIB, 5, now), now, 1 << 30);
        assert_eq!(
            d,
            Downscale::Deny(
                "denied: new threshold 785.4 MiB (85% of 924 MiB usable of 1024 MiB) is below current usage 700 MiB \
                 + 100 MiB downscale buffer"
                    .into()
            )
        );
        // Exactly at the boundary it fits.
        let edge = threshold(924 * MIB) - DOWNSCALE_BUFFER;
        assert!(matches!(downscale(&samples(edge, 5, now), now, 1 << 30), Downscale::Approve { .. }));
        assert!(matches!(downscale(&samples(edge + 1, 5, now), now, 1 << 30), Downscale::Deny(_)));
        let d = downscale(&samples(0, 1, now), now, 1 << 30);
        assert!(matches!(&d, Downscale::Deny(r) if r.contains("enough cgroup memory stats")), "{d:?}");
        let d = downscale(&samples(0, 5, now), now + Duration::from_secs(6), 1 << 30);
        assert!(matches!(d, Downscale::Stale(_)), "{d:?}");
    }

    #[test]
    fn upscale_at_most_once_a_second() {
        let t0 = Instant::now();
        assert!(!want_upscale(99, 100, None, t0));
        assert!(want_upscale(100, 100, None, t0));
        assert!(!want_upscale(200, 100, Some(t0), t0 + Duration::from_millis(999)));
        assert!(want_upscale(200, 100, Some(t0), t0 + Duration::from_secs(1)));
    }

    #[test]
    fn memory_stat_parsing() {
        let text = "anon 5\nfile 7\nactive_anon 1048576\ninactive_anon 2097152\nactive_file 9\n";
        assert_eq!(non_reclaimable(text), Ok(3 * MIB));
        assert!(non_reclaimable("anon 5\n").is_err());
        assert!(non_reclaimable("active_anon x\ninactive_anon 1\n").unwrap_err().contains("active_anon"));
    }
}
