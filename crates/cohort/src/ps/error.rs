//! What can be wrong with a parameter-server request, a configuration or a snapshot.
//!
//! A [`PsError`] is plain data (serde-serialisable) because it travels back to the worker inside
//! [`Reply::Rejected`](super::Reply::Rejected): a malformed request is answered with the reason, never a crash.

use serde::{Deserialize, Serialize};

use super::protocol::WorkerIdx;

/// Result alias of the parameter-server core.
pub type Result<T, E = PsError> = std::result::Result<T, E>;

/// Everything the parameter-server core refuses, each naming the offending value and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum PsError {
    /// A request names a worker the server was not configured for.
    #[error("unknown worker {worker}: this server serves workers 0..{workers}")]
    UnknownWorker {
        /// The worker named in the request.
        worker: WorkerIdx,
        /// How many workers the server serves.
        workers: u32,
    },
    /// A request from a worker that has left (declared lost, or finished); it must `Join` again first.
    #[error("worker {worker} has left the computation; it must join again before sending requests")]
    WorkerLeft {
        /// The worker.
        worker: WorkerIdx,
    },
    /// A key outside the server's range.
    #[error("key {key} is outside this server's range [{lo}, {hi})")]
    KeyOutOfRange {
        /// The key.
        key: u64,
        /// First key the server owns.
        lo: u64,
        /// One past its last key.
        hi: u64,
    },
    /// A key range (of a dense push or a range pull) not inside the server's range, or reversed.
    #[error("key range [{start}, {end}) is not inside this server's range [{lo}, {hi})")]
    RangeOutOfRange {
        /// First key asked for.
        start: u64,
        /// One past the last key asked for (saturated at `u64::MAX` if it overflowed).
        end: u64,
        /// First key the server owns.
        lo: u64,
        /// One past its last key.
        hi: u64,
    },
    /// A sparse update whose key and value lists differ in length.
    #[error("sparse update has {keys} keys but {values} values")]
    LengthMismatch {
        /// Number of keys.
        keys: usize,
        /// Number of values.
        values: usize,
    },
    /// An update holding NaN or an infinity: applying it would destroy the parameters, so it is refused whole.
    #[error("update for key {key} is {value} (not finite); the update was not applied")]
    NonFinite {
        /// The first key with a non-finite value.
        key: u64,
        /// The value, as text (NaN does not compare equal to itself).
        value: String,
    },
    /// A push for a clock the worker had already declared complete (by `Clock`, or by pulling at a later clock).
    #[error("push from worker {worker} for clock {clock} arrived after it completed clocks < {completed}")]
    ClockClosed {
        /// The worker.
        worker: WorkerIdx,
        /// The clock of the push.
        clock: u64,
        /// Clocks the worker had completed.
        completed: u64,
    },
    /// A configuration that cannot work (server range, worker count, rule hyperparameters, block settings).
    #[error("invalid parameter-server configuration: {reason}")]
    Config {
        /// What is wrong and what is expected.
        reason: String,
    },
    /// A snapshot that does not fit the server it is restored into.
    #[error("cannot restore snapshot: {reason}")]
    Snapshot {
        /// What does not match.
        reason: String,
    },
    /// A reply a client did not expect (unknown request, wrong server, wrong length).
    #[error("unexpected reply from server {server}: {reason}")]
    UnexpectedReply {
        /// The server (index in the client's server list).
        server: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl PsError {
    pub(crate) fn config(reason: impl Into<String>) -> PsError {
        PsError::Config { reason: reason.into() }
    }
}
