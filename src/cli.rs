//! Command-line definitions (clap). Parsing only; the work happens in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run machine-learning jobs in parallel across worker processes and machines.
#[derive(Debug, Parser)]
#[command(name = "cohort", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train the showcase model on local worker processes (offline; the command a newcomer runs first).
    Demo(DemoArgs),
    /// Train a model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Run a benchmark and print a table.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Evaluate a model saved with `--save-model` on a data set.
    Eval(EvalArgs),
    /// Write an sbatch script that runs a cohort command on a Slurm cluster (master in the batch step, one worker
    /// per task started with srun).
    SlurmScript(crate::commands::slurm_script::SlurmScriptArgs),
    /// Serve a master over stdin/stdout (started by cohort itself).
    #[command(hide = true)]
    Worker,
}

/// How workers are reached and watched: flags shared by every command that starts workers.
#[derive(Debug, Args, Clone)]
pub struct LaunchArgs {
    /// Hostfile, one host per line in the MPI style: `host slots=4`, `user@host:2222 slots=2`, `#` comments.
    /// Its hosts are added to those of --workers.
    #[arg(long, value_name = "PATH")]
    pub hostfile: Option<PathBuf>,
    /// Passed to ssh as `-o KEY=VALUE` (repeatable), e.g. `--ssh-option IdentityFile=~/.ssh/cluster`.
    #[arg(long = "ssh-option", value_name = "KEY=VALUE")]
    pub ssh_options: Vec<String>,
    /// Binary to copy to ssh hosts instead of this one (a build for the remote platform).
    #[arg(long, value_name = "PATH")]
    pub worker_binary: Option<PathBuf>,
    /// How ssh workers exchange frames: `stdio` (over the ssh channel) or `tcp` (direct connection).
    #[arg(long, default_value = "stdio")]
    pub data_channel: String,
    /// Seconds to wait for an ssh host or a TCP data channel to answer (default 10), or for the ranks of a
    /// launcher's job to reach each other and the tasks of `--workers slurm` to connect (default 60).
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<f64>,
    /// The job secret shared by the ranks of a launcher's job (64 hex digits in a file only its owner can read,
    /// on a shared file system); instead of the COHORT_SECRET variable.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Seconds a worker may stay silent (no frame, not even a heartbeat) before it is declared lost. Workers
    /// heartbeat from their own thread, so a long computation is never mistaken for a stall.
    #[arg(long, default_value_t = 3.0)]
    pub heartbeat_timeout: f64,
    /// Seconds between a worker's heartbeats.
    #[arg(long, default_value_t = 0.25)]
    pub heartbeat_interval: f64,
    /// Worker losses tolerated before the job stops with an error listing each one (0: the first loss is fatal).
    #[arg(long, default_value_t = cohort::cluster::DEFAULT_MAX_FAILURES)]
    pub max_failures: usize,
    /// Spare workers that replace lost remote workers, e.g. `ssh://node9?slots=2` (hostfile lines marked
    /// `spare` are added). Lost local workers are replaced by new local processes.
    #[arg(long, value_name = "SPEC")]
    pub spares: Option<String>,
    /// Do not replace lost local workers; move their chunks to the survivors instead.
    #[arg(long)]
    pub no_respawn: bool,
    /// Model replicas for model averaging and synchronous SGD (default: the number of workers). Fixing it makes
    /// the trained model bit-identical for any number of worker processes.
    #[arg(long, value_name = "R")]
    pub replicas: Option<usize>,
    /// How chunks are spread: `weighted` (by measured speed, the default) or `even`.
    #[arg(long, default_value = "weighted")]
    pub placement: String,
    /// Slow worker W (0-based, in start order) down FACTOR times, to study stragglers (repeatable), e.g. `1:3`.
    #[arg(long, value_name = "W:FACTOR")]
    pub straggler: Vec<String>,
}

impl Default for LaunchArgs {
    /// The defaults of the flags, for commands that start workers without taking every flag.
    fn default() -> Self {
        LaunchArgs {
            hostfile: None,
            ssh_options: Vec::new(),
            worker_binary: None,
            data_channel: "stdio".into(),
            connect_timeout: None,
            secret_file: None,
            heartbeat_timeout: 3.0,
            heartbeat_interval: 0.25,
            max_failures: cohort::cluster::DEFAULT_MAX_FAILURES,
            spares: None,
            no_respawn: false,
            replicas: None,
            placement: "weighted".into(),
            straggler: Vec::new(),
        }
    }
}

/// Arguments of `cohort demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Workers: comma-separated groups such as `local:4` or `ssh://user@host?slots=2`; `slurm`, `slurm:N` or
    /// `slurm?slots=K` inside a Slurm allocation; `ranks` when a launcher (srun, mpirun, Kubernetes) starts this
    /// command N times (the default when its variables are set). Default: one local process per core.
    #[arg(long)]
    pub workers: Option<String>,
    /// How workers are reached.
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Write a JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Epochs of training.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Train on the first N rows only (default: all of Fashion-MNIST, or 20 000 generated rows).
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// Look for Fashion-MNIST only in this directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Models `cohort train` knows.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Least-squares linear regression by full-batch gradient descent on a generated data set.
    Linear(LinearArgs),
    /// Multilayer perceptron on Fashion-MNIST: model averaging, synchronous SGD or full-batch L-BFGS.
    Mlp(crate::commands::mlp::MlpArgs),
    /// Sparse autoencoder (UFLDL) on random 8×8 image patches by distributed L-BFGS.
    Sae(SaeArgs),
    /// Softmax regression with L2 decay on a named data set by distributed L-BFGS.
    Softmax(SoftmaxArgs),
}

/// Flags every training command takes.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Workers: comma-separated groups such as `local:4` or `ssh://user@host:2222?slots=8`; `slurm`, `slurm:N`
    /// or `slurm?slots=K` inside a Slurm allocation; `ranks` when a launcher (srun, mpirun, Kubernetes) starts
    /// this command N times (the default when its variables are set). Default: one local process per core.
    #[arg(long)]
    pub workers: Option<String>,
    /// How workers are reached.
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Optimizer iterations.
    #[arg(long, default_value_t = 100)]
    pub iterations: usize,
    /// Seed for data generation and initialisation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write a JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Cut the data into this many chunks (default depends only on the row count). The trained model is
    /// bit-identical for any worker count at a fixed chunk count.
    #[arg(long)]
    pub chunks: Option<usize>,
}

/// Arguments of `cohort train linear`.
#[derive(Debug, Args)]
pub struct LinearArgs {
    /// Rows of the generated data set.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Features per row.
    #[arg(long, default_value_t = 32)]
    pub features: usize,
    /// Gradient-descent step size.
    #[arg(long, default_value_t = 0.5)]
    pub lr: f64,
    /// Flags shared by every training command.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Arguments of `cohort train sae`.
#[derive(Debug, Args)]
pub struct SaeArgs {
    /// Number of random 8×8 patches to train on.
    #[arg(long, default_value_t = 10_000)]
    pub patches: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 25)]
    pub hidden: usize,
    /// Cut the patches from the PNG/JPEG files in this directory (converted to grayscale) instead of the
    /// Fashion-MNIST training images.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Save the trained model here (for `cohort eval`).
    #[arg(long, value_name = "PATH")]
    pub save_model: Option<PathBuf>,
    /// Flags shared by every training command.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Arguments of `cohort train softmax`.
#[derive(Debug, Args)]
pub struct SoftmaxArgs {
    /// Named data set (train split for training, test split for the test accuracy).
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Train on the first N rows of the training split only (default: all).
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// L2 weight decay λ on the weights.
    #[arg(long, default_value_t = 1e-4)]
    pub lambda: f64,
    /// Save the trained model here (for `cohort eval`).
    #[arg(long, value_name = "PATH")]
    pub save_model: Option<PathBuf>,
    /// Flags shared by every training command.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Arguments of `cohort eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A model file written by `--save-model`.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Named data set to evaluate on.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// Which split: `test` or `train`.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Sparse autoencoders: number of patches cut from the split's images to measure the cost on.
    #[arg(long, default_value_t = 10_000)]
    pub patches: usize,
    /// Sparse autoencoders: seed of the patch sampling.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Round-trip time and bytes of an empty map-reduce round, per worker count.
    Overhead(OverheadArgs),
    /// Time to start ssh workers with the binary copied (cold) and cached (warm).
    Bootstrap(BootstrapArgs),
    /// Weimer's figures: objective vs passes (sequential SGD vs model averaging) and time per pass, CSV + SVG.
    Psgd(crate::commands::bench_mlp::PsgdArgs),
    /// The seed's MLP parameter sweep (workers, neurons, hidden layers, epochs) relative to a baseline.
    Sweep(crate::commands::bench_mlp::SweepArgs),
    /// qjam's sparse-autoencoder benchmark (its Tables 1 and 2): L-BFGS time per worker count and patch count.
    Qjam(QjamArgs),
    /// The launcher matrix: one small training job under local workers, the RANK/WORLD_SIZE contract, srun,
    /// sbatch, salloc with --workers slurm, mpirun and mpiexec; start-up times and model hashes side by side.
    Launchers(crate::commands::bench_launch::LaunchersArgs),
}

/// Arguments of `cohort bench qjam`.
#[derive(Debug, Args)]
pub struct QjamArgs {
    /// Worker counts (each cell starts its own `local:N` cluster).
    #[arg(long, default_value = "1,2,4,8,16")]
    pub workers: String,
    /// Patch counts (data set sizes).
    #[arg(long, default_value = "1000,10000,100000")]
    pub patches: String,
    /// L-BFGS iterations per cell.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Runs of each cell; the fastest (by mean iteration time) is kept, so that a burst of other load on the
    /// machine does not decide the table.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Hidden units.
    #[arg(long, default_value_t = 25)]
    pub hidden: usize,
    /// Chunks per data set (default: the `cohort train sae` default, 64, so that up to 64 workers have work).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Cut the patches from the PNG/JPEG files in this directory instead of Fashion-MNIST.
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// Seed for patch sampling and initialisation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also write the table as CSV here.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Also draw mean iteration time against workers (one line per patch count, qjam's beside) as SVG here.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Seconds a worker may stay silent (no frame, not even a heartbeat) before it is declared lost. Workers
    /// heartbeat from their own thread, so a long computation is never mistaken for a stall.
    #[arg(long, default_value_t = 3.0)]
    pub heartbeat_timeout: f64,
}

/// Arguments of `cohort bench bootstrap`.
#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Remote workers, e.g. `ssh://user@host?slots=2` (with --hostfile, or instead of it).
    #[arg(long)]
    pub workers: Option<String>,
    /// How workers are reached.
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Measurements of each kind.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

/// Arguments of `cohort bench overhead`.
#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// Worker counts to measure (each runs `local:N`), or one worker spec such as `ssh://host?slots=4`.
    #[arg(long, default_value = "1,2,4,8,16,32,64")]
    pub workers: String,
    /// How workers are reached.
    #[command(flatten)]
    pub launch: LaunchArgs,
    /// Timed rounds per worker count.
    #[arg(long, default_value_t = 2000)]
    pub rounds: usize,
    /// Bytes of parameters sent with each round.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Also write the table as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}
