//! Distributed mini-batch training of the MLP as multipass jobs.
//!
//! - [`PsgdJob`] (`"mlp.psgd"`): **parallel SGD with model averaging** (Zinkevich et al.; Weimer, Rao and
//!   Zinkevich). Every worker runs its own optimizer over its resident rows, starting each pass from the broadcast
//!   model; the aggregate is the row-weighted mean of the workers' models. A pass is either one local epoch or
//!   `steps` mini-batches (`--avg-every K`). Optimizer moments, the shuffle RNG and the cursor stay on the worker.
//! - [`BspJob`] (`"mlp.bsp"`): **synchronous data-parallel SGD**: one pass is one mini-batch step; every worker
//!   computes the gradient of its share of the batch (`⌈batch / workers⌉` rows), the aggregate is the mean
//!   gradient, and the master applies the update ([`BspState::grad`] is what it reads). Mathematically sequential
//!   mini-batch SGD; the price is one round trip per step.
//!
//! Both are reproducible for a fixed number of replicas and seed, whatever the number of processes: each replica
//! shuffles its rows, at the start of each of its local epochs, with a generator derived from the session seed, its
//! index and the epoch, and the aggregate sums in replica order. Both save their replica-local state (optimizer
//! moments, epoch and cursor — not the permutation, which is rebuilt from the seed) after every pass, so a replica
//! moved to another process after a failure, or resumed by a restarted master, continues bit-identically. A bad shard (wrong width, a label
//! that is not a class) does not panic: the worker reports the error in its partial and the aggregate carries it to
//! the master in the state's `error`.

use cohort::rng::Rng;
use cohort::wire::WireError;
use cohort::{Contribution, Multipass, Payload, ReplicaContext, Serde, Shard};
use serde::{Deserialize, Serialize};

use super::optimizer::{Optimizer, OptimizerSpec};
use super::{Mlp, Workspace};
use crate::error::Result;
use crate::kernels::Accum;

/// What every worker needs to know to train: shape, update rule, batch size and pass length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Layer widths (inputs, hidden…, classes).
    pub layers: Vec<usize>,
    /// Update rule (applied on the workers by [`PsgdJob`], on the master with [`BspJob`]).
    pub optimizer: OptimizerSpec,
    /// Mini-batch rows (for [`BspJob`]: of the whole step, split among the workers).
    pub batch: usize,
    /// [`PsgdJob`]: mini-batches per pass; 0 means one pass over the worker's rows (an epoch).
    pub steps: usize,
    /// [`PsgdJob`]: block momentum `μ` of the aggregate (Chen & Huo's blockwise model-update filtering). 0 is plain
    /// model averaging; otherwise the averaged update `Δ` of each pass is filtered as `v ← μ·v + Δ`, `θ ← θ + v`,
    /// which restores the progress that averaging N workers' shorter trajectories loses (`1 − 1/N` is the usual
    /// choice).
    pub block_momentum: f32,
}

/// Loss and accuracy sums over the rows trained on during a pass (the running training figures, as the seed's
/// table reports them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PassStats {
    /// Σ loss over the rows seen (each at the parameters of its step).
    pub loss_sum: f64,
    /// Rows classified correctly.
    pub correct: u64,
    /// Rows seen.
    pub seen: u64,
}

impl PassStats {
    /// Mean loss.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    /// Accuracy.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }

    /// Sums two sets of figures.
    pub fn add(&mut self, other: PassStats) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.seen += other.seen;
    }
}

impl Payload for PassStats {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.loss_sum, self.correct, self.seen).encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        let (loss_sum, correct, seen) = <(f64, u64, u64)>::decode(input)?;
        Ok(PassStats { loss_sum, correct, seen })
    }
}

/// The model averaging job's state: the spec, the model and the figures of the pass that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct PsgdState {
    /// How to train.
    pub spec: TrainSpec,
    /// The (averaged) parameters.
    pub theta: Vec<f32>,
    /// Block-momentum buffer `v` (empty until the first filtered aggregate; unused by the workers).
    pub velocity: Vec<f32>,
    /// Training figures of the last pass, summed over the workers.
    pub stats: PassStats,
    /// The first worker error of the last pass, if any.
    pub error: Option<String>,
}

impl PsgdState {
    /// The state to start from.
    pub fn new(spec: TrainSpec, theta: Vec<f32>) -> Self {
        PsgdState { spec, theta, velocity: Vec::new(), stats: PassStats::default(), error: None }
    }
}

impl Payload for PsgdState {
    fn encode(&self, out: &mut Vec<u8>) {
        Serde(self.spec.clone()).encode(out);
        self.theta.encode(out);
        self.velocity.encode(out);
        self.stats.encode(out);
        self.error.encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        Ok(PsgdState {
            spec: Serde::<TrainSpec>::decode(input)?.0,
            theta: Vec::decode(input)?,
            velocity: Vec::decode(input)?,
            stats: PassStats::decode(input)?,
            error: Option::decode(input)?,
        })
    }
}

/// A worker's report after a pass: its model (PSGD) or gradient sum (BSP), figures, or the error that stopped it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPartial {
    /// Parameters after the pass ([`PsgdJob`]) or Σ gradients over the rows of the step ([`BspJob`]).
    pub values: Vec<f32>,
    /// Training figures of the pass.
    pub stats: PassStats,
    /// Why the pass could not run.
    pub error: Option<String>,
}

impl WorkerPartial {
    fn failed(e: impl std::fmt::Display) -> Self {
        WorkerPartial { values: Vec::new(), stats: PassStats::default(), error: Some(e.to_string()) }
    }
}

impl Payload for WorkerPartial {
    fn encode(&self, out: &mut Vec<u8>) {
        self.values.encode(out);
        self.stats.encode(out);
        self.error.encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        Ok(WorkerPartial {
            values: Vec::decode(input)?,
            stats: PassStats::decode(input)?,
            error: Option::decode(input)?,
        })
    }
}

/// A replica's rows in shuffled order and a cursor into them, plus the batch's labels and workspace.
///
/// Local epoch `e` visits the rows in the order of the identity permutation shuffled by a generator derived from
/// `(seed, replica, e)`, so the order is rebuilt from three numbers after a move and never needs to be sent.
pub struct Sampler {
    seed: u64,
    replica: u32,
    /// Local epochs started so far (the current one is `epoch`, counted from 1).
    epoch: u64,
    order: Vec<u32>,
    cursor: usize,
    y: Vec<u32>,
    ws: Workspace,
}

impl Sampler {
    fn new(ctx: &ReplicaContext) -> Self {
        Sampler {
            seed: ctx.seed,
            replica: ctx.replica,
            epoch: 0,
            order: Vec::new(),
            cursor: 0,
            y: Vec::new(),
            ws: Workspace::default(),
        }
    }

    /// The sampler of a saved `(epoch, cursor)`: the order is rebuilt on the first [`prepare`](Self::prepare).
    fn restored(ctx: &ReplicaContext, epoch: u64, cursor: u64) -> Self {
        Sampler { epoch, cursor: cursor as usize, ..Sampler::new(ctx) }
    }

    /// The row order of local epoch `epoch` over `n` rows.
    fn order_of(&self, epoch: u64, n: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..n as u32).collect();
        let stream = 0x7073_6764_0000_0000 ^ (u64::from(self.replica) << 32) ^ epoch;
        Rng::derive(self.seed, stream).shuffle(&mut order);
        order
    }

    /// Validates the shards and returns their labels as classes, concatenated, with each shard's first local row.
    fn prepare(&mut self, mlp: &Mlp, shards: &[Shard<'_, f32>]) -> Result<(Vec<u32>, Vec<usize>)> {
        let mut classes = Vec::new();
        let mut starts = Vec::with_capacity(shards.len());
        for s in shards {
            starts.push(classes.len());
            classes.extend(mlp.classes_of(s)?);
        }
        if self.order.len() != classes.len() {
            if self.epoch == 0 {
                // Nothing visited yet: the first batch starts epoch 1.
                self.order = (0..classes.len() as u32).collect();
                self.cursor = self.order.len();
            } else {
                // Restored mid-way: rebuild the current epoch's order.
                self.order = self.order_of(self.epoch, classes.len());
                self.cursor = self.cursor.min(self.order.len());
            }
        }
        Ok((classes, starts))
    }

    /// Whether the current local epoch is finished.
    fn at_end(&self) -> bool {
        self.cursor >= self.order.len()
    }

    /// Picks the next batch of up to `batch` rows (reshuffling at the start of a local epoch): their labels into
    /// `y` and the rows themselves, read in place from the shards, into `rows`; returns the number of rows.
    fn next_batch<'a>(
        &mut self,
        batch: usize,
        shards: &[Shard<'a, f32>],
        classes: &[u32],
        starts: &[usize],
        rows: &mut Vec<&'a [f32]>,
    ) -> usize {
        if self.at_end() {
            self.epoch += 1;
            self.order = self.order_of(self.epoch, self.order.len());
            self.cursor = 0;
        }
        let nb = batch.min(self.order.len() - self.cursor);
        self.y.clear();
        rows.clear();
        for &row in &self.order[self.cursor..self.cursor + nb] {
            let row = row as usize;
            let s = starts.partition_point(|&start| start <= row) - 1;
            let (local, d) = (row - starts[s], shards[s].cols);
            rows.push(&shards[s].values[local * d..(local + 1) * d]);
            self.y.push(classes[row]);
        }
        self.cursor += nb;
        nb
    }
}

/// A PSGD replica's local state: its optimizer, sampler and gradient buffer.
pub struct PsgdLocal {
    optimizer: Option<Optimizer>,
    sampler: Sampler,
    theta: Vec<f32>,
    grad: Vec<f32>,
}

/// Parallel SGD with model averaging (`"mlp.psgd"`), see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct PsgdJob;

impl PsgdJob {
    fn run(&self, state: &PsgdState, local: &mut PsgdLocal, shards: &[Shard<'_, f32>]) -> Result<WorkerPartial> {
        let spec = &state.spec;
        let mlp = Mlp::new(&spec.layers)?;
        mlp.check_params(state.theta.len())?;
        spec.optimizer.validate()?;
        let optimizer = local.optimizer.get_or_insert_with(|| Optimizer::new(spec.optimizer, mlp.n_params()));
        // The master may change the learning rate from pass to pass (a schedule); the moments stay.
        optimizer.set_spec(spec.optimizer);
        let (classes, starts) = local.sampler.prepare(&mlp, shards)?;
        let mut stats = PassStats::default();
        if classes.is_empty() {
            return Ok(WorkerPartial { values: state.theta.clone(), stats, error: None });
        }
        local.theta.clear();
        local.theta.extend_from_slice(&state.theta);
        local.grad.resize(mlp.n_params(), 0.0);
        let batch = spec.batch.max(1);
        let mut rows = Vec::with_capacity(batch);
        // One local epoch: finish the current one, or run a whole fresh one if the last pass ended it.
        let mut steps = if spec.steps == 0 { usize::MAX } else { spec.steps };
        let whole_epoch = spec.steps == 0;
        let mut started = false;
        while steps > 0 {
            if whole_epoch && started && local.sampler.at_end() {
                break;
            }
            started = true;
            let s = &mut local.sampler;
            let nb = s.next_batch(batch, shards, &classes, &starts, &mut rows);
            let (loss, correct) = mlp.batch_grad_rows(
                &local.theta,
                &rows,
                &s.y,
                &mut s.ws,
                &mut local.grad,
                1.0 / nb as f32,
                Accum::Replace,
            )?;
            optimizer.step(&mut local.theta, &local.grad);
            stats.add(PassStats { loss_sum: loss, correct: correct as u64, seen: nb as u64 });
            steps -= 1;
        }
        Ok(WorkerPartial { values: local.theta.clone(), stats, error: None })
    }
}

impl Multipass for PsgdJob {
    const NAME: &'static str = "mlp.psgd";
    type Elem = f32;
    type State = PsgdState;
    type Partial = WorkerPartial;
    type Local = PsgdLocal;

    fn init_local(&self, _state: &PsgdState, ctx: &ReplicaContext) -> PsgdLocal {
        PsgdLocal { optimizer: None, sampler: Sampler::new(ctx), theta: Vec::new(), grad: Vec::new() }
    }

    fn save_local(&self, local: &PsgdLocal) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        (local.sampler.epoch, local.sampler.cursor as u64).encode(&mut out);
        match &local.optimizer {
            Some(o) => {
                let (m, v, t) = o.moments();
                (Some(Serde(o.spec())), m.to_vec(), v.to_vec(), t).encode(&mut out)
            }
            None => (None::<Serde<OptimizerSpec>>, Vec::<f32>::new(), Vec::<f32>::new(), 0i32).encode(&mut out),
        }
        Some(out)
    }

    fn restore_local(&self, state: &PsgdState, ctx: &ReplicaContext, saved: &[u8]) -> Result<PsgdLocal, String> {
        type Saved = ((u64, u64), (Option<Serde<OptimizerSpec>>, Vec<f32>, Vec<f32>, i32));
        let ((epoch, cursor), (spec, m, v, t)) = Saved::from_bytes(saved).map_err(|e| e.to_string())?;
        let optimizer = match spec {
            Some(Serde(spec)) => {
                let n = Mlp::new(&state.spec.layers).map_err(|e| e.to_string())?.n_params();
                Some(Optimizer::from_moments(spec, n, m, v, t).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        Ok(PsgdLocal { optimizer, sampler: Sampler::restored(ctx, epoch, cursor), theta: Vec::new(), grad: Vec::new() })
    }

    fn pass(&self, state: &PsgdState, local: &mut PsgdLocal, shards: &[Shard<'_, f32>]) -> WorkerPartial {
        self.run(state, local, shards).unwrap_or_else(WorkerPartial::failed)
    }

    fn aggregate(&self, state: &PsgdState, parts: Vec<Contribution<WorkerPartial>>) -> PsgdState {
        let mut next = PsgdState::new(state.spec.clone(), state.theta.clone());
        if let Some(e) = parts.iter().enumerate().find_map(|(i, c)| c.partial.error.as_ref().map(|e| (i, e))) {
            next.error = Some(format!("worker {}: {}", e.0, e.1));
            return next;
        }
        let total: u64 = parts.iter().map(|c| c.rows).sum();
        let mut acc = vec![0.0f64; state.theta.len()];
        for c in &parts {
            if c.partial.values.len() != acc.len() {
                next.error = Some("a worker returned a model of another shape".into());
                return next;
            }
            let w = c.rows as f64 / total.max(1) as f64;
            for (a, &v) in acc.iter_mut().zip(&c.partial.values) {
                *a += w * f64::from(v);
            }
            next.stats.add(c.partial.stats);
        }
        let mu = state.spec.block_momentum;
        if mu == 0.0 {
            next.theta = acc.into_iter().map(|v| v as f32).collect();
            return next;
        }
        // Blockwise model-update filtering: Δ = mean − θ, v ← μ·v + Δ, θ ← θ + v.
        let mut velocity =
            if state.velocity.len() == acc.len() { state.velocity.clone() } else { vec![0.0; acc.len()] };
        let mut theta = state.theta.clone();
        for ((t, v), mean) in theta.iter_mut().zip(velocity.iter_mut()).zip(acc) {
            *v = mu * *v + (mean as f32 - *t);
            *t += *v;
        }
        next.theta = theta;
        next.velocity = velocity;
        next
    }
}

/// The synchronous SGD job's state: broadcast with the current model; returned with the mean gradient of the
/// step in `grad` (the master applies the update and clears it).
#[derive(Debug, Clone, PartialEq)]
pub struct BspState {
    /// How to train (`steps` is unused: one pass is one step).
    pub spec: TrainSpec,
    /// The parameters.
    pub theta: Vec<f32>,
    /// Mean gradient of the last step (empty when broadcast).
    pub grad: Vec<f32>,
    /// Figures of the last step.
    pub stats: PassStats,
    /// The first worker error of the last step, if any.
    pub error: Option<String>,
}

impl BspState {
    /// The state to start from.
    pub fn new(spec: TrainSpec, theta: Vec<f32>) -> Self {
        BspState { spec, theta, grad: Vec::new(), stats: PassStats::default(), error: None }
    }
}

impl Payload for BspState {
    fn encode(&self, out: &mut Vec<u8>) {
        Serde(self.spec.clone()).encode(out);
        self.theta.encode(out);
        self.grad.encode(out);
        self.stats.encode(out);
        self.error.encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        Ok(BspState {
            spec: Serde::<TrainSpec>::decode(input)?.0,
            theta: Vec::decode(input)?,
            grad: Vec::decode(input)?,
            stats: PassStats::decode(input)?,
            error: Option::decode(input)?,
        })
    }
}

/// A BSP replica's local state: its sampler, gradient buffer and share of each batch.
pub struct BspLocal {
    sampler: Sampler,
    grad: Vec<f32>,
    workers: usize,
}

/// Synchronous data-parallel SGD (`"mlp.bsp"`), see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct BspJob;

impl BspJob {
    fn run(&self, state: &BspState, local: &mut BspLocal, shards: &[Shard<'_, f32>]) -> Result<WorkerPartial> {
        let mlp = Mlp::new(&state.spec.layers)?;
        mlp.check_params(state.theta.len())?;
        let (classes, starts) = local.sampler.prepare(&mlp, shards)?;
        local.grad.clear();
        local.grad.resize(mlp.n_params(), 0.0);
        let mut stats = PassStats::default();
        if !classes.is_empty() {
            let share = state.spec.batch.max(1).div_ceil(local.workers.max(1));
            let s = &mut local.sampler;
            let mut rows = Vec::with_capacity(share);
            let nb = s.next_batch(share, shards, &classes, &starts, &mut rows);
            let (loss, correct) =
                mlp.batch_grad_rows(&state.theta, &rows, &s.y, &mut s.ws, &mut local.grad, 1.0, Accum::Add)?;
            stats = PassStats { loss_sum: loss, correct: correct as u64, seen: nb as u64 };
        }
        Ok(WorkerPartial { values: local.grad.clone(), stats, error: None })
    }

    /// The rows of one step of `batch` rows over `workers` workers (each takes `⌈batch / workers⌉`).
    pub fn rows_per_step(batch: usize, workers: usize) -> usize {
        batch.max(1).div_ceil(workers.max(1)) * workers.max(1)
    }
}

impl Multipass for BspJob {
    const NAME: &'static str = "mlp.bsp";
    type Elem = f32;
    type State = BspState;
    type Partial = WorkerPartial;
    type Local = BspLocal;

    fn init_local(&self, _state: &BspState, ctx: &ReplicaContext) -> BspLocal {
        BspLocal { sampler: Sampler::new(ctx), grad: Vec::new(), workers: ctx.replicas as usize }
    }

    fn save_local(&self, local: &BspLocal) -> Option<Vec<u8>> {
        Some((local.sampler.epoch, local.sampler.cursor as u64).to_bytes())
    }

    fn restore_local(&self, _state: &BspState, ctx: &ReplicaContext, saved: &[u8]) -> Result<BspLocal, String> {
        let (epoch, cursor) = <(u64, u64)>::from_bytes(saved).map_err(|e| e.to_string())?;
        Ok(BspLocal {
            sampler: Sampler::restored(ctx, epoch, cursor),
            grad: Vec::new(),
            workers: ctx.replicas as usize,
        })
    }

    fn pass(&self, state: &BspState, local: &mut BspLocal, shards: &[Shard<'_, f32>]) -> WorkerPartial {
        self.run(state, local, shards).unwrap_or_else(WorkerPartial::failed)
    }

    fn aggregate(&self, state: &BspState, parts: Vec<Contribution<WorkerPartial>>) -> BspState {
        let mut next = BspState::new(state.spec.clone(), state.theta.clone());
        if let Some(e) = parts.iter().enumerate().find_map(|(i, c)| c.partial.error.as_ref().map(|e| (i, e))) {
            next.error = Some(format!("worker {}: {}", e.0, e.1));
            return next;
        }
        let mut acc = vec![0.0f64; state.theta.len()];
        for c in &parts {
            if c.partial.values.len() != acc.len() {
                next.error = Some("a worker returned a gradient of another shape".into());
                return next;
            }
            for (a, &v) in acc.iter_mut().zip(&c.partial.values) {
                *a += f64::from(v);
            }
            next.stats.add(c.partial.stats);
        }
        let inv = 1.0 / next.stats.seen.max(1) as f64;
        next.grad = acc.into_iter().map(|v| (v * inv) as f32).collect();
        next
    }
}
