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
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write report {}", path.display()))
}
