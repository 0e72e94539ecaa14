//! What each command does. `run` dispatches a parsed command line.

pub mod bench;
pub mod bench_mlp;
pub mod demo;
pub mod eval;
pub mod lbfgs;
pub mod mlp;
pub mod qjam;
pub mod roofline;
pub mod train;

use std::time::Duration;

use anyhow::{Context, Result};
use cohort::data::loaders::{load_fashion_mnist, named::FASHION_MNIST, Split};
use cohort::{Cluster, ClusterBuilder, DataChannel, Dataset, Registry, WorkerSpec};

use crate::cli::{Cli, Command, LaunchArgs, TrainCommand};

/// Runs a parsed command line.
pub fn run(cli: Cli, registry: &Registry) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Train(TrainCommand::Linear(args)) => train::linear(args).map(|_| ()),
        Command::Train(TrainCommand::Mlp(args)) => mlp::run(args),
        Command::Train(TrainCommand::Sae(args)) => train::sae(args).map(|_| ()),
        Command::Train(TrainCommand::Softmax(args)) => train::softmax(args).map(|_| ()),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::Worker => cohort::worker::serve_stdio(registry).context("worker mode"),
    }
}

/// The default worker spec: one local process per core.
pub fn default_workers() -> String {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    format!("local:{cores}")
}

/// The worker specs from `--workers` and `--hostfile` (default: one local process per core).
pub fn worker_specs(workers: Option<&str>, launch: &LaunchArgs) -> Result<(Vec<WorkerSpec>, String)> {
    let mut specs = Vec::new();
    let mut shown = Vec::new();
    if let Some(w) = workers {
        specs.extend(WorkerSpec::parse_list(w)?);
        shown.push(w.to_string());
    }
    if let Some(path) = &launch.hostfile {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read hostfile {}", path.display()))?;
        specs.extend(WorkerSpec::parse_hostfile(&text, &path.display().to_string())?);
        shown.push(format!("hostfile {}", path.display()));
    }
    if specs.is_empty() {
        let d = default_workers();
        specs = WorkerSpec::parse_list(&d)?;
        shown.push(d);
    }
    Ok((specs, shown.join(" + ")))
}

/// A cluster builder configured from the launch flags.
pub fn builder(specs: Vec<WorkerSpec>, launch: &LaunchArgs) -> Result<ClusterBuilder> {
    let positive = |name: &str, v: f64| -> Result<Duration> {
        if v.is_finite() && v > 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            anyhow::bail!("--{name} must be a positive number of seconds, got {v}")
        }
    };
    let mut b = Cluster::builder()
        .workers(specs)
        .heartbeat_timeout(positive("heartbeat-timeout", launch.heartbeat_timeout)?)
        .connect_timeout(positive("connect-timeout", launch.connect_timeout)?)
        .data_channel(launch.data_channel.parse::<DataChannel>().map_err(anyhow::Error::msg)?);
    for opt in &launch.ssh_options {
        let (k, v) = opt
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--ssh-option {opt:?} must look like KEY=VALUE, e.g. IdentityFile=~/.ssh/id"))?;
        b = b.ssh_option(k, v);
    }
    if let Some(bin) = &launch.worker_binary {
        if !bin.is_file() {
            anyhow::bail!("--worker-binary {} is not a file", bin.display());
        }
        b = b.remote_binary(bin);
    }
    Ok(b)
}

/// Parses `--workers`/`--hostfile` (or the default) and starts the cluster.
pub fn start_cluster(workers: Option<&str>, launch: &LaunchArgs) -> Result<(Cluster, String)> {
    let (specs, shown) = worker_specs(workers, launch)?;
    let cluster = builder(specs, launch)?.start().with_context(|| format!("starting workers {shown}"))?;
    Ok((cluster, shown))
}

/// Loads a split of a named data set (`fashion-mnist`).
pub fn named_dataset(name: &str, split: Split) -> Result<Dataset<f32>> {
    match name {
        FASHION_MNIST => Ok(load_fashion_mnist(split)?),
        other => anyhow::bail!("unknown data set {other:?}; cohort knows: {FASHION_MNIST}"),
    }
}

/// A cluster started from the training flags with one dataset loaded onto it, and how long each step took.
pub struct Started<T> {
    /// The running cluster.
    pub cluster: Cluster,
    /// The worker spec as shown to the user.
    pub worker_spec: String,
    /// The loaded dataset.
    pub handle: cohort::DatasetHandle<T>,
    /// When starting began (for the wall time).
    pub started: std::time::Instant,
    /// Time to start the workers and finish their handshakes.
    pub startup: Duration,
    /// Time to load the dataset onto them.
    pub load: Duration,
}

/// Starts the workers of `--workers`/`--hostfile` and loads `data` onto them, timing both.
pub fn start_and_load<T: cohort::Element>(c: &crate::cli::CommonArgs, data: &cohort::Dataset<T>) -> Result<Started<T>> {
    let started = std::time::Instant::now();
    let (mut cluster, worker_spec) = start_cluster(c.workers.as_deref(), &c.launch)?;
    let startup = started.elapsed();
    let handle = cluster.load(data)?;
    let load = started.elapsed() - startup;
    Ok(Started { cluster, worker_spec, handle, started, startup, load })
}
