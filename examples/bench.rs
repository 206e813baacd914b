//! The benchmark report: one command runs every benchmark and prints one table.
//!
//!     cargo run --release --example bench [-- NAME...]
//!
//! It builds the release binaries and examples (and the static musl binary when that target is
//! installed), prints the machine it runs on and the binary's size and linkage, then runs every
//! `examples/bench_*.rs` (or only those named, e.g. `start http`) one after the other as
//! subprocesses, passing their output through, and ends with a Markdown table of what they
//! reported, ready for the README.
//!
//! # The convention for `examples/bench_*.rs`
//!
//! A benchmark prints whatever helps a reader, plus one line per figure:
//!
//! ```text
//! RESULT <key> <value> <unit> [baseline=<key>] [target=<number>]
//! ```
//!
//! - `key` has no spaces: `<bench>/<what>`, e.g. `start/floor`, `catalog/noop_reapply`;
//! - `value` is a plain number (a median where it is a timing); `unit` has no spaces (`ms`,
//!   `MiB`, `%`, `x`, `req_per_s`);
//! - `baseline=KEY` names the baseline measured in the same run, reported on its own RESULT
//!   line with the same unit (before or after); the table shows the ratio value/baseline;
//! - `target=N` is the goal: the largest acceptable ratio when there is a baseline, else the
//!   largest acceptable value; the table says whether it was met.
//!
//! A benchmark runs the binary named by the `COMPUTE_CTL_BIN` environment variable (this
//! runner sets it to the binary it built, the static one when there is one), cleans up after
//! itself, and exits non-zero if it could not measure. It should finish in a few minutes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const MUSL: &str = "x86_64-unknown-linux-musl";

struct Row {
    key: String,
    value: f64,
    unit: String,
    baseline: Option<String>,
    target: Option<f64>,
}

fn main() {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();

    println!("== machine\n{}", machine());

    println!("== build");
    run_ok(Command::new(&cargo).current_dir(&root).args(["build", "--release", "--bins", "--examples"]));
    let mut rows = Vec::new();
    let glibc = root.join("target/release/compute_ctl");
    let bin = if musl_installed() {
        run_ok(Command::new(&cargo).current_dir(&root).args([
            "build",
            "--release",
            "--bin",
            "compute_ctl",
            "--target",
            MUSL,
        ]));
        root.join(format!("target/{MUSL}/release/compute_ctl"))
    } else {
        println!("the {MUSL} target is not installed (rustup target add {MUSL}): measuring the glibc build");
        glibc.clone()
    };
    let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
    let linkage = file_says(&bin);
    println!("binary under test: {} ({size} bytes): {linkage}", bin.display());
    rows.push(Row {
        key: "binary/size".into(),
        value: size as f64 / (1024.0 * 1024.0),
        unit: "MiB".into(),
        baseline: None,
        target: Some(4.0),
    });
    if bin != glibc
        && let Ok(m) = std::fs::metadata(&glibc)
    {
        rows.push(Row {
            key: "binary/size_glibc".into(),
            value: m.len() as f64 / (1024.0 * 1024.0),
            unit: "MiB".into(),
            baseline: None,
            target: None,
        });
    }

    let mut benches: Vec<String> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs")?.strip_prefix("bench_").map(str::to_string))
        .collect();
    benches.sort_by_key(|b| (order(b), b.clone()));
    for want in &only {
        if !benches.contains(want) {
            println!("== bench_{want}: skipped, examples/bench_{want}.rs does not exist yet");
        }
    }
    let mut failed = Vec::new();
    for name in benches.iter().filter(|b| only.is_empty() || only.contains(b)) {
        println!("== bench_{name}");
        let t = Instant::now();
        let exe = root.join(format!("target/release/examples/bench_{name}"));
        match run_bench(&exe, &bin) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                println!("bench_{name} FAILED: {e}");
                failed.push(name.clone());
            }
        }
        println!("(bench_{name} took {:.0} s)", t.elapsed().as_secs_f64());
    }
    for missing in ["start", "catalog", "basebackup", "subscriptions", "http"] {
        if !benches.iter().any(|b| b == missing) && only.is_empty() {
            println!("(examples/bench_{missing}.rs does not exist yet: skipped)");
        }
    }

    println!("\n== report ({:.0} s in all)\n", started.elapsed().as_secs_f64());
    print!("{}", table(&rows));
    if !failed.is_empty() {
        println!("\nfailed: {}", failed.join(", "));
        std::process::exit(1);
    }
}

/// The issues' order: start-up, catalog, storage, subscriptions, HTTP; others after.
fn order(name: &str) -> usize {
    ["start", "catalog", "basebackup", "subscriptions", "http"].iter().position(|b| *b == name).unwrap_or(99)
}

fn run_ok(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?} failed: {st}");
}

fn musl_installed() -> bool {
    let out = Command::new("rustc").args(["--print", "target-libdir", "--target", MUSL]).output();
    out.is_ok_and(|o| o.status.success() && Path::new(String::from_utf8_lossy(&o.stdout).trim()).exists())
}

fn file_says(bin: &Path) -> String {
    match Command::new("file").arg("-b").arg(bin).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).split(", BuildID").next().unwrap_or("").trim().to_string(),
        Err(e) => format!("(file: {e})"),
    }
}

/// Runs one benchmark, passing its output through, and returns its RESULT lines.
fn run_bench(exe: &Path, bin: &Path) -> Result<Vec<Row>, String> {
    let mut child = Command::new(exe)
        .env("COMPUTE_CTL_BIN", bin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let mut rows = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
        println!("{line}");
        if let Some(rest) = line.strip_prefix("RESULT ") {
            match parse_result(rest) {
                Some(r) => rows.push(r),
                None => println!("(ignored a malformed RESULT line: {line:?})"),
            }
        }
    }
    let st = child.wait().map_err(|e| e.to_string())?;
    if st.success() { Ok(rows) } else { Err(format!("exited with {st}")) }
}

fn parse_result(rest: &str) -> Option<Row> {
    let mut parts = rest.split_whitespace();
    let key = parts.next()?.to_string();
    let value = parts.next()?.parse().ok()?;
    let unit = parts.next()?.to_string();
    let mut row = Row { key, value, unit, baseline: None, target: None };
    for p in parts {
        match p.split_once('=')? {
            ("baseline", k) => row.baseline = Some(k.to_string()),
            ("target", t) => row.target = Some(t.parse().ok()?),
            _ => return None,
        }
    }
    Some(row)
}

/// The Markdown table: each figure beside its baseline, with the ratio and the target.
fn table(rows: &[Row]) -> String {
    let by_key: BTreeMap<&str, &Row> = rows.iter().map(|r| (r.key.as_str(), r)).collect();
    let mut out = String::from("| benchmark | value | baseline | ratio | target |\n|---|---:|---|---:|---|\n");
    for r in rows {
        let base = r.baseline.as_deref().and_then(|k| by_key.get(k)).filter(|b| b.unit == r.unit && b.value > 0.0);
        let ratio = base.map(|b| r.value / b.value);
        let (baseline, ratio_text) = match (&r.baseline, base, ratio) {
            (_, Some(b), Some(x)) => (format!("{} {} {}", b.key, num(b.value), b.unit), format!("{x:.2}x")),
            (Some(k), _, _) => (format!("{k} (not reported)"), String::new()),
            _ => (String::new(), String::new()),
        };
        let target = match (r.target, ratio, r.baseline.is_some()) {
            (Some(t), Some(x), _) => format!("<= {t}x: {}", if x <= t { "met" } else { "MISSED" }),
            (Some(t), None, false) => format!("<= {t} {}: {}", r.unit, if r.value <= t { "met" } else { "MISSED" }),
            (Some(t), None, true) => format!("<= {t}x: no baseline"),
            (None, ..) => String::new(),
        };
        out.push_str(&format!("| {} | {} {} | {baseline} | {ratio_text} | {target} |\n", r.key, num(r.value), r.unit));
    }
    out
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() < 0.01 {
        format!("{v:.4}")
    } else {
        format!("{v:.2}")
    }
}

/// CPU, cores, memory, kernel, PostgreSQL and rustc versions: what the figures depend on.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map_or_else(|_| format!("{cmd}: not found"), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    format!(
        "{}, {cores} cores, {:.0} GiB, Linux {}, {}, {}",
        cpu.unwrap_or("unknown CPU"),
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        version("/usr/lib/postgresql/15/bin/postgres", "--version"),
        version("rustc", "-V")
    )
}
