//! The driver: runs a [`Stepper`] to its end, writing a JSON line per iteration or epoch, checkpointing every K of
//! them, when asked to stop (an interrupt flag) and when a step fails, and resuming from a checkpoint.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::{Cluster, DatasetHandle};

use super::{Result, StepRecord, Stepper, TrainError};
use crate::checkpoint::{self, CheckpointError, CheckpointWriter, DatasetInfo, Fingerprint, SaveStats};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The algorithm's stop policy ended it (the reason).
    Finished(String),
    /// The interrupt flag was raised; the state was checkpointed (if a directory was given).
    Interrupted,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Finished(why) => write!(f, "finished: {why}"),
            Outcome::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// What [`Driver::run`] reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// How the run ended.
    pub outcome: Outcome,
    /// Iterations or epochs completed in all (resumed ones included).
    pub completed: usize,
    /// Iterations or epochs completed before this process resumed the run (`None`: not resumed).
    pub resumed_at: Option<usize>,
    /// Seconds to read and restore the checkpoint.
    pub restore_seconds: f64,
    /// Seconds in steps, in this process.
    pub train_seconds: f64,
    /// The checkpoints' cost, if a directory was given (`blocking` covers the saves during the loop).
    pub checkpoints: Option<SaveStats>,
    /// Seconds of the last save at the end of the run, waiting until it is on disk (once per run).
    pub final_save_seconds: f64,
}

impl Summary {
    /// Seconds the training loop spent on checkpoints between steps, as a fraction of the training time (the
    /// final save is [`final_save_seconds`](Self::final_save_seconds)).
    pub fn checkpoint_share(&self) -> Option<f64> {
        self.checkpoints.map(|c| c.blocking.as_secs_f64() / self.train_seconds.max(1e-9))
    }
}

/// One JSON object per line, flushed after each, so a crashed run leaves its history.
pub struct JsonlLog {
    path: PathBuf,
    out: BufWriter<File>,
    started: Instant,
}

impl JsonlLog {
    /// Creates (or truncates) `path`, or appends to it when `append` (a resumed run continues its log; the
    /// iterations redone since the last checkpoint appear twice, with the same `step`).
    pub fn open(path: &Path, append: bool) -> Result<JsonlLog> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|source| TrainError::Log { path: path.to_path_buf(), source })?;
        Ok(JsonlLog { path: path.to_path_buf(), out: BufWriter::new(file), started: Instant::now() })
    }

    /// Writes one record, with `elapsed_seconds` since the log was opened, and flushes.
    pub fn write(&mut self, record: &StepRecord) -> Result<()> {
        let mut value = serde_json::to_value(record).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("elapsed_seconds".into(), self.started.elapsed().as_secs_f64().into());
        }
        let err = |source| TrainError::Log { path: self.path.clone(), source };
        serde_json::to_writer(&mut self.out, &value).map_err(|e| err(std::io::Error::other(e)))?;
        self.out.write_all(b"\n").map_err(err)?;
        self.out.flush().map_err(err)
    }
}

/// Runs a [`Stepper`]: the one training loop of cohort, used by the command line and by library users.
#[derive(Debug, Clone, Default)]
pub struct Driver {
    checkpoint: Option<(PathBuf, usize)>,
    resume: Option<PathBuf>,
    resume_if_present: bool,
    log: Option<PathBuf>,
    stop: Option<Arc<AtomicBool>>,
}

/// Default spacing of checkpoints for full-batch optimizers (iterations).
pub const DEFAULT_EVERY_ITERATIONS: usize = 10;

/// At the default interval, the time between two saves is at least this many times what a save costs.
const COST_FACTOR: u32 = 50;

impl Driver {
    /// A driver that only runs the steps.
    pub fn new() -> Driver {
        Driver::default()
    }

    /// Checkpoints into `dir` every `every` iterations or epochs, when interrupted, when a step fails and at the
    /// end. 0 is the default: every 10 iterations or every epoch, skipping a save while less time has passed since
    /// the last one than 50 times what it cost, the background write included (so saves take about 2 % of the
    /// training time at most, even with short iterations or epochs).
    pub fn checkpoint(mut self, dir: impl Into<PathBuf>, every: usize) -> Driver {
        self.checkpoint = Some((dir.into(), every));
        self
    }

    /// Continues the run checkpointed in `dir` (and keeps checkpointing there unless [`checkpoint`](Self::checkpoint)
    /// names another directory). The checkpoint must have been written for the same algorithm, model, settings
    /// and data set.
    pub fn resume(mut self, dir: impl Into<PathBuf>) -> Driver {
        self.resume = Some(dir.into());
        self
    }

    /// Resumes from the checkpoint directory if it holds a checkpoint, else starts afresh.
    pub fn resume_if_present(mut self) -> Driver {
        self.resume_if_present = true;
        self
    }

    /// Writes a JSON line per iteration or epoch to `path`.
    pub fn log_jsonl(mut self, path: impl Into<PathBuf>) -> Driver {
        self.log = Some(path.into());
        self
    }

    /// Stops at the next step boundary (checkpointing first) once `flag` is raised, e.g. by a Ctrl-C handler.
    pub fn stop_on(mut self, flag: Arc<AtomicBool>) -> Driver {
        self.stop = Some(flag);
        self
    }

    /// The fingerprint a checkpoint of `stepper` over `data` carries.
    pub fn fingerprint<S: Stepper>(stepper: &S, data: &DatasetHandle<S::Elem>) -> Fingerprint {
        Fingerprint {
            algorithm: stepper.algorithm().into(),
            settings: stepper.settings(),
            dataset: DatasetInfo::of(data),
        }
    }

    fn interrupted(&self) -> bool {
        self.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Runs `stepper` on `cluster` over `data` until its stop policy ends it or the interrupt flag is raised.
    /// `observer` sees every completed iteration or epoch before it is logged (it may fill in
    /// [`StepRecord::test_accuracy`]).
    pub fn run<S: Stepper>(
        &self,
        stepper: &mut S,
        cluster: &mut Cluster,
        data: &DatasetHandle<S::Elem>,
        mut observer: impl FnMut(&S, &mut StepRecord),
    ) -> Result<Summary> {
        let fingerprint = Self::fingerprint(stepper, data);
        let restore_started = Instant::now();
        let mut resumed_at = None;
        let resume_dir = match (&self.resume, &self.checkpoint) {
            (Some(dir), _) => Some(dir.clone()),
            (None, Some((dir, _))) if self.resume_if_present && dir.join(checkpoint::MANIFEST).exists() => {
                Some(dir.clone())
            }
            _ => None,
        };
        if let Some(dir) = &resume_dir {
            let (manifest, state) = checkpoint::load::<S::State>(dir, &fingerprint)?;
            stepper.restore(state, cluster, data)?;
            resumed_at = Some(manifest.completed);
        }
        let restore_seconds = restore_started.elapsed().as_secs_f64();
        let target =
            self.checkpoint.as_ref().map(|(d, e)| (d.clone(), *e)).or_else(|| resume_dir.clone().map(|d| (d, 0)));
        let mut writer = match &target {
            Some((dir, _)) if resume_dir.as_deref() == Some(dir.as_path()) => {
                Some(CheckpointWriter::resume(dir, fingerprint.clone())?)
            }
            Some((dir, _)) => Some(CheckpointWriter::create(dir, fingerprint.clone())?),
            None => None,
        };
        let asked = target.as_ref().map_or(0, |t| t.1);
        let every = match asked {
            0 if stepper.unit() == "iteration" => DEFAULT_EVERY_ITERATIONS,
            0 => 1,
            k => k,
        };
        // At the default interval, a save is skipped while the time since the last one is under
        // COST_FACTOR × what that one cost (on the loop and in the writer): the cost stays near 1/COST_FACTOR of
        // the training time even when iterations or epochs are short. An explicit interval is kept exactly.
        let mut throttle = (asked == 0).then(|| (Instant::now(), Duration::ZERO, SaveStats::default()));
        let mut log = match &self.log {
            Some(path) => Some(JsonlLog::open(path, resumed_at.is_some())?),
            None => None,
        };

        let mut train = Duration::ZERO;
        let mut bytes = cluster.stats();
        let outcome = loop {
            if let Some(why) = stepper.finished() {
                break Outcome::Finished(why);
            }
            if self.interrupted() {
                break Outcome::Interrupted;
            }
            let started = Instant::now();
            let step = stepper.step(cluster, data);
            train += started.elapsed();
            let mut record = match step {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    // The state is still the one after the last completed step: keep it.
                    if let Some(w) = &mut writer {
                        let saved = save(w, stepper, cluster).and_then(|()| w.flush());
                        if self.interrupted() {
                            saved?;
                            break Outcome::Interrupted;
                        }
                        if let Err(save_error) = saved {
                            tracing::warn!("could not checkpoint after the failed step: {save_error}");
                        }
                    }
                    return Err(e);
                }
            };
            let now = cluster.stats();
            record.bytes_sent = now.bytes_sent - bytes.bytes_sent;
            record.bytes_received = now.bytes_received - bytes.bytes_received;
            bytes = now;
            observer(stepper, &mut record);
            if let Some(log) = &mut log {
                log.write(&record)?;
            }
            if let Some(w) = &mut writer {
                let due = stepper.completed().is_multiple_of(every) && stepper.finished().is_none();
                let affordable = throttle.as_ref().is_none_or(|(last, cost, _)| last.elapsed() >= *cost * COST_FACTOR);
                if due && affordable {
                    save(w, stepper, cluster)?;
                    if let Some((last, cost, seen)) = &mut throttle {
                        // The writer's share of the previous save is known by now; this save's loop share too.
                        let now = w.stats();
                        *cost = (now.blocking - seen.blocking) + (now.writing - seen.writing);
                        (*last, *seen) = (Instant::now(), now);
                    }
                }
            }
        };
        let final_started = Instant::now();
        let in_loop = writer.as_ref().map(CheckpointWriter::stats);
        if let Some(w) = &mut writer {
            save(w, stepper, cluster)?;
            w.flush()?;
        }
        let final_save_seconds = if writer.is_some() { final_started.elapsed().as_secs_f64() } else { 0.0 };
        if matches!(outcome, Outcome::Finished(_)) {
            stepper.close(cluster)?;
        }
        Ok(Summary {
            outcome,
            completed: stepper.completed(),
            resumed_at,
            restore_seconds,
            train_seconds: train.as_secs_f64(),
            checkpoints: writer
                .as_ref()
                .map(|w| SaveStats { blocking: in_loop.map_or(Duration::ZERO, |s| s.blocking), ..w.stats() }),
            final_save_seconds,
        })
    }
}

fn save<S: Stepper>(w: &mut CheckpointWriter, stepper: &S, cluster: &Cluster) -> Result<(), CheckpointError> {
    let state = stepper.state(cluster);
    w.save(stepper.unit(), stepper.completed(), stepper.finished().is_some(), &state)
}
