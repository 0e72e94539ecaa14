//! cohort-ml's models as parameter-server jobs ([`cohort::ps::PsJob`]): workers draw mini-batches from their resident
//! rows, pull the parameters a batch needs, compute its gradient with the model's own code, and push it; the servers
//! apply the update rule under the run's consistency mode ([`cohort::Cluster::train_ps`]).
//!
//! - [`SoftmaxPs`] (`"softmax.ps"`): softmax regression, dense (every batch pulls and pushes all `k·(d + 1)`
//!   weights), through [`crate::softmax`]'s cost and gradient; the parameters are the `[W, b]` layout of
//!   [`SoftmaxConfig`](crate::softmax::SoftmaxConfig) in `f32`.
//! - [`MlpPs`] (`"mlp.ps"`): the multilayer perceptron, dense, its gradient from
//!   [`Mlp::batch_grad`](crate::mlp::Mlp::batch_grad) in [`Mlp::init`](crate::mlp::Mlp::init)'s layout.
//! - [`SparseLogRegPs`] (`"sparse_logreg.ps"`): sparse logistic regression: a batch pulls and pushes only the keys
//!   its rows touch ([`crate::sparse::batch_keys`], [`crate::sparse::loss_grad_into`]).
//!
//! Each implements [`Evaluate`] (loss and accuracy of trained parameters on a data set, in this process) and can
//! save its parameters as a [`crate::model_file`] (softmax and MLP files are what `cohort eval` reads).
//! [`register`] adds all three to a [`Registry`]: every process of a program — the master and its workers — must
//! build the same registry.
//!
//! A worker's gradient is the gradient of its batch's **mean** loss; the servers' rule steps on each push (or, under
//! BSP, on the sum of a clock's pushes), so with `N` workers under BSP a clock moves the model by `N` mean
//! gradients.
//!
//! ```no_run
//! use cohort::cluster::PsOptions;
//! use cohort::{Cluster, Registry, WorkerSpec};
//! use cohort_ml::datasets;
//! use cohort_ml::ps::{self, Evaluate, SoftmaxPs};
//! use cohort_ml::softmax::SoftmaxConfig;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = ps::register(Registry::new());
//! cohort::worker::run_if_worker(&registry);
//! let data = datasets::fashion_mnist(None)?;
//! let config = SoftmaxConfig::new(10, 784, 1e-4);
//! let mut cluster = Cluster::builder()
//!     .workers(WorkerSpec::parse_list("local:2")?)
//!     .servers(WorkerSpec::parse_list("local:2")?)
//!     .start()?;
//! let train = cluster.load(&data.train.clone().with_chunks(8)?)?;
//! let options = PsOptions {
//!     consistency: "ssp:2".parse()?,
//!     rule: "sgd:0.5".into(),
//!     batch: 64,
//!     clocks: 500,
//!     ..PsOptions::default()
//! };
//! let out = cluster.train_ps(&SoftmaxPs, &config, &train, &options, |_| {})?;
//! let test = SoftmaxPs.evaluate(&config, &out.params, &data.test)?;
//! println!("test accuracy {:.4}, loss {:.4}", test.accuracy, test.loss);
//! let training = serde_json::json!({ "clocks": 500, "consistency": "ssp:2" });
//! SoftmaxPs::save_model("softmax.safetensors".as_ref(), &config, &out.params, training)?;
//! # Ok(())
//! # }
//! ```

mod mlp;
mod softmax;
mod sparse;

use cohort::ps::{Batch, PsJob};
use cohort::{Dataset, Registry, Shard};

use crate::error::Result;

pub use mlp::MlpPs;
pub use softmax::SoftmaxPs;
pub use sparse::{SparseLogRegConfig, SparseLogRegPs};

/// Loss and accuracy of a model's parameters over a data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Rows evaluated.
    pub rows: u64,
    /// The mean loss the model minimises: softmax — cross-entropy plus the decay `(λ/2)‖W‖²` (what `cohort eval`
    /// prints as its cost); MLP — cross-entropy; sparse logistic regression — the objective `f(w)` of
    /// [`crate::sparse::logreg`] (logistic loss plus its frequency-weighted decay).
    pub loss: f64,
    /// Fraction of rows classified right.
    pub accuracy: f64,
}

/// A parameter-server job whose trained parameters can be measured on a data set, in this process (the master, a
/// benchmark, a test).
pub trait Evaluate: PsJob<Elem = f32> {
    /// Loss and accuracy of `params` (as [`cohort::Cluster::train_ps`] returns them, or as a snapshot event hands
    /// them over) on every row of `data`. Parameters or rows that do not fit the configuration are an error.
    fn evaluate(&self, config: &Self::Config, params: &[f32], data: &Dataset<f32>) -> Result<Evaluation>;
}

/// Adds [`SoftmaxPs`], [`MlpPs`] and [`SparseLogRegPs`] to `registry`.
pub fn register(registry: Registry) -> Registry {
    registry.parameter_server(SoftmaxPs).parameter_server(MlpPs).parameter_server(SparseLogRegPs)
}

/// A mini-batch seen as a shard, for the model functions that take one. Its rows are numbered from 0 within the
/// batch (a worker's batch gathers rows from anywhere in its chunks), so errors are reported with [`in_batch`].
fn shard_of<'a>(batch: &Batch<'a, f32>) -> Shard<'a, f32> {
    Shard { values: batch.values, cols: batch.cols, labels: batch.labels, first_row: 0, chunk: 0 }
}

/// A model error on a mini-batch as a worker reports it.
fn in_batch(job: &str, rows: usize, error: impl std::fmt::Display) -> String {
    format!("{job}: in a mini-batch of {rows} rows (numbered from 0 within the batch): {error}")
}

#[cfg(test)]
mod tests;
