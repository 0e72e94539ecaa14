//! # cohort-ml
//!
//! Optimizers and models built on the cohort framework. Models implement cohort's job traits; they never touch a
//! socket.
//!
//! - [`optim`]: L-BFGS with a Moré–Thuente line search, and fixed-step gradient descent, over an [`optim::Objective`]
//!   whose one evaluation (cost *and* gradient) may be a distributed round that fails.
//! - [`sae`]: the UFLDL sparse autoencoder; its exact cost and gradient take **one** map-reduce round
//!   ([`sae::SaeJob`], `"sae.cost_grad"`), see the module docs for how the sparsity term is handled.
//! - [`softmax`]: multinomial logistic regression with L2 decay ([`softmax::SoftmaxJob`], `"softmax.cost_grad"`).
//! - [`sparse`]: sparse logistic regression over millions of power-law features (generator, resident encoding,
//!   per-batch keys and gradients for a parameter server, evaluation job, SGD baseline).
//! - [`mlp`]: a multilayer perceptron (ReLU, softmax cross-entropy, `f32`), trained by parallel SGD with model
//!   averaging or synchronous SGD ([`mlp::jobs`], multipass jobs) or by full-batch L-BFGS ([`mlp::full_batch`]).
//! - [`ps`]: softmax regression, the MLP and sparse logistic regression as parameter-server jobs
//!   ([`ps::SoftmaxPs`], [`ps::MlpPs`], [`ps::SparseLogRegPs`]) with the evaluation of their trained parameters.
//! - [`train`]: the training loops as resumable steppers (L-BFGS, gradient descent, model averaging, synchronous
//!   SGD) and the one [`train::Driver`] that runs them with checkpoints, resume, JSON lines and an interrupt flag.
//! - [`checkpoint`]: atomic checkpoint directories (manifest with format version, fingerprint and checksum).
//! - [`model_file`]: trained models as safetensors files.
//! - [`datasets`]: Fashion-MNIST or a generated stand-in, cut and standardised.
//! - [`kernels`]: single-threaded faer products on row-major slices, a vectorised `exp`/sigmoid, and an `f32`
//!   sigmoid (also as AVX2 intrinsics with the same bits).
//! - [`skinny`]: softmax regression's two products for a few classes, register tiles over `f32` or `f64` rows
//!   (AVX2/FMA where available, a portable path with the same bits).
//! - [`roofline`]: the machine's measured limits (GEMM peak in `f32`/`f64`, memory bandwidth) for `cohort bench
//!   roofline`.
//! - [`Partial`]: the per-chunk sums every model's job returns.
//!
//! Training = an objective that runs one round per evaluation, handed to an optimizer. Sequentially:
//!
//! ```
//! use cohort_ml::optim::{FnObjective, Lbfgs, Stop};
//! use cohort_ml::sae::{sample_patches, SaeConfig};
//!
//! let images: Vec<f32> = (0..2 * 12 * 12).map(|i| ((i * 7) % 13) as f32).collect();
//! let patches = sample_patches(&images, 12, 12, 50, 8, 1)?;
//! let config = SaeConfig::with_hidden(5);
//! let mut objective = FnObjective(|theta: &[f64]| config.cost_grad(theta, &patches));
//! let stop = Stop { max_iterations: 10, ..Stop::default() };
//! let result = Lbfgs::new(stop).minimize(&mut objective, &config.init(1)?)?;
//! assert!(result.cost < result.history[0].cost);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! On a cluster the objective runs the job instead; everything else stays the same (and [`train::LbfgsTrainer`]
//! with [`train::Driver`] adds checkpoints and resume to exactly this):
//!
//! ```no_run
//! use cohort::{Cluster, Dataset, Registry, WorkerSpec};
//! use cohort_ml::optim::{FnObjective, Lbfgs};
//! use cohort_ml::sae::{SaeConfig, SaeJob};
//!
//! #[derive(Debug, thiserror::Error)]
//! enum TrainError {
//!     #[error(transparent)]
//!     Cluster(#[from] cohort::Error),
//!     #[error(transparent)]
//!     Model(#[from] cohort_ml::MlError),
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::new().map_reduce(SaeJob);
//! cohort::worker::run_if_worker(&registry);
//! # let patches: Vec<f64> = vec![];
//! let config = SaeConfig::default();
//! let mut cluster = Cluster::builder().workers(WorkerSpec::parse_list("local:4")?).start()?;
//! let data = cluster.load(&Dataset::new(patches, 64)?)?;
//! let mut objective = FnObjective(|theta: &[f64]| -> Result<(f64, Vec<f64>), TrainError> {
//!     let partial = cluster.run(&SaeJob, &config.params(theta)?, &data)?;
//!     Ok(config.finish(theta, &partial)?)
//! });
//! let result = Lbfgs::default().minimize(&mut objective, &config.init(42)?)?;
//! println!("cost {} after {} iterations ({})", result.cost, result.iterations, result.stop);
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod checkpoint;
pub mod datasets;
mod error;
pub mod kernels;
pub mod mlp;
pub mod model_file;
pub mod optim;
pub mod partial;
pub mod ps;
pub mod roofline;
pub mod sae;
pub mod skinny;
pub mod softmax;
pub mod sparse;
mod tiles;
pub mod train;

pub use error::{MlError, Result};
pub use partial::Partial;
