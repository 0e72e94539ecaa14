//! The messages between a worker (the client) and a parameter server, as plain Rust values.
//!
//! The parameters are one flat `f32` vector indexed by `u64` keys; a server owns a contiguous key range `[lo, hi)`.
//! A worker at clock `c` has completed clocks `< c`: it pulls at `c`, computes, pushes updates tagged `c`, and
//! declares clock `c` complete with [`Request::Clock`]. Pushes carry a per-worker sequence number so a push re-sent
//! after a server failover is applied once. The runtime maps these values onto wire frames (tensors as raw bytes);
//! nothing here knows bytes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::PsError;

/// A worker's index among the workers of a parameter-server job: `0..workers`, fixed for the job (a restarted
/// worker keeps its index).
pub type WorkerIdx = u32;

/// Bytes of one value in [`Traffic`](super::Traffic) accounting.
pub const VALUE_BYTES: u64 = 4;
/// Bytes of one key in [`Traffic`](super::Traffic) accounting.
pub const KEY_BYTES: u64 = 8;

/// An update to some parameters: what a worker pushes (for the built-in rules, a gradient: the rule descends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Update {
    /// Values for the consecutive keys `range_start..range_start + values.len()`.
    Dense {
        /// First key.
        range_start: u64,
        /// One value per key.
        values: Vec<f32>,
    },
    /// Values for the listed keys (in any order; a key listed twice gets the sum of its values, as one step).
    Sparse {
        /// The keys.
        keys: Vec<u64>,
        /// One value per key.
        values: Vec<f32>,
    },
}

impl Update {
    /// Number of values carried.
    pub fn len(&self) -> usize {
        match self {
            Update::Dense { values, .. } | Update::Sparse { values, .. } => values.len(),
        }
    }

    /// Whether the update carries no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tensor bytes carried: [`VALUE_BYTES`] per value, plus [`KEY_BYTES`] per key of a sparse update.
    pub fn payload_bytes(&self) -> u64 {
        match self {
            Update::Dense { values, .. } => values.len() as u64 * VALUE_BYTES,
            Update::Sparse { keys, values } => keys.len() as u64 * KEY_BYTES + values.len() as u64 * VALUE_BYTES,
        }
    }
}

/// Which parameters a pull asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Selection {
    /// The keys `start..end`.
    Range {
        /// First key.
        start: u64,
        /// One past the last key.
        end: u64,
    },
    /// These keys, in this order (repeats allowed); the reply's values follow the same order.
    Keys(Vec<u64>),
}

impl Selection {
    /// Number of values the reply carries.
    pub fn len(&self) -> u64 {
        match self {
            Selection::Range { start, end } => end.saturating_sub(*start),
            Selection::Keys(keys) => keys.len() as u64,
        }
    }

    /// Whether nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tensor bytes of the request: [`KEY_BYTES`] per listed key (a range costs nothing beyond its header).
    pub fn payload_bytes(&self) -> u64 {
        match self {
            Selection::Range { .. } => 0,
            Selection::Keys(keys) => keys.len() as u64 * KEY_BYTES,
        }
    }
}

/// What a server receives. All but [`Request::Leave`] come from the worker they name; `Leave` comes from the
/// runtime (or from a worker that stops early). Every request changes server state only through
/// [`ServerCore::handle`](super::ServerCore::handle), so replicas fed the same requests in the same order (with the
/// same timestamps) stay identical.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// An update computed during clock `clock`. Answered by [`Reply::PushAck`] once it is part of the server state
    /// (applied, or held for its clock under [`Apply::ByClock`](super::Apply)).
    Push {
        /// The sender.
        worker: WorkerIdx,
        /// The clock the update was computed in; must not be below the clocks the worker already completed.
        clock: u64,
        /// The values.
        update: Update,
        /// The worker's sequence number: strictly increasing in send order on each server (gaps allowed, e.g. one
        /// counter shared by all servers). A push whose `seq` is not above the last one seen is a duplicate: acked,
        /// not applied.
        seq: u64,
    },
    /// A read by a worker at clock `clock` (it has completed clocks `< clock`, which this request also declares).
    /// Answered by [`Reply::PullReply`] once the consistency mode admits it.
    Pull {
        /// The sender.
        worker: WorkerIdx,
        /// The reader's clock.
        clock: u64,
        /// The keys wanted.
        what: Selection,
        /// The worker's id for this pull, echoed in the reply.
        req: u64,
    },
    /// The worker completed clock `clock` (and every clock before it). Idempotent; never answered.
    Clock {
        /// The sender.
        worker: WorkerIdx,
        /// The clock completed.
        clock: u64,
    },
    /// A worker (re)joins: a restarted process, or one that left. Answered by [`Reply::Joined`] with the clock to
    /// resume at (never below the clock the slowest live worker has reached) and the last sequence number seen.
    Join {
        /// The worker.
        worker: WorkerIdx,
    },
    /// The worker leaves: the runtime declared it lost, or it has finished while others go on. Its clock stops
    /// counting for consistency (pulls waiting on it are released); its later requests are refused until it joins.
    Leave {
        /// The worker.
        worker: WorkerIdx,
    },
}

impl Request {
    /// The worker the request names (and the one its replies go to).
    pub fn worker(&self) -> WorkerIdx {
        match self {
            Request::Push { worker, .. }
            | Request::Pull { worker, .. }
            | Request::Clock { worker, .. }
            | Request::Join { worker }
            | Request::Leave { worker } => *worker,
        }
    }

    /// Which request this is, for error replies.
    pub fn reference(&self) -> RequestRef {
        match self {
            Request::Push { seq, .. } => RequestRef::Push { seq: *seq },
            Request::Pull { req, .. } => RequestRef::Pull { req: *req },
            Request::Clock { clock, .. } => RequestRef::Clock { clock: *clock },
            Request::Join { .. } => RequestRef::Join,
            Request::Leave { .. } => RequestRef::Leave,
        }
    }
}

/// Names a request in a [`Reply::Rejected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestRef {
    /// The push with this sequence number. Do not re-send it under this number (a refused push may still have
    /// consumed it: the server takes later pushes as duplicates of anything not above it).
    Push {
        /// Its sequence number.
        seq: u64,
    },
    /// The pull with this id.
    Pull {
        /// Its id.
        req: u64,
    },
    /// A clock declaration.
    Clock {
        /// The clock declared.
        clock: u64,
    },
    /// A join.
    Join,
    /// A leave.
    Leave,
}

/// How fresh the values of a pull reply are.
///
/// `view` is the server's *view clock* when it answered: every live worker had completed clocks `< view`, so every
/// update of a clock `< view` is included (updates of later clocks may be too, unless updates are applied
/// [by clock](super::Apply::ByClock)). `staleness = clock - view` (0 when the view is not behind the reader) is the
/// number of clocks whose updates the read may lack; the consistency mode bounds it by `bound`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadInfo {
    /// The reader's clock.
    pub clock: u64,
    /// The view clock: all updates of clocks `< view` are included.
    pub view: u64,
    /// `clock - view`, saturating at 0.
    pub staleness: u64,
    /// The largest staleness the mode allowed for this read (`None` under `async`).
    pub bound: Option<u64>,
    /// How long the pull waited at the server before it was admitted (from the timestamps fed to the server).
    pub waited: Duration,
}

/// What a server sends back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The push with this sequence number is part of the server state (or was a duplicate of one that is).
    PushAck {
        /// The worker.
        worker: WorkerIdx,
        /// The push's sequence number.
        seq: u64,
    },
    /// The values of a pull, in the order of its selection.
    PullReply {
        /// The pull's id.
        req: u64,
        /// The values.
        values: Vec<f32>,
        /// How fresh they are.
        read: ReadInfo,
    },
    /// Answer to [`Request::Join`].
    Joined {
        /// The worker.
        worker: WorkerIdx,
        /// The clock to resume at: pull at this clock next.
        clock: u64,
        /// The last push sequence number this server saw from the worker; continue above it.
        last_seq: Option<u64>,
    },
    /// The request was refused and had no effect (beyond consuming a push's sequence number).
    Rejected {
        /// The worker.
        worker: WorkerIdx,
        /// Which request.
        what: RequestRef,
        /// Why.
        error: PsError,
    },
}

/// A reply and the worker it goes to (the sender of the request it answers, or a worker whose deferred pull a
/// request released).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The destination worker.
    pub to: WorkerIdx,
    /// The reply.
    pub reply: Reply,
}
