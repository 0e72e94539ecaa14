//! Softmax regression as a parameter-server job: the dense model of [`crate::softmax`] (`θ = [W (k×d), b (k)]`),
//! held by the servers in `f32`, every mini-batch's gradient computed by [`SoftmaxConfig::partial`] and
//! [`SoftmaxConfig::finish`] in `f64` on the widened parameters.

use std::path::Path;

use cohort::ps::{Batch, BatchStats, PsJob, Selection};
use cohort::wire::WireError;
use cohort::{Dataset, Payload};
use serde_json::{json, Value};

use super::{in_batch, shard_of, Evaluate, Evaluation};
use crate::error::Result;
use crate::model_file::{self, ModelFileError, Params};
use crate::softmax::SoftmaxConfig;

/// Softmax regression with L2 decay through parameter servers (`"softmax.ps"`), configured by a
/// [`SoftmaxConfig`] (`SoftmaxConfig::new(10, 784, 1e-4)` for Fashion-MNIST's raw pixels).
///
/// Keys are the whole parameter vector (`Selection::Range`), `k·(d + 1)` values in [`SoftmaxConfig`]'s order;
/// initialised to zero (the problem is convex). A worker's gradient is that of the batch's mean cross-entropy plus
/// `(λ/2)‖W‖²`; its reported loss is the batch's cross-entropy (the decay left out) and it counts the rows the
/// parameters it read classify right. The data are `f32` rows of `d` values with class indices as labels, as for
/// [`crate::softmax::SoftmaxJob`]: the parameters a run returns are those [`SoftmaxConfig::accuracy`] and
/// `cohort eval` take (widened to `f64`, see [`SoftmaxPs::theta`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftmaxPs;

impl SoftmaxPs {
    /// `params` widened to the `f64` vector [`SoftmaxConfig`]'s functions take.
    pub fn theta(params: &[f32]) -> Vec<f64> {
        params.iter().map(|&p| f64::from(p)).collect()
    }

    /// Saves trained parameters as a softmax model file (kind `softmax`, `f64` parameters, the architecture
    /// `cohort eval` reads), with `training` recorded as its metadata.
    pub fn save_model(
        path: &Path,
        config: &SoftmaxConfig,
        params: &[f32],
        training: Value,
    ) -> std::result::Result<(), ModelFileError> {
        let architecture = json!({ "classes": config.classes, "features": config.features, "lambda": config.lambda });
        model_file::save(path, "softmax", architecture, training, &Params::F64(Self::theta(params)), &[])
    }
}

impl PsJob for SoftmaxPs {
    const NAME: &'static str = "softmax.ps";
    type Elem = f32;
    type Config = SoftmaxConfig;

    fn num_params(&self, config: &SoftmaxConfig) -> u64 {
        (config.classes as u64).saturating_mul((config.features as u64).saturating_add(1))
    }

    /// Zeros. A shape [`SoftmaxConfig::validate`] refuses fails on the workers with its message, except one too
    /// large to allocate, which gets no parameters (the master refuses the run: the length is not `num_params`).
    fn init(&self, config: &SoftmaxConfig, _seed: u64) -> Vec<f32> {
        match self.num_params(config) {
            n if n <= u64::from(u32::MAX) => vec![0.0; n as usize],
            _ => Vec::new(),
        }
    }

    fn keys(&self, config: &SoftmaxConfig, _batch: &Batch<'_, f32>) -> Selection {
        Selection::Range { start: 0, end: self.num_params(config) }
    }

    fn gradient(
        &self,
        config: &SoftmaxConfig,
        params: &[f32],
        _keys: &Selection,
        batch: &Batch<'_, f32>,
        grad: &mut [f32],
    ) -> std::result::Result<BatchStats, String> {
        let rows = batch.rows();
        let fail = |e| in_batch(Self::NAME, rows, e);
        if rows == 0 {
            return Ok(BatchStats::default());
        }
        let theta = Self::theta(params);
        let shard = shard_of(batch);
        let partial = config.partial(&theta, &shard).map_err(fail)?;
        let (_, mean_grad) = config.finish(&theta, &partial).map_err(fail)?;
        for (g, m) in grad.iter_mut().zip(&mean_grad) {
            *g = *m as f32;
        }
        let predicted = config.predict(&theta, &shard).map_err(fail)?;
        let labels = batch.labels.unwrap_or_default();
        let correct = predicted.iter().zip(labels).filter(|(p, y)| **p as f32 == **y).count();
        Ok(BatchStats { loss_sum: partial.sums[0], correct: correct as u64, rows: rows as u64 })
    }
}

impl Evaluate for SoftmaxPs {
    /// The cost `cohort eval` prints (mean cross-entropy plus `(λ/2)‖W‖²`) and the accuracy.
    fn evaluate(&self, config: &SoftmaxConfig, params: &[f32], data: &Dataset<f32>) -> Result<Evaluation> {
        let theta = Self::theta(params);
        let shard = data.as_shard();
        let accuracy = config.accuracy(&theta, &shard)?;
        let (loss, _) = config.cost_grad(&theta, &shard)?;
        Ok(Evaluation { rows: data.rows() as u64, loss, accuracy })
    }
}

/// The configuration travels to the workers as `(classes, features, λ)`; it is checked where it is used.
impl Payload for SoftmaxConfig {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.classes as u64, self.features as u64, self.lambda).encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        let (classes, features, lambda) = <(u64, u64, f64)>::decode(input)?;
        let size = |n: u64| usize::try_from(n).map_err(|_| WireError::Malformed(format!("softmax size {n} too large")));
        Ok(SoftmaxConfig { classes: size(classes)?, features: size(features)?, lambda })
    }
}
