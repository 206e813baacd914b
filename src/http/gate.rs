//! The authorization gate in front of each server: which requests need a token, and the
//! answer to one that has none or a bad one. It sees only the request head (the server calls
//! it before reading any body).
//!
//! As in Neon, `GET /metrics` and `GET /autoscaling_metrics` are public, and so are unknown
//! paths (their answer is a 404 that reveals nothing). The Kubernetes probes `/healthz`,
//! `/readyz` and `/startupz` are public too: the kubelet cannot send a secret header, and
//! they reveal only the state. Every other route of the server needs what its
//! [`Authorizer`] asks for.

use super::request::Request;
use super::response::Response;
use super::routes::{self, Server};
use super::server::Gate;
use crate::auth::Authorizer;
use std::sync::Arc;

const PUBLIC: &[&str] = &["/metrics", "/autoscaling_metrics", "/healthz", "/readyz", "/startupz"];

/// The gate of `server`, deciding with `auth`.
pub fn gate(auth: Arc<Authorizer>, server: Server) -> Gate {
    Arc::new(move |req: &Request| {
        let Some(label) = routes::known_path(server, &req.path) else { return Ok(()) };
        let read_only = req.method == "GET" || req.method == "HEAD";
        if server == Server::External && read_only && PUBLIC.contains(&label) {
            return Ok(());
        }
        let Err(denied) = auth.check(req.header("authorization"), crate::auth::now()) else { return Ok(()) };
        crate::metrics::count_http_request(server.label(), label, denied.status);
        let id = req.header("x-request-id").map_or_else(routes::uuid_v4, str::to_string);
        // The path and the reason only: never the header, which carries the token.
        log::info!("{} {} -> {}: {} (request {id})", req.method, req.path, denied.status, denied.message);
        let mut resp = Response::error(denied.status, denied.message).with_header("x-request-id", id);
        if denied.challenge {
            resp = resp.with_header("WWW-Authenticate", "Bearer".into());
        }
        Err(resp)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Token;

    fn req(method: &str, path: &str, auth: Option<&str>) -> Request {
        let headers = auth.map(|a| ("authorization".to_string(), a.to_string())).into_iter().collect();
        Request { method: method.into(), path: path.into(), query: None, minor_version: 1, headers, body: Vec::new() }
    }

    #[test]
    fn probes_and_metrics_pass_without_a_token_and_nothing_else_does() {
        let g = gate(Arc::new(Authorizer::new(Some(Token::new("s3cret")), None, "c1")), Server::External);
        for path in ["/healthz", "/readyz", "/startupz", "/metrics"] {
            for method in ["GET", "HEAD"] {
                assert!(g(&req(method, path, None)).is_ok(), "{method} {path}");
            }
            assert_eq!(g(&req("POST", path, None)).unwrap_err().status, 401, "POST {path} is not read-only");
        }
        for (method, path) in [("GET", "/status"), ("POST", "/restart"), ("POST", "/configure"), ("POST", "/terminate")]
        {
            assert_eq!(g(&req(method, path, None)).unwrap_err().status, 401, "{method} {path}");
            assert!(g(&req(method, path, Some("Bearer s3cret"))).is_ok(), "{method} {path} with the token");
        }
    }
}
