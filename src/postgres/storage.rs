//! Pageserver mode: PGDATA is made anew from a basebackup on every start.

use crate::error::{Error, Result};
use crate::lifecycle::Context;
use crate::spec::ParsedSpec;

/// Wipes PGDATA and fills it from the pageserver. (Filled in by the storage issue.)
pub fn prepare_from_pageserver(_ctx: &Context, _spec: &ParsedSpec) -> Result<()> {
    Err(Error::Basebackup("pageserver mode is not implemented yet".into()))
}
