//! The multilayer perceptron as a parameter-server job: the dense model of [`crate::mlp`] (flat `f32` parameters,
//! layer by layer), each mini-batch's gradient from [`Mlp::batch_grad`], the model's own forward and backward pass.

use std::path::Path;

use cohort::ps::{Batch, BatchStats, PsJob, Selection};
use cohort::wire::WireError;
use cohort::{Dataset, Payload};
use serde_json::{json, Value};

use super::{in_batch, shard_of, Evaluate, Evaluation};
use crate::datasets::Scaling;
use crate::error::Result;
use crate::mlp::{Mlp, Workspace};
use crate::model_file::{self, ModelFileError, Params};

/// A multilayer perceptron (ReLU hidden layers, softmax cross-entropy) through parameter servers (`"mlp.ps"`),
/// configured by its shape: `Mlp::new(&[784, 32, 10])?` is the network of `cohort train mlp`.
///
/// Keys are the whole parameter vector (`Selection::Range`) in [`Mlp`]'s layout `[W₁, b₁, W₂, b₂, …]`,
/// He-initialised from the run's seed ([`Mlp::init`]). A worker's gradient is that of the batch's mean
/// cross-entropy; it reports the batch's summed loss and the rows classified right at the parameters it read. The
/// data are `f32` rows of `inputs` values (standardise them as `cohort train mlp` does, with
/// [`crate::datasets::prepare`]) and class indices as labels.
#[derive(Debug, Clone, Copy, Default)]
pub struct MlpPs;

impl MlpPs {
    /// Saves trained parameters as an MLP model file (kind `mlp`, the file `cohort eval` reads), with the input
    /// standardisation the training data had (if any) and `training` recorded as metadata.
    pub fn save_model(
        path: &Path,
        mlp: &Mlp,
        params: &[f32],
        scaling: Option<&Scaling>,
        training: Value,
    ) -> std::result::Result<(), ModelFileError> {
        let extra =
            scaling.map(|s| vec![("input.mean", &s.mean[..]), ("input.scale", &s.scale[..])]).unwrap_or_default();
        let architecture = json!({ "layers": mlp.layers(), "standardized": scaling.is_some() });
        model_file::save(path, "mlp", architecture, training, &Params::F32(params.to_vec()), &extra)
    }
}

impl PsJob for MlpPs {
    const NAME: &'static str = "mlp.ps";
    type Elem = f32;
    type Config = Mlp;

    fn num_params(&self, mlp: &Mlp) -> u64 {
        mlp.n_params() as u64
    }

    fn init(&self, mlp: &Mlp, seed: u64) -> Vec<f32> {
        mlp.init(seed)
    }

    fn keys(&self, mlp: &Mlp, _batch: &Batch<'_, f32>) -> Selection {
        Selection::Range { start: 0, end: mlp.n_params() as u64 }
    }

    fn gradient(
        &self,
        mlp: &Mlp,
        params: &[f32],
        _keys: &Selection,
        batch: &Batch<'_, f32>,
        grad: &mut [f32],
    ) -> std::result::Result<BatchStats, String> {
        let rows = batch.rows();
        let fail = |e| in_batch(Self::NAME, rows, e);
        mlp.check_params(params.len()).map_err(fail)?;
        mlp.check_params(grad.len()).map_err(fail)?;
        let classes = mlp.classes_of(&shard_of(batch)).map_err(fail)?;
        if classes.is_empty() {
            return Ok(BatchStats::default());
        }
        // A workspace per batch: a few small buffers (`rows × width` per layer), nothing next to the GEMMs.
        let mut ws = Workspace::default();
        let scale = 1.0 / classes.len() as f32;
        let (loss, correct) = mlp.batch_grad(params, batch.values, &classes, &mut ws, grad, scale).map_err(fail)?;
        Ok(BatchStats { loss_sum: loss, correct: correct as u64, rows: rows as u64 })
    }
}

impl Evaluate for MlpPs {
    /// Mean cross-entropy and accuracy ([`Mlp::evaluate`]); `data` standardised as the training rows were.
    fn evaluate(&self, mlp: &Mlp, params: &[f32], data: &Dataset<f32>) -> Result<Evaluation> {
        let e = mlp.evaluate(params, &data.as_shard())?;
        Ok(Evaluation { rows: e.rows as u64, loss: e.loss, accuracy: e.accuracy })
    }
}

/// The shape travels to the workers as its layer widths and is checked again by [`Mlp::new`] when decoded.
impl Payload for Mlp {
    fn encode(&self, out: &mut Vec<u8>) {
        self.layers().iter().map(|&n| n as u64).collect::<Vec<u64>>().encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        let layers = Vec::<u64>::decode(input)?
            .into_iter()
            .map(|n| usize::try_from(n).map_err(|_| WireError::Malformed(format!("MLP layer width {n} too large"))))
            .collect::<std::result::Result<Vec<usize>, _>>()?;
        Mlp::new(&layers).map_err(|e| WireError::Malformed(e.to_string()))
    }
}
