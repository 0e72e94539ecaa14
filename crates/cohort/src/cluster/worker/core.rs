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
        }
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
                        .unwrap_or_else(|panic| Err(WorkerFailure::Panicked { message: panic_message(&panic) }))
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
        .unwrap_or_else(|panic| Err(WorkerFailure::Panicked { message: panic_message(&panic) }));
        if let Some(e) = wire_error {
            return Err(e);
        }
        match outcome {
            Ok(()) => send(&mut nodes, &mut payload, &mut since, true),
            Err(failure) => out(Message::Failed { req, failure }, &[]),
        }
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

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ChunkMeta, ElemType};

    /// Serves `message` and returns the answers' kinds.
    fn serve(core: &mut WorkerCore<'_>, message: Message, payload: &[u8]) -> Vec<Message> {
        let mut answers = Vec::new();
        let frame = Frame { message, payload: payload.to_vec(), wire_len: 0 };
        core.handle(frame, &mut |m, _| {
            answers.push(m);
            Ok(())
        })
        .unwrap();
        answers
    }

    /// Ranges beyond the dataset took the reduction tree outside its leaves: an overflow panic inside the job's
    /// `catch_unwind`, reported as if the user's job had panicked (found by the fuzzer).
    #[test]
    #[allow(clippy::reversed_empty_ranges, clippy::single_range_in_vec_init)]
    fn map_over_chunks_beyond_the_dataset_is_a_missing_chunk_not_a_panic() {
        let registry = Registry::new();
        let mut core = WorkerCore::new(&registry);
        let meta = ChunkMeta {
            dataset: [1; 32],
            elem: ElemType::F64,
            cols: 1,
            total_chunks: 2,
            chunk: 0,
            first_row: 0,
            rows: 1,
            has_labels: false,
        };
        serve(&mut core, Message::LoadChunk(meta), &[0; 8]);
        for (chunks, missing) in [(vec![0..u32::MAX], 2), (vec![0..1, 5..9], 5), (vec![1..0], 1), (vec![3..3], 3)] {
            let map = Message::Map { req: 7, job: "cohort.noop".into(), dataset: [1; 32], chunks };
            let answers = serve(&mut core, map, &crate::wire::Payload::to_bytes(&Vec::<u8>::new()));
            assert!(
                matches!(&answers[..], [Message::Failed { req: 7, failure: WorkerFailure::MissingChunk { chunk, .. } }] if *chunk == missing),
                "{answers:?}"
            );
        }
    }

    /// `chunk + 1` overflowed (a panic in debug builds) before the chunk was even checked (found by the fuzzer).
    #[test]
    fn load_chunk_numbered_u32_max_is_a_bad_chunk_not_an_overflow() {
        let registry = Registry::new();
        let mut core = WorkerCore::new(&registry);
        let meta = ChunkMeta {
            dataset: [1; 32],
            elem: ElemType::F64,
            cols: 1,
            total_chunks: 4,
            chunk: u32::MAX,
            first_row: 0,
            rows: 1,
            has_labels: false,
        };
        assert!(serve(&mut core, Message::LoadChunk(meta), &[0; 8]).is_empty());
        let answers = serve(&mut core, Message::LoadDone { req: 1, dataset: [1; 32] }, &[]);
        assert!(
            matches!(
                &answers[..],
                [Message::Failed { req: 1, failure: WorkerFailure::BadChunk { chunk: u32::MAX, .. } }]
            ),
            "{answers:?}"
        );
    }
}
