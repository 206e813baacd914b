//! The command line, parsed by hand and compatible with Neon's compute_ctl flags.

use crate::error::{Error, Result};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Where the spec comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSource {
    /// `-c`: a `ComputeConfig` file, as today's Neon (its spec may be null: wait).
    Config(PathBuf),
    /// `-s`: inline JSON (this project's extension); `/configure` is then refused with 412,
    /// as in Neon of early 2025.
    Inline(String),
    /// `-S`: a file holding a bare spec (this project's extension).
    File(PathBuf),
    /// `-p`: asked from the control plane.
    ControlPlane(String),
    /// None given: wait in `empty` for `POST /configure`.
    Wait,
}

/// Validated arguments of a run.
#[derive(Debug, Clone)]
pub struct Args {
    pub pgdata: PathBuf,
    pub connstr: String,
    pub spec: SpecSource,
    pub pgbin: PathBuf,
    pub external_http_port: u16,
    pub internal_http_port: u16,
    /// `--http-bind`: the external server's address when given; otherwise all addresses
    /// when requests are authorized, loopback when they are not.
    pub http_bind: Option<IpAddr>,
    /// `--internal-http-bind`: the internal server's address (default loopback).
    pub internal_http_bind: IpAddr,
    pub compute_id: String,
    pub pg_user: String,
    pub http_auth_token_file: Option<PathBuf>,
    pub exit_delay: Duration,
    /// `--privileged-role-name`: the role spec roles are made members of (`^[a-z_]+$`).
    pub privileged_role_name: String,
    /// `-r/--remote-ext-base-url`, normalized to end in exactly one `/`.
    pub remote_ext_base_url: Option<String>,
    /// `--installed-extensions-collection-interval`: first interval of the collection (the
    /// spec's `suspend_timeout_seconds` replaces it).
    pub installed_extensions_interval: Duration,
    /// `--dev`: on a termination signal, leave pgbouncer and local_proxy alone.
    pub dev: bool,
    /// `--pre-stop-checkpoint`: how long the `CHECKPOINT` before a fast shutdown may take
    /// (zero: none).
    pub pre_stop_checkpoint: Duration,
    pub autoscaling: Autoscaling,
    /// `--rsyslog-dir`: where the rsyslog files of audit logging and logs export go.
    pub rsyslog_dir: PathBuf,
}

/// What `AUTOSCALING` turns on: Postgres in the memory cgroup, and the vm-monitor.
#[derive(Debug, Clone)]
pub struct Autoscaling {
    /// The `AUTOSCALING` environment variable is set (to anything, even empty), as in Neon.
    pub enabled: bool,
    /// `--cgroup`: the memory cgroup Postgres runs in and the monitor watches.
    pub cgroup: String,
    /// `--cgroup-root`: replaces `/sys/fs/cgroup` (for tests).
    pub cgroup_root: Option<PathBuf>,
    /// `--filecache-connstr`: the monitor's connection for file-cache resizing (default: -C).
    pub filecache_connstr: Option<String>,
    /// `--vm-monitor-addr`.
    pub vm_monitor_addr: SocketAddr,
}

/// `compute_ctl plan`: what an apply of a spec would run against a running Postgres.
#[derive(Debug, Clone)]
pub struct PlanArgs {
    pub connstr: String,
    pub spec: PlanSpec,
    /// `--privileged-role-name`, as for a run.
    pub privileged_role_name: String,
}

/// Where `plan` reads the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanSpec {
    /// `-s`: inline JSON.
    Inline(String),
    /// `-S`: a spec file.
    File(PathBuf),
    /// `-c`: a configuration file, `{"spec": {...}}` (the body of `POST /configure`).
    Config(PathBuf),
}

/// The privileged role of Neon (`--privileged-role-name` default).
pub const DEFAULT_PRIVILEGED_ROLE: &str = "neon_superuser";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Args>),
    Help,
    Version,
    /// `--probe [PORT]`: ask a running compute_ctl for `/status` and exit 0 when `running`
    /// (the Docker HEALTHCHECK, since the image has no curl).
    Probe(u16),
    /// `--terminate [PORT]`: ask a running compute_ctl for a fast termination (`POST
    /// /terminate`) and wait for it (a Kubernetes `preStop` hook). The default port is the
    /// internal API's (3081): on loopback, it takes no JWT, which a hook could not mint.
    Terminate {
        port: u16,
        token_file: Option<PathBuf>,
    },
    /// `plan -C CONNSTR -S|-s|-c SPEC`.
    Plan(PlanArgs),
}

pub const USAGE: &str = "\
compute_ctl: supervisor of a PostgreSQL compute node

Usage: compute_ctl -D PGDATA -C CONNSTR [options]
       compute_ctl plan -C CONNSTR (-S FILE | -s JSON | -c FILE)
       compute_ctl --terminate [PORT] [--http-auth-token-file F]

Options:
  -D, --pgdata DIR              PGDATA directory (required)
  -C, --connstr URL             compute_ctl's own connection to Postgres, e.g.
                                postgresql://cloud_admin@127.0.0.1:55432/postgres (required)
  -c, --config FILE             a ComputeConfig file {\"spec\": ..., \"compute_ctl_config\": ...};
                                a null spec waits for POST /configure
  -s, --spec JSON               the spec as inline JSON (POST /configure then answers 412)
  -S, --spec-path FILE          the spec as a JSON file (a bare spec)
  -p, --control-plane-uri URL   fetch the spec from the control plane
  -i, --compute-id ID           compute id for the control plane (default compute-<unix time>)
  -b, --pgbin PATH              the postgres binary (env POSTGRES_PATH, default postgres);
                                initdb, pg_ctl, pg_dump are found beside it
      --external-http-port PORT external HTTP port (default 3080)
      --internal-http-port PORT internal HTTP port (default 3081)
      --http-port PORT          external HTTP port PORT and internal PORT + 1 (Neon's lakebase
                                meaning); not together with the two flags above
      --privileged-role-name N  role spec roles are members of (default neon_superuser;
                                lower-case letters and _)
  -r, --remote-ext-base-url URL base URL of the extension storage (no query part)
      --installed-extensions-collection-interval SECONDS
                                first interval of the installed-extensions metric (default
                                3600; the spec's suspend_timeout_seconds replaces it)
      --dev                     on a termination signal leave pgbouncer and local_proxy alone
                                (compute_ctl never stops them, so this changes nothing)
      --http-bind ADDR          address of the external HTTP server (default :: when JWT keys
                                or a token file authorize requests, else 127.0.0.1 only)
      --internal-http-bind ADDR address of the internal HTTP server (default 127.0.0.1; it has
                                no authorization, as in Neon)
      --http-auth-token-file F  require `Authorization: Bearer <token in F>` on every route
                                except GET /metrics, /healthz, /readyz and /startupz (besides
                                JWTs when compute_ctl_config.jwks has keys)
      --pg-user NAME            OS user Postgres runs as when compute_ctl is root (default postgres)
      --exit-delay SECONDS      keep answering /status this long after terminate or a failed
                                start before exiting (default 30)
      --pre-stop-checkpoint SECONDS
                                run a CHECKPOINT, bounded by this, before a fast shutdown so
                                that the shutdown checkpoint has little left (default 10;
                                0: none)
      --vm-monitor-addr ADDR    with AUTOSCALING: where the vm-monitor listens for the
                                autoscaler-agent (default 0.0.0.0:10301)
      --cgroup NAME             with AUTOSCALING: the memory cgroup Postgres runs in and the
                                vm-monitor watches (default neon-postgres)
      --filecache-connstr STR   with AUTOSCALING: the vm-monitor's connection for resizing the
                                file cache (default: the -C connection)
      --cgroup-root DIR         for tests: the cgroup v2 mount (default /sys/fs/cgroup), or a
                                directory imitating it (cgroup.procs, memory.stat files)
      --rsyslog-dir DIR         where the rsyslog files of audit_log_level and logs_export_host
                                go (default /etc/rsyslog.d; for tests, and for images that keep
                                rsyslog's configuration elsewhere)
      --terminate [PORT]        ask the compute on PORT (default 3081, the internal API on
                                loopback, which needs no JWT) for a fast termination and
                                wait until Postgres has stopped (a preStop hook)
      --probe [PORT]            health check: exit 0 when the compute on PORT (default 3080)
                                reports running
  -h, --help                    print this help
  -V, --version                 print the version

plan: connect to the running Postgres (-C), read its catalog and print, phase by phase, the
statements an apply of the spec would run, running none of them. -c FILE takes the body of
POST /configure ({\"spec\": ...}); --privileged-role-name as for a run. Exit 0 when nothing
would change, 2 when something would, 1 on error.

Environment: AUTOSCALING (any value) runs Postgres in the memory cgroup and starts the vm-monitor.
AUDIT_LOGGING_TLS_ENDPOINT or AUDIT_LOGGING_ENDPOINT (host:port, TLS wins): where compliance
audit records go (audit_log_level Hipaa, Extended, Full need one).

Neon flags that are accepted and ignored with a warning, because the feature is internal to
Neon's VMs or to Databricks' lakebase mode: --set-disk-quota-for-fs (with a value),
--resize-swap-on-bind, --lakebase-mode BOOL (true runs in Neon's mode all the same),
--pg-init-timeout SECONDS (lakebase only), and the old --remote-ext-config.
";

fn usage(msg: String) -> Error {
    Error::Usage(msg)
}

/// Parses `argv[1..]`; `env` looks up environment variables (a parameter so tests need not
/// touch the process environment).
pub fn parse(argv: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Command> {
    if argv.first().is_some_and(|a| a == "plan") {
        return parse_plan(&argv[1..]);
    }
    let mut terminate: Option<u16> = None;
    let mut pre_stop_checkpoint = None;
    let mut pgdata = None;
    let mut connstr = None;
    let mut inline = None;
    let mut file = None;
    let mut cplane = None;
    let mut compute_id = None;
    let mut pgbin = None;
    let mut ext_port = None;
    let mut int_port = None;
    let mut http_bind = None;
    let mut internal_bind = None;
    let mut pg_user = None;
    let mut token_file = None;
    let mut exit_delay = None;
    let mut cgroup = None;
    let mut cgroup_root = None;
    let mut rsyslog_dir = None;
    let mut filecache_connstr = None;
    let mut vm_monitor_addr = None;
    let mut config = None;
    let mut lakebase_http_port = None;
    let mut privileged_role = None;
    let mut remote_ext = None;
    let mut ext_interval = None;
    let mut dev = false;

    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        // `--name=value` and `--name value` are both accepted.
        let (flag, mut attached) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            if let Some(v) = attached.take() {
                return Ok(v);
            }
            match argv.get(i) {
                Some(v) => {
                    i += 1;
                    Ok(v.clone())
                }
                None => Err(usage(format!("{name} needs a value (see --help)"))),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--probe" => {
                let port = match attached.take().or_else(|| argv.get(i).cloned()) {
                    Some(p) => port_value("--probe", &p)?,
                    None => 3080,
                };
                return Ok(Command::Probe(port));
            }
            "--terminate" => {
                let port = match attached.take() {
                    Some(p) => port_value("--terminate", &p)?,
                    None => match argv.get(i).filter(|p| !p.starts_with('-')) {
                        Some(p) => {
                            i += 1;
                            port_value("--terminate", p)?
                        }
                        None => 3081,
                    },
                };
                terminate = Some(port);
            }
            "--pre-stop-checkpoint" => pre_stop_checkpoint = Some(seconds(flag, &value(flag)?)?),
            "-D" | "--pgdata" => pgdata = Some(PathBuf::from(value(flag)?)),
            "-C" | "--connstr" => connstr = Some(value(flag)?),
            "-c" | "--config" => config = Some(PathBuf::from(value(flag)?)),
            "-s" | "--spec" => inline = Some(value(flag)?),
            "-S" | "--spec-path" => file = Some(PathBuf::from(value(flag)?)),
            "-p" | "--control-plane-uri" => cplane = Some(value(flag)?),
            "-i" | "--compute-id" => compute_id = Some(value(flag)?),
            "-b" | "--pgbin" => pgbin = Some(PathBuf::from(value(flag)?)),
            "--external-http-port" => ext_port = Some(port_value(flag, &value(flag)?)?),
            "--http-port" => lakebase_http_port = Some(port_value(flag, &value(flag)?)?),
            "--privileged-role-name" => {
                let v = value(flag)?;
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    return Err(usage(format!("{flag}: {v:?} must match ^[a-z_]+$")));
                }
                privileged_role = Some(v);
            }
            "-r" | "--remote-ext-base-url" => remote_ext = Some(ext_base_url(flag, &value(flag)?)?),
            "--installed-extensions-collection-interval" => {
                let v = value(flag)?;
                let secs = v.parse::<u64>().map_err(|_| usage(format!("{flag}: expected seconds, got {v:?}")))?;
                ext_interval = Some(Duration::from_secs(secs));
            }
            "--dev" => {
                dev = true;
                log::info!("--dev: compute_ctl never stops pgbouncer or local_proxy, so this changes nothing");
            }
            "--lakebase-mode" => {
                let v = value(flag)?;
                match v.as_str() {
                    "false" => {}
                    "true" => log::warn!(
                        "{flag} true: Databricks' lakebase mode is internal to Databricks and not supported; \
                         running in Neon's mode"
                    ),
                    _ => return Err(usage(format!("{flag}: expected true or false, got {v:?}"))),
                }
            }
            "--pg-init-timeout" => {
                let v = value(flag)?;
                v.parse::<u64>().map_err(|_| usage(format!("{flag}: expected seconds, got {v:?}")))?;
                log::warn!("{flag} is enforced only in Neon's lakebase mode; accepted and ignored");
            }
            "--internal-http-port" => int_port = Some(port_value(flag, &value(flag)?)?),
            "--http-bind" => http_bind = Some(ip_value(flag, &value(flag)?)?),
            "--internal-http-bind" => internal_bind = Some(ip_value(flag, &value(flag)?)?),
            "--pg-user" => pg_user = Some(value(flag)?),
            "--http-auth-token-file" => token_file = Some(PathBuf::from(value(flag)?)),
            "--exit-delay" => exit_delay = Some(seconds(flag, &value(flag)?)?),
            "--cgroup" => cgroup = Some(value(flag)?),
            "--cgroup-root" => cgroup_root = Some(PathBuf::from(value(flag)?)),
            "--rsyslog-dir" => rsyslog_dir = Some(PathBuf::from(value(flag)?)),
            "--filecache-connstr" => filecache_connstr = Some(value(flag)?),
            "--vm-monitor-addr" => {
                let v = value(flag)?;
                vm_monitor_addr = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|_| usage(format!("{flag}: expected IP:PORT (no host names), got {v:?}")))?,
                );
            }
            "--remote-ext-config" => {
                value(flag)?;
                log::warn!("{flag} was renamed to --remote-ext-base-url in Neon; accepted and ignored");
            }
            "--set-disk-quota-for-fs" => {
                value(flag)?;
                log::warn!("{flag} is internal to Neon's VMs; accepted and ignored");
            }
            "--resize-swap-on-bind" => {
                log::warn!("{flag} configures Neon's VM swap, which this build does not manage; ignored")
            }
            other => return Err(usage(format!("unknown argument {other:?} (see --help)"))),
        }
        if let Some(v) = attached {
            return Err(usage(format!("{flag} takes no value, got {v:?}")));
        }
    }

    if let Some(port) = terminate {
        return Ok(Command::Terminate { port, token_file });
    }
    let pgdata = pgdata.ok_or_else(|| usage("-D/--pgdata is required".into()))?;
    let connstr = connstr.ok_or_else(|| usage("-C/--connstr is required".into()))?;
    connstr.parse::<postgres::Config>().map_err(|e| usage(format!("-C/--connstr: cannot parse {connstr:?}: {e}")))?;
    let spec = match (config, inline, file, cplane) {
        (Some(c), None, None, None) => SpecSource::Config(c),
        (None, Some(s), None, None) => SpecSource::Inline(s),
        (None, None, Some(f), None) => SpecSource::File(f),
        (None, None, None, Some(u)) => SpecSource::ControlPlane(u.trim_end_matches('/').to_string()),
        (None, None, None, None) => SpecSource::Wait,
        _ => {
            return Err(usage(
                "give at most one of -c/--config, -s/--spec, -S/--spec-path, -p/--control-plane-uri".into(),
            ));
        }
    };
    let (external_http_port, internal_http_port) = match (lakebase_http_port, ext_port, int_port) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(usage("--http-port cannot be used with --external-http-port or --internal-http-port".into()));
        }
        (Some(p), None, None) => {
            (p, p.checked_add(1).ok_or_else(|| usage("--http-port: the internal port would be 65536".into()))?)
        }
        (None, e, i) => (e.unwrap_or(3080), i.unwrap_or(3081)),
    };
    let pgbin = pgbin.or_else(|| env("POSTGRES_PATH").map(PathBuf::from)).unwrap_or_else(|| "postgres".into());
    let compute_id = compute_id.unwrap_or_else(|| {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format!("compute-{secs}")
    });
    Ok(Command::Run(Box::new(Args {
        pgdata,
        connstr,
        spec,
        pgbin,
        external_http_port,
        internal_http_port,
        http_bind,
        internal_http_bind: internal_bind.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        compute_id,
        pg_user: pg_user.unwrap_or_else(|| "postgres".into()),
        http_auth_token_file: token_file,
        exit_delay: exit_delay.unwrap_or(Duration::from_secs(30)),
        autoscaling: Autoscaling {
            enabled: env("AUTOSCALING").is_some(),
            cgroup: cgroup.unwrap_or_else(|| crate::cgroup::DEFAULT_NAME.into()),
            cgroup_root,
            filecache_connstr,
            vm_monitor_addr: vm_monitor_addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 10301))),
        },
        privileged_role_name: privileged_role.unwrap_or_else(|| DEFAULT_PRIVILEGED_ROLE.into()),
        remote_ext_base_url: remote_ext,
        installed_extensions_interval: ext_interval.unwrap_or(Duration::from_secs(3600)),
        dev,
        pre_stop_checkpoint: pre_stop_checkpoint.unwrap_or(Duration::from_secs(10)),
        rsyslog_dir: rsyslog_dir.unwrap_or_else(|| crate::rsyslog::DEFAULT_DIR.into()),
    })))
}

/// Neon's check of `--remote-ext-base-url`: trailing slashes trimmed, exactly one added; a
/// URL with a query part is refused.
fn ext_base_url(flag: &str, v: &str) -> Result<String> {
    let rest = v.strip_prefix("http://").or_else(|| v.strip_prefix("https://"));
    let host = rest.map(|r| r.split('/').next().unwrap_or(""));
    if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
        return Err(usage(format!("{flag}: {v:?} is not an http:// or https:// URL")));
    }
    if v.contains('?') {
        return Err(usage(format!("{flag}: {v:?} must not have query parameters")));
    }
    Ok(format!("{}/", v.trim_end_matches('/')))
}

fn seconds(flag: &str, v: &str) -> Result<Duration> {
    let secs: f64 = v
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .ok_or_else(|| usage(format!("{flag}: expected seconds, got {v:?}")))?;
    Ok(Duration::from_secs_f64(secs))
}

/// `plan`'s own flags: -C and exactly one spec source.
fn parse_plan(argv: &[String]) -> Result<Command> {
    let mut connstr = None;
    let mut specs = Vec::new();
    let mut privileged = DEFAULT_PRIVILEGED_ROLE.to_string();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let (flag, attached) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            attached.clone().or_else(|| it.next().cloned()).ok_or_else(|| usage(format!("plan: {flag} needs a value")))
        };
        match flag {
            "--privileged-role-name" => {
                let v = value()?;
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    return Err(usage(format!("plan: {flag}: {v:?} must match ^[a-z_]+$")));
                }
                privileged = v;
            }
            "-C" | "--connstr" => connstr = Some(value()?),
            "-s" | "--spec" => specs.push(PlanSpec::Inline(value()?)),
            "-S" | "--spec-path" => specs.push(PlanSpec::File(value()?.into())),
            "-c" | "--config" => specs.push(PlanSpec::Config(value()?.into())),
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(usage(format!("plan: unknown argument {other:?} (see --help)"))),
        }
    }
    let connstr = connstr.ok_or_else(|| usage("plan: -C/--connstr is required".into()))?;
    connstr
        .parse::<postgres::Config>()
        .map_err(|e| usage(format!("plan: -C/--connstr: cannot parse {connstr:?}: {e}")))?;
    let spec = match specs.len() {
        1 => specs.remove(0),
        0 => return Err(usage("plan: give the spec with -S FILE, -s JSON or -c FILE".into())),
        _ => return Err(usage("plan: give only one of -S, -s, -c".into())),
    };
    Ok(Command::Plan(PlanArgs { connstr, spec, privileged_role_name: privileged }))
}

fn ip_value(flag: &str, v: &str) -> Result<IpAddr> {
    v.parse::<IpAddr>().map_err(|_| usage(format!("{flag}: not an IP address: {v:?}")))
}

fn port_value(flag: &str, v: &str) -> Result<u16> {
    v.parse::<u16>().map_err(|_| usage(format!("{flag}: expected a port number, got {v:?}")))
}

#[cfg(test)]
mod tests;
