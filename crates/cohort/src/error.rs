//! The framework's error type. Every variant names the thing that failed and, where there is one, the fix.

use std::time::Duration;

use crate::data::DataError;
use crate::wire::handshake::HandshakeError;
use crate::wire::{ElemType, WireError, WorkerFailure};

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
    /// A worker reported a failure while serving a request (e.g. the job panicked). Jobs are deterministic, so it
    /// would fail on any worker: the request is not retried, and the cluster stays usable.
    #[error("job `{job}` failed on {worker}: {failure}")]
    JobFailed {
        /// Job name (or the request kind, e.g. `load`).
        job: String,
        /// The worker.
        worker: String,
        /// What went wrong there.
        failure: WorkerFailure,
    },
    /// More workers were lost than `max_failures` allows; the cluster gives up. Every loss is listed.
    #[error("giving up after {} lost workers (at most {max} allowed; raise it with --max-failures):{}", .failures.len(), list(.failures))]
    TooManyFailures {
        /// The limit in force.
        max: usize,
        /// Each loss, in order: the worker and why.
        failures: Vec<String>,
    },
    /// Every worker was lost and no replacement can be started.
    #[error("no worker left to run on (no spare and no local respawn possible):{}", list(.failures))]
    NoWorkersLeft {
        /// Each loss, in order.
        failures: Vec<String>,
    },
    /// The cluster gave up earlier and refuses further work.
    #[error("the cluster is unusable after an earlier failure ({cause}); start a new one")]
    Unusable {
        /// What made it give up.
        cause: String,
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

fn list(items: &[String]) -> String {
    let mut s = String::new();
    for (i, item) in items.iter().enumerate() {
        s.push_str(&format!("\n  {}. {}", i + 1, item.replace('\n', "\n     ")));
    }
    s
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

/// The message of a caught panic (a job's user code), for error reports.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}
