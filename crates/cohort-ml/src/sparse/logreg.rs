//! Sparse binary logistic regression: what a parameter-server worker computes on a mini-batch, a full evaluation as
//! a map-reduce job, and a sequential SGD baseline.
//!
//! The model is a weight per feature, `w ∈ ℝ^F` (`f32`, as servers hold and ship it), no bias (the generator's
//! classes need none; add an always-present feature for one). For a row `x` with label `y ∈ {0, 1}`, `z = w·x`
//! and the loss is `ℓ(z, y) = log(1 + e^z) − y·z`, computed without overflow.
//!
//! **The objective.** Each row carries the L2 decay of its own keys:
//!
//! ```text
//! f(w) = (1/n) Σ_rows [ ℓ(w·x, y) + (λ/2) Σ_{k ∈ row} w_k² ]  =  (1/n) Σ ℓ + (λ/2) Σ_k (n_k/n) w_k²
//! ```
//!
//! with `n_k` the rows that hold key `k`: an L2 penalty weighted by each feature's frequency. It is the penalty whose
//! mini-batch gradient needs the batch's own keys and nothing else, so a worker's gradient is an unbiased estimate
//! of `∇f` and the objective reported is the one the workers descend. A plain `(λ/2)‖w‖²` would need every
//! weight to decay at every step — every key pulled and pushed — or, decayed only when touched ("lazy"), it would
//! not be the function being minimised (rare weights would grow far beyond what the penalty allows).
//!
//! A mini-batch touches few of the `F` weights. [`batch_keys`] lists them; [`loss_grad`] takes their current
//! values (and nothing else) and returns the batch's share of `n·f` and its gradient for exactly those keys. So a
//! worker pulls `keys`, computes, and pushes `keys` with the gradient; see [`crate::sparse`] for the loop.
//!
//! Arithmetic is `f64` throughout and in a fixed order, so every function here is deterministic; gradients are
//! rounded to `f32` at the end.

use std::time::Instant;

use cohort::rng::Rng;
use cohort::{MapReduce, Shard};

use super::encoding::{SparseRow, SparseRows};
use crate::error::{MlError, Result};
use crate::partial::Partial;

/// The sorted, distinct keys the rows of a mini-batch touch: what a worker pulls before [`loss_grad`].
pub fn batch_keys(rows: &[SparseRow<'_>]) -> Vec<u64> {
    let mut keys: Vec<u64> = rows.iter().flat_map(|r| r.keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Loss and gradient of a mini-batch over exactly `keys`, given their current `weights` (`weights[i]` is the
/// weight of `keys[i]`; `keys` sorted and distinct, as [`batch_keys`] returns them, and covering every key of
/// `rows`).
///
/// Returns `(L, g)` with `L = Σ_rows [ℓ(w·x, y) + (λ/2) Σ_{k ∈ row} w_k²]` (the rows' terms of `n·f`, see the
/// [module docs](self)) and `g_i = ∂L/∂w_{keys[i]}`; `L / b` and `g / b` for `b` rows are an unbiased estimate
/// of the objective and its gradient. A row key missing from `keys` is an error naming the row.
pub fn loss_grad(keys: &[u64], weights: &[f32], rows: &[SparseRow<'_>], l2: f64) -> Result<(f64, Vec<f32>)> {
    let mut grad = vec![0.0f32; keys.len()];
    let fit = loss_grad_into(keys, weights, rows, l2, 1.0, &mut grad)?;
    Ok((fit.loss, grad))
}

/// What [`loss_grad_into`] measured on a mini-batch besides its gradient.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchFit {
    /// `L`, the rows' terms of `n·f` (as [`loss_grad`] returns it).
    pub loss: f64,
    /// Rows the weights given classify right (positive when `w·x > 0`).
    pub correct: u64,
}

/// [`loss_grad`] writing `scale · g` into `grad` (one value per key, overwritten) and counting the rows classified
/// right: what a parameter-server worker calls, with `scale = 1/b` for the gradient of the batch's mean. The same
/// arithmetic in the same order as [`loss_grad`] (which is this with `scale = 1`).
pub fn loss_grad_into(
    keys: &[u64],
    weights: &[f32],
    rows: &[SparseRow<'_>],
    l2: f64,
    scale: f64,
    grad: &mut [f32],
) -> Result<BatchFit> {
    if weights.len() != keys.len() {
        return Err(MlError::Length {
            what: "weights of the batch's keys",
            expected: keys.len(),
            got: weights.len(),
            hint: "give one weight per key, in the order of the keys",
        });
    }
    if grad.len() != keys.len() {
        return Err(MlError::Length {
            what: "gradient of the batch's keys",
            expected: keys.len(),
            got: grad.len(),
            hint: "give one gradient slot per key, in the order of the keys",
        });
    }
    if let Some(i) = (1..keys.len()).find(|&i| keys[i] <= keys[i - 1]) {
        return Err(MlError::Config {
            what: "batch keys",
            detail: format!(
                "key {} follows {}; keys must be sorted and distinct (use batch_keys)",
                keys[i],
                keys[i - 1]
            ),
        });
    }
    check_l2(l2)?;
    let mut sums = vec![0.0f64; keys.len()];
    let mut fit = BatchFit::default();
    // Positions in `keys` of the current row's keys, found once and used for the margin and the gradient.
    let mut slots = Vec::new();
    for row in rows {
        slots.clear();
        for k in row.keys() {
            let slot = keys.binary_search(&k).map_err(|_| MlError::SparseRow {
                row: row.index(),
                detail: format!(
                    "key {k} is not among the {} keys of the batch; pull the keys batch_keys lists",
                    keys.len()
                ),
            })?;
            slots.push(slot);
        }
        let (mut z, mut squares) = (0.0, 0.0);
        for (&s, &v) in slots.iter().zip(row.values()) {
            let w = f64::from(weights[s]);
            z += w * f64::from(v);
            squares += w * w;
        }
        fit.loss += logistic_loss(z, row.label()) + 0.5 * l2 * squares;
        fit.correct += u64::from((z > 0.0) == row.positive());
        let d = sigmoid(z) - row.label();
        for (&s, &v) in slots.iter().zip(row.values()) {
            sums[s] += d * f64::from(v) + l2 * f64::from(weights[s]);
        }
    }
    for (g, s) in grad.iter_mut().zip(sums) {
        *g = (s * scale) as f32;
    }
    Ok(fit)
}

/// `log(1 + e^z) − y·z`, exact for any `z` (no overflow, no cancellation for large `|z|`).
pub fn logistic_loss(z: f64, y: f64) -> f64 {
    z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z
}

/// `1 / (1 + e^−z)`, without overflow.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn check_l2(l2: f64) -> Result<()> {
    if !(l2 >= 0.0 && l2.is_finite()) {
        return Err(MlError::Config { what: "L2 decay λ", detail: format!("{l2} is not a finite number ≥ 0") });
    }
    Ok(())
}

/// `w·x` and `Σ_{k ∈ row} w_k²` of one row for a dense weight vector; a key beyond it is an error naming the row.
fn margin(weights: &[f32], row: &SparseRow<'_>) -> Result<(f64, f64)> {
    let (mut z, mut squares) = (0.0, 0.0);
    for (k, v) in row.entries() {
        let w = weights.get(k as usize).ok_or_else(|| MlError::SparseRow {
            row: row.index(),
            detail: format!("key {k} is beyond the {} weights; give one weight per feature", weights.len()),
        })?;
        let w = f64::from(*w);
        z += w * f64::from(v);
        squares += w * w;
    }
    Ok((z, squares))
}

/// Sums over the rows of `shard` for a dense weight vector: `count` = rows,
/// `sums = [Σ ℓ, Σ_rows Σ_{k ∈ row} w_k², rows classified right]` (positive when `w·x > 0`). What one chunk of
/// [`SparseLogRegEval`] computes; `λ` enters only in [`finish_eval`].
pub fn eval_partial(weights: &[f32], shard: &Shard<'_, f32>) -> Result<Partial> {
    eval_rows(weights, &SparseRows::new(shard)?)
}

/// [`eval_partial`] over a view.
fn eval_rows(weights: &[f32], rows: &SparseRows<'_>) -> Result<Partial> {
    let (mut loss, mut decay, mut correct) = (0.0, 0.0, 0.0);
    for row in rows.iter() {
        let row = row?;
        let (z, squares) = margin(weights, &row)?;
        loss += logistic_loss(z, row.label());
        decay += squares;
        if (z > 0.0) == row.positive() {
            correct += 1.0;
        }
    }
    Ok(Partial { count: rows.len() as u64, sums: vec![loss, decay, correct], error: None })
}

/// The objective and accuracy of a weight vector over a data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Rows evaluated.
    pub rows: u64,
    /// Mean loss `(1/n) Σ ℓ`.
    pub loss: f64,
    /// The objective `f(w)`: the mean loss plus the decay (see the [module docs](self)).
    pub objective: f64,
    /// Fraction of rows classified right.
    pub accuracy: f64,
}

/// The [`Evaluation`] from the reduced partial of all chunks ([`SparseLogRegEval`]'s output).
pub fn finish_eval(l2: f64, partial: &Partial) -> Result<Evaluation> {
    check_l2(l2)?;
    partial.check(3)?;
    if partial.count == 0 {
        return Err(MlError::Empty("sparse logistic regression evaluation"));
    }
    let n = partial.count as f64;
    let loss = partial.sums[0] / n;
    let objective = (partial.sums[0] + 0.5 * l2 * partial.sums[1]) / n;
    Ok(Evaluation { rows: partial.count, loss, objective, accuracy: partial.sums[2] / n })
}

/// [`Evaluation`] over all rows of a view in this process (the sequential path, e.g. a test set on the master).
pub fn evaluate(weights: &[f32], l2: f64, rows: &SparseRows<'_>) -> Result<Evaluation> {
    finish_eval(l2, &eval_rows(weights, rows)?)
}

/// Full-data evaluation as one map-reduce round (`"sparse_logreg.eval"`): the parameters are the dense weight
/// vector (4 bytes per feature: 16 MB for 2²² features, acceptable once per report, not per step), each chunk
/// returns [`eval_partial`], and [`finish_eval`] turns the sum into an [`Evaluation`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseLogRegEval;

impl MapReduce for SparseLogRegEval {
    const NAME: &'static str = "sparse_logreg.eval";
    type Elem = f32;
    type Params = Vec<f32>;
    type Output = Partial;

    fn map(&self, weights: &Vec<f32>, shard: &Shard<'_, f32>) -> Partial {
        eval_partial(weights, shard).unwrap_or_else(|e| Partial::failed(shard.chunk, &e))
    }

    fn reduce(&self, left: Partial, right: Partial) -> Partial {
        left.merge(right)
    }
}

/// Settings of the sequential SGD baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Step size on the mean mini-batch gradient.
    pub lr: f64,
    /// L2 decay `λ`.
    pub l2: f64,
    /// Rows per mini-batch.
    pub batch: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Seed of the row order (epoch `e` visits the rows in an order drawn from `(seed, e)`).
    pub seed: u64,
}

impl Default for SgdConfig {
    /// Settings that suit the generated tf-idf data: step 100 on the mean gradient of batches of 100 rows (step 1
    /// per row: rows of unit norm bound the loss's curvature by 1/4), `λ = 1e-4`, one epoch.
    fn default() -> Self {
        SgdConfig { lr: 100.0, l2: 1e-4, batch: 100, epochs: 1, seed: 42 }
    }
}

/// What the SGD baseline reports after each epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochRecord {
    /// Which epoch, from 1.
    pub epoch: usize,
    /// The objective and accuracy over the training rows at the end of the epoch.
    pub train: Evaluation,
    /// Mini-batch updates so far.
    pub updates: u64,
    /// Sum over the updates so far of the keys each touched (what a parameter server would pull and push).
    pub keys_touched: u64,
    /// Seconds the epoch's updates took (the evaluation excluded).
    pub seconds: f64,
}

/// Sequential mini-batch SGD from zero weights over `rows` with `features` weights: for each batch, the batch's
/// keys ([`batch_keys`]), their gradient ([`loss_grad`]), and `w_k −= lr · g_k / b` for those keys only — what
/// a parameter server with the SGD rule computes when there is one worker and no staleness. Calls `on_epoch` with
/// each epoch's record and weights (e.g. to evaluate a test set); returns the weights.
pub fn sgd(
    rows: &SparseRows<'_>,
    features: usize,
    config: &SgdConfig,
    mut on_epoch: impl FnMut(&EpochRecord, &[f32]),
) -> Result<Vec<f32>> {
    check_l2(config.l2)?;
    if config.batch == 0 || config.epochs == 0 || !(config.lr > 0.0 && config.lr.is_finite()) {
        return Err(MlError::Config {
            what: "SGD settings",
            detail: format!(
                "batch {}, epochs {}, step {}: need a batch and epochs of at least 1 and a finite step > 0",
                config.batch, config.epochs, config.lr
            ),
        });
    }
    if rows.is_empty() {
        return Err(MlError::Empty("SGD"));
    }
    let mut weights = vec![0.0f32; features];
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let (mut updates, mut keys_touched) = (0u64, 0u64);
    let mut pulled = Vec::new();
    for epoch in 1..=config.epochs {
        let start = Instant::now();
        order.sort_unstable();
        Rng::derive(config.seed, epoch as u64).shuffle(&mut order);
        for indices in order.chunks(config.batch) {
            let batch = rows.gather(indices)?;
            let keys = batch_keys(&batch);
            pulled.clear();
            for &k in &keys {
                pulled.push(*weights.get(k as usize).ok_or_else(|| MlError::Config {
                    what: "feature count",
                    detail: format!("{features} features, but the data holds key {k}"),
                })?);
            }
            let (_, grad) = loss_grad(&keys, &pulled, &batch, config.l2)?;
            let step = config.lr / batch.len() as f64;
            for ((&k, &w), &g) in keys.iter().zip(&pulled).zip(&grad) {
                weights[k as usize] = (f64::from(w) - step * f64::from(g)) as f32;
            }
            updates += 1;
            keys_touched += keys.len() as u64;
        }
        let seconds = start.elapsed().as_secs_f64();
        let train = evaluate(&weights, config.l2, rows)?;
        let record = EpochRecord { epoch, train, updates, keys_touched, seconds };
        if !(train.objective.is_finite()) {
            return Err(MlError::Config {
                what: "SGD step",
                detail: format!("the objective diverged ({}) in epoch {epoch}; lower the step", train.objective),
            });
        }
        on_epoch(&record, &weights);
    }
    Ok(weights)
}
