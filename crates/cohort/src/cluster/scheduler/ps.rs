//! The scheduler's part in a parameter-server run: decisions only, like the rest of the scheduler.
//!
//! 1. Cut the keys into one range per server; range `r` is headed by server `r` and replicated on the next
//!    `replication − 1` servers (its *chain*). Send each server the ranges it holds with their initial parameters.
//! 2. When every server said where it listens, send everyone the chains and start the workers, each on the chunks it
//!    holds.
//! 3. Pass progress on; when every worker that is still there has finished, say so (the run stays open for the
//!    driver to fetch the model and end it).
//!
//! Losses: a lost worker is dropped — every range's head is told to treat it as gone (`Leave`), which releases the
//! pulls waiting on its clock — and the others go on. A lost server is removed from every chain it was in: the next
//! member of a chain becomes its head (or the previous its tail), everyone is told the new chains, and the workers
//! re-send what the lost head had not acknowledged. A range whose every replica is lost ends the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Action, Error, Op, Role, Scheduler, WorkerId};
use crate::data::chunk_rows;
use crate::wire::{DatasetId, Message, PsRange};

/// What the driver asks for.
#[derive(Debug, Clone)]
pub(crate) struct PsPlan {
    pub job: String,
    pub dataset: DatasetId,
    pub config: Arc<Vec<u8>>,
    pub init: Vec<f32>,
    pub consistency: String,
    pub rule: String,
    pub replication: usize,
    pub batch: u32,
    pub clocks: u64,
    pub seed: u64,
    pub blocks: Option<(u64, f32, u32)>,
    pub jitter: f32,
    pub progress_every: u64,
}

/// One progress report of a worker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PsProgress {
    pub worker: u32,
    pub clock: u64,
    pub loss_sum: f64,
    pub correct: u64,
    pub rows: u64,
    pub waited: Duration,
    pub at: Duration,
}

/// What a worker of the run did.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct PsWorkerFigures {
    pub label: String,
    pub clocks: u64,
    pub lost: bool,
    pub pushed_bytes: u64,
    pub pulled_bytes: u64,
    pub pushes: u64,
    pub pulls: u64,
    pub busy: Duration,
    pub waited: Duration,
}

/// One range's parameters and its server core's encoded metrics.
type Fetched = (Vec<f32>, Vec<u8>);

#[derive(Debug)]
pub(crate) struct PsOp {
    pub run: u64,
    pub job: String,
    plan: PsPlan,
    servers: Vec<WorkerId>,
    server_alive: Vec<bool>,
    addrs: Vec<Option<(String, u16)>>,
    bounds: Vec<u64>,
    chains: Vec<Vec<u32>>,
    workers: Vec<WorkerId>,
    figures: Vec<PsWorkerFigures>,
    done: Vec<bool>,
    running: bool,
    finished: bool,
    /// A fetch in progress: its request id and, per range, the values and encoded metrics received.
    fetch: Option<(u64, BTreeMap<u32, Fetched>)>,
    /// Losses not yet recovered from: the failure's index and the workers still to report progress after it.
    recovering: Vec<(usize, Vec<u32>)>,
}

impl PsOp {
    /// Every process of the run still there (to end it).
    pub fn participants(&self) -> Vec<WorkerId> {
        let servers = self.servers.iter().zip(&self.server_alive).filter(|(_, a)| **a).map(|(w, _)| *w);
        let workers = self.workers.iter().zip(&self.figures).filter(|(_, f)| !f.lost).map(|(w, _)| *w);
        servers.chain(workers).collect()
    }
}

impl Scheduler {
    /// Starts parameter-server run `run` of `plan` on the live servers and the live compute workers holding the
    /// dataset.
    pub fn ps_start(&mut self, now: Duration, run: u64, plan: PsPlan) {
        self.now = now;
        if !self.usable() || !self.check_job(&plan.job, plan.dataset) {
            return;
        }
        let servers = self.live_servers();
        let workers: Vec<WorkerId> = {
            let d = &self.datasets[&plan.dataset];
            self.live().into_iter().filter(|w| !d.chunks_of(*w).is_empty()).collect()
        };
        let n = servers.len();
        let keys = plan.init.len() as u64;
        let bad = |detail: String| Error::Protocol { worker: "parameter-server run".into(), detail };
        if n == 0 {
            self.fail(bad("no parameter servers: start some with ClusterBuilder::servers (--servers N)".into()));
            return;
        }
        if plan.replication == 0 || plan.replication > n {
            let detail = format!("replication {} needs between 1 and {n} servers (there are {n})", plan.replication);
            self.fail(bad(detail));
            return;
        }
        if keys < n as u64 || workers.is_empty() {
            self.fail(bad(format!("{keys} parameters over {n} servers and {} workers with data", workers.len())));
            return;
        }
        let bounds: Vec<u64> =
            (0..=n).map(|r| if r == n { keys } else { chunk_rows(keys as usize, n, r).start as u64 }).collect();
        let chains: Vec<Vec<u32>> =
            (0..n).map(|r| (0..plan.replication).map(|k| ((r + k) % n) as u32).collect()).collect();
        for (s, &w) in servers.iter().enumerate() {
            let mut ranges = Vec::new();
            let mut init = Vec::new();
            for (r, chain) in chains.iter().enumerate() {
                if chain.contains(&(s as u32)) {
                    let (lo, hi) = (bounds[r], bounds[r + 1]);
                    ranges.push(PsRange { range: r as u32, lo, hi });
                    <f32 as crate::wire::Scalar>::extend_le(&plan.init[lo as usize..hi as usize], &mut init);
                }
            }
            let msg = Message::PsServe {
                run,
                server: s as u32,
                ranges,
                workers: workers.len() as u32,
                consistency: plan.consistency.clone(),
                rule: plan.rule.clone(),
            };
            self.send(w, msg, init);
        }
        let figures = workers
            .iter()
            .map(|w| PsWorkerFigures { label: self.label(*w).to_string(), ..PsWorkerFigures::default() })
            .collect();
        self.op = Op::Ps(Box::new(PsOp {
            run,
            job: plan.job.clone(),
            server_alive: vec![true; n],
            addrs: vec![None; n],
            servers,
            bounds,
            chains,
            done: vec![false; workers.len()],
            workers,
            figures,
            running: false,
            finished: false,
            fetch: None,
            recovering: Vec::new(),
            plan: PsPlan { init: Vec::new(), ..plan },
        }));
    }

    pub(super) fn ps_listening(&mut self, worker: WorkerId, run: u64, host: String, port: u16) {
        let Op::Ps(op) = &mut self.op else { return };
        let Some(s) = op.servers.iter().position(|&w| w == worker) else { return };
        if op.run != run || op.running {
            return;
        }
        op.addrs[s] = Some((host, port));
        if op.addrs.iter().all(Option::is_some) {
            op.running = true;
            self.ps_send_chains();
            let Op::Ps(op) = &self.op else { unreachable!() };
            let mut sends = Vec::new();
            let d = &self.datasets[&op.plan.dataset];
            for (i, &w) in op.workers.iter().enumerate() {
                let chunks = super::placement::runs(d.chunks_of(w));
                let msg = Message::PsRun {
                    run,
                    job: op.plan.job.clone(),
                    dataset: op.plan.dataset,
                    worker: i as u32,
                    chunks,
                    bounds: op.bounds.clone(),
                    batch: op.plan.batch,
                    clocks: op.plan.clocks,
                    seed: op.plan.seed,
                    blocks: op.plan.blocks,
                    jitter: op.plan.jitter,
                    progress_every: op.plan.progress_every,
                };
                sends.push((w, msg, op.plan.config.to_vec()));
            }
            for (w, msg, payload) in sends {
                self.send(w, msg, payload);
            }
        }
    }

    /// Tells every server and worker of the run the current chains.
    fn ps_send_chains(&mut self) {
        let Op::Ps(op) = &self.op else { return };
        let addrs: Vec<(String, u16)> = op.addrs.iter().map(|a| a.clone().unwrap_or_default()).collect();
        let msg = Message::PsChains { run: op.run, chains: op.chains.clone(), addrs };
        for w in op.participants() {
            self.send(w, msg.clone(), Vec::new());
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn ps_progress(
        &mut self,
        run: u64,
        worker: u32,
        clock: u64,
        loss_sum: f64,
        correct: u64,
        rows: u64,
        waited_us: u64,
    ) {
        let Op::Ps(op) = &mut self.op else { return };
        if op.run != run {
            return;
        }
        if let Some(f) = op.figures.get_mut(worker as usize) {
            f.clocks = f.clocks.max(clock);
        }
        self.ps_heard_from(worker);
        let waited = Duration::from_micros(waited_us);
        let p = PsProgress { worker, clock, loss_sum, correct, rows, waited, at: self.now };
        self.actions.push_back(Action::PsProgress(p));
    }

    pub(super) fn ps_done(
        &mut self,
        run: u64,
        worker: u32,
        clock: u64,
        traffic: (u64, u64, u64, u64),
        busy: u64,
        waited: u64,
    ) {
        let Op::Ps(op) = &mut self.op else { return };
        if op.run != run {
            return;
        }
        if let (Some(f), Some(d)) = (op.figures.get_mut(worker as usize), op.done.get_mut(worker as usize)) {
            *d = true;
            f.clocks = clock;
            (f.pushed_bytes, f.pulled_bytes, f.pushes, f.pulls) = traffic;
            f.busy = Duration::from_micros(busy);
            f.waited = Duration::from_micros(waited);
        }
        self.ps_heard_from(worker);
        self.ps_check_finished();
    }

    /// Worker `worker` made progress: a loss is recovered from once every worker still running has.
    fn ps_heard_from(&mut self, worker: u32) {
        let Op::Ps(op) = &mut self.op else { return };
        let now = self.now;
        op.recovering.retain_mut(|(failure, waiting)| {
            waiting.retain(|&w| w != worker);
            if waiting.is_empty() {
                if let Some(f) = self.failures.get_mut(*failure) {
                    f.recovered = Some(now);
                }
            }
            !waiting.is_empty()
        });
    }

    /// Notes a loss to be recovered from by the workers still running (the failure was just recorded).
    fn ps_await_recovery(&mut self) {
        let failure = self.failures.len().saturating_sub(1);
        let Op::Ps(op) = &mut self.op else { return };
        let waiting: Vec<u32> =
            (0..op.workers.len() as u32).filter(|&i| !op.done[i as usize] && !op.figures[i as usize].lost).collect();
        if waiting.is_empty() {
            if let Some(f) = self.failures.get_mut(failure) {
                f.recovered = Some(self.now);
            }
        } else {
            op.recovering.push((failure, waiting));
        }
    }

    fn ps_check_finished(&mut self) {
        let Op::Ps(op) = &mut self.op else { return };
        if !op.finished && op.running && op.done.iter().zip(&op.figures).all(|(d, f)| *d || f.lost) {
            op.finished = true;
            self.rounds += 1;
            self.actions.push_back(Action::PsFinished);
        }
    }

    /// Asks the head of every range for its parameters (and metrics); the answer comes as [`Action::PsFetched`].
    pub fn ps_fetch(&mut self, now: Duration) {
        self.now = now;
        let req = self.new_req();
        let Op::Ps(op) = &mut self.op else { return };
        if !op.running || op.fetch.is_some() {
            return;
        }
        op.fetch = Some((req, BTreeMap::new()));
        let (run, last) = (op.run, op.finished);
        let sends: Vec<(WorkerId, Message)> = op
            .chains
            .iter()
            .enumerate()
            .filter_map(|(r, c)| {
                c.first().map(|&s| (op.servers[s as usize], Message::PsFetch { run, range: r as u32, req, last }))
            })
            .collect();
        for (w, msg) in sends {
            self.send(w, msg, Vec::new());
        }
    }

    pub(super) fn ps_fetched(&mut self, run: u64, range: u32, req: u64, metrics_len: u64, payload: Vec<u8>) {
        let Op::Ps(op) = &mut self.op else { return };
        let Some((want, parts)) = &mut op.fetch else { return };
        if op.run != run || *want != req || metrics_len > payload.len() as u64 {
            return;
        }
        let split = payload.len() - metrics_len as usize;
        let Ok(values) = crate::wire::codec::scalars_from_le::<f32>(&payload[..split]) else { return };
        parts.insert(range, (values, payload[split..].to_vec()));
        if parts.len() == op.chains.len() {
            let (_, parts) = op.fetch.take().expect("present");
            let mut params = Vec::with_capacity(*op.bounds.last().unwrap_or(&0) as usize);
            let mut metrics = Vec::new();
            for (_, (values, m)) in parts {
                params.extend(values);
                metrics.push(m);
            }
            self.actions.push_back(Action::PsFetched { params, metrics });
        }
    }

    /// Ends the run: every process stops its threads.
    pub fn ps_end(&mut self) -> Vec<PsWorkerFigures> {
        let Op::Ps(op) = std::mem::replace(&mut self.op, Op::Idle) else { return Vec::new() };
        for w in op.participants() {
            self.send(w, Message::PsEnd { run: op.run }, Vec::new());
        }
        for f in self.failures.iter_mut().filter(|f| f.recovered.is_none()) {
            f.recovered = Some(self.now);
        }
        op.figures
    }

    /// A process of the run was lost: drop a worker, or take a server out of its chains.
    pub(super) fn ps_lost(&mut self, worker: WorkerId, role: Role, error: &Error) {
        let Op::Ps(op) = &mut self.op else { return };
        match role {
            Role::Compute => {
                let Some(i) = op.workers.iter().position(|&w| w == worker) else { return };
                op.figures[i].lost = true;
                if op.done[i] {
                    return; // it had finished; its pushes are all acknowledged
                }
                let run = op.run;
                let leave = postcard::to_allocvec(&crate::ps::Request::Leave { worker: i as u32 }).unwrap_or_default();
                let heads: Vec<(u32, WorkerId)> = op
                    .chains
                    .iter()
                    .enumerate()
                    .filter_map(|(r, c)| c.first().map(|&s| (r as u32, op.servers[s as usize])))
                    .collect();
                if op.figures.iter().all(|f| f.lost) {
                    let detail = format!("every worker of the parameter-server run was lost (last: {error})");
                    self.fail(Error::Protocol { worker: "parameter-server run".into(), detail });
                    return;
                }
                for (range, w) in heads {
                    self.send(w, Message::PsInject { run, range }, leave.clone());
                }
                self.ps_await_recovery();
                self.ps_check_finished();
            }
            Role::Server => {
                let Some(s) = op.servers.iter().position(|&w| w == worker) else { return };
                op.server_alive[s] = false;
                if !op.running {
                    let detail = format!("a parameter server was lost while the run started: {error}");
                    self.fail(Error::Protocol { worker: "parameter-server run".into(), detail });
                    return;
                }
                for c in &mut op.chains {
                    c.retain(|&m| m != s as u32);
                }
                if let Some(r) = op.chains.iter().position(Vec::is_empty) {
                    let (lo, hi) = (op.bounds[r], op.bounds[r + 1]);
                    let detail = format!(
                        "parameter server {s} held the last replica of keys {lo}..{hi} and was lost ({error}); run with \
                         --replication 2 or more to survive a server's loss"
                    );
                    self.fail(Error::Protocol { worker: "parameter-server run".into(), detail });
                    return;
                }
                // A fetch waiting on the lost server's ranges asks again.
                let refetch = op.fetch.take().is_some();
                self.ps_send_chains();
                self.ps_await_recovery();
                if refetch {
                    let now = self.now;
                    self.ps_fetch(now);
                }
            }
        }
    }
}
