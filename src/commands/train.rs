//! `cohort train linear|sae|softmax`: the full-batch models. Each builds its data and model, hands a stepper from
//! `cohort_ml::train` to [`fit`], then prints, saves and reports.

use anyhow::{bail, Context, Result};
use cohort::data::loaders::Split;
use cohort::data::slicing::{chunk_count_by_cost, MAX_DEFAULT_CHUNKS};
use cohort::Dataset;
use cohort_ml::model_file::{self, Params};
use cohort_ml::optim::OptimResult;
use cohort_ml::sae::SaeConfig;
use cohort_ml::softmax::SoftmaxConfig;
use cohort_ml::train::{GdTrainer, LbfgsTrainer, RoundModel};
use serde_json::json;

use crate::cli::{defaults, CommonArgs, LinearArgs, SaeArgs, SoftmaxArgs};
use crate::jobs::linear::{self, LinearModel};
use crate::launch::{fit, named_dataset, Fitted};
use crate::patches::{self, PATCH};
use crate::report::{print_summary, write_json, TrainReport};

/// The chunk count for `rows` patches: `--chunks`, or as many chunks as keep each chunk's work at or above
/// `cohort::data::slicing::MIN_CHUNK_FLOPS` (so 1 000 patches of the default shape make 4 chunks, 100 000 make
/// [`defaults::SAE_CHUNKS`]). It depends on the data and the model, never on the number of workers.
pub fn sae_chunks(rows: usize, config: &SaeConfig, chunks: Option<usize>) -> usize {
    chunks.unwrap_or_else(|| chunk_count_by_cost(rows, config.flops_per_row(), defaults::SAE_CHUNKS))
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
    let model = LinearModel { rows: args.rows, features: args.features };
    let mut trainer = GdTrainer::new(model, vec![0.0; args.features + 1], args.lr, c.iterations);
    let fitted = fit(c, &data, &mut trainer, "linear", c.iterations, |_, _| {})?;
    let r = trainer.result().context("no iteration was run")?;
    let mut report = lbfgs_report("linear", c, &fitted, args.rows, &r);
    (report.evaluations, report.mean_evaluation_seconds) = (None, None);
    println!(
        "linear regression: {} rows × {} features, {} workers ({}), {} chunks",
        args.rows, args.features, report.workers, report.worker_spec, report.chunks
    );
    let arch = json!({ "features": args.features });
    finish(c, &report, "linear", arch, &trainer.model.settings(), Params::F64(r.x))?;
    Ok(report)
}

/// The report of a full-batch run.
fn lbfgs_report(job: &str, c: &CommonArgs, fitted: &Fitted, rows: usize, r: &OptimResult) -> TrainReport {
    let mut report = fitted.report(job, c, rows, r.history.iter().map(|h| h.cost).collect(), cohort::sha256_le(&r.x));
    report.iterations = r.iterations;
    report.evaluations = Some(r.evaluations);
    report.stop_reason = Some(r.stop.to_string());
    report
}

/// Prints the summary, saves the model (`--save-model`) and writes the report (`--report`).
fn finish(
    c: &CommonArgs,
    report: &TrainReport,
    kind: &str,
    architecture: serde_json::Value,
    settings: &std::collections::BTreeMap<String, String>,
    params: Params,
) -> Result<()> {
    print_summary(report);
    if let Some(path) = &c.save_model {
        let training = json!({
            "job": report.job, "iterations": report.iterations, "seed": c.seed, "workers": report.workers,
            "chunks": report.chunks, "rows": report.rows, "stop_reason": report.stop_reason,
            "final_loss": report.final_loss, "settings": settings,
        });
        model_file::save(path, kind, architecture, training, &params, &[])?;
        println!("  model             {}", path.display());
    }
    if let Some(path) = &c.report {
        write_json(path, report)?;
        println!("  report            {}", path.display());
    }
    Ok(())
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
    let mut trainer = LbfgsTrainer::from(config, config.init(c.seed)?, c.iterations);
    let fitted = fit(c, &data, &mut trainer, "sae", c.iterations, |_, _| {})?;
    let r = trainer.result().context("no iteration was run")?;
    let mut report = lbfgs_report("sae", c, &fitted, args.patches, &r);
    report.mean_evaluation_seconds = Some(trainer.evaluating.as_secs_f64() / trainer.evaluations_here.max(1) as f64);
    println!(
        "sparse autoencoder: {} patches of {PATCH}×{PATCH} from {source}, {} hidden units, {} workers ({}), {} chunks",
        args.patches, args.hidden, report.workers, report.worker_spec, report.chunks
    );
    let arch = json!({
        "visible": config.visible, "hidden": config.hidden, "lambda": config.lambda,
        "rho": config.rho, "beta": config.beta, "patch": PATCH,
    });
    finish(c, &report, "sae", arch, &trainer.model.settings(), Params::F64(r.x))?;
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
        train = cohort_ml::datasets::head(train, Some(n))?;
    }
    let test = named_dataset(&args.dataset, Split::Test)?;
    let classes = cohort_ml::datasets::classes(&train)?;
    let config = SoftmaxConfig::new(classes, train.cols(), args.lambda);
    config.validate()?;
    let chunks =
        c.chunks.unwrap_or_else(|| chunk_count_by_cost(train.rows(), config.flops_per_row(), MAX_DEFAULT_CHUNKS));
    train = train.with_chunks(chunks)?;

    let mut trainer = LbfgsTrainer::from(config, config.init()?, c.iterations);
    let fitted = fit(c, &train, &mut trainer, "softmax", c.iterations, |_, _| {})?;
    let r = trainer.result().context("no iteration was run")?;
    let mut report = lbfgs_report("softmax", c, &fitted, train.rows(), &r);
    report.mean_evaluation_seconds = Some(trainer.evaluating.as_secs_f64() / trainer.evaluations_here.max(1) as f64);
    report.train_accuracy = Some(config.accuracy(&r.x, &train.as_shard())?);
    report.test_accuracy = Some(config.accuracy(&r.x, &test.as_shard())?);
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
    println!("  train accuracy    {:.4}", report.train_accuracy.unwrap_or(f64::NAN));
    println!("  test accuracy     {:.4} ({} test rows)", report.test_accuracy.unwrap_or(f64::NAN), test.rows());
    let arch = json!({
        "classes": classes, "features": train.cols(), "lambda": args.lambda, "dataset": args.dataset,
        "test_accuracy": report.test_accuracy,
    });
    finish(c, &report, "softmax", arch, &trainer.model.settings(), Params::F64(r.x))?;
    Ok(report)
}
