//! The master's decisions, without I/O (in the manner of raft-rs's `step`/`ready`).
//!
//! The [`Scheduler`] owns placement (which worker holds which chunk of every dataset), the one operation in flight
//! (start-up, a load, a map-reduce round, a multipass pass), the requests that operation is waiting for, worker
//! liveness, failures and replacements, and per-worker speed estimates. It never touches a socket, a process or a
//! clock: the driver ([`Cluster`](super::Cluster)) feeds it [`Event`]s with the current time and carries out the
//! [`Action`]s it queues. Tests drive it through a simulated network instead (`sim`).
//!
//! Invariants it keeps:
//! - every request that expects an answer has a fresh [`RequestId`]; an answer is accepted only from the worker the
//!   request went to, only while that request is outstanding, and only for chunks it still lacks — so a late answer
//!   from a replaced worker is dropped and no partial is ever counted twice;
//! - a chunk's data is sent (or its load ordered) on a worker's connection before any request that needs it, so
//!   requests never wait for load acknowledgements;
//! - every wait has a deadline: live workers have a heartbeat deadline, joining workers and replacements a join
//!   deadline ([`Scheduler::next_deadline`]).

mod placement;
mod ps;
#[cfg(test)]
mod sim;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

pub use placement::Placement;
use placement::{apportion, makespan, moves_to_target, runs};
pub(crate) use ps::{PsPlan, PsProgress as PsProgressNote, PsWorkerFigures};

use crate::data::chunk_rows;
use crate::tree::Tree;
use crate::wire::{DatasetId, ElemType, FileSource, Message, RequestId, WorkerFailure};
use crate::Error;

/// A worker's identity at the master: assigned once, never reused (a replacement gets a new one).
pub(crate) type WorkerId = usize;

/// How a worker was started, which decides how it is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A process on the master's machine: replaced by a new local process.
    Local,
    /// A process on another host (ssh, a launcher): replaced by a spare, if any.
    Remote,
}

/// What a process does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Holds data and computes (map-reduce, passes, a parameter-server run's worker loop).
    Compute,
    /// Serves parameter ranges in parameter-server runs; holds no data and is not replaced when lost (its ranges
    /// fail over along their chains).
    Server,
}

/// The scheduler's settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// A live worker silent for longer than this is lost.
    pub heartbeat_timeout: Duration,
    /// A started worker must pass its handshake, and a requested replacement must start, within this.
    pub join_timeout: Duration,
    /// Worker losses tolerated; one more and the cluster gives up.
    pub max_failures: usize,
    /// How chunks are spread.
    pub placement: Placement,
    /// Whether a lost local worker is replaced by a new local process.
    pub respawn_local: bool,
    /// Spare workers that may replace lost remote ones.
    pub spares: usize,
    /// Replicas of a multipass session (default: the number of live workers at its first pass).
    pub replicas: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_timeout: Duration::from_secs(3),
            join_timeout: Duration::from_secs(60),
            max_failures: 3,
            placement: Placement::Weighted,
            respawn_local: true,
            spares: 0,
            replicas: None,
        }
    }
}

/// Something that happened, fed to [`Scheduler::step`].
#[derive(Debug)]
pub(crate) enum Event {
    /// A worker process was started; its handshake follows.
    Started { worker: WorkerId, origin: Origin, label: String, role: Role },
    /// The worker passed the handshake and registered these jobs.
    Joined { worker: WorkerId, label: String, jobs: Vec<String> },
    /// The worker failed the handshake.
    Rejected { worker: WorkerId, error: Error },
    /// A frame from a worker (heartbeats need not be fed; [`Event::Seen`] covers them).
    Frame { worker: WorkerId, message: Message, payload: Vec<u8> },
    /// Bytes from the worker arrived at `at` (time since the driver's epoch).
    Seen { worker: WorkerId, at: Duration },
    /// The worker's connection ended; `error` says how (exit status, stderr).
    Closed { worker: WorkerId, error: Error },
    /// A requested replacement could not be started.
    SpawnFailed { reason: String },
    /// Time passed.
    Tick,
}

/// Something the driver must do, taken from [`Scheduler::actions`].
#[derive(Debug)]
pub(crate) enum Action {
    /// Queue a frame to a worker.
    Send { worker: WorkerId, message: Message, payload: Arc<Vec<u8>> },
    /// Send these chunks of a shipped dataset (one `LoadChunk` each), then `LoadDone { req }`.
    Ship { worker: WorkerId, dataset: DatasetId, chunks: Vec<Range<u32>>, req: RequestId },
    /// Stop the worker for good (kill its process, close its connection).
    Kill { worker: WorkerId },
    /// Ask the worker to exit cleanly (it was retired, not lost).
    Retire { worker: WorkerId },
    /// Start a replacement worker of this origin.
    Spawn { origin: Origin },
    /// A parameter-server worker reported progress.
    PsProgress(ps::PsProgress),
    /// A fetch of a parameter-server run's model completed: the parameters, and each range's server metrics
    /// (postcard-encoded `ps::Metrics`).
    PsFetched { params: Vec<f32>, metrics: Vec<Vec<u8>> },
    /// Every worker of the parameter-server run finished (the run stays open for fetches until `ps_end`).
    PsFinished,
    /// The operation in flight finished.
    Done(Outcome),
    /// The operation in flight failed.
    Fail(Error),
}

/// The result of a finished operation.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Every worker joined.
    Started,
    /// The dataset is resident.
    Loaded,
    /// A worker described a file source.
    Described { rows: u64, cols: u32, fingerprint: [u8; 32] },
    /// Encoded partials of a map-reduce round, by tree node, with the worker that computed each.
    Mapped { parts: BTreeMap<u32, (WorkerId, Vec<u8>)> },
    /// Encoded partials of a pass, in replica order, with each replica's row count and worker.
    Passed { partials: Vec<(u64, WorkerId, Vec<u8>)> },
}

/// Where a dataset's chunks come from when they must be (re)loaded.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The master holds the data and ships chunks ([`Action::Ship`]).
    Shipped,
    /// Workers read them from shared files.
    Files { source: FileSource, fingerprint: [u8; 32] },
}

/// A dataset to place.
#[derive(Debug, Clone)]
pub(crate) struct DatasetSpec {
    pub id: DatasetId,
    pub elem: ElemType,
    pub rows: u64,
    pub chunks: u32,
    pub source: Source,
}

/// A worker lost during the run.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    /// The worker.
    pub worker: String,
    /// Why it was declared lost.
    pub cause: String,
    /// When, as time since the cluster started.
    pub detected: Duration,
    /// What the cluster was doing then: `start-up`, `load`, `round`, `pass`, or `between operations` (a loss
    /// noticed as the next operation starts).
    pub during: &'static str,
    /// When the work in flight at the loss was complete again (the next finished operation).
    pub recovered: Option<Duration>,
}

/// What one worker did.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerReport {
    /// The worker.
    pub worker: String,
    /// Whether it is still in the cluster.
    pub live: bool,
    /// Chunks it holds now, over all datasets.
    pub chunks: u64,
    /// Chunks it mapped (map-reduce) or passed over (multipass), in total.
    pub chunks_done: u64,
    /// Time it reported computing.
    pub busy: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Status {
    Joining {
        deadline: Duration,
    },
    Live,
    Lost,
    /// Left the cluster on purpose (`retire`).
    Retired,
}

/// An exponentially weighted rate with a sample count.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    rows_per_sec: f64,
    samples: u32,
}

impl Rate {
    fn add(&mut self, rows: u64, micros: u64) {
        let rate = rows as f64 / (micros.max(1) as f64 * 1e-6);
        self.rows_per_sec = if self.samples == 0 { rate } else { 0.7 * self.rows_per_sec + 0.3 * rate };
        self.samples += 1;
    }
}

#[derive(Debug)]
struct WorkerState {
    label: String,
    origin: Origin,
    role: Role,
    status: Status,
    jobs: Vec<String>,
    last_seen: Duration,
    speed: BTreeMap<String, Rate>,
    busy: Duration,
    chunks_done: u64,
}

#[derive(Debug)]
struct DatasetState {
    spec: DatasetSpec,
    /// Placement units: contiguous chunk ranges covering every chunk (single chunks, or replica ranges).
    units: Vec<Range<u32>>,
    /// The worker holding each unit (or ordered to load it); `None` while parked for a replacement.
    owner: Vec<Option<WorkerId>>,
    /// The replica count the units are aligned to, if any.
    replicas: Option<u32>,
    /// Rounds on this dataset since its placement last changed for speed (moves wait for fresh estimates).
    since_move: u32,
}

impl DatasetState {
    fn unit_of(&self, chunk: u32) -> usize {
        self.units.partition_point(|u| u.end <= chunk)
    }

    fn owner_of_chunk(&self, chunk: u32) -> Option<WorkerId> {
        self.owner[self.unit_of(chunk)]
    }

    fn rows_of(&self, range: Range<u32>) -> u64 {
        if range.is_empty() {
            return 0;
        }
        let first = chunk_rows(self.spec.rows as usize, self.spec.chunks as usize, range.start as usize).start;
        let end = chunk_rows(self.spec.rows as usize, self.spec.chunks as usize, range.end as usize - 1).end;
        (end - first) as u64
    }

    fn chunks_of(&self, worker: WorkerId) -> Vec<u32> {
        let mut out = Vec::new();
        for (u, o) in self.owner.iter().enumerate() {
            if *o == Some(worker) {
                out.extend(self.units[u].clone());
            }
        }
        out
    }
}

/// What the driver may read of a session.
#[derive(Debug)]
pub(crate) struct SessionView<'a> {
    pub seed: u64,
    pub replicas: Option<u32>,
    pub passes: u64,
    pub locals: &'a [Option<Vec<u8>>],
}

#[derive(Debug)]
struct SessionState {
    seed: u64,
    replicas: Option<u32>,
    passes: u64,
    locals: Vec<Option<Vec<u8>>>,
    /// The worker holding each replica's live local state, if any.
    hosts: Vec<Option<WorkerId>>,
}

#[derive(Debug)]
enum Pending {
    Load { worker: WorkerId },
    Describe { worker: WorkerId },
    Map { worker: WorkerId, remaining: BTreeSet<u32> },
    Pass { worker: WorkerId, replica: u32 },
}

impl Pending {
    fn worker(&self) -> WorkerId {
        match self {
            Pending::Load { worker }
            | Pending::Describe { worker }
            | Pending::Map { worker, .. }
            | Pending::Pass { worker, .. } => *worker,
        }
    }
}

#[derive(Debug)]
struct MapOp {
    started: Duration,
    /// Compute time and chunks each worker reported in this round.
    work: BTreeMap<WorkerId, (Duration, u32)>,
    job: String,
    dataset: DatasetId,
    params: Arc<Vec<u8>>,
    tree: Tree,
    missing: BTreeSet<u32>,
    parts: BTreeMap<u32, (WorkerId, Vec<u8>)>,
}

/// A replica's answer to a pass: its encoded partial, its saved local state, and the worker that ran it.
type ReplicaResult = (Vec<u8>, Option<Vec<u8>>, WorkerId);

#[derive(Debug)]
struct PassOp {
    session: u64,
    job: String,
    dataset: DatasetId,
    state: Arc<Vec<u8>>,
    replicas: u32,
    /// What each replica that answered sent.
    results: Vec<Option<ReplicaResult>>,
}

#[derive(Debug)]
enum Op {
    Idle,
    Start { deadline: Duration },
    Load { dataset: DatasetId, waiting: BTreeSet<RequestId> },
    Describe { source: FileSource, req: Option<RequestId> },
    Map(MapOp),
    Pass(PassOp),
    Ps(Box<ps::PsOp>),
}

/// A replacement asked for and not yet joined.
#[derive(Debug)]
struct Spawning {
    origin: Origin,
    deadline: Duration,
    /// Chunks parked for it: (dataset, chunk). Chunks, not units: a dataset's units may be re-cut (aligned to
    /// replicas) while the replacement starts; whatever is still unowned when it joins is its.
    parked: Vec<(DatasetId, u32)>,
}

/// The master's decision maker. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Scheduler {
    cfg: Config,
    now: Duration,
    workers: BTreeMap<WorkerId, WorkerState>,
    datasets: BTreeMap<DatasetId, DatasetState>,
    sessions: BTreeMap<u64, SessionState>,
    next_session: u64,
    next_req: RequestId,
    outstanding: BTreeMap<RequestId, Pending>,
    op: Op,
    spawning: VecDeque<Spawning>,
    spares_left: usize,
    failures: Vec<FailureRecord>,
    fatal: Option<String>,
    actions: VecDeque<Action>,
    rounds: u64,
    last_round: Option<RoundProfile>,
}

/// What the last map-reduce round cost: its wall time and each worker's compute time and chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundProfile {
    /// Chunks of the dataset.
    pub chunks: u32,
    /// From the requests going out to the last answer.
    pub wall: Duration,
    /// Per worker that computed: (compute time it reported, chunks it computed).
    pub work: Vec<(Duration, u32)>,
}

impl RoundProfile {
    /// Predicted round time with `n` workers sharing the chunks evenly: each worker's share of the chunks at the
    /// measured compute time per chunk, plus the measured per-worker overhead (the round's wall time beyond its
    /// slowest worker's compute, divided by the workers) times `n`.
    pub fn predict(&self, n: usize) -> Duration {
        let n = n.max(1);
        let (compute, chunks) = self.work.iter().fold((Duration::ZERO, 0u32), |(c, k), (wc, wk)| (c + *wc, k + *wk));
        let per_chunk = compute.checked_div(chunks.max(1)).unwrap_or_default();
        let slowest = self.work.iter().map(|(c, _)| *c).max().unwrap_or_default();
        let per_worker = self.wall.saturating_sub(slowest) / self.work.len().max(1) as u32;
        per_worker * n as u32 + per_chunk * (self.chunks as usize).div_ceil(n) as u32
    }
}

impl Scheduler {
    /// A scheduler with no workers.
    pub fn new(cfg: Config) -> Scheduler {
        let spares_left = cfg.spares;
        Scheduler {
            cfg,
            now: Duration::ZERO,
            workers: BTreeMap::new(),
            datasets: BTreeMap::new(),
            sessions: BTreeMap::new(),
            next_session: 0,
            next_req: 1,
            outstanding: BTreeMap::new(),
            op: Op::Idle,
            spawning: VecDeque::new(),
            spares_left,
            failures: Vec::new(),
            fatal: None,
            actions: VecDeque::new(),
            rounds: 0,
            last_round: None,
        }
    }

    // ----- queries -------------------------------------------------------------------------------------------------

    /// The actions queued so far, oldest first; the driver must carry out every one, in order.
    pub fn actions(&mut self) -> impl Iterator<Item = Action> + '_ {
        self.actions.drain(..)
    }

    /// The earliest time at which something will be decided without a new event (a heartbeat or join deadline),
    /// if anything is being waited for.
    pub fn next_deadline(&self) -> Option<Duration> {
        let mut d: Option<Duration> = None;
        let mut at = |t: Duration| d = Some(d.map_or(t, |d: Duration| d.min(t)));
        for w in self.workers.values() {
            match w.status {
                Status::Live => at(w.last_seen + self.cfg.heartbeat_timeout),
                Status::Joining { deadline } => at(deadline),
                Status::Lost | Status::Retired => {}
            }
        }
        for s in &self.spawning {
            at(s.deadline);
        }
        if let Op::Start { deadline } = self.op {
            at(deadline);
        }
        d
    }

    /// Live compute workers, in id order.
    pub fn live(&self) -> Vec<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, w)| w.status == Status::Live && w.role == Role::Compute)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Live parameter servers, in id order.
    pub fn live_servers(&self) -> Vec<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, w)| w.status == Status::Live && w.role == Role::Server)
            .map(|(&id, _)| id)
            .collect()
    }

    /// A worker's label.
    pub fn label(&self, worker: WorkerId) -> &str {
        self.workers.get(&worker).map_or("unknown worker", |w| &w.label)
    }

    /// Workers lost so far.
    pub fn failures(&self) -> &[FailureRecord] {
        &self.failures
    }

    /// Per-worker figures, every worker ever started, in id order.
    pub fn reports(&self) -> Vec<WorkerReport> {
        self.workers
            .iter()
            .map(|(&id, w)| WorkerReport {
                worker: w.label.clone(),
                live: w.status == Status::Live,
                chunks: self.datasets.values().map(|d| d.chunks_of(id).len() as u64).sum(),
                chunks_done: w.chunks_done,
                busy: w.busy,
            })
            .collect()
    }

    /// What the last map-reduce round cost.
    pub fn last_round(&self) -> Option<&RoundProfile> {
        self.last_round.as_ref()
    }

    /// Takes a live worker out of the cluster between operations, without counting a failure: its units move to
    /// the other live workers and it is asked to exit. Returns whether it was retired (not if it is the last live
    /// worker or an operation is in flight).
    pub fn retire(&mut self, worker: WorkerId) -> bool {
        let live = self.live();
        if !matches!(self.op, Op::Idle) || live.len() < 2 || !live.contains(&worker) {
            return false;
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.status = Status::Retired;
        }
        self.outstanding.retain(|_, p| p.worker() != worker);
        self.actions.push_back(Action::Retire { worker });
        let mut units = Vec::new();
        for (id, d) in &mut self.datasets {
            for (u, o) in d.owner.iter_mut().enumerate() {
                if *o == Some(worker) {
                    *o = None;
                    units.push((*id, u));
                }
            }
        }
        let rest: Vec<WorkerId> = live.into_iter().filter(|w| *w != worker).collect();
        self.assign_units(units, &rest);
        true
    }

    /// Completed map-reduce rounds and passes.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Whether a dataset is placed.
    pub fn has_dataset(&self, id: &DatasetId) -> bool {
        self.datasets.contains_key(id)
    }

    /// A placed dataset's element type.
    pub fn dataset_elem(&self, id: &DatasetId) -> Option<ElemType> {
        self.datasets.get(id).map(|d| d.spec.elem)
    }

    /// The chunk owner of every chunk of a dataset (for tests and reports).
    #[cfg(test)]
    pub fn owners(&self, id: &DatasetId) -> Vec<Option<WorkerId>> {
        let d = &self.datasets[id];
        (0..d.spec.chunks).map(|c| d.owner_of_chunk(c)).collect()
    }

    // ----- operations ----------------------------------------------------------------------------------------------

    /// Waits for every started worker to join (the initial start-up; any failure is fatal).
    pub fn start(&mut self, now: Duration) {
        self.now = now;
        self.op = Op::Start { deadline: now + self.cfg.join_timeout };
        self.check_started();
    }

    /// Places a dataset on the live workers (evenly, contiguous chunk ranges) and loads it.
    pub fn load(&mut self, now: Duration, spec: DatasetSpec) {
        self.now = now;
        if !self.usable() {
            return;
        }
        if self.datasets.contains_key(&spec.id) {
            self.done(Outcome::Loaded);
            return;
        }
        let live = self.live();
        if live.is_empty() && self.spawning.is_empty() {
            let failures = self.failure_list();
            self.give_up(Error::NoWorkersLeft { failures });
            return;
        }
        let units: Vec<Range<u32>> = (0..spec.chunks).map(|c| c..c + 1).collect();
        // Contiguous ranges in worker order, sized as the even target is (so the first round moves nothing).
        let mut owner = Vec::with_capacity(units.len());
        for (w, n) in live.iter().zip(apportion(units.len(), &vec![1.0; live.len()])) {
            owner.extend(std::iter::repeat_n(Some(*w), n));
        }
        owner.resize(units.len(), None);
        let id = spec.id;
        if live.is_empty() {
            let parked = &mut self.spawning.back_mut().expect("checked above").parked;
            parked.extend((0..spec.chunks).map(|c| (id, c)));
        }
        self.datasets.insert(id, DatasetState { spec, units, owner, replicas: None, since_move: 0 });
        let mut waiting = BTreeSet::new();
        for w in live {
            let chunks = self.datasets[&id].chunks_of(w);
            if let Some(req) = self.order_load(id, w, &chunks) {
                waiting.insert(req);
            }
        }
        self.op = Op::Load { dataset: id, waiting };
        self.check_loaded();
    }

    /// Asks a live worker for the shape and fingerprint of a file source.
    pub fn describe(&mut self, now: Duration, source: FileSource) {
        self.now = now;
        if !self.usable() {
            return;
        }
        self.op = Op::Describe { source, req: None };
        self.send_describe();
    }

    /// Frees a dataset everywhere.
    pub fn unload(&mut self, id: &DatasetId) {
        if self.datasets.remove(id).is_some() {
            for w in self.live() {
                self.send(w, Message::DropDataset { dataset: *id }, Vec::new());
            }
        }
    }

    /// Runs one map-reduce round of `job` over every chunk of `dataset` with encoded `params`.
    pub fn map(&mut self, now: Duration, job: &str, dataset: DatasetId, params: Arc<Vec<u8>>) {
        self.now = now;
        if !self.usable() || !self.check_job(job, dataset) {
            return;
        }
        self.rebalance(dataset, job);
        let chunks = self.datasets[&dataset].spec.chunks;
        self.op = Op::Map(MapOp {
            started: now,
            work: BTreeMap::new(),
            job: job.to_string(),
            dataset,
            params,
            tree: Tree::new(chunks),
            missing: (0..chunks).collect(),
            parts: BTreeMap::new(),
        });
        for w in self.live() {
            let chunks = self.datasets[&dataset].chunks_of(w);
            self.request_map(w, chunks);
        }
    }

    /// Opens a multipass session.
    pub fn open_session(&mut self, seed: u64, replicas: Option<u32>) -> u64 {
        self.next_session += 1;
        let state = SessionState { seed, replicas, passes: 0, locals: Vec::new(), hosts: Vec::new() };
        self.sessions.insert(self.next_session, state);
        self.next_session
    }

    /// A session's seed, replica count (if fixed), passes and saved local states.
    pub fn session(&self, id: u64) -> Option<SessionView<'_>> {
        self.sessions.get(&id).map(|s| SessionView {
            seed: s.seed,
            replicas: s.replicas,
            passes: s.passes,
            locals: &s.locals,
        })
    }

    /// Opens a session continuing from saved state: every replica is restored before its next pass.
    pub fn resume_session(&mut self, seed: u64, replicas: u32, passes: u64, locals: Vec<Option<Vec<u8>>>) -> u64 {
        self.next_session += 1;
        let hosts = vec![None; locals.len()];
        let state = SessionState { seed, replicas: Some(replicas), passes, locals, hosts };
        self.sessions.insert(self.next_session, state);
        self.next_session
    }

    /// Frees a session's local states everywhere.
    pub fn close_session(&mut self, id: u64) {
        if self.sessions.remove(&id).is_some() {
            for w in self.live() {
                self.send(w, Message::EndSession { session: id }, Vec::new());
            }
        }
    }

    /// Runs one pass of multipass `job` over `dataset` in `session`, broadcasting the encoded `state`.
    pub fn pass(&mut self, now: Duration, session: u64, job: &str, dataset: DatasetId, state: Arc<Vec<u8>>) {
        self.now = now;
        if !self.usable() || !self.check_job(job, dataset) {
            return;
        }
        let chunks = self.datasets[&dataset].spec.chunks;
        let live = self.live().len() as u32;
        let Some(sess) = self.sessions.get_mut(&session) else {
            let detail = "the session was closed or belongs to another cluster".to_string();
            self.fail(Error::Protocol { worker: "cluster".into(), detail });
            return;
        };
        let replicas = *sess.replicas.get_or_insert(self.cfg.replicas.unwrap_or(live).clamp(1, chunks));
        if replicas == 0 || replicas > chunks {
            let detail = format!("{replicas} replicas but the dataset has {chunks} chunks; every replica needs one");
            self.fail(Error::Protocol { worker: "cluster".into(), detail });
            return;
        }
        sess.locals.resize(replicas as usize, None);
        sess.hosts.resize(replicas as usize, None);
        self.align_to_replicas(dataset, replicas);
        self.rebalance(dataset, job);
        self.op = Op::Pass(PassOp {
            session,
            job: job.to_string(),
            dataset,
            state,
            replicas,
            results: vec![None; replicas as usize],
        });
        for r in 0..replicas {
            self.request_pass(r);
        }
    }

    // ----- events --------------------------------------------------------------------------------------------------

    /// Feeds one event that happened at `now` (time since the driver's epoch).
    pub fn step(&mut self, now: Duration, event: Event) {
        self.now = self.now.max(now);
        match event {
            Event::Started { worker, origin, label, role } => {
                let state = WorkerState {
                    label,
                    origin,
                    role,
                    status: Status::Joining { deadline: self.now + self.cfg.join_timeout },
                    jobs: Vec::new(),
                    last_seen: self.now,
                    speed: BTreeMap::new(),
                    busy: Duration::ZERO,
                    chunks_done: 0,
                };
                self.workers.insert(worker, state);
            }
            Event::Joined { worker, label, jobs } => self.joined(worker, label, jobs),
            Event::Rejected { worker, error } => self.lose(worker, error),
            Event::Frame { worker, message, payload } => self.frame(worker, message, payload),
            Event::Seen { worker, at } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.last_seen = w.last_seen.max(at);
                }
            }
            Event::Closed { worker, error } => self.lose(worker, error),
            Event::SpawnFailed { reason } => self.spawn_failed(format!("cannot start a replacement worker: {reason}")),
            Event::Tick => self.tick(),
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        let timeout = self.cfg.heartbeat_timeout;
        let stalled: Vec<(WorkerId, Error)> = self
            .workers
            .iter()
            .filter_map(|(&id, w)| match w.status {
                Status::Live if now.saturating_sub(w.last_seen) > timeout => {
                    Some((id, Error::WorkerStalled { worker: w.label.clone(), silent: now - w.last_seen, timeout }))
                }
                Status::Joining { deadline } if now >= deadline => Some((
                    id,
                    Error::Timeout { what: format!("the handshake of {}", w.label), after: self.cfg.join_timeout },
                )),
                _ => None,
            })
            .collect();
        for (id, error) in stalled {
            self.lose(id, error);
        }
        while self.spawning.front().is_some_and(|s| now >= s.deadline) {
            self.spawn_failed(format!("no replacement worker joined within {:?}", self.cfg.join_timeout));
        }
        if let Op::Start { deadline } = self.op {
            if now >= deadline {
                let what = "the workers' handshakes".to_string();
                self.fail(Error::Timeout { what, after: self.cfg.join_timeout });
            }
        }
    }

    fn joined(&mut self, worker: WorkerId, label: String, jobs: Vec<String>) {
        let Some(w) = self.workers.get_mut(&worker) else { return };
        if !matches!(w.status, Status::Joining { .. }) {
            return;
        }
        w.status = Status::Live;
        w.label = label;
        w.jobs = jobs;
        w.last_seen = self.now;
        if matches!(self.op, Op::Start { .. }) {
            self.check_started();
            return;
        }
        // A replacement takes over the units parked for it.
        if let Some(spawning) = self.spawning.pop_front() {
            self.assign_parked(spawning.parked, &[worker]);
        }
        if let Op::Describe { req: None, .. } = self.op {
            self.send_describe();
        }
    }

    fn frame(&mut self, worker: WorkerId, message: Message, payload: Vec<u8>) {
        if self.workers.get(&worker).is_none_or(|w| w.status != Status::Live) {
            return; // a lost worker's last words, or a worker not yet admitted
        }
        match message {
            Message::Heartbeat => {}
            Message::Loaded { req, .. } => {
                if self.take(req, worker, |p| matches!(p, Pending::Load { .. })).is_some() {
                    if let Op::Load { waiting, .. } = &mut self.op {
                        waiting.remove(&req);
                    }
                    self.check_loaded();
                }
            }
            Message::Described { req, rows, cols, fingerprint } => {
                if self.take(req, worker, |p| matches!(p, Pending::Describe { .. })).is_some() {
                    self.done(Outcome::Described { rows, cols, fingerprint });
                }
            }
            Message::MapDone { req, nodes, last, compute_us } => {
                self.map_done(worker, req, nodes, last, compute_us, payload)
            }
            Message::PassDone { req, replica, partial_len, saved, compute_us } => {
                self.pass_done(worker, req, replica, partial_len, saved, compute_us, payload)
            }
            Message::Failed { req, failure } => self.failed(worker, req, failure),
            Message::PsListening { run, host, port } => self.ps_listening(worker, run, host, port),
            Message::PsProgress { run, worker: w, clock, loss_sum, correct, rows, waited_us } => {
                self.ps_progress(run, w, clock, loss_sum, correct, rows, waited_us)
            }
            Message::PsDone { run, worker: w, clock, traffic, busy_us, waited_us } => {
                self.ps_done(run, w, clock, traffic, busy_us, waited_us)
            }
            Message::PsFetched { run, range, req, metrics_len } => {
                self.ps_fetched(run, range, req, metrics_len, payload)
            }
            other => {
                let detail = format!("unexpected {} message", other.kind());
                self.protocol_violation(worker, detail);
            }
        }
    }

    fn map_done(
        &mut self,
        worker: WorkerId,
        req: RequestId,
        nodes: Vec<(u32, u32)>,
        last: bool,
        compute_us: u64,
        payload: Vec<u8>,
    ) {
        let Some(Pending::Map { worker: to, remaining }) = self.outstanding.get_mut(&req) else { return };
        if *to != worker {
            return;
        }
        let Op::Map(op) = &mut self.op else { return };
        let mut rest = payload.as_slice();
        let mut accepted = Vec::new();
        let mut violation = None;
        for (node, len) in nodes {
            let span = op.tree.span(node);
            if span.is_empty() || span.clone().any(|c| !remaining.contains(&c)) {
                violation =
                    Some(format!("answered for tree node {node} (chunks {span:?}), which it was not asked for"));
                break;
            }
            if rest.len() < len as usize {
                violation = Some("MapDone payload shorter than its node table".to_string());
                break;
            }
            let (bytes, tail) = rest.split_at(len as usize);
            rest = tail;
            for c in span.clone() {
                remaining.remove(&c);
                op.missing.remove(&c);
            }
            accepted.push((node, span));
            op.parts.insert(node, (worker, bytes.to_vec()));
        }
        if violation.is_none() && last && !remaining.is_empty() {
            violation = Some(format!("ended its answer without chunks {:?}", runs(remaining.iter().copied())));
        }
        let finished = remaining.is_empty();
        let w = op.work.entry(worker).or_default();
        w.0 += Duration::from_micros(compute_us);
        w.1 += accepted.iter().map(|(_, span)| span.len() as u32).sum::<u32>();
        let job = op.job.clone();
        let dataset = op.dataset;
        if let Some(detail) = violation {
            self.protocol_violation(worker, detail);
            return;
        }
        if finished {
            self.outstanding.remove(&req);
        }
        let rows: u64 = accepted.iter().map(|(_, span)| self.datasets[&dataset].rows_of(span.clone())).sum();
        let chunks: u64 = accepted.iter().map(|(_, span)| span.len() as u64).sum();
        if let Some(w) = self.workers.get_mut(&worker) {
            w.busy += Duration::from_micros(compute_us);
            w.chunks_done += chunks;
            if rows > 0 {
                w.speed.entry(job).or_default().add(rows, compute_us);
            }
        }
        if let Op::Map(op) = &mut self.op {
            if op.missing.is_empty() {
                let Op::Map(op) = std::mem::replace(&mut self.op, Op::Idle) else { unreachable!() };
                self.rounds += 1;
                self.last_round = Some(RoundProfile {
                    chunks: op.tree.chunks(),
                    wall: self.now.saturating_sub(op.started),
                    work: op.work.into_values().collect(),
                });
                self.done(Outcome::Mapped { parts: op.parts });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pass_done(
        &mut self,
        worker: WorkerId,
        req: RequestId,
        replica: u32,
        partial_len: u64,
        saved: bool,
        compute_us: u64,
        mut payload: Vec<u8>,
    ) {
        let Some(p) = self.take(req, worker, |p| matches!(p, Pending::Pass { .. })) else { return };
        let Pending::Pass { replica: asked, .. } = p else { unreachable!() };
        if asked != replica || partial_len > payload.len() as u64 {
            self.protocol_violation(worker, format!("answered a pass of replica {asked} as replica {replica}"));
            return;
        }
        let Op::Pass(op) = &mut self.op else { return };
        let saved = saved.then(|| payload.split_off(partial_len as usize));
        op.results[replica as usize] = Some((payload, saved, worker));
        let (job, dataset, replicas) = (op.job.clone(), op.dataset, op.replicas);
        let range = replica_range(self.datasets[&dataset].spec.chunks, replicas, replica);
        let rows = self.datasets[&dataset].rows_of(range.clone());
        if let Some(w) = self.workers.get_mut(&worker) {
            w.busy += Duration::from_micros(compute_us);
            w.chunks_done += range.len() as u64;
            if rows > 0 {
                w.speed.entry(job).or_default().add(rows, compute_us);
            }
        }
        let Op::Pass(op) = &self.op else { unreachable!() };
        if op.results.iter().all(Option::is_some) {
            let Op::Pass(op) = std::mem::replace(&mut self.op, Op::Idle) else { unreachable!() };
            let d = &self.datasets[&op.dataset];
            let sess = self.sessions.get_mut(&op.session).expect("a pass's session stays open during the pass");
            let mut partials = Vec::with_capacity(op.replicas as usize);
            for (r, result) in op.results.into_iter().enumerate() {
                let (partial, saved, host) = result.expect("all answered");
                sess.locals[r] = saved;
                sess.hosts[r] = Some(host);
                partials.push((d.rows_of(replica_range(d.spec.chunks, op.replicas, r as u32)), host, partial));
            }
            sess.passes += 1;
            self.rounds += 1;
            self.done(Outcome::Passed { partials });
        }
    }

    fn failed(&mut self, worker: WorkerId, req: RequestId, failure: WorkerFailure) {
        if let Op::Ps(op) = &self.op {
            if op.run == req {
                let label = self.label(worker).to_string();
                let job = op.job.clone();
                self.fail(Error::JobFailed { job, worker: label, failure });
                return;
            }
        }
        let Some(pending) = self.outstanding.get(&req) else {
            if req == 0 {
                self.protocol_violation(worker, format!("reported a failure outside any request: {failure}"));
            }
            return;
        };
        if pending.worker() != worker {
            return;
        }
        // A worker that lacks data it was sent is broken, not the job: recover elsewhere.
        if matches!(failure, WorkerFailure::MissingChunk { .. } | WorkerFailure::NotResident { .. }) {
            self.protocol_violation(worker, failure.to_string());
            return;
        }
        let job = match (&self.op, pending) {
            (_, Pending::Load { .. } | Pending::Describe { .. }) => "load".to_string(),
            (Op::Map(op), _) => op.job.clone(),
            (Op::Pass(op), _) => op.job.clone(),
            _ => "request".to_string(),
        };
        self.outstanding.remove(&req);
        let label = self.label(worker).to_string();
        self.fail(Error::JobFailed { job, worker: label, failure });
    }

    // ----- losing and replacing workers ----------------------------------------------------------------------------

    fn protocol_violation(&mut self, worker: WorkerId, detail: String) {
        let label = self.label(worker).to_string();
        self.lose(worker, Error::Protocol { worker: label, detail });
    }

    /// Declares a worker lost: kills it, counts the failure, moves its units (to a replacement if one can be
    /// started, else to the survivors) and re-requests the work it owed the operation in flight.
    fn lose(&mut self, worker: WorkerId, error: Error) {
        let Some(w) = self.workers.get_mut(&worker) else { return };
        if matches!(w.status, Status::Lost | Status::Retired) {
            return;
        }
        let was_joining = matches!(w.status, Status::Joining { .. });
        let origin = w.origin;
        w.status = Status::Lost;
        let label = w.label.clone();
        self.actions.push_back(Action::Kill { worker });
        let during = self.phase();
        self.failures.push(FailureRecord {
            worker: label,
            cause: error.to_string(),
            detected: self.now,
            during,
            recovered: None,
        });
        // Whatever it owed is owed again.
        let owed: Vec<(RequestId, Pending)> = {
            let reqs: Vec<RequestId> =
                self.outstanding.iter().filter(|(_, p)| p.worker() == worker).map(|(&r, _)| r).collect();
            reqs.into_iter().map(|r| (r, self.outstanding.remove(&r).expect("listed"))).collect()
        };
        if self.fatal.is_some() {
            return; // already given up: the loss is recorded, nothing more to decide
        }
        if matches!(self.op, Op::Start { .. }) {
            self.give_up(error); // a worker that cannot even start is a configuration problem
            return;
        }
        let role = self.workers[&worker].role;
        if role == Role::Server || matches!(self.op, Op::Ps(_)) {
            if self.failures.len() > self.cfg.max_failures {
                let failures = self.failure_list();
                self.give_up(Error::TooManyFailures { max: self.cfg.max_failures, failures });
                return;
            }
            self.ps_lost(worker, role, &error);
            if role == Role::Server {
                return; // a server holds no data and is not replaced
            }
        }
        if self.cfg.max_failures == 0 {
            self.give_up(error);
            return;
        }
        if self.failures.len() > self.cfg.max_failures {
            let failures = self.failure_list();
            self.give_up(Error::TooManyFailures { max: self.cfg.max_failures, failures });
            return;
        }
        let replacement = match origin {
            Origin::Local if self.cfg.respawn_local => Some(Origin::Local),
            _ if self.spares_left > 0 => {
                self.spares_left -= 1;
                Some(Origin::Remote)
            }
            _ => None,
        };
        if was_joining {
            // A replacement that failed before joining owns nothing: start another for the same parked units, or
            // hand them to the survivors.
            match replacement {
                Some(origin) => self.actions.push_back(Action::Spawn { origin }),
                None => {
                    if let Some(spawning) = self.spawning.pop_front() {
                        let live = self.live();
                        if live.is_empty() && self.spawning.is_empty() {
                            let failures = self.failure_list();
                            self.give_up(Error::NoWorkersLeft { failures });
                        } else if live.is_empty() {
                            self.spawning.back_mut().expect("not empty").parked.extend(spawning.parked);
                        } else {
                            self.assign_parked(spawning.parked, &live);
                        }
                    }
                }
            }
            return;
        }
        // Its units, in every dataset.
        let mut units = Vec::new();
        for (id, d) in &mut self.datasets {
            for (u, o) in d.owner.iter_mut().enumerate() {
                if *o == Some(worker) {
                    *o = None;
                    units.push((*id, u));
                }
            }
        }
        let parked = self.chunks_of_units(&units);
        if let Some(origin) = replacement {
            self.actions.push_back(Action::Spawn { origin });
            self.spawning.push_back(Spawning { origin, deadline: self.now + self.cfg.join_timeout, parked });
        } else {
            let live = self.live();
            if live.is_empty() {
                if self.spawning.is_empty() {
                    let failures = self.failure_list();
                    self.give_up(Error::NoWorkersLeft { failures });
                    return;
                }
                // Everything waits for a replacement already on its way.
                self.spawning.back_mut().expect("not empty").parked.extend(parked);
            } else {
                self.assign_units(units, &live);
            }
        }
        // The operation in flight gets what the lost worker owed from its units' new owners: `assign_units` asked
        // them already (and a replacement is asked when it joins). Only a description is re-asked here.
        if owed.iter().any(|(_, p)| matches!(p, Pending::Describe { .. })) {
            if let Op::Describe { req, .. } = &mut self.op {
                *req = None;
            }
            self.send_describe();
        }
        if let Op::Load { waiting, .. } = &mut self.op {
            waiting.retain(|r| self.outstanding.contains_key(r));
        }
        self.check_loaded();
    }

    fn spawn_failed(&mut self, reason: String) {
        let Some(mut spawning) = self.spawning.pop_front() else { return };
        let during = self.phase();
        self.failures.push(FailureRecord {
            worker: "replacement worker".into(),
            cause: reason,
            detected: self.now,
            during,
            recovered: None,
        });
        if self.failures.len() > self.cfg.max_failures {
            let failures = self.failure_list();
            self.give_up(Error::TooManyFailures { max: self.cfg.max_failures, failures });
            return;
        }
        let live = self.live();
        if !live.is_empty() {
            self.assign_parked(spawning.parked, &live);
            return;
        }
        // Nobody to hand the units to: try again, as long as failures are tolerated and a replacement is possible.
        let again = match spawning.origin {
            Origin::Local if self.cfg.respawn_local => true,
            _ if self.spares_left > 0 => {
                self.spares_left -= 1;
                true
            }
            _ => false,
        };
        if again {
            self.actions.push_back(Action::Spawn { origin: spawning.origin });
            spawning.deadline = self.now + self.cfg.join_timeout;
            self.spawning.push_front(spawning);
        } else if let Some(next) = self.spawning.back_mut() {
            next.parked.extend(spawning.parked);
        } else {
            let failures = self.failure_list();
            self.give_up(Error::NoWorkersLeft { failures });
        }
    }

    /// The chunks of some units, to park them.
    fn chunks_of_units(&self, units: &[(DatasetId, usize)]) -> Vec<(DatasetId, u32)> {
        units.iter().flat_map(|(id, u)| self.datasets[id].units[*u].clone().map(move |c| (*id, c))).collect()
    }

    /// Gives the units holding parked chunks that are still unowned to `to`.
    fn assign_parked(&mut self, parked: Vec<(DatasetId, u32)>, to: &[WorkerId]) {
        let mut units = BTreeSet::new();
        for (id, c) in parked {
            if let Some(d) = self.datasets.get(&id) {
                let u = d.unit_of(c);
                if c < d.spec.chunks && d.owner[u].is_none() {
                    units.insert((id, u));
                }
            }
        }
        self.assign_units(units.into_iter().collect(), to);
    }

    /// Gives `units` (dataset, unit) to `to`: spread by the placement policy, loaded, and asked for whatever the
    /// operation in flight still needs from them.
    fn assign_units(&mut self, units: Vec<(DatasetId, usize)>, to: &[WorkerId]) {
        if units.is_empty() || to.is_empty() {
            return;
        }
        let mut by_dataset: BTreeMap<DatasetId, Vec<usize>> = BTreeMap::new();
        for (id, u) in units {
            if self.datasets.contains_key(&id) {
                by_dataset.entry(id).or_default().push(u);
            }
        }
        for (id, units) in by_dataset {
            // Spread over `to` so that every worker ends with about its share of the whole dataset.
            let target = self.target_counts(id, to, None);
            let have: BTreeMap<WorkerId, usize> =
                to.iter().map(|w| (*w, self.datasets[&id].owner.iter().filter(|o| **o == Some(*w)).count())).collect();
            let mut given: BTreeMap<WorkerId, Vec<usize>> = BTreeMap::new();
            for u in units {
                // The worker furthest below its target takes the next unit.
                let w = *to
                    .iter()
                    .max_by_key(|w| {
                        let now = have[w] + given.get(w).map_or(0, Vec::len);
                        (target[w] as i64 - now as i64, std::cmp::Reverse(**w))
                    })
                    .expect("to is not empty");
                given.entry(w).or_default().push(u);
            }
            for (w, units) in given {
                let d = self.datasets.get_mut(&id).expect("checked");
                let mut chunks = Vec::new();
                for u in units {
                    d.owner[u] = Some(w);
                    chunks.extend(d.units[u].clone());
                }
                self.give_chunks(id, w, chunks);
            }
        }
    }

    /// Loads `chunks` of `dataset` onto `worker`, which now owns them, and sends it whatever the operation in flight
    /// still needs from them.
    fn give_chunks(&mut self, dataset: DatasetId, worker: WorkerId, mut chunks: Vec<u32>) {
        chunks.sort_unstable();
        let req = self.order_load(dataset, worker, &chunks);
        match &mut self.op {
            Op::Load { dataset: d, waiting } if *d == dataset => waiting.extend(req),
            Op::Map(op) if op.dataset == dataset => {
                let need: Vec<u32> = chunks.iter().copied().filter(|c| op.missing.contains(c)).collect();
                // Chunks already asked of this worker are not asked twice.
                let asked: BTreeSet<u32> = self
                    .outstanding
                    .values()
                    .filter_map(|p| match p {
                        Pending::Map { worker: w, remaining } if *w == worker => Some(remaining.iter().copied()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                let need: Vec<u32> = need.into_iter().filter(|c| !asked.contains(c)).collect();
                self.request_map(worker, need);
            }
            Op::Pass(op) if op.dataset == dataset => {
                let (replicas, chunks_total) = (op.replicas, self.datasets[&dataset].spec.chunks);
                let waiting: Vec<u32> = (0..replicas)
                    .filter(|&r| op.results[r as usize].is_none())
                    .filter(|&r| chunks.contains(&replica_range(chunks_total, replicas, r).start))
                    .filter(|&r| {
                        !self.outstanding.values().any(|p| matches!(p, Pending::Pass { replica, .. } if *replica == r))
                    })
                    .collect();
                for r in waiting {
                    self.request_pass(r);
                }
            }
            _ => {}
        }
    }

    fn phase(&self) -> &'static str {
        match self.op {
            Op::Ps(_) => "during a parameter-server run",
            Op::Idle => "between operations",
            Op::Start { .. } => "during start-up",
            Op::Load { .. } | Op::Describe { .. } => "during load",
            Op::Map(_) => "during a round",
            Op::Pass(_) => "during a pass",
        }
    }

    fn failure_list(&self) -> Vec<String> {
        self.failures.iter().map(|f| format!("{}: {}", f.worker, f.cause)).collect()
    }

    fn give_up(&mut self, error: Error) {
        self.fatal = Some(error.to_string());
        self.fail(error);
    }

    // ----- placement -----------------------------------------------------------------------------------------------

    /// Units per worker of `to` that the policy wants for `dataset`, using `job`'s speed estimates if given.
    fn target_counts(&self, dataset: DatasetId, to: &[WorkerId], job: Option<&str>) -> BTreeMap<WorkerId, usize> {
        let d = &self.datasets[&dataset];
        let weights: Vec<f64> = match (self.cfg.placement, job.and_then(|j| self.speeds(j, to))) {
            (Placement::Weighted, Some(speeds)) => to.iter().map(|w| speeds[w]).collect(),
            _ => vec![1.0; to.len()],
        };
        to.iter().copied().zip(apportion(d.units.len(), &weights)).collect()
    }

    /// Speed estimates of `job` for `workers`, if every one of them has been measured three times or more (workers
    /// that joined since get the median of the others, so a replacement is not starved).
    fn speeds(&self, job: &str, workers: &[WorkerId]) -> Option<BTreeMap<WorkerId, f64>> {
        let known: BTreeMap<WorkerId, f64> = workers
            .iter()
            .filter_map(|w| {
                let r = self.workers.get(w)?.speed.get(job)?;
                (r.samples >= 3).then_some((*w, r.rows_per_sec))
            })
            .collect();
        if known.len() < 2 || known.len() + 1 < workers.len() {
            return None;
        }
        let mut sorted: Vec<f64> = known.values().copied().collect();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let median = sorted[sorted.len() / 2];
        Some(workers.iter().map(|w| (*w, known.get(w).copied().unwrap_or(median))).collect())
    }

    /// Moves units so the live workers hold what the policy wants, if that is worth it. Under `Even`, whenever
    /// counts differ from an even split (after a worker joined). Under `Weighted`, when the predicted round time
    /// drops by 20 % or more, and not within 5 rounds of the last such move, so that timing noise never makes data
    /// travel back and forth.
    fn rebalance(&mut self, dataset: DatasetId, job: &str) {
        if !self.spawning.is_empty() {
            return; // units are parked for a replacement; placement settles once it joins
        }
        let live = self.live();
        if live.is_empty() {
            return;
        }
        let d = self.datasets.get_mut(&dataset).expect("placed");
        d.since_move = d.since_move.saturating_add(1);
        let target = self.target_counts(dataset, &live, Some(job));
        let d = &self.datasets[&dataset];
        let moves = moves_to_target(&d.owner, &target);
        if moves.is_empty() {
            return;
        }
        if self.cfg.placement == Placement::Weighted {
            if let Some(speeds) = self.speeds(job, &live) {
                if d.since_move <= 5 {
                    return;
                }
                let cost: Vec<f64> = d.units.iter().map(|u| d.rows_of(u.clone()) as f64).collect();
                let mut planned = d.owner.clone();
                for &(u, _, to) in &moves {
                    planned[u] = Some(to);
                }
                if makespan(&planned, &cost, &speeds) > 0.8 * makespan(&d.owner, &cost, &speeds) {
                    return;
                }
                self.datasets.get_mut(&dataset).expect("placed").since_move = 0;
            }
        }
        self.apply_moves(dataset, moves);
    }

    fn apply_moves(&mut self, dataset: DatasetId, moves: Vec<(usize, Option<WorkerId>, WorkerId)>) {
        let mut gained: BTreeMap<WorkerId, Vec<u32>> = BTreeMap::new();
        let mut lost: BTreeMap<WorkerId, Vec<u32>> = BTreeMap::new();
        let d = self.datasets.get_mut(&dataset).expect("placed");
        for (u, from, to) in moves {
            d.owner[u] = Some(to);
            gained.entry(to).or_default().extend(d.units[u].clone());
            if let Some(from) = from {
                lost.entry(from).or_default().extend(d.units[u].clone());
            }
        }
        for (w, mut chunks) in lost {
            if self.workers.get(&w).is_some_and(|s| s.status == Status::Live) {
                chunks.sort_unstable();
                self.send(w, Message::DropChunks { dataset, chunks: runs(chunks) }, Vec::new());
            }
        }
        for (w, chunks) in gained {
            self.give_chunks(dataset, w, chunks);
        }
    }

    /// Makes the dataset's placement units the ranges of `replicas` replicas, each held whole by the worker that
    /// holds most of it already.
    fn align_to_replicas(&mut self, dataset: DatasetId, replicas: u32) {
        let d = &self.datasets[&dataset];
        if d.replicas == Some(replicas) && d.owner.iter().all(Option::is_some) {
            return;
        }
        let chunks = d.spec.chunks;
        let units: Vec<Range<u32>> = (0..replicas).map(|r| replica_range(chunks, replicas, r)).collect();
        let mut owner = Vec::with_capacity(units.len());
        let mut moves: BTreeMap<WorkerId, Vec<u32>> = BTreeMap::new();
        let mut drops: BTreeMap<WorkerId, Vec<u32>> = BTreeMap::new();
        let live = self.live();
        for (i, unit) in units.iter().enumerate() {
            let mut count: BTreeMap<WorkerId, usize> = BTreeMap::new();
            for c in unit.clone() {
                if let Some(o) = d.owner_of_chunk(c) {
                    *count.entry(o).or_default() += 1;
                }
            }
            let best = count
                .iter()
                .max_by_key(|(w, n)| (**n, std::cmp::Reverse(**w)))
                .map(|(w, _)| *w)
                .or_else(|| live.get(i % live.len().max(1)).copied());
            owner.push(best);
            for c in unit.clone() {
                let o = d.owner_of_chunk(c);
                if o != best {
                    if let Some(b) = best {
                        moves.entry(b).or_default().push(c);
                    }
                    if let Some(o) = o {
                        drops.entry(o).or_default().push(c);
                    }
                }
            }
        }
        let d = self.datasets.get_mut(&dataset).expect("placed");
        d.units = units;
        d.owner = owner;
        d.replicas = Some(replicas);
        for (w, chunks) in drops {
            self.send(w, Message::DropChunks { dataset, chunks: runs(chunks) }, Vec::new());
        }
        for (w, chunks) in moves {
            self.give_chunks(dataset, w, chunks);
        }
    }

    // ----- requests ------------------------------------------------------------------------------------------------

    fn new_req(&mut self) -> RequestId {
        let r = self.next_req;
        self.next_req += 1;
        r
    }

    fn send(&mut self, worker: WorkerId, message: Message, payload: Vec<u8>) {
        self.actions.push_back(Action::Send { worker, message, payload: Arc::new(payload) });
    }

    /// Orders `worker` to load `chunks` of `dataset`; returns the request id, or `None` for no chunks.
    fn order_load(&mut self, dataset: DatasetId, worker: WorkerId, chunks: &[u32]) -> Option<RequestId> {
        if chunks.is_empty() {
            return None;
        }
        let req = self.new_req();
        let spec = &self.datasets[&dataset].spec;
        let ranges = runs(chunks.iter().copied());
        let action = match &spec.source {
            Source::Shipped => Action::Ship { worker, dataset, chunks: ranges, req },
            Source::Files { source, fingerprint } => Action::Send {
                worker,
                message: Message::LoadSource {
                    req,
                    dataset,
                    source: source.clone(),
                    elem: spec.elem,
                    fingerprint: *fingerprint,
                    rows: spec.rows,
                    total_chunks: spec.chunks,
                    chunks: ranges,
                },
                payload: Arc::new(Vec::new()),
            },
        };
        self.actions.push_back(action);
        self.outstanding.insert(req, Pending::Load { worker });
        Some(req)
    }

    fn request_map(&mut self, worker: WorkerId, chunks: Vec<u32>) {
        let Op::Map(op) = &self.op else { return };
        if chunks.is_empty() {
            return;
        }
        let message = Message::Map {
            req: self.next_req,
            job: op.job.clone(),
            dataset: op.dataset,
            chunks: runs(chunks.iter().copied()),
        };
        let params = Arc::clone(&op.params);
        let req = self.new_req();
        self.actions.push_back(Action::Send { worker, message, payload: params });
        self.outstanding.insert(req, Pending::Map { worker, remaining: chunks.into_iter().collect() });
    }

    /// Sends replica `replica`'s pass to the worker holding its chunks, restoring its local state there first if
    /// it lives elsewhere. Parked replicas wait for their replacement.
    fn request_pass(&mut self, replica: u32) {
        let Op::Pass(op) = &self.op else { return };
        let d = &self.datasets[&op.dataset];
        let range = replica_range(d.spec.chunks, op.replicas, replica);
        let Some(worker) = d.owner_of_chunk(range.start) else { return };
        let sess = self.sessions.get_mut(&op.session).expect("open during the pass");
        let mut sends = Vec::new();
        if sess.hosts[replica as usize] != Some(worker) {
            let saved = sess.locals[replica as usize].clone();
            let msg = Message::RestoreLocal { session: op.session, replica, saved: saved.is_some() };
            sends.push((msg, saved.unwrap_or_default()));
            sess.hosts[replica as usize] = Some(worker);
        }
        let req = self.next_req;
        let message = Message::Pass {
            req,
            session: op.session,
            job: op.job.clone(),
            dataset: op.dataset,
            first_chunk: range.start,
            end_chunk: range.end,
            replica,
            replicas: op.replicas,
            seed: sess.seed,
        };
        let state = Arc::clone(&op.state);
        self.next_req += 1;
        for (msg, bytes) in sends {
            self.send(worker, msg, bytes);
        }
        self.actions.push_back(Action::Send { worker, message, payload: state });
        self.outstanding.insert(req, Pending::Pass { worker, replica });
    }

    fn send_describe(&mut self) {
        let Op::Describe { source, req } = &self.op else { return };
        if req.is_some() {
            return;
        }
        let Some(&worker) = self.live().first() else { return };
        let source = source.clone();
        let r = self.new_req();
        self.send(worker, Message::Describe { req: r, source }, Vec::new());
        self.outstanding.insert(r, Pending::Describe { worker });
        if let Op::Describe { req, .. } = &mut self.op {
            *req = Some(r);
        }
    }

    /// Removes and returns an outstanding request if it went to `worker` and is of the expected kind.
    fn take(&mut self, req: RequestId, worker: WorkerId, kind: impl Fn(&Pending) -> bool) -> Option<Pending> {
        match self.outstanding.get(&req) {
            Some(p) if p.worker() == worker && kind(p) => self.outstanding.remove(&req),
            _ => None,
        }
    }

    // ----- finishing operations ------------------------------------------------------------------------------------

    fn check_started(&mut self) {
        if matches!(self.op, Op::Start { .. })
            && self.workers.values().all(|w| !matches!(w.status, Status::Joining { .. }))
        {
            // Sessions default to one replica per worker the cluster started with, whatever happens later.
            self.cfg.replicas.get_or_insert(self.live().len().max(1) as u32);
            self.done(Outcome::Started);
        }
    }

    fn check_loaded(&mut self) {
        if let Op::Load { dataset, waiting } = &self.op {
            let parked = self.datasets.get(dataset).is_some_and(|d| d.owner.iter().any(Option::is_none));
            if waiting.is_empty() && !parked {
                self.done(Outcome::Loaded);
            }
        }
    }

    fn check_job(&mut self, job: &str, dataset: DatasetId) -> bool {
        if !self.datasets.contains_key(&dataset) {
            self.fail(Error::UnknownDataset(hex::encode(&dataset[..8])));
            return false;
        }
        for w in self.live() {
            let jobs = &self.workers[&w].jobs;
            if !jobs.iter().any(|j| j == job) {
                let available = jobs.clone();
                self.fail(Error::UnknownJob { job: job.to_string(), available });
                return false;
            }
        }
        true
    }

    fn usable(&mut self) -> bool {
        match &self.fatal {
            Some(cause) => {
                let cause = cause.clone();
                self.actions.push_back(Action::Fail(Error::Unusable { cause }));
                false
            }
            None => true,
        }
    }

    fn done(&mut self, outcome: Outcome) {
        self.op = Op::Idle;
        for f in self.failures.iter_mut().filter(|f| f.recovered.is_none()) {
            f.recovered = Some(self.now);
        }
        self.actions.push_back(Action::Done(outcome));
    }

    /// Ends the operation in flight with `error`. Its requests are forgotten (their answers will be dropped); loads
    /// stay tracked, since the data they place stays placed.
    fn fail(&mut self, error: Error) {
        if let Op::Ps(op) = &self.op {
            let run = op.run;
            for w in op.participants() {
                self.send(w, Message::PsEnd { run }, Vec::new());
            }
        }
        self.op = Op::Idle;
        self.outstanding.retain(|_, p| matches!(p, Pending::Load { .. }));
        self.actions.push_back(Action::Fail(error));
    }
}

/// Chunks of replica `r` of `replicas` over `chunks` chunks (the same even split as rows into chunks).
pub(crate) fn replica_range(chunks: u32, replicas: u32, r: u32) -> Range<u32> {
    let range = chunk_rows(chunks as usize, replicas as usize, r as usize);
    range.start as u32..range.end as u32
}
