//! A simulated network for the parameter server: no processes, no sockets, no sleeping.
//!
//! Workers are real [`ClientCore`]s, servers real [`ServerCore`]s; what is simulated is time and the network. Each
//! worker runs its loop (pull, compute for a random time, push, declare the clock) for its own number of clocks and
//! then leaves; several servers own disjoint key ranges; every connection is FIFO with a random delay per message,
//! so messages of different connections arrive in any order. Optionally one server range is replicated by chain
//! replication — the head handles each request and forwards it, with its timestamp, to the tail, which sends the
//! replies — the tail is started from a snapshot of the head mid-run (through postcard bytes), and later the head
//! or the tail is killed: the survivor carries on and the workers, told after a detection delay, re-send what
//! [`ClientCore::resend`] says. Optionally one worker crashes mid-clock and the runtime declares it lost (`Leave`).
//!
//! Two workloads:
//! - **counting**: worker `w` owns keys `w*K..(w+1)*K` and adds 1 (through a user rule, `p += g`) to a random subset
//!   of them each clock, so a value *is* the number of that worker's pushes applied to that key. Every read is
//!   checked against the pushes the simulation knows were sent: no read lacks an update the mode promises (BSP:
//!   clocks `< c`; SSP(s): `<= c-s-1`; ASP: `<= c - s_now - 1` with `s_now <= S`, and everything before the last
//!   barrier `W * floor(c/W)`; any mode: everything before the view it reports), no update is applied twice, and at
//!   the end every push was applied exactly once — failovers included.
//! - **gradient**: BSP with updates applied by clock, a real rule (SGD, momentum, AdaGrad, Adam), shared keys,
//!   updates computed from the values read: the final parameters are bit-identical to a sequential reference run,
//!   whatever the speeds, delays, server split and failover.
//!
//! Liveness in both: the event queue drains with every worker finished (no pull left unanswered, no push left
//! unacknowledged, nothing deferred or held at a server) and a surviving tail identical to its head.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::rng::Rng;

/// `p += g`: a user-supplied rule, and a counter when every pushed value is 1.
struct Add;

impl UpdateRule for Add {
    fn name(&self) -> &str {
        "add"
    }

    fn apply(&self, params: &mut [f32], grads: &[f32], _: &mut [f32], _: &[u64]) {
        for (p, g) in params.iter_mut().zip(grads) {
            *p += g;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Workload {
    Count,
    Gradient(RuleSpec),
}

impl Workload {
    fn rule(&self) -> Box<dyn UpdateRule> {
        match self {
            Workload::Count => Box::new(Add),
            Workload::Gradient(spec) => spec.build().expect("valid rule"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failover {
    /// Which server range is replicated.
    server: usize,
    /// When its tail is started from the head's snapshot (ms).
    backup_at: u64,
    /// When one of the two dies (ms, after `backup_at`) and whether it is the head; `None`: both survive.
    kill: Option<(u64, bool)>,
}

#[derive(Debug, Clone)]
struct Scenario {
    workers: usize,
    /// Server `s` owns `bounds[s]..bounds[s + 1]`.
    bounds: Vec<u64>,
    /// Keys per worker (counting workload).
    per_worker: u64,
    /// Clocks each worker runs before it leaves.
    iters: Vec<u64>,
    mode: Consistency,
    apply: Apply,
    /// Base compute time per clock, per worker (ms).
    speed: Vec<u64>,
    /// Extra random compute time per clock, up to (ms).
    jitter: u64,
    /// Network delay per message, up to (ms).
    delay: u64,
    /// Failure detection delay (ms), longer than any message's delay.
    detect: u64,
    failover: Option<Failover>,
    /// A worker that dies after pushing for this clock, before declaring it.
    crash: Option<(usize, u64)>,
    workload: Workload,
    seed: u64,
}

impl Scenario {
    fn keys(&self) -> u64 {
        *self.bounds.last().expect("bounds")
    }

    /// A random scenario from `seed`.
    fn generate(seed: u64, gradient: bool) -> Scenario {
        let mut r = Rng::new(seed);
        let workers = 1 + r.below(7) as usize;
        let per_worker = 1 + r.below(5);
        let keys = if gradient { 1 + r.below(24) } else { workers as u64 * per_worker };
        let servers = (1 + r.below(3)).min(keys) as usize;
        let mut cuts: Vec<u64> = Vec::new();
        while cuts.len() + 1 < servers {
            let c = 1 + r.below(keys - 1);
            if !cuts.contains(&c) {
                cuts.push(c);
            }
        }
        cuts.sort_unstable();
        let bounds: Vec<u64> = std::iter::once(0).chain(cuts).chain(std::iter::once(keys)).collect();
        let base = 2 + r.below(13);
        let iters: Vec<u64> = (0..workers).map(|_| (base - r.below(3)).max(1)).collect();
        let mode = if gradient {
            Consistency::Bsp
        } else {
            match r.below(4) {
                0 => Consistency::Bsp,
                1 => Consistency::Ssp { s: r.below(4) as u32 },
                2 => Consistency::Asp { s: r.below(5) as u32, w: 1 + r.below(4) as u32 },
                _ => Consistency::Async,
            }
        };
        let apply = match (gradient, r.below(3)) {
            (false, 0) => Apply::OnArrival,
            (_, 1) => Apply::ByClockSum,
            _ => Apply::ByClock,
        };
        let mut speed: Vec<u64> = (0..workers).map(|_| 1 + r.below(20)).collect();
        if r.below(3) == 0 {
            let w = r.below(workers as u64) as usize;
            speed[w] *= 4; // a straggler
        }
        let delay = r.below(6);
        let detect = delay + 1 + r.below(10);
        let failover = (r.below(2) == 0).then(|| {
            let backup_at = r.below(60);
            Failover {
                server: r.below(servers as u64) as usize,
                backup_at,
                kill: (r.below(4) != 0).then(|| (backup_at + r.below(120), r.below(2) == 0)),
            }
        });
        let min_iters = *iters.iter().min().expect("a worker");
        let crash = (!gradient && workers >= 2 && r.below(3) == 0)
            .then(|| (r.below(workers as u64) as usize, r.below(min_iters)));
        let workload = if gradient {
            let lr = 0.05 + r.uniform() as f32 * 0.2;
            Workload::Gradient(match r.below(4) {
                0 => RuleSpec::Sgd(Sgd { lr }),
                1 => RuleSpec::Momentum(Momentum { lr, momentum: 0.9 }),
                2 => RuleSpec::AdaGrad(AdaGrad { lr, eps: 1e-6 }),
                _ => RuleSpec::Adam(Adam::new(lr)),
            })
        } else {
            Workload::Count
        };
        Scenario {
            workers,
            bounds,
            per_worker,
            iters,
            mode,
            apply,
            speed,
            jitter: r.below(11),
            delay,
            detect,
            failover,
            crash,
            workload,
            seed,
        }
    }
}

/// Initial parameters of the gradient workload.
fn init(key: u64) -> f32 {
    (key % 7) as f32 * 0.25 - 0.5
}

/// What worker `w` reads at clock `c` in the gradient workload: independent of timing.
fn gradient_selection(seed: u64, w: usize, c: u64, keys: u64) -> Selection {
    let mut r = Rng::derive(seed, (w as u64) << 32 | c);
    if r.below(2) == 0 {
        return Selection::Range { start: 0, end: keys };
    }
    let mut chosen: Vec<u64> = (0..keys).filter(|_| r.below(3) != 0).collect();
    r.shuffle(&mut chosen);
    Selection::Keys(chosen)
}

/// Worker `w`'s update at clock `c` from the values it read: a noisy pull towards a per-worker target.
fn gradient_update(seed: u64, w: usize, c: u64, what: &Selection, values: &[f32]) -> Option<Update> {
    let mut r = Rng::derive(seed ^ 0x5eed, (w as u64) << 32 | c);
    let keys: Vec<u64> = match what {
        Selection::Range { start, end } => (*start..*end).collect(),
        Selection::Keys(keys) => keys.clone(),
    };
    let (mut ks, mut gs) = (Vec::new(), Vec::new());
    for (k, v) in keys.iter().zip(values) {
        if r.below(10) < 7 {
            let target = ((k * 7 + w as u64) % 5) as f32 - 2.0;
            ks.push(*k);
            gs.push(0.1 * (v - target) + 0.01 * r.normal() as f32);
        }
    }
    if ks.is_empty() {
        return None;
    }
    let dense = matches!(what, Selection::Range { .. }) && ks.len() == keys.len();
    Some(if dense { Update::Dense { range_start: ks[0], values: gs } } else { Update::Sparse { keys: ks, values: gs } })
}

/// The gradient workload run sequentially on one server over every key: the result the simulation must match.
fn reference(s: &Scenario) -> Vec<f32> {
    let keys = s.keys();
    let config = ServerConfig::new(0..keys, s.workers as u32, s.mode).with_apply(s.apply);
    let mut server = ServerCore::new(config, s.workload.rule(), (0..keys).map(init).collect()).expect("server");
    let mut clients: Vec<ClientCore> =
        (0..s.workers).map(|w| ClientCore::new(w as u32, vec![0, keys]).expect("client")).collect();
    let t = Duration::ZERO;
    let deliver = |server: &mut ServerCore, client: &mut ClientCore, requests: Vec<(usize, Request)>| {
        let mut pulled = None;
        for (_, request) in requests {
            for out in server.handle(request, t) {
                if let Some(ClientEvent::Pulled(p)) = client.on_reply(0, out.reply).expect("reply") {
                    pulled = Some(p.values);
                }
            }
        }
        pulled
    };
    for c in 0..*s.iters.iter().max().expect("a worker") {
        let active: Vec<usize> = (0..s.workers).filter(|w| s.iters[*w] > c).collect();
        let mut reads = Vec::new();
        for &w in &active {
            let what = gradient_selection(s.seed, w, c, keys);
            let (_, requests) = clients[w].pull(&what).expect("pull");
            let values = deliver(&mut server, &mut clients[w], requests).expect("a BSP read at the head of a clock");
            reads.push((w, what, values));
        }
        for (w, what, values) in reads {
            if let Some(update) = gradient_update(s.seed, w, c, &what, &values) {
                let requests = clients[w].push(update).expect("push");
                deliver(&mut server, &mut clients[w], requests);
            }
        }
        for &w in &active {
            let mut requests = clients[w].advance();
            if s.iters[w] == c + 1 {
                requests.extend(clients[w].leave());
            }
            deliver(&mut server, &mut clients[w], requests);
        }
    }
    server.params().to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Worker(usize),
    Node(usize),
    Runtime,
}

#[derive(Debug)]
enum Ev {
    /// A request reaches a server node; `stamp` is the head's time for a forwarded one.
    Request {
        node: usize,
        request: Request,
        stamp: Option<Duration>,
    },
    /// A reply from server range `server` reaches a worker.
    Reply {
        w: usize,
        server: usize,
        reply: Reply,
    },
    /// A worker finished computing.
    Computed {
        w: usize,
    },
    Backup {
        server: usize,
    },
    Kill {
        server: usize,
    },
    /// The workers and the runtime learn of the failover.
    Notify {
        server: usize,
    },
    /// The runtime declares a crashed worker lost.
    Declare {
        w: usize,
    },
}

enum Phase {
    Pulling { id: u64, what: Selection },
    Computing { what: Selection, values: Vec<f32> },
    Done,
    Crashed,
}

struct SimWorker {
    client: ClientCore,
    phase: Phase,
    rng: Rng,
}

struct Node {
    core: ServerCore,
    alive: bool,
    server: usize,
}

struct Chain {
    head: usize,
    tail: Option<usize>,
}

struct Sim<'a> {
    s: &'a Scenario,
    now: Duration,
    queue: BTreeMap<(Duration, u64), Ev>,
    seq: u64,
    /// Arrival time of the last message on each connection, to keep connections FIFO.
    last: BTreeMap<(End, End), Duration>,
    rng: Rng,
    nodes: Vec<Node>,
    chains: Vec<Chain>,
    workers: Vec<SimWorker>,
    declared: Vec<usize>,
    /// Counting workload: per key, the clocks of the pushes its owner sent, in order.
    sent: Vec<Vec<u64>>,
    reads: u64,
    /// Staleness allowed to the reads at clock 3 and later (the largest over their parts) → reads.
    allowed: BTreeMap<Option<u64>, u64>,
}

fn ms(t: u64) -> Duration {
    Duration::from_millis(t)
}

impl<'a> Sim<'a> {
    fn new(s: &'a Scenario) -> Sim<'a> {
        let init: Vec<f32> = match s.workload {
            Workload::Count => vec![0.0; s.keys() as usize],
            Workload::Gradient(_) => (0..s.keys()).map(init).collect(),
        };
        let nodes = (0..s.bounds.len() - 1)
            .map(|server| {
                let (lo, hi) = (s.bounds[server], s.bounds[server + 1]);
                let config = ServerConfig::new(lo..hi, s.workers as u32, s.mode).with_apply(s.apply);
                let core = ServerCore::new(config, s.workload.rule(), init[lo as usize..hi as usize].to_vec());
                Node { core: core.expect("server"), alive: true, server }
            })
            .collect::<Vec<_>>();
        let chains = (0..nodes.len()).map(|n| Chain { head: n, tail: None }).collect();
        let workers = (0..s.workers)
            .map(|w| SimWorker {
                client: ClientCore::new(w as u32, s.bounds.clone()).expect("client"),
                phase: Phase::Done,
                rng: Rng::derive(s.seed, 1000 + w as u64),
            })
            .collect();
        let mut sim = Sim {
            s,
            now: Duration::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            last: BTreeMap::new(),
            rng: Rng::derive(s.seed, 1),
            nodes,
            chains,
            workers,
            declared: Vec::new(),
            sent: vec![Vec::new(); s.keys() as usize],
            reads: 0,
            allowed: BTreeMap::new(),
        };
        if let Some(f) = s.failover {
            sim.at(ms(f.backup_at), Ev::Backup { server: f.server });
            if let Some((at, _)) = f.kill {
                sim.at(ms(at), Ev::Kill { server: f.server });
            }
        }
        sim
    }

    fn at(&mut self, t: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    /// Sends over the connection `from → to`: a random delay, but never before the previous message on it.
    fn send(&mut self, from: End, to: End, ev: Ev) {
        let t = (self.now + ms(self.rng.below(self.s.delay + 1))).max(*self.last.get(&(from, to)).unwrap_or(&ms(0)));
        self.last.insert((from, to), t);
        self.at(t, ev);
    }

    fn send_to_server(&mut self, from: End, server: usize, request: Request) {
        let node = self.chains[server].head;
        self.send(from, End::Node(node), Ev::Request { node, request, stamp: None });
    }

    fn worker_sends(&mut self, w: usize, requests: Vec<(usize, Request)>) {
        for (server, request) in requests {
            self.send_to_server(End::Worker(w), server, request);
        }
    }

    fn run(&mut self) -> Result<(), String> {
        for w in 0..self.s.workers {
            self.begin(w)?;
        }
        let mut steps = 0u64;
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            self.now = t;
            steps += 1;
            if steps > 1_000_000 {
                return Err("the simulation does not end".into());
            }
            match ev {
                Ev::Request { node, request, stamp } => self.arrive(node, request, stamp),
                Ev::Reply { w, server, reply } => self.reply(w, server, reply)?,
                Ev::Computed { w } => self.computed(w)?,
                Ev::Backup { server } => self.backup(server)?,
                Ev::Kill { server } => self.kill(server),
                Ev::Notify { server } => self.notify(server),
                Ev::Declare { w } => {
                    self.declared.push(w);
                    for server in 0..self.chains.len() {
                        self.send_to_server(End::Runtime, server, Request::Leave { worker: w as u32 });
                    }
                }
            }
        }
        self.finish()
    }

    /// Starts worker `w`'s next clock (or leaves when it has run them all).
    fn begin(&mut self, w: usize) -> Result<(), String> {
        let c = self.workers[w].client.clock();
        if c == self.s.iters[w] {
            self.workers[w].phase = Phase::Done;
            let requests = self.workers[w].client.leave();
            self.worker_sends(w, requests);
            return Ok(());
        }
        let keys = self.s.keys();
        let what = match self.s.workload {
            Workload::Gradient(_) => gradient_selection(self.s.seed, w, c, keys),
            Workload::Count => {
                let r = &mut self.workers[w].rng;
                if r.below(2) == 0 {
                    Selection::Range { start: 0, end: keys }
                } else {
                    Selection::Keys((0..1 + r.below(keys)).map(|_| r.below(keys)).collect())
                }
            }
        };
        let (id, requests) = self.workers[w].client.pull(&what).map_err(|e| e.to_string())?;
        self.workers[w].phase = Phase::Pulling { id, what };
        self.worker_sends(w, requests);
        Ok(())
    }

    fn computed(&mut self, w: usize) -> Result<(), String> {
        let Phase::Computing { what, values } = std::mem::replace(&mut self.workers[w].phase, Phase::Done) else {
            return Err(format!("worker {w} computed without reading"));
        };
        let c = self.workers[w].client.clock();
        let update = match self.s.workload {
            Workload::Gradient(_) => gradient_update(self.s.seed, w, c, &what, &values),
            Workload::Count => {
                let k = self.s.per_worker;
                let base = w as u64 * k;
                let r = &mut self.workers[w].rng;
                let mut keys: Vec<u64> = (base..base + k).filter(|_| r.below(2) == 0).collect();
                if keys.is_empty() {
                    keys.push(base + r.below(k));
                }
                for key in &keys {
                    self.sent[*key as usize].push(c);
                }
                Some(if keys.len() as u64 == k && r.below(2) == 0 {
                    Update::Dense { range_start: base, values: vec![1.0; k as usize] }
                } else {
                    r.shuffle(&mut keys);
                    let values = vec![1.0; keys.len()];
                    Update::Sparse { keys, values }
                })
            }
        };
        if let Some(update) = update {
            let requests = self.workers[w].client.push(update).map_err(|e| e.to_string())?;
            self.worker_sends(w, requests);
        }
        if self.s.crash == Some((w, c)) {
            self.workers[w].phase = Phase::Crashed;
            self.at(self.now + ms(self.s.detect), Ev::Declare { w });
            return Ok(());
        }
        let requests = self.workers[w].client.advance();
        self.worker_sends(w, requests);
        self.begin(w)
    }

    fn arrive(&mut self, node: usize, request: Request, stamp: Option<Duration>) {
        if !self.nodes[node].alive {
            return;
        }
        let server = self.nodes[node].server;
        let stamp = stamp.unwrap_or(self.now);
        let out = self.nodes[node].core.handle(request.clone(), stamp);
        let chain = &self.chains[server];
        if chain.head == node {
            if let Some(tail) = chain.tail {
                // The head forwards; the tail answers.
                let ev = Ev::Request { node: tail, request, stamp: Some(stamp) };
                self.send(End::Node(node), End::Node(tail), ev);
                return;
            }
        }
        for o in out {
            let w = o.to as usize;
            self.send(End::Node(node), End::Worker(w), Ev::Reply { w, server, reply: o.reply });
        }
    }

    fn reply(&mut self, w: usize, server: usize, reply: Reply) -> Result<(), String> {
        if matches!(self.workers[w].phase, Phase::Crashed) {
            return Ok(());
        }
        let event = self.workers[w].client.on_reply(server, reply).map_err(|e| e.to_string())?;
        match event {
            Some(ClientEvent::Pulled(p)) => {
                let Phase::Pulling { id, what } = std::mem::replace(&mut self.workers[w].phase, Phase::Done) else {
                    return Err(format!("worker {w} got pull {} it was not waiting for", p.id));
                };
                if id != p.id {
                    return Err(format!("worker {w} got pull {} while waiting for {id}", p.id));
                }
                if self.s.workload == Workload::Count {
                    self.check_read(w, &what, &p)?;
                }
                if let Consistency::Bsp = self.s.mode {
                    if p.staleness() != 0 {
                        return Err(format!("a BSP read with staleness {}", p.staleness()));
                    }
                }
                self.reads += 1;
                if p.reads.iter().all(|(_, r)| r.clock >= 3) {
                    *self.allowed.entry(p.reads.iter().map(|(_, r)| r.bound).max().flatten()).or_default() += 1;
                }
                let r = &mut self.workers[w].rng;
                let compute = self.s.speed[w] + r.below(self.s.jitter + 1);
                self.workers[w].phase = Phase::Computing { what, values: p.values };
                self.at(self.now + ms(compute), Ev::Computed { w });
                Ok(())
            }
            Some(ClientEvent::Rejected { server, what, error }) => {
                Err(format!("worker {w}: server {server} refused {what:?}: {error}"))
            }
            Some(ClientEvent::Acked { .. }) | Some(ClientEvent::Joined { .. }) | None => Ok(()),
        }
    }

    /// The counting workload's read check (see the module docs).
    fn check_read(&self, w: usize, what: &Selection, p: &Pulled) -> Result<(), String> {
        let c = self.workers[w].client.clock();
        let keys: Vec<u64> = match what {
            Selection::Range { start, end } => (*start..*end).collect(),
            Selection::Keys(keys) => keys.clone(),
        };
        let client = &self.workers[w].client;
        for (k, v) in keys.iter().zip(&p.values) {
            let server = client.server_of(*k).expect("a model key");
            let read = p.reads.iter().find(|(s, _)| *s == server).map(|(_, r)| *r).ok_or("a part is missing")?;
            let ctx = || format!("worker {w} read key {k} = {v} at clock {c} ({read:?}) in {}", self.s.mode);
            if read.clock != c || read.staleness != c.saturating_sub(read.view) {
                return Err(format!("{}: inconsistent read information", ctx()));
            }
            let need_by_mode = match (self.s.mode, read.bound) {
                (Consistency::Bsp, Some(0)) => c,
                (Consistency::Ssp { s }, Some(b)) if b == (s as u64).min(c) => c - b,
                (Consistency::Asp { s, w: weak }, Some(b)) => {
                    let barrier = c / weak as u64 * weak as u64;
                    if b > s as u64 || c - b < barrier {
                        return Err(format!("{}: ASP bound {b} beyond S = {s} or the barrier {barrier}", ctx()));
                    }
                    c - b
                }
                (Consistency::Async, None) => 0,
                _ => return Err(format!("{}: wrong bound for the mode", ctx())),
            };
            if read.view < need_by_mode {
                return Err(format!("{}: answered before its view reached {need_by_mode}", ctx()));
            }
            let owner = (*k / self.s.per_worker) as usize;
            let sent = &self.sent[*k as usize];
            if *v < 0.0 || v.fract() != 0.0 || *v as usize > sent.len() {
                return Err(format!("{}: only {} pushes were sent: applied twice?", ctx(), sent.len()));
            }
            if self.s.crash.is_some_and(|(cw, _)| cw == owner) {
                continue; // a crashed worker's pushes may die with a server
            }
            let need = sent.partition_point(|clock| *clock < read.view);
            if (*v as usize) < need {
                return Err(format!("{}: {need} pushes of clocks < {} were sent", ctx(), read.view));
            }
        }
        Ok(())
    }

    fn backup(&mut self, server: usize) -> Result<(), String> {
        let head = self.chains[server].head;
        if self.chains[server].tail.is_some() || !self.nodes[head].alive {
            return Ok(());
        }
        let bytes = postcard::to_stdvec(&self.nodes[head].core.snapshot()).map_err(|e| e.to_string())?;
        let snapshot: Snapshot = postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
        let core = ServerCore::restore(snapshot, self.s.workload.rule()).map_err(|e| e.to_string())?;
        self.nodes.push(Node { core, alive: true, server });
        self.chains[server].tail = Some(self.nodes.len() - 1);
        Ok(())
    }

    fn kill(&mut self, server: usize) {
        let Some(tail) = self.chains[server].tail else { return };
        let kill_head = self.s.failover.and_then(|f| f.kill).is_some_and(|(_, head)| head);
        let victim = if kill_head { self.chains[server].head } else { tail };
        self.nodes[victim].alive = false;
        self.at(self.now + ms(self.s.detect), Ev::Notify { server });
    }

    fn notify(&mut self, server: usize) {
        let chain = &mut self.chains[server];
        let tail = chain.tail.take().expect("a replicated server");
        if !self.nodes[chain.head].alive {
            chain.head = tail;
        }
        for w in 0..self.s.workers {
            if !matches!(self.workers[w].phase, Phase::Crashed) {
                for request in self.workers[w].client.resend(server) {
                    self.send_to_server(End::Worker(w), server, request);
                }
            }
        }
        for w in self.declared.clone() {
            self.send_to_server(End::Runtime, server, Request::Leave { worker: w as u32 });
        }
    }

    fn finish(&self) -> Result<(), String> {
        for (w, sw) in self.workers.iter().enumerate() {
            match sw.phase {
                Phase::Crashed => continue,
                Phase::Done if sw.client.clock() == self.s.iters[w] => {}
                _ => return Err(format!("worker {w} is stuck at clock {}", sw.client.clock())),
            }
            if sw.client.pending_pulls() > 0 || sw.client.unacked() > 0 {
                return Err(format!("worker {w} ended with unanswered pulls or unacknowledged pushes"));
            }
        }
        for (server, chain) in self.chains.iter().enumerate() {
            let head = &self.nodes[chain.head].core;
            if head.deferred_pulls() > 0 || head.held_pushes() > 0 {
                return Err(format!("server {server} ended with deferred pulls or held pushes"));
            }
            if let Some(tail) = chain.tail {
                if self.nodes[tail].alive && self.nodes[tail].core.snapshot() != head.snapshot() {
                    return Err(format!("server {server}: the tail differs from the head"));
                }
            }
            if head.metrics().rejected > 0 && self.s.crash.is_none() {
                return Err(format!("server {server} refused {} requests", head.metrics().rejected));
            }
        }
        if self.s.workload == Workload::Count {
            let params = self.params();
            for (k, v) in params.iter().enumerate() {
                let owner = k / self.s.per_worker as usize;
                let sent = self.sent[k].len() as f32;
                let crashed = self.s.crash.is_some_and(|(cw, _)| cw == owner);
                if *v > sent || (!crashed && *v != sent) {
                    return Err(format!("key {k} = {v} after {sent} pushes"));
                }
            }
        }
        Ok(())
    }

    /// The whole model, from each range's surviving head.
    fn params(&self) -> Vec<f32> {
        self.chains.iter().flat_map(|c| self.nodes[c.head].core.params().to_vec()).collect()
    }

    fn duplicates(&self) -> u64 {
        self.nodes.iter().filter(|n| n.alive).map(|n| n.core.metrics().duplicates).sum()
    }
}

fn check(s: &Scenario) -> Result<Sim<'_>, TestCaseError> {
    let mut sim = Sim::new(s);
    sim.run().map_err(|e| TestCaseError::fail(format!("{e}\n{s:#?}")))?;
    if let Workload::Gradient(_) = s.workload {
        let want = reference(s);
        let got = sim.params();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(
            bits(&got),
            bits(&want),
            "parameters differ from the sequential run: {:?} vs {:?}\n{:#?}",
            got,
            want,
            s
        );
    }
    Ok(sim)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Random workers, speeds, delays, server splits, modes, failovers and crashes: every read within its mode's
    /// bound, every push applied exactly once, every worker finishes.
    #[test]
    fn reads_stay_within_the_bound_and_pushes_apply_once(seed in any::<u64>()) {
        check(&Scenario::generate(seed, false))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// BSP with updates applied by clock: bit-identical to the sequential run whatever the arrival order.
    #[test]
    fn bsp_by_clock_is_bit_identical_whatever_the_arrival_order(seed in any::<u64>()) {
        check(&Scenario::generate(seed, true))?;
    }
}

#[test]
fn failovers_re_send_pushes_the_survivor_already_has_and_it_applies_them_once() {
    let (mut runs, mut duplicates) = (0, 0);
    for seed in 0..200 {
        let mut s = Scenario::generate(seed, false);
        let Some(f) = &mut s.failover else { continue };
        // Kill while the workers are busy: at most a few clocks in.
        f.kill = Some((f.backup_at + 5, seed % 2 == 0));
        let sim = check(&s).unwrap();
        runs += 1;
        duplicates += sim.duplicates();
    }
    assert!(runs >= 50 && duplicates > 0, "{runs} failover runs, {duplicates} duplicates recognised");
}

#[test]
fn bsp_gradient_runs_for_1_2_3_and_7_workers_match_the_sequential_run() {
    for workers in [1usize, 2, 3, 7] {
        let mut s = Scenario::generate(workers as u64, true);
        s.workers = workers;
        s.iters = (0..workers as u64).map(|w| 4 + w % 3).collect();
        s.speed = (0..workers as u64).map(|w| 1 + w * 5).collect();
        s.crash = None;
        check(&s).unwrap();
    }
}

#[test]
fn asp_adapts_to_a_3x_straggler() {
    let s = Scenario {
        workers: 4,
        bounds: vec![0, 4, 8],
        per_worker: 2,
        iters: vec![12; 4],
        mode: Consistency::Asp { s: 6, w: 100 },
        apply: Apply::OnArrival,
        speed: vec![10, 10, 10, 30],
        jitter: 0,
        delay: 0,
        detect: 1,
        failover: None,
        crash: None,
        workload: Workload::Count,
        seed: 9,
    };
    let sim = check(&s).unwrap();
    // From clock 3 on, reads are allowed two clocks of staleness (every estimate is in after the first clock),
    // except the straggler's last ones: once the fast workers have finished and left, it is alone (bound 0).
    let two = sim.allowed.get(&Some(2)).copied().unwrap_or(0);
    assert!(two >= 30 && sim.allowed.keys().all(|b| *b <= Some(2)), "{:?}", sim.allowed);
    for chain in &sim.chains {
        assert!(sim.nodes[chain.head].core.metrics().max_staleness() <= Some(6));
    }
    // Under BSP the same workers wait longer in total.
    let bsp = Scenario { mode: Consistency::Bsp, ..s.clone() };
    let wait = |sim: &Sim<'_>| -> Duration { sim.nodes[0].core.metrics().waits.iter().map(|w| w.total).sum() };
    let bsp_sim = check(&bsp).unwrap();
    assert!(wait(&sim) < wait(&bsp_sim), "{:?} vs {:?}", wait(&sim), wait(&bsp_sim));
}
