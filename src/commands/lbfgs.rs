//! Distributed L-BFGS as the commands run it: an objective whose every evaluation is one map-reduce round (cost and
//! gradient together), timed per evaluation and per iteration, with a progress display.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use cohort::{Cluster, DatasetHandle};
use cohort_ml::optim::{FnObjective, Lbfgs, OptimError, OptimResult, Stop};
use cohort_ml::sae::{SaeConfig, SaeJob};
use cohort_ml::softmax::{SoftmaxConfig, SoftmaxJob};

use super::train::fmt_loss;
use crate::progress::Progress;

/// An L-BFGS run and its timings.
#[derive(Debug, Clone)]
pub struct TimedRun {
    /// The optimizer's result.
    pub result: OptimResult,
    /// Time inside the optimizer, from the first evaluation to the last step.
    pub optimize: Duration,
    /// Time inside evaluations (rounds and finishing on the master).
    pub evaluating: Duration,
}

impl TimedRun {
    /// Mean seconds per iteration: optimizer time over iterations (the starting evaluation included).
    pub fn mean_iteration_seconds(&self) -> f64 {
        self.optimize.as_secs_f64() / self.result.iterations.max(1) as f64
    }

    /// Mean seconds per evaluation.
    pub fn mean_evaluation_seconds(&self) -> f64 {
        self.evaluating.as_secs_f64() / self.result.evaluations.max(1) as f64
    }
}

/// Minimises `eval` from `x0` by L-BFGS for at most `iterations` iterations, showing progress under `label`
/// (`None`: silent).
pub fn minimize(
    iterations: usize,
    x0: &[f64],
    label: Option<&str>,
    mut eval: impl FnMut(&[f64]) -> Result<(f64, Vec<f64>)>,
) -> Result<TimedRun> {
    // The default tolerances stop a converged run early; iteration counts in benchmarks stay comparable because
    // runs are deterministic.
    let stop =
        Stop { max_iterations: iterations, max_evaluations: iterations.saturating_mul(20).max(20), ..Stop::default() };
    let mut evaluating = Duration::ZERO;
    let mut objective = FnObjective(|x: &[f64]| {
        let t = Instant::now();
        let out = eval(x);
        evaluating += t.elapsed();
        out
    });
    let progress = label.map(|l| Progress::new(l, iterations));
    let started = Instant::now();
    let result = Lbfgs::new(stop).minimize_with(&mut objective, x0, |record, _| {
        if let (Some(p), 1..) = (&progress, record.iteration) {
            p.step(record.iteration - 1, &format!("cost {}  |grad| {:.3e}", fmt_loss(record.cost), record.grad_norm));
        }
        ControlFlow::Continue(())
    });
    let optimize = started.elapsed();
    if let Some(p) = &progress {
        p.finish();
    }
    let result = result.map_err(optim_error)?;
    Ok(TimedRun { result, optimize, evaluating })
}

/// An optimizer error as an `anyhow` error, keeping the objective's own error chain.
fn optim_error(e: OptimError<anyhow::Error>) -> anyhow::Error {
    match e {
        OptimError::Objective { evaluation, source } => source.context(format!("objective evaluation {evaluation}")),
        other => anyhow!("{other}"),
    }
}

/// Trains a sparse autoencoder on the patches behind `data`: one `sae.cost_grad` round per evaluation.
pub fn train_sae(
    cluster: &mut Cluster,
    data: &DatasetHandle<f64>,
    config: &SaeConfig,
    iterations: usize,
    seed: u64,
    label: Option<&str>,
) -> Result<TimedRun> {
    let theta0 = config.init(seed)?;
    minimize(iterations, &theta0, label, |theta| {
        let partial = cluster.run(&SaeJob, &config.params(theta)?, data)?;
        Ok(config.finish(theta, &partial)?)
    })
}

/// Trains a softmax regression on the labelled rows behind `data`: one `softmax.cost_grad` round per evaluation.
pub fn train_softmax(
    cluster: &mut Cluster,
    data: &DatasetHandle<f32>,
    config: &SoftmaxConfig,
    iterations: usize,
    label: Option<&str>,
) -> Result<TimedRun> {
    let theta0 = config.init()?;
    minimize(iterations, &theta0, label, |theta| {
        let partial = cluster.run(&SoftmaxJob, &config.params(theta)?, data)?;
        Ok(config.finish(theta, &partial)?)
    })
}
