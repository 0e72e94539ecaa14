//! The worker target: a fresh [`WorkerCore`] serves every frame of the input in order, as a worker process serves
//! its master, with a registry of small jobs that decode parameters, states and saved local states.
//!
//! Some fields are translated before a frame reaches the worker, so that inputs do not depend on the run that made
//! them and nothing outside the harness is touched: file paths in `Describe`/`LoadSource` name the harness's files as
//! `/cohort-fuzz/<name>` (anything else becomes a missing file: a hostile path could name a FIFO or a device), a
//! `LoadSource` fingerprint is relative (XOR) to the fingerprint of the files it names, so zero means "matches", and
//! `Configure` asks for normal speed (a slowdown makes the worker sleep, which is deliberate, not decoding). The jobs
//! never panic, so a `Failed { Panicked }` answer is the framework panicking inside a job's `catch_unwind` — a
//! finding like any other panic.

// Seeds name single chunk ranges on purpose.
#![allow(clippy::single_range_in_vec_init)]

use std::path::{Path, PathBuf};

use super::mutate::{Hints, Mutator};
use super::targets::{frame, frame_hints, mutate_frames, SideFiles};
use super::{Harness, Outcome};
use crate::cluster::worker::{Control, WorkerCore};
use crate::data::loaders::{self, FileSource};
use crate::job::{Noop, Registry};
use crate::wire::frame::{read_frame, write_frame, MAX_FRAME};
use crate::wire::{ChunkMeta, ElemType, Message, Payload, Serde, WireError, WorkerFailure};
use crate::{Contribution, MapReduce, Multipass, ReplicaContext, Shard};

/// Column sums of an `f64` dataset, each column scaled by a parameter (1 where there is none).
struct Sum64;

impl MapReduce for Sum64 {
    const NAME: &'static str = "fuzz.sum64";
    type Elem = f64;
    type Params = (Vec<f64>, Option<u32>);
    type Output = (u64, Vec<f64>);

    fn map(&self, params: &Self::Params, shard: &Shard<'_, f64>) -> Self::Output {
        let cols = shard.cols.max(1);
        let mut sums = vec![0.0; cols.min(1 << 16)];
        for row in shard.values.chunks(cols) {
            for (j, (s, v)) in sums.iter_mut().zip(row).enumerate() {
                *s += v * params.0.get(j).copied().unwrap_or(1.0);
            }
        }
        (shard.rows() as u64 + u64::from(params.1.unwrap_or(0)), sums)
    }

    fn reduce(&self, a: Self::Output, b: Self::Output) -> Self::Output {
        let (mut long, short) = if a.1.len() >= b.1.len() { (a.1, b.1) } else { (b.1, a.1) };
        long.iter_mut().zip(short).for_each(|(x, y)| *x += y);
        (a.0.wrapping_add(b.0), long)
    }
}

/// Label counts of an `f32` dataset, with structured parameters.
struct Labels32;

impl MapReduce for Labels32 {
    const NAME: &'static str = "fuzz.labels32";
    type Elem = f32;
    type Params = Serde<(String, Vec<u16>)>;
    type Output = (f32, String);

    fn map(&self, params: &Self::Params, shard: &Shard<'_, f32>) -> Self::Output {
        let labels: f32 = shard.labels.unwrap_or(&[]).iter().sum();
        let tag = params.0 .0.chars().take(8).collect::<String>();
        (labels + shard.values.first().copied().unwrap_or(0.0), tag)
    }

    fn reduce(&self, a: Self::Output, b: Self::Output) -> Self::Output {
        (a.0 + b.0, if a.1.len() + b.1.len() < 64 { a.1 + &b.1 } else { a.1 })
    }
}

/// A multipass job whose local state (a pass counter and a vector) is saved and restored.
struct Average;

impl Multipass for Average {
    const NAME: &'static str = "fuzz.average";
    type Elem = f64;
    type State = Vec<f64>;
    type Partial = (u64, Vec<f64>);
    type Local = (u64, Vec<f64>);

    fn init_local(&self, state: &Vec<f64>, ctx: &ReplicaContext) -> Self::Local {
        (u64::from(ctx.replica), state.clone())
    }

    fn pass(&self, state: &Vec<f64>, local: &mut Self::Local, shards: &[Shard<'_, f64>]) -> Self::Partial {
        local.0 = local.0.wrapping_add(1);
        let total: f64 = shards.iter().flat_map(|s| s.values.iter()).sum();
        local.1.truncate(state.len().min(1 << 16));
        local.1.push(total);
        (shards.iter().map(|s| s.rows() as u64).sum(), local.1.clone())
    }

    fn aggregate(&self, state: &Vec<f64>, _contributions: Vec<Contribution<Self::Partial>>) -> Vec<f64> {
        state.clone()
    }

    fn save_local(&self, local: &Self::Local) -> Option<Vec<u8>> {
        Some(local.to_bytes())
    }

    fn restore_local(&self, _state: &Vec<f64>, _ctx: &ReplicaContext, saved: &[u8]) -> Result<Self::Local, String> {
        <(u64, Vec<f64>)>::from_bytes(saved).map_err(|e| e.to_string())
    }
}

/// Where inputs say the harness's files are.
const VIRTUAL_DIR: &str = "/cohort-fuzz";

/// The worker harness.
pub(crate) struct WorkerHarness {
    registry: Registry,
    side: SideFiles,
    dir: PathBuf,
}

impl WorkerHarness {
    pub(crate) fn new(dir: &Path) -> std::io::Result<WorkerHarness> {
        let side = SideFiles::write(dir)?;
        let registry = Registry::new().map_reduce(Sum64).map_reduce(Labels32).multipass(Average);
        Ok(WorkerHarness { registry, side, dir: dir.to_path_buf() })
    }

    /// The name inputs use for one of the harness's files.
    fn virtual_path(real: &Path) -> PathBuf {
        Path::new(VIRTUAL_DIR).join(real.file_name().expect("side files have names"))
    }

    /// The real file behind a path of an input (a missing file for anything but the harness's own).
    fn real_path(&self, p: &Path) -> PathBuf {
        let side = [&self.side.images, &self.side.labels, &self.side.values_npy, &self.side.labels_npy];
        match side.into_iter().find(|s| Self::virtual_path(s) == p) {
            Some(real) => real.clone(),
            None => self.dir.join("missing"),
        }
    }

    fn translate(&self, message: &mut Message) {
        match message {
            Message::Describe { source, .. } | Message::LoadSource { source, .. } => {
                source.values = self.real_path(&source.values);
                if let Some(l) = &mut source.labels {
                    *l = self.real_path(l);
                }
            }
            Message::Configure { slowdown } => *slowdown = 1.0,
            _ => {}
        }
        if let Message::LoadSource { source, fingerprint, .. } = message {
            let real = loaders::describe(source).map(|info| info.fingerprint).unwrap_or_default();
            fingerprint.iter_mut().zip(real).for_each(|(f, r)| *f ^= r);
        }
    }
}

fn failure_kind(f: &WorkerFailure) -> &'static str {
    match f {
        WorkerFailure::UnknownJob { .. } => "UnknownJob",
        WorkerFailure::NotResident { .. } => "NotResident",
        WorkerFailure::MissingChunk { .. } => "MissingChunk",
        WorkerFailure::ElemMismatch { .. } => "ElemMismatch",
        WorkerFailure::Decode { .. } => "Decode",
        WorkerFailure::Panicked { .. } => "Panicked",
        WorkerFailure::BadChunk { .. } => "BadChunk",
        WorkerFailure::Load { .. } => "Load",
        WorkerFailure::Restore { .. } => "Restore",
        WorkerFailure::Unexpected { .. } => "Unexpected",
    }
}

impl Harness for WorkerHarness {
    fn seeds(&mut self) -> Vec<Vec<u8>> {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let f64_chunk = |chunk: u32, rows: u32| {
            let meta = ChunkMeta {
                dataset: a,
                elem: ElemType::F64,
                cols: 3,
                total_chunks: 4,
                chunk,
                first_row: u64::from(chunk) * 2,
                rows,
                has_labels: true,
            };
            let values: Vec<u8> =
                (0..rows * 4).flat_map(|i| (f64::from(i) * 0.5 + f64::from(chunk)).to_le_bytes()).collect();
            frame(&Message::LoadChunk(meta), &values)
        };
        let f32_chunk = |chunk: u32| {
            let meta = ChunkMeta {
                dataset: b,
                elem: ElemType::F32,
                cols: 2,
                total_chunks: 2,
                chunk,
                first_row: u64::from(chunk) * 3,
                rows: 3,
                has_labels: true,
            };
            let values: Vec<u8> = (0..9).flat_map(|i| (i as f32 - 2.0).to_le_bytes()).collect();
            frame(&Message::LoadChunk(meta), &values)
        };
        let map = |req, job: &str, dataset, chunks: Vec<std::ops::Range<u32>>, params: Vec<u8>| {
            frame(&Message::Map { req, job: job.into(), dataset, chunks }, &params)
        };
        let pass = |req, first_chunk, end_chunk, replica| {
            let msg = Message::Pass {
                req,
                session: 5,
                job: Average::NAME.into(),
                dataset: a,
                first_chunk,
                end_chunk,
                replica,
                replicas: 2,
                seed: 11,
            };
            frame(&msg, &vec![0.25f64, -1.0].to_bytes())
        };
        let shipped_a: Vec<u8> = [
            f64_chunk(0, 2),
            f64_chunk(1, 2),
            f64_chunk(2, 2),
            f64_chunk(3, 1),
            frame(&Message::LoadDone { req: 1, dataset: a }, &[]),
        ]
        .concat();
        let shipped_b: Vec<u8> =
            [f32_chunk(0), f32_chunk(1), frame(&Message::LoadDone { req: 2, dataset: b }, &[])].concat();

        let describe = |req, source: FileSource| frame(&Message::Describe { req, source }, &[]);
        let load_source = |req, dataset, source: FileSource, elem, chunks: Vec<std::ops::Range<u32>>| {
            let msg = Message::LoadSource {
                req,
                dataset,
                source,
                elem,
                fingerprint: [0; 32],
                rows: 3,
                total_chunks: 3,
                chunks,
            };
            frame(&msg, &[])
        };
        let v = Self::virtual_path;
        let idx = FileSource::idx(v(&self.side.images), Some(v(&self.side.labels)));
        let npy = FileSource::npy(v(&self.side.values_npy), Some(v(&self.side.labels_npy)));
        let c = [3u8; 32];
        let d = [4u8; 32];

        vec![
            [
                shipped_a.clone(),
                map(3, Sum64::NAME, a, vec![0..4], (vec![1.0f64, 2.0, 0.5], Some(3u32)).to_bytes()),
                map(4, Sum64::NAME, a, vec![1..2, 3..4], (Vec::<f64>::new(), None::<u32>).to_bytes()),
                map(5, Noop::NAME, a, vec![0..2], vec![7, 7]),
                pass(6, 0, 2, 0),
                pass(7, 2, 4, 1),
                frame(&Message::RestoreLocal { session: 5, replica: 1, saved: true }, &(3u64, vec![1.0f64]).to_bytes()),
                pass(8, 2, 4, 1),
                frame(&Message::RestoreLocal { session: 5, replica: 0, saved: false }, &[]),
                pass(9, 0, 2, 0),
                frame(&Message::EndSession { session: 5 }, &[]),
                frame(&Message::DropChunks { dataset: a, chunks: vec![1..3] }, &[]),
                map(10, Sum64::NAME, a, vec![0..4], (vec![1.0f64], None::<u32>).to_bytes()),
                frame(&Message::DropDataset { dataset: a }, &[]),
                map(11, Sum64::NAME, a, vec![0..1], (vec![1.0f64], None::<u32>).to_bytes()),
                frame(&Message::Shutdown, &[]),
            ]
            .concat(),
            [
                shipped_b.clone(),
                map(3, Labels32::NAME, b, vec![0..2], Serde((String::from("tag"), vec![1u16, 2])).to_bytes()),
                map(4, Sum64::NAME, b, vec![0..2], (vec![1.0f64], None::<u32>).to_bytes()),
                map(5, "no.such.job", b, vec![0..1], vec![]),
                frame(&Message::Configure { slowdown: 3.0 }, &[]),
                frame(&Message::Heartbeat, &[]),
                frame(
                    &Message::Hello { magic: *b"COHORT\0\x01", version: 3, binary_sha256: [0; 32], nonce: [0; 32] },
                    &[],
                ),
                frame(&Message::MapDone { req: 1, nodes: vec![(1, 0)], last: true, compute_us: 0 }, &[]),
            ]
            .concat(),
            [
                describe(1, idx.clone()),
                load_source(2, c, idx.clone(), ElemType::F32, vec![0..1, 2..3]),
                load_source(3, c, idx.clone(), ElemType::F32, vec![1..2]),
                map(4, Labels32::NAME, c, vec![0..3], Serde((String::new(), Vec::<u16>::new())).to_bytes()),
                frame(&Message::DropChunks { dataset: c, chunks: vec![0..2] }, &[]),
                map(5, Labels32::NAME, c, vec![0..3], Serde((String::new(), Vec::<u16>::new())).to_bytes()),
            ]
            .concat(),
            [
                describe(1, npy.clone()),
                load_source(2, d, npy.clone(), ElemType::F64, vec![0..3]),
                map(3, Sum64::NAME, d, vec![0..3], (vec![0.5f64, 0.5], Some(1u32)).to_bytes()),
                frame(
                    &Message::Pass {
                        req: 4,
                        session: 9,
                        job: Average::NAME.into(),
                        dataset: d,
                        first_chunk: 0,
                        end_chunk: 3,
                        replica: 0,
                        replicas: 1,
                        seed: 0,
                    },
                    &vec![1.0f64].to_bytes(),
                ),
                describe(5, FileSource::npy(v(&self.side.labels_npy), None)),
                describe(6, FileSource::idx(v(&self.side.values_npy), None)),
            ]
            .concat(),
            [shipped_a, f64_chunk(1, 3), f64_chunk(9, 1), frame(&Message::LoadDone { req: 3, dataset: a }, &[])]
                .concat(),
        ]
    }

    fn hints(&self) -> Hints {
        let mut hints = frame_hints();
        // Chunk counts and indices at the dataset limits (MAX_CHUNKS is 2^20) and at the edge of u32.
        hints.interesting.extend([3, 4, 1 << 20, (1 << 20) + 1, 1 << 31, u32::MAX as u64 - 1, u32::MAX as u64]);
        hints
    }

    fn mutate(&mut self, m: &mut Mutator, input: &mut Vec<u8>, others: &[Vec<u8>], hints: &Hints) {
        mutate_frames(m, input, others, hints)
    }

    fn exec(&mut self, input: &[u8]) -> Outcome {
        let mut core = WorkerCore::new(&self.registry);
        let mut r = input;
        let mut answers: Vec<&'static str> = Vec::new();
        let mut escaped: Option<String> = None;
        let mut end = "end of input".to_string();
        for _ in 0..256 {
            let mut frame = match read_frame(&mut r, MAX_FRAME) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    end = e.to_string();
                    break;
                }
            };
            self.translate(&mut frame.message);
            let mut out = |message: Message, payload: &[u8]| -> Result<(), WireError> {
                let mut bytes = Vec::new();
                write_frame(&mut bytes, &message, payload)?;
                let back = read_frame(&mut bytes.as_slice(), MAX_FRAME)?;
                assert!(back.is_some_and(|f| f.payload == payload), "an answer does not decode back");
                answers.push(match &message {
                    Message::Failed { failure, .. } => {
                        if let WorkerFailure::Panicked { message } = failure {
                            escaped.get_or_insert_with(|| message.clone());
                        }
                        failure_kind(failure)
                    }
                    other => other.kind(),
                });
                Ok(())
            };
            match core.handle(frame, &mut out) {
                Ok(Control::Continue) => {}
                Ok(Control::Shutdown) => {
                    end = "shutdown".into();
                    break;
                }
                Err(e) => {
                    end = e.to_string();
                    break;
                }
            }
        }
        if let Some(message) = escaped {
            panic!("the worker answered Failed {{ Panicked }} with jobs that never panic: {message}");
        }
        let accepted = answers.iter().any(|a| matches!(*a, "MapDone" | "PassDone" | "Loaded" | "Described"));
        let class = format!("{} / {end}", answers.join(","));
        if accepted {
            Outcome::accepted(class)
        } else {
            Outcome::rejected(class)
        }
    }
}
