//! The master: starts workers, loads datasets onto them, runs rounds and combines the partial results.
//!
//! All waiting goes through one event channel fed by the connections' reader threads, with a timeout: a worker
//! whose connection closes is noticed at once, and one that goes silent (no frame, not even a heartbeat, for
//! `heartbeat_timeout`) is declared stalled. Nothing here waits forever.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::builder::{ClusterBuilder, DataChannel};
use super::conn::{Conn, Counters, Event, EventKind};
use super::process::WorkerProcess;

use super::ssh::SshHost;
use crate::data::{assign_chunks, Dataset, Element};
use crate::job::{Contribution, MapReduce, Multipass};
use crate::tree::Tree;
use crate::wire::handshake::{MasterHandshake, Secret, WorkerHello};
use crate::wire::{ChunkMeta, DatasetId, ElemType, Message, Payload, WireError};
use crate::{Error, Result};

/// What the master knows about one worker.
struct WorkerSlot {
    label: String,
    conn: Conn,
    process: Option<WorkerProcess>,
    hello: Option<WorkerHello>,
    /// Binary hash this worker must present.
    expected: [u8; 32],
    /// Handshake state until the worker is accepted.
    handshake: Option<MasterHandshake>,
    /// For ssh workers on a TCP data channel: the session's stdin, held open so the worker lives.
    _keepalive: Option<std::process::ChildStdin>,
}

/// Where a loaded dataset lives.
#[derive(Debug, Clone)]
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
    /// Open ssh connections; declared after `workers` so worker sessions close before their connection.
    hosts: Vec<SshHost>,
    /// Launcher processes that started several workers at once (`srun`), stopped after the workers.
    launchers: Vec<super::launch::LauncherProcess>,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    counters: Arc<Counters>,
    epoch: Instant,
    datasets: HashMap<DatasetId, Placement>,
    round: u64,
    rounds_run: u64,
    heartbeat_timeout: Duration,
    broken: Option<String>,
    sessions: u64,
}

/// A multipass session: identifies the worker-local states of the jobs run with it.
#[derive(Debug)]
pub struct Session {
    id: u64,
    seed: u64,
}

impl Session {
    /// The seed handed to workers.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Cluster {
    /// A cluster with no workers yet (the builder adds them).
    pub(super) fn empty(capacity: usize, heartbeat_timeout: Duration) -> Cluster {
        let (events_tx, events) = crossbeam_channel::unbounded();
        Cluster {
            workers: Vec::with_capacity(capacity),
            hosts: Vec::new(),
            launchers: Vec::new(),
            events,
            events_tx,
            counters: Arc::new(Counters::default()),
            epoch: Instant::now(),
            datasets: HashMap::new(),
            round: 0,
            rounds_run: 0,
            heartbeat_timeout,
            broken: None,
            sessions: 0,
        }
    }

    /// Keeps an ssh connection open for the cluster's lifetime; returns its index.
    pub(super) fn add_host(&mut self, host: SshHost) -> usize {
        self.hosts.push(host);
        self.hosts.len() - 1
    }

    /// Keeps a launcher process (`srun`) for the cluster's lifetime: it explains lost workers and is stopped last.
    pub(super) fn add_launcher(&mut self, launcher: super::launch::LauncherProcess) {
        self.launchers.push(launcher);
    }

    /// Adds a worker whose connection is already open and whose handshake has passed: a rank started by a
    /// launcher, admitted by `launch::rank` with the index it now gets. It has no process of ours.
    pub(super) fn add_connected(
        &mut self,
        label: String,
        reader: Box<dyn std::io::Read + Send>,
        writer: Box<dyn std::io::Write + Send>,
        hello: WorkerHello,
    ) -> Result<()> {
        let id = self.workers.len();
        let conn = Conn::start(id, reader, writer, self.events_tx.clone(), Arc::clone(&self.counters), self.epoch)
            .map_err(|e| Error::Launch { worker: label.clone(), reason: format!("cannot start I/O threads: {e}") })?;
        let expected = hello.binary_sha256;
        self.workers.push(WorkerSlot {
            label,
            conn,
            process: None,
            hello: Some(hello),
            expected,
            handshake: None,
            _keepalive: None,
        });
        Ok(())
    }

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

    pub(super) fn spawn_local(
        &mut self,
        program: &std::path::Path,
        secret: &Secret,
        expected: [u8; 32],
        forward: bool,
    ) -> Result<()> {
        let id = self.workers.len();
        let (process, stdout, stdin) =
            WorkerProcess::spawn_local(program, secret, format!("worker {id}"), forward).map_err(|e| {
                Error::Launch { worker: format!("worker {id} (local {})", program.display()), reason: e.to_string() }
            })?;
        let label = format!("worker {id} (local pid {})", process.pid());
        self.add_worker(label, Box::new(stdout), Box::new(stdin), process, expected, None)
    }

    pub(super) fn spawn_remote(
        &mut self,
        host: usize,
        path: &str,
        secret: &Secret,
        expected: [u8; 32],
        cfg: &ClusterBuilder,
    ) -> Result<()> {
        let id = self.workers.len();
        let target = self.hosts[host].target().clone();
        let label = format!("worker {id} ({target})");
        let launch = |reason: String| Error::Launch { worker: label.clone(), reason };
        let listen = (cfg.data_channel == DataChannel::Tcp).then_some("0.0.0.0:0");
        let (process, mut stdout, stdin) = self.hosts[host]
            .spawn_worker(path, secret, format!("worker {id}"), cfg.forward_stderr, listen)
            .map_err(|e| launch(format!("cannot start the ssh session: {e}")))?;
        if cfg.data_channel == DataChannel::Stdio {
            return self.add_worker(label, Box::new(stdout), Box::new(stdin), process, expected, None);
        }
        // TCP data channel: the worker announces `COHORT-LISTEN <ip> <port>` on the ssh channel, then waits for
        // us to connect; the connection is admitted only after the handshake's HMAC proof.
        let mut process = process;
        let line = super::ssh::read_line_with_timeout(&mut stdout, cfg.handshake_timeout).map_err(|e| {
            let status = process.describe_exit(Duration::from_millis(500));
            let tail = process.stderr_tail(Duration::from_millis(500)).join(" | ");
            launch(format!("no listening port from the worker ({e}); ssh {status}; stderr: {tail}"))
        })?;
        let addr =
            super::ssh::parse_listen_line(&line).ok_or_else(|| launch(format!("bad port announcement {line:?}")))?;
        let stream = std::net::TcpStream::connect_timeout(&addr, cfg.ssh.connect_timeout)
            .map_err(|e| launch(format!("cannot open the TCP data channel to {addr}: {e}")))?;
        stream.set_nodelay(true).ok();
        let reader = stream.try_clone().map_err(|e| launch(e.to_string()))?;
        self.add_worker(label, Box::new(reader), Box::new(stream), process, expected, Some(stdin))
    }

    fn add_worker(
        &mut self,
        label: String,
        reader: Box<dyn std::io::Read + Send>,
        writer: Box<dyn std::io::Write + Send>,
        process: WorkerProcess,
        expected: [u8; 32],
        keepalive: Option<std::process::ChildStdin>,
    ) -> Result<()> {
        let id = self.workers.len();
        let conn = Conn::start(id, reader, writer, self.events_tx.clone(), Arc::clone(&self.counters), self.epoch)
            .map_err(|e| Error::Launch { worker: label.clone(), reason: format!("cannot start I/O threads: {e}") })?;
        self.workers.push(WorkerSlot {
            label,
            conn,
            process: Some(process),
            hello: None,
            expected,
            handshake: None,
            _keepalive: keepalive,
        });
        Ok(())
    }

    pub(super) fn handshake_all(&mut self, secret: &Secret, cfg: &ClusterBuilder) -> Result<()> {
        for w in &mut self.workers {
            let hs = MasterHandshake::new(secret.clone(), w.expected);
            w.conn.send(&hs.hello(), Arc::new(Vec::new()))?;
            w.handshake = Some(hs);
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
            let slot = &mut self.workers[w];
            let hs = slot.handshake.take().expect("every pending worker has a handshake");
            match hs.on_reply(msg, w as u32, hb_ms) {
                Ok((welcome, hello)) => {
                    slot.conn.send(&welcome, Arc::new(Vec::new()))?;
                    if !slot.label.contains("local pid") {
                        slot.label = format!("{}, pid {})", slot.label.trim_end_matches(')'), hello.pid);
                    }
                    slot.hello = Some(hello);
                }
                Err((source, reject)) => {
                    if let Some(reject) = reject {
                        let _ = slot.conn.send(&reject, Arc::new(Vec::new()));
                    }
                    return Err(Error::Handshake { worker: slot.label.clone(), source });
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
        self.wait_loaded(id, pending, "datasets to load")?;
        self.datasets.insert(id, Placement { elem: T::TYPE, chunks, ranges });
        Ok(handle)
    }

    /// Has every worker load its chunks of a dataset stored in files it can read at the same path (a shared
    /// filesystem): the master reads no data, only worker 0 reads the headers. `chunks` defaults to
    /// [`default_chunk_count`](crate::data::default_chunk_count) of the row count, as for an in-memory dataset, so
    /// results match [`load`](Self::load) of the same data bit for bit.
    pub fn load_files<T: Element>(
        &mut self,
        source: &crate::data::loaders::FileSource,
        chunks: Option<usize>,
    ) -> Result<DatasetHandle<T>> {
        self.check_usable()?;
        self.workers[0].conn.send(&Message::Describe { source: source.clone() }, Arc::new(Vec::new()))?;
        let (rows, cols, fingerprint) = loop {
            let (w, msg, _) = self.next_event(None, || "the description of a file source".into())?;
            match msg {
                Message::Described { rows, cols, fingerprint } if w == 0 => {
                    break (rows as usize, cols as usize, fingerprint)
                }
                Message::Failed { error, .. } if w == 0 => {
                    return Err(Error::JobFailed {
                        job: "load".into(),
                        worker: self.workers[0].label.clone(),
                        message: error,
                    })
                }
                _ => {}
            }
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
        if self.datasets.contains_key(&id) {
            return Ok(handle);
        }
        let ranges: Vec<Range<u32>> =
            assign_chunks(chunks, self.workers.len()).into_iter().map(|r| r.start as u32..r.end as u32).collect();
        let mut pending = BTreeSet::new();
        for (w, range) in ranges.iter().enumerate() {
            if range.is_empty() {
                continue;
            }
            let msg = Message::LoadSource {
                dataset: id,
                source: source.clone(),
                elem: T::TYPE,
                fingerprint,
                rows: rows as u64,
                total_chunks: chunks as u32,
                first_chunk: range.start,
                end_chunk: range.end,
            };
            self.workers[w].conn.send(&msg, Arc::new(Vec::new()))?;
            pending.insert(w);
        }
        self.wait_loaded(id, pending, "workers to load their chunks from files")?;
        self.datasets.insert(id, Placement { elem: T::TYPE, chunks: chunks as u32, ranges });
        Ok(handle)
    }

    /// Frees a dataset on every worker.
    pub fn unload<T>(&mut self, handle: DatasetHandle<T>) -> Result<()> {
        if self.datasets.remove(&handle.id).is_some() {
            self.broadcast(&Message::DropDataset { dataset: handle.id })?;
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
        let (round, placement) = self.begin_round(J::NAME, J::Elem::TYPE, &data.id)?;
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

    /// Opens a multipass session: worker-local states of the jobs run with it live until
    /// [`close_session`](Self::close_session). `seed` reaches every worker's [`WorkerContext`](crate::job::WorkerContext).
    pub fn open_session(&mut self, seed: u64) -> Session {
        self.sessions += 1;
        Session { id: self.sessions, seed }
    }

    /// Frees a session's worker-local states.
    pub fn close_session(&mut self, session: Session) -> Result<()> {
        self.broadcast(&Message::EndSession { session: session.id })
    }

    /// Queues a message without payload to every worker.
    fn broadcast(&self, msg: &Message) -> Result<()> {
        for w in &self.workers {
            w.conn.send(msg, Arc::new(Vec::new()))?;
        }
        Ok(())
    }

    /// Runs one pass of a multipass job: broadcasts `state`, lets every worker run `pass` over its resident chunks
    /// with its local state of `session`, and aggregates the partial results in worker order.
    pub fn pass<J: Multipass>(
        &mut self,
        job: &J,
        session: &Session,
        state: &J::State,
        data: &DatasetHandle<J::Elem>,
    ) -> Result<J::State> {
        let (round, placement) = self.begin_round(J::NAME, J::Elem::TYPE, &data.id)?;
        let payload = Arc::new(state.to_bytes());
        let holders: Vec<(usize, Range<u32>)> =
            placement.ranges.iter().cloned().enumerate().filter(|(_, r)| !r.is_empty()).collect();
        let rows_total = data.rows;
        let chunks_total = placement.chunks as usize;
        for (index, (w, range)) in holders.iter().enumerate() {
            let msg = Message::Pass {
                session: session.id,
                round,
                job: J::NAME.to_string(),
                dataset: data.id,
                first_chunk: range.start,
                end_chunk: range.end,
                index: index as u32,
                workers: holders.len() as u32,
                seed: session.seed,
            };
            self.workers[*w].conn.send(&msg, Arc::clone(&payload))?;
        }
        let mut partials: BTreeMap<usize, J::Partial> = BTreeMap::new();
        while partials.len() < holders.len() {
            let (w, msg, payload) = self.next_event(None, || format!("pass {round} of `{}`", J::NAME))?;
            match msg {
                Message::PassDone { round: r, .. } if r == round => {
                    let partial = J::Partial::from_bytes(&payload)
                        .map_err(|e| self.protocol(w, &format!("cannot decode the partial of `{}`: {e}", J::NAME)))?;
                    partials.insert(w, partial);
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
        let contributions = holders
            .iter()
            .map(|(w, range)| {
                let first = crate::data::chunk_rows(rows_total, chunks_total, range.start as usize).start;
                let end = crate::data::chunk_rows(rows_total, chunks_total, range.end as usize - 1).end;
                Contribution { rows: (end - first) as u64, partial: partials.remove(w).expect("every holder answered") }
            })
            .collect();
        self.rounds_run += 1;
        Ok(job.aggregate(state, contributions))
    }

    /// Waits until every worker in `pending` has answered `Loaded` for dataset `id`.
    fn wait_loaded(&mut self, id: DatasetId, mut pending: BTreeSet<usize>, what: &str) -> Result<()> {
        while !pending.is_empty() {
            let (w, msg, _) = self.next_event(None, || what.to_string())?;
            match msg {
                Message::Loaded { dataset, .. } if dataset == id => {
                    pending.remove(&w);
                }
                Message::Failed { error, .. } => {
                    let worker = self.workers[w].label.clone();
                    return Err(Error::JobFailed { job: "load".into(), worker, message: error });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks that the cluster, the dataset and the job are usable together and numbers the new round.
    fn begin_round(&mut self, job: &str, elem: ElemType, data: &DatasetId) -> Result<(u64, Placement)> {
        self.check_usable()?;
        let placement = self.datasets.get(data).ok_or_else(|| Error::UnknownDataset(hex::encode(&data[..8])))?;
        if placement.elem != elem {
            return Err(Error::ElemMismatch { job: job.into(), expected: elem, got: placement.elem });
        }
        let placement = placement.clone();
        self.check_job(job)?;
        self.round += 1;
        Ok((self.round, placement))
    }

    fn check_job(&self, name: &str) -> Result<()> {
        for w in &self.workers {
            let jobs = w.hello.as_ref().map(|h| h.jobs.as_slice()).unwrap_or_default();
            if !jobs.iter().any(|j| j == name) {
                return Err(Error::UnknownJob { job: name.into(), available: jobs.to_vec() });
            }
        }
        Ok(())
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
        // Launcher ranks are not our children: wait, within the same deadline, until each has read `Shutdown` and
        // closed its connection, so that none is left behind by a master that exits right after.
        if self.broken.is_none() {
            let mut open: BTreeSet<usize> =
                self.workers.iter().enumerate().filter(|(_, w)| w.process.is_none()).map(|(i, _)| i).collect();
            while !open.is_empty() {
                match self.events.recv_deadline(deadline) {
                    Ok(Event { worker, kind: EventKind::Closed(_) }) => {
                        open.remove(&worker);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        for w in &mut self.workers {
            w._keepalive = None;
            if let Some(mut p) = w.process.take() {
                p.finish(deadline);
            }
        }
        for l in &mut self.launchers {
            l.finish(deadline);
        }
        self.launchers.clear();
        // Stopped workers are forgotten, so a second stop (drop after `shutdown`) has nothing to wait for.
        self.workers.clear();
        self.hosts.clear();
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
