//! The cluster runtime, in layers: the [`scheduler`] decides (placement, rounds, liveness, recovery) without any
//! I/O; the master ([`Cluster`]) is the driver that feeds it from the connections and carries out its decisions;
//! `spawn` starts worker processes (local, [`ssh`]) for the builder and for replacements; [`launch`] takes workers
//! from cluster managers (Slurm, MPI, Kubernetes ranks); `conn` is one worker's connection; [`worker`] is the loop a
//! worker process runs.

mod builder;
mod conn;
pub mod launch;
mod master;
pub mod process;
mod ps;
pub mod scheduler;
mod spawn;
pub mod spec;
pub mod ssh;
pub mod worker;

pub use builder::{ClusterBuilder, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_HEARTBEAT_TIMEOUT, DEFAULT_MAX_FAILURES};
pub use master::{
    AutoChoice, Cluster, DatasetHandle, Divergence, PsEvent, PsOptions, PsOutcome, PsWorkerReport, Session,
    SessionSnapshot, Stats, DEFAULT_DIVERGENCE,
};
pub use scheduler::{FailureRecord, Placement, RoundProfile, WorkerReport};
pub use spawn::DataChannel;
pub use spec::{Hostfile, SshTarget, WorkerSpec};
