//! What a worker does with each request, without the connection: the resident chunks, the replica-local states of
//! multipass sessions, and the registry of jobs. [`WorkerCore::handle`] turns one frame into its answers through a
//! callback, so the same code serves a real connection (`super::serve`) and the scheduler's simulated network.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::fault::{Fault, When};
use crate::data::resident::{short_id, Store};
use crate::job::{LocalSlot, PassOutput, Registry, ReplicaContext};
use crate::wire::{Frame, Message, RequestId, WireError, WorkerFailure};

/// Whether the worker goes on serving after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    /// Read the next frame.
    Continue,
    /// The master asked us to exit.
    Shutdown,
}

/// A parameter-server run's chains (per range: its servers, head first) and the servers' addresses.
type Chains = (Vec<Vec<u32>>, Vec<(String, u16)>);

/// A worker's state between requests.
pub(crate) struct WorkerCore<'r> {
    registry: &'r Registry,
    store: Store,
    /// Replica-local states of multipass sessions, by (session, replica).
    locals: HashMap<(u64, u32), LocalSlot>,
    /// The first failure of the chunks of a shipped load, reported at its `LoadDone`.
    load_failure: Option<WorkerFailure>,
    /// Work takes this many times as long (experiments with stragglers).
    slowdown: f32,
    /// A `Map`'s node partials are sent once this much time passed since the last send (and at the end), so a
    /// worker lost mid-request has delivered most of what it computed while small requests stay one frame.
    flush_every: Duration,
    /// A fault armed for tests (`COHORT_FAULT`).
    fault: Option<Fault>,
    /// What parameter-server runs need: the job secret, a way to tell the master things from other threads, and
    /// the address other processes reach this one at. Absent in the simulated network.
    remote: Option<Remote>,
    /// Parameter-server runs this process serves or trains in, by run.
    ps_servers: HashMap<u64, crate::cluster::ps::server::ServerHandle>,
    ps_trainers: HashMap<u64, crate::cluster::ps::trainer::TrainerHandle>,
    /// The last chains the master sent, by run (a worker needs them before it starts).
    ps_chains: HashMap<u64, Chains>,
}

/// How a worker process takes part in parameter-server runs.
pub(crate) struct Remote {
    /// The job secret.
    pub secret: crate::wire::handshake::Secret,
    /// Sends a frame to the master from any thread.
    pub notify: crate::cluster::ps::server::Notify,
    /// The host other processes reach this one at.
    pub host: String,
}

/// Where answers go. Fails only when the connection does.
pub(crate) type Out<'a> = dyn FnMut(Message, &[u8]) -> Result<(), WireError> + 'a;

impl<'r> WorkerCore<'r> {
    /// A worker with nothing resident.
    pub fn new(registry: &'r Registry) -> Self {
        WorkerCore {
            registry,
            store: Store::default(),
            locals: HashMap::new(),
            load_failure: None,
            slowdown: 1.0,
            flush_every: Duration::from_millis(2),
            fault: Fault::from_env(),
            remote: None,
            ps_servers: HashMap::new(),
            ps_trainers: HashMap::new(),
            ps_chains: HashMap::new(),
        }
    }

    /// Lets the worker take part in parameter-server runs.
    pub fn with_remote(mut self, remote: Remote) -> Self {
        self.remote = Some(remote);
        self
    }

    fn fault(&mut self, when: When, chunks: &[std::ops::Range<u32>]) {
        if let Some(f) = &mut self.fault {
            f.check(when, chunks);
        }
    }

    /// Sets how often a long `Map` sends what it has (`Duration::ZERO`: every node; `Duration::MAX`: once).
    #[cfg(test)]
    pub fn with_flush_every(mut self, every: Duration) -> Self {
        self.flush_every = every;
        self
    }

    /// Serves one frame, sending its answers (if any) through `out`.
    pub fn handle(&mut self, frame: Frame, out: &mut Out<'_>) -> Result<Control, WireError> {
        match frame.message {
            Message::LoadChunk(meta) => {
                self.fault(When::Load, std::slice::from_ref(&(meta.chunk..meta.chunk.saturating_add(1))));
                if let Err(failure) = self.store.insert(&meta, &frame.payload) {
                    self.load_failure.get_or_insert(failure);
                }
            }
            Message::LoadDone { req, dataset } => match self.load_failure.take() {
                Some(failure) => out(Message::Failed { req, failure }, &[])?,
                None => out(Message::Loaded { req, dataset, chunks: self.store.chunk_count(&dataset) }, &[])?,
            },
            Message::DropDataset { dataset } => self.store.remove(&dataset),
            Message::DropChunks { dataset, chunks } => self.store.remove_chunks(&dataset, &chunks),
            Message::Describe { req, source } => match crate::data::loaders::describe(&source) {
                Ok(info) => {
                    let reply = Message::Described {
                        req,
                        rows: info.rows as u64,
                        cols: info.cols as u32,
                        fingerprint: info.fingerprint,
                    };
                    out(reply, &[])?
                }
                Err(e) => out(Message::Failed { req, failure: WorkerFailure::Load { detail: e.to_string() } }, &[])?,
            },
            Message::LoadSource { req, dataset, source, elem, fingerprint, rows, total_chunks, chunks } => {
                self.fault(When::Load, &chunks);
                match self.store.load_source(dataset, &source, elem, fingerprint, rows, total_chunks, &chunks) {
                    Ok(chunks) => out(Message::Loaded { req, dataset, chunks }, &[])?,
                    Err(failure) => out(Message::Failed { req, failure }, &[])?,
                }
            }
            Message::Map { req, job, dataset, chunks } => {
                self.fault(When::Map, &chunks);
                self.map(req, &job, dataset, &chunks, &frame.payload, out)?
            }
            Message::Pass { req, session, job, dataset, first_chunk, end_chunk, replica, replicas, seed } => {
                self.fault(When::Pass, std::slice::from_ref(&(first_chunk..end_chunk)));
                let started = Instant::now();
                let ctx_of = |rows, first_row| ReplicaContext { replica, replicas, rows, first_row, seed };
                let local = self.locals.entry((session, replica)).or_insert(LocalSlot::Fresh);
                let outcome = match (self.registry.get_pass(&job), self.store.get(&dataset)) {
                    (None, _) => Err(WorkerFailure::UnknownJob { job: job.clone() }),
                    (_, None) => Err(WorkerFailure::NotResident { dataset: short_id(&dataset) }),
                    (Some(job_impl), Some(data)) if job_impl.elem() != data.elem => Err(WorkerFailure::ElemMismatch {
                        job: job.clone(),
                        job_elem: job_impl.elem(),
                        data_elem: data.elem,
                    }),
                    (Some(job_impl), Some(data)) => {
                        let first_row = data.chunks.get(&first_chunk).map_or(0, |c| c.first_row);
                        let ctx = ctx_of(data.rows_in(first_chunk..end_chunk), first_row);
                        catch_unwind(AssertUnwindSafe(|| {
                            job_impl.pass(&frame.payload, local, data, first_chunk..end_chunk, ctx)
                        }))
                        .unwrap_or_else(|panic| {
                            Err(WorkerFailure::Panicked { message: crate::error::panic_message(&panic) })
                        })
                    }
                };
                match outcome {
                    Ok(PassOutput { mut partial, saved }) => {
                        self.slow_down(started.elapsed());
                        let compute_us = started.elapsed().as_micros() as u64;
                        let partial_len = partial.len() as u64;
                        if let Some(saved) = &saved {
                            partial.extend_from_slice(saved);
                        }
                        let done = Message::PassDone { req, replica, partial_len, saved: saved.is_some(), compute_us };
                        out(done, &partial)?;
                    }
                    Err(failure) => out(Message::Failed { req, failure }, &[])?,
                }
            }
            Message::RestoreLocal { session, replica, saved } => {
                let bytes = saved.then_some(frame.payload);
                self.locals.insert((session, replica), LocalSlot::Restore(bytes));
            }
            Message::EndSession { session } => self.locals.retain(|(s, _), _| *s != session),
            Message::Configure { slowdown } => {
                self.slowdown = if slowdown.is_finite() { slowdown.clamp(1.0, 1000.0) } else { 1.0 }
            }
            Message::PsServe { run, server, ranges, workers, consistency, rule } => {
                let reply = self.ps_serve(run, server, ranges, workers, &consistency, &rule, &frame.payload);
                match reply {
                    Ok(port) => {
                        let host = self.remote.as_ref().map_or_else(|| "127.0.0.1".to_string(), |r| r.host.clone());
                        out(Message::PsListening { run, host, port }, &[])?
                    }
                    Err(failure) => out(Message::Failed { req: run, failure }, &[])?,
                }
            }
            Message::PsChains { run, chains, addrs } => {
                if let Some(s) = self.ps_servers.get(&run) {
                    s.control(crate::cluster::ps::server::Control::Chains {
                        chains: chains.clone(),
                        addrs: addrs.clone(),
                    });
                }
                if let Some(t) = self.ps_trainers.get(&run) {
                    t.control(crate::cluster::ps::trainer::Control::Chains {
                        chains: chains.clone(),
                        addrs: addrs.clone(),
                    });
                }
                self.ps_chains.insert(run, (chains, addrs));
            }
            Message::PsRun {
                run,
                job,
                dataset,
                worker,
                chunks,
                bounds,
                batch,
                clocks,
                seed,
                blocks,
                jitter,
                progress_every,
            } => {
                let spec =
                    (run, job, dataset, worker, chunks, bounds, batch, clocks, seed, blocks, jitter, progress_every);
                if let Err(failure) = self.ps_run(spec, frame.payload) {
                    out(Message::Failed { req: run, failure }, &[])?;
                }
            }
            Message::PsInject { run, range } => match postcard::from_bytes::<crate::ps::Request>(&frame.payload) {
                Ok(request) => {
                    if let Some(s) = self.ps_servers.get(&run) {
                        s.control(crate::cluster::ps::server::Control::Inject { range, request });
                    }
                }
                Err(e) => {
                    let failure = WorkerFailure::Decode { what: "an injected request".into(), detail: e.to_string() };
                    out(Message::Failed { req: run, failure }, &[])?
                }
            },
            Message::PsFetch { run, range, req, last } => {
                if let Some(s) = self.ps_servers.get(&run) {
                    s.control(crate::cluster::ps::server::Control::Fetch { range, req, last });
                }
            }
            Message::PsEnd { run } => {
                if let Some(s) = self.ps_servers.remove(&run) {
                    s.control(crate::cluster::ps::server::Control::End);
                }
                if let Some(t) = self.ps_trainers.remove(&run) {
                    t.control(crate::cluster::ps::trainer::Control::End);
                }
                self.ps_chains.remove(&run);
            }
            Message::Shutdown => return Ok(Control::Shutdown),
            other => {
                let failure = WorkerFailure::Unexpected { kind: other.kind().to_string() };
                out(Message::Failed { req: 0, failure }, &[])?;
            }
        }
        Ok(Control::Continue)
    }

    fn map(
        &mut self,
        req: RequestId,
        job: &str,
        dataset: crate::wire::DatasetId,
        chunks: &[std::ops::Range<u32>],
        params: &[u8],
        out: &mut Out<'_>,
    ) -> Result<(), WireError> {
        let (job_impl, data) = match (self.registry.get(job), self.store.get(&dataset)) {
            (None, _) => {
                let failure = WorkerFailure::UnknownJob { job: job.to_string() };
                return out(Message::Failed { req, failure }, &[]);
            }
            (_, None) => {
                let failure = WorkerFailure::NotResident { dataset: short_id(&dataset) };
                return out(Message::Failed { req, failure }, &[]);
            }
            (Some(j), Some(d)) => (j, d),
        };
        if job_impl.elem() != data.elem {
            let failure =
                WorkerFailure::ElemMismatch { job: job.to_string(), job_elem: job_impl.elem(), data_elem: data.elem };
            return out(Message::Failed { req, failure }, &[]);
        }
        let slowdown = self.slowdown;
        let flush_every = self.flush_every;
        let mut nodes: Vec<(u32, u32)> = Vec::new();
        let mut payload: Vec<u8> = Vec::new();
        let mut since = Instant::now();
        let mut wire_error = None;
        let mut send = |nodes: &mut Vec<(u32, u32)>, payload: &mut Vec<u8>, since: &mut Instant, last: bool| {
            sleep_for_slowdown(slowdown, since.elapsed());
            let compute_us = since.elapsed().as_micros() as u64;
            let msg = Message::MapDone { req, nodes: std::mem::take(nodes), last, compute_us };
            let result = out(msg, payload);
            payload.clear();
            *since = Instant::now();
            result
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            job_impl.run(params, data, chunks, &mut |node, bytes| {
                nodes.push((node, bytes.len() as u32));
                payload.extend_from_slice(&bytes);
                if wire_error.is_none() && since.elapsed() >= flush_every {
                    if let Err(e) = send(&mut nodes, &mut payload, &mut since, false) {
                        wire_error = Some(e);
                    }
                }
            })
        }))
        .unwrap_or_else(|panic| Err(WorkerFailure::Panicked { message: crate::error::panic_message(&panic) }));
        if let Some(e) = wire_error {
            return Err(e);
        }
        match outcome {
            Ok(()) => send(&mut nodes, &mut payload, &mut since, true),
            Err(failure) => out(Message::Failed { req, failure }, &[]),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn ps_serve(
        &mut self,
        run: u64,
        server: u32,
        ranges: Vec<crate::wire::PsRange>,
        workers: u32,
        consistency: &str,
        rule: &str,
        payload: &[u8],
    ) -> Result<u16, WorkerFailure> {
        let bad = |detail: String| WorkerFailure::Decode { what: "a parameter-server assignment".into(), detail };
        let remote = self.remote.as_ref().ok_or_else(|| bad("this worker cannot serve parameters".into()))?;
        let total: u64 = ranges.iter().map(|r| r.hi.saturating_sub(r.lo)).sum();
        if payload.len() as u64 != total.saturating_mul(4) {
            return Err(bad(format!("{} bytes of initial parameters for {total} keys", payload.len())));
        }
        let values: Vec<f32> = crate::wire::codec::scalars_from_le(payload).map_err(|e| bad(e.to_string()))?;
        let mut at = 0usize;
        let mut with_init = Vec::new();
        for r in ranges {
            let n = (r.hi - r.lo) as usize;
            with_init.push((r, values[at..at + n].to_vec()));
            at += n;
        }
        let (handle, port) = crate::cluster::ps::server::start(
            run,
            server,
            with_init,
            workers,
            consistency,
            rule,
            remote.secret.clone(),
            std::sync::Arc::clone(&remote.notify),
        )
        .map_err(bad)?;
        self.ps_servers.insert(run, handle);
        Ok(port)
    }

    #[allow(clippy::type_complexity)]
    fn ps_run(
        &mut self,
        spec: (
            u64,
            String,
            crate::wire::DatasetId,
            u32,
            Vec<std::ops::Range<u32>>,
            Vec<u64>,
            u32,
            u64,
            u64,
            Option<(u64, f32, u32)>,
            f32,
            u64,
        ),
        config: Vec<u8>,
    ) -> Result<(), WorkerFailure> {
        let (run, job, dataset, worker, chunks, bounds, batch, clocks, seed, blocks, jitter, progress_every) = spec;
        let remote = self.remote.as_ref().ok_or_else(|| WorkerFailure::Unexpected { kind: "PsRun".into() })?;
        let job_impl = self.registry.get_ps(&job).ok_or_else(|| WorkerFailure::UnknownJob { job: job.clone() })?;
        let data =
            self.store.get(&dataset).ok_or_else(|| WorkerFailure::NotResident { dataset: short_id(&dataset) })?;
        if job_impl.elem() != data.elem {
            return Err(WorkerFailure::ElemMismatch { job, job_elem: job_impl.elem(), data_elem: data.elem });
        }
        let (chains, addrs) = self.ps_chains.get(&run).cloned().unwrap_or_default();
        let spec = crate::cluster::ps::trainer::TrainSpec {
            run,
            worker,
            job: std::sync::Arc::clone(job_impl),
            config,
            data: data.clone(),
            chunks,
            bounds,
            batch,
            clocks,
            seed,
            blocks,
            jitter,
            slowdown: self.slowdown,
            progress_every,
            chains,
            addrs,
            secret: remote.secret.clone(),
        };
        let handle = crate::cluster::ps::trainer::start(spec, std::sync::Arc::clone(&remote.notify))
            .map_err(|detail| WorkerFailure::Decode { what: "a parameter-server run".into(), detail })?;
        self.ps_trainers.insert(run, handle);
        Ok(())
    }

    fn slow_down(&self, worked: Duration) {
        sleep_for_slowdown(self.slowdown, worked);
    }
}

/// Sleeps `(slowdown − 1) × worked`, so that the work appears to take `slowdown` times as long.
fn sleep_for_slowdown(slowdown: f32, worked: Duration) {
    if slowdown > 1.0 {
        std::thread::sleep(worked.mul_f32(slowdown - 1.0));
    }
}
