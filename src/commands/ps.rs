//! `cohort train ps`: a model trained through parameter servers. Builds the workload, starts workers and servers,
//! hands the run to the library ([`crate::psrun::run`] over `Cluster::train_ps`), then prints the figures the
//! issue asks of a parameter-server report: staleness histogram, bytes per key range (server), barrier wait per
//! worker, updates per second, losses survived, and a diverged run's error.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use cohort::cluster::PsOptions;
use cohort::Registry;
use serde::Serialize;

use std::path::Path;
use std::sync::Arc;

use cohort::Dataset;
use cohort_ml::datasets;
use cohort_ml::mlp::Mlp;
use cohort_ml::ps::{Evaluate, MlpPs, SoftmaxPs, SparseLogRegConfig, SparseLogRegPs};
use cohort_ml::softmax::SoftmaxConfig;
use cohort_ml::sparse::{load_libsvm_sparse, SparseGenerator, SparseLoadOptions, SparseSpec};

use crate::cli::PsArgs;
use crate::launch::start_cluster_with_servers;
use crate::psrun::{self, server_specs, Eval, Workload};
use crate::report::{human_bytes, write_json, FailureReport};

/// The JSON report of `cohort train ps --report`. Field names are a stable interface.
#[derive(Debug, Clone, Serialize)]
pub struct PsReport {
    /// The model.
    pub job: String,
    /// The workers as given.
    pub worker_spec: String,
    /// The servers as given.
    pub servers: String,
    /// Consistency mode.
    pub consistency: String,
    /// Update rule.
    pub rule: String,
    /// Servers per key range.
    pub replication: usize,
    /// Mini-batch rows.
    pub batch: usize,
    /// Clocks per worker asked for.
    pub clocks: u64,
    /// Training rows.
    pub rows: usize,
    /// Seconds of the run (from the first pull to the last acknowledgement and the model fetched).
    pub wall_seconds: f64,
    /// The final model's loss on the evaluation rows.
    pub final_loss: f64,
    /// The final model's accuracy on the evaluation rows (classifiers).
    pub test_accuracy: Option<f64>,
    /// SHA-256 of the final parameters (`f32` little-endian).
    pub model_sha256: String,
    /// Set when the run stopped because its loss diverged (the model is then the last good one).
    pub diverged: Option<String>,
    /// Staleness of the reads answered → number of reads.
    pub staleness: BTreeMap<u64, u64>,
    /// Mean staleness of the reads.
    pub mean_staleness: f64,
    /// Largest staleness of a read.
    pub max_staleness: u64,
    /// Updates (pushes) the servers applied per second.
    pub updates_per_second: f64,
    /// Per key range (its head server at the start): bytes in and out, updates applied, barriers.
    pub ranges: Vec<RangeFigures>,
    /// Per worker: clocks, bytes, time spent and barrier wait.
    pub workers: Vec<PsWorkerFigures>,
    /// Workers and servers lost during the run, and when the run was whole again.
    pub failures: Vec<FailureReport>,
    /// `(seconds, loss, accuracy)` of each evaluated snapshot and of the final model.
    pub curve: Vec<(f64, f64, Option<f64>)>,
}

/// One key range's server figures.
#[derive(Debug, Clone, Serialize)]
pub struct RangeFigures {
    /// Bytes of values and keys pushed to it.
    pub pushed_bytes: u64,
    /// Bytes of values it sent in pull replies.
    pub pulled_bytes: u64,
    /// Updates it applied.
    pub updates: u64,
    /// Updates applied per second between its first and its last.
    pub updates_per_second: Option<f64>,
    /// Re-sent pushes it recognised (after failovers).
    pub duplicates: u64,
    /// Barriers passed (BSP: every clock; ASP: every W clocks).
    pub barriers: u64,
}

/// One worker's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PsWorkerFigures {
    /// The worker.
    pub worker: String,
    /// Clocks completed.
    pub clocks: u64,
    /// Lost during the run (dropped; the others went on).
    pub lost: bool,
    /// Bytes pushed.
    pub pushed_bytes: u64,
    /// Bytes pulled.
    pub pulled_bytes: u64,
    /// Seconds in the run.
    pub busy_seconds: f64,
    /// Seconds waiting for pulls (the consistency mode's barrier wait).
    pub waited_seconds: f64,
}

/// Which model to train on which data.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// `softmax`, `mlp`, `sparse` or `linear`.
    pub model: String,
    /// Seed of generated data.
    pub seed: u64,
    /// Named data set (softmax, mlp).
    pub dataset: String,
    /// Rows to use or generate.
    pub train_rows: Option<usize>,
    /// Sparse: the training file.
    pub train: Option<std::path::PathBuf>,
    /// Sparse: the test file.
    pub test: Option<std::path::PathBuf>,
    /// Sparse: features.
    pub features: u64,
}

impl From<&PsArgs> for WorkloadSpec {
    fn from(a: &PsArgs) -> Self {
        WorkloadSpec {
            model: a.model.clone(),
            seed: a.common.seed,
            dataset: a.dataset.clone(),
            train_rows: a.train_rows,
            train: a.train.clone(),
            test: a.test.clone(),
            features: a.features,
        }
    }
}

/// The workload `args` names, with its data read or generated.
pub fn workload(args: &WorkloadSpec) -> Result<Box<dyn Workload>> {
    let seed = args.seed;
    match args.model.as_str() {
        "linear" => {
            let rows = args.train_rows.unwrap_or(20_000);
            let features = 32;
            let data = crate::jobs::linear::generate(rows, features, seed)?;
            let eval_data = data.clone();
            let eval = move |w: &[f32]| Eval { loss: crate::jobs::ps::linear_mse(&eval_data, w) / 2.0, accuracy: None };
            Ok(Box::new(psrun::Job::new("linear", "sgd:0.05", crate::jobs::ps::PsLinear, features as u64, data, eval)))
        }
        "softmax" | "mlp" => {
            let raw = args.model == "softmax";
            let request = datasets::Request {
                name: &args.dataset,
                train_rows: args.train_rows,
                seed,
                raw,
                ..datasets::Request::default()
            };
            let data = datasets::prepare(&request)?;
            let (train, test, scaling) = (data.train, Arc::new(data.test), data.scaling);
            if raw {
                let config = SoftmaxConfig::new(10, train.cols(), 1e-4);
                let eval = evaluator(SoftmaxPs, config, Arc::clone(&test));
                let save = move |path: &Path, params: &[f32], training| {
                    Ok(SoftmaxPs::save_model(path, &config, params, training)?)
                };
                let job = psrun::Job::new("softmax", "sgd:0.1", SoftmaxPs, config, train, eval);
                Ok(Box::new(job.classifier().saver(save)))
            } else {
                let mlp = Mlp::new(&[train.cols(), 32, 10])?;
                let eval = evaluator(MlpPs, mlp.clone(), Arc::clone(&test));
                let (m, scaling) = (mlp.clone(), scaling.clone());
                let save = move |path: &Path, params: &[f32], training| {
                    Ok(MlpPs::save_model(path, &m, params, scaling.as_ref(), training)?)
                };
                Ok(Box::new(psrun::Job::new("mlp", "adam:0.002", MlpPs, mlp, train, eval).classifier().saver(save)))
            }
        }
        "sparse" => {
            let (train, test) = match (&args.train, &args.test) {
                (Some(train), test) => {
                    let options = SparseLoadOptions::default().features(args.features as usize);
                    let t = load_libsvm_sparse(train, &options)?;
                    let test = test.as_ref().map(|p| load_libsvm_sparse(p, &options)).transpose()?;
                    (t, test)
                }
                (None, Some(_)) => bail!("--test needs --train (or neither: the data is then generated)"),
                (None, None) => {
                    let rows = args.train_rows.unwrap_or(100_000);
                    let spec = |rows, first_row| SparseSpec {
                        rows,
                        features: args.features as usize,
                        nnz: 200,
                        seed,
                        first_row,
                        ..SparseSpec::default()
                    };
                    let train = SparseGenerator::new(spec(rows, 0))?.dataset()?;
                    let test = SparseGenerator::new(spec(rows / 10, rows as u64))?.dataset()?;
                    (train, Some(test))
                }
            };
            let config = SparseLogRegConfig::for_data(&train, 1e-4)?;
            let eval_set = Arc::new(test.map_or_else(|| train.data.clone(), |t| t.data));
            let eval = evaluator(SparseLogRegPs, config, eval_set);
            let c = config;
            let save = move |path: &Path, params: &[f32], training| {
                Ok(SparseLogRegPs::save_model(path, &c, params, training)?)
            };
            let job = psrun::Job::new("sparse", "sgd:50", SparseLogRegPs, config, train.data, eval);
            Ok(Box::new(job.classifier().saver(save)))
        }
        other => bail!("--model {other:?}: cohort train ps knows softmax, mlp, sparse and linear"),
    }
}

/// An evaluation function over held-out rows for one of cohort-ml's parameter-server jobs.
fn evaluator<J: Evaluate>(job: J, config: J::Config, data: Arc<Dataset<f32>>) -> impl Fn(&[f32]) -> Eval + Send + Sync
where
    J::Config: Send + Sync,
{
    move |params: &[f32]| match job.evaluate(&config, params, &data) {
        Ok(e) => Eval { loss: e.loss, accuracy: Some(e.accuracy) },
        Err(_) => Eval { loss: f64::NAN, accuracy: None },
    }
}

/// The options `args` ask for, with `clocks` per worker.
pub fn options(args: &PsArgs, work: &dyn Workload, clocks: u64) -> Result<PsOptions> {
    psrun::Settings {
        consistency: args.consistency.clone(),
        rule: args.rule.clone(),
        batch: args.batch,
        seed: args.common.seed,
        replication: args.replication,
        blocks: args.blocks.clone(),
        jitter: args.jitter,
        eval_every: args.eval_every,
        divergence: args.divergence,
    }
    .options(work, clocks)
}

/// Runs `cohort train ps`.
pub fn run(args: PsArgs, _registry: &Registry) -> Result<PsReport> {
    let c = &args.common;
    if c.checkpoint.is_some() || c.resume.is_some() {
        bail!("cohort train ps does not checkpoint yet: its state lives on the servers (use --replication 2 to survive a server's loss)");
    }
    let mut work = workload(&WorkloadSpec::from(&args))?;
    let servers = server_specs(&args.servers)?;
    let (mut cluster, worker_spec) = start_cluster_with_servers(c.workers.as_deref(), &c.launch, servers)?;
    work.load(&mut cluster)?;
    let workers = cluster.worker_labels().len();
    let clocks = args.clocks.unwrap_or_else(|| psrun::clocks_for(args.epochs, work.rows(), workers, args.batch));
    let options = options(&args, work.as_ref(), clocks)?;
    println!(
        "{} through {} parameter server(s) ({} keys, {}, rule {}, replication {}): {} workers ({worker_spec}), \
         {clocks} clocks of {} rows each",
        work.name(),
        cluster.server_labels().len(),
        work.num_params(),
        options.consistency,
        options.rule,
        options.replication,
        workers,
        options.batch
    );
    let progress = crate::progress::Progress::new("clocks", clocks as usize);
    let run = psrun::run(&mut cluster, work.as_ref(), &options, |r| {
        if r.worker == 0 {
            progress.step(r.clock.saturating_sub(1) as usize, &format!("loss {}", crate::report::fmt_loss(r.loss)));
        }
    });
    progress.finish();
    let failures: Vec<FailureReport> = cluster.failures().iter().map(Into::into).collect();
    cluster.shutdown();
    let run = run?;
    let report = report(&args, work.as_ref(), &worker_spec, &run, failures);
    print(&report);
    if let Some(path) = &c.report {
        write_json(path, &report)?;
    }
    if let Some(path) = &c.save_model {
        let training = serde_json::json!({
            "parameter_server": { "consistency": report.consistency, "rule": report.rule, "batch": report.batch,
                                  "clocks": report.clocks, "servers": report.servers },
            "seed": c.seed, "final_loss": report.final_loss, "test_accuracy": report.test_accuracy,
        });
        work.save(path, &run.outcome.params, training)?;
        println!("  model saved       {}", path.display());
    }
    if let Some(d) = &run.outcome.diverged {
        bail!("{d}");
    }
    Ok(report)
}

fn report(
    args: &PsArgs,
    work: &dyn Workload,
    workers: &str,
    run: &psrun::Run,
    failures: Vec<FailureReport>,
) -> PsReport {
    let o = &run.outcome;
    let (mean_staleness, max_staleness) = o.staleness_summary();
    PsReport {
        job: work.name().to_string(),
        worker_spec: workers.to_string(),
        servers: args.servers.clone(),
        consistency: args.consistency.clone(),
        rule: args.rule.clone().unwrap_or_else(|| work.default_rule().to_string()),
        replication: args.replication,
        batch: args.batch,
        clocks: o.workers.iter().map(|w| w.clocks).max().unwrap_or(0),
        rows: work.rows(),
        wall_seconds: o.wall.as_secs_f64(),
        final_loss: run.last.loss,
        test_accuracy: run.last.accuracy,
        model_sha256: cohort::sha256_le(&o.params),
        diverged: o.diverged.as_ref().map(ToString::to_string),
        staleness: o.staleness(),
        mean_staleness,
        max_staleness,
        updates_per_second: o.updates_per_sec(),
        ranges: o
            .metrics
            .iter()
            .map(|m| RangeFigures {
                pushed_bytes: m.push_in.bytes,
                pulled_bytes: m.pull_out.bytes,
                updates: m.steps,
                updates_per_second: m.steps_per_sec(),
                duplicates: m.duplicates,
                barriers: m.barriers,
            })
            .collect(),
        workers: o
            .workers
            .iter()
            .map(|w| PsWorkerFigures {
                worker: w.worker.clone(),
                clocks: w.clocks,
                lost: w.lost,
                pushed_bytes: w.pushed_bytes,
                pulled_bytes: w.pulled_bytes,
                busy_seconds: w.busy.as_secs_f64(),
                waited_seconds: w.waited.as_secs_f64(),
            })
            .collect(),
        failures,
        curve: run.curve.iter().map(|(t, e)| (*t, e.loss, e.accuracy)).collect(),
    }
}

/// Prints the closing summary.
pub fn print(r: &PsReport) {
    println!("  wall time         {:.2} s", r.wall_seconds);
    match r.test_accuracy {
        Some(a) => println!("  final             loss {:.4}, accuracy {a:.4}", r.final_loss),
        None => println!("  final             loss {:.6}", r.final_loss),
    }
    let hist: Vec<String> = r.staleness.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!(
        "  staleness         mean {:.2}, max {} (reads by staleness: {})",
        r.mean_staleness,
        r.max_staleness,
        hist.join(", ")
    );
    println!("  updates           {:.0} per second", r.updates_per_second);
    for (i, g) in r.ranges.iter().enumerate() {
        println!(
            "  range {i:<2}          {} pushed in, {} pulled out, {} updates{}, {} barriers{}",
            human_bytes(g.pushed_bytes),
            human_bytes(g.pulled_bytes),
            g.updates,
            g.updates_per_second.map_or(String::new(), |u| format!(" ({u:.0}/s)")),
            g.barriers,
            if g.duplicates > 0 { format!(", {} re-sent pushes recognised", g.duplicates) } else { String::new() }
        );
    }
    for w in &r.workers {
        println!(
            "  {:<17} {} clocks{}, pushed {}, pulled {}, waited {:.2} s of {:.2} s",
            w.worker,
            w.clocks,
            if w.lost { " (lost, dropped)" } else { "" },
            human_bytes(w.pushed_bytes),
            human_bytes(w.pulled_bytes),
            w.waited_seconds,
            w.busy_seconds
        );
    }
    for f in &r.failures {
        let recovered = match f.recovered_seconds {
            Some(t) => format!("every running worker progressed again {:.0} ms later", (t - f.detected_seconds) * 1e3),
            None => "not recovered".into(),
        };
        println!(
            "  lost              {} at {:.2} s: {}; {recovered}",
            f.worker,
            f.detected_seconds,
            f.cause.lines().next().unwrap_or("")
        );
    }
    if let Some(d) = &r.diverged {
        println!("  DIVERGED          {d}");
    }
    println!("  model sha256      {}", r.model_sha256);
}
