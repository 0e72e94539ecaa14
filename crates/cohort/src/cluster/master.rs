//! The master: starts workers, loads datasets onto them, runs rounds and combines the partial results.
//!
//! All waiting goes through one event channel fed by the connections' reader threads, with a timeout: a worker
//! whose connection closes is noticed at once, and one that goes silent (no frame, not even a heartbeat, for
//! `heartbeat_timeout`) is declared stalled. Nothing here waits forever.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::conn::{Conn, Counters, Event, EventKind};
use super::process::WorkerProcess;
use super::spec::WorkerSpec;
use crate::data::{assign_chunks, Dataset, Element};
use crate::job::MapReduce;
use crate::tree::Tree;
use crate::wire::handshake::{MasterHandshake, Secret, WorkerHello};
use crate::wire::{ChunkMeta, DatasetId, ElemType, Message, Payload, WireError};
use crate::{Error, Result};

/// Configures and starts a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    specs: Vec<WorkerSpec>,
    program: Option<PathBuf>,
    expected_binary: Option<[u8; 32]>,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    handshake_timeout: Duration,
    forward_stderr: bool,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            specs: Vec::new(),
            program: None,
            expected_binary: None,
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(60),
            forward_stderr: true,
        }
    }
}

impl ClusterBuilder {
    /// The worker groups to start.
    pub fn workers(mut self, specs: Vec<WorkerSpec>) -> Self {
        self.specs = specs;
        self
    }

    /// Runs workers from this executable instead of the current one. It must call
    /// [`run_if_worker`](super::worker::run_if_worker) with a registry holding the jobs you run.
    pub fn worker_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Expects workers to report this binary hash instead of the worker program's own (mainly for tests).
    pub fn expect_binary_sha256(mut self, hash: [u8; 32]) -> Self {
        self.expected_binary = Some(hash);
        self
    }

    /// How often workers send heartbeats (default 500 ms).
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat_interval = d;
        self
    }

    /// How long a worker may stay silent before it is declared stalled (default 20 s).
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = d;
        self
    }

    /// How long starting a worker and completing its handshake may take (default 60 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// Whether worker stderr lines are copied to the master's stderr, prefixed with the worker (default on).
    pub fn forward_stderr(mut self, on: bool) -> Self {
        self.forward_stderr = on;
        self
    }

    /// Starts every worker, completes every handshake, and returns the running cluster. If any worker fails to
    /// start, the ones already started are stopped before the error is returned.
    pub fn start(self) -> Result<Cluster> {
        let total: usize = self.specs.iter().map(WorkerSpec::slots).sum();
        if total == 0 {
            return Err(Error::NoWorkers);
        }
        let program = match &self.program {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| Error::Launch {
                worker: "local workers".into(),
                reason: format!("cannot find own executable: {e}"),
            })?,
        };
        let expected = match (self.expected_binary, &self.program) {
            (Some(h), _) => h,
            (None, Some(p)) => crate::wire::file_sha256(p).map_err(|e| Error::Launch {
                worker: "local workers".into(),
                reason: format!("cannot read worker program {}: {e}", p.display()),
            })?,
            (None, None) => crate::wire::own_binary_sha256()
                .map_err(|e| Error::Launch { worker: "local workers".into(), reason: e.to_string() })?,
        };
        let secret = Secret::generate();
        let (events_tx, events) = crossbeam_channel::unbounded();
        let counters = Arc::new(Counters::default());
        let epoch = Instant::now();
        let mut cluster = Cluster {
            workers: Vec::with_capacity(total),
            events,
            events_tx,
            counters,
            epoch,
            datasets: HashMap::new(),
            round: 0,
            rounds_run: 0,
            heartbeat_timeout: self.heartbeat_timeout,
            broken: None,
        };
        for spec in &self.specs {
            match spec {
                WorkerSpec::Local { count } => {
                    for _ in 0..*count {
                        cluster.spawn_local(&program, &secret, self.forward_stderr)?;
                    }
                }
            }
        }
        cluster.handshake_all(&MasterHandshake::new(secret, expected), &self)?;
        Ok(cluster)
    }
}

/// What the master knows about one worker.
struct WorkerSlot {
    label: String,
    conn: Conn,
    process: Option<WorkerProcess>,
    hello: Option<WorkerHello>,
}

/// Where a loaded dataset lives.
struct Placement {
    elem: ElemType,
    chunks: u32,
    ranges: Vec<Range<u32>>,
}

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
    /// Worker processes.
    pub workers: usize,
    /// Map-reduce rounds completed.
    pub rounds: u64,
    /// Bytes written to workers, frame prefixes included.
    pub bytes_sent: u64,
    /// Bytes read from workers, heartbeats included.
    pub bytes_received: u64,
}

/// A running set of workers.
pub struct Cluster {
    workers: Vec<WorkerSlot>,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    counters: Arc<Counters>,
    epoch: Instant,
    datasets: HashMap<DatasetId, Placement>,
    round: u64,
    rounds_run: u64,
    heartbeat_timeout: Duration,
    broken: Option<String>,
}

impl Cluster {
    /// A builder; at least [`workers`](ClusterBuilder::workers) must be set.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Number of workers.
    pub fn num_workers(&self) -> usize {
        self.workers.len()
    }

    /// Human-readable names of the workers, e.g. `worker 0 (local pid 4242)`.
    pub fn worker_labels(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.label.clone()).collect()
    }

    /// Traffic counters so far.
    pub fn stats(&self) -> Stats {
        Stats {
            workers: self.workers.len(),
            rounds: self.rounds_run,
            bytes_sent: self.counters.sent.load(Ordering::Relaxed),
            bytes_received: self.counters.received.load(Ordering::Relaxed),
        }
    }

    fn spawn_local(&mut self, program: &std::path::Path, secret: &Secret, forward: bool) -> Result<()> {
        let id = self.workers.len();
        let (process, stdout, stdin) =
            WorkerProcess::spawn_local(program, secret, format!("worker {id}"), forward).map_err(|e| {
                Error::Launch { worker: format!("worker {id} (local {})", program.display()), reason: e.to_string() }
            })?;
        let label = format!("worker {id} (local pid {})", process.pid());
        let conn = Conn::start(
            id,
            Box::new(stdout),
            Box::new(stdin),
            self.events_tx.clone(),
            Arc::clone(&self.counters),
            self.epoch,
        )
        .map_err(|e| Error::Launch { worker: label.clone(), reason: format!("cannot start I/O threads: {e}") })?;
        self.workers.push(WorkerSlot { label, conn, process: Some(process), hello: None });
        Ok(())
    }

    fn handshake_all(&mut self, hs: &MasterHandshake, cfg: &ClusterBuilder) -> Result<()> {
        let hello = Arc::new(Vec::new());
        for w in &self.workers {
            w.conn.send(&hs.hello(), Arc::clone(&hello))?;
        }
        let deadline = Instant::now() + cfg.handshake_timeout;
        let mut pending: BTreeSet<usize> = (0..self.workers.len()).collect();
        let hb_ms = cfg.heartbeat_interval.as_millis().clamp(1, u32::MAX as u128) as u32;
        while let Some(&first) = pending.first() {
            let (w, msg, _) =
                self.next_event(Some(deadline), || "the handshakes".to_string()).map_err(|e| match e {
                    Error::Timeout { after, .. } => {
                        Error::Timeout { what: format!("the handshake of {}", self.workers[first].label), after }
                    }
                    e => e,
                })?;
            if !pending.remove(&w) {
                continue;
            }
            match hs.on_reply(msg, w as u32, hb_ms) {
                Ok((welcome, hello)) => {
                    self.workers[w].conn.send(&welcome, Arc::new(Vec::new()))?;
                    self.workers[w].hello = Some(hello);
                }
                Err((source, reject)) => {
                    if let Some(reject) = reject {
                        let _ = self.workers[w].conn.send(&reject, Arc::new(Vec::new()));
                    }
                    return Err(Error::Handshake { worker: self.workers[w].label.clone(), source });
                }
            }
        }
        Ok(())
    }

    /// Sends a dataset's chunks to the workers (contiguous chunk ranges, as even as possible) and waits until they
    /// are resident. Loading the same dataset again is free: it is identified by content hash.
    pub fn load<T: Element>(&mut self, dataset: &Dataset<T>) -> Result<DatasetHandle<T>> {
        self.check_usable()?;
        let id = dataset.id();
        let handle = DatasetHandle {
            id,
            rows: dataset.rows(),
            cols: dataset.cols(),
            chunks: dataset.chunks(),
            _elem: PhantomData,
        };
        if self.datasets.contains_key(&id) {
            return Ok(handle);
        }
        let chunks = dataset.chunks() as u32;
        let ranges: Vec<Range<u32>> = assign_chunks(dataset.chunks(), self.workers.len())
            .into_iter()
            .map(|r| r.start as u32..r.end as u32)
            .collect();
        let mut pending = BTreeSet::new();
        for (w, range) in ranges.iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            for chunk in range.clone() {
                let rows = dataset.chunk_rows(chunk as usize);
                let meta = ChunkMeta {
                    dataset: id,
                    elem: T::TYPE,
                    cols: dataset.cols() as u32,
                    total_chunks: chunks,
                    chunk,
                    first_row: rows.start as u64,
                    rows: rows.len() as u32,
                    has_labels: dataset.labels().is_some(),
                };
                let mut payload = Vec::with_capacity((rows.len() * (dataset.cols() + 1)) * T::TYPE.size());
                T::extend_le(&dataset.values()[rows.start * dataset.cols()..rows.end * dataset.cols()], &mut payload);
                if let Some(labels) = dataset.labels() {
                    T::extend_le(&labels[rows.clone()], &mut payload);
                }
                self.workers[w].conn.send(&Message::LoadChunk(meta), Arc::new(payload))?;
            }
            self.workers[w].conn.send(&Message::LoadDone { dataset: id }, Arc::new(Vec::new()))?;
            pending.insert(w);
        }
        while !pending.is_empty() {
            let (w, msg, _) = self.next_event(None, || "datasets to load".into())?;
            match msg {
                Message::Loaded { dataset, .. } if dataset == id => {
                    pending.remove(&w);
                }
                Message::Failed { error, .. } => {
                    return Err(Error::JobFailed {
                        job: "load".into(),
                        worker: self.workers[w].label.clone(),
                        message: error,
                    })
                }
                _ => {}
            }
        }
        self.datasets.insert(id, Placement { elem: T::TYPE, chunks, ranges });
        Ok(handle)
    }

    /// Frees a dataset on every worker.
    pub fn unload<T>(&mut self, handle: DatasetHandle<T>) -> Result<()> {
        if self.datasets.remove(&handle.id).is_some() {
            for w in &self.workers {
                w.conn.send(&Message::DropDataset { dataset: handle.id }, Arc::new(Vec::new()))?;
            }
        }
        Ok(())
    }

    /// Runs one synchronous map-reduce round: every worker maps its resident chunks with `params`, and the partial
    /// results are combined in the fixed chunk tree. Bit-identical for any number of workers.
    pub fn run<J: MapReduce>(
        &mut self,
        job: &J,
        params: &J::Params,
        data: &DatasetHandle<J::Elem>,
    ) -> Result<J::Output> {
        self.check_usable()?;
        let placement = self.datasets.get(&data.id).ok_or_else(|| Error::UnknownDataset(hex::encode(&data.id[..8])))?;
        if placement.elem != J::Elem::TYPE {
            return Err(Error::ElemMismatch { job: J::NAME.into(), expected: J::Elem::TYPE, got: placement.elem });
        }
        for w in &self.workers {
            let jobs = w.hello.as_ref().map(|h| h.jobs.as_slice()).unwrap_or_default();
            if !jobs.iter().any(|j| j == J::NAME) {
                return Err(Error::UnknownJob { job: J::NAME.into(), available: jobs.to_vec() });
            }
        }
        self.round += 1;
        let round = self.round;
        let tree = Tree::new(placement.chunks);
        let params = Arc::new(params.to_bytes());
        let mut pending = BTreeSet::new();
        for (w, range) in placement.ranges.iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            let msg = Message::Map {
                round,
                job: J::NAME.to_string(),
                dataset: data.id,
                first_chunk: range.start,
                end_chunk: range.end,
            };
            self.workers[w].conn.send(&msg, Arc::clone(&params))?;
            pending.insert(w);
        }
        let mut parts = BTreeMap::new();
        while !pending.is_empty() {
            let (w, msg, payload) = self.next_event(None, || format!("round {round} of `{}`", J::NAME))?;
            match msg {
                Message::MapDone { round: r, nodes, .. } if r == round => {
                    let mut rest = payload.as_slice();
                    for (node, len) in nodes {
                        if rest.len() < len as usize {
                            return Err(self.protocol(w, "MapDone payload shorter than its node table"));
                        }
                        let (bytes, tail) = rest.split_at(len as usize);
                        rest = tail;
                        let value = J::Output::from_bytes(bytes).map_err(|e| {
                            self.protocol(w, &format!("cannot decode the result of `{}`: {e}", J::NAME))
                        })?;
                        parts.insert(node, value);
                    }
                    pending.remove(&w);
                }
                Message::Failed { round: r, error } if r == round => {
                    return Err(Error::JobFailed {
                        job: J::NAME.into(),
                        worker: self.workers[w].label.clone(),
                        message: error,
                    });
                }
                _ => {}
            }
        }
        let result = tree.finish(&mut parts, &mut |a, b| job.reduce(a, b)).map_err(|chunk| Error::Protocol {
            worker: "all workers".into(),
            detail: format!("no partial result covers chunk {chunk}"),
        })?;
        self.rounds_run += 1;
        Ok(result)
    }

    /// Stops every worker cleanly (waiting up to two seconds) and kills any that do not exit.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for w in &mut self.workers {
            let _ = w.conn.send(&Message::Shutdown, Arc::new(Vec::new()));
            w.conn.close();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        for w in &mut self.workers {
            if let Some(mut p) = w.process.take() {
                p.finish(deadline);
            }
        }
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(cause) => Err(Error::Protocol {
                worker: "cluster".into(),
                detail: format!("unusable after an earlier failure ({cause}); start a new cluster"),
            }),
            None => Ok(()),
        }
    }

    fn protocol(&mut self, w: usize, detail: &str) -> Error {
        let e = Error::Protocol { worker: self.workers[w].label.clone(), detail: detail.to_string() };
        self.broken = Some(e.to_string());
        e
    }

    /// Waits for the next frame other than a heartbeat, failing on a closed connection, a silent worker, or the
    /// deadline. The stall check runs on a fixed schedule, so a steady stream of other workers' heartbeats cannot
    /// hide a silent one.
    fn next_event(
        &mut self,
        deadline: Option<Instant>,
        what: impl Fn() -> String,
    ) -> Result<(usize, Message, Vec<u8>)> {
        let check_every = (self.heartbeat_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let started = Instant::now();
        let mut next_check = started + check_every;
        loop {
            let now = Instant::now();
            if now >= next_check {
                self.check_stalls(now)?;
                next_check = now + check_every;
            }
            if let Some(d) = deadline {
                if d <= now {
                    return Err(Error::Timeout { what: what(), after: d.saturating_duration_since(started) });
                }
            }
            let wake = deadline.map_or(next_check, |d| d.min(next_check));
            match self.events.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Event { worker, kind: EventKind::Frame(frame) }) => match frame.message {
                    Message::Heartbeat => continue,
                    msg => return Ok((worker, msg, frame.payload)),
                },
                Ok(Event { worker, kind: EventKind::Closed(err) }) => {
                    let e = self.died(worker, err);
                    self.broken = Some(e.to_string());
                    return Err(e);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => unreachable!("the cluster holds a sender"),
            }
        }
    }

    /// Fails if any handshaken worker has been silent for longer than the heartbeat timeout.
    fn check_stalls(&mut self, now: Instant) -> Result<()> {
        for w in &self.workers {
            if w.hello.is_none() {
                continue; // still in the handshake: the handshake deadline covers it
            }
            let silent = now.saturating_duration_since(w.conn.last_seen());
            if silent > self.heartbeat_timeout {
                let e = Error::WorkerStalled { worker: w.label.clone(), silent, timeout: self.heartbeat_timeout };
                self.broken = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Builds the error for a worker whose connection ended: exit status and stderr tail.
    fn died(&mut self, w: usize, err: Option<WireError>) -> Error {
        let slot = &mut self.workers[w];
        let (mut status, stderr_tail) = match &mut slot.process {
            Some(p) => (p.describe_exit(Duration::from_secs(2)), p.stderr_tail(Duration::from_millis(500))),
            None => ("connection lost".to_string(), Vec::new()),
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
