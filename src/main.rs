//! The binary: parse arguments, set up logging, run, map the outcome to an exit code.

use compute_ctl::args::{self, Command};
use std::process::ExitCode;

/// musl's allocator maps and unmaps every large block; see `LargeBlockCache`.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: compute_ctl::LargeBlockCache = compute_ctl::LargeBlockCache;

fn main() -> ExitCode {
    compute_ctl::time::mark_process_start();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // Before parsing, so that the warnings about ignored Neon flags are seen.
    compute_ctl::logger::init(std::env::var("RUST_LOG").ok().as_deref());
    let command = match args::parse(&argv, |k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("compute_ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let args = match command {
        Command::Help => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("compute_ctl {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Probe(port) => return compute_ctl::http::probe(port),
        Command::Terminate { port, token_file } => return compute_ctl::http::terminate(port, token_file.as_deref()),
        Command::Plan(plan) => {
            compute_ctl::logger::init(std::env::var("RUST_LOG").ok().as_deref());
            return match compute_ctl::plan::run(&plan, &mut std::io::stdout().lock()) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("compute_ctl plan: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Run(args) => args,
    };
    match compute_ctl::compute::run(*args) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            log::error!("{}", e.report());
            ExitCode::from(1)
        }
    }
}
