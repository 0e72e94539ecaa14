//! The cluster runtime: the master ([`Cluster`]), the worker loop ([`worker`]), how workers are described
//! ([`WorkerSpec`]) and started ([`process`]), and the per-worker connections (`conn`).

mod conn;
mod master;
pub mod process;
pub mod spec;
pub mod ssh;
pub(crate) mod store;
pub mod worker;

pub use master::{Cluster, ClusterBuilder, DataChannel, DatasetHandle, Session, Stats};
pub use spec::{SshTarget, WorkerSpec};
