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
    /// Whether this worker left (a `Leave` is then part of what a failover re-sends).
    left: bool,
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
            left: false,
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
        self.left = false;
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
                let end = range_start.saturating_add(values.len() as u64);
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

    /// The worker leaves (it finished while others go on): a `Leave` for every server.
    pub fn leave(&mut self) -> Vec<(ServerIdx, Request)> {
        self.left = true;
        (0..self.servers()).map(|s| (s, Request::Leave { worker: self.worker })).collect()
    }

    /// What to send server `s`'s replacement after a failover, in order: the unacknowledged pushes, the last clock
    /// declaration, the unanswered pull parts, and the `Leave` if the worker left.
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
        if self.left {
            out.push(Request::Leave { worker: self.worker });
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn read(clock: u64, view: u64) -> ReadInfo {
        ReadInfo { clock, view, staleness: clock - view, bound: Some(1), waited: Duration::ZERO }
    }

    #[test]
    fn updates_are_split_over_the_servers_and_kept_until_acked() {
        let mut c = ClientCore::new(3, vec![0, 4, 6, 10]).unwrap();
        let out = c.push(Update::Dense { range_start: 2, values: vec![1.0, 2.0, 3.0, 4.0, 5.0] }).unwrap();
        let expect = |seq, start, values: &[f32]| Request::Push {
            worker: 3,
            clock: 0,
            seq,
            update: Update::Dense { range_start: start, values: values.to_vec() },
        };
        assert_eq!(
            out,
            vec![(0, expect(0, 2, &[1.0, 2.0])), (1, expect(1, 4, &[3.0, 4.0])), (2, expect(2, 6, &[5.0]))]
        );
        c.advance();
        let out = c.push(Update::Sparse { keys: vec![9, 1, 8], values: vec![1.0, 2.0, 3.0] }).unwrap();
        assert_eq!(out.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 2]);
        let Request::Push { clock, seq, update, .. } = &out[1].1 else { panic!() };
        assert_eq!((*clock, *seq, update), (1, 4, &Update::Sparse { keys: vec![9, 8], values: vec![1.0, 3.0] }));
        assert_eq!(c.unacked(), 5);
        assert_eq!(
            c.on_reply(2, Reply::PushAck { worker: 3, seq: 2 }).unwrap(),
            Some(ClientEvent::Acked { server: 2, seq: 2 })
        );
        assert_eq!(c.on_reply(2, Reply::PushAck { worker: 3, seq: 2 }).unwrap(), None, "a duplicate ack");
        // Server 2 fails over: its unacked push, the last clock, then nothing else.
        assert_eq!(c.resend(2), vec![out[1].1.clone(), Request::Clock { worker: 3, clock: 0 }]);
    }

    #[test]
    fn pulls_are_reassembled_in_the_order_asked() {
        let mut c = ClientCore::new(0, vec![0, 4, 8]).unwrap();
        let (id, out) = c.pull(&Selection::Keys(vec![6, 1, 6, 3])).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, Request::Pull { worker: 0, clock: 0, what: Selection::Keys(vec![1, 3]), req: id });
        assert_eq!(out[1].1, Request::Pull { worker: 0, clock: 0, what: Selection::Keys(vec![6, 6]), req: id });
        assert_eq!(c.resend(1), vec![out[1].1.clone()]);
        let r = c.on_reply(1, Reply::PullReply { req: id, values: vec![60.0, 60.0], read: read(0, 0) }).unwrap();
        assert_eq!(r, None);
        assert!(c.resend(1).is_empty(), "answered parts are not re-sent");
        let r = c.on_reply(0, Reply::PullReply { req: id, values: vec![10.0, 30.0], read: read(0, 0) }).unwrap();
        let Some(ClientEvent::Pulled(p)) = r else { panic!("{r:?}") };
        assert_eq!(p.values, [60.0, 10.0, 60.0, 30.0]);
        assert_eq!(c.pending_pulls(), 0);

        c.advance();
        c.advance();
        let (id, out) = c.pull(&Selection::Range { start: 2, end: 7 }).unwrap();
        assert_eq!(
            out[1].1,
            Request::Pull { worker: 0, clock: 2, what: Selection::Range { start: 4, end: 7 }, req: id }
        );
        c.on_reply(1, Reply::PullReply { req: id, values: vec![4.0, 5.0, 6.0], read: read(2, 1) }).unwrap();
        let Some(ClientEvent::Pulled(p)) =
            c.on_reply(0, Reply::PullReply { req: id, values: vec![2.0, 3.0], read: read(2, 2) }).unwrap()
        else {
            panic!()
        };
        assert_eq!((p.staleness(), p.values), (1, vec![2.0, 3.0, 4.0, 5.0, 6.0]));
    }

    #[test]
    fn an_empty_pull_still_waits_for_the_consistency_mode() {
        let mut c = ClientCore::new(0, vec![5, 9]).unwrap();
        let (id, out) = c.pull(&Selection::Keys(vec![])).unwrap();
        assert_eq!(out, vec![(0, Request::Pull { worker: 0, clock: 0, what: Selection::Keys(vec![]), req: id })]);
        let r = c.on_reply(0, Reply::PullReply { req: id, values: vec![], read: read(0, 0) }).unwrap();
        assert!(matches!(r, Some(ClientEvent::Pulled(p)) if p.values.is_empty()));
    }

    #[test]
    fn bad_input_is_an_error_and_a_rejection_ends_what_it_names() {
        assert!(ClientCore::new(0, vec![3]).is_err());
        assert!(ClientCore::new(0, vec![0, 4, 4]).is_err());
        let mut c = ClientCore::new(0, vec![0, 4, 8]).unwrap();
        assert_eq!(c.pull(&Selection::Keys(vec![8])).unwrap_err(), PsError::KeyOutOfRange { key: 8, lo: 0, hi: 8 });
        assert!(c.pull(&Selection::Range { start: 3, end: 9 }).is_err());
        assert!(c.push(Update::Dense { range_start: u64::MAX, values: vec![1.0] }).is_err());
        assert!(c.push(Update::Sparse { keys: vec![1], values: vec![] }).is_err());
        assert_eq!(c.unacked(), 0);
        let (id, _) = c.pull(&Selection::Range { start: 0, end: 8 }).unwrap();
        let e = c.on_reply(0, Reply::PullReply { req: id, values: vec![1.0], read: read(0, 0) }).unwrap_err();
        assert!(e.to_string().contains("expected 4 values, got 1"), "{e}");
        assert!(c.on_reply(5, Reply::PushAck { worker: 0, seq: 0 }).is_err());
        let error = PsError::WorkerLeft { worker: 0 };
        let r = c.on_reply(1, Reply::Rejected { worker: 0, what: RequestRef::Pull { req: id }, error: error.clone() });
        assert_eq!(r.unwrap(), Some(ClientEvent::Rejected { server: 1, what: RequestRef::Pull { req: id }, error }));
        assert_eq!(c.pending_pulls(), 0);
    }

    #[test]
    fn a_restarted_worker_resumes_where_the_servers_say_and_a_departed_one_re_sends_its_leave() {
        let mut c = ClientCore::new(1, vec![0, 2, 4]).unwrap();
        assert_eq!(c.join(), vec![(0, Request::Join { worker: 1 }), (1, Request::Join { worker: 1 })]);
        c.resume(5, Some(17));
        c.resume(3, None);
        assert_eq!(c.clock(), 5);
        let out = c.push(Update::Sparse { keys: vec![0], values: vec![1.0] }).unwrap();
        assert!(matches!(out[0].1, Request::Push { seq: 18, clock: 5, .. }));
        c.leave();
        assert_eq!(c.resend(1), vec![Request::Clock { worker: 1, clock: 4 }, Request::Leave { worker: 1 }]);
    }
}
