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
    /// Seconds to wait for an ssh host or a TCP data channel to answer.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds a worker may stay silent before it is declared stalled.
    #[arg(long, default_value_t = 20.0)]
    pub heartbeat_timeout: f64,
}

/// Arguments of `cohort demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Workers: comma-separated groups such as `local:4` or `ssh://user@host?slots=2` (default: one local
    /// process per core).
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
    /// Workers: comma-separated groups such as `local:4` or `ssh://user@host:2222?slots=8` (default: one local
    /// process per core).
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
    /// The machine's peak (GEMM f32/f64, memory bandwidth) and each model's map against it, with the framework
    /// overhead of a round on 1 and N workers.
    Roofline(crate::commands::roofline::RooflineArgs),
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
    /// Chunks per data set (default: the `cohort train sae` default, by cost: 4 for 1 000 patches, up to 64).
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
    /// Seconds a worker may stay silent before it is declared stalled.
    #[arg(long, default_value_t = 20.0)]
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
