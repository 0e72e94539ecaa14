//! What each command does. `run` dispatches a parsed command line.

pub mod bench;
pub mod demo;
pub mod train;

use std::time::Duration;

use anyhow::{Context, Result};
use cohort::{Cluster, Registry, WorkerSpec};

use crate::cli::{Cli, Command, TrainCommand};

/// Runs a parsed command line.
pub fn run(cli: Cli, registry: &Registry) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Train(TrainCommand::Linear(args)) => train::linear(args).map(|_| ()),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Worker => cohort::worker::serve_stdio(registry).context("worker mode"),
    }
}

/// The default worker spec: one local process per core.
pub fn default_workers() -> String {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    format!("local:{cores}")
}

/// Parses `--workers` (or the default) and starts the cluster.
pub fn start_cluster(workers: Option<&str>, heartbeat_timeout: f64) -> Result<(Cluster, String)> {
    let spec = workers.map_or_else(default_workers, str::to_string);
    let specs = WorkerSpec::parse_list(&spec)?;
    if !(heartbeat_timeout.is_finite() && heartbeat_timeout > 0.0) {
        anyhow::bail!("--heartbeat-timeout must be a positive number of seconds, got {heartbeat_timeout}");
    }
    let cluster = Cluster::builder()
        .workers(specs)
        .heartbeat_timeout(Duration::from_secs_f64(heartbeat_timeout))
        .start()
        .with_context(|| format!("starting workers {spec}"))?;
    Ok((cluster, spec))
}
