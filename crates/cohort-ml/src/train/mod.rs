//! Training loops as resumable steppers, and the one driver that runs them.
//!
//! A [`Stepper`] is an algorithm's state plus a `step` that performs one iteration (L-BFGS, gradient descent) or
//! one pass (model averaging, synchronous SGD) against a cluster, changing the state only when the step succeeds.
//! Its state is serialisable, so the [`Driver`] can checkpoint it every K iterations or epochs, on request (an
//! interrupt flag, e.g. set by Ctrl-C) and when a step fails, and a restarted master can load it and continue
//! bit-identically. The steppers:
//!
//! - [`LbfgsTrainer`]: L-BFGS over any [`RoundModel`] (one map-reduce round per evaluation): softmax regression,
//!   the sparse autoencoder, the MLP's full-batch objective.
//! - [`GdTrainer`]: fixed-step gradient descent over a [`RoundModel`].
//! - [`AveragingTrainer`]: the MLP by parallel SGD (Adam or momentum) with model averaging.
//! - [`BspTrainer`]: the MLP by synchronous data-parallel SGD.
//!
//! ```no_run
//! use cohort::{Cluster, Registry, WorkerSpec};
//! use cohort_ml::datasets;
//! use cohort_ml::softmax::{SoftmaxConfig, SoftmaxJob};
//! use cohort_ml::train::{Driver, LbfgsTrainer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! cohort::worker::run_if_worker(&Registry::new().map_reduce(SoftmaxJob));
//! let data = datasets::fashion_mnist(None)?;
//! let mut cluster = Cluster::builder().workers(WorkerSpec::parse_list("local:2")?).start()?;
//! let train = cluster.load(&data.train)?;
//! let mut trainer = LbfgsTrainer::new(SoftmaxConfig::new(10, 784, 1e-4), 100)?;
//! let driver = Driver::new().checkpoint("ckpt", 10).resume_if_present();
//! let summary = driver.run(&mut trainer, &mut cluster, &train, |_, r| println!("{} {}", r.step, r.loss))?;
//! println!("{}: cost {}", summary.outcome, trainer.result().map_or(f64::NAN, |r| r.cost));
//! # Ok(())
//! # }
//! ```

mod driver;
mod lbfgs;
mod minibatch;
mod objective;

use std::collections::BTreeMap;

use cohort::{Cluster, DatasetHandle, Element};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use driver::{Driver, JsonlLog, Outcome, Summary};
pub use lbfgs::{GdTrainer, LbfgsTrainer};
pub use minibatch::{AveragingTrainer, BspTrainer, Bytes, MiniBatchState, SavedSession, Schedule};
pub use objective::{ClusterObjective, RoundModel};

use crate::checkpoint::CheckpointError;
use crate::error::MlError;
use crate::optim::OptimError;

/// Why training could not continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The cluster failed (a lost worker, a protocol error, ...).
    #[error(transparent)]
    Cluster(#[from] cohort::Error),
    /// A model rejected its input.
    #[error(transparent)]
    Model(#[from] MlError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// An objective evaluation failed.
    #[error("objective evaluation {evaluation}: {source}")]
    Evaluation {
        /// Which evaluation (1-based).
        evaluation: usize,
        /// Why.
        source: Box<TrainError>,
    },
    /// The optimizer cannot continue (bad options, a non-finite objective).
    #[error("{0}")]
    Optimizer(String),
    /// A worker reported an error inside a pass.
    #[error("training failed: {0}")]
    Worker(String),
    /// The loss became NaN or infinite.
    #[error("the training loss diverged ({loss}) in {unit} {step}; lower the learning rate")]
    Diverged {
        /// The loss.
        loss: f64,
        /// `iteration` or `epoch`.
        unit: &'static str,
        /// Which one.
        step: usize,
    },
    /// A setting out of range, or a state that does not fit the run it is restored into.
    #[error("{0}")]
    Config(String),
    /// The per-step log could not be written.
    #[error("cannot write the log {}: {source}", path.display())]
    Log {
        /// The log file.
        path: std::path::PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
}

impl From<OptimError<TrainError>> for TrainError {
    fn from(e: OptimError<TrainError>) -> Self {
        match e {
            OptimError::Objective { evaluation, source } => {
                TrainError::Evaluation { evaluation, source: Box::new(source) }
            }
            other => TrainError::Optimizer(other.to_string()),
        }
    }
}

/// `Result` with [`TrainError`].
pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// The figures of one completed iteration or epoch: what the driver logs as one JSON line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// `iteration` or `epoch`.
    pub unit: &'static str,
    /// Which one, from 1.
    pub step: usize,
    /// Training loss (L-BFGS, gradient descent: the full objective; mini-batch SGD: the mean over the epoch's
    /// batches, each at the parameters it was trained at).
    pub loss: f64,
    /// Training accuracy where the algorithm measures it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_accuracy: Option<f64>,
    /// Test accuracy, if the caller's observer measured it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    /// Gradient norm (full-batch optimizers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Objective evaluations so far (full-batch optimizers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evaluations: Option<usize>,
    /// Rounds (passes) so far (mini-batch trainers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passes: Option<u64>,
    /// Seconds this iteration or epoch took.
    pub seconds: f64,
    /// Bytes sent to the workers during it.
    pub bytes_sent: u64,
    /// Bytes received from the workers during it.
    pub bytes_received: u64,
}

impl StepRecord {
    /// A record with the loss and time; the driver fills in the bytes.
    pub fn new(unit: &'static str, step: usize, loss: f64, seconds: f64) -> StepRecord {
        StepRecord {
            unit,
            step,
            loss,
            train_accuracy: None,
            test_accuracy: None,
            grad_norm: None,
            evaluations: None,
            passes: None,
            seconds,
            bytes_sent: 0,
            bytes_received: 0,
        }
    }
}

/// A training algorithm run one step at a time against a cluster, with a state that can be saved and restored.
///
/// Contract: `step` changes the state only when it succeeds, so after an error [`state`](Self::state) is still
/// the state after the last completed step (the driver checkpoints it). `restore` followed by the same steps gives
/// bit-identical results.
pub trait Stepper {
    /// Element type of the data set.
    type Elem: Element;
    /// The saved state.
    type State: Serialize + DeserializeOwned;

    /// The algorithm, e.g. `lbfgs` (recorded in checkpoints).
    fn algorithm(&self) -> &'static str;
    /// `iteration` or `epoch`: what [`completed`](Self::completed) counts and checkpoints are spaced by.
    fn unit(&self) -> &'static str;
    /// The model's kind and shape and every setting that determines the trajectory, as printed values.
    fn settings(&self) -> BTreeMap<String, String>;
    /// One iteration or pass. `Some(record)` when an iteration or epoch completed with it.
    fn step(&mut self, cluster: &mut Cluster, data: &DatasetHandle<Self::Elem>) -> Result<Option<StepRecord>>;
    /// Iterations or epochs completed.
    fn completed(&self) -> usize;
    /// Why the run stopped, once it has.
    fn finished(&self) -> Option<String>;
    /// The state to save (between two steps).
    fn state(&self, cluster: &Cluster) -> Self::State;
    /// Continues from a saved state on `cluster` (workers started and `data` loaded).
    fn restore(&mut self, state: Self::State, cluster: &mut Cluster, data: &DatasetHandle<Self::Elem>) -> Result<()>;
    /// Releases what the run holds on the cluster (e.g. a multipass session).
    fn close(&mut self, _cluster: &mut Cluster) -> Result<()> {
        Ok(())
    }
}

/// Settings as printed values, for [`Stepper::settings`].
pub(crate) fn settings<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}
