//! The JSON report every training command can write with `--report`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// Figures of one training run. Field names are a stable interface: scripts and tests read them.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Model/job trained.
    pub job: String,
    /// The `--workers` spec used.
    pub worker_spec: String,
    /// Number of worker processes.
    pub workers: usize,
    /// Chunks the data was cut into.
    pub chunks: usize,
    /// Rows of training data.
    pub rows: usize,
    /// Seed.
    pub seed: u64,
    /// Optimizer iterations.
    pub iterations: usize,
    /// Loss at the final parameters.
    pub final_loss: f64,
    /// Loss at each iteration (before its step).
    pub loss_history: Vec<f64>,
    /// Wall-clock seconds of training (worker start-up and data loading included).
    pub wall_seconds: f64,
    /// Seconds to start the workers and complete their handshakes.
    pub startup_seconds: f64,
    /// Seconds to load the data onto the workers.
    pub load_seconds: f64,
    /// Mean seconds per optimizer iteration.
    pub mean_iteration_seconds: f64,
    /// Bytes sent to workers.
    pub bytes_sent: u64,
    /// Bytes received from workers.
    pub bytes_received: u64,
    /// SHA-256 of the final parameters as little-endian bytes, in model order.
    pub model_sha256: String,
    /// Protocol version in use.
    pub protocol_version: u32,
    /// L-BFGS jobs: objective evaluations (one distributed cost+gradient round each).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluations: Option<usize>,
    /// L-BFGS jobs: mean seconds of one evaluation (the round plus finishing cost and gradient on the master).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_evaluation_seconds: Option<f64>,
    /// Why the optimizer stopped, for optimizers with several stopping criteria.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
    /// Classifiers: accuracy on the training rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Classifiers: accuracy on the test split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// Resumed runs: iterations or epochs the checkpoint had completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_at: Option<usize>,
    /// Resumed runs: seconds from the start of this process to the first step (data read, workers started, data
    /// loaded onto them, checkpoint read and restored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_seconds: Option<f64>,
    /// Checkpoints written by this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints_written: Option<usize>,
    /// Seconds the training loop spent on checkpoints between steps (encoding the state, waiting for the previous
    /// write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_seconds: Option<f64>,
    /// Seconds of the last save at the end of the run, until it was on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_checkpoint_seconds: Option<f64>,
    /// `checkpoint_seconds` as a fraction of the training time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_share: Option<f64>,
    /// Workers lost during the run (and recovered from), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureReport>,
    /// What each worker (lost or retired ones included) held and did.
    pub worker_reports: Vec<WorkerFigures>,
    /// `--workers auto`: the count kept after the first round, and the prediction it was chosen by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_workers: Option<AutoReport>,
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
    if let (Some(n), Some(t)) = (r.evaluations, r.mean_evaluation_seconds) {
        println!("  evaluations       {n} (one round each), mean {:.2} ms", t * 1e3);
    }
    if let Some(stop) = &r.stop_reason {
        println!("  stopped           {stop}");
    }
    if let (Some(at), Some(s)) = (r.resumed_at, r.resume_seconds) {
        println!("  resumed           at {at}, {s:.2} s to the first step (data, workers, checkpoint)");
    }
    if let (Some(n), Some(s), Some(share)) = (r.checkpoints_written, r.checkpoint_seconds, r.checkpoint_share) {
        let last = r.final_checkpoint_seconds.unwrap_or(0.0) * 1e3;
        println!(
            "  checkpoints       {n} written, {:.1} ms on the training loop ({:.2} % of training), {last:.1} ms for \
             the last one at the end",
            s * 1e3,
            share * 100.0
        );
    }
    if let Some(a) = &r.auto_workers {
        let pred: Vec<String> =
            a.predicted_seconds.iter().enumerate().map(|(i, t)| format!("{}: {:.2} ms", i + 1, t * 1e3)).collect();
        println!("  workers auto      kept {} of {} (predicted round: {})", a.chose, a.started, pred.join(", "));
    }
    for f in &r.failures {
        let recovered = match f.recovered_seconds {
            Some(t) => format!("work whole again {:.0} ms later", (t - f.detected_seconds) * 1e3),
            None => "not recovered".to_string(),
        };
        let cause = f.cause.lines().next().unwrap_or("");
        println!(
            "  lost worker       {} during {} at {:.2} s: {cause}; {recovered}",
            f.worker, f.during, f.detected_seconds
        );
    }
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

/// A worker lost during a run.
#[derive(Debug, Clone, Serialize)]
pub struct FailureReport {
    /// The worker.
    pub worker: String,
    /// Why it was declared lost.
    pub cause: String,
    /// What the cluster was doing: `during load`, `during a round`, `during a pass`, `between operations`.
    pub during: String,
    /// When it was detected, seconds after the workers started.
    pub detected_seconds: f64,
    /// When the work in flight was whole again, seconds after the workers started.
    pub recovered_seconds: Option<f64>,
}

impl From<&cohort::FailureRecord> for FailureReport {
    fn from(f: &cohort::FailureRecord) -> Self {
        FailureReport {
            worker: f.worker.clone(),
            cause: f.cause.clone(),
            during: f.during.to_string(),
            detected_seconds: f.detected.as_secs_f64(),
            recovered_seconds: f.recovered.map(|r| r.as_secs_f64()),
        }
    }
}

/// One worker's figures.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerFigures {
    /// The worker.
    pub worker: String,
    /// Still in the cluster at the end.
    pub live: bool,
    /// Chunks it held at the end.
    pub chunks: u64,
    /// Chunks it computed, in total.
    pub chunks_done: u64,
    /// Seconds it reported computing.
    pub busy_seconds: f64,
}

impl From<&cohort::WorkerReport> for WorkerFigures {
    fn from(w: &cohort::WorkerReport) -> Self {
        WorkerFigures {
            worker: w.worker.clone(),
            live: w.live,
            chunks: w.chunks,
            chunks_done: w.chunks_done,
            busy_seconds: w.busy.as_secs_f64(),
        }
    }
}

/// What `--workers auto` chose.
#[derive(Debug, Clone, Serialize)]
pub struct AutoReport {
    /// Workers started and measured.
    pub started: usize,
    /// Workers kept.
    pub chose: usize,
    /// Predicted seconds per round for 1, 2, ... `started` workers.
    pub predicted_seconds: Vec<f64>,
}

impl From<&cohort::cluster::AutoChoice> for AutoReport {
    fn from(a: &cohort::cluster::AutoChoice) -> Self {
        AutoReport {
            started: a.started,
            chose: a.chose,
            predicted_seconds: a.predicted.iter().map(|(_, t)| t.as_secs_f64()).collect(),
        }
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write report {}", path.display()))
}
