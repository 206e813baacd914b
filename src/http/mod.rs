//! A hand-rolled HTTP/1.1 server on `std::net`: a pure request parser, the accept loop, routes.

pub mod gate;
pub mod listen;
mod neon2026;
pub mod probes;
pub mod request;
pub mod response;
pub mod routes;
pub mod server;
pub mod websocket;

/// `--probe PORT`: the Docker health check. Exit 0 when `GET /metrics` on 127.0.0.1:PORT says
/// the compute is `running`, 1 otherwise (the image has no curl). `/metrics` because it is the
/// route that needs no token, whatever authorization is configured.
pub fn probe(port: u16) -> std::process::ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })();
    match result {
        Ok(text) if text.lines().any(|l| up_line(l) && l.contains("status=\"running\"")) => {
            std::process::ExitCode::SUCCESS
        }
        Ok(text) => {
            let status = text.lines().find(|l| up_line(l));
            eprintln!("compute_ctl --probe: not running: {}", status.or(text.lines().next()).unwrap_or(""));
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("compute_ctl --probe: cannot reach 127.0.0.1:{port}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// `--terminate PORT`: a Kubernetes `preStop` hook. `POST /terminate` (fast) on
/// 127.0.0.1:PORT with the bearer token of `token_file` when given, waiting until Postgres has
/// stopped. Exit 0 when it has (or had already), 1 otherwise.
pub fn terminate(port: u16, token_file: Option<&std::path::Path>) -> std::process::ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let token = match token_file.map(crate::auth::Token::from_file).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("compute_ctl --terminate: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        // The answer comes once Postgres has stopped; the grace period bounds the whole hook.
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        let auth = token.as_ref().map_or(String::new(), |t| format!("Authorization: Bearer {}\r\n", t.reveal()));
        let head = format!(
            "POST /terminate?mode=fast HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })();
    match result {
        Ok(text) if text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 201") => {
            println!("{}", text.lines().last().unwrap_or(""));
            std::process::ExitCode::SUCCESS
        }
        Ok(text) => {
            eprintln!("compute_ctl --terminate: {}", text.lines().next().unwrap_or("no answer"));
            eprintln!("{}", text.lines().last().unwrap_or(""));
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("compute_ctl --terminate: cannot reach 127.0.0.1:{port}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// A `compute_ctl_up{...} 1` sample: the current status (its labels vary, `build_tag` too).
fn up_line(line: &str) -> bool {
    line.starts_with("compute_ctl_up{") && line.ends_with("} 1")
}
