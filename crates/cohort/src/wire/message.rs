//! The header messages carried in frames: one enum, one variant per message kind.
//!
//! Compatibility rule: variant 0 ([`Message::Hello`]) and the order of its first two fields (`magic`, `version`) are
//! frozen forever, so that any two versions of cohort can at least tell each other that they disagree. Everything
//! else may change with [`PROTOCOL_VERSION`](super::PROTOCOL_VERSION).

use serde::{Deserialize, Serialize};

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
        /// Dataset that was loaded.
        dataset: DatasetId,
    },
    /// Worker → master: the dataset's chunks are resident. No payload.
    Loaded {
        /// Dataset now resident.
        dataset: DatasetId,
        /// Number of its chunks this worker holds.
        chunks: u32,
    },
    /// Master → worker: forget a dataset. No payload, no answer.
    DropDataset {
        /// Dataset to drop.
        dataset: DatasetId,
    },
    /// Master → worker: run a map-reduce job over chunks `[first_chunk, end_chunk)`. Payload: encoded parameters.
    Map {
        /// Round number, echoed in the answer.
        round: u64,
        /// Registered job name.
        job: String,
        /// Resident dataset to map over.
        dataset: DatasetId,
        /// First chunk (inclusive).
        first_chunk: u32,
        /// Last chunk (exclusive).
        end_chunk: u32,
    },
    /// Worker → master: the partial results of a `Map`, one per reduction-tree node. Payload: the nodes' encoded
    /// values, concatenated in the order of `nodes`.
    MapDone {
        /// Round number from the `Map`.
        round: u64,
        /// `(tree node, encoded length)` for each partial, left to right.
        nodes: Vec<(u32, u32)>,
        /// Microseconds the worker spent computing.
        compute_us: u64,
    },
    /// Worker → master: a request could not be served (job panicked, unknown dataset...). No payload.
    Failed {
        /// Round number of the failed `Map`, or 0 for other requests.
        round: u64,
        /// What went wrong, for the user.
        error: String,
    },
    /// Master → worker: read the headers of a file source. No payload; answered with [`Message::Described`].
    Describe {
        /// The files.
        source: crate::data::loaders::FileSource,
    },
    /// Worker → master: shape and fingerprint of a file source. No payload.
    Described {
        /// Rows.
        rows: u64,
        /// Values per row.
        cols: u32,
        /// Fingerprint of the files as this worker sees them.
        fingerprint: [u8; 32],
    },
    /// Master → worker: load chunks `[first_chunk, end_chunk)` of a file source yourself. No payload; answered with
    /// [`Message::Loaded`].
    LoadSource {
        /// Identity the master gives the dataset.
        dataset: DatasetId,
        /// The files.
        source: crate::data::loaders::FileSource,
        /// Element type to read the values as.
        elem: ElemType,
        /// Fingerprint the files must have (as worker 0 saw them).
        fingerprint: [u8; 32],
        /// Rows of the whole source.
        rows: u64,
        /// Chunks the source is cut into.
        total_chunks: u32,
        /// First chunk to load.
        first_chunk: u32,
        /// End of the chunk range.
        end_chunk: u32,
    },
    /// Master → worker: run one pass of replica `replica` of a multipass job over chunks `[first_chunk,
    /// end_chunk)`. Payload: the encoded state.
    Pass {
        /// Session whose replica-local state to use (created on first use).
        session: u64,
        /// Round number, echoed in the answer.
        round: u64,
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
        /// Round number from the `Pass`.
        round: u64,
        /// The replica.
        replica: u32,
        /// Bytes of the payload that belong to the partial.
        partial_len: u64,
        /// Whether the saved local state follows the partial.
        saved: bool,
        /// Microseconds the worker spent computing.
        compute_us: u64,
    },
    /// Master → worker: forget a session's local state. No payload, no answer.
    EndSession {
        /// The session.
        session: u64,
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
            Message::Map { .. } => "Map",
            Message::MapDone { .. } => "MapDone",
            Message::Failed { .. } => "Failed",
            Message::Describe { .. } => "Describe",
            Message::Described { .. } => "Described",
            Message::LoadSource { .. } => "LoadSource",
            Message::Pass { .. } => "Pass",
            Message::PassDone { .. } => "PassDone",
            Message::RestoreLocal { .. } => "RestoreLocal",
            Message::EndSession { .. } => "EndSession",
            Message::Heartbeat => "Heartbeat",
            Message::Shutdown => "Shutdown",
        }
    }
}
