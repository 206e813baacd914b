//! `drop_subscriptions_before_start`: drop inherited subscriptions once per timeline.

use crate::error::Result;
use crate::lifecycle::Context;
use crate::postgres::process::Postmaster;
use crate::spec::ParsedSpec;

/// What keeps apply workers from starting until the drop is done.
#[derive(Debug)]
pub enum Guard {
    None,
}

pub fn guard_before_start(_ctx: &Context, _spec: &ParsedSpec) -> Result<Guard> {
    Ok(Guard::None)
}

pub fn drop_inherited(_ctx: &Context, _spec: &ParsedSpec) -> Result<()> {
    Ok(())
}

pub fn release_guard(_ctx: &Context, _spec: &ParsedSpec, _guard: Guard, _pm: &Postmaster) -> Result<()> {
    Ok(())
}
