//! Declarative catalog apply: roles, databases and delta operations (reference 4.8).

use crate::error::Result;
use crate::spec::ParsedSpec;

/// How many databases are worked on at once.
#[derive(Debug, Clone, Copy)]
pub enum Concurrency {
    /// At start: derived from `max_connections` (reference 4.7).
    AtStart,
    /// On reconfigure: the spec's `reconfigure_concurrency`.
    Reconfigure(usize),
}

/// Applies the spec's catalog. (Filled in by the catalog issue.)
pub fn apply_spec(_connstr: &str, _spec: &ParsedSpec, _concurrency: Concurrency) -> Result<()> {
    Ok(())
}
