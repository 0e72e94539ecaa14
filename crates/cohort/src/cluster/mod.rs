//! The cluster runtime: the master ([`Cluster`]), the worker loop ([`worker`]), how workers are described
//! ([`WorkerSpec`]) and started ([`process`], [`ssh`], [`launch`]), and the per-worker connections (`conn`).

mod builder;
mod conn;
pub mod launch;
mod master;
pub mod process;
pub mod spec;
pub mod ssh;
pub(crate) mod store;
pub mod worker;

pub use builder::{ClusterBuilder, DataChannel};
pub use master::{Cluster, DatasetHandle, Session, Stats};
pub use spec::{SshTarget, WorkerSpec};
