//! The `cohort` executable. In a worker process (started by a cohort master) it serves the master and exits;
//! otherwise it parses the command line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cohort_cli::launch::PROCESS_START.get_or_init(std::time::Instant::now);
    let registry = cohort_cli::registry();
    cohort_cli::signals::ignore_sigint_in_workers();
    cohort::worker::run_if_worker(&registry);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COHORT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cohort_cli::cli::Cli::parse();
    match cohort_cli::commands::run(cli, &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
