//! The wire protocol: the only module that knows what bytes cross a connection.
//!
//! - [`frame`]: length-prefixed frames (`u32` body length, `u16` header length, postcard header, raw payload).
//! - [`message`]: the header enum, one variant per message kind.
//! - [`codec`]: how parameters and results become payload bytes (tensors as raw little-endian).
//! - [`handshake`]: magic, version, binary hash and HMAC proof of the per-job secret.

pub mod codec;
pub mod frame;
pub mod handshake;
pub mod message;

use std::path::Path;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

pub use codec::{Payload, Scalar, Serde};
pub use frame::{read_frame, write_frame, Frame, MAX_FRAME};
pub use message::{ChunkMeta, DatasetId, ElemType, Message};

/// Eight bytes that open every master's first frame.
pub const MAGIC: [u8; 8] = *b"COHORT\x00\x01";
/// Version of this protocol; both sides must match exactly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Errors of the wire layer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// A frame announced more bytes than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// Limit in force.
        max: u64,
    },
    /// A header did not fit the 16-bit header length.
    #[error("frame header of {0} bytes exceeds 65535 bytes")]
    HeaderTooLarge(usize),
    /// Bytes that do not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A header failed to encode.
    #[error("cannot encode frame header: {0}")]
    Encode(String),
}

/// SHA-256 of a file, streamed.
pub fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().into())
}

/// SHA-256 of the running executable, computed once per process.
///
/// On Linux it reads `/proc/self/exe`, which stays readable even if the file was replaced after start.
pub fn own_binary_sha256() -> std::io::Result<[u8; 32]> {
    static HASH: OnceLock<Result<[u8; 32], String>> = OnceLock::new();
    HASH.get_or_init(|| {
        let proc_exe = Path::new("/proc/self/exe");
        let path = if proc_exe.exists() {
            proc_exe.to_path_buf()
        } else {
            std::env::current_exe().map_err(|e| e.to_string())?
        };
        file_sha256(&path).map_err(|e| format!("cannot hash own executable {}: {e}", path.display()))
    })
    .clone()
    .map_err(std::io::Error::other)
}
