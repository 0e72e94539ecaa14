//! Sparse logistic regression over millions of features: the workload parameter servers exist for.
//!
//! - [`generate`]: a seeded generator of binary-classification rows with power-law feature frequencies (a few
//!   hundred non-zeros per row out of millions of features), written as libsvm text (`cohort gen sparse`).
//! - [`encoding`]: sparse rows kept resident in cohort's dense, chunked [`Dataset`](cohort::Dataset) as fixed-width
//!   rows `[nnz, keys…, values…]`, and [`SparseRows`], a zero-copy view of a [`Shard`](cohort::Shard) of them.
//! - [`load`]: libsvm files into that encoding.
//! - [`logreg`]: per mini-batch, the keys it touches ([`batch_keys`]) and the loss and gradient over exactly those
//!   keys ([`loss_grad`]); full evaluation as a map-reduce job ([`SparseLogRegEval`]); a sequential SGD baseline
//!   ([`sgd`]).
//!
//! A parameter-server worker's loop over its resident chunk: pull only the batch's keys, compute, push the
//! gradient for those keys.
//!
//! ```
//! use cohort_ml::sparse::{batch_keys, loss_grad, SparseGenerator, SparseRows, SparseSpec};
//!
//! let spec = SparseSpec { rows: 300, features: 10_000, nnz: 40, ..SparseSpec::default() };
//! let set = SparseGenerator::new(spec)?.dataset()?;
//! // The "server": one weight per feature. A real one holds key ranges in other processes.
//! let mut server = vec![0.0f32; set.features];
//! let shard = set.data.as_shard(); // on a worker: the shard of a resident chunk
//! let rows = SparseRows::new(&shard)?;
//! let (size, lr) = (50, 2.0);
//! for start in (0..rows.len()).step_by(size) {
//!     let batch = rows.batch(start..(start + size).min(rows.len()))?;
//!     let keys = batch_keys(&batch); // pull these…
//!     let weights: Vec<f32> = keys.iter().map(|&k| server[k as usize]).collect();
//!     let (loss, grad) = loss_grad(&keys, &weights, &batch, 1e-6)?;
//!     for (&k, &g) in keys.iter().zip(&grad) {
//!         server[k as usize] -= lr * g / batch.len() as f32; // …and push the gradient for the same keys
//!     }
//!     assert!(loss.is_finite() && keys.len() < set.features);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod encoding;
pub mod generate;
pub mod load;
pub mod logreg;
pub mod zipf;

use std::io;
use std::path::PathBuf;

use cohort::data::loaders::LoadError;

use crate::error::MlError;

pub use encoding::{encoded_cols, SparseBuilder, SparseDataset, SparseRow, SparseRows, MAX_FEATURES};
pub use generate::{GenStats, GeneratedRow, SparseGenerator, SparseSpec, ValueKind};
pub use load::{load_libsvm_sparse, SparseLoadOptions};
pub use logreg::{
    batch_keys, eval_partial, evaluate, finish_eval, loss_grad, loss_grad_into, sgd, BatchFit, EpochRecord, Evaluation,
    SgdConfig, SparseLogRegEval,
};
pub use zipf::Zipf;

/// Why a sparse data set could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SparseError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file's rows do not make an encoded data set.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: MlError,
    },
    /// Settings that do not make a data set.
    #[error(transparent)]
    Model(#[from] MlError),
}

#[cfg(test)]
mod tests;
