//! `cohort train ...`: training commands and their closing summaries.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cohort::data::loaders::Split;
use cohort::data::slicing::{chunk_count_by_cost, MAX_DEFAULT_CHUNKS};
use cohort::Dataset;
use cohort_ml::sae::SaeConfig;
use cohort_ml::softmax::SoftmaxConfig;

use super::lbfgs::{self, TimedRun};
use super::{named_dataset, start_and_load, Started};
use crate::cli::{CommonArgs, LinearArgs, SaeArgs, SoftmaxArgs};
use crate::jobs::linear::{self, LinearGradient};
use crate::model_file::{self, Params};
use crate::patches::{self, PATCH};
use crate::progress::Progress;
use crate::report::{write_json, TrainReport};

/// Most chunks a patch data set is cut into by default: enough for qjam's 16 workers (and up to 64).
pub const SAE_CHUNKS: usize = 64;

/// The chunk count for `rows` patches: `--chunks`, or as many chunks as keep each chunk's work at or above
/// `cohort::data::slicing::MIN_CHUNK_FLOPS` (so 1 000 patches of the default shape make 4 chunks, 100 000 make
/// [`SAE_CHUNKS`]); see the README's measurements.
pub fn sae_chunks(rows: usize, config: &SaeConfig, chunks: Option<usize>) -> usize {
    chunks.unwrap_or_else(|| chunk_count_by_cost(rows, config.flops_per_row(), SAE_CHUNKS))
}

/// `cohort train linear`: full-batch gradient descent, one map-reduce round per iteration.
pub fn linear(args: LinearArgs) -> Result<TrainReport> {
    let c = &args.common;
    if args.rows == 0 || args.features == 0 {
        bail!("--rows and --features must be at least 1 (got {} and {})", args.rows, args.features);
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", args.lr);
    }
    let mut data = linear::generate(args.rows, args.features, c.seed)?;
    if let Some(chunks) = c.chunks {
        data = data.with_chunks(chunks)?;
    }

    let Started { mut cluster, worker_spec, handle, started, startup, load } = start_and_load(c, &data)?;

    let mut params = vec![0.0; args.features + 1];
    let mut history = Vec::with_capacity(c.iterations);
    let mut iteration_time = Duration::ZERO;
    let progress = Progress::new("linear", c.iterations);
    for i in 0..c.iterations {
        let t = Instant::now();
        let (loss, grad) = linear::finish(args.rows, cluster.run(&LinearGradient, &params, &handle)?);
        if !loss.is_finite() {
            bail!("the loss diverged to {loss} at iteration {i}; lower --lr (now {})", args.lr);
        }
        for (p, g) in params.iter_mut().zip(&grad) {
            *p -= args.lr * g;
        }
        iteration_time += t.elapsed();
        history.push(loss);
        progress.step(i, &format!("loss {}", fmt_loss(loss)));
    }
    progress.finish();
    let (final_loss, _) = linear::finish(args.rows, cluster.run(&LinearGradient, &params, &handle)?);
    let wall = started.elapsed();
    let stats = cluster.stats();
    cluster.shutdown();

    let report = TrainReport {
        job: "linear".into(),
        worker_spec,
        workers: stats.workers,
        chunks: handle.chunks(),
        rows: args.rows,
        seed: c.seed,
        iterations: c.iterations,
        final_loss,
        loss_history: history,
        wall_seconds: wall.as_secs_f64(),
        startup_seconds: startup.as_secs_f64(),
        load_seconds: load.as_secs_f64(),
        mean_iteration_seconds: iteration_time.as_secs_f64() / c.iterations.max(1) as f64,
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        model_sha256: cohort::sha256_le(&params),
        protocol_version: cohort::wire::PROTOCOL_VERSION,
        evaluations: None,
        mean_evaluation_seconds: None,
        stop_reason: None,
        train_accuracy: None,
        test_accuracy: None,
    };
    println!(
        "linear regression: {} rows × {} features, {} workers ({}), {} chunks",
        args.rows, args.features, report.workers, report.worker_spec, report.chunks
    );
    print_summary(&report);
    if let Some(path) = &c.report {
        write_json(path, &report)?;
        println!("  report            {}", path.display());
    }
    Ok(report)
}

/// The report of an L-BFGS run; the caller fills in accuracies.
#[allow(clippy::too_many_arguments)]
fn lbfgs_report(
    job: &str,
    c: &CommonArgs,
    worker_spec: String,
    stats: cohort::Stats,
    chunks: usize,
    rows: usize,
    run: &TimedRun,
    startup: Duration,
    load: Duration,
    wall: Duration,
) -> TrainReport {
    let r = &run.result;
    TrainReport {
        job: job.into(),
        worker_spec,
        workers: stats.workers,
        chunks,
        rows,
        seed: c.seed,
        iterations: r.iterations,
        final_loss: r.cost,
        loss_history: r.history.iter().map(|h| h.cost).collect(),
        wall_seconds: wall.as_secs_f64(),
        startup_seconds: startup.as_secs_f64(),
        load_seconds: load.as_secs_f64(),
        mean_iteration_seconds: run.mean_iteration_seconds(),
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        model_sha256: cohort::sha256_le(&r.x),
        protocol_version: cohort::wire::PROTOCOL_VERSION,
        evaluations: Some(r.evaluations),
        mean_evaluation_seconds: Some(run.mean_evaluation_seconds()),
        stop_reason: Some(r.stop.to_string()),
        train_accuracy: None,
        test_accuracy: None,
    }
}

/// `cohort train sae`: the UFLDL sparse autoencoder on random 8×8 patches, one map-reduce round per L-BFGS
/// evaluation.
pub fn sae(args: SaeArgs) -> Result<TrainReport> {
    let c = &args.common;
    if args.patches == 0 || args.hidden == 0 {
        bail!("--patches and --hidden must be at least 1 (got {} and {})", args.patches, args.hidden);
    }
    if args.hidden > patches::MAX_HIDDEN {
        bail!("--hidden must be at most {} (got {})", patches::MAX_HIDDEN, args.hidden);
    }
    let config = SaeConfig::with_hidden(args.hidden);
    config.validate()?;
    let (values, source) = patches::sample(args.images.as_deref(), Split::Train, args.patches, c.seed)?;
    let data = Dataset::new(values, PATCH * PATCH)?.with_chunks(sae_chunks(args.patches, &config, c.chunks))?;

    let Started { mut cluster, worker_spec, handle, started, startup, load } = start_and_load(c, &data)?;
    let run = lbfgs::train_sae(&mut cluster, &handle, &config, c.iterations, c.seed, Some("sae"))?;
    let wall = started.elapsed();
    let stats = cluster.stats();
    cluster.shutdown();

    let report = lbfgs_report("sae", c, worker_spec, stats, handle.chunks(), args.patches, &run, startup, load, wall);
    println!(
        "sparse autoencoder: {} patches of {PATCH}×{PATCH} from {source}, {} hidden units, {} workers ({}), {} chunks",
        args.patches, args.hidden, report.workers, report.worker_spec, report.chunks
    );
    print_summary(&report);
    print_lbfgs(&report);
    if let Some(path) = &args.save_model {
        let meta = serde_json::json!({
            "visible": config.visible, "hidden": config.hidden, "lambda": config.lambda,
            "rho": config.rho, "beta": config.beta, "patch": PATCH,
        });
        model_file::save(path, "sae", meta, &Params::F64(run.result.x.clone()))?;
        println!("  model             {}", path.display());
    }
    if let Some(path) = &c.report {
        write_json(path, &report)?;
        println!("  report            {}", path.display());
    }
    Ok(report)
}

/// `cohort train softmax`: softmax regression with L2 decay on a named data set's training split, one map-reduce
/// round per L-BFGS evaluation; reports train and test accuracy.
pub fn softmax(args: SoftmaxArgs) -> Result<TrainReport> {
    let c = &args.common;
    if !(args.lambda >= 0.0 && args.lambda.is_finite()) {
        bail!("--lambda must be a finite number ≥ 0, got {}", args.lambda);
    }
    let mut train = named_dataset(&args.dataset, Split::Train)?;
    if let Some(n) = args.train_rows {
        if n == 0 || n > train.rows() {
            bail!("--train-rows must be in 1..={} for {}, got {n}", train.rows(), args.dataset);
        }
        let labels = train.labels().context("training split without labels")?[..n].to_vec();
        train = Dataset::new(train.values()[..n * train.cols()].to_vec(), train.cols())?.with_labels(labels)?;
    }
    let test = named_dataset(&args.dataset, Split::Test)?;
    let classes = classes_of(&train)?;
    let config = SoftmaxConfig::new(classes, train.cols(), args.lambda);
    config.validate()?;
    let chunks =
        c.chunks.unwrap_or_else(|| chunk_count_by_cost(train.rows(), config.flops_per_row(), MAX_DEFAULT_CHUNKS));
    train = train.with_chunks(chunks)?;

    let Started { mut cluster, worker_spec, handle, started, startup, load } = start_and_load(c, &train)?;
    let run = lbfgs::train_softmax(&mut cluster, &handle, &config, c.iterations, Some("softmax"))?;
    let wall = started.elapsed();
    let stats = cluster.stats();
    cluster.shutdown();

    let theta = &run.result.x;
    let mut report =
        lbfgs_report("softmax", c, worker_spec, stats, handle.chunks(), train.rows(), &run, startup, load, wall);
    report.train_accuracy = Some(config.accuracy(theta, &train.as_shard())?);
    report.test_accuracy = Some(config.accuracy(theta, &test.as_shard())?);
    println!(
        "softmax regression: {} ({} training rows × {} features, {} classes, λ = {}), {} workers ({}), {} chunks",
        args.dataset,
        train.rows(),
        train.cols(),
        classes,
        args.lambda,
        report.workers,
        report.worker_spec,
        report.chunks
    );
    print_summary(&report);
    print_lbfgs(&report);
    println!("  train accuracy    {:.4}", report.train_accuracy.unwrap_or(f64::NAN));
    println!("  test accuracy     {:.4} ({} test rows)", report.test_accuracy.unwrap_or(f64::NAN), test.rows());
    if let Some(path) = &args.save_model {
        let meta = serde_json::json!({
            "classes": classes, "features": train.cols(), "lambda": args.lambda, "dataset": args.dataset,
        });
        model_file::save(path, "softmax", meta, &Params::F64(theta.clone()))?;
        println!("  model             {}", path.display());
    }
    if let Some(path) = &c.report {
        write_json(path, &report)?;
        println!("  report            {}", path.display());
    }
    Ok(report)
}

/// Number of classes of a labelled data set: one more than the largest label (at least 2).
fn classes_of(data: &Dataset<f32>) -> Result<usize> {
    let labels = data.labels().context("the data set has no labels; softmax regression needs class labels")?;
    let max = labels.iter().fold(0.0f32, |m, &l| m.max(l));
    if !(0.0..1e6).contains(&max) {
        bail!("labels must be class indices 0, 1, 2, ...; found {max}");
    }
    Ok((max as usize + 1).max(2))
}

/// The optimizer lines of an L-BFGS summary.
fn print_lbfgs(r: &TrainReport) {
    if let (Some(n), Some(t)) = (r.evaluations, r.mean_evaluation_seconds) {
        println!("  evaluations       {n} (one round each), mean {:.2} ms", t * 1e3);
    }
    if let Some(stop) = &r.stop_reason {
        println!("  stopped           {stop}");
    }
}

/// Prints the closing summary shared by training commands.
pub fn print_summary(r: &TrainReport) {
    println!("  iterations        {}", r.iterations);
    println!("  final loss        {}", fmt_loss(r.final_loss));
    println!(
        "  wall time         {:.2} s (worker start-up {:.2} s, data load {:.2} s)",
        r.wall_seconds, r.startup_seconds, r.load_seconds
    );
    println!("  mean iteration    {:.2} ms", r.mean_iteration_seconds * 1e3);
    println!("  traffic           {} sent, {} received", human_bytes(r.bytes_sent), human_bytes(r.bytes_received));
    println!("  model sha256      {}", r.model_sha256);
}

/// A loss for humans: fixed-point when moderate, scientific when huge or tiny.
pub fn fmt_loss(loss: f64) -> String {
    if loss != 0.0 && !(1e-4..1e6).contains(&loss.abs()) {
        format!("{loss:.4e}")
    } else {
        format!("{loss:.6}")
    }
}

/// `1234567` → `1.2 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
