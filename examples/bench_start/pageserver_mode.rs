//! Pageserver mode: compute_ctl syncs the safekeepers (stand-in: a wrapper script that prints
//! an LSN), fetches a basebackup from the stand-in pageserver and starts Postgres on it;
//! against the floor of `tar -xf` of the same tar plus `postgres -D`.

use super::Bench;
use super::common::{self, PGBIN_DIR, chmod, load_average, run_compute_ctl, run_postgres};
use super::pageserver::StandIn;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

const TENANT: &str = "b0554b632bd4d547a63b86c3630317e8";
const TIMELINE: &str = "2414a61ffc94e428f14b5758fe308e13";
const SYNC_LSN: &str = "0/1000028";

pub fn run(b: &Bench, runs: usize) {
    let tar = make_tar(b);
    let size = std::fs::metadata(&tar).unwrap().len();
    let bindir = wrapper(&b.root);
    let ps = StandIn::start(false);
    ps.add_tar(TENANT, TIMELINE, &tar);
    let mut spec = b.spec.clone();
    spec["pageserver_connstring"] = ps.connstr().into();
    spec["safekeeper_connstrings"] = serde_json::json!(["127.0.0.1:1"]);
    let spec_path = b.root.join("spec-pageserver.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let ours_dir = b.root.join("ps-pgdata");
    let floor_dir = b.root.join("floor-pgdata");
    let postgres = Path::new(&bindir).join("postgres");
    println!("pageserver mode: basebackup of {:.1} MiB through the stand-in pageserver", size as f64 / 1048576.0);

    let (mut floor, mut ours) = (Vec::new(), Vec::new());
    for round in 0..=runs {
        // Both sides begin without a PGDATA; removing the last one is not timed.
        for d in [&ours_dir, &floor_dir] {
            let _ = std::fs::remove_dir_all(d);
        }
        let floor_run = || {
            common::settle();
            let t0 = Instant::now();
            std::fs::create_dir(&floor_dir).unwrap();
            b.launch.give(&floor_dir);
            chmod(&floor_dir, 0o700);
            let mut untar = b.launch.command("tar");
            untar.arg("-xf").arg(&tar).arg("-C").arg(&floor_dir).stderr(Stdio::inherit());
            assert!(untar.status().unwrap().success(), "tar -xf failed");
            run_postgres(b.launch, &postgres, &floor_dir, t0)
        };
        let ours_run = || {
            common::settle();
            run_compute_ctl(b.compute_ctl_command(&b.bin, &ours_dir, &spec_path, &bindir), b.http_port, &ours_dir)
        };
        // Each side goes first in every other round (see the local mode).
        let (f, c) = if round % 2 == 0 {
            let f = floor_run();
            (f, ours_run())
        } else {
            let c = ours_run();
            (floor_run(), c)
        };
        if round > 0 {
            floor.push(f);
            ours.push(c);
        }
    }
    println!("pageserver mode (load average after: {})", load_average());
    let (f, c) = common::report("pageserver mode", &floor, &ours, 1.2);
    println!("RESULT start/pageserver_floor {f:.1} ms");
    println!("RESULT start/pageserver_compute_ctl_status {c:.1} ms baseline=start/pageserver_floor target=1.2");
}

/// The local PGDATA (configured by compute_ctl, cleanly shut down) as a tar with entries at
/// its top, as a pageserver sends it.
fn make_tar(b: &Bench) -> PathBuf {
    let tar = b.root.join("basebackup.tar");
    let names: Vec<String> = std::fs::read_dir(&b.pgdata)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "postmaster.opts")
        .collect();
    let st = std::process::Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&b.pgdata).args(&names).status();
    assert!(st.unwrap().success(), "tar -cf failed");
    chmod(&tar, 0o644);
    tar
}

/// A bin directory whose `postgres` answers `--sync-safekeepers` with an LSN at once and
/// otherwise execs the real binary; both sides start Postgres through it.
fn wrapper(root: &Path) -> String {
    let bindir = root.join("bin");
    std::fs::create_dir_all(&bindir).unwrap();
    for tool in std::fs::read_dir(PGBIN_DIR).unwrap().flatten() {
        if tool.file_name() != "postgres" {
            std::os::unix::fs::symlink(tool.path(), bindir.join(tool.file_name())).unwrap();
        }
    }
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --sync-safekeepers ]; then echo {SYNC_LSN}; exit 0; fi\nexec {PGBIN_DIR}/postgres \"$@\"\n"
    );
    std::fs::write(bindir.join("postgres"), script).unwrap();
    chmod(&bindir.join("postgres"), 0o755);
    chmod(&bindir, 0o755);
    bindir.to_str().unwrap().to_string()
}
