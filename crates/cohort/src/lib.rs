//! # cohort
//!
//! Run a machine-learning job in parallel across worker processes on one machine or many. You write the per-chunk
//! work and how two partial results combine; cohort cuts the data into chunks, starts workers (real OS processes
//! running *this same executable*), keeps each worker's chunks resident between rounds, moves only parameters down
//! and partial results up, and combines the partials in a fixed tree so the answer is bit-identical for any number
//! of workers.
//!
//! ```no_run
//! use cohort::{Cluster, Dataset, MapReduce, Registry, Shard, WorkerSpec};
//!
//! struct Sum;
//! impl MapReduce for Sum {
//!     const NAME: &'static str = "example.sum";
//!     type Elem = f64;
//!     type Params = ();
//!     type Output = f64;
//!     fn map(&self, _: &(), shard: &Shard<'_, f64>) -> f64 { shard.values.iter().sum() }
//!     fn reduce(&self, a: f64, b: f64) -> f64 { a + b }
//! }
//!
//! fn main() -> Result<(), cohort::Error> {
//!     let registry = Registry::new().map_reduce(Sum);
//!     // In a worker process this serves the master and exits; in the master it returns at once.
//!     cohort::worker::run_if_worker(&registry);
//!
//!     let mut cluster = Cluster::builder().workers(WorkerSpec::parse_list("local:3")?).start()?;
//!     let data = cluster.load(&Dataset::from_rows(&[[1.0, 2.0], [3.0, 4.0]])?)?;
//!     assert_eq!(cluster.run(&Sum, &(), &data)?, 10.0);
//!     Ok(())
//! }
//! ```
//!
//! Layers, from the bottom: [`wire`] (the only module that knows bytes), [`data`] (datasets and chunking),
//! [`tree`] (the deterministic reduction order), [`job`] (the traits a user implements) and [`cluster`] (master,
//! worker loop, launchers, failure detection). [`ps`] is the parameter server's pure core (consistency modes,
//! update rules, server and client state machines without I/O).

#![deny(missing_docs)]

pub mod cluster;
pub mod data;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod job;
pub mod ps;
pub mod rng;
pub mod tree;
pub mod wire;

pub use cluster::{
    launch, worker, Cluster, ClusterBuilder, DataChannel, DatasetHandle, FailureRecord, Placement, Session,
    SessionSnapshot, SshTarget, Stats, WorkerReport, WorkerSpec,
};
pub use data::{DataError, Dataset, Element, Shard};
pub use error::{Error, Result};
pub use job::{Contribution, MapReduce, Multipass, Registry, ReplicaContext};
pub use wire::{Payload, Serde};

/// SHA-256 of a slice of numbers as little-endian bytes, hex-encoded: the `model_sha256` of reports.
pub fn sha256_le<T: wire::Scalar>(values: &[T]) -> String {
    use sha2::{Digest, Sha256};
    let mut bytes = Vec::with_capacity(std::mem::size_of_val(values));
    T::extend_le(values, &mut bytes);
    hex::encode(Sha256::digest(&bytes))
}
