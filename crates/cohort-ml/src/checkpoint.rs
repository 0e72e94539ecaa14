//! Checkpoints of a training run: a directory holding `manifest.json` and one state file, replaced atomically.
//!
//! ```text
//! DIR/manifest.json              {"format": "cohort-checkpoint", "version": 1, "fingerprint": {...},
//!                                 "unit": "iteration", "completed": 40, "finished": false,
//!                                 "state_file": "state-00000040.bin", "state_bytes": ..., "state_sha256": "..."}
//! DIR/state-00000040.bin         the trainer's state (serde, postcard encoding)
//! ```
//!
//! A save writes the new state file under a new name (temporary file, fsync, rename), then the manifest the same
//! way (fsync of the directory after each rename), and only then removes the previous state file. Whenever the
//! master dies — SIGKILL included — the directory holds a manifest and the state file it names, with the checksum
//! that proves it whole. The state is encoded on the training thread (a copy of a few MB at most) and written by a
//! background thread, so the training loop waits for the disk only if the previous save is still being written.
//!
//! The [`Fingerprint`] says what the state belongs to: the algorithm, the model's shape and the settings that
//! determine the trajectory, and the data set (content hash, rows, columns, chunks). [`load`] refuses a checkpoint
//! of another format version, a damaged one (truncated, a flipped byte) and one whose fingerprint differs from the
//! run that asks for it, each with an error that names the file or the value and what to do.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `format` field of every manifest.
pub const FORMAT: &str = "cohort-checkpoint";
/// The manifest and state-file version this build writes and reads.
pub const VERSION: u32 = 1;
/// Name of the manifest inside a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";

/// The data set a run trains on, as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Content hash (element type, shape, chunk count, values and labels), hex.
    pub sha256: String,
    /// Rows.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// Chunks.
    pub chunks: usize,
}

impl DatasetInfo {
    /// The record of a loaded data set.
    pub fn of<T>(data: &cohort::DatasetHandle<T>) -> DatasetInfo {
        DatasetInfo { sha256: data.id_hex(), rows: data.rows(), cols: data.cols(), chunks: data.chunks() }
    }
}

impl fmt::Display for DatasetInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.sha256.get(..12).unwrap_or(&self.sha256);
        write!(f, "{short}… ({} rows × {}, {} chunks)", self.rows, self.cols, self.chunks)
    }
}

/// What a checkpoint's state belongs to. Two runs with equal fingerprints take the same steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The training algorithm, e.g. `lbfgs`, `model-averaging`.
    pub algorithm: String,
    /// The model's kind and shape and every setting that determines the trajectory (printed values).
    pub settings: BTreeMap<String, String>,
    /// The data set.
    pub dataset: DatasetInfo,
}

/// The manifest of a checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`] when written by this build).
    pub version: u32,
    /// What the state belongs to.
    pub fingerprint: Fingerprint,
    /// `iteration` or `epoch`.
    pub unit: String,
    /// Iterations or epochs completed when the state was taken.
    pub completed: usize,
    /// Whether the run had finished.
    pub finished: bool,
    /// The state file, relative to the directory.
    pub state_file: String,
    /// Its size in bytes.
    pub state_bytes: u64,
    /// Its SHA-256, hex.
    pub state_sha256: String,
    /// The software that wrote it.
    pub written_by: String,
}

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("checkpoint: cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "read", "rename", ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// The directory holds no manifest.
    #[error(
        "{} holds no checkpoint (no {MANIFEST}); give the directory a run wrote with --checkpoint, or start \
         without --resume",
        dir.display()
    )]
    Missing {
        /// The directory.
        dir: PathBuf,
    },
    /// A damaged manifest or state file.
    #[error("checkpoint file {} is damaged: {detail}; resume from an intact copy or start afresh", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Another format or version.
    #[error(
        "{} was written in checkpoint format {found}, but this cohort reads {FORMAT} version {VERSION}; resume it \
         with the cohort version that wrote it, or start afresh",
        path.display()
    )]
    Version {
        /// The manifest.
        path: PathBuf,
        /// The format and version found.
        found: String,
    },
    /// The checkpoint belongs to another run.
    #[error(
        "checkpoint {} was written for {what} = {saved}, but this run has {what} = {given}; resume with the \
         settings and data of the checkpointed run, or start afresh in another --checkpoint directory",
        dir.display()
    )]
    Mismatch {
        /// The directory.
        dir: PathBuf,
        /// The setting that differs.
        what: String,
        /// Its value in the checkpoint.
        saved: String,
        /// Its value in this run.
        given: String,
    },
    /// A fresh run was pointed at a directory that already holds a checkpoint.
    #[error(
        "{} already holds a checkpoint ({algorithm}, {completed} {unit}s done); continue it with --resume {}, or \
         remove the directory to start afresh",
        dir.display(),
        dir.display()
    )]
    Exists {
        /// The directory.
        dir: PathBuf,
        /// Its algorithm.
        algorithm: String,
        /// Its progress.
        completed: usize,
        /// Its unit.
        unit: String,
    },
    /// The state could not be encoded.
    #[error("checkpoint: cannot encode the training state: {0}")]
    Encode(String),
}

/// `Result` with [`CheckpointError`].
pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { what, path, source }
}

/// Reads and checks the manifest of `dir` (format and version only).
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::Missing { dir: dir.to_path_buf() })
        }
        Err(e) => return Err(io("read", &path)(e)),
    };
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| CheckpointError::Damaged { path: path.clone(), detail: format!("not valid JSON ({e})") })?;
    let format = value.get("format").and_then(|v| v.as_str()).unwrap_or("(none)");
    let version = value.get("version").and_then(|v| v.as_u64());
    if format != FORMAT || version != Some(u64::from(VERSION)) {
        let found = format!("{format} version {}", version.map_or("(none)".into(), |v| v.to_string()));
        return Err(CheckpointError::Version { path, found });
    }
    serde_json::from_value(value)
        .map_err(|e| CheckpointError::Damaged { path, detail: format!("unexpected manifest contents ({e})") })
}

/// Loads the state of the checkpoint in `dir`, checking the manifest, the state file's size and checksum, and
/// that the checkpoint was written for `expected`.
pub fn load<T: DeserializeOwned>(dir: &Path, expected: &Fingerprint) -> Result<(Manifest, T)> {
    let manifest = read_manifest(dir)?;
    compare(dir, &manifest.fingerprint, expected)?;
    if manifest.state_file.contains(['/', '\\']) || manifest.state_file.starts_with('.') {
        let path = dir.join(MANIFEST);
        return Err(CheckpointError::Damaged { path, detail: format!("state file {:?}", manifest.state_file) });
    }
    let path = dir.join(&manifest.state_file);
    let bytes = std::fs::read(&path).map_err(io("read", &path))?;
    if bytes.len() as u64 != manifest.state_bytes {
        let detail = format!("{} bytes, the manifest says {} (truncated?)", bytes.len(), manifest.state_bytes);
        return Err(CheckpointError::Damaged { path, detail });
    }
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != manifest.state_sha256 {
        let detail = format!("SHA-256 {sha} differs from the manifest's {}", manifest.state_sha256);
        return Err(CheckpointError::Damaged { path, detail });
    }
    let state = postcard::from_bytes(&bytes)
        .map_err(|e| CheckpointError::Damaged { path, detail: format!("cannot decode the state ({e})") })?;
    Ok((manifest, state))
}

/// The first difference between the fingerprint a checkpoint was written for and the one of this run.
fn compare(dir: &Path, saved: &Fingerprint, given: &Fingerprint) -> Result<()> {
    let mismatch = |what: &str, saved: String, given: String| {
        Err(CheckpointError::Mismatch { dir: dir.to_path_buf(), what: what.to_string(), saved, given })
    };
    if saved.algorithm != given.algorithm {
        return mismatch("the algorithm", saved.algorithm.clone(), given.algorithm.clone());
    }
    let keys: std::collections::BTreeSet<&String> = saved.settings.keys().chain(given.settings.keys()).collect();
    for key in keys {
        let (a, b) = (saved.settings.get(key), given.settings.get(key));
        if a != b {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(not set)".into());
            return mismatch(key, show(a), show(b));
        }
    }
    if saved.dataset != given.dataset {
        return mismatch("the data set", saved.dataset.to_string(), given.dataset.to_string());
    }
    Ok(())
}

/// Figures of the saves made by a [`CheckpointWriter`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SaveStats {
    /// Checkpoints written.
    pub written: usize,
    /// Bytes of the last state file.
    pub last_bytes: u64,
    /// Time the training loop spent on saves: encoding the state and waiting for the previous write.
    pub blocking: Duration,
    /// Time the background writer spent (checksum, write, fsync, rename).
    pub writing: Duration,
}

enum Job {
    Save { manifest: Box<Manifest>, bytes: Vec<u8> },
    Flush(mpsc::Sender<()>),
}

/// Writes checkpoints of one run into a directory, in the background.
pub struct CheckpointWriter {
    dir: PathBuf,
    fingerprint: Fingerprint,
    sequence: u64,
    tx: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
    blocking: Duration,
}

#[derive(Default)]
struct Shared {
    error: Option<CheckpointError>,
    written: usize,
    last_bytes: u64,
    writing: Duration,
}

impl CheckpointWriter {
    /// A writer for a fresh run: creates `dir` if needed and refuses one that already holds a checkpoint (so that
    /// a run cannot overwrite one that could still be resumed).
    pub fn create(dir: &Path, fingerprint: Fingerprint) -> Result<CheckpointWriter> {
        match read_manifest(dir) {
            Err(CheckpointError::Missing { .. }) => {}
            Ok(m) => {
                return Err(CheckpointError::Exists {
                    dir: dir.to_path_buf(),
                    algorithm: m.fingerprint.algorithm,
                    completed: m.completed,
                    unit: m.unit,
                })
            }
            Err(CheckpointError::Io { .. })
            | Err(CheckpointError::Damaged { .. })
            | Err(CheckpointError::Version { .. }) => {
                return Err(CheckpointError::Exists {
                    dir: dir.to_path_buf(),
                    algorithm: "unreadable".into(),
                    completed: 0,
                    unit: "step".into(),
                })
            }
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        Ok(Self::spawn(dir, fingerprint))
    }

    /// A writer continuing the checkpoints of a resumed run in `dir` (after [`load`] accepted it).
    pub fn resume(dir: &Path, fingerprint: Fingerprint) -> Result<CheckpointWriter> {
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        Ok(Self::spawn(dir, fingerprint))
    }

    fn spawn(dir: &Path, fingerprint: Fingerprint) -> CheckpointWriter {
        let (tx, rx) = mpsc::sync_channel::<Job>(1);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let thread = {
            let (dir, shared) = (dir.to_path_buf(), Arc::clone(&shared));
            std::thread::Builder::new()
                .name("cohort-checkpoint".into())
                .spawn(move || writer_loop(&dir, &rx, &shared))
                .ok()
        };
        // Without a thread (the system refused one) the channel has no receiver and saves fail with an error.
        CheckpointWriter {
            dir: dir.to_path_buf(),
            fingerprint,
            sequence: 0,
            tx: Some(tx),
            thread,
            shared,
            blocking: Duration::ZERO,
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Saves `state`, taken after `completed` units (`iteration`/`epoch`). Encodes it here and hands it to the
    /// background writer, waiting only if the previous save is still being written. An error of an earlier
    /// background write is returned here.
    pub fn save<T: Serialize>(&mut self, unit: &str, completed: usize, finished: bool, state: &T) -> Result<()> {
        let started = Instant::now();
        self.check()?;
        let bytes = postcard::to_allocvec(state).map_err(|e| CheckpointError::Encode(e.to_string()))?;
        self.sequence += 1;
        let manifest = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            fingerprint: self.fingerprint.clone(),
            unit: unit.into(),
            completed,
            finished,
            state_file: format!("state-{completed:08}-{}.bin", self.sequence),
            state_bytes: bytes.len() as u64,
            state_sha256: String::new(),
            written_by: format!("cohort-ml {}", env!("CARGO_PKG_VERSION")),
        };
        let sent = self.tx.as_ref().map(|tx| tx.send(Job::Save { manifest: Box::new(manifest), bytes }));
        self.blocking += started.elapsed();
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.writer_gone()),
        }
    }

    /// Waits until every save handed over is on disk; returns the first error of the background writer.
    pub fn flush(&mut self) -> Result<()> {
        let started = Instant::now();
        let (done_tx, done_rx) = mpsc::channel();
        let sent = self.tx.as_ref().map(|tx| tx.send(Job::Flush(done_tx)));
        let ok = matches!(sent, Some(Ok(()))) && done_rx.recv().is_ok();
        self.blocking += started.elapsed();
        if !ok {
            return Err(self.writer_gone());
        }
        self.check()
    }

    /// What the saves cost so far.
    pub fn stats(&self) -> SaveStats {
        let shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        SaveStats {
            written: shared.written,
            last_bytes: shared.last_bytes,
            blocking: self.blocking,
            writing: shared.writing,
        }
    }

    fn check(&self) -> Result<()> {
        match self.shared.lock().unwrap_or_else(|e| e.into_inner()).error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn writer_gone(&self) -> CheckpointError {
        self.check().err().unwrap_or_else(|| CheckpointError::Io {
            what: "write checkpoints into",
            path: self.dir.clone(),
            source: std::io::Error::other("the checkpoint writer thread is not running"),
        })
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn writer_loop(dir: &Path, rx: &Receiver<Job>, shared: &Mutex<Shared>) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Flush(done) => {
                let _ = done.send(());
            }
            Job::Save { mut manifest, bytes } => {
                let started = Instant::now();
                manifest.state_sha256 = hex::encode(Sha256::digest(&bytes));
                let result = write_checkpoint(dir, &manifest, &bytes);
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                s.writing += started.elapsed();
                match result {
                    Ok(()) => {
                        s.written += 1;
                        s.last_bytes = bytes.len() as u64;
                    }
                    Err(e) => {
                        s.error.get_or_insert(e);
                    }
                }
            }
        }
    }
}

/// Writes `bytes` to `dir/name` atomically: a temporary file, fsync, rename, fsync of the directory.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync directory", dir))
}

fn write_checkpoint(dir: &Path, manifest: &Manifest, bytes: &[u8]) -> Result<()> {
    let previous = read_manifest(dir).ok().map(|m| m.state_file);
    write_atomically(dir, &manifest.state_file, bytes)?;
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| CheckpointError::Encode(e.to_string()))?;
    write_atomically(dir, MANIFEST, &json)?;
    if let Some(old) = previous.filter(|old| *old != manifest.state_file && !old.contains(['/', '\\'])) {
        // The new manifest is on disk: the old state file is no longer referenced.
        let _ = std::fs::remove_file(dir.join(old));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(hidden: usize) -> Fingerprint {
        Fingerprint {
            algorithm: "lbfgs".into(),
            settings: [("model".to_string(), "mlp".to_string()), ("layers".into(), format!("4,{hidden},2"))]
                .into_iter()
                .collect(),
            dataset: DatasetInfo { sha256: "ab".repeat(32), rows: 10, cols: 4, chunks: 2 },
        }
    }

    #[test]
    fn saves_are_atomic_and_loads_check_everything() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("ckpt");
        let mut w = CheckpointWriter::create(&d, fingerprint(3)).unwrap();
        w.save("iteration", 1, false, &vec![1.0f64, 2.0]).unwrap();
        w.save("iteration", 2, false, &vec![3.0f64, 4.5]).unwrap();
        w.flush().unwrap();
        assert_eq!(w.stats().written, 2);
        let (m, state): (Manifest, Vec<f64>) = load(&d, &fingerprint(3)).unwrap();
        assert_eq!((m.completed, state), (2, vec![3.0, 4.5]));
        // Only the newest state file is left.
        let files: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files.len(), 2, "{files:?}");
        drop(w);

        // A fresh run refuses to overwrite it.
        let err = CheckpointWriter::create(&d, fingerprint(3)).err().unwrap();
        assert!(err.to_string().contains("--resume"), "{err}");
        // Another shape.
        let err = load::<Vec<f64>>(&d, &fingerprint(5)).unwrap_err().to_string();
        assert!(err.contains("layers = 4,3,2") && err.contains("4,5,2"), "{err}");
        // Another data set.
        let mut other = fingerprint(3);
        other.dataset.rows = 11;
        assert!(load::<Vec<f64>>(&d, &other).unwrap_err().to_string().contains("data set"));
        // A flipped byte, then a truncated file.
        let state = d.join(&m.state_file);
        let mut bytes = std::fs::read(&state).unwrap();
        bytes[3] ^= 0x40;
        std::fs::write(&state, &bytes).unwrap();
        let err = load::<Vec<f64>>(&d, &fingerprint(3)).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("SHA-256"), "{err}");
        std::fs::write(&state, &bytes[..bytes.len() - 2]).unwrap();
        let err = load::<Vec<f64>>(&d, &fingerprint(3)).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        // Another version.
        let text = std::fs::read_to_string(d.join(MANIFEST)).unwrap().replace("\"version\": 1", "\"version\": 7");
        std::fs::write(d.join(MANIFEST), text).unwrap();
        let err = load::<Vec<f64>>(&d, &fingerprint(3)).unwrap_err().to_string();
        assert!(err.contains("version 7"), "{err}");
        // Nothing there.
        let err = load::<Vec<f64>>(dir.path(), &fingerprint(3)).unwrap_err().to_string();
        assert!(err.contains("holds no checkpoint"), "{err}");
    }
}
