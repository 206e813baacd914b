//! `POST /refresh_configuration` (reference 5.7): the spec is fetched again from where the
//! compute got it (the control plane, or the spec file) and applied as a live
//! reconfiguration. Two states, as today's Neon reports them: `refresh_configuration_pending`
//! (accepted) and `refresh_configuration` (fetching and applying).

use super::{Failed, Running};
use crate::lifecycle::{Context, Status, boot};
use crate::postgres::process::Postmaster;
use crate::spec::ParsedSpec;

/// A refresh was asked for; waits for the owner to begin it. Holds Postgres and the spec it
/// runs with.
pub struct RefreshConfigurationPending {
    ctx: Context,
    postmaster: Postmaster,
    spec: ParsedSpec,
    /// The failure the compute was in, if it came from `Failed` (it returns there when the
    /// fetch fails).
    failed: bool,
}

/// Fetches the spec and applies it.
pub struct RefreshConfiguration {
    ctx: Context,
    postmaster: Postmaster,
    spec: ParsedSpec,
    failed: bool,
}

impl Running {
    pub(in crate::lifecycle) fn refresh(self) -> RefreshConfigurationPending {
        self.ctx.publish(Status::RefreshConfigurationPending, None);
        RefreshConfigurationPending { ctx: self.ctx, postmaster: self.postmaster, spec: self.spec, failed: false }
    }
}

impl Failed {
    /// Only a compute whose Postgres still runs (a failed reconfiguration) can refresh.
    pub(in crate::lifecycle) fn refresh(self) -> Result<RefreshConfigurationPending, Failed> {
        match self.running.map(|b| *b) {
            Some((pm, spec)) if pm.exit_status().is_none() => {
                self.ctx.publish(Status::RefreshConfigurationPending, None);
                Ok(RefreshConfigurationPending { ctx: self.ctx, postmaster: pm, spec, failed: true })
            }
            running => Err(Failed { running: running.map(Box::new), ..self }),
        }
    }
}

impl RefreshConfigurationPending {
    pub fn status(&self) -> Status {
        Status::RefreshConfigurationPending
    }

    pub fn begin(self) -> RefreshConfiguration {
        self.ctx.publish(Status::RefreshConfiguration, None);
        let RefreshConfigurationPending { ctx, postmaster, spec, failed } = self;
        RefreshConfiguration { ctx, postmaster, spec, failed }
    }
}

impl RefreshConfiguration {
    pub fn status(&self) -> Status {
        Status::RefreshConfiguration
    }

    /// Fetches and applies. A failed fetch (or a control plane that has no spec for this
    /// compute) changes nothing: the compute goes back to where it was, with the error. A
    /// failed apply is `Failed` with Postgres up, as after a failed `/configure`.
    pub fn apply(self) -> (Result<Running, Failed>, Result<(), String>) {
        let fetched = match &self.ctx.refresh {
            None => Err("the spec was given inline or by POST /configure: there is nowhere to refresh it from".into()),
            Some(fetch) => fetch(),
        };
        let spec = match fetched {
            Ok(Some(spec)) => spec,
            Ok(None) => return self.back("the control plane has no spec for this compute".into()),
            Err(e) => return self.back(format!("cannot fetch the spec: {e}")),
        };
        self.ctx.publish_spec(&spec);
        match boot::reconfigure(&self.ctx, &spec, &self.postmaster) {
            Ok(pending) => {
                self.ctx.record_pending_restart(pending);
                (Ok(Running::enter(self.ctx, spec, self.postmaster)), Ok(()))
            }
            Err(e) => {
                let msg = format!("the refreshed spec could not be applied: {}", e.report());
                (Err(Failed::enter(self.ctx, e, Some((self.postmaster, spec)))), Err(msg))
            }
        }
    }

    fn back(self, msg: String) -> (Result<Running, Failed>, Result<(), String>) {
        log::error!("refresh_configuration: {msg}");
        if self.failed {
            let e = crate::error::Error::ControlPlane(msg.clone());
            (Err(Failed::enter(self.ctx, e, Some((self.postmaster, self.spec)))), Err(msg))
        } else {
            (Ok(Running::enter(self.ctx, self.spec, self.postmaster)), Err(msg))
        }
    }
}
