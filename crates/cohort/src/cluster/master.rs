//! The master's driver: [`Cluster`] owns the connections, processes and retained datasets, feeds the
//! [`Scheduler`](super::scheduler) what happens on them, and carries out what it decides. Every operation (start-up,
//! a load, a map-reduce round, a pass) runs the same event loop, [`Cluster::drive`], until the scheduler says it is
//! done or failed. The loop always waits with a deadline the scheduler computes (heartbeat and join deadlines), so
//! nothing here waits forever.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::conn::{Conn, Counters, EventKind, Incoming};
use super::process::WorkerProcess;
use super::scheduler::{
    Action, Config, DatasetSpec, Event, FailureRecord, Origin, Outcome, PsPlan, PsWorkerFigures, Role, Scheduler,
    Source, WorkerId, WorkerReport,
};
use super::spawn::{Launched, Spawner};
use super::spec::WorkerSpec;
use super::ssh::SshHost;
use crate::data::{Dataset, Element};
use crate::job::{Contribution, MapReduce, Multipass};
use crate::tree::Tree;
use crate::wire::handshake::MasterHandshake;
use crate::wire::{ChunkMeta, DatasetId, ElemType, Message, Payload, WireError};
use crate::{Error, Result};

/// A handle to a dataset resident on the cluster's workers.
#[derive(Debug)]
pub struct DatasetHandle<T> {
    id: DatasetId,
    rows: usize,
    cols: usize,
    chunks: usize,
    _elem: PhantomData<fn() -> T>,
}

impl<T> Clone for DatasetHandle<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DatasetHandle<T> {}

impl<T> DatasetHandle<T> {
    /// Rows in the dataset.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Chunks the dataset is cut into.
    pub fn chunks(&self) -> usize {
        self.chunks
    }
    /// Content hash (hex).
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// Traffic and work counters of a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Live worker processes.
    pub workers: usize,
    /// Map-reduce rounds and passes completed.
    pub rounds: u64,
    /// Bytes written to workers, frame prefixes included.
    pub bytes_sent: u64,
    /// Bytes read from workers, heartbeats included.
    pub bytes_received: u64,
    /// Workers lost (and replaced or worked around) so far.
    pub failures: usize,
}

/// What `auto` worker selection decided after the first round.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoChoice {
    /// Workers the cluster started with (and measured the first round on).
    pub started: usize,
    /// Workers kept.
    pub chose: usize,
    /// Predicted round time for each candidate count, 1 ..= `started`.
    pub predicted: Vec<(usize, Duration)>,
    /// The measured first round.
    pub measured: super::scheduler::RoundProfile,
}

/// What a parameter-server run reported to the driver.
enum PsNote {
    Progress(super::scheduler::PsProgressNote),
    Fetched(Vec<f32>, Vec<Vec<u8>>),
    Finished,
}

/// How to run [`Cluster::train_ps`].
#[derive(Debug, Clone)]
pub struct PsOptions {
    /// When pulls are answered.
    pub consistency: crate::ps::Consistency,
    /// The servers' update rule (`sgd:LR`, `momentum:LR,MU`, `adagrad:LR`, `adam:LR`).
    pub rule: String,
    /// Mini-batch rows.
    pub batch: usize,
    /// Clocks (mini-batches) each worker runs.
    pub clocks: u64,
    /// Seed of the initial model and of the batch order.
    pub seed: u64,
    /// Servers holding each range (≥ 2 survives the loss of a server).
    pub replication: usize,
    /// Model block scheduling (dense models).
    pub blocks: Option<crate::ps::BlockConfig>,
    /// Each clock's compute takes a random factor in [1, 1 + jitter] longer (varying worker speed, for experiments).
    pub jitter: f32,
    /// Workers report progress every this many clocks (0: only at the end).
    pub progress_every: u64,
    /// Fetch the model this often during the run (for accuracy-over-time curves).
    pub eval_every: Option<Duration>,
    /// Stop the run when a worker's mean loss over a progress report is not finite or exceeds this many times the
    /// first reported mean loss (`None`: never). The model kept is the last one fetched before the divergence (see
    /// [`PsOutcome::diverged`]).
    pub divergence: Option<f64>,
}

/// The default of [`PsOptions::divergence`]: a mean loss ten times the first one reported stops the run.
pub const DEFAULT_DIVERGENCE: f64 = 10.0;

/// How often a parameter-server run fetches the model to keep the last good one, when divergence is watched and
/// no [`PsOptions::eval_every`] is given.
const GUARD_EVERY: Duration = Duration::from_secs(2);

impl Default for PsOptions {
    fn default() -> Self {
        PsOptions {
            consistency: crate::ps::Consistency::Bsp,
            rule: "sgd:0.1".into(),
            batch: 64,
            clocks: 100,
            seed: 42,
            replication: 1,
            blocks: None,
            jitter: 0.0,
            progress_every: 10,
            eval_every: None,
            divergence: Some(DEFAULT_DIVERGENCE),
        }
    }
}

/// Something that happened during [`Cluster::train_ps`].
#[derive(Debug)]
pub enum PsEvent<'a> {
    /// A worker's progress since its last report.
    Progress {
        /// The worker's index in the run.
        worker: u32,
        /// Clocks it completed.
        clock: u64,
        /// Σ loss of the rows it trained on since its last report.
        loss_sum: f64,
        /// Rows classified correctly.
        correct: u64,
        /// Rows.
        rows: u64,
        /// Time it waited for pulls since its last report.
        waited: Duration,
        /// Time since the run started.
        elapsed: Duration,
    },
    /// The model, fetched from the servers during the run.
    Snapshot {
        /// Time since the run started.
        elapsed: Duration,
        /// The parameters.
        params: &'a [f32],
    },
}

/// What a worker of a parameter-server run did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PsWorkerReport {
    /// The worker.
    pub worker: String,
    /// Clocks it completed.
    pub clocks: u64,
    /// Whether it was lost during the run.
    pub lost: bool,
    /// Bytes of values and keys it pushed.
    pub pushed_bytes: u64,
    /// Bytes of values and keys it pulled.
    pub pulled_bytes: u64,
    /// Pushes and pulls it sent.
    pub pushes: u64,
    /// Pulls it sent.
    pub pulls: u64,
    /// Time it spent in the run.
    pub busy: Duration,
    /// Time it waited for pulls (barrier wait).
    pub waited: Duration,
}

impl From<PsWorkerFigures> for PsWorkerReport {
    fn from(f: PsWorkerFigures) -> Self {
        PsWorkerReport {
            worker: f.label,
            clocks: f.clocks,
            lost: f.lost,
            pushed_bytes: f.pushed_bytes,
            pulled_bytes: f.pulled_bytes,
            pushes: f.pushes,
            pulls: f.pulls,
            busy: f.busy,
            waited: f.waited,
        }
    }
}

/// Why a parameter-server run was stopped early: its loss turned NaN or grew past the divergence bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The worker whose report showed it.
    pub worker: u32,
    /// The clock it had reached.
    pub clock: u64,
    /// Its mean loss over the report.
    pub loss: f64,
    /// The first mean loss reported in the run.
    pub first: f64,
    /// When the kept model was fetched, as time since the run started (`None`: the initial model).
    pub kept_from: Option<Duration>,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let num =
            |x: f64| if x != 0.0 && !(1e-4..1e6).contains(&x.abs()) { format!("{x:.4e}") } else { format!("{x:.4}") };
        let (worker, clock, loss) = (self.worker, self.clock, num(self.loss));
        write!(f, "the training diverged: worker {worker}'s mean loss at clock {clock} was {loss}")?;
        if self.loss.is_finite() {
            write!(f, " (the first reported was {})", num(self.first))?;
        }
        match self.kept_from {
            Some(t) => write!(f, "; the run stopped and kept the model fetched {:.1} s into it", t.as_secs_f64()),
            None => write!(f, "; the run stopped and kept the initial model (none fetched before)"),
        }?;
        write!(f, " — lower the learning rate, or bound the staleness (ssp:S instead of async)")
    }
}

/// The result of [`Cluster::train_ps`].
#[derive(Debug, Clone)]
pub struct PsOutcome {
    /// The trained parameters (after a divergence, the last good ones).
    pub params: Vec<f32>,
    /// Set when the run was stopped because its loss diverged; `params` is then the last model fetched before.
    pub diverged: Option<Divergence>,
    /// Each range's server metrics (staleness histogram, traffic, waits, updates), range order.
    pub metrics: Vec<crate::ps::Metrics>,
    /// Each worker's figures.
    pub workers: Vec<PsWorkerReport>,
    /// Wall time of the run.
    pub wall: Duration,
}

impl PsOutcome {
    /// The staleness histogram of every range's reads together: staleness → reads.
    pub fn staleness(&self) -> BTreeMap<u64, u64> {
        let mut all = BTreeMap::new();
        for m in &self.metrics {
            for (s, n) in &m.staleness {
                *all.entry(*s).or_insert(0) += n;
            }
        }
        all
    }

    /// Mean and largest staleness of the reads (0 without reads).
    pub fn staleness_summary(&self) -> (f64, u64) {
        let h = self.staleness();
        let n: u64 = h.values().sum();
        let mean = if n == 0 { 0.0 } else { h.iter().map(|(s, k)| *s as f64 * *k as f64).sum::<f64>() / n as f64 };
        (mean, h.keys().next_back().copied().unwrap_or(0))
    }

    /// Bytes of values and keys the workers pushed and pulled, in total.
    pub fn bytes(&self) -> (u64, u64) {
        self.workers.iter().fold((0, 0), |(p, q), w| (p + w.pushed_bytes, q + w.pulled_bytes))
    }

    /// Workers' updates applied per second of the run: the rule steps of every key range, divided by the number of
    /// ranges (a push that touches every range counts once).
    pub fn updates_per_sec(&self) -> f64 {
        let steps: u64 = self.metrics.iter().map(|m| m.steps).sum();
        let ranges = self.metrics.len().max(1) as f64;
        steps as f64 / ranges / self.wall.as_secs_f64().max(1e-9)
    }
}

/// A multipass session: identifies the replica-local states of the jobs run with it.
#[derive(Debug)]
pub struct Session {
    id: u64,
    seed: u64,
}

impl Session {
    /// The seed handed to replicas.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// What a restarted master needs to continue a multipass session exactly: the seed, the number of replicas, the
/// passes completed, and each replica's local state as [`Multipass::save_local`] encoded it after the last pass.
/// Serialisable, so it can be written into a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionSnapshot {
    /// Session seed.
    pub seed: u64,
    /// Number of replicas (0 until the first pass fixes it).
    pub replicas: u32,
    /// Passes completed.
    pub passes: u64,
    /// Each replica's saved local state (`None`: nothing saved, or no pass yet).
    pub locals: Vec<Option<Vec<u8>>>,
}

/// A dataset the master can send chunks of again (to a replacement, or when chunks move).
trait Shippable: Send + Sync {
    fn chunk(&self, id: DatasetId, chunk: u32) -> (ChunkMeta, Vec<u8>);
}

impl<T: Element> Shippable for Dataset<T> {
    fn chunk(&self, id: DatasetId, chunk: u32) -> (ChunkMeta, Vec<u8>) {
        let rows = self.chunk_rows(chunk as usize);
        let meta = ChunkMeta {
            dataset: id,
            elem: T::TYPE,
            cols: self.cols() as u32,
            total_chunks: self.chunks() as u32,
            chunk,
            first_row: rows.start as u64,
            rows: rows.len() as u32,
            has_labels: self.labels().is_some(),
        };
        let mut payload = Vec::with_capacity(rows.len() * (self.cols() + 1) * T::TYPE.size());
        T::extend_le(&self.values()[rows.start * self.cols()..rows.end * self.cols()], &mut payload);
        if let Some(labels) = self.labels() {
            T::extend_le(&labels[rows], &mut payload);
        }
        (meta, payload)
    }
}

/// The master's end of one worker.
struct Slot {
    label: String,
    conn: Conn,
    process: Option<WorkerProcess>,
    /// Until the worker is admitted.
    handshake: Option<MasterHandshake>,
    /// For ssh workers on a TCP data channel: the session's stdin, held open so the worker lives.
    _keepalive: Option<std::process::ChildStdin>,
    /// A spare host's connection, opened for this worker; declared last so it closes after the session.
    _host: Option<SshHost>,
    /// Position in start order (for `straggler`).
    index: usize,
}

/// Settings the driver applies itself.
pub(super) struct DriverConfig {
    pub heartbeat_interval: Duration,
    /// `(start index, slowdown)` of workers to slow down.
    pub stragglers: Vec<(usize, f32)>,
    /// Spare slots for replacing lost remote workers.
    pub spares: VecDeque<WorkerSpec>,
    /// Choose the number of workers after the first round.
    pub auto: bool,
}

/// A running set of workers.
pub struct Cluster {
    slots: BTreeMap<WorkerId, Slot>,
    /// Open ssh connections; declared after `slots` so worker sessions close before their connection.
    hosts: Vec<SshHost>,
    /// Launcher processes that started several workers at once (`srun`), stopped after the workers.
    launchers: Vec<super::launch::LauncherProcess>,
    spawner: Spawner,
    cfg: DriverConfig,
    sched: Scheduler,
    events: Receiver<Incoming>,
    events_tx: Sender<Incoming>,
    counters: Arc<Counters>,
    epoch: Instant,
    next_id: WorkerId,
    started: usize,
    shipped: HashMap<DatasetId, Arc<dyn Shippable>>,
    /// Processes of retired workers, asked to exit.
    retired: Vec<WorkerProcess>,
    auto_choice: Option<AutoChoice>,
    /// When liveness was last fed to the scheduler.
    last_tick: Duration,
    /// Failures already written to the log.
    losses_reported: usize,
    /// What a parameter-server run reported, for `train_ps` to take.
    ps_inbox: VecDeque<PsNote>,
    ps_runs: u64,
    max_failures: usize,
}

impl Cluster {
    /// A cluster with no workers yet (the builder adds them).
    pub(super) fn new(spawner: Spawner, cfg: DriverConfig, sched: Config) -> Cluster {
        let (events_tx, events) = crossbeam_channel::unbounded();
        let max_failures = sched.max_failures;
        Cluster {
            slots: BTreeMap::new(),
            hosts: Vec::new(),
            launchers: Vec::new(),
            spawner,
            cfg,
            sched: Scheduler::new(sched),
            events,
            events_tx,
            counters: Arc::new(Counters::default()),
            epoch: Instant::now(),
            next_id: 0,
            started: 0,
            shipped: HashMap::new(),
            retired: Vec::new(),
            auto_choice: None,
            last_tick: Duration::ZERO,
            losses_reported: 0,
            ps_inbox: VecDeque::new(),
            ps_runs: 0,
            max_failures,
        }
    }

    /// Keeps an ssh connection open for the cluster's lifetime.
    pub(super) fn add_host(&mut self, host: SshHost) {
        self.hosts.push(host);
    }

    /// Keeps a launcher process (`srun`) for the cluster's lifetime: it explains lost workers and is stopped last.
    pub(super) fn add_launcher(&mut self, launcher: super::launch::LauncherProcess) {
        self.launchers.push(launcher);
    }

    /// The id the next worker will get.
    pub(super) fn next_worker_id(&self) -> WorkerId {
        self.next_id
    }

    /// Adds a worker whose connection is open and whose handshake has passed — a rank started by a launcher,
    /// admitted by `launch::rank`. It has no process of ours; it joins the scheduler at once.
    pub(super) fn add_connected(
        &mut self,
        place: String,
        reader: Box<dyn std::io::Read + Send>,
        writer: Box<dyn std::io::Write + Send>,
        hello: crate::wire::handshake::WorkerHello,
    ) -> Result<WorkerId> {
        let id = self.next_id;
        self.next_id += 1;
        let label = format!("worker {id} ({place})");
        let conn = Conn::start(id, reader, writer, self.events_tx.clone(), Arc::clone(&self.counters), self.epoch)
            .map_err(|e| Error::Launch { worker: label.clone(), reason: format!("cannot start I/O threads: {e}") })?;
        let index = self.started;
        self.started += 1;
        self.slots.insert(
            id,
            Slot { label: label.clone(), conn, process: None, handshake: None, _keepalive: None, _host: None, index },
        );
        let now = self.now();
        self.sched.step(
            now,
            Event::Started { worker: id, origin: Origin::Remote, label: label.clone(), role: Role::Compute },
        );
        self.sched.step(now, Event::Joined { worker: id, label, jobs: hello.jobs });
        Ok(id)
    }

    /// A builder; at least [`workers`](super::ClusterBuilder::workers) must be set.
    pub fn builder() -> super::ClusterBuilder {
        super::ClusterBuilder::default()
    }

    /// Number of live workers.
    pub fn num_workers(&self) -> usize {
        self.sched.live().len()
    }

    /// Human-readable names of the live workers, e.g. `worker 0 (local pid 4242)`, in the order they started.
    pub fn worker_labels(&self) -> Vec<String> {
        self.sched.live().into_iter().map(|w| self.sched.label(w).to_string()).collect()
    }

    /// Names of the live parameter-server processes, e.g. `server 3 (local pid 4242)`.
    pub fn server_labels(&self) -> Vec<String> {
        self.sched.live_servers().into_iter().map(|w| self.sched.label(w).to_string()).collect()
    }

    /// Traffic counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            workers: self.num_workers(),
            rounds: self.sched.rounds(),
            bytes_sent: self.counters.sent.load(Ordering::Relaxed),
            bytes_received: self.counters.received.load(Ordering::Relaxed),
            failures: self.sched.failures().len(),
        }
    }

    /// Every worker lost so far, with when it was detected and when the work was whole again.
    pub fn failures(&self) -> Vec<FailureRecord> {
        self.sched.failures().to_vec()
    }

    /// What each worker (lost ones included) holds and did: chunks, chunks computed, busy time.
    pub fn worker_reports(&self) -> Vec<WorkerReport> {
        self.sched.reports()
    }

    /// What automatic worker selection ([`ClusterBuilder::auto_workers`](super::ClusterBuilder::auto_workers))
    /// decided, once the first round has run.
    pub fn auto_choice(&self) -> Option<&AutoChoice> {
        self.auto_choice.as_ref()
    }

    /// After the first round: predicts the round time for every worker count up to the current one from what the
    /// round cost, keeps the fastest count (the lowest on ties within 2 %) and retires the other workers.
    fn choose_workers(&mut self) {
        let Some(profile) = self.sched.last_round().cloned() else { return };
        self.cfg.auto = false;
        let live = self.sched.live();
        let predicted: Vec<(usize, Duration)> = (1..=live.len()).map(|n| (n, profile.predict(n))).collect();
        let best = predicted.iter().map(|(_, t)| *t).min().unwrap_or_default();
        let chose = predicted
            .iter()
            .find(|(_, t)| t.as_secs_f64() <= best.as_secs_f64() * 1.02)
            .map_or(live.len(), |(n, _)| *n);
        for &w in &live[chose..] {
            self.sched.retire(w);
        }
        let _ = self.act();
        tracing::info!(started = live.len(), chose, "automatic worker count");
        self.auto_choice = Some(AutoChoice { started: live.len(), chose, predicted, measured: profile });
    }

    /// The instant the cluster's clock counts from ([`FailureRecord`] times are relative to it).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    // ----- workers -------------------------------------------------------------------------------------------------

    /// Adds a started worker: opens its connection threads, sends `Hello`, tells the scheduler.
    pub(super) fn add(&mut self, launched: Launched) -> Result<WorkerId> {
        self.add_as(launched, Role::Compute)
    }

    /// Adds a started process in `role` (a compute worker or a parameter server).
    pub(super) fn add_as(&mut self, launched: Launched, role: Role) -> Result<WorkerId> {
        let id = self.next_id;
        self.next_id += 1;
        let kind = if role == Role::Server { "server" } else { "worker" };
        let label = format!("{kind} {id} ({})", launched.place);
        let conn = Conn::start(
            id,
            launched.reader,
            launched.writer,
            self.events_tx.clone(),
            Arc::clone(&self.counters),
            self.epoch,
        )
        .map_err(|e| Error::Launch { worker: label.clone(), reason: format!("cannot start I/O threads: {e}") })?;
        let hs = MasterHandshake::new(self.spawner.secret.clone(), launched.expected);
        conn.send(&hs.hello(), Arc::new(Vec::new()))?;
        // Stragglers are numbered among the compute workers, in start order; servers are never slowed down.
        let index = if role == Role::Server { usize::MAX } else { self.started };
        self.started += usize::from(role != Role::Server);
        self.slots.insert(
            id,
            Slot {
                label: label.clone(),
                conn,
                process: Some(launched.process),
                handshake: Some(hs),
                _keepalive: launched.keepalive,
                _host: launched.host,
                index,
            },
        );
        self.sched.step(self.now(), Event::Started { worker: id, origin: launched.origin, label, role });
        Ok(id)
    }

    /// Starts a replacement worker (the scheduler asked for one).
    fn spawn(&mut self, origin: Origin) {
        let spawner = self.spawner.clone();
        match origin {
            Origin::Local => {
                let result = spawner.local();
                self.launched(result.map(Box::new));
            }
            Origin::Remote => {
                let Some(spec) = self.cfg.spares.pop_front() else {
                    self.sched.step(self.now(), Event::SpawnFailed { reason: "no spare worker left".into() });
                    return;
                };
                if matches!(spec, WorkerSpec::Local { .. }) {
                    let result = spawner.local();
                    self.launched(result.map(Box::new));
                    return;
                }
                // Connecting and installing on a new host takes seconds: do it aside, the loop goes on.
                let tx = self.events_tx.clone();
                let spawned = std::thread::Builder::new().name("cohort-spare".into()).spawn(move || {
                    let _ = tx.send(Incoming::Launched(spawner.spare(&spec).map(Box::new)));
                });
                if let Err(e) = spawned {
                    let reason = format!("cannot start a thread: {e}");
                    self.sched.step(self.now(), Event::SpawnFailed { reason });
                }
            }
        }
    }

    fn launched(&mut self, result: std::result::Result<Box<Launched>, String>) {
        match result {
            Ok(l) => {
                if let Err(e) = self.add(*l) {
                    self.sched.step(self.now(), Event::SpawnFailed { reason: e.to_string() });
                }
            }
            Err(reason) => self.sched.step(self.now(), Event::SpawnFailed { reason }),
        }
    }

    /// Completes every started worker's handshake.
    pub(super) fn start(&mut self) -> Result<()> {
        self.sched.start(self.now());
        match self.drive()? {
            Outcome::Started => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    // ----- the event loop ------------------------------------------------------------------------------------------

    /// Carries out the scheduler's actions and feeds it events until the operation in flight ends.
    fn drive(&mut self) -> Result<Outcome> {
        loop {
            if let Some(outcome) = self.drive_until(None, |_| false)? {
                return Ok(outcome);
            }
        }
    }

    /// The event loop: carries out actions and feeds events until the operation ends (`Some`) or `ready` holds
    /// (`None`); also wakes at `wake`.
    fn drive_until(&mut self, wake: Option<Instant>, mut ready: impl FnMut(&Self) -> bool) -> Result<Option<Outcome>> {
        loop {
            if let Some(result) = self.act() {
                return result.map(Some);
            }
            if ready(self) {
                return Ok(None);
            }
            let now = self.now();
            let mut wait = self
                .sched
                .next_deadline()
                .map_or(Duration::from_millis(500), |d| d.saturating_sub(now))
                .min(Duration::from_millis(500));
            if let Some(w) = wake {
                wait = wait.min(w.saturating_duration_since(Instant::now()));
            }
            match self.events.recv_timeout(wait) {
                Ok(incoming) => {
                    self.feed(incoming);
                    while let Ok(incoming) = self.events.try_recv() {
                        self.feed(incoming);
                    }
                    // Liveness matters only at deadlines: between them, feed it now and then, not per frame.
                    if self.epoch.elapsed().saturating_sub(self.last_tick) >= Duration::from_millis(50) {
                        self.tick();
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.tick(),
                Err(RecvTimeoutError::Disconnected) => unreachable!("the cluster holds a sender"),
            }
        }
    }

    /// Feeds everything that has arrived, then the workers' liveness and the time.
    fn pump(&mut self) {
        while let Ok(incoming) = self.events.try_recv() {
            self.feed(incoming);
        }
        self.tick();
    }

    fn tick(&mut self) {
        let now = self.now();
        self.last_tick = now;
        for (&id, slot) in &self.slots {
            if slot.handshake.is_none() {
                let at = slot.conn.last_seen().saturating_duration_since(self.epoch);
                self.sched.step(now, Event::Seen { worker: id, at });
            }
        }
        self.sched.step(now, Event::Tick);
    }

    /// Carries out queued actions (and those they cause) in order; returns the operation's result once it is done
    /// or failed.
    fn act(&mut self) -> Option<Result<Outcome>> {
        let mut result = None;
        loop {
            self.report_losses();
            let actions: Vec<Action> = self.sched.actions().collect();
            if actions.is_empty() {
                return result;
            }
            for action in actions {
                match action {
                    Action::Send { worker, message, payload } => self.send(worker, &message, payload),
                    Action::Ship { worker, dataset, chunks, req } => self.ship(worker, dataset, &chunks, req),
                    Action::Kill { worker } => self.kill(worker),
                    Action::Retire { worker } => self.retire(worker),
                    Action::Spawn { origin } => self.spawn(origin),
                    Action::PsProgress(p) => self.ps_inbox.push_back(PsNote::Progress(p)),
                    Action::PsFetched { params, metrics } => self.ps_inbox.push_back(PsNote::Fetched(params, metrics)),
                    Action::PsFinished => self.ps_inbox.push_back(PsNote::Finished),
                    Action::Done(outcome) => {
                        result.get_or_insert(Ok(outcome));
                    }
                    Action::Fail(error) => {
                        result.get_or_insert(Err(error));
                    }
                }
            }
        }
    }

    fn feed(&mut self, incoming: Incoming) {
        let (worker, kind, at) = match incoming {
            Incoming::Launched(result) => return self.launched(result),
            Incoming::Conn { worker, kind, at } => (worker, kind, at),
        };
        let at = at.saturating_duration_since(self.epoch);
        let Some(slot) = self.slots.get_mut(&worker) else { return }; // killed: its last words are moot
        match kind {
            EventKind::Frame(frame) => {
                if let Some(hs) = slot.handshake.take() {
                    let hb_ms = self.cfg.heartbeat_interval.as_millis().clamp(1, u32::MAX as u128) as u32;
                    match hs.on_reply(frame.message, worker as u32, hb_ms) {
                        Ok((welcome, hello)) => {
                            let _ = slot.conn.send(&welcome, Arc::new(Vec::new()));
                            if !slot.label.contains("local pid") {
                                slot.label = format!("{}, pid {})", slot.label.trim_end_matches(')'), hello.pid);
                            }
                            if let Some((_, slowdown)) = self.cfg.stragglers.iter().find(|(i, _)| *i == slot.index) {
                                let _ = slot.conn.send(&Message::Configure { slowdown: *slowdown }, Arc::new(vec![]));
                            }
                            let label = slot.label.clone();
                            self.sched.step(at, Event::Joined { worker, label, jobs: hello.jobs });
                        }
                        Err((source, reject)) => {
                            if let Some(reject) = reject {
                                let _ = slot.conn.send(&reject, Arc::new(Vec::new()));
                            }
                            let error = Error::Handshake { worker: slot.label.clone(), source };
                            self.sched.step(at, Event::Rejected { worker, error });
                        }
                    }
                    return;
                }
                if !matches!(frame.message, Message::Heartbeat) {
                    self.sched.step(at, Event::Frame { worker, message: frame.message, payload: frame.payload });
                }
            }
            EventKind::Closed(err) => {
                let error = self.died(worker, err);
                self.sched.step(at, Event::Closed { worker, error });
            }
        }
    }

    fn send(&mut self, worker: WorkerId, message: &Message, payload: Arc<Vec<u8>>) {
        if let Some(slot) = self.slots.get(&worker) {
            if let Err(e) = slot.conn.send(message, payload) {
                // Only a header that cannot be encoded fails here: a bug, reported as that worker's loss.
                let error =
                    Error::Protocol { worker: slot.label.clone(), detail: format!("cannot encode a frame: {e}") };
                self.sched.step(self.now(), Event::Closed { worker, error });
            }
        }
    }

    fn ship(&mut self, worker: WorkerId, dataset: DatasetId, chunks: &[std::ops::Range<u32>], req: u64) {
        let Some(data) = self.shipped.get(&dataset).cloned() else { return };
        for c in chunks.iter().cloned().flatten() {
            let (meta, payload) = data.chunk(dataset, c);
            self.send(worker, &Message::LoadChunk(meta), Arc::new(payload));
        }
        self.send(worker, &Message::LoadDone { req, dataset }, Arc::new(Vec::new()));
    }

    /// Removes a worker for good: its connection closes and its process is killed.
    fn kill(&mut self, worker: WorkerId) {
        if let Some(mut slot) = self.slots.remove(&worker) {
            slot.conn.close();
            slot._keepalive = None;
            drop(slot.process.take()); // kills it if it still runs
        }
    }

    /// Says on the log (stderr for the command line) which workers were lost since the last call, and that the
    /// job goes on without them.
    fn report_losses(&mut self) {
        let failures = self.sched.failures();
        for f in &failures[self.losses_reported.min(failures.len())..] {
            tracing::warn!(
                "lost {} ({}): {}; recovering (loss {} of at most {})",
                f.worker,
                f.during,
                f.cause,
                failures.len(),
                self.max_failures
            );
        }
        self.losses_reported = failures.len();
    }

    /// Asks a retired worker to exit; its process is reaped when the cluster stops.
    fn retire(&mut self, worker: WorkerId) {
        if let Some(mut slot) = self.slots.remove(&worker) {
            let _ = slot.conn.send(&Message::Shutdown, Arc::new(Vec::new()));
            slot.conn.close();
            self.retired.extend(slot.process.take());
        }
    }

    /// The error for a worker whose connection ended: exit status and stderr tail.
    fn died(&mut self, worker: WorkerId, err: Option<WireError>) -> Error {
        let Some(slot) = self.slots.get_mut(&worker) else {
            return Error::WorkerDied {
                worker: format!("worker {worker}"),
                status: "gone".into(),
                stderr_tail: vec![],
            };
        };
        let (mut status, stderr_tail) = match &mut slot.process {
            Some(p) => (p.describe_exit(Duration::from_millis(300)), p.stderr_tail(Duration::from_millis(200))),
            None => super::launch::lost_connection(&mut self.launchers),
        };
        match err {
            None | Some(WireError::Truncated) => {}
            Some(WireError::Io(e)) => status = format!("{status} (connection error: {e})"),
            Some(e) => {
                status = format!(
                    "{status}; it wrote bytes that are not cohort frames ({e}) — does the worker program call \
                     cohort::worker::run_if_worker at the start of main, before printing anything?"
                )
            }
        }
        Error::WorkerDied { worker: slot.label.clone(), status, stderr_tail }
    }

    // ----- data ----------------------------------------------------------------------------------------------------

    /// Sends a dataset's chunks to the workers (contiguous chunk ranges, as even as possible) and waits until they
    /// are resident. Loading the same dataset again is free: it is identified by content hash. The cluster keeps a
    /// reference to the data (a cheap clone) to send chunks again if a worker is lost, until
    /// [`unload`](Self::unload).
    pub fn load<T: Element>(&mut self, dataset: &Dataset<T>) -> Result<DatasetHandle<T>> {
        let id = dataset.id();
        let handle = DatasetHandle {
            id,
            rows: dataset.rows(),
            cols: dataset.cols(),
            chunks: dataset.chunks(),
            _elem: PhantomData,
        };
        if self.sched.has_dataset(&id) {
            return Ok(handle);
        }
        self.shipped.insert(id, Arc::new(dataset.clone()));
        let spec = DatasetSpec {
            id,
            elem: T::TYPE,
            rows: dataset.rows() as u64,
            chunks: dataset.chunks() as u32,
            source: Source::Shipped,
        };
        self.load_spec(spec)?;
        Ok(handle)
    }

    fn load_spec(&mut self, spec: DatasetSpec) -> Result<()> {
        let id = spec.id;
        self.pump();
        self.sched.load(self.now(), spec);
        match self.drive() {
            Ok(Outcome::Loaded) => Ok(()),
            Ok(other) => Err(unexpected(other)),
            Err(e) => {
                self.sched.unload(&id);
                self.shipped.remove(&id);
                let _ = self.act();
                Err(e)
            }
        }
    }

    /// Has every worker load its chunks of a dataset stored in files it can read at the same path (a shared
    /// filesystem): the master reads no data, only one worker reads the headers. `chunks` defaults to
    /// [`default_chunk_count`](crate::data::default_chunk_count) of the row count, as for an in-memory dataset, so
    /// results match [`load`](Self::load) of the same data bit for bit. A lost worker's chunks are read again by
    /// their new owner.
    pub fn load_files<T: Element>(
        &mut self,
        source: &crate::data::loaders::FileSource,
        chunks: Option<usize>,
    ) -> Result<DatasetHandle<T>> {
        self.pump();
        self.sched.describe(self.now(), source.clone());
        let (rows, cols, fingerprint) = match self.drive()? {
            Outcome::Described { rows, cols, fingerprint } => (rows as usize, cols as usize, fingerprint),
            other => return Err(unexpected(other)),
        };
        if rows == 0 || cols == 0 {
            return Err(crate::data::DataError::Empty { rows, cols }.into());
        }
        let chunks = chunks.unwrap_or_else(|| crate::data::default_chunk_count(rows));
        if chunks == 0 || chunks > rows || chunks > crate::data::MAX_CHUNKS {
            return Err(crate::data::DataError::Chunks { chunks, rows, max: crate::data::MAX_CHUNKS }.into());
        }
        let id: DatasetId = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(b"cohort-file-source-v1");
            h.update(fingerprint);
            h.update([T::TYPE as u8]);
            h.update((chunks as u64).to_le_bytes());
            h.finalize().into()
        };
        let handle = DatasetHandle { id, rows, cols, chunks, _elem: PhantomData };
        if !self.sched.has_dataset(&id) {
            let source = Source::Files { source: source.clone(), fingerprint };
            self.load_spec(DatasetSpec { id, elem: T::TYPE, rows: rows as u64, chunks: chunks as u32, source })?;
        }
        Ok(handle)
    }

    /// Frees a dataset on every worker (and the master's copy).
    pub fn unload<T>(&mut self, handle: DatasetHandle<T>) -> Result<()> {
        self.sched.unload(&handle.id);
        self.shipped.remove(&handle.id);
        self.act();
        Ok(())
    }

    fn check_elem(&self, job: &str, elem: ElemType, data: &DatasetId) -> Result<()> {
        match self.sched.dataset_elem(data) {
            None => Err(Error::UnknownDataset(hex::encode(&data[..8]))),
            Some(got) if got != elem => Err(Error::ElemMismatch { job: job.into(), expected: elem, got }),
            Some(_) => Ok(()),
        }
    }

    // ----- rounds --------------------------------------------------------------------------------------------------

    /// Runs one synchronous map-reduce round: every worker maps its resident chunks with `params`, and the partial
    /// results are combined in the fixed chunk tree. Bit-identical for any number of workers, and after workers are
    /// lost: their chunks are recomputed elsewhere from the same parameters.
    pub fn run<J: MapReduce>(
        &mut self,
        job: &J,
        params: &J::Params,
        data: &DatasetHandle<J::Elem>,
    ) -> Result<J::Output> {
        self.check_elem(J::NAME, J::Elem::TYPE, &data.id)?;
        self.pump();
        self.sched.map(self.now(), J::NAME, data.id, Arc::new(params.to_bytes()));
        let parts = match self.drive()? {
            Outcome::Mapped { parts } => parts,
            other => return Err(unexpected(other)),
        };
        let mut decoded = BTreeMap::new();
        for (node, (worker, bytes)) in parts {
            let value = J::Output::from_bytes(&bytes).map_err(|e| Error::Protocol {
                worker: self.sched.label(worker).to_string(),
                detail: format!("cannot decode the result of `{}`: {e}", J::NAME),
            })?;
            decoded.insert(node, value);
        }
        let tree = Tree::new(data.chunks as u32);
        let result = tree.finish(&mut decoded, &mut |a, b| job.reduce(a, b)).map_err(|chunk| Error::Protocol {
            worker: "all workers".into(),
            detail: format!("no partial result covers chunk {chunk}"),
        })?;
        if self.cfg.auto {
            self.choose_workers();
        }
        Ok(result)
    }

    /// Opens a multipass session: replica-local states of the jobs run with it live until
    /// [`close_session`](Self::close_session). `seed` reaches every replica's
    /// [`ReplicaContext`](crate::job::ReplicaContext). The session runs the cluster's number of replicas
    /// ([`ClusterBuilder::replicas`](super::ClusterBuilder::replicas); by default one per worker it started with),
    /// at most one per chunk.
    pub fn open_session(&mut self, seed: u64) -> Session {
        Session { id: self.sched.open_session(seed, None), seed }
    }

    /// Like [`open_session`](Self::open_session) with an explicit number of replicas.
    pub fn open_session_with_replicas(&mut self, seed: u64, replicas: usize) -> Session {
        Session { id: self.sched.open_session(seed, Some(replicas.max(1) as u32)), seed }
    }

    /// Everything needed to continue `session` on another cluster (or after a restart of the master): see
    /// [`resume_session`](Self::resume_session).
    pub fn session_snapshot(&self, session: &Session) -> SessionSnapshot {
        match self.sched.session(session.id) {
            Some(s) => SessionSnapshot {
                seed: s.seed,
                replicas: s.replicas.unwrap_or(0),
                passes: s.passes,
                locals: s.locals.to_vec(),
            },
            None => SessionSnapshot { seed: session.seed, replicas: 0, passes: 0, locals: Vec::new() },
        }
    }

    /// Opens a session that continues from `snapshot`: every replica's local state is restored (with
    /// [`Multipass::restore_local`]) before its next pass, so the passes that follow are bit-identical to those of
    /// the session the snapshot was taken from — whatever the number of worker processes.
    pub fn resume_session(&mut self, snapshot: SessionSnapshot) -> Result<Session> {
        if snapshot.replicas as usize != snapshot.locals.len() {
            return Err(Error::Protocol {
                worker: "session snapshot".into(),
                detail: format!(
                    "{} replicas but {} saved local states; the snapshot is damaged",
                    snapshot.replicas,
                    snapshot.locals.len()
                ),
            });
        }
        let id = if snapshot.replicas == 0 {
            self.sched.open_session(snapshot.seed, None)
        } else {
            self.sched.resume_session(snapshot.seed, snapshot.replicas, snapshot.passes, snapshot.locals)
        };
        Ok(Session { id, seed: snapshot.seed })
    }

    /// Frees a session's replica-local states.
    pub fn close_session(&mut self, session: Session) -> Result<()> {
        self.sched.close_session(session.id);
        self.act();
        Ok(())
    }

    /// Runs one pass of a multipass job: broadcasts `state`, lets every replica run `pass` over its resident chunks
    /// with its local state of `session`, and aggregates the partial results in replica order. A replica whose
    /// worker is lost moves to another worker with its saved local state and runs the pass again.
    pub fn pass<J: Multipass>(
        &mut self,
        job: &J,
        session: &Session,
        state: &J::State,
        data: &DatasetHandle<J::Elem>,
    ) -> Result<J::State> {
        self.check_elem(J::NAME, J::Elem::TYPE, &data.id)?;
        self.pump();
        self.sched.pass(self.now(), session.id, J::NAME, data.id, Arc::new(state.to_bytes()));
        let partials = match self.drive()? {
            Outcome::Passed { partials } => partials,
            other => return Err(unexpected(other)),
        };
        let mut contributions = Vec::with_capacity(partials.len());
        for (rows, worker, bytes) in partials {
            let partial = J::Partial::from_bytes(&bytes).map_err(|e| Error::Protocol {
                worker: self.sched.label(worker).to_string(),
                detail: format!("cannot decode the partial of `{}`: {e}", J::NAME),
            })?;
            contributions.push(Contribution { rows, partial });
        }
        Ok(job.aggregate(state, contributions))
    }

    // ----- parameter-server runs -----------------------------------------------------------------------------------

    /// Trains `job` through the cluster's parameter servers ([`ClusterBuilder::servers`](super::ClusterBuilder::servers)):
    /// each compute worker holding `data` runs `options.clocks` mini-batches of its own rows — pull, gradient, push
    /// — while the servers apply `options.rule` under `options.consistency`. `on` hears each worker's progress and,
    /// every `options.eval_every`, a snapshot of the model. Returns the trained parameters, each range's server
    /// metrics and each worker's figures. A lost worker is dropped (the others go on); a lost server's ranges go on
    /// at their next replica (`options.replication` ≥ 2).
    pub fn train_ps<J: crate::ps::PsJob>(
        &mut self,
        job: &J,
        config: &J::Config,
        data: &DatasetHandle<J::Elem>,
        options: &PsOptions,
        mut on: impl FnMut(PsEvent<'_>),
    ) -> Result<PsOutcome> {
        self.check_elem(J::NAME, J::Elem::TYPE, &data.id)?;
        let init = job.init(config, options.seed);
        if init.len() as u64 != job.num_params(config) {
            return Err(Error::Protocol {
                worker: "master".into(),
                detail: format!(
                    "`{}` initialised {} parameters but has {}",
                    J::NAME,
                    init.len(),
                    job.num_params(config)
                ),
            });
        }
        self.pump();
        self.ps_runs += 1;
        let run = self.ps_runs;
        let plan = PsPlan {
            job: J::NAME.to_string(),
            dataset: data.id,
            config: Arc::new(config.to_bytes()),
            init,
            consistency: options.consistency.to_string(),
            rule: options.rule.clone(),
            replication: options.replication,
            batch: options.batch.max(1) as u32,
            clocks: options.clocks,
            seed: options.seed,
            blocks: options.blocks.map(|b| (b.block, b.threshold, b.max_period)),
            jitter: options.jitter,
            progress_every: options.progress_every,
        };
        self.ps_inbox.clear();
        let started = Instant::now();
        let init = plan.init.clone();
        self.sched.ps_start(self.now(), run, plan);
        // Snapshots: the user's (`eval_every`), else quiet ones that keep the last good model while divergence is
        // watched.
        let every = options.eval_every.or(options.divergence.map(|_| GUARD_EVERY));
        let mut next_eval = every.map(|e| started + e);
        let (mut finished, mut fetching, mut final_fetch) = (false, false, false);
        let mut guard = Guard::new(options.divergence);
        let result = loop {
            let r = self
                .drive_until(next_eval, |c| !c.ps_inbox.is_empty() || next_eval.is_some_and(|t| Instant::now() >= t));
            match r {
                Err(e) => break Err(e),
                Ok(Some(other)) => break Err(unexpected(other)),
                Ok(None) => {}
            }
            let mut done = None;
            while let Some(note) = self.ps_inbox.pop_front() {
                match note {
                    PsNote::Progress(p) => {
                        guard.progress(&p, started.elapsed());
                        on(PsEvent::Progress {
                            worker: p.worker,
                            clock: p.clock,
                            loss_sum: p.loss_sum,
                            correct: p.correct,
                            rows: p.rows,
                            waited: p.waited,
                            elapsed: started.elapsed(),
                        })
                    }
                    PsNote::Fetched(params, metrics) => {
                        fetching = false;
                        if final_fetch {
                            done = Some((params, metrics));
                        } else {
                            if options.eval_every.is_some() {
                                on(PsEvent::Snapshot { elapsed: started.elapsed(), params: &params });
                            }
                            guard.snapshot(params, started.elapsed());
                        }
                    }
                    PsNote::Finished => finished = true,
                }
            }
            if let Some(d) = done {
                break Ok(d);
            }
            if guard.diverged.is_some() {
                break Ok((Vec::new(), Vec::new()));
            }
            if finished {
                next_eval = None; // no more snapshots: waiting for one past its time would spin
            }
            if finished && !fetching && !final_fetch {
                final_fetch = true;
                fetching = true;
                self.sched.ps_fetch(self.now());
            }
            if let Some(t) = next_eval {
                if Instant::now() >= t && !finished {
                    if !fetching {
                        fetching = true;
                        self.sched.ps_fetch(self.now());
                    }
                    next_eval = every.map(|e| Instant::now() + e);
                }
            }
        };
        let figures = self.sched.ps_end();
        let _ = self.act();
        let (mut params, metrics) = result?;
        let metrics = metrics.iter().filter_map(|m| postcard::from_bytes(m).ok()).collect();
        let diverged = guard.diverged.take().map(|mut d| {
            let kept = guard.kept();
            d.kept_from = kept.as_ref().map(|(_, t)| *t);
            params = kept.map_or(init, |(p, _)| p);
            d
        });
        Ok(PsOutcome {
            params,
            diverged,
            metrics,
            workers: figures.into_iter().map(Into::into).collect(),
            wall: started.elapsed(),
        })
    }

    // ----- shutting down -------------------------------------------------------------------------------------------

    /// Stops every worker cleanly (waiting up to two seconds) and kills any that do not exit.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for slot in self.slots.values_mut() {
            let _ = slot.conn.send(&Message::Shutdown, Arc::new(Vec::new()));
            slot.conn.close();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        // Launcher ranks are not our children: wait, within the same deadline, until each has read `Shutdown` and
        // closed its connection, so that none is left behind by a master that exits right after.
        let mut open: std::collections::BTreeSet<WorkerId> =
            self.slots.iter().filter(|(_, s)| s.process.is_none()).map(|(&id, _)| id).collect();
        while !open.is_empty() {
            match self.events.recv_deadline(deadline) {
                Ok(Incoming::Conn { worker, kind: EventKind::Closed(_), .. }) => {
                    open.remove(&worker);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for slot in self.slots.values_mut() {
            slot._keepalive = None;
            if let Some(mut p) = slot.process.take() {
                p.finish(deadline);
            }
        }
        for p in &mut self.retired {
            p.finish(deadline);
        }
        for l in &mut self.launchers {
            l.finish(deadline);
        }
        self.launchers.clear();
        self.retired.clear();
        self.slots.clear();
        self.hosts.clear();
    }
}

fn unexpected(outcome: Outcome) -> Error {
    Error::Protocol { worker: "cluster".into(), detail: format!("unexpected outcome {outcome:?}") }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Watches a parameter-server run's losses for divergence and keeps the models fetched along the way.
struct Guard {
    factor: Option<f64>,
    first: Option<f64>,
    /// When the last report with a sound loss arrived.
    last_sound: Duration,
    /// The last few models fetched whose values are all finite, oldest first, with when they were fetched.
    snapshots: VecDeque<(Vec<f32>, Duration)>,
    diverged: Option<Divergence>,
}

impl Guard {
    fn new(factor: Option<f64>) -> Guard {
        Guard { factor, first: None, last_sound: Duration::ZERO, snapshots: VecDeque::new(), diverged: None }
    }

    fn progress(&mut self, p: &super::scheduler::PsProgressNote, at: Duration) {
        let Some(factor) = self.factor else { return };
        if p.rows == 0 || self.diverged.is_some() {
            return;
        }
        let loss = p.loss_sum / p.rows as f64;
        let first = *self.first.get_or_insert(loss);
        if !loss.is_finite() || (first.is_finite() && loss > factor * first.abs().max(f64::MIN_POSITIVE)) {
            self.diverged = Some(Divergence { worker: p.worker, clock: p.clock, loss, first, kept_from: None });
        } else {
            self.last_sound = at;
        }
    }

    fn snapshot(&mut self, params: Vec<f32>, at: Duration) {
        if self.factor.is_some() && params.iter().all(|v| v.is_finite()) {
            self.snapshots.push_back((params, at));
            if self.snapshots.len() > 3 {
                self.snapshots.pop_front();
            }
        }
    }

    /// The newest model fetched before the last sound report (a later one may already carry the divergence).
    fn kept(&mut self) -> Option<(Vec<f32>, Duration)> {
        let last_sound = self.last_sound;
        while let Some((_, t)) = self.snapshots.back() {
            if *t <= last_sound {
                break;
            }
            self.snapshots.pop_back();
        }
        self.snapshots.pop_back()
    }
}
