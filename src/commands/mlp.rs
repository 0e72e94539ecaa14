//! `cohort train mlp`: the multilayer perceptron on Fashion-MNIST (or a generated stand-in), trained by parallel
//! SGD with model averaging (`--sync avg`), synchronous data-parallel SGD (`--sync bsp`) or full-batch L-BFGS
//! (`--optimizer lbfgs`) — the steppers of `cohort_ml::train`. Prints the seed's per-epoch table and a final test
//! evaluation; the same [`train`] serves `cohort demo` and `cohort bench sweep`.

use anyhow::{bail, Context, Result};
use cohort::Dataset;
use cohort_ml::datasets::{self, Request, TrainTest};
use cohort_ml::mlp::full_batch::FullBatch;
use cohort_ml::mlp::jobs::TrainSpec;
use cohort_ml::mlp::optimizer::OptimizerSpec;
use cohort_ml::mlp::Mlp;
use cohort_ml::model_file::{self, Params};
use cohort_ml::train::{AveragingTrainer, BspTrainer, LbfgsTrainer, StepRecord, Stepper};
use serde::Serialize;
use serde_json::json;

use crate::cli::{defaults, MlpArgs, OptimizerKind, SyncMode};
use crate::launch::{fit, Fitted};
use crate::plot::Chart;
use crate::report::{fmt_loss, print_summary, write_json, TrainReport};

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
    /// Epochs trained by this process (L-BFGS: iterations).
    pub epochs: usize,
    /// Mean seconds per epoch (L-BFGS: per iteration).
    pub mean_epoch_seconds: f64,
    /// Figures per epoch (L-BFGS: per iteration) of this process.
    pub per_epoch: Vec<StepRecord>,
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
    train(&args, &load(&args)?, Verbosity::Full).map(|_| ())
}

/// The data `args` asks for.
pub fn load(args: &MlpArgs) -> Result<TrainTest> {
    Ok(datasets::prepare(&Request {
        name: &args.dataset,
        dir: args.data_dir.as_deref(),
        train_rows: args.train_rows,
        test_rows: args.test_rows,
        seed: args.common.seed,
        raw: args.raw_pixels,
    })?)
}

/// The layer widths from `--layers` or `--hidden`/`--depth`, checked against the data.
pub fn resolve_layers(args: &MlpArgs, data: &Dataset<f32>) -> Result<Mlp> {
    let layers = match &args.layers {
        Some(spec) => Mlp::parse_layers(spec).context("--layers")?,
        None => {
            if args.hidden == 0 {
                bail!("--hidden must be at least 1");
            }
            let mut l = vec![data.cols()];
            l.extend(std::iter::repeat_n(args.hidden, args.depth));
            l.push(datasets::classes(data)?);
            l
        }
    };
    if layers.first() != Some(&data.cols()) {
        bail!("--layers starts with {:?} inputs but the data has {} values per row", layers.first(), data.cols());
    }
    Mlp::new(&layers).context("--layers")
}

/// Parses `--block-momentum` for `workers` workers: `auto` is `1 − 1/N`; one worker never filters.
pub fn block_momentum(text: &str, workers: usize) -> Result<f32> {
    let mu = match text.trim() {
        "auto" => 1.0 - 1.0 / workers.max(1) as f32,
        t => t
            .parse::<f32>()
            .map_err(|_| anyhow::anyhow!("--block-momentum {t:?}: expected a number in [0, 1) or auto"))?,
    };
    if !(0.0..1.0).contains(&mu) {
        bail!("--block-momentum must be in [0, 1), got {mu}");
    }
    Ok(if workers <= 1 { 0.0 } else { mu })
}

/// Trains as `args` says on `data` with a fresh cluster and evaluates on the test set.
pub fn train(args: &MlpArgs, data: &TrainTest, verbosity: Verbosity) -> Result<MlpReport> {
    let c = &args.common;
    let mlp = resolve_layers(args, &data.train)?;
    if args.epochs == 0 || args.batch == 0 {
        bail!("--epochs must be at least 1 and --batch at least 1");
    }
    let lr = match args.optimizer {
        OptimizerKind::Adam => Some(args.lr.unwrap_or(defaults::ADAM_LR)),
        OptimizerKind::Sgd => Some(args.lr.unwrap_or(defaults::SGD_LR)),
        OptimizerKind::Lbfgs => None,
    };
    let mut train = data.train.clone();
    // L-BFGS: every chunk returns a whole gradient that the tree adds up, so fewer, larger chunks cost less.
    let lbfgs = args.optimizer == OptimizerKind::Lbfgs;
    if let Some(chunks) = c.chunks.or(lbfgs.then(|| defaults::LBFGS_CHUNKS.min(train.chunks()))) {
        train = train.with_chunks(chunks)?;
    }
    let full = verbosity == Verbosity::Full;
    let workers =
        crate::launch::worker_specs(c.workers.as_deref(), &c.launch)?.0.iter().map(|s| s.slots()).sum::<usize>();
    if full {
        println!(
            "MLP {:?} ({} parameters) on {}: {} training rows, {} test rows, {}",
            mlp.layers(),
            mlp.n_params(),
            data.source,
            train.rows(),
            data.test.rows(),
            describe(args, lr)
        );
        println!("{:>5}  {:>9}  {:>10}  {:>9}  {:>8}", args_unit(args), "accuracy", "loss", "test acc", "time (s)");
    }
    let theta0 = mlp.init(c.seed);
    let test = data.test.as_shard();
    let print = |r: &StepRecord| {
        let last = r.step == args.epochs.max(c.iterations);
        if full && (!lbfgs || r.step <= 5 || r.step.is_multiple_of(10) || last) {
            let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.4}"));
            let (acc, test) = (opt(r.train_accuracy), opt(r.test_accuracy));
            println!("{:>5}  {acc:>9}  {:>10}  {test:>9}  {:>8.3}", r.step, format!("{:.4}", r.loss), r.seconds);
        }
    };
    let (fitted, theta) = if let Some(lr) = lr {
        let rule = match args.optimizer {
            OptimizerKind::Sgd => OptimizerSpec::Sgd { lr, momentum: args.momentum },
            _ => OptimizerSpec::adam(lr),
        };
        rule.validate().context("optimizer settings")?;
        let spec = TrainSpec {
            layers: mlp.layers().to_vec(),
            optimizer: rule,
            batch: args.batch,
            steps: if args.sync == SyncMode::Avg { args.avg_every } else { 0 },
            block_momentum: block_momentum(&args.block_momentum, workers)?,
        };
        let evaluate = |theta: &[f32], r: &mut StepRecord| {
            r.test_accuracy = mlp.evaluate(theta, &test).ok().map(|e| e.accuracy);
            print(r);
        };
        if args.sync == SyncMode::Avg {
            let mut t = AveragingTrainer::new(spec, theta0, args.schedule, args.epochs, c.seed)?;
            let f = fit(c, &train, &mut t, "epoch", args.epochs, |s, r| evaluate(s.theta(), r))?;
            (f, t.theta().to_vec())
        } else {
            let mut t = BspTrainer::new(spec, theta0, args.schedule, args.epochs, c.seed)?;
            let f = fit(c, &train, &mut t, "epoch", args.epochs, |s, r| evaluate(s.theta(), r))?;
            (f, t.theta().to_vec())
        }
    } else {
        if !(args.lambda >= 0.0 && args.lambda.is_finite()) {
            bail!("--lambda must be ≥ 0, got {}", args.lambda);
        }
        let x0 = theta0.iter().map(|&v| f64::from(v)).collect();
        let mut t = LbfgsTrainer::from(FullBatch { mlp: mlp.clone(), lambda: args.lambda }, x0, c.iterations);
        let f = fit(c, &train, &mut t, "L-BFGS", c.iterations, |_, r| print(r))?;
        let x = t.result().context("no iteration was run")?.x;
        if full {
            println!("L-BFGS stopped after {} iterations: {}", f.summary.completed, t.finished().unwrap_or_default());
        }
        (f, x.iter().map(|&v| v as f32).collect())
    };
    let report = mlp_report(args, data, &train, &mlp, lr, fitted, &theta)?;
    if let Some(path) = &args.plot {
        plot_curves(&report, path)?;
    }
    if full {
        let t = &report;
        println!(
            "test evaluation: loss {}, accuracy {:.4} ({} rows)",
            fmt_loss(t.test_loss),
            t.test_accuracy,
            t.test_rows
        );
        println!("  mean epoch        {:.3} s", report.mean_epoch_seconds);
        print_summary(&report.base);
    }
    if let Some(path) = &c.save_model {
        let scaling = data.scaling.as_ref();
        let extra: Vec<(&str, &[f32])> =
            scaling.map(|s| vec![("input.mean", &s.mean[..]), ("input.scale", &s.scale[..])]).unwrap_or_default();
        let training = json!({
            "optimizer": args.optimizer, "sync": args.sync, "lr": lr, "batch": args.batch, "epochs": args.epochs,
            "iterations": report.base.iterations, "seed": c.seed, "dataset": data.source, "rows": train.rows(),
            "test_accuracy": report.test_accuracy,
        });
        let arch = json!({ "layers": mlp.layers(), "standardized": scaling.is_some() });
        model_file::save(path, "mlp", arch, training, &Params::F32(theta), &extra)?;
        if full {
            println!("  model             {}", path.display());
        }
    }
    for (what, path) in [("plot", &args.plot), ("report", &c.report)] {
        if let Some(path) = path {
            if what == "report" {
                write_json(path, &report)?;
            }
            if full {
                println!("  {what:<17} {}", path.display());
            }
        }
    }
    Ok(report)
}

fn args_unit(args: &MlpArgs) -> &'static str {
    if args.optimizer == OptimizerKind::Lbfgs {
        "iter"
    } else {
        "epoch"
    }
}

fn mlp_report(
    args: &MlpArgs,
    data: &TrainTest,
    train: &Dataset<f32>,
    mlp: &Mlp,
    lr: Option<f32>,
    fitted: Fitted,
    theta: &[f32],
) -> Result<MlpReport> {
    let test = mlp.evaluate(theta, &data.test.as_shard())?;
    let loss = fitted.records.iter().map(|r| r.loss).collect();
    let mut base = fitted.report("mlp", &args.common, train.rows(), loss, cohort::sha256_le(theta));
    base.test_accuracy = None;
    let epochs = fitted.records.len();
    let seconds: f64 = fitted.records.iter().map(|r| r.seconds).sum();
    let mut per_epoch = fitted.records;
    if let Some(last) = per_epoch.last_mut() {
        last.test_accuracy = Some(test.accuracy);
    }
    Ok(MlpReport {
        base,
        dataset: data.source.clone(),
        layers: mlp.layers().to_vec(),
        optimizer: args.optimizer,
        sync: args.sync,
        avg_every: args.avg_every,
        batch: args.batch,
        lr,
        epochs,
        mean_epoch_seconds: seconds / epochs.max(1) as f64,
        per_epoch,
        test_rows: test.rows,
        test_loss: test.loss,
        test_accuracy: test.accuracy,
    })
}

fn describe(args: &MlpArgs, lr: Option<f32>) -> String {
    let opt = format!("{:?} lr {}", args.optimizer, lr.unwrap_or_default());
    match (args.optimizer, args.sync) {
        (OptimizerKind::Lbfgs, _) => format!("full-batch L-BFGS, {} iterations", args.common.iterations),
        (_, SyncMode::Avg) if args.avg_every == 0 => {
            format!("{opt}, batch {}, model averaging once per pass", args.batch)
        }
        (_, SyncMode::Avg) => format!("{opt}, batch {}, model averaging every {} batches", args.batch, args.avg_every),
        (_, SyncMode::Bsp) => format!("{opt}, batch {}, synchronous SGD (gradient averaged every step)", args.batch),
    }
}

/// Writes the loss and accuracy curves per epoch as one SVG chart.
pub fn plot_curves(report: &MlpReport, path: &std::path::Path) -> Result<()> {
    let pts = |f: &dyn Fn(&StepRecord) -> Option<f64>| -> Vec<(f64, f64)> {
        report.per_epoch.iter().filter_map(|r| f(r).map(|v| (r.step as f64, v))).collect()
    };
    let x_label = if report.optimizer == OptimizerKind::Lbfgs { "iteration" } else { "epoch" };
    let title = format!("MLP {:?} on {}: training curves", report.layers, report.dataset);
    let mut chart = Chart::new(&title, x_label, "loss / accuracy").line("train loss", pts(&|r| Some(r.loss)));
    let acc = pts(&|r| r.train_accuracy);
    if !acc.is_empty() {
        chart = chart.line("train accuracy", acc);
    }
    chart.line("test accuracy", pts(&|r| r.test_accuracy)).save(path)
}
