//! Command-line definitions (clap). Parsing only; the work happens in `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cohort_ml::train::Schedule;
use serde::Serialize;

/// Defaults that several commands share, in one place.
pub mod defaults {
    /// Seed of data generation, initialisation and shuffling.
    pub const SEED: u64 = 42;
    /// Optimizer iterations of the full-batch commands.
    pub const ITERATIONS: usize = 100;
    /// Seconds a worker may stay silent (not even a heartbeat) before it is declared lost.
    pub const HEARTBEAT_TIMEOUT: f64 = 3.0;
    /// Seconds between a worker's heartbeats.
    pub const HEARTBEAT_INTERVAL: f64 = 0.25;
    /// Seconds an ssh host or a TCP data channel may take to answer.
    pub const CONNECT_TIMEOUT: f64 = 10.0;
    /// The named data set of the classifiers.
    pub const DATASET: &str = "fashion-mnist";
    /// Learning rate of Adam on the MLP.
    pub const ADAM_LR: f32 = 0.005;
    /// Learning rate of momentum SGD on the MLP.
    pub const SGD_LR: f32 = 0.05;
    /// Most chunks of a patch data set (sparse autoencoder): enough for 64 workers. Fewer when the data is small:
    /// `commands::train::sae_chunks` cuts patches by cost, at least `MIN_CHUNK_FLOPS` of work per chunk.
    pub const SAE_CHUNKS: usize = 64;
    /// Chunks of the MLP's full-batch (L-BFGS) mode: each chunk returns a whole gradient, so fewer chunks cost less.
    pub const LBFGS_CHUNKS: usize = 64;
    /// Epochs of `cohort demo`.
    pub const DEMO_EPOCHS: usize = 3;
}

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
    Train(Box<TrainCommand>),
    /// Run a benchmark and print a table.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Evaluate a model saved with `--save-model` on a data set.
    Eval(EvalArgs),
    /// Write a generated data set to a file.
    #[command(subcommand)]
    Gen(crate::commands::gen::GenCommand),
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
    #[arg(long, default_value_t = defaults::HEARTBEAT_TIMEOUT)]
    pub heartbeat_timeout: f64,
    /// Seconds between a worker's heartbeats.
    #[arg(long, default_value_t = defaults::HEARTBEAT_INTERVAL)]
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
            heartbeat_timeout: defaults::HEARTBEAT_TIMEOUT,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
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
    #[arg(long, default_value_t = defaults::DEMO_EPOCHS)]
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
    Mlp(MlpArgs),
    /// Sparse autoencoder (UFLDL) on random 8×8 image patches by distributed L-BFGS.
    Sae(SaeArgs),
    /// Softmax regression with L2 decay on a named data set by distributed L-BFGS.
    Softmax(SoftmaxArgs),
    /// Train through parameter servers: workers run their own mini-batch loops (pull, gradient, push) under a
    /// consistency mode (BSP, SSP, ASP, async) while sharded, optionally replicated servers apply the updates.
    Ps(PsArgs),
}

/// Arguments of `cohort train ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// The model: `softmax` or `mlp` (Fashion-MNIST), `sparse` (sparse logistic regression on libsvm files,
    /// --train/--test, or generated), or `linear` (least squares on generated data).
    #[arg(long, default_value = "softmax")]
    pub model: String,
    /// Server processes: a count of local ones (`2`) or groups like the workers' (`local:2`, `ssh://host?slots=2`).
    /// Each owns a contiguous key range of the parameters.
    #[arg(long, default_value = "1")]
    pub servers: String,
    /// When a read may proceed: `bsp` (every update of the previous clock applied), `ssp:S` (at most S clocks
    /// behind the fastest), `asp:S,W` (S adapted to the workers' speed gap, a barrier every W clocks), `async`.
    #[arg(long, default_value = "bsp")]
    pub consistency: String,
    /// The servers' update rule: `sgd:LR`, `momentum:LR,MU`, `adagrad:LR`, `adam:LR` (default per model).
    #[arg(long)]
    pub rule: Option<String>,
    /// Servers holding each key range (chain replication; 2 or more survives a server's loss).
    #[arg(long, default_value_t = 1)]
    pub replication: usize,
    /// Mini-batch rows per clock.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Passes over the data (all workers together); sets the clocks per worker.
    #[arg(long, default_value_t = 3.0)]
    pub epochs: f64,
    /// Clocks (mini-batches) per worker, instead of --epochs.
    #[arg(long)]
    pub clocks: Option<u64>,
    /// Model block scheduling (dense models): `KEYS,THRESHOLD,PERIOD`, e.g. `64,0.5,8` — blocks of KEYS keys whose
    /// update per key is below THRESHOLD times the mean over the blocks are pushed and pulled less often (at least
    /// every PERIOD clocks).
    #[arg(long, value_name = "KEYS,THRESHOLD,PERIOD")]
    pub blocks: Option<String>,
    /// Randomly varying worker speed: each clock's compute takes a random factor in [1, 1 + JITTER] longer.
    #[arg(long, default_value_t = 0.0)]
    pub jitter: f32,
    /// Seconds between evaluations of the model during the run (an accuracy-over-time curve).
    #[arg(long, value_name = "SECS")]
    pub eval_every: Option<f64>,
    /// Stop when a worker's mean loss is not finite or exceeds this many times the first one reported, keeping
    /// the last good model (0: never stop).
    #[arg(long, default_value_t = cohort::cluster::DEFAULT_DIVERGENCE)]
    pub divergence: f64,
    /// Named data set of `softmax` and `mlp`.
    #[arg(long, default_value = defaults::DATASET)]
    pub dataset: String,
    /// Train on the first N rows only (softmax, mlp), or generate N rows (sparse without --train, linear).
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// `sparse`: the training file (libsvm, 1-based indices; gzip accepted).
    #[arg(long, value_name = "PATH")]
    pub train: Option<PathBuf>,
    /// `sparse`: the test file.
    #[arg(long, value_name = "PATH")]
    pub test: Option<PathBuf>,
    /// `sparse`: features (keys) of the model; generated data uses this many.
    #[arg(long, default_value_t = 1 << 20)]
    pub features: u64,
    /// Flags shared by every training command (--workers, --straggler, --seed, --report, --save-model ...).
    #[command(flatten)]
    pub common: CommonArgs,
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
    #[arg(long, default_value_t = defaults::ITERATIONS)]
    pub iterations: usize,
    /// Seed for data generation and initialisation.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Write a JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Cut the data into this many chunks (default depends only on the row count). The trained model is
    /// bit-identical for any worker count at a fixed chunk count.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Save the trained model here (safetensors, with the architecture and training settings in its metadata;
    /// `cohort eval` and any safetensors reader open it).
    #[arg(long, value_name = "PATH")]
    pub save_model: Option<PathBuf>,
    /// Checkpoint the run into this directory: every --checkpoint-every iterations or epochs, on Ctrl-C, when a
    /// step fails and at the end (atomically: temporary file, fsync, rename; a manifest with a checksum).
    #[arg(long, value_name = "DIR")]
    pub checkpoint: Option<PathBuf>,
    /// Iterations (L-BFGS, gradient descent) or epochs (mini-batch training) between checkpoints (default: 10
    /// iterations, 1 epoch).
    #[arg(long, value_name = "K", default_value_t = 0, hide_default_value = true)]
    pub checkpoint_every: usize,
    /// Continue the run checkpointed in DIR: give the same command and settings; the workers are started and the
    /// data loaded anew, and the run goes on from the checkpoint to the model an uninterrupted run ends with.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Write one JSON line per iteration or epoch here (loss, accuracy where known, seconds, bytes), flushed as
    /// it goes.
    #[arg(long, value_name = "PATH")]
    pub log_jsonl: Option<PathBuf>,
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
    /// Flags shared by every training command.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Arguments of `cohort train softmax`.
#[derive(Debug, Args)]
pub struct SoftmaxArgs {
    /// Named data set (train split for training, test split for the test accuracy).
    #[arg(long, default_value = defaults::DATASET)]
    pub dataset: String,
    /// Train on the first N rows of the training split only (default: all).
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// L2 weight decay λ on the weights.
    #[arg(long, default_value_t = 1e-4)]
    pub lambda: f64,
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
    #[arg(long, default_value = defaults::DATASET)]
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
    /// MLP models trained without --raw-pixels carry their input standardisation; others read the pixels as
    /// they are. Evaluate on the first N rows of the split only.
    #[arg(long, value_name = "N")]
    pub rows: Option<usize>,
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Round-trip time and bytes of an empty map-reduce round, per worker count.
    Overhead(OverheadArgs),
    /// Time to start ssh workers with the binary copied (cold) and cached (warm).
    Bootstrap(BootstrapArgs),
    /// Weimer's figures: objective vs passes (sequential SGD vs model averaging) and time per pass, CSV + SVG.
    Psgd(PsgdArgs),
    /// The seed's MLP parameter sweep (workers, neurons, hidden layers, epochs) relative to a baseline.
    Sweep(SweepArgs),
    /// Kill the master (SIGKILL) mid-run, resume from its checkpoint in a new process, and check the final model
    /// equals an uninterrupted run's; prints the resume time and the checkpoint cost.
    Resume(ResumeArgs),
    /// qjam's sparse-autoencoder benchmark (its Tables 1 and 2): L-BFGS time per worker count and patch count.
    Qjam(QjamArgs),
    /// The launcher matrix: one small training job under local workers, the RANK/WORLD_SIZE contract, srun,
    /// sbatch, salloc with --workers slurm, mpirun and mpiexec; start-up times and model hashes side by side.
    Launchers(crate::bench::launchers::LaunchersArgs),
    /// The parameter server's consistency modes (BSP, SSP, ASP, async) with and without a straggler: time to a
    /// target accuracy, final accuracy, bytes, staleness; block scheduling; a server killed under replication 2.
    Consistency(crate::bench::consistency::ConsistencyArgs),
    /// Worker faults: SIGKILL or SIGSTOP a random worker at a random moment of L-BFGS softmax and model-averaging
    /// runs; completed runs, identical models, detection and recovery times; then a straggler with even and
    /// speed-weighted placement.
    Faults(FaultsArgs),
    /// The machine's peak (GEMM f32/f64, memory bandwidth) and each model's map against it, with the framework
    /// overhead of a round on 1 and N workers.
    Roofline(crate::bench::roofline::RooflineArgs),
}

/// Arguments of `cohort bench faults`.
#[derive(Debug, Args)]
pub struct FaultsArgs {
    /// Runs per scenario and signal.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Local worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Scenarios: `softmax` (L-BFGS on Fashion-MNIST) and `avg` (model averaging on the MLP).
    #[arg(long, default_value = "softmax,avg")]
    pub scenarios: String,
    /// Signals, each with its own runs: `kill` (SIGKILL) and `stop` (SIGSTOP).
    #[arg(long, default_value = "kill,stop")]
    pub signals: String,
    /// L-BFGS iterations of the softmax scenario.
    #[arg(long, default_value_t = 10)]
    pub iterations: usize,
    /// Epochs of the model-averaging scenario.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Use the first N training rows (default: all 60 000).
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// Seconds of silence before a worker is declared lost.
    #[arg(long, default_value_t = defaults::HEARTBEAT_TIMEOUT)]
    pub heartbeat_timeout: f64,
    /// Seed of the fault schedule (which worker, when) and of the models.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// How many times slower the straggler is (1 skips the straggler comparison).
    #[arg(long, default_value_t = 3.0)]
    pub straggler: f32,
    /// Rounds per placement in the straggler comparison.
    #[arg(long, default_value_t = 30)]
    pub straggler_rounds: usize,
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
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Also write the table as CSV here.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Also draw mean iteration time against workers (one line per patch count, qjam's beside) as SVG here.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Seconds a worker may stay silent (no frame, not even a heartbeat) before it is declared lost. Workers
    /// heartbeat from their own thread, so a long computation is never mistaken for a stall.
    #[arg(long, default_value_t = defaults::HEARTBEAT_TIMEOUT)]
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

/// How the MLP is optimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam on mini-batches.
    Adam,
    /// SGD with momentum on mini-batches.
    Sgd,
    /// Full-batch L-BFGS, one map-reduce round per evaluation (deterministic across worker counts; the data is cut
    /// into 64 chunks unless --chunks says otherwise).
    Lbfgs,
}

/// How mini-batch workers synchronise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Parallel SGD with model averaging: each worker trains on its rows, models are averaged.
    Avg,
    /// Synchronous data-parallel SGD: the gradient is averaged every mini-batch step.
    Bsp,
}

/// Arguments of `cohort train mlp`.
#[derive(Debug, Args, Clone)]
pub struct MlpArgs {
    /// Data set: `fashion-mnist` (found as `cohort::data::loaders` describes) or `generated` (offline stand-in).
    #[arg(long, default_value = defaults::DATASET)]
    pub dataset: String,
    /// Look for the data set only in this directory (instead of $COHORT_DATA, ./data, /usr/share/datasets).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Feed the pixels as they are ([0, 1]) instead of standardising every feature with the training set's mean
    /// and standard deviation.
    #[arg(long)]
    pub raw_pixels: bool,
    /// Layer widths, inputs first and classes last, e.g. `784,32,10` (overrides --hidden/--depth).
    #[arg(long)]
    pub layers: Option<String>,
    /// Units per hidden layer (with --depth, when --layers is not given).
    #[arg(long, default_value_t = 32)]
    pub hidden: usize,
    /// Number of hidden layers.
    #[arg(long, default_value_t = 1)]
    pub depth: usize,
    /// Passes over the training data (mini-batch optimizers).
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Mini-batch rows.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Optimizer. With `lbfgs`, --iterations sets the number of L-BFGS iterations.
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerKind,
    /// Learning rate (default: 0.005 for Adam, 0.05 for SGD).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Learning-rate schedule over the epochs: `constant`, or `cosine` (from --lr down towards 0, set per epoch).
    #[arg(long, default_value = "cosine")]
    pub schedule: Schedule,
    /// Momentum of SGD.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Synchronisation of mini-batch workers.
    #[arg(long, value_enum, default_value = "avg")]
    pub sync: SyncMode,
    /// With --sync avg: average the models every K mini-batches (0: once per pass over the data).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub avg_every: usize,
    /// With --sync avg: block momentum of the average — 0 (plain model averaging), a value in [0, 1), or `auto`
    /// for 1 − 1/N (blockwise model-update filtering).
    #[arg(long, default_value = "0", value_name = "MU")]
    pub block_momentum: String,
    /// L2 weight decay (L-BFGS only).
    #[arg(long, default_value_t = 0.0)]
    pub lambda: f64,
    /// Train on the first N training rows only.
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// Evaluate on the first N test rows only.
    #[arg(long, value_name = "N")]
    pub test_rows: Option<usize>,
    /// Write the training curves (loss and accuracy per epoch) as SVG here.
    #[arg(long, value_name = "PATH")]
    pub plot: Option<PathBuf>,
    /// Flags shared by every training command.
    #[command(flatten)]
    pub common: CommonArgs,
}

impl MlpArgs {
    /// The arguments of `cohort train mlp ARGS…` (every flag not given takes its default), for commands that
    /// train the MLP on their own terms (`demo`, `bench sweep`).
    pub fn parse_from(args: &[&str]) -> anyhow::Result<MlpArgs> {
        use clap::FromArgMatches;
        let cmd = <MlpArgs as Args>::augment_args(clap::Command::new("mlp"));
        let matches = cmd.try_get_matches_from(std::iter::once("mlp").chain(args.iter().copied()))?;
        Ok(MlpArgs::from_arg_matches(&matches)?)
    }
}

/// Arguments of `cohort bench psgd`.
#[derive(Debug, Args)]
pub struct PsgdArgs {
    /// Worker counts; 1 is sequential SGD, the others model averaging once per pass (local workers).
    #[arg(long, default_value = "1,2,4,8")]
    pub workers: String,
    /// Passes over the data per worker count.
    #[arg(long, default_value_t = 10)]
    pub passes: usize,
    /// Data set: fashion-mnist or generated.
    #[arg(long, default_value = defaults::DATASET)]
    pub dataset: String,
    /// Train on the first N rows only.
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// Layer widths.
    #[arg(long, default_value = "784,32,10")]
    pub layers: String,
    /// Mini-batch rows.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Update rule on each worker: `adam` or `sgd` (with momentum 0.9).
    #[arg(long, default_value = "adam")]
    pub optimizer: String,
    /// Learning rate (constant: the figure compares the averaging, not a schedule).
    #[arg(long, default_value_t = 0.002)]
    pub lr: f32,
    /// Multiply the learning rate by the number of workers for model averaging (the linear scaling rule).
    #[arg(long)]
    pub scale_lr: bool,
    /// Average every K mini-batches (0: once per pass).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub avg_every: usize,
    /// Block momentum of the average: 0 (plain model averaging), a value in [0, 1), or `auto` for 1 − 1/N.
    #[arg(long, default_value = "0", value_name = "MU")]
    pub block_momentum: String,
    /// Seed.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Directory for psgd_objective.{csv,svg} and psgd_time.{csv,svg}.
    #[arg(long, default_value = "target/bench-psgd")]
    pub out: PathBuf,
}

/// Arguments of `cohort bench sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// A reduced grid (two values per parameter) for a quick look.
    #[arg(long)]
    pub quick: bool,
    /// Data set: fashion-mnist or generated.
    #[arg(long, default_value = defaults::DATASET)]
    pub dataset: String,
    /// Train on the first N rows only.
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// Seed.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Also write every run as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

/// Arguments of `cohort bench resume`.
#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Kill-and-resume runs per scenario.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Scenarios: `softmax` (L-BFGS softmax regression on Fashion-MNIST) and `avg` (the MLP by model averaging
    /// on generated data), comma-separated.
    #[arg(long, default_value = "softmax,avg")]
    pub scenarios: String,
    /// Local workers of every run.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Iterations of the softmax scenario.
    #[arg(long, default_value_t = 60)]
    pub iterations: usize,
    /// Epochs of the model-averaging scenario.
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    /// Training rows of both scenarios (default: all 60 000 of Fashion-MNIST; 20 000 generated rows).
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
}
