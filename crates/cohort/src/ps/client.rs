//! A worker's side of the protocol, without I/O: [`ClientCore`].
//!
//! It splits pushes and pulls over the servers' key ranges, numbers pushes, keeps every push until its server
//! acknowledges it, reassembles pull replies from several servers into one result in the order asked, and after a
//! server failover says exactly what to send the replacement ([`ClientCore::resend`]): the unacknowledged pushes
//! (the server recognises those it already has by their sequence numbers), the unanswered pulls and the last clock
//! declaration. The worker's loop is: `pull` → wait for [`ClientEvent::Pulled`] → compute → `push` → `advance`.

use std::collections::BTreeMap;

use super::error::{PsError, Result};
use super::protocol::{ReadInfo, Reply, Request, RequestRef, Selection, Update, WorkerIdx};

/// Index of a server in the client's list (the order of their key ranges).
pub type ServerIdx = usize;

/// A finished pull: the values in the order asked, and how fresh each server's part was.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// The pull's id, as returned by [`ClientCore::pull`].
    pub id: u64,
    /// The values.
    pub values: Vec<f32>,
    /// Per server asked, its read information.
    pub reads: Vec<(ServerIdx, ReadInfo)>,
}

impl Pulled {
    /// The largest staleness among the parts.
    pub fn staleness(&self) -> u64 {
        self.reads.iter().map(|(_, r)| r.staleness).max().unwrap_or(0)
    }
}

/// What a reply meant to the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A push was acknowledged (it will never need re-sending).
    Acked {
        /// The server.
        server: ServerIdx,
        /// The push's sequence number.
        seq: u64,
    },
    /// Every part of a pull arrived.
    Pulled(Pulled),
    /// A server answered a join: the clock to resume at and the last sequence number it saw.
    Joined {
        /// The server.
        server: ServerIdx,
        /// The clock to resume at.
        clock: u64,
        /// The last push sequence number it saw from this worker.
        last_seq: Option<u64>,
    },
    /// A request was refused. A refused push is forgotten (not re-sent); a refused pull part fails the whole pull.
    Rejected {
        /// The server.
        server: ServerIdx,
        /// Which request.
        what: RequestRef,
        /// Why.
        error: PsError,
    },
}

/// Where the values of one server's part go in the assembled result.
#[derive(Debug, Clone)]
enum Place {
    /// A contiguous run starting at this position.
    Run(usize),
    /// These positions, in order.
    Positions(Vec<usize>),
}

#[derive(Debug, Clone)]
struct Part {
    request: Request,
    place: Place,
    len: usize,
    read: Option<ReadInfo>,
}

#[derive(Debug, Clone)]
struct PendingPull {
    len: usize,
    parts: BTreeMap<ServerIdx, Part>,
    values: Vec<f32>,
}

/// One worker's protocol state. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ClientCore {
    worker: WorkerIdx,
    /// Server `s` owns `[bounds[s], bounds[s + 1])`.
    bounds: Vec<u64>,
    clock: u64,
    next_seq: u64,
    next_pull: u64,
    /// Per server, the pushes not yet acknowledged, by sequence number.
    unacked: Vec<BTreeMap<u64, Request>>,
    pulls: BTreeMap<u64, PendingPull>,
}

impl ClientCore {
    /// Worker `worker` of a model split over servers at `bounds`: server `s` owns keys `[bounds[s], bounds[s+1])`
    /// (at least two strictly increasing bounds; the model is `[bounds[0], bounds[last])`).
    pub fn new(worker: WorkerIdx, bounds: Vec<u64>) -> Result<ClientCore> {
        if bounds.len() < 2 || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(PsError::config(format!(
                "server key ranges must be given as at least two strictly increasing bounds, got {bounds:?}"
            )));
        }
        let servers = bounds.len() - 1;
        Ok(ClientCore {
            worker,
            bounds,
            clock: 0,
            next_seq: 0,
            next_pull: 0,
            unacked: vec![BTreeMap::new(); servers],
            pulls: BTreeMap::new(),
        })
    }

    /// This worker.
    pub fn worker(&self) -> WorkerIdx {
        self.worker
    }

    /// Number of servers.
    pub fn servers(&self) -> usize {
        self.bounds.len() - 1
    }

    /// The keys server `s` owns.
    pub fn range_of(&self, s: ServerIdx) -> std::ops::Range<u64> {
        self.bounds[s]..self.bounds[s + 1]
    }

    /// The server owning `key`, if any.
    pub fn server_of(&self, key: u64) -> Option<ServerIdx> {
        if key < self.bounds[0] || key >= *self.bounds.last().expect("two bounds") {
            return None;
        }
        Some(self.bounds.partition_point(|b| *b <= key) - 1)
    }

    /// The clock this worker is at (it has completed the clocks below).
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// Pushes not yet acknowledged, over all servers.
    pub fn unacked(&self) -> usize {
        self.unacked.iter().map(BTreeMap::len).sum()
    }

    /// Pulls not yet complete.
    pub fn pending_pulls(&self) -> usize {
        self.pulls.len()
    }

    /// Continues after a restart: the clock to resume at (the largest of the servers' [`ClientEvent::Joined`]
    /// clocks) and the largest sequence number any server saw.
    pub fn resume(&mut self, clock: u64, last_seq: Option<u64>) {
        self.clock = self.clock.max(clock);
        if let Some(s) = last_seq {
            self.next_seq = self.next_seq.max(s + 1);
        }
    }

    /// A join request for every server (after a restart).
    pub fn join(&self) -> Vec<(ServerIdx, Request)> {
        (0..self.servers()).map(|s| (s, Request::Join { worker: self.worker })).collect()
    }

    /// Reads `what` at the current clock: the pull's id and the requests to send. Keys outside the model are an
    /// error. An empty selection still goes to server 0 (it waits for the consistency mode like any read).
    pub fn pull(&mut self, what: &Selection) -> Result<(u64, Vec<(ServerIdx, Request)>)> {
        let id = self.next_pull;
        let mut parts: BTreeMap<ServerIdx, (Selection, Place)> = BTreeMap::new();
        match what {
            Selection::Range { start, end } => {
                self.check_range(*start, *end)?;
                for s in 0..self.servers() {
                    let r = self.range_of(s);
                    let (a, b) = ((*start).max(r.start), (*end).min(r.end));
                    if a < b {
                        parts.insert(s, (Selection::Range { start: a, end: b }, Place::Run((a - start) as usize)));
                    }
                }
            }
            Selection::Keys(keys) => {
                let mut by_server: BTreeMap<ServerIdx, (Vec<u64>, Vec<usize>)> = BTreeMap::new();
                for (i, k) in keys.iter().enumerate() {
                    let s = self.server_of(*k).ok_or_else(|| self.outside(*k))?;
                    let e = by_server.entry(s).or_default();
                    e.0.push(*k);
                    e.1.push(i);
                }
                for (s, (keys, positions)) in by_server {
                    parts.insert(s, (Selection::Keys(keys), Place::Positions(positions)));
                }
            }
        }
        if parts.is_empty() {
            parts.insert(0, (Selection::Keys(Vec::new()), Place::Positions(Vec::new())));
        }
        self.next_pull += 1;
        let len = what.len() as usize;
        let mut pending = PendingPull { len, parts: BTreeMap::new(), values: vec![0.0; len] };
        let mut out = Vec::new();
        for (s, (sel, place)) in parts {
            let request = Request::Pull { worker: self.worker, clock: self.clock, what: sel.clone(), req: id };
            out.push((s, request.clone()));
            pending.parts.insert(s, Part { request, place, len: sel.len() as usize, read: None });
        }
        self.pulls.insert(id, pending);
        Ok((id, out))
    }

    /// Pushes `update` (computed at the current clock): the requests to send, one per server it touches, each with
    /// a fresh sequence number and kept until acknowledged. Keys outside the model are an error.
    pub fn push(&mut self, update: Update) -> Result<Vec<(ServerIdx, Request)>> {
        let parts = self.split(update)?;
        let mut out = Vec::with_capacity(parts.len());
        for (s, update) in parts {
            let seq = self.next_seq;
            self.next_seq += 1;
            let request = Request::Push { worker: self.worker, clock: self.clock, update, seq };
            self.unacked[s].insert(seq, request.clone());
            out.push((s, request));
        }
        Ok(out)
    }

    /// Splits an update over the servers whose keys it touches.
    fn split(&self, update: Update) -> Result<Vec<(ServerIdx, Update)>> {
        let mut parts: Vec<(ServerIdx, Update)> = Vec::new();
        match update {
            Update::Dense { range_start, values } => {
                let end = range_start.checked_add(values.len() as u64).unwrap_or(u64::MAX);
                self.check_range(range_start, end)?;
                for s in 0..self.servers() {
                    let r = self.range_of(s);
                    let (a, b) = (range_start.max(r.start), end.min(r.end));
                    if a < b {
                        let slice = values[(a - range_start) as usize..(b - range_start) as usize].to_vec();
                        parts.push((s, Update::Dense { range_start: a, values: slice }));
                    }
                }
            }
            Update::Sparse { keys, values } => {
                if keys.len() != values.len() {
                    return Err(PsError::LengthMismatch { keys: keys.len(), values: values.len() });
                }
                let mut by_server: BTreeMap<ServerIdx, (Vec<u64>, Vec<f32>)> = BTreeMap::new();
                for (k, v) in keys.iter().zip(values) {
                    let s = self.server_of(*k).ok_or_else(|| self.outside(*k))?;
                    let e = by_server.entry(s).or_default();
                    e.0.push(*k);
                    e.1.push(v);
                }
                parts = by_server.into_iter().map(|(s, (keys, values))| (s, Update::Sparse { keys, values })).collect();
            }
        }
        Ok(parts)
    }

    /// Declares the current clock complete and moves to the next: a `Clock` for every server.
    pub fn advance(&mut self) -> Vec<(ServerIdx, Request)> {
        let clock = self.clock;
        self.clock += 1;
        (0..self.servers()).map(|s| (s, Request::Clock { worker: self.worker, clock })).collect()
    }

    /// The worker leaves for good (it finished while others go on): a `Leave` for every server.
    pub fn leave(&self) -> Vec<(ServerIdx, Request)> {
        (0..self.servers()).map(|s| (s, Request::Leave { worker: self.worker })).collect()
    }

    /// What to send server `s`'s replacement after a failover, in order: the unacknowledged pushes, the last clock
    /// declaration, the unanswered pull parts.
    pub fn resend(&self, s: ServerIdx) -> Vec<Request> {
        let mut out: Vec<Request> = self.unacked[s].values().cloned().collect();
        if self.clock > 0 {
            out.push(Request::Clock { worker: self.worker, clock: self.clock - 1 });
        }
        for pull in self.pulls.values() {
            if let Some(part) = pull.parts.get(&s).filter(|p| p.read.is_none()) {
                out.push(part.request.clone());
            }
        }
        out
    }

    /// Takes a reply from server `s`. Replies already taken (duplicates after a re-send) give `Ok(None)`; a reply
    /// that cannot be right (a pull part of the wrong length) is an error.
    pub fn on_reply(&mut self, s: ServerIdx, reply: Reply) -> Result<Option<ClientEvent>> {
        let unexpected = |reason: String| PsError::UnexpectedReply { server: s, reason };
        if s >= self.servers() {
            return Err(unexpected(format!("there are only {} servers", self.servers())));
        }
        match reply {
            Reply::PushAck { seq, .. } => {
                Ok(self.unacked[s].remove(&seq).map(|_| ClientEvent::Acked { server: s, seq }))
            }
            Reply::PullReply { req, values, read } => {
                let Some(pull) = self.pulls.get_mut(&req) else { return Ok(None) };
                let Some(part) = pull.parts.get_mut(&s).filter(|p| p.read.is_none()) else { return Ok(None) };
                if values.len() != part.len {
                    return Err(unexpected(format!("pull {req} expected {} values, got {}", part.len, values.len())));
                }
                match &part.place {
                    Place::Run(at) => pull.values[*at..*at + values.len()].copy_from_slice(&values),
                    Place::Positions(positions) => {
                        positions.iter().zip(values).for_each(|(i, v)| pull.values[*i] = v);
                    }
                }
                part.read = Some(read);
                if pull.parts.values().any(|p| p.read.is_none()) {
                    return Ok(None);
                }
                let pull = self.pulls.remove(&req).expect("present");
                debug_assert_eq!(pull.values.len(), pull.len);
                let reads = pull.parts.iter().map(|(s, p)| (*s, p.read.expect("complete"))).collect();
                Ok(Some(ClientEvent::Pulled(Pulled { id: req, values: pull.values, reads })))
            }
            Reply::Joined { clock, last_seq, .. } => Ok(Some(ClientEvent::Joined { server: s, clock, last_seq })),
            Reply::Rejected { what, error, .. } => {
                match what {
                    RequestRef::Push { seq } => {
                        self.unacked[s].remove(&seq);
                    }
                    RequestRef::Pull { req } => {
                        self.pulls.remove(&req);
                    }
                    _ => {}
                }
                Ok(Some(ClientEvent::Rejected { server: s, what, error }))
            }
        }
    }

    fn check_range(&self, start: u64, end: u64) -> Result<()> {
        let (lo, hi) = (self.bounds[0], *self.bounds.last().expect("two bounds"));
        if start <= end && start >= lo && end <= hi {
            Ok(())
        } else {
            Err(PsError::RangeOutOfRange { start, end, lo, hi })
        }
    }

    fn outside(&self, key: u64) -> PsError {
        PsError::KeyOutOfRange { key, lo: self.bounds[0], hi: *self.bounds.last().expect("two bounds") }
    }
}
