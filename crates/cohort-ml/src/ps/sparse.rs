//! Sparse logistic regression as a parameter-server job: a mini-batch pulls and pushes only the keys its rows touch
//! ([`batch_keys`]), its gradient over exactly those keys from [`loss_grad_into`]. The rows are the resident
//! encoding of [`crate::sparse::encoding`].

use std::path::Path;

use cohort::ps::{Batch, BatchStats, PsJob, Selection};
use cohort::wire::WireError;
use cohort::{Dataset, Payload};
use serde_json::{json, Value};

use super::{in_batch, shard_of, Evaluate, Evaluation};
use crate::error::{MlError, Result};
use crate::model_file::{self, ModelFileError, Params};
use crate::sparse::{
    batch_keys, encoded_cols, evaluate, loss_grad_into, SparseDataset, SparseRow, SparseRows, MAX_FEATURES,
};

/// The settings of [`SparseLogRegPs`]: the model's size, the rows' encoding width and the decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseLogRegConfig {
    /// Number of features `F`: one weight per feature, keys `0..F`.
    pub features: usize,
    /// Non-zeros per row at most (`W`): the data set's rows have `1 + 2W` values.
    pub width: usize,
    /// L2 decay `λ` (each row decays the weights of its own keys, see [`crate::sparse::logreg`]).
    pub l2: f64,
}

impl SparseLogRegConfig {
    /// `F` features, rows of at most `W` non-zeros, decay `λ`; checked.
    pub fn new(features: usize, width: usize, l2: f64) -> Result<SparseLogRegConfig> {
        let config = SparseLogRegConfig { features, width, l2 };
        config.validate()?;
        Ok(config)
    }

    /// The settings for training on `data` (its feature count and width) with decay `λ`.
    pub fn for_data(data: &SparseDataset, l2: f64) -> Result<SparseLogRegConfig> {
        SparseLogRegConfig::new(data.features, data.width, l2)
    }

    /// Checks `F` in `1..=2²⁴`, `W ≥ 1` and `λ` finite and `≥ 0`.
    pub fn validate(&self) -> Result<()> {
        if self.features == 0 || self.features > MAX_FEATURES {
            return Err(MlError::Config {
                what: "sparse feature count",
                detail: format!("{} features: need 1..={MAX_FEATURES} (keys are held as f32)", self.features),
            });
        }
        if self.width == 0 {
            return Err(MlError::Config {
                what: "sparse row width",
                detail: "0 non-zeros per row: give the data set's width (SparseDataset::width)".into(),
            });
        }
        if !(self.l2 >= 0.0 && self.l2.is_finite()) {
            return Err(MlError::Config {
                what: "L2 decay λ",
                detail: format!("{} is not a finite number ≥ 0", self.l2),
            });
        }
        Ok(())
    }

    /// The rows of a mini-batch, each checked, with every key below `F`.
    fn rows<'a>(&self, batch: &Batch<'a, f32>) -> Result<Vec<SparseRow<'a>>> {
        self.validate()?;
        if batch.cols != encoded_cols(self.width) {
            return Err(MlError::Columns {
                model: "sparse logistic regression",
                expected: encoded_cols(self.width),
                got: batch.cols,
                hint: "rows are [nnz, W keys, W values]: give the width of the data set loaded",
            });
        }
        let rows = SparseRows::new(&shard_of(batch))?.batch(0..batch.rows())?;
        for row in &rows {
            if let Some(k) = row.keys().find(|&k| k >= self.features as u64) {
                return Err(MlError::SparseRow {
                    row: row.index(),
                    detail: format!("key {k} is beyond the model's {} features", self.features),
                });
            }
        }
        Ok(rows)
    }
}

/// Sparse binary logistic regression through parameter servers (`"sparse_logreg.ps"`), configured by a
/// [`SparseLogRegConfig`], on data in the resident sparse encoding ([`crate::sparse::load_libsvm_sparse`],
/// [`crate::sparse::SparseGenerator::dataset`]).
///
/// Keys are the batch's ([`batch_keys`], `Selection::Keys`): a worker pulls the weights of those keys only and
/// pushes the gradient of the batch's mean objective for exactly those keys, so a batch of `b` rows moves about
/// `12 × distinct keys` bytes each way instead of `4F`. Weights start at zero. It reports the batch's objective
/// terms (`L` of [`crate::sparse::loss_grad`]) and the rows classified right at the weights it read. A malformed
/// row, or a key beyond `F`, pulls nothing and fails the batch's gradient with an error naming the row.
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseLogRegPs;

impl SparseLogRegPs {
    /// Saves trained weights as a model file (kind `sparse_logreg`, the weights as one `params` tensor of `F`
    /// `f32`s, the configuration as its architecture), with `training` recorded as metadata.
    pub fn save_model(
        path: &Path,
        config: &SparseLogRegConfig,
        params: &[f32],
        training: Value,
    ) -> std::result::Result<(), ModelFileError> {
        let architecture = json!({ "features": config.features, "width": config.width, "l2": config.l2 });
        model_file::save(path, "sparse_logreg", architecture, training, &Params::F32(params.to_vec()), &[])
    }
}

impl PsJob for SparseLogRegPs {
    const NAME: &'static str = "sparse_logreg.ps";
    type Elem = f32;
    type Config = SparseLogRegConfig;

    fn num_params(&self, config: &SparseLogRegConfig) -> u64 {
        config.features as u64
    }

    /// Zeros; no weights for a feature count beyond [`MAX_FEATURES`] (the master refuses the run: the length is not
    /// `num_params`).
    fn init(&self, config: &SparseLogRegConfig, _seed: u64) -> Vec<f32> {
        if config.features <= MAX_FEATURES {
            vec![0.0; config.features]
        } else {
            Vec::new()
        }
    }

    fn keys(&self, config: &SparseLogRegConfig, batch: &Batch<'_, f32>) -> Selection {
        // A bad batch pulls nothing; its gradient then reports why.
        Selection::Keys(config.rows(batch).map(|rows| batch_keys(&rows)).unwrap_or_default())
    }

    fn gradient(
        &self,
        config: &SparseLogRegConfig,
        params: &[f32],
        keys: &Selection,
        batch: &Batch<'_, f32>,
        grad: &mut [f32],
    ) -> std::result::Result<BatchStats, String> {
        let n = batch.rows();
        let fail = |e: MlError| in_batch(Self::NAME, n, e);
        let rows = config.rows(batch).map_err(fail)?;
        let Selection::Keys(keys) = keys else {
            return Err(in_batch(Self::NAME, n, format!("{keys:?}: this job pulls the batch's keys, not a range")));
        };
        if rows.is_empty() {
            return Ok(BatchStats::default());
        }
        let fit = loss_grad_into(keys, params, &rows, config.l2, 1.0 / n as f64, grad).map_err(fail)?;
        Ok(BatchStats { loss_sum: fit.loss, correct: fit.correct, rows: n as u64 })
    }
}

impl Evaluate for SparseLogRegPs {
    /// The objective `f(w)` as [`Evaluation::loss`] and the accuracy ([`crate::sparse::evaluate`]).
    fn evaluate(&self, config: &SparseLogRegConfig, params: &[f32], data: &Dataset<f32>) -> Result<Evaluation> {
        config.validate()?;
        if params.len() != config.features {
            return Err(MlError::Length {
                what: "sparse logistic-regression weights",
                expected: config.features,
                got: params.len(),
                hint: "give one weight per feature",
            });
        }
        let e = evaluate(params, config.l2, &SparseRows::new(&data.as_shard())?)?;
        Ok(Evaluation { rows: e.rows, loss: e.objective, accuracy: e.accuracy })
    }
}

/// The settings travel to the workers as `(F, W, λ)`, checked where they are used.
impl Payload for SparseLogRegConfig {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.features as u64, self.width as u64, self.l2).encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        let (features, width, l2) = <(u64, u64, f64)>::decode(input)?;
        let size = |n: u64| usize::try_from(n).map_err(|_| WireError::Malformed(format!("sparse size {n} too large")));
        Ok(SparseLogRegConfig { features: size(features)?, width: size(width)?, l2 })
    }
}
