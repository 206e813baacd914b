//! Fetching the spec from the control plane. (Filled in by the operational-surface issue.)

use crate::error::{Error, Result};
use crate::lifecycle::Shared;
use crate::spec::ParsedSpec;

/// `GET {uri}/compute/api/v2/computes/{id}/spec`; `Ok(None)` means "wait for /configure".
pub fn fetch_spec(_uri: &str, _compute_id: &str, _shared: &Shared) -> Result<Option<ParsedSpec>> {
    Err(Error::ControlPlane("fetching the spec from the control plane is not implemented yet".into()))
}
