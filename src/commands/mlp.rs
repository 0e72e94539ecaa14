//! `cohort train mlp`: the multilayer perceptron on Fashion-MNIST (or a generated stand-in), trained by parallel
//! SGD with model averaging (`--sync avg`), synchronous data-parallel SGD (`--sync bsp`) or full-batch L-BFGS
//! (`--optimizer lbfgs`). Prints the seed's per-epoch table and a final test evaluation; the same [`train`] serves
//! `cohort demo` and `cohort bench sweep`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use cohort::data::loaders::{find_named_in, load_mnist_like, named::FASHION_MNIST, search_dirs, Split};
use cohort::rng::Rng;
use cohort::{Cluster, Dataset, DatasetHandle};
use cohort_ml::mlp::full_batch::{FullBatch, MlpCostGrad};
use cohort_ml::mlp::jobs::{BspJob, BspState, PassStats, PsgdJob, PsgdState, TrainSpec};
use cohort_ml::mlp::optimizer::{Optimizer, OptimizerSpec};
use cohort_ml::mlp::Mlp;
use cohort_ml::optim::{FnObjective, Lbfgs, Stop};
use serde::Serialize;

use super::train::{fmt_loss, print_summary};
use super::{start_and_load, Started};
use crate::cli::CommonArgs;
use crate::plot::Chart;
use crate::progress::Progress;
use crate::report::{write_json, TrainReport};

/// Default chunk count of the full-batch (L-BFGS) mode, see [`train`].
pub const LBFGS_CHUNKS: usize = 64;

/// How the model is optimised.
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

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// The same rate every epoch.
    Constant,
    /// Half a cosine from the rate towards 0, evaluated at the middle of each epoch.
    Cosine,
}

impl Schedule {
    /// The factor on the learning rate in epoch `epoch` (1-based) of `epochs`.
    pub fn factor(self, epoch: usize, epochs: usize) -> f32 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let t = (epoch as f64 - 0.5) / epochs.max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }
}

/// Arguments of `cohort train mlp`.
#[derive(Debug, Args, Clone)]
pub struct MlpArgs {
    /// Data set: `fashion-mnist` (found as `cohort::data::loaders` describes) or `generated` (offline stand-in).
    #[arg(long, default_value = "fashion-mnist")]
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
    #[arg(long, value_enum, default_value = "cosine")]
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
    pub fn parse_from(args: &[&str]) -> Result<MlpArgs> {
        use clap::FromArgMatches;
        let cmd = <MlpArgs as Args>::augment_args(clap::Command::new("mlp"));
        let matches = cmd.try_get_matches_from(std::iter::once("mlp").chain(args.iter().copied()))?;
        Ok(MlpArgs::from_arg_matches(&matches)?)
    }
}

/// Training and test data, and where they came from.
pub struct MlpData {
    /// Training rows.
    pub train: Dataset<f32>,
    /// Test rows.
    pub test: Dataset<f32>,
    /// Human-readable origin, e.g. `fashion-mnist (/usr/share/datasets/fashion-mnist)`.
    pub source: String,
}

/// Loads `name` (`fashion-mnist` or `generated`), searching only `dir` if given, and keeps the first rows.
/// Unless `raw`, standardises the features with the training rows' statistics.
pub fn load_data(
    name: &str,
    dir: Option<&Path>,
    train_rows: Option<usize>,
    test_rows: Option<usize>,
    seed: u64,
    raw: bool,
) -> Result<MlpData> {
    let (train, test, source) = match name {
        FASHION_MNIST => {
            let dirs = dir.map_or_else(|| search_dirs(FASHION_MNIST), |d| vec![d.to_path_buf()]);
            let found = find_named_in(FASHION_MNIST, &dirs)?;
            let train = load_mnist_like::<f32>(&found, Split::Train)?;
            let test = load_mnist_like::<f32>(&found, Split::Test)?;
            (train, test, format!("{FASHION_MNIST} ({})", found.display()))
        }
        "generated" => {
            let train = generated(train_rows.unwrap_or(60_000), seed)?;
            let test = generated(test_rows.unwrap_or(10_000), seed ^ 0x7e57)?;
            (train, test, "generated (784 features, 10 classes)".to_string())
        }
        other => bail!("unknown --dataset {other:?}: use fashion-mnist or generated"),
    };
    let (train, test) = (head(train, train_rows)?, head(test, test_rows)?);
    let (train, test) = if raw { (train, test) } else { standardize(train, test)? };
    Ok(MlpData { train, test, source })
}

/// Scales every feature to zero mean and unit variance over the training rows (constant features are only
/// centred) and applies the same transformation to the test rows.
pub fn standardize(train: Dataset<f32>, test: Dataset<f32>) -> Result<(Dataset<f32>, Dataset<f32>)> {
    let d = train.cols();
    let n = train.rows().max(1) as f64;
    let mut mean = vec![0.0f64; d];
    let mut sq = vec![0.0f64; d];
    for row in train.values().chunks_exact(d) {
        for ((m, s), &v) in mean.iter_mut().zip(&mut sq).zip(row) {
            *m += f64::from(v);
            *s += f64::from(v) * f64::from(v);
        }
    }
    let scale: Vec<(f32, f32)> = mean
        .iter()
        .zip(&sq)
        .map(|(&m, &s)| {
            let mu = m / n;
            let sd = (s / n - mu * mu).max(0.0).sqrt();
            (mu as f32, if sd > 1e-6 { (1.0 / sd) as f32 } else { 1.0 })
        })
        .collect();
    let apply = |data: Dataset<f32>| -> Result<Dataset<f32>> {
        let mut values = data.values().to_vec();
        for row in values.chunks_exact_mut(d) {
            for (v, &(mu, inv)) in row.iter_mut().zip(&scale) {
                *v = (*v - mu) * inv;
            }
        }
        let mut out = Dataset::new(values, d)?;
        if let Some(l) = data.labels() {
            out = out.with_labels(l.to_vec())?;
        }
        Ok(out)
    };
    Ok((apply(train)?, apply(test)?))
}

/// The first `rows` rows of `data` (all if `None` or more than there are).
fn head(data: Dataset<f32>, rows: Option<usize>) -> Result<Dataset<f32>> {
    let n = rows.unwrap_or(usize::MAX).min(data.rows());
    if n == 0 {
        bail!("--train-rows/--test-rows must be at least 1");
    }
    if n == data.rows() {
        return Ok(data);
    }
    let d = data.cols();
    let labels = data.labels().map(|l| l[..n].to_vec());
    let mut out = Dataset::new(data.values()[..n * d].to_vec(), d)?;
    if let Some(l) = labels {
        out = out.with_labels(l)?;
    }
    Ok(out)
}

/// A generated stand-in for Fashion-MNIST: 28×28 "images" of 10 classes, each a noisy, randomly shifted copy of
/// its class's smooth random template, pixels in [0, 1]. Learnable, but not linearly trivial.
pub fn generated(rows: usize, seed: u64) -> Result<Dataset<f32>> {
    const SIDE: usize = 28;
    let mut rng = Rng::new(0xfa5e);
    // Templates: a few random Gaussian blobs per class (fixed across seeds, so train and test share them).
    let templates: Vec<Vec<f32>> = (0..10)
        .map(|_| {
            let blobs: Vec<(f64, f64, f64)> = (0..4)
                .map(|_| (4.0 + 20.0 * rng.uniform(), 4.0 + 20.0 * rng.uniform(), 2.0 + 4.0 * rng.uniform()))
                .collect();
            (0..SIDE * SIDE)
                .map(|p| {
                    let (r, c) = ((p / SIDE) as f64, (p % SIDE) as f64);
                    let v: f64 = blobs
                        .iter()
                        .map(|(br, bc, s)| (-((r - br).powi(2) + (c - bc).powi(2)) / (2.0 * s * s)).exp())
                        .sum();
                    v.min(1.0) as f32
                })
                .collect()
        })
        .collect();
    let mut rng = Rng::new(seed);
    let mut values = Vec::with_capacity(rows * SIDE * SIDE);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let class = rng.below(10) as usize;
        let (dr, dc) = (rng.below(5) as isize - 2, rng.below(5) as isize - 2);
        let gain = 0.15 + 0.35 * rng.uniform() as f32;
        for p in 0..SIDE * SIDE {
            let (r, c) = ((p / SIDE) as isize + dr, (p % SIDE) as isize + dc);
            let base = if (0..SIDE as isize).contains(&r) && (0..SIDE as isize).contains(&c) {
                templates[class][r as usize * SIDE + c as usize]
            } else {
                0.0
            };
            values.push((gain * base + 0.5 * rng.normal() as f32).clamp(0.0, 1.0));
        }
        labels.push(class as f32);
    }
    Ok(Dataset::new(values, SIDE * SIDE)?.with_labels(labels)?)
}

/// Figures of one epoch (or, for L-BFGS, one iteration).
#[derive(Debug, Clone, Serialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch (each batch at the parameters it was trained at; L-BFGS: the full-batch
    /// loss).
    pub train_loss: f64,
    /// Training accuracy over the epoch, measured the same way (L-BFGS: not measured, NaN → null).
    pub train_accuracy: Option<f64>,
    /// Test accuracy after the epoch.
    pub test_accuracy: Option<f64>,
    /// Seconds the epoch took (training only; the test evaluation is not counted).
    pub seconds: f64,
}

/// The report of `cohort train mlp --report`: the common training report plus the MLP's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MlpReport {
    /// The fields every training report has.
    #[serde(flatten)]
    pub base: TrainReport,
    /// Data set used.
    pub dataset: String,
    /// Layer widths.
    pub layers: Vec<usize>,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Synchronisation (mini-batch optimizers).
    pub sync: SyncMode,
    /// Mini-batches between model averages (0: once per pass).
    pub avg_every: usize,
    /// Mini-batch rows.
    pub batch: usize,
    /// Learning rate (mini-batch optimizers).
    pub lr: Option<f32>,
    /// Epochs trained (L-BFGS: iterations).
    pub epochs: usize,
    /// Mean seconds per epoch (L-BFGS: per iteration).
    pub mean_epoch_seconds: f64,
    /// Figures per epoch.
    pub per_epoch: Vec<EpochRecord>,
    /// Rows of the test set.
    pub test_rows: usize,
    /// Mean loss on the test set.
    pub test_loss: f64,
    /// Accuracy on the test set.
    pub test_accuracy: f64,
}

/// How much [`train`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// The per-epoch table, the summary and a progress bar.
    Full,
    /// Nothing (benchmarks print their own tables).
    Quiet,
}

/// `cohort train mlp`.
pub fn run(args: MlpArgs) -> Result<()> {
    let data = load_data(
        &args.dataset,
        args.data_dir.as_deref(),
        args.train_rows,
        args.test_rows,
        args.common.seed,
        args.raw_pixels,
    )?;
    train(&args, &data, Verbosity::Full)?;
    Ok(())
}

/// The layer widths from `--layers` or `--hidden`/`--depth`, checked against the data.
pub fn resolve_layers(args: &MlpArgs, data: &Dataset<f32>) -> Result<Mlp> {
    let classes =
        data.labels().context("the training data has no labels")?.iter().fold(0.0f32, |m, &v| m.max(v)) as usize + 1;
    let layers = match &args.layers {
        Some(spec) => Mlp::parse_layers(spec).context("--layers")?,
        None => {
            if args.hidden == 0 {
                bail!("--hidden must be at least 1");
            }
            let mut l = vec![data.cols()];
            l.extend(std::iter::repeat_n(args.hidden, args.depth));
            l.push(classes.max(2));
            l
        }
    };
    if layers.first() != Some(&data.cols()) {
        bail!("--layers starts with {:?} inputs but the data has {} values per row", layers.first(), data.cols());
    }
    Mlp::new(&layers).context("--layers")
}

/// Trains as `args` says on `data` with a fresh cluster and evaluates on the test set.
pub fn train(args: &MlpArgs, data: &MlpData, verbosity: Verbosity) -> Result<MlpReport> {
    let c = &args.common;
    let mlp = resolve_layers(args, &data.train)?;
    if args.epochs == 0 {
        bail!("--epochs must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let lr = match args.optimizer {
        OptimizerKind::Adam => Some(args.lr.unwrap_or(0.005)),
        OptimizerKind::Sgd => Some(args.lr.unwrap_or(0.05)),
        OptimizerKind::Lbfgs => None,
    };
    let spec = match args.optimizer {
        OptimizerKind::Adam => Some(OptimizerSpec::adam(lr.unwrap_or_default())),
        OptimizerKind::Sgd => Some(OptimizerSpec::Sgd { lr: lr.unwrap_or_default(), momentum: args.momentum }),
        OptimizerKind::Lbfgs => None,
    };
    if let Some(s) = &spec {
        s.validate().context("optimizer settings")?;
    }
    let mut train_data = data.train.clone();
    // L-BFGS: every chunk returns a full gradient (100 kB for 784-32-10) that the tree adds up, so fewer, larger
    // chunks cost less; 64 still spreads over up to 64 workers, and the result stays bit-identical for any count.
    let chunks = c.chunks.or((args.optimizer == OptimizerKind::Lbfgs).then(|| LBFGS_CHUNKS.min(train_data.chunks())));
    if let Some(chunks) = chunks {
        train_data = train_data.with_chunks(chunks)?;
    }

    let Started { mut cluster, worker_spec, handle, started, startup, load } = start_and_load(c, &train_data)?;
    let full = verbosity == Verbosity::Full;
    if full {
        println!(
            "MLP {:?} ({} parameters) on {}: {} training rows, {} test rows, {} workers ({}), {}",
            mlp.layers(),
            mlp.n_params(),
            data.source,
            train_data.rows(),
            data.test.rows(),
            cluster.num_workers(),
            worker_spec,
            describe(args, lr)
        );
    }

    let theta0 = mlp.init(c.seed);
    let run = match spec {
        Some(spec) => {
            let train_spec = TrainSpec {
                layers: mlp.layers().to_vec(),
                optimizer: spec,
                batch: args.batch,
                steps: if args.sync == SyncMode::Avg { args.avg_every } else { 0 },
                block_momentum: super::bench_mlp::block_momentum(&args.block_momentum, cluster.num_workers())?,
            };
            mini_batch(&mut cluster, &handle, &mlp, train_spec, theta0, args, data, full)?
        }
        None => lbfgs(&mut cluster, &handle, &mlp, theta0, args, data, full)?,
    };
    let wall = started.elapsed();
    let stats = cluster.stats();
    let workers = stats.workers;
    cluster.shutdown();

    let test = mlp.evaluate(&run.theta, &data.test.as_shard())?;
    let epochs = run.records.len();
    let train_seconds: f64 = run.records.iter().map(|r| r.seconds).sum();
    let report = MlpReport {
        base: TrainReport {
            job: "mlp".into(),
            worker_spec,
            workers,
            chunks: handle.chunks(),
            rows: train_data.rows(),
            seed: c.seed,
            iterations: run.iterations,
            final_loss: run.records.last().map_or(f64::NAN, |r| r.train_loss),
            loss_history: run.records.iter().map(|r| r.train_loss).collect(),
            wall_seconds: wall.as_secs_f64(),
            startup_seconds: startup.as_secs_f64(),
            load_seconds: load.as_secs_f64(),
            mean_iteration_seconds: run.iteration_time.as_secs_f64() / run.iterations.max(1) as f64,
            bytes_sent: stats.bytes_sent,
            bytes_received: stats.bytes_received,
            model_sha256: cohort::sha256_le(&run.theta),
            protocol_version: cohort::wire::PROTOCOL_VERSION,
            // The MLP report carries its own test figures below; L-BFGS counts are in `iterations`.
            evaluations: None,
            mean_evaluation_seconds: None,
            stop_reason: None,
            train_accuracy: None,
            test_accuracy: None,
        },
        dataset: data.source.clone(),
        layers: mlp.layers().to_vec(),
        optimizer: args.optimizer,
        sync: args.sync,
        avg_every: args.avg_every,
        batch: args.batch,
        lr,
        epochs,
        mean_epoch_seconds: train_seconds / epochs.max(1) as f64,
        per_epoch: run.records,
        test_rows: test.rows,
        test_loss: test.loss,
        test_accuracy: test.accuracy,
    };
    if let Some(path) = &args.plot {
        plot_curves(&report, path)?;
    }
    if full {
        println!("test evaluation: loss {}, accuracy {:.4} ({} rows)", fmt_loss(test.loss), test.accuracy, test.rows);
        println!("  mean epoch        {:.3} s", report.mean_epoch_seconds);
        print_summary(&report.base);
        if let Some(path) = &args.plot {
            println!("  plot              {}", path.display());
        }
        if let Some(path) = &c.report {
            write_json(path, &report)?;
            println!("  report            {}", path.display());
        }
    } else if let Some(path) = &c.report {
        write_json(path, &report)?;
    }
    Ok(report)
}

fn describe(args: &MlpArgs, lr: Option<f32>) -> String {
    match args.optimizer {
        OptimizerKind::Lbfgs => format!("full-batch L-BFGS, {} iterations", args.common.iterations),
        kind => {
            let opt =
                format!("{} lr {}", if kind == OptimizerKind::Adam { "Adam" } else { "SGD" }, lr.unwrap_or_default());
            match args.sync {
                SyncMode::Avg if args.avg_every == 0 => {
                    format!("{opt}, batch {}, model averaging once per pass", args.batch)
                }
                SyncMode::Avg => {
                    format!("{opt}, batch {}, model averaging every {} batches", args.batch, args.avg_every)
                }
                SyncMode::Bsp => format!("{opt}, batch {}, synchronous SGD (gradient averaged every step)", args.batch),
            }
        }
    }
}

/// What a training loop hands back.
struct RunOutcome {
    theta: Vec<f32>,
    records: Vec<EpochRecord>,
    /// Rounds (passes or L-BFGS iterations) and the time they took.
    iterations: usize,
    iteration_time: Duration,
}

fn print_header() {
    println!("{:>5}  {:>9}  {:>10}  {:>9}  {:>8}", "epoch", "accuracy", "loss", "test acc", "time (s)");
}

fn print_row(r: &EpochRecord) {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
    println!(
        "{:>5}  {:>9}  {:>10}  {:>9}  {:>8.3}",
        r.epoch,
        opt(r.train_accuracy),
        format!("{:.4}", r.train_loss),
        opt(r.test_accuracy),
        r.seconds
    );
}

/// Mini-batch training, model averaging or BSP, for `args.epochs` epochs.
#[allow(clippy::too_many_arguments)]
fn mini_batch(
    cluster: &mut Cluster,
    handle: &DatasetHandle<f32>,
    mlp: &Mlp,
    spec: TrainSpec,
    theta0: Vec<f32>,
    args: &MlpArgs,
    data: &MlpData,
    full: bool,
) -> Result<RunOutcome> {
    let rows = handle.rows() as u64;
    let session = cluster.open_session(args.common.seed);
    let progress = full.then(|| Progress::new("epoch", args.epochs));
    if full {
        print_header();
    }
    let mut records = Vec::new();
    let mut passes = 0;
    let mut pass_time = Duration::ZERO;
    let mut theta = theta0;
    // BSP: the master applies the updates; model averaging: the workers do.
    let mut optimizer = Optimizer::new(spec.optimizer, mlp.n_params());
    let mut psgd = PsgdState::new(spec.clone(), Vec::new());
    let mut bsp = BspState::new(spec.clone(), Vec::new());
    for epoch in 1..=args.epochs {
        let rate = spec.optimizer.with_lr(spec.optimizer.lr() * args.schedule.factor(epoch, args.epochs));
        psgd.spec.optimizer = rate;
        optimizer.set_spec(rate);
        let t = Instant::now();
        let mut stats = PassStats::default();
        while stats.seen < rows {
            let before = Instant::now();
            match args.sync {
                SyncMode::Avg => {
                    psgd.theta = std::mem::take(&mut theta);
                    psgd = cluster.pass(&PsgdJob, &session, &psgd, handle)?;
                    if let Some(e) = psgd.error.take() {
                        bail!("training failed: {e}");
                    }
                    theta = std::mem::take(&mut psgd.theta);
                    stats.add(psgd.stats);
                }
                SyncMode::Bsp => {
                    bsp.theta = std::mem::take(&mut theta);
                    bsp.grad = Vec::new();
                    bsp = cluster.pass(&BspJob, &session, &bsp, handle)?;
                    if let Some(e) = bsp.error.take() {
                        bail!("training failed: {e}");
                    }
                    theta = std::mem::take(&mut bsp.theta);
                    optimizer.step(&mut theta, &bsp.grad);
                    stats.add(bsp.stats);
                }
            }
            pass_time += before.elapsed();
            passes += 1;
            if stats.seen == 0 {
                bail!("no worker holds training rows");
            }
        }
        let seconds = t.elapsed().as_secs_f64();
        if !stats.loss().is_finite() {
            bail!("the training loss diverged ({}) in epoch {epoch}; lower --lr", stats.loss());
        }
        let test = mlp.evaluate(&theta, &data.test.as_shard())?;
        let record = EpochRecord {
            epoch,
            train_loss: stats.loss(),
            train_accuracy: Some(stats.accuracy()),
            test_accuracy: Some(test.accuracy),
            seconds,
        };
        if let Some(p) = &progress {
            p.step(epoch - 1, &format!("loss {:.4}, accuracy {:.4}", record.train_loss, stats.accuracy()));
        }
        if full {
            print_row(&record);
        }
        records.push(record);
    }
    if let Some(p) = &progress {
        p.finish();
    }
    cluster.close_session(session)?;
    Ok(RunOutcome { theta, records, iterations: passes, iteration_time: pass_time })
}

/// Full-batch L-BFGS: one map-reduce round per evaluation; deterministic across worker counts.
fn lbfgs(
    cluster: &mut Cluster,
    handle: &DatasetHandle<f32>,
    mlp: &Mlp,
    theta0: Vec<f32>,
    args: &MlpArgs,
    data: &MlpData,
    full: bool,
) -> Result<RunOutcome> {
    if !(args.lambda >= 0.0 && args.lambda.is_finite()) {
        bail!("--lambda must be ≥ 0, got {}", args.lambda);
    }
    let iterations = args.common.iterations;
    let objective = FullBatch { mlp: mlp.clone(), lambda: args.lambda };
    let x0: Vec<f64> = theta0.iter().map(|&v| f64::from(v)).collect();
    let progress = full.then(|| Progress::new("L-BFGS", iterations));
    if full {
        println!("{:>5}  {:>10}  {:>10}  {:>6}  {:>8}", "iter", "loss", "grad norm", "evals", "time (s)");
    }
    let mut records: Vec<EpochRecord> = Vec::new();
    let mut last = Instant::now();
    let t0 = Instant::now();
    let mut eval = FnObjective(|theta: &[f64]| -> Result<(f64, Vec<f64>)> {
        let partial = cluster.run(&MlpCostGrad, &objective.params(theta)?, handle)?;
        Ok(objective.finish(theta, &partial)?)
    });
    let result = Lbfgs::new(Stop { max_iterations: iterations, ..Stop::default() })
        .minimize_with(&mut eval, &x0, |record, _x| {
            if record.iteration > 0 {
                let r = EpochRecord {
                    epoch: record.iteration,
                    train_loss: record.cost,
                    train_accuracy: None,
                    test_accuracy: None,
                    seconds: last.elapsed().as_secs_f64(),
                };
                if let Some(p) = &progress {
                    p.step(record.iteration - 1, &format!("loss {:.4}", record.cost));
                }
                if full && (record.iteration <= 5 || record.iteration % 10 == 0 || record.iteration == iterations) {
                    println!(
                        "{:>5}  {:>10.4}  {:>10.3e}  {:>6}  {:>8.3}",
                        record.iteration, record.cost, record.grad_norm, record.evaluations, r.seconds
                    );
                }
                records.push(r);
            }
            last = Instant::now();
            ControlFlow::Continue(())
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(p) = &progress {
        p.finish();
    }
    let elapsed = t0.elapsed();
    if full {
        println!(
            "L-BFGS stopped after {} iterations ({} evaluations): {}",
            result.iterations, result.evaluations, result.stop
        );
    }
    let theta: Vec<f32> = result.x.iter().map(|&v| v as f32).collect();
    if let Some(last) = records.last_mut() {
        last.test_accuracy = Some(mlp.evaluate(&theta, &data.test.as_shard())?.accuracy);
    }
    Ok(RunOutcome { theta, records, iterations: result.iterations, iteration_time: elapsed })
}

/// Writes the loss and accuracy curves per epoch as one SVG chart.
pub fn plot_curves(report: &MlpReport, path: &Path) -> Result<()> {
    let pts = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        report.per_epoch.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect()
    };
    let x_label = if report.optimizer == OptimizerKind::Lbfgs { "iteration" } else { "epoch" };
    let title = format!("MLP {:?} on {}: training curves", report.layers, report.dataset);
    let mut chart = Chart::new(&title, x_label, "loss / accuracy").line("train loss", pts(&|r| Some(r.train_loss)));
    let acc = pts(&|r| r.train_accuracy);
    if !acc.is_empty() {
        chart = chart.line("train accuracy", acc);
    }
    chart = chart.line("test accuracy", pts(&|r| r.test_accuracy));
    chart.save(path)
}
