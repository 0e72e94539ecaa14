//! A worker's side of a parameter-server run: a thread in the worker process that owns the training loop. Each
//! clock it draws its mini-batch (a pure function of the run's seed, its index and the clock), pulls the keys the
//! batch needs from the head of each range's chain, computes the gradient with the user's job, pushes it, and
//! declares the clock complete; replies come from the chains' tails. A [`ClientCore`] keeps the protocol state
//! (sequence numbers, unacknowledged pushes, pull parts), so after a server is lost the worker re-sends to the new
//! head exactly what was not acknowledged.
//!
//! With model block scheduling the worker keeps its own copy of a dense model: quiet blocks are pulled less often
//! (their values come from the copy) and their accumulated updates pushed only once they matter.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::link::{connect, Link, LinkEvent, Peer, PsFrame};
use super::server::Notify;
use crate::data::resident::ResidentDataset;
use crate::ps::job::{ErasedPsJob, Sampler};
use crate::ps::{BatchStats, BlockConfig, BlockFilter, ClientCore, ClientEvent, Selection, Update};
use crate::rng::Rng;
use crate::wire::handshake::Secret;
use crate::wire::{Message, WorkerFailure};

/// What the process's main loop hands the training thread from the master.
#[derive(Debug)]
pub(crate) enum Control {
    Chains { chains: Vec<Vec<u32>>, addrs: Vec<(String, u16)> },
    End,
}

enum Event {
    Link(LinkEvent),
    Control(Control),
}

/// The running training thread, as the process's main loop sees it.
pub(crate) struct TrainerHandle {
    events: Sender<Event>,
}

impl TrainerHandle {
    /// Passes a message from the master on to the training thread.
    pub fn control(&self, c: Control) {
        let _ = self.events.send(Event::Control(c));
    }
}

/// Everything a worker needs to train.
pub(crate) struct TrainSpec {
    pub run: u64,
    pub worker: u32,
    pub job: Arc<dyn ErasedPsJob>,
    pub config: Vec<u8>,
    pub data: ResidentDataset,
    pub chunks: Vec<Range<u32>>,
    pub bounds: Vec<u64>,
    pub batch: u32,
    pub clocks: u64,
    pub seed: u64,
    pub blocks: Option<(u64, f32, u32)>,
    pub jitter: f32,
    pub slowdown: f32,
    pub progress_every: u64,
    pub chains: Vec<Vec<u32>>,
    pub addrs: Vec<(String, u16)>,
    pub secret: Secret,
}

/// Longest a worker waits for any answer before it reports itself stuck (the master's failure detector normally
/// resolves a lost server or worker long before).
const STUCK: Duration = Duration::from_secs(600);
/// How long connecting to a server may take.
const CONNECT: Duration = Duration::from_secs(20);
/// After a chain changed, how long a worker waits for any answer before it re-sends everything unanswered to the
/// heads again (a request sent while a server still had the old chains may have gone to the lost server).
const RETRY: Duration = Duration::from_millis(500);

/// Starts training; the thread reports `PsProgress` and `PsDone` (or `Failed`) to the master through `notify`.
pub(crate) fn start(spec: TrainSpec, notify: Notify) -> Result<TrainerHandle, String> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let events = tx.clone();
    std::thread::Builder::new()
        .name("cohort-ps-train".into())
        .spawn(move || {
            let (run, worker) = (spec.run, spec.worker);
            // A run the master ended early (it stopped a diverging run, or gave up) is no failure of this worker.
            let result = Trainer::new(spec, events, notify.clone()).and_then(|mut t| {
                let r = t.run(&rx);
                if t.ended {
                    Ok(())
                } else {
                    r
                }
            });
            if let Err(failure) = result {
                let error = format!("parameter-server worker {worker} of run {run}: {failure}");
                notify(Message::Failed { req: run, failure: WorkerFailure::Panicked { message: error } }, Vec::new());
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(TrainerHandle { events: tx })
}

struct Trainer {
    spec: TrainSpec,
    client: ClientCore,
    links: HashMap<u32, Link>,
    events: Sender<Event>,
    notify: Notify,
    /// Dense model copy and block filter, with block scheduling.
    blocks: Option<(BlockFilter, Vec<f32>)>,
    traffic: (u64, u64, u64, u64),
    waited: Duration,
    since_report: (BatchStats, Duration),
    /// Whether a chain has changed during the run (then silences are met with re-sends).
    failed_over: bool,
    /// Whether the master ended the run before this worker finished.
    ended: bool,
}

impl Trainer {
    fn new(spec: TrainSpec, events: Sender<Event>, notify: Notify) -> Result<Trainer, String> {
        let client = ClientCore::new(spec.worker, spec.bounds.clone()).map_err(|e| e.to_string())?;
        let blocks = match spec.blocks {
            Some((block, threshold, max_period)) => {
                let keys = 0..*spec.bounds.last().unwrap_or(&0);
                let n = keys.end as usize;
                let filter =
                    BlockFilter::new(BlockConfig { block, threshold, max_period }, keys).map_err(|e| e.to_string())?;
                Some((filter, vec![0.0; n]))
            }
            None => None,
        };
        let mut t = Trainer {
            spec,
            client,
            links: HashMap::new(),
            events,
            notify,
            blocks,
            traffic: (0, 0, 0, 0),
            waited: Duration::ZERO,
            since_report: (BatchStats::default(), Duration::ZERO),
            failed_over: false,
            ended: false,
        };
        for s in 0..t.spec.addrs.len() as u32 {
            t.connect(s)?;
        }
        Ok(t)
    }

    fn connect(&mut self, s: u32) -> Result<(), String> {
        let (host, port) = self.spec.addrs.get(s as usize).cloned().ok_or("no address for a server")?;
        let stream = connect(&host, port, self.spec.run, Peer::Worker(self.spec.worker), &self.spec.secret, CONNECT)?;
        let link = Link::start(stream, Peer::Server(s), self.events.clone(), Event::Link).map_err(|e| e.to_string())?;
        self.links.insert(s, link);
        Ok(())
    }

    fn head(&self, range: usize) -> Option<&Link> {
        let s = self.spec.chains.get(range)?.first()?;
        self.links.get(s)
    }

    /// Sends requests to the heads of their ranges; a request too large for a frame fails the worker.
    fn send(&mut self, requests: Vec<(usize, crate::ps::Request)>) -> Result<(), String> {
        for (range, request) in requests {
            if let Some(link) = self.head(range) {
                link.send(&PsFrame::Request { range: range as u32, request })?;
            }
        }
        Ok(())
    }

    fn run(&mut self, rx: &Receiver<Event>) -> Result<(), String> {
        let rows = self.spec.job.rows(&self.spec.data, &self.spec.chunks);
        let mut sampler = Sampler::new(self.spec.seed, self.spec.worker, rows, self.spec.batch as usize);
        let started = Instant::now();
        let mut grad = Vec::new();
        let mut rng = Rng::derive(self.spec.seed, 0x6a69_7474_6572 ^ u64::from(self.spec.worker));
        for clock in 0..self.spec.clocks {
            let batch = sampler.batch(clock).to_vec();
            let mut prepared = self
                .spec
                .job
                .prepare(&self.spec.config, &self.spec.data, &self.spec.chunks, &batch)
                .map_err(|e| e.to_string())?;
            let keys = prepared.keys().clone();
            let params = self.read(clock, &keys, rx)?;
            let t = Instant::now();
            let stats = prepared.gradient(&params, &mut grad).map_err(|e| e.to_string())?;
            let compute = t.elapsed();
            let factor = self.spec.slowdown.max(1.0) * (1.0 + self.spec.jitter.max(0.0) * rng.uniform() as f32);
            if factor > 1.0 {
                std::thread::sleep(compute.mul_f32(factor - 1.0));
            }
            let update = match keys {
                Selection::Range { start, .. } => Update::Dense { range_start: start, values: grad.clone() },
                Selection::Keys(keys) => Update::Sparse { keys, values: grad.clone() },
            };
            self.write(clock, update)?;
            let requests = self.client.advance();
            self.send(requests)?;
            self.since_report.0.add(stats);
            if self.spec.progress_every > 0 && (clock + 1) % self.spec.progress_every == 0 {
                self.report(clock + 1);
            }
            self.drain(rx)?;
        }
        // Whatever block scheduling held back goes out, then every push must be acknowledged.
        if let Some((filter, _)) = &mut self.blocks {
            for update in filter.flush() {
                let requests = self.client.push(update).map_err(|e| e.to_string())?;
                self.count_push(&requests);
                self.send(requests)?;
            }
        }
        let deadline = Instant::now() + STUCK;
        while self.client.unacked() > 0 {
            self.wait_one(rx, deadline)?;
        }
        let requests = self.client.leave();
        self.send(requests)?;
        // The rows since the last report (none when the last clock was itself a report's).
        if self.since_report.0.rows > 0 {
            self.report(self.spec.clocks);
        }
        let msg = Message::PsDone {
            run: self.spec.run,
            worker: self.spec.worker,
            clock: self.spec.clocks,
            traffic: self.traffic,
            busy_us: started.elapsed().as_micros() as u64,
            waited_us: self.waited.as_micros() as u64,
        };
        (self.notify)(msg, Vec::new());
        // Stay until the master ends the run: a server failover may still need re-sends.
        loop {
            match rx.recv() {
                Ok(Event::Control(Control::End)) | Err(_) => return Ok(()),
                Ok(e) => self.handle(e)?,
            }
        }
    }

    /// The values of `keys` to compute with at `clock`.
    fn read(&mut self, clock: u64, keys: &Selection, rx: &Receiver<Event>) -> Result<Vec<f32>, String> {
        let selections = match (&mut self.blocks, keys) {
            (Some((filter, _)), Selection::Range { start, end }) => filter
                .due(clock, *start..*end)
                .into_iter()
                .map(|r| Selection::Range { start: r.start, end: r.end })
                .collect(),
            (Some(_), Selection::Keys(_)) => {
                return Err("model block scheduling works on dense models (jobs that read a key range)".into())
            }
            (None, k) => vec![k.clone()],
        };
        let mut waiting = HashMap::new();
        for sel in &selections {
            let (id, requests) = self.client.pull(sel).map_err(|e| e.to_string())?;
            self.traffic.1 += sel.payload_bytes();
            self.traffic.3 += 1;
            waiting.insert(id, sel.clone());
            self.send(requests)?;
        }
        let t = Instant::now();
        let deadline = t + STUCK;
        let mut got: Vec<(Selection, Vec<f32>)> = Vec::new();
        while !waiting.is_empty() {
            if let Some((id, values)) = self.wait_one(rx, deadline)? {
                if let Some(sel) = waiting.remove(&id) {
                    self.traffic.1 += values.len() as u64 * 4;
                    got.push((sel, values));
                }
            }
        }
        self.waited += t.elapsed();
        self.since_report.1 += t.elapsed();
        match &mut self.blocks {
            Some((filter, copy)) => {
                let runs: Vec<(u64, &[f32], &[f32])> = got
                    .iter()
                    .filter_map(|(sel, values)| match sel {
                        Selection::Range { start, .. } => {
                            let at = *start as usize;
                            Some((*start, &copy[at..at + values.len()], values.as_slice()))
                        }
                        Selection::Keys(_) => None,
                    })
                    .collect();
                filter.pulled_ranges(clock, &runs);
                for (sel, values) in got {
                    if let Selection::Range { start, .. } = sel {
                        let at = start as usize;
                        copy[at..at + values.len()].copy_from_slice(&values);
                    }
                }
                let Selection::Range { start, end } = keys else { unreachable!("checked above") };
                Ok(copy[*start as usize..*end as usize].to_vec())
            }
            None => Ok(got.into_iter().next().map(|(_, v)| v).unwrap_or_default()),
        }
    }

    fn write(&mut self, clock: u64, update: Update) -> Result<(), String> {
        let updates = match &mut self.blocks {
            Some((filter, _)) => {
                filter.add(clock, &update).map_err(|e| e.to_string())?;
                filter.take(clock)
            }
            None => vec![update],
        };
        for update in updates {
            let requests = self.client.push(update).map_err(|e| e.to_string())?;
            self.count_push(&requests);
            self.send(requests)?;
        }
        Ok(())
    }

    fn count_push(&mut self, requests: &[(usize, crate::ps::Request)]) {
        for (_, r) in requests {
            if let crate::ps::Request::Push { update, .. } = r {
                self.traffic.0 += update.payload_bytes();
                self.traffic.2 += 1;
            }
        }
    }

    /// Handles events until one completes a pull; returns it.
    fn wait_one(&mut self, rx: &Receiver<Event>, deadline: Instant) -> Result<Option<(u64, Vec<f32>)>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if self.failed_over { left.min(RETRY) } else { left };
        match rx.recv_timeout(wait) {
            Ok(Event::Link(LinkEvent::Frame(Peer::Server(_), PsFrame::Reply { range, reply }))) => {
                match self.client.on_reply(range as usize, reply).map_err(|e| e.to_string())? {
                    Some(ClientEvent::Pulled(p)) => Ok(Some((p.id, p.values))),
                    Some(ClientEvent::Rejected { error, .. }) => Err(format!("a server refused a request: {error}")),
                    _ => Ok(None),
                }
            }
            Ok(e) => {
                self.handle(e)?;
                Ok(None)
            }
            Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                self.resend_all()?;
                Ok(None)
            }
            Err(RecvTimeoutError::Timeout) => Err(format!("no answer from the parameter servers for {STUCK:?}")),
            Err(RecvTimeoutError::Disconnected) => Err("the worker process is shutting down".into()),
        }
    }

    /// Handles what is already queued without waiting.
    fn drain(&mut self, rx: &Receiver<Event>) -> Result<(), String> {
        while let Ok(e) = rx.try_recv() {
            match e {
                Event::Link(LinkEvent::Frame(Peer::Server(_), PsFrame::Reply { range, reply })) => {
                    if let Some(ClientEvent::Rejected { error, .. }) =
                        self.client.on_reply(range as usize, reply).map_err(|e| e.to_string())?
                    {
                        return Err(format!("a server refused a request: {error}"));
                    }
                }
                other => self.handle(other)?,
            }
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Control(Control::Chains { chains, addrs }) => {
                self.spec.chains = chains;
                self.spec.addrs = addrs;
                // The head gets again what was not answered: a new head never saw it, and an old head may have
                // passed it to a lost successor. Sequence numbers make the re-sends harmless.
                self.failed_over = true;
                self.resend_all()?;
            }
            Event::Control(Control::End) => {
                self.ended = true;
                return Err("the master ended the run early".into());
            }
            Event::Link(LinkEvent::Closed(_)) => {} // the master decides what a lost server means
            Event::Link(LinkEvent::Frame(Peer::Server(_), PsFrame::Reply { range, reply })) => {
                self.client.on_reply(range as usize, reply).map_err(|e| e.to_string())?;
            }
            Event::Link(LinkEvent::Frame(peer, _)) => return Err(format!("unexpected frame from {peer:?}")),
        }
        Ok(())
    }

    /// Re-sends every range's unanswered requests to its head.
    fn resend_all(&mut self) -> Result<(), String> {
        for range in 0..self.spec.chains.len() {
            let requests = self.client.resend(range);
            self.send(requests.into_iter().map(|r| (range, r)).collect())?;
        }
        Ok(())
    }

    fn report(&mut self, clock: u64) {
        let (stats, waited) = std::mem::take(&mut self.since_report);
        let msg = Message::PsProgress {
            run: self.spec.run,
            worker: self.spec.worker,
            clock,
            loss_sum: stats.loss_sum,
            correct: stats.correct,
            rows: stats.rows,
            waited_us: waited.as_micros() as u64,
        };
        (self.notify)(msg, Vec::new());
    }
}
