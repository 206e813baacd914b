//! Starting both HTTP servers with their authorization fixed: which keys and token guard the
//! external server, and which addresses the servers bind.
//!
//! The external server binds every address (`::`, as Neon) only when requests are authorized
//! (JWT keys or a token file) or `--http-bind` says where; otherwise it binds loopback and the
//! start-up log says it is unauthenticated. The internal server has no authorization beyond the
//! token file (as in Neon) and binds loopback unless `--internal-http-bind` moves it.

use super::routes::{self, App, Server};
use super::{gate, server};
use crate::args::Args;
use crate::auth::{Authorizer, Token, jwks};
use crate::error::{Error, Result};
use crate::spec::ComputeCtlConfig;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The authorizers of the external and internal servers, from `--http-auth-token-file` and
/// the `compute_ctl_config` received at start (of `-c` or the control plane; None when there
/// was none).
pub fn authorizers(args: &Args, compute_ctl_config: Option<&ComputeCtlConfig>) -> Result<(Authorizer, Authorizer)> {
    let token = args.http_auth_token_file.as_deref().map(Token::from_file).transpose()?;
    let mut keys = compute_ctl_config.map(|c| jwks::from_keys(&c.jwks.keys));
    if let Some(set) = &keys {
        for (name, why) in &set.skipped {
            log::warn!("JWKS key {name} skipped: {why}");
        }
        let names: Vec<&str> = set.keys.iter().map(|k| k.name.as_str()).collect();
        if names.is_empty() {
            // Unlike Neon (whose empty set refuses every token): no key means no JWT check,
            // and the external server is then unauthenticated, so it binds loopback by default.
            log::warn!("compute_ctl_config.jwks has no usable key: JWT authorization is off");
            keys = None;
        } else {
            log::info!("JWT authorization with {} key(s): {}", names.len(), names.join(", "));
        }
    }
    if std::env::var_os("INSTANCE_ID").is_some() {
        log::warn!("INSTANCE_ID is set; unlike Neon, compute_ctl does not skip authorization for it");
    }
    let internal = Authorizer::new(token.clone(), None, &args.compute_id);
    Ok((Authorizer::new(token, keys, &args.compute_id), internal))
}

/// The external server's address: `--http-bind`, else every address when guarded, else
/// loopback.
pub fn external_bind(args: &Args, guarded: bool) -> IpAddr {
    match args.http_bind {
        Some(ip) => ip,
        None if guarded => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

/// Both servers, bound (so their addresses are taken and errors known) but not serving yet.
pub struct Servers(Vec<(server::Bound, server::Gate, server::Handler)>);

/// Binds both servers; [`Servers::serve`] starts them.
pub fn bind(args: &Args, app: &Arc<App>, external: Authorizer, internal: Authorizer) -> Result<Servers> {
    let ext_ip = external_bind(args, external.is_guarded());
    if !external.is_guarded() {
        let why = if args.http_bind.is_some() { "as --http-bind asks" } else { "loopback only; --http-bind moves it" };
        log::warn!(
            "the external HTTP API is unauthenticated (no compute_ctl_config.jwks, no --http-auth-token-file): \
             it listens on {ext_ip} ({why})"
        );
    }
    let mut servers = Vec::new();
    for (ip, port, which, auth) in [
        (args.internal_http_bind, args.internal_http_port, Server::Internal, internal),
        (ext_ip, args.external_http_port, Server::External, external),
    ] {
        let addr = SocketAddr::new(ip, port);
        let name = match which {
            Server::Internal => "internal",
            Server::External => "external",
        };
        let bound = server::bind(addr, name).map_err(|source| Error::Bind { server: name, addr, source })?;
        let bound = bound.yield_to_postgres();
        servers.push((bound, gate::gate(Arc::new(auth), which), routes::handler(app.clone(), which)));
    }
    Ok(Servers(servers))
}

impl Servers {
    /// Starts serving, the internal server first: once the external one answers, both are up.
    pub fn serve(self) -> Result<()> {
        for (bound, gate, handler) in self.0 {
            bound.serve(gate, handler).map_err(|e| Error::system("cannot start an HTTP server thread", e))?;
        }
        Ok(())
    }
}
