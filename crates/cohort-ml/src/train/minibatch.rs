//! The MLP's mini-batch steppers: parallel SGD with model averaging ([`AveragingTrainer`], job `mlp.psgd`) and
//! synchronous data-parallel SGD ([`BspTrainer`], job `mlp.bsp`). One step is one pass (one round); an epoch ends
//! when the passes since its start have seen every training row once. The learning rate of epoch `e` of `E` is the
//! base rate times [`Schedule::factor`]. The saved state holds the model, the block-momentum velocity or the
//! master's optimizer moments, the epoch and its running figures, and the multipass session's snapshot (every
//! replica's optimizer moments, epoch and cursor), so a resumed run takes exactly the uninterrupted run's steps.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Instant;

use cohort::{Cluster, DatasetHandle, Session, SessionSnapshot};
use serde::{Deserialize, Serialize};

use super::{settings, Result, StepRecord, Stepper, TrainError};
use crate::mlp::jobs::{BspJob, BspState, PassStats, PsgdJob, PsgdState, TrainSpec};
use crate::mlp::optimizer::{Optimizer, OptimizerSpec};
use crate::mlp::Mlp;

/// Learning-rate schedule over the epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// The same rate every epoch.
    Constant,
    /// Half a cosine from the rate towards 0, evaluated at the middle of each epoch.
    Cosine,
}

impl Schedule {
    /// The factor on the learning rate in epoch `epoch` (1-based) of `epochs`.
    pub fn factor(self, epoch: usize, epochs: usize) -> f32 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                let t = (epoch as f64 - 0.5) / epochs.max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }
}

impl FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "constant" => Ok(Schedule::Constant),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(format!("unknown schedule {other:?}: use constant or cosine")),
        }
    }
}

/// The saved state of a mini-batch trainer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiniBatchState {
    /// The model.
    pub theta: Vec<f32>,
    /// Block-momentum velocity (model averaging; empty until used).
    pub velocity: Vec<f32>,
    /// The master's optimizer (synchronous SGD only).
    pub optimizer: Option<Optimizer>,
    /// Epochs completed.
    pub epoch: usize,
    /// Running figures of the current epoch.
    pub epoch_stats: PassStats,
    /// Seconds spent in the current epoch so far.
    pub epoch_seconds: f64,
    /// Passes completed.
    pub passes: u64,
    /// The multipass session (`None` before the first pass).
    pub session: Option<SavedSession>,
}

/// A [`SessionSnapshot`] whose replica states are encoded as byte strings (one copy) rather than element by
/// element: they are most of a model-averaging checkpoint (each replica's optimizer moments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    /// Session seed.
    pub seed: u64,
    /// Number of replicas.
    pub replicas: u32,
    /// Passes completed.
    pub passes: u64,
    /// Each replica's saved local state.
    pub locals: Vec<Option<Bytes>>,
}

impl From<SessionSnapshot> for SavedSession {
    fn from(s: SessionSnapshot) -> Self {
        let locals = s.locals.into_iter().map(|l| l.map(Bytes)).collect();
        SavedSession { seed: s.seed, replicas: s.replicas, passes: s.passes, locals }
    }
}

impl From<SavedSession> for SessionSnapshot {
    fn from(s: SavedSession) -> Self {
        let locals = s.locals.into_iter().map(|l| l.map(|b| b.0)).collect();
        SessionSnapshot { seed: s.seed, replicas: s.replicas, passes: s.passes, locals }
    }
}

/// Bytes serialised as one byte string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Bytes, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> std::result::Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> std::result::Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(Visitor)
    }
}

/// What the two mini-batch trainers share: the spec, the schedule, the epoch budget, the session and the state.
struct Core {
    spec: TrainSpec,
    schedule: Schedule,
    epochs: usize,
    seed: u64,
    theta0_sha: String,
    state: MiniBatchState,
    session: Option<Session>,
}

impl Core {
    fn new(spec: TrainSpec, theta0: Vec<f32>, schedule: Schedule, epochs: usize, seed: u64) -> Result<Core> {
        spec.optimizer.validate()?;
        Mlp::new(&spec.layers)?.check_params(theta0.len())?;
        if epochs == 0 || spec.batch == 0 {
            return Err(TrainError::Config("epochs and batch must be at least 1".into()));
        }
        let state = MiniBatchState {
            theta: theta0,
            velocity: Vec::new(),
            optimizer: None,
            epoch: 0,
            epoch_stats: PassStats::default(),
            epoch_seconds: 0.0,
            passes: 0,
            session: None,
        };
        let theta0_sha = cohort::sha256_le(&state.theta);
        Ok(Core { spec, schedule, epochs, seed, theta0_sha, state, session: None })
    }

    /// The update rule with this epoch's learning rate.
    fn rate(&self) -> OptimizerSpec {
        let lr = self.spec.optimizer.lr() * self.schedule.factor(self.state.epoch + 1, self.epochs);
        self.spec.optimizer.with_lr(lr)
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let layers: Vec<String> = self.spec.layers.iter().map(|n| n.to_string()).collect();
        let mut s = settings([
            ("model", "mlp".into()),
            ("layers", layers.join(",")),
            ("optimizer", format!("{:?}", self.spec.optimizer)),
            ("batch", self.spec.batch.to_string()),
            ("avg_every", self.spec.steps.to_string()),
            ("block_momentum", self.spec.block_momentum.to_string()),
            ("schedule", format!("{:?}", self.schedule)),
            ("seed", self.seed.to_string()),
            ("start_sha256", self.theta0_sha.clone()),
        ]);
        if self.schedule != Schedule::Constant {
            // The rate of every epoch depends on the number of epochs.
            s.insert("epochs".into(), self.epochs.to_string());
        }
        s
    }

    fn check_running(&self) -> Result<()> {
        if self.state.epoch >= self.epochs {
            return Err(TrainError::Config(format!("all {} epochs are done; start a new run", self.epochs)));
        }
        Ok(())
    }

    /// Adds a pass's figures; at the end of an epoch, closes it and returns its record.
    fn account(&mut self, stats: PassStats, seconds: f64, rows: usize) -> Result<Option<StepRecord>> {
        if stats.seen == 0 {
            return Err(TrainError::Config("no worker holds training rows".into()));
        }
        let st = &mut self.state;
        st.passes += 1;
        st.epoch_stats.add(stats);
        st.epoch_seconds += seconds;
        if st.epoch_stats.seen < rows as u64 {
            return Ok(None);
        }
        let loss = st.epoch_stats.loss();
        if !loss.is_finite() {
            return Err(TrainError::Diverged { loss, unit: "epoch", step: st.epoch + 1 });
        }
        st.epoch += 1;
        let record = StepRecord {
            train_accuracy: Some(st.epoch_stats.accuracy()),
            passes: Some(st.passes),
            ..StepRecord::new("epoch", st.epoch, loss, st.epoch_seconds)
        };
        st.epoch_stats = PassStats::default();
        st.epoch_seconds = 0.0;
        Ok(Some(record))
    }

    fn snapshot(&self, cluster: &Cluster) -> MiniBatchState {
        let mut state = self.state.clone();
        state.session = self.session.as_ref().map(|s| cluster.session_snapshot(s).into());
        state
    }

    fn restore(&mut self, state: MiniBatchState, cluster: &mut Cluster, _chunks: usize) -> Result<()> {
        let n = Mlp::new(&self.spec.layers)?.n_params();
        if state.theta.len() != n {
            return Err(TrainError::Config(format!(
                "the saved model has {} parameters, the MLP {n}",
                state.theta.len()
            )));
        }
        // The session resumes with the replica count it was saved with, on any number of worker processes.
        if let Some(old) = self.session.take() {
            cluster.close_session(old)?;
        }
        self.session = match &state.session {
            Some(snap) => Some(cluster.resume_session(snap.clone().into())?),
            None => None,
        };
        self.state = MiniBatchState { session: None, ..state };
        Ok(())
    }

    fn finished(&self) -> Option<String> {
        (self.state.epoch >= self.epochs).then(|| format!("all {} epochs done", self.epochs))
    }

    fn close(&mut self, cluster: &mut Cluster) -> Result<()> {
        if let Some(s) = self.session.take() {
            cluster.close_session(s)?;
        }
        Ok(())
    }
}

/// Parallel SGD with model averaging on the MLP (`mlp.psgd`): each pass, every replica trains on its own rows
/// from the broadcast model with its own optimizer, and the master averages the models (optionally filtered by
/// block momentum, see [`TrainSpec::block_momentum`]).
pub struct AveragingTrainer {
    core: Core,
}

impl AveragingTrainer {
    /// Trains `spec.layers` from `theta0` for `epochs` epochs; the multipass session's seed is `seed`.
    pub fn new(spec: TrainSpec, theta0: Vec<f32>, schedule: Schedule, epochs: usize, seed: u64) -> Result<Self> {
        Ok(AveragingTrainer { core: Core::new(spec, theta0, schedule, epochs, seed)? })
    }

    /// The current model.
    pub fn theta(&self) -> &[f32] {
        &self.core.state.theta
    }
}

impl Stepper for AveragingTrainer {
    type Elem = f32;
    type State = MiniBatchState;

    fn algorithm(&self) -> &'static str {
        "model-averaging"
    }

    fn unit(&self) -> &'static str {
        "epoch"
    }

    fn settings(&self) -> BTreeMap<String, String> {
        self.core.settings()
    }

    fn step(&mut self, cluster: &mut Cluster, data: &DatasetHandle<f32>) -> Result<Option<StepRecord>> {
        self.core.check_running()?;
        let spec = TrainSpec { optimizer: self.core.rate(), ..self.core.spec.clone() };
        let core = &mut self.core;
        let session = match &core.session {
            Some(s) => s,
            None => core.session.insert(cluster.open_session(core.seed)),
        };
        // Move the model into the broadcast state (no copy); it comes back whatever happens.
        let mut out = PsgdState::new(spec, std::mem::take(&mut core.state.theta));
        out.velocity = std::mem::take(&mut core.state.velocity);
        let started = Instant::now();
        let result = cluster.pass(&PsgdJob, session, &out, data);
        let failure = match result {
            Ok(mut n) => match n.error.take() {
                None => Ok(n),
                Some(e) => Err(TrainError::Worker(e)),
            },
            Err(e) => Err(e.into()),
        };
        let mut next = match failure {
            Ok(n) => n,
            Err(e) => {
                core.state.theta = out.theta;
                core.state.velocity = out.velocity;
                return Err(e);
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        core.state.theta = std::mem::take(&mut next.theta);
        core.state.velocity = std::mem::take(&mut next.velocity);
        core.account(next.stats, seconds, data.rows())
    }

    fn completed(&self) -> usize {
        self.core.state.epoch
    }

    fn finished(&self) -> Option<String> {
        self.core.finished()
    }

    fn state(&self, cluster: &Cluster) -> MiniBatchState {
        self.core.snapshot(cluster)
    }

    fn restore(&mut self, state: MiniBatchState, cluster: &mut Cluster, data: &DatasetHandle<f32>) -> Result<()> {
        self.core.restore(state, cluster, data.chunks())
    }

    fn close(&mut self, cluster: &mut Cluster) -> Result<()> {
        self.core.close(cluster)
    }
}

/// Synchronous data-parallel SGD on the MLP (`mlp.bsp`): each pass is one mini-batch step; the workers return the
/// gradient of their share of the batch and the master applies the update with its own optimizer.
pub struct BspTrainer {
    core: Core,
}

impl BspTrainer {
    /// Trains `spec.layers` from `theta0` for `epochs` epochs; the multipass session's seed is `seed`.
    pub fn new(spec: TrainSpec, theta0: Vec<f32>, schedule: Schedule, epochs: usize, seed: u64) -> Result<Self> {
        let mut core = Core::new(spec, theta0, schedule, epochs, seed)?;
        core.state.optimizer = Some(Optimizer::new(core.spec.optimizer, core.state.theta.len()));
        Ok(BspTrainer { core })
    }

    /// The current model.
    pub fn theta(&self) -> &[f32] {
        &self.core.state.theta
    }
}

impl Stepper for BspTrainer {
    type Elem = f32;
    type State = MiniBatchState;

    fn algorithm(&self) -> &'static str {
        "bsp"
    }

    fn unit(&self) -> &'static str {
        "epoch"
    }

    fn settings(&self) -> BTreeMap<String, String> {
        self.core.settings()
    }

    fn step(&mut self, cluster: &mut Cluster, data: &DatasetHandle<f32>) -> Result<Option<StepRecord>> {
        self.core.check_running()?;
        let rate = self.core.rate();
        let core = &mut self.core;
        let session = match &core.session {
            Some(s) => s,
            None => core.session.insert(cluster.open_session(core.seed)),
        };
        let out = BspState::new(core.spec.clone(), std::mem::take(&mut core.state.theta));
        let started = Instant::now();
        let result = cluster.pass(&BspJob, session, &out, data);
        let mut next = match result {
            Ok(mut n) if n.error.is_none() => {
                n.theta = out.theta;
                n
            }
            Ok(mut n) => {
                core.state.theta = out.theta;
                return Err(TrainError::Worker(n.error.take().unwrap_or_default()));
            }
            Err(e) => {
                core.state.theta = out.theta;
                return Err(e.into());
            }
        };
        let optimizer = core.state.optimizer.get_or_insert_with(|| Optimizer::new(rate, next.theta.len()));
        optimizer.set_spec(rate);
        optimizer.step(&mut next.theta, &next.grad);
        let seconds = started.elapsed().as_secs_f64();
        core.state.theta = next.theta;
        core.account(next.stats, seconds, data.rows())
    }

    fn completed(&self) -> usize {
        self.core.state.epoch
    }

    fn finished(&self) -> Option<String> {
        self.core.finished()
    }

    fn state(&self, cluster: &Cluster) -> MiniBatchState {
        self.core.snapshot(cluster)
    }

    fn restore(&mut self, state: MiniBatchState, cluster: &mut Cluster, data: &DatasetHandle<f32>) -> Result<()> {
        if state.optimizer.is_none() {
            return Err(TrainError::Config("the saved synchronous-SGD state lacks the optimizer's moments".into()));
        }
        self.core.restore(state, cluster, data.chunks())
    }

    fn close(&mut self, cluster: &mut Cluster) -> Result<()> {
        self.core.close(cluster)
    }
}
