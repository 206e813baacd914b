//! Fetching the spec from the control plane (`-p`).
//!
//! `GET {uri}/compute/api/v2/computes/{compute_id}/spec` with
//! `Authorization: Bearer $NEON_CONTROL_PLANE_TOKEN`, as Neon does. Every attempt has a
//! timeout (minreq has none by default). Network errors, 502, 503 and a 200 whose body does
//! not decode are retried a few times; any other status fails at once. `"status": "empty"`
//! means there is no spec yet: compute_ctl then waits for `POST /configure`.
//!
//! This build of minreq has no TLS, so the URI must be `http://` (a local proxy or sidecar can
//! terminate TLS); an `https://` URI is refused with a message saying so.

use crate::error::{Error, Result};
use crate::spec::{ComputeCtlConfig, ComputeSpec, ParsedSpec};
use serde::Deserialize;
use std::time::Duration;

/// Attempts in all (Neon: 3).
pub const ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubled before each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Timeout of one attempt, connect to last byte.
const TIMEOUT_SECS: u64 = 10;

/// Neon's `ControlPlaneSpecResponse`.
#[derive(Debug, Deserialize)]
struct SpecResponse {
    #[serde(default)]
    spec: Option<ComputeSpec>,
    status: CplaneStatus,
    /// Required by today's Neon; an answer without it (or with one of another shape) is
    /// still accepted here, with a warning.
    #[serde(default)]
    compute_ctl_config: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum CplaneStatus {
    Empty,
    Attached,
}

/// What one attempt came to.
enum Attempt {
    Done(Option<ParsedSpec>, Option<ComputeCtlConfig>),
    Retry(String),
}

/// `GET {uri}/compute/api/v2/computes/{id}/spec`: the spec (None means "wait for
/// /configure") and `compute_ctl_config` when the answer carried a valid one.
pub fn fetch_config(uri: &str, compute_id: &str) -> Result<(Option<ParsedSpec>, Option<ComputeCtlConfig>)> {
    if uri.starts_with("https://") {
        return Err(Error::ControlPlane(format!(
            "{uri}: https is not supported by this build; use an http:// URI (e.g. a local TLS proxy)"
        )));
    }
    let url = format!("{uri}/compute/api/v2/computes/{compute_id}/spec");
    let token = std::env::var("NEON_CONTROL_PLANE_TOKEN").unwrap_or_default();
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        log::info!("requesting the spec from the control plane: {url} (attempt {attempt}/{ATTEMPTS})");
        match fetch_once(&url, &token)? {
            Attempt::Done(spec, ctl) => return Ok((spec, ctl)),
            Attempt::Retry(why) => {
                log::warn!("control plane attempt {attempt}/{ATTEMPTS} failed: {why}");
                last = why;
            }
        }
        if attempt < ATTEMPTS {
            std::thread::sleep(backoff);
            backoff *= 2;
        }
    }
    Err(Error::ControlPlane(format!(
        "exhausted all {ATTEMPTS} attempts to retrieve the spec from {url}; last error: {last}"
    )))
}

fn fetch_once(url: &str, token: &str) -> Result<Attempt> {
    let resp = minreq::get(url)
        .with_header("Authorization", format!("Bearer {token}"))
        .with_timeout(TIMEOUT_SECS)
        .with_max_headers_size(64 * 1024)
        .send();
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            crate::metrics::count_cplane_request("GetConfig", "unknown");
            return Ok(Attempt::Retry(format!("network error: {e}")));
        }
    };
    let code = resp.status_code;
    let label = if resp.reason_phrase.is_empty() { code.to_string() } else { format!("{code} {}", resp.reason_phrase) };
    crate::metrics::count_cplane_request("GetConfig", &label);
    match code {
        200 => {}
        502 | 503 => return Ok(Attempt::Retry(format!("control plane is temporarily unavailable ({label})"))),
        _ => {
            let body = String::from_utf8_lossy(resp.as_bytes());
            let excerpt: String = body.chars().take(200).collect();
            return Err(Error::ControlPlane(format!("unexpected response status {label} from {url}: {excerpt}")));
        }
    }
    let parsed: SpecResponse = match serde_json::from_slice(resp.as_bytes()) {
        Ok(p) => p,
        Err(e) => return Ok(Attempt::Retry(format!("cannot decode the response body: {e}"))),
    };
    let ctl = match parsed.compute_ctl_config.map(serde_json::from_value::<ComputeCtlConfig>) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            log::warn!("the control plane's compute_ctl_config is not usable ({e}); going on without it");
            None
        }
        None => {
            log::warn!("the control plane's answer has no compute_ctl_config; going on without it");
            None
        }
    };
    match (parsed.status, parsed.spec) {
        (CplaneStatus::Empty, _) => {
            log::info!("the control plane has no spec for this compute yet: waiting for POST /configure");
            Ok(Attempt::Done(None, ctl))
        }
        (CplaneStatus::Attached, None) => {
            Err(Error::ControlPlane("the compute is attached, but the control plane sent no spec".into()))
        }
        (CplaneStatus::Attached, Some(spec)) => Ok(Attempt::Done(Some(ParsedSpec::validate(spec)?), ctl)),
    }
}
