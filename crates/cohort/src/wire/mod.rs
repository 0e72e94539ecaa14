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
pub use message::{ChunkMeta, DatasetId, ElemType, FileFormat, FileSource, Message, PsRange, RequestId, WorkerFailure};

/// Eight bytes that open every master's first frame.
pub const MAGIC: [u8; 8] = *b"COHORT\x00\x01";
/// Version of this protocol; both sides must match exactly.
pub const PROTOCOL_VERSION: u32 = 6;

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

/// SHA-256 of an executable, remembered in `$XDG_CACHE_HOME/cohort/sha256/` (or `~/.cache/...`) under the file's
/// device, inode, size and modification time, so that starting many workers does not hash a large binary once per
/// process. Any change to the file changes the key; an unusable cache directory only means hashing again.
pub fn binary_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let key = format!(
        "{:x}-{:x}-{:x}-{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    );
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .map(|c| c.join("cohort").join("sha256"));
    if let Some(dir) = &dir {
        if let Ok(text) = std::fs::read_to_string(dir.join(&key)) {
            if let Ok(bytes) = hex::decode(text.trim()) {
                if let Ok(hash) = <[u8; 32]>::try_from(bytes) {
                    return Ok(hash);
                }
            }
        }
    }
    let hash = file_sha256(path)?;
    if let Some(dir) = &dir {
        // Write-then-rename so concurrent workers never read a half-written entry; failures are harmless.
        let tmp = dir.join(format!("{key}.tmp.{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, hex::encode(hash)))
            .and_then(|_| std::fs::rename(&tmp, dir.join(&key)));
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(hash)
}

/// SHA-256 of the running executable, computed once per process (and cached across processes, see
/// [`binary_sha256`]).
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
        binary_sha256(&path).map_err(|e| format!("cannot hash own executable {}: {e}", path.display()))
    })
    .clone()
    .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_binary_hash_follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bin");
        std::fs::write(&f, b"one").unwrap();
        let first = binary_sha256(&f).unwrap();
        assert_eq!(first, file_sha256(&f).unwrap());
        assert_eq!(binary_sha256(&f).unwrap(), first, "second call answers from the cache");
        // A new file (new inode and size) gets a new entry.
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, b"two!").unwrap();
        assert_eq!(binary_sha256(&f).unwrap(), file_sha256(&f).unwrap());
    }
}
