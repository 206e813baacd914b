//! Cold start as an operator sees it (issue 18), next to the floor measured in the same run,
//! plus the idle cost of a running compute_ctl (issue 7).
//!
//!     cargo run --release --example bench_start [-- --runs N] [--mode local|pageserver|both]
//!         [--compare OTHER_COMPUTE_CTL] [--dev]
//!
//! Every process under test is launched the same way: as the `postgres` OS user (a setuid
//! between fork and exec, `Command::uid`) when we are root, with stdin and stdout on
//! /dev/null. Runs alternate between the two sides, N times each (default 15) after one
//! unrecorded round; medians and 90th percentiles are reported, with the load average, since
//! this machine is shared, and the median of the round-by-round differences and ratios (the
//! two sides of a round run back to back, so drift over the run cancels). Every measured start
//! begins after a sync(2), so that the write-back of the last start's files does not land in
//! the next one's measurement.
//!
//! **Local mode**, on one PGDATA made by initdb and configured by one compute_ctl start:
//! - floor: `postgres -D PGDATA` (same PGDATA, the `postgresql.conf` compute_ctl wrote) until
//!   `postmaster.pid` says `ready`, polled every millisecond;
//! - compute_ctl: from its exec (spec with `skip_pg_catalog_updates`) to the first `running`
//!   answer of `GET /status`, polled every millisecond over one keep-alive connection.
//!
//! **Pageserver mode**: a fresh small cluster (initdb, configured, shut down cleanly: tens of
//! MB) is the tar the stand-in pageserver of the tests serves; `postgres` is a wrapper script
//! whose `--sync-safekeepers` prints an LSN at once and which otherwise execs the real binary.
//! - floor: `tar -xf` of the same tar into an empty directory, then `postgres -D` through the
//!   same wrapper, until ready;
//! - compute_ctl: exec to `running` as above, PGDATA absent at the start (as the floor's).
//!
//! compute_ctl's time is split by its `start timing:` log line into main -> spawn of Postgres,
//! Postgres start (spawn -> `postmaster.pid` ready, as it saw it), ready -> `running`
//! published, and the rest (exec up to `main`, and the poll that sees `running`).
//!
//! On a machine shared with other jobs, `chrt -r 1 target/release/examples/bench_start ...`
//! runs the bench and everything it starts in the real-time class, so that the other jobs only
//! get the CPUs ours leave idle: the figures then come close to an idle machine's (README,
//! footnote 2 of the benchmark table).
//!
//! The binary under test is `$COMPUTE_CTL_BIN`, else the one this project ships: the static
//! musl build (the Docker image's, `.ci/build-static`), target/ARCH-unknown-linux-musl/release/
//! compute_ctl, built first with `$CARGO build --release --target ARCH-unknown-linux-musl` when
//! cargo runs us. `--dev` measures target/release/compute_ctl (glibc, dynamically linked)
//! instead: its exec alone costs about 1 ms more here (ld.so, glibc's start-up). Results are
//! printed as `RESULT` lines (see examples/bench.rs).

#[path = "bench_start/common.rs"]
mod common;
#[path = "bench_start/idle.rs"]
mod idle;
#[path = "../tests/integration/support/pageserver.rs"]
mod pageserver;
#[path = "bench_start/pageserver_mode.rs"]
mod pageserver_mode;
#[path = "support/mod.rs"]
mod support;

use common::{Launch, PGBIN_DIR, Run, chmod, compute_ctl_binary, load_average, run_compute_ctl, run_postgres};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = opt("--runs").map_or(15, |n| n.parse().expect("--runs takes a number"));
    let mode = opt("--mode").unwrap_or_else(|| "both".into());
    assert!(["local", "pageserver", "both"].contains(&mode.as_str()), "--mode is local, pageserver or both");
    let bin = if args.iter().any(|a| a == "--dev") { compute_ctl_binary() } else { shipped_binary() };
    println!("compute_ctl under test: {}", bin.display());
    let b = Bench::prepare(bin);
    println!("start-up: {runs} alternating runs per side; load average {}", load_average());

    // `--compare OTHER_BINARY`: a third series, interleaved with the others (before/after).
    let other = opt("--compare").map(PathBuf::from);
    if mode != "pageserver" {
        let postgres = Path::new(PGBIN_DIR).join("postgres");
        let mut bins = vec![b.bin.clone()];
        bins.extend(other.clone());
        let mut floor = Vec::new();
        let mut ours: Vec<Vec<Run>> = bins.iter().map(|_| Vec::new()).collect();
        for round in 0..=runs {
            // The order rotates every round, so no side always follows the same other side's
            // shutdown (whose checkpoint writes may still be draining).
            for k in 0..=bins.len() {
                let side = (k + round) % (bins.len() + 1);
                common::settle();
                if side == bins.len() {
                    let f = run_postgres(b.launch, &postgres, &b.pgdata, Instant::now());
                    // One unrecorded round first: page cache and first-exec costs are not
                    // what we measure.
                    if round > 0 {
                        floor.push(f);
                    }
                } else {
                    let cmd = b.compute_ctl_command(&bins[side], &b.pgdata, &b.spec_path, PGBIN_DIR);
                    let c = run_compute_ctl(cmd, b.http_port, &b.pgdata);
                    if round > 0 {
                        ours[side].push(c);
                    }
                }
            }
        }
        println!("local mode (load average after: {})", load_average());
        let (f, c) = common::report("local mode", &floor, &ours[0], 1.1);
        println!("RESULT start/floor {f:.1} ms");
        println!("RESULT start/compute_ctl_status {c:.1} ms baseline=start/floor target=1.1");
        println!("RESULT start/compute_ctl_extra {:.1} ms target=5", c - f);
        if let Some(other) = &other {
            println!("compared with {}:", other.display());
            common::report("compared", &floor, &ours[1], 1.1);
        }
    }
    if mode != "local" {
        pageserver_mode::run(&b, runs);
    }
    if mode == "both" {
        idle::idle(b.compute_ctl_command(&b.bin, &b.pgdata, &b.spec_path, PGBIN_DIR), b.http_port, &b.pgdata);
    }
}

/// `$COMPUTE_CTL_BIN`, else the static musl build of this machine's architecture (what the
/// image ships), built first when cargo runs us.
fn shipped_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("COMPUTE_CTL_BIN") {
        return PathBuf::from(p);
    }
    let triple = format!("{}-unknown-linux-musl", std::env::consts::ARCH);
    if let Some(cargo) = std::env::var_os("CARGO") {
        let st = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--target", &triple, "--bin", "compute_ctl"])
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "cargo build --release --target {triple} failed (`rustup target add {triple}`, or pass --dev to \
             measure target/release/compute_ctl)"
        );
    }
    // target/release/examples/bench_start -> target/<triple>/release/compute_ctl
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).expect("the bench runs from target/release/examples");
    let bin = target.join(&triple).join("release/compute_ctl");
    assert!(bin.exists(), "{} not found: build it with .ci/build-static, or pass --dev", bin.display());
    bin
}

/// One PGDATA, its ports and spec, under a directory removed on drop.
pub struct Bench {
    pub root: PathBuf,
    pub pgdata: PathBuf,
    pub spec: serde_json::Value,
    pub spec_path: PathBuf,
    pub bin: PathBuf,
    pub pg_port: u16,
    pub http_port: u16,
    pub launch: Launch,
    _ports: [std::fs::File; 2],
}

impl Bench {
    fn prepare(bin: PathBuf) -> Bench {
        let root = std::env::temp_dir().join(format!("compute_ctl-bench-start-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sock")).unwrap();
        let launch = Launch::detect();
        // compute_ctl runs as the Postgres user: it makes its staging directory in here.
        launch.give(&root);
        chmod(&root, 0o755);
        chmod(&root.join("sock"), 0o777);
        let pgdata = root.join("pgdata");
        std::fs::create_dir(&pgdata).unwrap();
        chmod(&pgdata, 0o700);
        launch.give(&pgdata);
        let mut initdb = launch.command(Path::new(PGBIN_DIR).join("initdb"));
        initdb.arg("-D").arg(&pgdata).args(["-U", "cloud_admin", "-E", "UTF8", "--locale=C.UTF-8", "--auth=trust"]);
        let out = initdb.output().expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

        // Ports claimed as the tests claim theirs, held (flock) while the bench runs.
        let (pg_port, pg_lock) = support::claim_port_pair();
        let (http_port, http_lock) = support::claim_port_pair();
        let spec_path = support::write_start_spec(&root, pg_port);
        let spec = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
        let ports = [pg_lock, http_lock];
        let b = Bench { root, pgdata, spec, spec_path, bin, pg_port, http_port, launch, _ports: ports };
        // The first start writes compute_ctl's configuration into PGDATA; both sides then
        // start the very same cluster.
        b.compute_ctl(&b.pgdata, &b.spec_path, PGBIN_DIR);
        b
    }

    /// compute_ctl on `pgdata` with the spec file `spec`, `-b BINDIR/postgres`.
    pub fn compute_ctl_command(&self, bin: &Path, pgdata: &Path, spec: &Path, bindir: &str) -> Command {
        let mut cmd = self.launch.command(bin);
        cmd.arg("-D").arg(pgdata);
        cmd.args(["-C", &format!("postgresql://cloud_admin@127.0.0.1:{}/postgres", self.pg_port)]);
        cmd.arg("-S").arg(spec).arg("-b").arg(format!("{bindir}/postgres"));
        cmd.args(["--http-port", &self.http_port.to_string(), "--http-bind", "127.0.0.1", "--exit-delay", "0"]);
        cmd
    }

    pub fn compute_ctl(&self, pgdata: &Path, spec: &Path, bindir: &str) -> Run {
        run_compute_ctl(self.compute_ctl_command(&self.bin, pgdata, spec, bindir), self.http_port, pgdata)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}
