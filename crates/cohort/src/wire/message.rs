//! The header messages carried in frames: one enum, one variant per message kind.
//!
//! Compatibility rule: variant 0 ([`Message::Hello`]) and the order of its first two fields (`magic`, `version`) are
//! frozen forever, so that any two versions of cohort can at least tell each other that they disagree. Everything
//! else may change with [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).

use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Identifies a request the master sent, echoed in the answer: an answer to a request the master no longer waits
/// for (cancelled, or sent to a worker since declared lost) is recognised and dropped.
pub type RequestId = u64;

/// A dataset's identity: the SHA-256 of its element type, shape, chunking and contents.
pub type DatasetId = [u8; 32];

/// Element type of a dataset's values and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ElemType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
}

impl ElemType {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 => 4,
            ElemType::F64 => 8,
        }
    }
}

impl std::fmt::Display for ElemType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
        })
    }
}

/// Description of one chunk of a dataset, sent with its values as the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMeta {
    /// Dataset this chunk belongs to.
    pub dataset: DatasetId,
    /// Element type of values and labels.
    pub elem: ElemType,
    /// Values per row.
    pub cols: u32,
    /// Total number of chunks in the dataset (fixes the shape of the reduction tree).
    pub total_chunks: u32,
    /// Index of this chunk.
    pub chunk: u32,
    /// Index of this chunk's first row in the whole dataset.
    pub first_row: u64,
    /// Rows in this chunk.
    pub rows: u32,
    /// Whether one label per row follows the values in the payload.
    pub has_labels: bool,
}

/// The format of a file source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileFormat {
    /// IDX (MNIST format): a 3-D `u8` image file, labels a 1-D `u8` file.
    Idx,
    /// NumPy `.npy`: values 1-D or 2-D, labels 1-D.
    Npy,
}

/// A dataset stored in files that every worker can read at the same path (a shared filesystem). Only the
/// description travels; each worker reads its own chunks (see `data::loaders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSource {
    /// File format.
    pub format: FileFormat,
    /// Values file.
    pub values: PathBuf,
    /// Optional labels file.
    pub labels: Option<PathBuf>,
}

impl FileSource {
    /// An IDX image file with optional labels.
    pub fn idx(images: impl Into<PathBuf>, labels: Option<PathBuf>) -> FileSource {
        FileSource { format: FileFormat::Idx, values: images.into(), labels }
    }

    /// A `.npy` values file with optional labels.
    pub fn npy(values: impl Into<PathBuf>, labels: Option<PathBuf>) -> FileSource {
        FileSource { format: FileFormat::Npy, values: values.into(), labels }
    }
}

/// Why a worker could not serve a request: typed, so the master can tell a job's own failure (deterministic: it
/// would fail anywhere) from a worker that lacks something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WorkerFailure {
    /// The job is not in the worker binary's registry.
    #[error("job `{job}` is not registered in this worker")]
    UnknownJob {
        /// The job.
        job: String,
    },
    /// The dataset is not resident.
    #[error("dataset {dataset} is not resident on this worker")]
    NotResident {
        /// First bytes of the dataset id, hex.
        dataset: String,
    },
    /// One of the requested chunks is not resident.
    #[error("chunk {chunk} of dataset {dataset} is not resident on this worker")]
    MissingChunk {
        /// First bytes of the dataset id, hex.
        dataset: String,
        /// The chunk.
        chunk: u32,
    },
    /// The job's element type differs from the dataset's.
    #[error("job `{job}` reads {job_elem} data but the dataset holds {data_elem}")]
    ElemMismatch {
        /// The job.
        job: String,
        /// What the job reads.
        job_elem: ElemType,
        /// What the dataset holds.
        data_elem: ElemType,
    },
    /// Parameters, state or saved local state that do not decode.
    #[error("cannot decode the {what}: {detail}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// The decoder's message.
        detail: String,
    },
    /// User code panicked.
    #[error("panicked: {message}")]
    Panicked {
        /// The panic message.
        message: String,
    },
    /// A chunk frame that does not match its description.
    #[error("chunk {chunk}: {detail}")]
    BadChunk {
        /// The chunk.
        chunk: u32,
        /// What is wrong.
        detail: String,
    },
    /// Reading a file source failed on this worker.
    #[error("{detail}")]
    Load {
        /// The loader's message (names the file).
        detail: String,
    },
    /// A replica's saved local state could not be restored.
    #[error("cannot restore replica {replica}'s local state: {detail}")]
    Restore {
        /// The replica.
        replica: u32,
        /// Why.
        detail: String,
    },
    /// A message a worker does not accept.
    #[error("unexpected {kind} message from the master")]
    Unexpected {
        /// The message kind.
        kind: String,
    },
}

/// A key range of a parameter-server run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsRange {
    /// The range's index.
    pub range: u32,
    /// First key.
    pub lo: u64,
    /// One past the last key.
    pub hi: u64,
}

/// A frame header. The payload that goes with each variant is documented on the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Master → worker, first frame. No payload.
    Hello {
        /// Must equal [`MAGIC`](super::MAGIC).
        magic: [u8; 8],
        /// Protocol version the master speaks.
        version: u32,
        /// SHA-256 of the binary the master expects the worker to run.
        binary_sha256: [u8; 32],
        /// Fresh random challenge.
        nonce: [u8; 32],
    },
    /// Worker → master, answer to `Hello`. No payload.
    HelloReply {
        /// Protocol version the worker speaks.
        version: u32,
        /// SHA-256 of the worker's own executable.
        binary_sha256: [u8; 32],
        /// The worker's challenge to the master.
        nonce: [u8; 32],
        /// HMAC-SHA256(secret, "cohort-worker" ‖ master nonce ‖ worker nonce).
        proof: [u8; 32],
        /// Jobs registered in the worker binary.
        jobs: Vec<String>,
        /// Worker process id.
        pid: u32,
        /// Worker host name.
        host: String,
    },
    /// Master → worker: accepted. No payload.
    Welcome {
        /// Index of this worker in the master's list.
        worker_id: u32,
        /// HMAC-SHA256(secret, "cohort-master" ‖ worker nonce ‖ master nonce): the master knows the secret too.
        proof: [u8; 32],
        /// How often the worker must send [`Message::Heartbeat`] while it has nothing else to say.
        heartbeat_ms: u32,
    },
    /// Either direction: the handshake failed; the connection will be closed. No payload.
    Reject {
        /// Human-readable reason.
        reason: String,
    },
    /// Master → worker: keep this chunk resident. Payload: `rows*cols` values then, if `has_labels`, `rows` labels,
    /// little-endian.
    LoadChunk(ChunkMeta),
    /// Master → worker: all chunks of a load were sent; answer with [`Message::Loaded`]. No payload.
    LoadDone {
        /// Request id, echoed in the answer.
        req: RequestId,
        /// Dataset that was loaded.
        dataset: DatasetId,
    },
    /// Worker → master: the chunks of a load are resident. No payload.
    Loaded {
        /// Request id of the `LoadDone` or `LoadSource`.
        req: RequestId,
        /// Dataset now resident.
        dataset: DatasetId,
        /// Number of its chunks this worker now holds.
        chunks: u32,
    },
    /// Master → worker: forget a dataset. No payload, no answer.
    DropDataset {
        /// Dataset to drop.
        dataset: DatasetId,
    },
    /// Master → worker: forget some chunks of a dataset (they moved to another worker). No payload, no answer.
    DropChunks {
        /// The dataset.
        dataset: DatasetId,
        /// Chunk ranges to drop.
        chunks: Vec<Range<u32>>,
    },
    /// Master → worker: read the headers of a file source. No payload; answered with [`Message::Described`].
    Describe {
        /// Request id, echoed in the answer.
        req: RequestId,
        /// The files.
        source: FileSource,
    },
    /// Worker → master: shape and fingerprint of a file source. No payload.
    Described {
        /// Request id of the `Describe`.
        req: RequestId,
        /// Rows.
        rows: u64,
        /// Values per row.
        cols: u32,
        /// Fingerprint of the files as this worker sees them.
        fingerprint: [u8; 32],
    },
    /// Master → worker: load these chunks of a file source yourself. No payload; answered with
    /// [`Message::Loaded`].
    LoadSource {
        /// Request id, echoed in the answer.
        req: RequestId,
        /// Identity the master gives the dataset.
        dataset: DatasetId,
        /// The files.
        source: FileSource,
        /// Element type to read the values as.
        elem: ElemType,
        /// Fingerprint the files must have (as the describing worker saw them).
        fingerprint: [u8; 32],
        /// Rows of the whole source.
        rows: u64,
        /// Chunks the source is cut into.
        total_chunks: u32,
        /// Chunk ranges to load.
        chunks: Vec<Range<u32>>,
    },
    /// Master → worker: run a map-reduce job over these chunk ranges (every chunk resident here). Payload: encoded
    /// parameters. Answered by one or more [`Message::MapDone`], the last with `last` set.
    Map {
        /// Request id, echoed in the answers.
        req: RequestId,
        /// Registered job name.
        job: String,
        /// Resident dataset to map over.
        dataset: DatasetId,
        /// Chunk ranges, ascending and disjoint.
        chunks: Vec<Range<u32>>,
    },
    /// Worker → master: partial results of a `Map`, one per reduction-tree node; a worker may send the nodes of
    /// one request in several frames as it computes them. Payload: the nodes' encoded values, concatenated in the
    /// order of `nodes`.
    MapDone {
        /// Request id of the `Map`.
        req: RequestId,
        /// `(tree node, encoded length)` for each partial, left to right.
        nodes: Vec<(u32, u32)>,
        /// Whether this frame ends the answer.
        last: bool,
        /// Microseconds the worker spent computing these nodes.
        compute_us: u64,
    },
    /// Master → worker: run one pass of replica `replica` of a multipass job over chunks `[first_chunk,
    /// end_chunk)`. Payload: the encoded state.
    Pass {
        /// Request id, echoed in the answer.
        req: RequestId,
        /// Session whose replica-local state to use (created on first use).
        session: u64,
        /// Registered job name.
        job: String,
        /// Resident dataset.
        dataset: DatasetId,
        /// First chunk (inclusive).
        first_chunk: u32,
        /// Last chunk (exclusive).
        end_chunk: u32,
        /// The replica this pass is for.
        replica: u32,
        /// Number of replicas in the session.
        replicas: u32,
        /// Session seed.
        seed: u64,
    },
    /// Master → worker: replace replica `replica`'s local state in `session` by one restored from saved bytes
    /// before its next pass (sent when a replica moves to this worker, or a session is resumed). Payload: the
    /// saved local state if `saved`, else empty (rebuild it with `init_local`). No answer.
    RestoreLocal {
        /// The session.
        session: u64,
        /// The replica.
        replica: u32,
        /// Whether the payload holds a saved state.
        saved: bool,
    },
    /// Worker → master: the partial result of a replica's pass. Payload: the encoded partial (`partial_len`
    /// bytes), then the replica's saved local state if `saved`.
    PassDone {
        /// Request id of the `Pass`.
        req: RequestId,
        /// The replica.
        replica: u32,
        /// Bytes of the payload that belong to the partial.
        partial_len: u64,
        /// Whether the saved local state follows the partial.
        saved: bool,
        /// Microseconds the worker spent computing.
        compute_us: u64,
    },
    /// Master → worker: forget a session's local states. No payload, no answer.
    EndSession {
        /// The session.
        session: u64,
    },
    /// Worker → master: a request could not be served. No payload.
    Failed {
        /// Request id of the failed request (0 if the request had none).
        req: RequestId,
        /// What went wrong.
        failure: WorkerFailure,
    },
    /// Master → worker: settings that apply from now on. No payload, no answer.
    Configure {
        /// Make every map and pass take this many times as long (sleeping after the work), to emulate a slow
        /// machine in experiments. 1.0 is normal speed.
        slowdown: f32,
    },
    /// Master → server process: serve these key ranges of parameter-server run `run` (as head, middle or tail of
    /// each range's chain, told later by [`Message::PsChains`]). Payload: the initial parameters of the ranges, `f32`
    /// little-endian, concatenated in `ranges` order. Answered by [`Message::PsListening`].
    PsServe {
        /// The run.
        run: u64,
        /// This server's index among the run's servers.
        server: u32,
        /// The ranges it holds a replica of.
        ranges: Vec<PsRange>,
        /// Number of workers of the run.
        workers: u32,
        /// Consistency mode (`bsp`, `ssp:S`, `asp:S,W`, `async`).
        consistency: String,
        /// Update rule (`sgd:LR`, `momentum:LR,MU`, `adagrad:LR`, `adam:LR`).
        rule: String,
    },
    /// Server → master: where workers and other servers reach it. No payload.
    PsListening {
        /// The run.
        run: u64,
        /// Host or address to connect to.
        host: String,
        /// Port.
        port: u16,
    },
    /// Master → servers and workers: every range's chain of servers, head first (sent at start and after a server
    /// is lost). No payload.
    PsChains {
        /// The run.
        run: u64,
        /// Per range: its servers, head first.
        chains: Vec<Vec<u32>>,
        /// Per server: where it listens.
        addrs: Vec<(String, u16)>,
    },
    /// Master → worker: train with parameter-server run `run`. Payload: the job's encoded configuration.
    PsRun {
        /// The run.
        run: u64,
        /// Registered job name.
        job: String,
        /// Resident dataset.
        dataset: DatasetId,
        /// This worker's index in the run.
        worker: u32,
        /// The chunks it trains on.
        chunks: Vec<Range<u32>>,
        /// Range boundaries: range `r` holds keys `[bounds[r], bounds[r + 1])`.
        bounds: Vec<u64>,
        /// Mini-batch rows.
        batch: u32,
        /// Clocks (mini-batches) to run.
        clocks: u64,
        /// Seed of the batch order.
        seed: u64,
        /// Model block scheduling: (keys per block, threshold, max period), if on.
        blocks: Option<(u64, f32, u32)>,
        /// Each clock's compute takes a random factor in [1, 1 + jitter] longer (experiments with varying speed).
        jitter: f32,
        /// Report progress every this many clocks.
        progress_every: u64,
    },
    /// Worker → master: progress of a parameter-server run. No payload.
    PsProgress {
        /// The run.
        run: u64,
        /// The worker's index in the run.
        worker: u32,
        /// Clocks completed.
        clock: u64,
        /// Σ loss, rows classified correctly and rows, since the last report.
        loss_sum: f64,
        /// Rows classified correctly.
        correct: u64,
        /// Rows.
        rows: u64,
        /// Microseconds spent waiting for pulls since the last report.
        waited_us: u64,
    },
    /// Worker → master: the worker finished its clocks (every push acknowledged). No payload.
    PsDone {
        /// The run.
        run: u64,
        /// The worker's index in the run.
        worker: u32,
        /// Clocks completed.
        clock: u64,
        /// Bytes pushed and pulled (values and keys), and pushes and pulls sent.
        traffic: (u64, u64, u64, u64),
        /// Microseconds computing and waiting, in total.
        busy_us: u64,
        /// Microseconds waiting for pulls, in total.
        waited_us: u64,
    },
    /// Master → head server of `range`: apply this request as if a worker sent it (a lost worker's `Leave`).
    /// Payload: the postcard-encoded request.
    PsInject {
        /// The run.
        run: u64,
        /// The range.
        range: u32,
    },
    /// Master → server: send the parameters of `range`. No payload; answered by [`Message::PsFetched`].
    PsFetch {
        /// The run.
        run: u64,
        /// The range.
        range: u32,
        /// Request id.
        req: RequestId,
        /// The final fetch, after every worker finished: answered only once every worker has left the range (their
        /// last clock and leave travel on other connections and may still be on their way), or after a minute.
        last: bool,
    },
    /// Server → master: a range's parameters. Payload: `f32` little-endian values, then the postcard-encoded
    /// metrics of the range's server core (`metrics_len` bytes at the end).
    PsFetched {
        /// The run.
        run: u64,
        /// The range.
        range: u32,
        /// Request id of the fetch.
        req: RequestId,
        /// Bytes of metrics after the values.
        metrics_len: u64,
    },
    /// Master → servers and workers: the run is over; stop its threads. No payload.
    PsEnd {
        /// The run.
        run: u64,
    },
    /// Worker → master: still alive. No payload.
    Heartbeat,
    /// Master → worker: exit cleanly. No payload.
    Shutdown,
}

impl Message {
    /// Short name of the variant, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::HelloReply { .. } => "HelloReply",
            Message::Welcome { .. } => "Welcome",
            Message::Reject { .. } => "Reject",
            Message::LoadChunk(_) => "LoadChunk",
            Message::LoadDone { .. } => "LoadDone",
            Message::Loaded { .. } => "Loaded",
            Message::DropDataset { .. } => "DropDataset",
            Message::DropChunks { .. } => "DropChunks",
            Message::Describe { .. } => "Describe",
            Message::Described { .. } => "Described",
            Message::LoadSource { .. } => "LoadSource",
            Message::Map { .. } => "Map",
            Message::MapDone { .. } => "MapDone",
            Message::Pass { .. } => "Pass",
            Message::RestoreLocal { .. } => "RestoreLocal",
            Message::PassDone { .. } => "PassDone",
            Message::EndSession { .. } => "EndSession",
            Message::Failed { .. } => "Failed",
            Message::Configure { .. } => "Configure",
            Message::PsServe { .. } => "PsServe",
            Message::PsListening { .. } => "PsListening",
            Message::PsChains { .. } => "PsChains",
            Message::PsRun { .. } => "PsRun",
            Message::PsProgress { .. } => "PsProgress",
            Message::PsDone { .. } => "PsDone",
            Message::PsInject { .. } => "PsInject",
            Message::PsFetch { .. } => "PsFetch",
            Message::PsFetched { .. } => "PsFetched",
            Message::PsEnd { .. } => "PsEnd",
            Message::Heartbeat => "Heartbeat",
            Message::Shutdown => "Shutdown",
        }
    }
}
