//! A simulated network for the scheduler: no processes, no sockets, no sleeping.
//!
//! Workers are real [`WorkerCore`]s running real jobs in this process; what is simulated is time and the network
//! between them and the scheduler. Each direction of each connection is FIFO (as a pipe or TCP stream is), with a
//! random delay per frame, so frames of different workers arrive in any order. Faults come from a seed: a worker is
//! killed (its connection closes after what it already wrote), stopped (it freezes: no work, no heartbeat),
//! partitioned (it works on but nothing gets through), or a replacement fails to start.
//!
//! Every scenario runs the same operations twice — without faults and with — and checks that results are identical
//! (the map job's output is the exact bracketing of the reduction, so a chunk counted twice, lost, or combined in
//! another order shows), that every recorded failure is an injected one, that no wait is without a deadline, and
//! that a run fails only when more workers were lost than allowed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::cluster::worker::{Control, WorkerCore};
use crate::data::{Dataset, Shard};
use crate::job::{Contribution, MapReduce, Multipass, Registry, ReplicaContext};
use crate::rng::Rng;
use crate::wire::{ChunkMeta, Frame, Payload, Scalar};

/// Leaves as `round:chunk`, inner nodes as `(left right)`: the result is the exact bracketing.
struct Bracket;

impl MapReduce for Bracket {
    const NAME: &'static str = "sim.bracket";
    type Elem = f64;
    type Params = u64;
    type Output = String;

    fn map(&self, round: &u64, shard: &Shard<'_, f64>) -> String {
        format!("{round}:{}", shard.chunk)
    }

    fn reduce(&self, a: String, b: String) -> String {
        format!("({a} {b})")
    }
}

/// Each replica counts its passes and sums its rows in its local state (saved and restored); the state is the log of
/// every pass's reports in replica order.
struct Counter;

impl Multipass for Counter {
    const NAME: &'static str = "sim.counter";
    type Elem = f64;
    type State = String;
    type Partial = String;
    type Local = (u32, u64, f64);

    fn init_local(&self, _: &String, ctx: &ReplicaContext) -> (u32, u64, f64) {
        (ctx.replica, 0, 0.0)
    }

    fn pass(&self, _: &String, local: &mut (u32, u64, f64), shards: &[Shard<'_, f64>]) -> String {
        local.1 += 1;
        local.2 += shards.iter().flat_map(|s| s.values).sum::<f64>();
        format!("r{}p{}s{}", local.0, local.1, local.2)
    }

    fn aggregate(&self, state: &String, parts: Vec<Contribution<String>>) -> String {
        let mut next = state.clone();
        for c in parts {
            next.push_str(&format!(" {}/{}", c.partial, c.rows));
        }
        next.push('|');
        next
    }

    fn save_local(&self, local: &(u32, u64, f64)) -> Option<Vec<u8>> {
        Some((local.1, local.2).to_bytes())
    }

    fn restore_local(&self, _: &String, ctx: &ReplicaContext, saved: &[u8]) -> Result<(u32, u64, f64), String> {
        let (p, s) = <(u64, f64)>::from_bytes(saved).map_err(|e| e.to_string())?;
        Ok((ctx.replica, p, s))
    }
}

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| Registry::new().map_reduce(Bracket).multipass(Counter))
}

/// What happens to a worker, and when.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// The process dies: the master sees its connection close.
    Kill,
    /// The process freezes (SIGSTOP) for good.
    Stop,
    /// The process freezes and resumes after this long — possibly after the master gave up on it.
    Pause(Duration),
    /// The link is cut: the process works on, nothing gets through either way.
    Partition,
}

#[derive(Debug, Clone)]
struct Scenario {
    workers: usize,
    chunks: u32,
    rows_per_chunk: usize,
    rounds: u64,
    passes: u64,
    replicas: Option<u32>,
    max_failures: usize,
    respawn: bool,
    spares: usize,
    placement: Placement,
    streaming: bool,
    /// Milliseconds of work per chunk, per worker (index) — replacements get 1.
    cost: Vec<u64>,
    /// (worker, time in ms, fault).
    faults: Vec<(WorkerId, u64, Fault)>,
    /// Probability that starting a replacement fails.
    spawn_fail: f64,
    seed: u64,
}

enum Ev {
    /// A frame reaches a worker.
    ToWorker { w: WorkerId, frame: Frame },
    /// A frame reaches the master; it left the worker at `sent`.
    ToMaster { w: WorkerId, message: Message, payload: Vec<u8>, sent: Duration },
    /// The master sees a worker's connection close.
    Closed { w: WorkerId },
    /// A worker's heartbeat thread fires.
    Beat { w: WorkerId },
    /// An injected fault.
    Fault { w: WorkerId, fault: Fault },
    /// A frozen worker resumes.
    Resume { w: WorkerId },
    /// A requested replacement is ready (or failed to start).
    SpawnDone { ok: bool, origin: Origin },
    /// A started replacement passes its handshake.
    Join { w: WorkerId },
}

struct SimWorker {
    core: WorkerCore<'static>,
    /// Milliseconds per chunk.
    cost: u64,
    /// Killed (by a fault or by the master) at this time: nothing in or out, ever again.
    died: Option<Duration>,
    /// Frozen since this time (nothing processed or sent until resumed).
    frozen: Option<Duration>,
    /// Replies it had not written when it froze: (message, payload, time after the freeze it would have written).
    held: Vec<(Message, Vec<u8>, Duration)>,
    /// Partitioned: frames are dropped both ways.
    cut: bool,
    busy_until: Duration,
    /// Arrival time of the last frame each way, to keep connections FIFO.
    last_in: Duration,
    last_out: Duration,
    /// Frames that arrived while frozen, in order.
    backlog: Vec<Frame>,
}

struct Sim {
    sched: Scheduler,
    now: Duration,
    queue: BTreeMap<(Duration, u64), Ev>,
    seq: u64,
    workers: BTreeMap<WorkerId, SimWorker>,
    next_worker: WorkerId,
    rng: Rng,
    data: Dataset<f64>,
    streaming: bool,
    spawn_fail: f64,
    /// Failures injected (each may be recorded once by the scheduler).
    injected: usize,
    done: Option<Result<Outcome, Error>>,
}

const HEARTBEAT: Duration = Duration::from_millis(100);

impl Sim {
    fn new(s: &Scenario, faults: bool) -> Sim {
        let cfg = Config {
            heartbeat_timeout: Duration::from_millis(1000),
            join_timeout: Duration::from_millis(2000),
            max_failures: s.max_failures,
            placement: s.placement,
            respawn_local: s.respawn,
            spares: s.spares,
            replicas: s.replicas,
        };
        let rows = s.chunks as usize * s.rows_per_chunk;
        let data =
            Dataset::new((0..rows).map(|r| r as f64).collect(), 1).unwrap().with_chunks(s.chunks as usize).unwrap();
        let mut sim = Sim {
            sched: Scheduler::new(cfg),
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            workers: BTreeMap::new(),
            next_worker: 0,
            rng: Rng::new(s.seed),
            data,
            streaming: s.streaming,
            spawn_fail: if faults { s.spawn_fail } else { 0.0 },
            injected: 0,
            done: None,
        };
        for i in 0..s.workers {
            let w = sim.add_worker(Origin::Local, s.cost[i]);
            sim.sched.step(
                Duration::ZERO,
                Event::Started { worker: w, origin: Origin::Local, label: format!("w{w}"), role: Role::Compute },
            );
            sim.at(Duration::from_millis(1 + i as u64), Ev::Join { w });
        }
        if faults {
            for &(w, ms, fault) in &s.faults {
                sim.at(Duration::from_millis(ms), Ev::Fault { w, fault });
            }
        }
        sim
    }

    fn add_worker(&mut self, _origin: Origin, cost: u64) -> WorkerId {
        let w = self.next_worker;
        self.next_worker += 1;
        let flush = if self.streaming { Duration::ZERO } else { Duration::MAX };
        self.workers.insert(
            w,
            SimWorker {
                core: WorkerCore::new(registry()).with_flush_every(flush),
                cost,
                died: None,
                frozen: None,
                held: Vec::new(),
                cut: false,
                busy_until: Duration::ZERO,
                last_in: Duration::ZERO,
                last_out: Duration::ZERO,
                backlog: Vec::new(),
            },
        );
        self.at(self.now + HEARTBEAT, Ev::Beat { w });
        w
    }

    fn at(&mut self, t: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn delay(&mut self) -> Duration {
        Duration::from_micros(50 + self.rng.below(3000))
    }

    /// Runs the scheduler's queued actions.
    fn act(&mut self) {
        let actions: Vec<Action> = self.sched.actions().collect();
        for a in actions {
            match a {
                Action::Send { worker, message, payload } => self.send_to_worker(worker, message, payload.to_vec()),
                Action::Ship { worker, dataset, chunks, req } => {
                    for c in chunks.into_iter().flatten() {
                        let rows = self.data.chunk_rows(c as usize);
                        let meta = ChunkMeta {
                            dataset,
                            elem: ElemType::F64,
                            cols: 1,
                            total_chunks: self.data.chunks() as u32,
                            chunk: c,
                            first_row: rows.start as u64,
                            rows: rows.len() as u32,
                            has_labels: false,
                        };
                        let mut payload = Vec::new();
                        f64::extend_le(&self.data.values()[rows], &mut payload);
                        self.send_to_worker(worker, Message::LoadChunk(meta), payload);
                    }
                    self.send_to_worker(worker, Message::LoadDone { req, dataset }, Vec::new());
                }
                Action::Kill { worker } | Action::Retire { worker } => {
                    if let Some(w) = self.workers.get_mut(&worker) {
                        w.died.get_or_insert(self.now);
                    }
                }
                Action::Spawn { origin } => {
                    let ok = self.rng.uniform() >= self.spawn_fail;
                    let t = self.now + Duration::from_millis(5 + self.rng.below(40));
                    self.at(t, Ev::SpawnDone { ok, origin });
                    if !ok {
                        self.injected += 1;
                    }
                }
                Action::Done(o) => {
                    self.done.get_or_insert(Ok(o));
                }
                Action::Fail(e) => {
                    self.done.get_or_insert(Err(e));
                }
                Action::PsProgress(_) | Action::PsFetched { .. } | Action::PsFinished => {
                    unreachable!("the simulation runs no parameter-server operation")
                }
            }
        }
    }

    fn send_to_worker(&mut self, worker: WorkerId, message: Message, payload: Vec<u8>) {
        let d = self.delay();
        let Some(w) = self.workers.get_mut(&worker) else { return };
        if w.died.is_some() || w.cut {
            return;
        }
        let t = (self.now + d).max(w.last_in);
        w.last_in = t;
        let wire_len = payload.len();
        self.at(t, Ev::ToWorker { w: worker, frame: Frame { message, payload, wire_len } });
    }

    /// A worker serves one frame that reached it at `self.now`.
    fn serve(&mut self, id: WorkerId, frame: Frame) {
        let chunk_count = match &frame.message {
            Message::Map { chunks, .. } => chunks.iter().map(|r| r.len() as u64).sum(),
            Message::Pass { first_chunk, end_chunk, .. } => u64::from(end_chunk - first_chunk),
            _ => 0,
        };
        let w = self.workers.get_mut(&id).expect("exists");
        let start = self.now.max(w.busy_until);
        let work = Duration::from_millis(chunk_count * w.cost) + Duration::from_micros(10);
        let mut replies = Vec::new();
        let control = w.core.handle(frame, &mut |m, p| {
            replies.push((m, p.to_vec()));
            Ok(())
        });
        assert_eq!(control.unwrap(), Control::Continue, "the scheduler never sends Shutdown");
        w.busy_until = start + work;
        let k = replies.len() as u32;
        for (i, (mut message, payload)) in replies.into_iter().enumerate() {
            let sent = start + work * (i as u32 + 1) / k.max(1);
            // Report the simulated work, not the microseconds the real job took here.
            let share = (work / k.max(1)).as_micros() as u64;
            match &mut message {
                Message::MapDone { compute_us, .. } | Message::PassDone { compute_us, .. } => *compute_us = share,
                _ => {}
            }
            self.write(id, message, payload, sent);
        }
    }

    /// A worker writes a frame at time `sent`; it arrives after a delay, in order.
    fn write(&mut self, id: WorkerId, message: Message, payload: Vec<u8>, sent: Duration) {
        let d = self.delay();
        let w = self.workers.get_mut(&id).expect("exists");
        let t = (sent + d).max(w.last_out);
        w.last_out = t;
        self.at(t, Ev::ToMaster { w: id, message, payload, sent });
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::ToWorker { w, frame } => {
                let sw = self.workers.get_mut(&w).expect("exists");
                if sw.died.is_some() || sw.cut {
                    return;
                }
                if sw.frozen.is_some() {
                    sw.backlog.push(frame);
                    return;
                }
                self.serve(w, frame);
            }
            Ev::ToMaster { w, message, payload, sent } => {
                let sw = self.workers.get_mut(&w).expect("exists");
                if sw.cut || sw.died.is_some_and(|d| sent > d) {
                    return; // never written, or swallowed by the cut link
                }
                if let Some(f) = sw.frozen.filter(|f| sent > *f) {
                    sw.held.push((message, payload, sent - f)); // written once it resumes
                    return;
                }
                self.sched.step(self.now, Event::Seen { worker: w, at: self.now });
                self.sched.step(self.now, Event::Frame { worker: w, message, payload });
            }
            Ev::Closed { w } => {
                let error = Error::WorkerDied { worker: format!("w{w}"), status: "killed".into(), stderr_tail: vec![] };
                self.sched.step(self.now, Event::Closed { worker: w, error });
            }
            Ev::Beat { w } => {
                let sw = &self.workers[&w];
                if sw.died.is_some() {
                    return;
                }
                if sw.frozen.is_none() && !sw.cut {
                    self.sched.step(self.now, Event::Seen { worker: w, at: self.now });
                }
                self.at(self.now + HEARTBEAT, Ev::Beat { w });
            }
            Ev::Fault { w, fault } => {
                let Some(sw) = self.workers.get_mut(&w) else { return };
                if sw.died.is_some() || sw.frozen.is_some() || sw.cut {
                    return;
                }
                self.injected += 1;
                match fault {
                    Fault::Kill => {
                        sw.died = Some(self.now);
                        let t = (self.now + Duration::from_micros(200)).max(sw.last_out);
                        self.at(t, Ev::Closed { w });
                    }
                    Fault::Stop => sw.frozen = Some(self.now),
                    Fault::Pause(d) => {
                        sw.frozen = Some(self.now);
                        self.at(self.now + d, Ev::Resume { w });
                    }
                    Fault::Partition => sw.cut = true,
                }
            }
            Ev::Resume { w } => {
                let sw = self.workers.get_mut(&w).expect("exists");
                let Some(since) = sw.frozen.take() else { return };
                if sw.died.is_some() {
                    return;
                }
                // A pause well under the heartbeat timeout must go unnoticed: it is not a failure.
                if self.now - since < Duration::from_millis(900) {
                    self.injected -= 1;
                }
                let remaining = sw.busy_until.saturating_sub(since);
                sw.busy_until = self.now + remaining;
                sw.last_out = self.now;
                let mut held = std::mem::take(&mut sw.held);
                let backlog = std::mem::take(&mut sw.backlog);
                // Frames it "wrote" during the pause that are still in flight were not written either: they follow
                // the held ones, in order, so the connection stays FIFO.
                let in_flight: Vec<(Duration, u64)> = self
                    .queue
                    .iter()
                    .filter(|(_, ev)| matches!(ev, Ev::ToMaster { w: x, sent, .. } if *x == w && *sent > since))
                    .map(|(k, _)| *k)
                    .collect();
                for key in in_flight {
                    if let Some(Ev::ToMaster { message, payload, sent, .. }) = self.queue.remove(&key) {
                        held.push((message, payload, sent - since));
                    }
                }
                for (message, payload, after) in held {
                    self.write(w, message, payload, self.now + after);
                }
                for frame in backlog {
                    self.serve(w, frame);
                }
            }
            Ev::SpawnDone { ok, origin } => {
                if !ok {
                    self.sched.step(self.now, Event::SpawnFailed { reason: "simulated".into() });
                    return;
                }
                let w = self.add_worker(origin, 1);
                self.sched
                    .step(self.now, Event::Started { worker: w, origin, label: format!("w{w}"), role: Role::Compute });
                let t = self.now + Duration::from_millis(2);
                self.at(t, Ev::Join { w });
            }
            Ev::Join { w } => {
                if self.workers[&w].died.is_some() {
                    return;
                }
                let jobs = registry().names();
                self.sched.step(self.now, Event::Joined { worker: w, label: format!("w{w}"), jobs });
            }
        }
    }

    /// Drives the network until the operation in flight finishes.
    fn run(&mut self) -> Result<Outcome, Error> {
        self.act();
        loop {
            if let Some(r) = self.done.take() {
                return r;
            }
            let next_event = self.queue.keys().next().map(|(t, _)| *t);
            let deadline = self.sched.next_deadline();
            let t = match (next_event, deadline) {
                (Some(e), Some(d)) => e.min(d.max(self.now)),
                (Some(e), None) => e,
                (None, Some(d)) => d.max(self.now),
                (None, None) => panic!("the scheduler waits with no event and no deadline at {:?}", self.now),
            };
            assert!(t < Duration::from_secs(3600), "no progress after an hour of simulated time");
            if next_event == Some(t) {
                let key = *self.queue.keys().next().expect("some");
                let ev = self.queue.remove(&key).expect("present");
                self.now = t;
                self.handle(ev);
            } else {
                self.now = t + Duration::from_micros(1);
                self.sched.step(self.now, Event::Tick);
            }
            self.act();
        }
    }

    /// Runs the scenario's operations; returns the results in order, or the first error.
    fn script(&mut self, s: &Scenario) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        self.sched.start(Duration::ZERO);
        assert!(matches!(self.run()?, Outcome::Started));
        let id = self.data.id();
        let spec = DatasetSpec {
            id,
            elem: ElemType::F64,
            rows: self.data.rows() as u64,
            chunks: s.chunks,
            source: Source::Shipped,
        };
        self.sched.load(self.now, spec);
        assert!(matches!(self.run()?, Outcome::Loaded));
        let tree = Tree::new(s.chunks);
        for round in 0..s.rounds {
            self.sched.map(self.now, Bracket::NAME, id, Arc::new(round.to_bytes()));
            let Outcome::Mapped { parts } = self.run()? else { panic!("a map round ends with Mapped") };
            let mut parts: BTreeMap<u32, String> =
                parts.into_iter().map(|(n, (_, b))| (n, String::from_bytes(&b).unwrap())).collect();
            out.push(tree.finish(&mut parts, &mut |a, b| Bracket.reduce(a, b)).expect("complete"));
        }
        if s.passes > 0 {
            let session = self.sched.open_session(7, s.replicas);
            let mut state = String::new();
            for _ in 0..s.passes {
                self.sched.pass(self.now, session, Counter::NAME, id, Arc::new(state.to_bytes()));
                let Outcome::Passed { partials } = self.run()? else { panic!("a pass ends with Passed") };
                let parts = partials
                    .into_iter()
                    .map(|(rows, _, b)| Contribution { rows, partial: String::from_bytes(&b).unwrap() })
                    .collect();
                state = Counter.aggregate(&state, parts);
            }
            out.push(state);
        }
        Ok(out)
    }
}

fn expected_bracket(chunks: u32, round: u64) -> String {
    let tree = Tree::new(chunks);
    tree.eval::<_, ()>(1, &mut |c| Ok(format!("{round}:{c}")), &mut |a, b| format!("({a} {b})")).unwrap().unwrap()
}

/// Runs a scenario with and without its faults and checks the invariants.
fn check(s: &Scenario) -> Result<(), TestCaseError> {
    let clean = Sim::new(s, false).script(s).map_err(|e| TestCaseError::fail(format!("fault-free run failed: {e}")))?;
    for (round, got) in clean.iter().take(s.rounds as usize).enumerate() {
        prop_assert_eq!(got, &expected_bracket(s.chunks, round as u64));
    }
    let mut sim = Sim::new(s, true);
    let result = sim.script(s);
    let recorded = sim.sched.failures().len();
    // Every recorded failure is an injected one (a slow worker is never declared lost).
    prop_assert!(
        recorded <= sim.injected,
        "{} failures recorded, {} injected: {:?}",
        recorded,
        sim.injected,
        sim.sched.failures()
    );
    match result {
        Ok(faulty) => prop_assert_eq!(faulty, clean, "results differ after failures {:?}", sim.sched.failures()),
        Err(Error::TooManyFailures { failures, max }) => {
            prop_assert!(failures.len() > max && max == s.max_failures, "gave up early: {:?}", failures)
        }
        Err(Error::NoWorkersLeft { .. }) => {
            // Only once every worker is gone and nothing could replace them.
            prop_assert!(recorded >= s.workers && sim.sched.live().is_empty(), "no workers left too early")
        }
        Err(e) if s.max_failures == 0 && recorded >= 1 => {
            prop_assert!(matches!(e, Error::WorkerDied { .. } | Error::WorkerStalled { .. }), "{}", e)
        }
        Err(e) => {
            return Err(TestCaseError::fail(format!("unexpected failure: {e}; failures {:?}", sim.sched.failures())))
        }
    }
    Ok(())
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..6, 1u32..40, 1usize..4, any::<u64>()).prop_flat_map(|(workers, chunks, rows_per_chunk, seed)| {
        let fault = prop_oneof![
            Just(Fault::Kill),
            Just(Fault::Stop),
            Just(Fault::Partition),
            prop_oneof![100u64..800, 1300u64..3000].prop_map(|ms| Fault::Pause(Duration::from_millis(ms))),
        ];
        let shape = (0u64..4, 0u64..4, prop::option::of(1u32..6));
        let policy = (0usize..5, any::<bool>(), 0usize..3, any::<bool>(), any::<bool>());
        let faults = (
            prop::collection::vec(1u64..5, workers),
            prop::collection::vec((0..workers, 10u64..400, fault), 0..4),
            prop_oneof![Just(0.0), Just(0.3)],
        );
        (shape, policy, faults).prop_map(
            move |(
                (rounds, passes, replicas),
                (max_failures, respawn, spares, even, streaming),
                (cost, faults, spawn_fail),
            )| {
                Scenario {
                    workers,
                    chunks,
                    rows_per_chunk,
                    rounds: rounds.max(1),
                    passes,
                    replicas: replicas.map(|r| r.min(chunks)),
                    max_failures,
                    respawn,
                    spares,
                    placement: if even { Placement::Even } else { Placement::Weighted },
                    streaming,
                    cost,
                    faults,
                    spawn_fail,
                    seed,
                }
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn results_are_identical_under_random_faults(s in scenario()) {
        check(&s)?;
    }
}

#[test]
fn a_killed_worker_mid_round_is_recomputed_on_a_replacement() {
    let s = Scenario {
        workers: 3,
        chunks: 24,
        rows_per_chunk: 2,
        rounds: 3,
        passes: 0,
        replicas: None,
        max_failures: 3,
        respawn: true,
        spares: 0,
        placement: Placement::Even,
        streaming: true,
        cost: vec![2, 2, 2],
        faults: vec![(1, 30, Fault::Kill)],
        spawn_fail: 0.0,
        seed: 1,
    };
    check(&s).unwrap();
    let mut sim = Sim::new(&s, true);
    sim.script(&s).unwrap();
    let f = sim.sched.failures();
    assert_eq!(f.len(), 1);
    assert!(f[0].recovered.is_some());
    // Worker 1's chunks went to its replacement (worker 3), not to the survivors.
    let owners = sim.sched.owners(&sim.data.id());
    assert_eq!(owners.iter().filter(|o| **o == Some(3)).count(), 8, "{owners:?}");
}

#[test]
fn a_stopped_worker_is_detected_by_its_heartbeat_deadline_and_its_work_moves_to_survivors() {
    let s = Scenario {
        workers: 2,
        chunks: 8,
        rows_per_chunk: 1,
        rounds: 2,
        passes: 2,
        replicas: Some(4),
        max_failures: 2,
        respawn: false,
        spares: 0,
        placement: Placement::Weighted,
        streaming: false,
        cost: vec![1, 1],
        faults: vec![(0, 5, Fault::Stop)],
        spawn_fail: 0.0,
        seed: 2,
    };
    check(&s).unwrap();
    let mut sim = Sim::new(&s, true);
    sim.script(&s).unwrap();
    let f = &sim.sched.failures()[0];
    assert!(f.cause.contains("stalled"), "{}", f.cause);
    // Detected one heartbeat timeout (1 s) after its last sign of life, give or take a heartbeat.
    assert!(f.detected >= Duration::from_millis(1000) && f.detected <= Duration::from_millis(1200), "{:?}", f.detected);
    assert_eq!(sim.sched.owners(&sim.data.id()), vec![Some(1); 8]);
}

#[test]
fn too_many_failures_name_every_one() {
    let s = Scenario {
        workers: 3,
        chunks: 6,
        rows_per_chunk: 1,
        rounds: 3,
        passes: 0,
        replicas: None,
        max_failures: 1,
        respawn: false,
        spares: 0,
        placement: Placement::Even,
        streaming: false,
        cost: vec![5, 5, 5],
        faults: vec![(0, 5, Fault::Kill), (1, 6, Fault::Kill)],
        spawn_fail: 0.0,
        seed: 3,
    };
    let err = Sim::new(&s, true).script(&s).unwrap_err().to_string();
    assert!(err.contains("giving up after 2 lost workers") && err.contains("w0") && err.contains("w1"), "{err}");
}

#[test]
fn a_straggler_gets_a_smaller_share_under_weighted_placement() {
    let s = Scenario {
        workers: 2,
        chunks: 64,
        rows_per_chunk: 1,
        rounds: 6,
        passes: 0,
        replicas: None,
        max_failures: 0,
        respawn: false,
        spares: 0,
        placement: Placement::Weighted,
        streaming: false,
        cost: vec![3, 1],
        faults: vec![],
        spawn_fail: 0.0,
        seed: 4,
    };
    let mut sim = Sim::new(&s, false);
    sim.script(&s).unwrap();
    let owners = sim.sched.owners(&sim.data.id());
    let slow = owners.iter().filter(|o| **o == Some(0)).count();
    assert!((14..=18).contains(&slow), "the 3x slower worker holds {slow} of 64 chunks");
}

#[test]
fn a_retired_worker_hands_its_chunks_over_without_counting_a_failure() {
    let s = Scenario {
        workers: 3,
        chunks: 12,
        rows_per_chunk: 1,
        rounds: 1,
        passes: 0,
        replicas: None,
        max_failures: 0,
        respawn: false,
        spares: 0,
        placement: Placement::Even,
        streaming: false,
        cost: vec![1, 1, 1],
        faults: vec![],
        spawn_fail: 0.0,
        seed: 5,
    };
    let mut sim = Sim::new(&s, false);
    let before = sim.script(&s).unwrap();
    let profile = sim.sched.last_round().cloned().unwrap();
    assert_eq!(profile.work.iter().map(|(_, k)| k).sum::<u32>(), 12);
    assert!(sim.sched.retire(2));
    assert!(!sim.sched.retire(2), "already gone");
    let id = sim.data.id();
    sim.sched.map(sim.now, Bracket::NAME, id, Arc::new(0u64.to_bytes()));
    let Outcome::Mapped { parts } = sim.run().unwrap() else { panic!() };
    let mut parts: BTreeMap<u32, String> =
        parts.into_iter().map(|(n, (_, b))| (n, String::from_bytes(&b).unwrap())).collect();
    assert_eq!(Tree::new(12).finish(&mut parts, &mut |a, b| Bracket.reduce(a, b)).unwrap(), before[0]);
    assert!(sim.sched.failures().is_empty());
    assert_eq!(sim.sched.owners(&id).iter().filter(|o| **o == Some(2)).count(), 0);
    assert!(sim.sched.retire(1));
    assert!(!sim.sched.retire(0), "the last worker stays");
}

#[test]
fn round_predictions_trade_overhead_against_compute() {
    // 8 chunks of 1 ms on 4 workers; the round took 3 ms, 1 ms beyond the slowest worker: 0.25 ms per worker.
    let p = RoundProfile { chunks: 8, wall: Duration::from_millis(3), work: vec![(Duration::from_millis(2), 2); 4] };
    assert_eq!(p.predict(1), Duration::from_micros(250 + 8_000));
    assert_eq!(p.predict(4), Duration::from_micros(1_000 + 2_000));
    assert_eq!(p.predict(8), Duration::from_micros(2_000 + 1_000));
    // Tiny chunks: one worker is best.
    let p = RoundProfile { chunks: 4, wall: Duration::from_micros(400), work: vec![(Duration::from_micros(10), 1); 4] };
    let best = (1..=4).min_by_key(|&n| p.predict(n)).unwrap();
    assert_eq!(best, 1);
}
