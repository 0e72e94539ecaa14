//! The framework's error type. Every variant names the thing that failed and, where there is one, the fix.

use std::time::Duration;

use crate::data::DataError;
use crate::wire::handshake::HandshakeError;
use crate::wire::{ElemType, WireError};

/// Result alias used throughout the framework.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while running a job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--workers` spec that does not parse.
    #[error("invalid worker spec {spec:?}: {reason}")]
    Spec {
        /// The offending text.
        spec: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A dataset that cannot be used.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A worker process could not be started.
    #[error("cannot start {worker}: {reason}")]
    Launch {
        /// The worker (and how it was to be launched).
        worker: String,
        /// Why.
        reason: String,
    },
    /// A worker failed the handshake.
    #[error("{worker} failed the handshake: {source}")]
    Handshake {
        /// The worker.
        worker: String,
        /// Why.
        source: HandshakeError,
    },
    /// A worker's connection closed or its process exited.
    #[error("{worker} died: {status}{}", tail(.stderr_tail))]
    WorkerDied {
        /// The worker.
        worker: String,
        /// Exit status or connection error, in words.
        status: String,
        /// Last lines the worker wrote to stderr.
        stderr_tail: Vec<String>,
    },
    /// A worker stopped sending anything, heartbeats included.
    #[error("{worker} stalled: nothing received for {silent:.1?} (heartbeat timeout {timeout:?}); it may be stopped, swapping or deadlocked")]
    WorkerStalled {
        /// The worker.
        worker: String,
        /// How long it has been silent.
        silent: Duration,
        /// The configured limit.
        timeout: Duration,
    },
    /// A wait that has a deadline ran past it.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The job is not in the worker binary's registry.
    #[error("job `{job}` is not registered in the worker binary (registered: {}); register it in the Registry the program passes to cohort::worker::run_if_worker", .available.join(", "))]
    UnknownJob {
        /// Requested job.
        job: String,
        /// Jobs the workers know.
        available: Vec<String>,
    },
    /// The job's element type differs from the dataset's.
    #[error("job `{job}` maps over {expected} data but the dataset holds {got}")]
    ElemMismatch {
        /// Job name.
        job: String,
        /// Job's element type.
        expected: ElemType,
        /// Dataset's element type.
        got: ElemType,
    },
    /// A worker reported a failure while serving a request (e.g. the job panicked).
    #[error("job `{job}` failed on {worker}: {message}")]
    JobFailed {
        /// Job name (or the request kind).
        job: String,
        /// The worker.
        worker: String,
        /// The worker's message.
        message: String,
    },
    /// A dataset handle that this cluster never loaded (or unloaded).
    #[error("dataset {0} is not loaded on this cluster; call Cluster::load first")]
    UnknownDataset(String),
    /// A peer broke the protocol.
    #[error("protocol error with {worker}: {detail}")]
    Protocol {
        /// The worker.
        worker: String,
        /// What happened.
        detail: String,
    },
    /// A wire-level failure on the master's side.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Starting or joining a job under a launcher (Slurm, MPI, Kubernetes) failed.
    #[error(transparent)]
    Launcher(Box<crate::cluster::launch::LaunchError>),
    /// A cluster needs at least one worker.
    #[error("no workers: give at least one, e.g. --workers local:2")]
    NoWorkers,
}

impl From<crate::cluster::launch::LaunchError> for Error {
    fn from(e: crate::cluster::launch::LaunchError) -> Error {
        Error::Launcher(Box::new(e))
    }
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::from(" (no stderr output)");
    }
    let mut s = String::from("\n  last stderr lines:");
    for l in lines {
        s.push_str("\n    ");
        s.push_str(l);
    }
    s
}
