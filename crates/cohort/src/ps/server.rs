//! One parameter server's decisions and arithmetic, without I/O: [`ServerCore`].
//!
//! A `ServerCore` owns the keys `[lo, hi)` of the flat parameter vector, an [`UpdateRule`] with its per-key state,
//! the vector clock of the workers, the pulls waiting for the consistency mode, the pushes held for their clock, and
//! the per-worker sequence numbers that make re-sent pushes harmless. The runtime feeds it one [`Request`] at a
//! time with the current time (`handle(request, now)`) and sends the [`Outgoing`] replies it returns; it never
//! reads a clock, sleeps or touches a socket, so the simulation (`sim`) drives it exactly as the runtime does.
//!
//! Given the same requests in the same order with the same timestamps, two `ServerCore`s reach the same state and
//! return the same replies: a chain or primary-backup replica is a `ServerCore` fed the head's request stream, and a
//! new replica starts from a [`Snapshot`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::consistency::{ClockTable, Consistency, Gate};
use super::error::{PsError, Result};
use super::metrics::Metrics;
use super::protocol::{Outgoing, ReadInfo, Reply, Request, RequestRef, Selection, Update, WorkerIdx, VALUE_BYTES};
use super::rules::UpdateRule;

/// When pushed updates reach the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Apply {
    /// Each push is one rule step, taken when it arrives: reads see updates as soon as possible (SSP's "read my
    /// writes and whatever else has arrived"); the order of steps is the arrival order.
    OnArrival,
    /// Pushes are held until every live worker has completed their clock, then applied one rule step each in
    /// (worker, sequence number) order. A read at view `v` sees exactly the updates of clocks `< v`: with BSP the
    /// parameters are bit-identical whatever the arrival order.
    ByClock,
    /// As `ByClock`, but a clock's pushes are first summed (in worker, then sequence, order) and applied as one
    /// rule step per clock on every key any of them touched (aggregation before the rule, as Li et al. 2014).
    ByClockSum,
}

/// What a server is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// First key owned.
    pub lo: u64,
    /// One past the last key owned.
    pub hi: u64,
    /// Number of workers (indices `0..workers`).
    pub workers: u32,
    /// When pulls are answered.
    pub consistency: Consistency,
    /// When pushes are applied.
    pub apply: Apply,
}

impl ServerConfig {
    /// A server of `keys` for `workers` workers; updates applied [`ByClock`](Apply::ByClock) under BSP (so its
    /// results are bit-identical), [`OnArrival`](Apply::OnArrival) otherwise.
    pub fn new(keys: Range<u64>, workers: u32, consistency: Consistency) -> ServerConfig {
        let apply = if consistency == Consistency::Bsp { Apply::ByClock } else { Apply::OnArrival };
        ServerConfig { lo: keys.start, hi: keys.end, workers, consistency, apply }
    }

    /// The same, with another [`Apply`].
    pub fn with_apply(self, apply: Apply) -> ServerConfig {
        ServerConfig { apply, ..self }
    }

    fn len(&self) -> usize {
        (self.hi - self.lo) as usize
    }

    fn validate(&self) -> Result<()> {
        if self.lo >= self.hi {
            return Err(PsError::config(format!("the key range [{}, {}) is empty", self.lo, self.hi)));
        }
        if usize::try_from(self.hi - self.lo).is_err() {
            return Err(PsError::config(format!("the key range [{}, {}) does not fit in memory", self.lo, self.hi)));
        }
        if self.workers == 0 {
            return Err(PsError::config("a server needs at least one worker"));
        }
        if let Consistency::Asp { w: 0, .. } = self.consistency {
            return Err(PsError::config("asp: W must be at least 1"));
        }
        Ok(())
    }
}

/// A pull waiting for the consistency mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Deferred {
    worker: WorkerIdx,
    clock: u64,
    what: Selection,
    req: u64,
    since: Duration,
}

/// Pushes held for their clock, by (clock, worker, seq): the order they are applied in.
type Held = BTreeMap<(u64, WorkerIdx, u64), Update>;

/// The whole state of a server, serde-serialisable: to bring a new replica up to date, or to checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    config: ServerConfig,
    rule: String,
    slots: u32,
    params: Vec<f32>,
    state: Vec<f32>,
    steps: Vec<u64>,
    clocks: ClockTable,
    gate: Gate,
    last_seq: Vec<Option<u64>>,
    held: Vec<(u64, WorkerIdx, u64, Update)>,
    deferred: Vec<Deferred>,
    view: u64,
    metrics: Metrics,
}

impl Snapshot {
    /// The server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The parameters `[lo, hi)`.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The name of the rule it was taken with.
    pub fn rule(&self) -> &str {
        &self.rule
    }
}

/// Reused buffers for summing a clock's updates (not part of the state).
#[derive(Debug, Default)]
struct Scratch {
    acc: Vec<f32>,
    touched: Vec<bool>,
    list: Vec<usize>,
}

/// One parameter server, without I/O: requests in (with their timestamps), replies out. See the [`ps`](super)
/// module docs for the protocol and the consistency modes.
pub struct ServerCore {
    config: ServerConfig,
    rule: Box<dyn UpdateRule>,
    params: Vec<f32>,
    /// `slots` values per key, key-major.
    state: Vec<f32>,
    /// Rule steps each key has received.
    steps: Vec<u64>,
    clocks: ClockTable,
    gate: Gate,
    /// Per worker, the largest push sequence number seen.
    last_seq: Vec<Option<u64>>,
    held: Held,
    /// In arrival order.
    deferred: Vec<Deferred>,
    /// The view clock after the last request (it never decreases).
    view: u64,
    metrics: Metrics,
    scratch: Scratch,
}

impl fmt::Debug for ServerCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCore")
            .field("config", &self.config)
            .field("rule", &self.rule.name())
            .field("clocks", &self.clocks)
            .field("held", &self.held.len())
            .field("deferred", &self.deferred.len())
            .finish_non_exhaustive()
    }
}

impl ServerCore {
    /// A server with parameters `init` (one value per key of `[lo, hi)`), every worker live at clock 0.
    pub fn new(config: ServerConfig, rule: Box<dyn UpdateRule>, init: Vec<f32>) -> Result<ServerCore> {
        config.validate()?;
        rule.validate()?;
        if init.len() != config.len() {
            return Err(PsError::config(format!(
                "{} initial values for the {} keys of [{}, {})",
                init.len(),
                config.len(),
                config.lo,
                config.hi
            )));
        }
        if let Some(i) = init.iter().position(|v| !v.is_finite()) {
            return Err(PsError::config(format!("initial value of key {} is {}", config.lo + i as u64, init[i])));
        }
        let n = config.len();
        Ok(ServerCore {
            state: vec![0.0; n * rule.slots()],
            steps: vec![0; n],
            clocks: ClockTable::new(config.workers),
            gate: Gate::new(config.consistency, config.workers),
            last_seq: vec![None; config.workers as usize],
            held: BTreeMap::new(),
            deferred: Vec::new(),
            view: 0,
            metrics: Metrics::new(config.workers),
            scratch: Scratch::default(),
            params: init,
            rule,
            config,
        })
    }

    // ----- queries -------------------------------------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The keys owned.
    pub fn range(&self) -> Range<u64> {
        self.config.lo..self.config.hi
    }

    /// The parameters `[lo, hi)` as they are now (held pushes not included).
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// The vector clock.
    pub fn clocks(&self) -> &ClockTable {
        &self.clocks
    }

    /// The view clock: every update of a clock below it is in the parameters.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// The staleness bound now (ASP's adapted `s_now`; `None` under `async`).
    pub fn bound(&self) -> Option<u64> {
        self.gate.bound()
    }

    /// The measurements.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Pulls waiting for the consistency mode.
    pub fn deferred_pulls(&self) -> usize {
        self.deferred.len()
    }

    /// Pushes held for their clock (under `ByClock`/`ByClockSum`).
    pub fn held_pushes(&self) -> usize {
        self.held.len()
    }

    /// The largest push sequence number seen from worker `w` (`None` for none, or an unknown worker).
    pub fn last_seq(&self, w: WorkerIdx) -> Option<u64> {
        self.last_seq.get(w as usize).copied().flatten()
    }

    // ----- snapshots -----------------------------------------------------------------------------------------------

    /// The whole state, to restore elsewhere with [`ServerCore::restore`].
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            rule: self.rule.name().to_string(),
            slots: self.rule.slots() as u32,
            params: self.params.clone(),
            state: self.state.clone(),
            steps: self.steps.clone(),
            clocks: self.clocks.clone(),
            gate: self.gate.clone(),
            last_seq: self.last_seq.clone(),
            held: self.held.iter().map(|(&(c, w, s), u)| (c, w, s, u.clone())).collect(),
            deferred: self.deferred.clone(),
            view: self.view,
            metrics: self.metrics.clone(),
        }
    }

    /// A server continuing from `snapshot`, with `rule` (the same rule, by name and state slots, as the snapshot's).
    pub fn restore(snapshot: Snapshot, rule: Box<dyn UpdateRule>) -> Result<ServerCore> {
        let bad = |reason: String| PsError::Snapshot { reason };
        let s = snapshot;
        s.config.validate().map_err(|e| bad(e.to_string()))?;
        rule.validate()?;
        let (n, w) = (s.config.len(), s.config.workers as usize);
        if rule.name() != s.rule || rule.slots() != s.slots as usize {
            return Err(bad(format!(
                "it was taken with rule {:?} ({} slots), not {:?} ({} slots)",
                s.rule,
                s.slots,
                rule.name(),
                rule.slots()
            )));
        }
        if s.params.len() != n || s.steps.len() != n || s.state.len() != n * rule.slots() {
            return Err(bad(format!(
                "{} parameters, {} step counts and {} state values for {n} keys",
                s.params.len(),
                s.steps.len(),
                s.state.len()
            )));
        }
        if s.clocks.workers() as usize != w
            || s.last_seq.len() != w
            || s.metrics.waits.len() != w
            || !s.gate.sized_for(w as u32)
        {
            return Err(bad(format!("its tables are not sized for the {w} workers of its configuration")));
        }
        if s.gate.mode() != s.config.consistency {
            return Err(bad(format!("its gate is {} but its configuration {}", s.gate.mode(), s.config.consistency)));
        }
        let core = ServerCore {
            held: s.held.into_iter().map(|(c, w, q, u)| ((c, w, q), u)).collect(),
            config: s.config,
            rule,
            params: s.params,
            state: s.state,
            steps: s.steps,
            clocks: s.clocks,
            gate: s.gate,
            last_seq: s.last_seq,
            deferred: s.deferred,
            view: s.view,
            metrics: s.metrics,
            scratch: Scratch::default(),
        };
        // What is held or waiting is used without further checks: check it now, as it was checked on arrival.
        let workers = core.config.workers;
        for d in &core.deferred {
            if d.worker >= workers {
                return Err(bad(format!("a deferred pull from unknown worker {}", d.worker)));
            }
            core.check_selection(&d.what).map_err(|e| bad(format!("a deferred pull: {e}")))?;
        }
        for (&(_, w, _), u) in &core.held {
            if w >= workers {
                return Err(bad(format!("a held push from unknown worker {w}")));
            }
            core.check_update(u).map_err(|e| bad(format!("a held push: {e}")))?;
        }
        Ok(core)
    }

    // ----- requests ------------------------------------------------------------------------------------------------

    /// Serves one request received at `now` (time since the runtime's epoch, non-decreasing), returning the replies
    /// to send: to its sender, and to any worker whose deferred pull it released. A malformed request gets a
    /// [`Reply::Rejected`] and changes nothing.
    pub fn handle(&mut self, request: Request, now: Duration) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let worker = request.worker();
        if worker >= self.config.workers {
            let error = PsError::UnknownWorker { worker, workers: self.config.workers };
            self.reject(worker, request.reference(), error, &mut out);
            return out;
        }
        match request {
            Request::Join { worker } => self.join(worker, now, &mut out),
            Request::Leave { worker } => self.leave(worker, now, &mut out),
            request if !self.clocks.is_live(worker) => self.serve_departed(request, &mut out),
            Request::Push { worker, clock, update, seq } => self.push(worker, clock, update, seq, now, &mut out),
            Request::Pull { worker, clock, what, req } => self.pull(worker, clock, what, req, now, &mut out),
            Request::Clock { worker, clock } => {
                self.metrics.clock_in.add(0);
                self.advance(worker, clock.saturating_add(1), now, &mut out);
            }
        }
        out
    }

    /// A request from a worker that left: a re-sent push it had made before leaving is acknowledged again, and a
    /// clock declaration that changes nothing is ignored (both come from re-sends after a failover); anything else
    /// is refused until the worker joins again.
    fn serve_departed(&mut self, request: Request, out: &mut Vec<Outgoing>) {
        let worker = request.worker();
        match &request {
            Request::Push { update, seq, .. } => {
                self.metrics.push_in.add(update.payload_bytes());
                if self.last_seq[worker as usize].is_some_and(|l| *seq <= l) {
                    self.metrics.duplicates += 1;
                    self.metrics.ack_out.add(0);
                    out.push(Outgoing { to: worker, reply: Reply::PushAck { worker, seq: *seq } });
                    return;
                }
            }
            Request::Clock { clock, .. } => {
                self.metrics.clock_in.add(0);
                if clock.saturating_add(1) <= self.clocks.completed(worker) {
                    return;
                }
            }
            Request::Pull { what, .. } => self.metrics.pull_in.add(what.payload_bytes()),
            Request::Join { .. } | Request::Leave { .. } => {}
        }
        self.reject(worker, request.reference(), PsError::WorkerLeft { worker }, out)
    }

    fn reject(&mut self, worker: WorkerIdx, what: RequestRef, error: PsError, out: &mut Vec<Outgoing>) {
        self.metrics.rejected += 1;
        out.push(Outgoing { to: worker, reply: Reply::Rejected { worker, what, error } });
    }

    fn push(
        &mut self,
        worker: WorkerIdx,
        clock: u64,
        update: Update,
        seq: u64,
        now: Duration,
        out: &mut Vec<Outgoing>,
    ) {
        self.metrics.push_in.add(update.payload_bytes());
        let ack = Outgoing { to: worker, reply: Reply::PushAck { worker, seq } };
        let last = &mut self.last_seq[worker as usize];
        if last.is_some_and(|l| seq <= l) {
            // Already part of the state (a re-send after a failover, or a duplicate on the wire).
            self.metrics.duplicates += 1;
            self.metrics.ack_out.add(0);
            out.push(ack);
            return;
        }
        *last = Some(seq);
        let completed = self.clocks.completed(worker);
        if clock < completed {
            let error = PsError::ClockClosed { worker, clock, completed };
            return self.reject(worker, RequestRef::Push { seq }, error, out);
        }
        if let Err(error) = self.check_update(&update) {
            return self.reject(worker, RequestRef::Push { seq }, error, out);
        }
        match self.config.apply {
            Apply::OnArrival => self.apply_update(&update, now),
            Apply::ByClock | Apply::ByClockSum => {
                self.held.insert((clock, worker, seq), update);
            }
        }
        self.metrics.ack_out.add(0);
        out.push(ack);
    }

    fn pull(
        &mut self,
        worker: WorkerIdx,
        clock: u64,
        what: Selection,
        req: u64,
        now: Duration,
        out: &mut Vec<Outgoing>,
    ) {
        self.metrics.pull_in.add(what.payload_bytes());
        if let Err(error) = self.check_selection(&what) {
            return self.reject(worker, RequestRef::Pull { req }, error, out);
        }
        // A reader at `clock` has completed the clocks before it.
        self.advance(worker, clock, now, out);
        if self.deferred.iter().any(|d| d.worker == worker && d.req == req) {
            return; // a re-send of a pull already waiting
        }
        if self.gate.admits(clock, &self.clocks) {
            let reply = self.answer(worker, clock, &what, req, now, now);
            out.push(reply);
        } else {
            self.deferred.push(Deferred { worker, clock, what, req, since: now });
        }
    }

    fn join(&mut self, worker: WorkerIdx, now: Duration, out: &mut Vec<Outgoing>) {
        if !self.clocks.is_live(worker) {
            // Resume no earlier than the view, so the view never goes back.
            self.clocks.advance(worker, self.clocks.view());
            self.clocks.set_live(worker, true);
            self.gate.membership(worker, true, &self.clocks);
            self.view_changed(now, out);
        }
        let reply =
            Reply::Joined { worker, clock: self.clocks.completed(worker), last_seq: self.last_seq[worker as usize] };
        out.push(Outgoing { to: worker, reply });
    }

    /// Whether every worker has left (each declared its last clock and left, or was dropped): nothing more can
    /// arrive, and everything held has been applied.
    pub fn all_left(&self) -> bool {
        (0..self.config.workers).all(|w| !self.clocks.is_live(w))
    }

    fn leave(&mut self, worker: WorkerIdx, now: Duration, out: &mut Vec<Outgoing>) {
        if !self.clocks.is_live(worker) {
            return;
        }
        self.clocks.set_live(worker, false);
        self.deferred.retain(|d| d.worker != worker);
        self.gate.membership(worker, false, &self.clocks);
        self.view_changed(now, out);
    }

    /// Worker `w` has completed the clocks below `to`.
    fn advance(&mut self, w: WorkerIdx, to: u64, now: Duration, out: &mut Vec<Outgoing>) {
        let from = self.clocks.advance(w, to);
        if to > from {
            self.gate.advanced(w, from, to, now, &self.clocks);
            self.view_changed(now, out);
        }
    }

    /// After a clock advance or a membership change: count barriers, apply held clocks now complete, answer the
    /// deferred pulls now admitted (in arrival order). Also called when only ASP's bound may have changed.
    fn view_changed(&mut self, now: Duration, out: &mut Vec<Outgoing>) {
        let view = self.clocks.view();
        if view > self.view {
            self.metrics.barriers += match self.config.consistency {
                Consistency::Bsp => view - self.view,
                Consistency::Asp { w, .. } => view / w as u64 - self.view / w as u64,
                _ => 0,
            };
            self.view = view;
        }
        self.flush(now);
        if self.deferred.is_empty() {
            return;
        }
        let (ready, waiting): (Vec<Deferred>, Vec<Deferred>) =
            std::mem::take(&mut self.deferred).into_iter().partition(|d| self.gate.admits(d.clock, &self.clocks));
        self.deferred = waiting;
        for d in ready {
            let reply = self.answer(d.worker, d.clock, &d.what, d.req, d.since, now);
            out.push(reply);
        }
    }

    fn answer(
        &mut self,
        worker: WorkerIdx,
        clock: u64,
        what: &Selection,
        req: u64,
        since: Duration,
        now: Duration,
    ) -> Outgoing {
        let lo = self.config.lo;
        let values: Vec<f32> = match what {
            Selection::Range { start, end } => self.params[(start - lo) as usize..(end - lo) as usize].to_vec(),
            Selection::Keys(keys) => keys.iter().map(|k| self.params[(k - lo) as usize]).collect(),
        };
        let view = self.clocks.view();
        let staleness = clock.saturating_sub(view);
        let waited = now.saturating_sub(since);
        *self.metrics.staleness.entry(staleness).or_default() += 1;
        self.metrics.waits[worker as usize].add(waited);
        self.metrics.pull_out.add(values.len() as u64 * VALUE_BYTES);
        self.gate.answered(worker, now);
        let read = ReadInfo { clock, view, staleness, bound: self.gate.allowed(clock), waited };
        Outgoing { to: worker, reply: Reply::PullReply { req, values, read } }
    }

    // ----- checks --------------------------------------------------------------------------------------------------

    fn check_range(&self, start: u64, end: Option<u64>) -> Result<()> {
        let (lo, hi) = (self.config.lo, self.config.hi);
        match end {
            Some(end) if start <= end && start >= lo && end <= hi => Ok(()),
            end => Err(PsError::RangeOutOfRange { start, end: end.unwrap_or(u64::MAX), lo, hi }),
        }
    }

    fn check_key(&self, key: u64) -> Result<()> {
        let (lo, hi) = (self.config.lo, self.config.hi);
        if (lo..hi).contains(&key) {
            Ok(())
        } else {
            Err(PsError::KeyOutOfRange { key, lo, hi })
        }
    }

    fn check_selection(&self, what: &Selection) -> Result<()> {
        match what {
            Selection::Range { start, end } => self.check_range(*start, Some(*end)),
            Selection::Keys(keys) => keys.iter().try_for_each(|k| self.check_key(*k)),
        }
    }

    fn check_update(&self, update: &Update) -> Result<()> {
        let non_finite = |key: u64, value: f32| PsError::NonFinite { key, value: value.to_string() };
        match update {
            Update::Dense { range_start, values } => {
                self.check_range(*range_start, range_start.checked_add(values.len() as u64))?;
                match values.iter().position(|v| !v.is_finite()) {
                    Some(i) => Err(non_finite(range_start + i as u64, values[i])),
                    None => Ok(()),
                }
            }
            Update::Sparse { keys, values } => {
                if keys.len() != values.len() {
                    return Err(PsError::LengthMismatch { keys: keys.len(), values: values.len() });
                }
                for (k, v) in keys.iter().zip(values) {
                    self.check_key(*k)?;
                    if !v.is_finite() {
                        return Err(non_finite(*k, *v));
                    }
                }
                Ok(())
            }
        }
    }

    // ----- applying updates ----------------------------------------------------------------------------------------

    /// One rule step on the keys `start..start + grads.len()` (offsets into the range).
    fn step_run(&mut self, start: usize, grads: &[f32]) {
        let end = start + grads.len();
        let k = self.rule.slots();
        for t in &mut self.steps[start..end] {
            *t += 1;
        }
        self.rule.apply(
            &mut self.params[start..end],
            grads,
            &mut self.state[start * k..end * k],
            &self.steps[start..end],
        );
    }

    /// One rule step on sorted, distinct offsets with their gradients: consecutive offsets go to the rule as one run.
    fn step_sorted(&mut self, offsets: &[usize], grads: &[f32]) {
        let mut i = 0;
        while i < offsets.len() {
            let mut j = i + 1;
            while j < offsets.len() && offsets[j] == offsets[j - 1] + 1 {
                j += 1;
            }
            self.step_run(offsets[i], &grads[i..j]);
            i = j;
        }
    }

    /// Applies a checked update as one rule step (a sparse update's repeated keys summed, in order).
    fn apply_update(&mut self, update: &Update, now: Duration) {
        let lo = self.config.lo;
        match update {
            Update::Dense { range_start, values } => {
                self.step_run((range_start - lo) as usize, values);
            }
            Update::Sparse { keys, values } => {
                if keys.windows(2).all(|w| w[0] < w[1]) {
                    let offsets: Vec<usize> = keys.iter().map(|k| (k - lo) as usize).collect();
                    self.step_sorted(&offsets, values);
                } else {
                    let mut order: Vec<usize> = (0..keys.len()).collect();
                    order.sort_by_key(|&i| keys[i]); // stable: repeated keys keep their order for the sum
                    let (mut offsets, mut grads) = (Vec::with_capacity(keys.len()), Vec::with_capacity(keys.len()));
                    for i in order {
                        let off = (keys[i] - lo) as usize;
                        if offsets.last() == Some(&off) {
                            *grads.last_mut().expect("pushed with its offset") += values[i];
                        } else {
                            offsets.push(off);
                            grads.push(values[i]);
                        }
                    }
                    self.step_sorted(&offsets, &grads);
                }
            }
        }
        self.metrics.applied(update.len() as u64, now);
    }

    /// Applies the held pushes of every clock below the view, clock by clock, in (worker, seq) order.
    fn flush(&mut self, now: Duration) {
        while let Some(entry) = self.held.first_entry() {
            let clock = entry.key().0;
            if clock >= self.view {
                break;
            }
            let mut batch = Vec::new();
            while let Some(e) = self.held.first_entry() {
                if e.key().0 != clock {
                    break;
                }
                batch.push(e.remove());
            }
            match self.config.apply {
                Apply::ByClockSum => self.apply_sum(&batch, now),
                _ => batch.iter().for_each(|u| self.apply_update(u, now)),
            }
        }
    }

    /// Sums a clock's updates in order and applies the sum as one rule step on every touched key.
    fn apply_sum(&mut self, batch: &[Update], now: Duration) {
        let n = self.config.len();
        let lo = self.config.lo;
        let mut s = std::mem::take(&mut self.scratch);
        if s.acc.len() != n {
            s.acc = vec![0.0; n];
            s.touched = vec![false; n];
        }
        let mut add = |off: usize, v: f32| {
            if !s.touched[off] {
                s.touched[off] = true;
                s.list.push(off);
            }
            s.acc[off] += v;
        };
        for update in batch {
            match update {
                Update::Dense { range_start, values } => {
                    let start = (range_start - lo) as usize;
                    values.iter().enumerate().for_each(|(i, v)| add(start + i, *v));
                }
                Update::Sparse { keys, values } => {
                    keys.iter().zip(values).for_each(|(k, v)| add((k - lo) as usize, *v));
                }
            }
        }
        s.list.sort_unstable();
        let grads: Vec<f32> = s.list.iter().map(|&o| s.acc[o]).collect();
        let offsets = std::mem::take(&mut s.list);
        for &o in &offsets {
            s.acc[o] = 0.0;
            s.touched[o] = false;
        }
        if !offsets.is_empty() {
            self.step_sorted(&offsets, &grads);
            self.metrics.applied(offsets.len() as u64, now);
        }
        s.list = offsets;
        s.list.clear();
        self.scratch = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ps::rules::{Adam, Momentum, Sgd};

    fn ms(t: u64) -> Duration {
        Duration::from_millis(t)
    }

    fn server(keys: Range<u64>, workers: u32, mode: Consistency) -> ServerCore {
        let n = (keys.end - keys.start) as usize;
        ServerCore::new(ServerConfig::new(keys, workers, mode), Box::new(Sgd { lr: 1.0 }), vec![0.0; n]).unwrap()
    }

    fn push(worker: u32, clock: u64, seq: u64, keys: &[u64], values: &[f32]) -> Request {
        Request::Push { worker, clock, seq, update: Update::Sparse { keys: keys.to_vec(), values: values.to_vec() } }
    }

    fn pull(worker: u32, clock: u64, req: u64, start: u64, end: u64) -> Request {
        Request::Pull { worker, clock, what: Selection::Range { start, end }, req }
    }

    fn clock(worker: u32, clock: u64) -> Request {
        Request::Clock { worker, clock }
    }

    /// The pull replies among `out`: (to, req, values, read).
    fn replies(out: &[Outgoing]) -> Vec<(u32, u64, Vec<f32>, ReadInfo)> {
        out.iter()
            .filter_map(|o| match &o.reply {
                Reply::PullReply { req, values, read } => Some((o.to, *req, values.clone(), *read)),
                _ => None,
            })
            .collect()
    }

    fn rejected(out: &[Outgoing]) -> Option<PsError> {
        out.iter().find_map(|o| match &o.reply {
            Reply::Rejected { error, .. } => Some(error.clone()),
            _ => None,
        })
    }

    #[test]
    fn bsp_answers_a_read_once_every_worker_completed_the_clocks_before_it() {
        let mut s = server(0..2, 2, Consistency::Bsp);
        assert!(s.handle(push(0, 0, 0, &[0], &[-1.0]), ms(0)).iter().all(|o| matches!(o.reply, Reply::PushAck { .. })));
        assert!(s.handle(clock(0, 0), ms(1)).is_empty());
        // Worker 0 reads at clock 1 while worker 1 is still in clock 0: deferred.
        assert!(s.handle(pull(0, 1, 7, 0, 2), ms(2)).is_empty());
        assert_eq!((s.deferred_pulls(), s.held_pushes()), (1, 1));
        s.handle(push(1, 0, 0, &[1], &[-2.0]), ms(3));
        let out = s.handle(clock(1, 0), ms(10));
        let r = replies(&out);
        assert_eq!(r.len(), 1);
        let (to, req, values, read) = r[0].clone();
        assert_eq!((to, req, values), (0, 7, vec![1.0, 2.0]), "both clock-0 updates applied before the answer");
        assert_eq!(read, ReadInfo { clock: 1, view: 1, staleness: 0, bound: Some(0), waited: ms(8) });
        assert_eq!(s.metrics().waits[0].max, ms(8));
        assert_eq!(s.metrics().barriers, 1);
    }

    #[test]
    fn ssp_lets_the_fastest_run_s_clocks_ahead() {
        let mut s = server(0..1, 2, Consistency::Ssp { s: 1 });
        for c in 0..3 {
            s.handle(push(0, c, c, &[0], &[-1.0]), ms(c));
            s.handle(clock(0, c), ms(c));
        }
        // Worker 1 completed nothing: worker 0 may read at clock 1 (needs view 0), not at clock 2 or 3.
        assert_eq!(replies(&s.handle(pull(0, 1, 1, 0, 1), ms(5)))[0].3.staleness, 1);
        assert!(s.handle(pull(0, 3, 2, 0, 1), ms(5)).is_empty());
        // Worker 1 completes clock 0: view 1, a read at 3 still needs view 2.
        assert!(replies(&s.handle(clock(1, 0), ms(6))).is_empty());
        let r = replies(&s.handle(clock(1, 1), ms(7)));
        assert_eq!((r[0].1, r[0].3.view, r[0].3.staleness, r[0].3.bound), (2, 2, 1, Some(1)));
        assert_eq!(r[0].2, vec![3.0], "on arrival: every push so far, beyond the bound");
    }

    #[test]
    fn async_answers_at_once_and_records_the_staleness() {
        let mut s = server(0..1, 3, Consistency::Async);
        let r = replies(&s.handle(pull(0, 5, 1, 0, 1), ms(0)));
        assert_eq!((r[0].3.view, r[0].3.staleness, r[0].3.bound), (0, 5, None));
        s.handle(pull(1, 2, 1, 0, 1), ms(0));
        assert_eq!(s.metrics().staleness, BTreeMap::from([(2, 1), (5, 1)]));
        assert_eq!(s.metrics().max_staleness(), Some(5));
    }

    #[test]
    fn asp_holds_every_reader_at_a_barrier_clock() {
        let mut s = server(0..1, 2, Consistency::Asp { s: 5, w: 3 });
        assert_eq!(s.bound(), Some(5));
        // Worker 0 races ahead; reads at 1 and 2 pass (bound 5), a read at 3 is a barrier read.
        assert_eq!(replies(&s.handle(pull(0, 2, 1, 0, 1), ms(1))).len(), 1);
        assert!(s.handle(pull(0, 3, 2, 0, 1), ms(2)).is_empty());
        assert!(replies(&s.handle(clock(1, 1), ms(3))).is_empty());
        let r = replies(&s.handle(clock(1, 2), ms(4)));
        assert_eq!((r[0].3.view, r[0].3.staleness, r[0].3.bound), (3, 0, Some(0)));
        assert_eq!(s.metrics().barriers, 1);
    }

    #[test]
    fn a_re_sent_push_is_acked_and_not_applied_again() {
        let mut s = server(0..1, 1, Consistency::Async);
        for _ in 0..3 {
            let out = s.handle(push(0, 0, 4, &[0], &[-1.0]), ms(0));
            assert_eq!(out, vec![Outgoing { to: 0, reply: Reply::PushAck { worker: 0, seq: 4 } }]);
        }
        s.handle(push(0, 0, 2, &[0], &[-1.0]), ms(0)); // an older number: also a duplicate
        assert_eq!(s.params(), [1.0]);
        assert_eq!((s.metrics().duplicates, s.last_seq(0)), (3, Some(4)));
    }

    #[test]
    fn malformed_requests_are_refused_and_change_nothing() {
        let mut s = server(10..20, 2, Consistency::Bsp);
        s.handle(push(0, 0, 0, &[12], &[1.0]), ms(0));
        let before = s.snapshot();
        let cases: Vec<(Request, &str)> = vec![
            (push(5, 0, 1, &[12], &[1.0]), "unknown worker 5"),
            (push(0, 0, 1, &[20], &[1.0]), "key 20 is outside this server's range [10, 20)"),
            (push(0, 0, 2, &[12, 13], &[1.0]), "2 keys but 1 values"),
            (push(0, 0, 3, &[12, 13], &[1.0, f32::NAN]), "key 13 is NaN"),
            (push(0, 0, 4, &[12], &[f32::INFINITY]), "key 12 is inf"),
            (
                Request::Push {
                    worker: 0,
                    clock: 0,
                    seq: 5,
                    update: Update::Dense { range_start: 18, values: vec![0.0; 3] },
                },
                "[18, 21)",
            ),
            (
                Request::Push {
                    worker: 0,
                    clock: 0,
                    seq: 6,
                    update: Update::Dense { range_start: u64::MAX, values: vec![0.0; 3] },
                },
                "is not inside",
            ),
            (pull(1, 0, 1, 15, 12), "[15, 12) is not inside"),
            (pull(1, 0, 2, 5, 12), "[5, 12)"),
            (Request::Pull { worker: 1, clock: 0, what: Selection::Keys(vec![10, 9]), req: 3 }, "key 9"),
        ];
        for (request, why) in cases {
            let what = request.reference();
            let out = s.handle(request, ms(1));
            assert_eq!(out.len(), 1, "{why}");
            let Reply::Rejected { what: w, error, .. } = &out[0].reply else { panic!("{why}: {out:?}") };
            assert_eq!(*w, what);
            assert!(error.to_string().contains(why), "{error} does not say {why:?}");
        }
        let after = s.snapshot();
        assert_eq!((after.params(), &after.held, &after.deferred), (before.params(), &before.held, &before.deferred));
        assert_eq!(s.metrics().rejected, 10);
    }

    #[test]
    fn a_push_for_a_completed_clock_is_refused() {
        let mut s = server(0..1, 2, Consistency::Ssp { s: 1 });
        s.handle(clock(0, 3), ms(0));
        let e = rejected(&s.handle(push(0, 2, 0, &[0], &[1.0]), ms(0))).unwrap();
        assert_eq!(e, PsError::ClockClosed { worker: 0, clock: 2, completed: 4 });
        // A pull at clock 6 declares clocks < 6 complete.
        s.handle(pull(0, 6, 1, 0, 1), ms(0));
        assert_eq!(s.clocks().completed(0), 6);
        assert!(rejected(&s.handle(push(0, 5, 1, &[0], &[1.0]), ms(0))).is_some());
        assert!(rejected(&s.handle(push(0, 6, 2, &[0], &[1.0]), ms(0))).is_none());
    }

    #[test]
    fn a_worker_that_leaves_releases_the_readers_waiting_for_it_and_may_join_again() {
        let mut s = server(0..1, 3, Consistency::Bsp);
        s.handle(clock(0, 0), ms(0));
        s.handle(clock(1, 0), ms(0));
        assert!(s.handle(pull(0, 1, 1, 0, 1), ms(0)).is_empty());
        assert!(s.handle(pull(2, 0, 9, 0, 1), ms(0)).len() == 1, "worker 2's own read at 0 passes");
        s.handle(push(2, 0, 41, &[0], &[1.0]), ms(0));
        s.handle(push(2, 0, 42, &[0], &[1.0]), ms(0));
        // Worker 2 is declared lost: worker 0's read is released (and sees worker 2's held pushes of clock 0).
        let r = replies(&s.handle(Request::Leave { worker: 2 }, ms(5)));
        assert_eq!((r[0].0, r[0].1, r[0].2.clone(), r[0].3.view), (0, 1, vec![-2.0], 1));
        assert_eq!(rejected(&s.handle(push(2, 1, 43, &[0], &[1.0]), ms(6))), Some(PsError::WorkerLeft { worker: 2 }));
        // Re-sends of what it did before leaving are harmless: a push it made is acked again, an old clock ignored.
        let out = s.handle(push(2, 0, 42, &[0], &[1.0]), ms(6));
        assert_eq!(out[0].reply, Reply::PushAck { worker: 2, seq: 42 });
        assert!(rejected(&s.handle(clock(2, 0), ms(6))).is_some(), "a clock it had not declared");
        // It joins again at the view, and learns the last sequence number seen (a refused one may not count).
        let out = s.handle(Request::Join { worker: 2 }, ms(7));
        assert_eq!(out[0].reply, Reply::Joined { worker: 2, clock: 1, last_seq: Some(42) });
        assert!(s.handle(pull(1, 2, 1, 0, 1), ms(8)).is_empty(), "worker 2 counts again");
        assert_eq!(replies(&s.handle(clock(2, 1), ms(9))).len(), 0, "worker 0 has not completed clock 1");
        assert_eq!(replies(&s.handle(clock(0, 1), ms(9))).len(), 1);
    }

    #[test]
    fn a_re_sent_clock_from_a_departed_worker_is_ignored() {
        let mut s = server(0..1, 2, Consistency::Bsp);
        s.handle(clock(1, 2), ms(0));
        s.handle(Request::Leave { worker: 1 }, ms(0));
        assert!(s.handle(clock(1, 1), ms(1)).is_empty());
        assert!(s.handle(clock(1, 2), ms(1)).is_empty());
        assert_eq!(rejected(&s.handle(clock(1, 3), ms(1))), Some(PsError::WorkerLeft { worker: 1 }));
        assert_eq!(s.clocks().completed(1), 3);
    }

    #[test]
    fn by_clock_sum_takes_one_rule_step_per_clock_on_the_sum() {
        let rule = Momentum { lr: 0.1, momentum: 0.5 };
        let config = ServerConfig::new(0..2, 2, Consistency::Bsp).with_apply(Apply::ByClockSum);
        let mut s = ServerCore::new(config, Box::new(rule), vec![0.0; 2]).unwrap();
        s.handle(push(1, 0, 0, &[0, 1], &[1.0, 1.0]), ms(0));
        s.handle(push(0, 0, 0, &[0], &[2.0]), ms(0));
        s.handle(
            Request::Push {
                worker: 0,
                clock: 0,
                seq: 1,
                update: Update::Dense { range_start: 0, values: vec![4.0, 0.0] },
            },
            ms(0),
        );
        s.handle(clock(0, 0), ms(0));
        assert_eq!(s.params(), [0.0, 0.0], "held until every worker completed clock 0");
        s.handle(clock(1, 0), ms(1));
        // Key 0: g = 2 + 4 + 1 = 7, v = 7, p = -0.7. Key 1: g = 0 + 1 = 1, p = -0.1. One step each.
        assert_eq!(s.params(), [-0.7, -0.1]);
        assert_eq!((s.steps.clone(), s.metrics().steps), (vec![1, 1], 1));
    }

    #[test]
    fn a_sparse_push_sums_repeated_keys_into_one_step() {
        let config = ServerConfig::new(0..4, 1, Consistency::Async);
        let mut s = ServerCore::new(config, Box::new(Adam::new(0.5)), vec![0.0; 4]).unwrap();
        s.handle(push(0, 0, 0, &[3, 1, 3, 2], &[1.0, -1.0, -3.0, 0.5]), ms(0));
        // Adam's first step moves by lr·sign(g): key 3's g = 1 - 3 = -2.
        assert_eq!(s.params(), [0.0, 0.5, -0.5, 0.5]);
        assert_eq!(s.steps, vec![0, 1, 1, 1]);
        assert_eq!(s.metrics().push_in, crate::ps::Traffic { messages: 1, bytes: 4 * 8 + 4 * 4 });
    }

    #[test]
    fn traffic_is_counted_per_kind() {
        let mut s = server(0..8, 1, Consistency::Async);
        s.handle(
            Request::Push {
                worker: 0,
                clock: 0,
                seq: 0,
                update: Update::Dense { range_start: 0, values: vec![1.0; 8] },
            },
            ms(0),
        );
        s.handle(pull(0, 0, 1, 2, 6), ms(0));
        s.handle(Request::Pull { worker: 0, clock: 0, what: Selection::Keys(vec![1, 1, 7]), req: 2 }, ms(0));
        s.handle(clock(0, 0), ms(0));
        let m = s.metrics();
        assert_eq!((m.push_in.bytes, m.pull_in.bytes, m.pull_out.bytes), (32, 24, 16 + 12));
        assert_eq!((m.push_in.messages, m.pull_in.messages, m.clock_in.messages, m.pull_out.messages), (1, 2, 1, 2));
        assert_eq!((m.ack_out.messages, m.reads()), (1, 2));
    }

    #[test]
    fn a_restored_snapshot_continues_exactly_like_the_original() {
        let config = ServerConfig::new(0..3, 2, Consistency::Asp { s: 2, w: 4 }).with_apply(Apply::ByClock);
        let mut a = ServerCore::new(config, Box::new(Adam::new(0.1)), vec![1.0, 2.0, 3.0]).unwrap();
        let script: Vec<Request> = (0..6u64)
            .flat_map(|c| {
                [
                    push(0, c, 2 * c, &[0, 2], &[c as f32, 1.0]),
                    clock(0, c),
                    pull(0, c + 1, c, 0, 3),
                    push(1, c, 2 * c + 1, &[1], &[-(c as f32)]),
                    clock(1, c),
                ]
            })
            .collect();
        let (first, second) = script.split_at(13);
        for (i, r) in first.iter().enumerate() {
            a.handle(r.clone(), ms(i as u64 * 3));
        }
        let bytes = postcard::to_stdvec(&a.snapshot()).unwrap();
        let snap: Snapshot = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(snap, a.snapshot());
        let mut b = ServerCore::restore(snap, Box::new(Adam::new(0.1))).unwrap();
        for (i, r) in second.iter().enumerate() {
            let t = ms(100 + i as u64);
            assert_eq!(a.handle(r.clone(), t), b.handle(r.clone(), t));
        }
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn a_snapshot_restores_only_into_a_matching_rule_and_consistent_tables() {
        let mut s = server(0..4, 2, Consistency::Bsp);
        s.handle(pull(0, 1, 1, 0, 4), ms(0));
        let snap = s.snapshot();
        let e = ServerCore::restore(snap.clone(), Box::new(Adam::new(0.1))).unwrap_err().to_string();
        assert!(e.contains("rule \"sgd\" (0 slots), not \"adam\" (2 slots)"), "{e}");
        let mut short = snap.clone();
        short.params.pop();
        assert!(ServerCore::restore(short, Box::new(Sgd { lr: 1.0 }))
            .unwrap_err()
            .to_string()
            .contains("3 parameters"));
        let mut bad_pull = snap.clone();
        bad_pull.deferred[0].what = Selection::Range { start: 0, end: 9 };
        let e = ServerCore::restore(bad_pull, Box::new(Sgd { lr: 1.0 })).unwrap_err().to_string();
        assert!(e.contains("a deferred pull: key range [0, 9)"), "{e}");
        let mut wrong_workers = snap;
        wrong_workers.config.workers = 3;
        assert!(ServerCore::restore(wrong_workers, Box::new(Sgd { lr: 1.0 })).is_err());
    }

    #[test]
    fn bad_configurations_are_refused() {
        let rule = || Box::new(Sgd { lr: 0.1 }) as Box<dyn UpdateRule>;
        let new = |keys: Range<u64>, workers, init: Vec<f32>| {
            ServerCore::new(ServerConfig::new(keys, workers, Consistency::Bsp), rule(), init).unwrap_err().to_string()
        };
        assert!(new(3..3, 1, vec![]).contains("empty"));
        assert!(new(0..2, 0, vec![0.0; 2]).contains("at least one worker"));
        assert!(new(0..2, 1, vec![0.0; 3]).contains("3 initial values for the 2 keys"));
        assert!(new(0..2, 1, vec![0.0, f32::NAN]).contains("key 1 is NaN"));
        let adam = Adam { eps: 0.0, ..Adam::new(0.1) };
        let e = ServerCore::new(ServerConfig::new(0..1, 1, Consistency::Bsp), Box::new(adam), vec![0.0]);
        assert!(e.unwrap_err().to_string().contains("eps"));
    }

    /// The same BSP run for 1, 2, 3 and 7 workers: worker w adds w + 1 to key w % 3 each clock; every read at clock
    /// c sees exactly c clocks of everyone's updates.
    #[test]
    fn bsp_rounds_for_1_2_3_and_7_workers() {
        for n in [1u32, 2, 3, 7] {
            let mut s = server(0..3, n, Consistency::Bsp);
            let per_clock: Vec<f32> =
                (0..3).map(|k| (0..n).filter(|w| w % 3 == k).map(|w| -(w as f32 + 1.0)).sum()).collect();
            for c in 0..5u64 {
                let mut answered = Vec::new();
                for w in 0..n {
                    answered.extend(replies(&s.handle(pull(w, c, c, 0, 3), ms(c))));
                }
                assert_eq!(answered.len(), n as usize, "{n} workers, clock {c}: every read answered");
                for (_, _, values, read) in answered {
                    assert_eq!(read.staleness, 0);
                    let expect: Vec<f32> = per_clock.iter().map(|v| -v * c as f32).collect();
                    assert_eq!(values, expect, "{n} workers, clock {c}");
                }
                for w in 0..n {
                    s.handle(push(w, c, c, &[(w % 3) as u64], &[-(w as f32 + 1.0)]), ms(c));
                    s.handle(clock(w, c), ms(c));
                }
            }
            assert_eq!(s.metrics().barriers, 5);
        }
    }
}
