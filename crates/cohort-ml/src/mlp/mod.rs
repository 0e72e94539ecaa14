//! A multilayer perceptron for classification: any number of fully connected ReLU hidden layers, a softmax
//! output and the cross-entropy loss, in `f32`, a mini-batch at a time through register-tiled products that read
//! the batch's rows where they lie (`dense`: no copy of the batch, no packing).
//!
//! The shape is a list of layer widths, e.g. `[784, 32, 10]`: 784 inputs, one hidden layer of 32 units, 10
//! classes. The parameters are one flat `f32` vector, layer by layer `[W₁ (n₁×n₀, row-major), b₁ (n₁), W₂, b₂, …]`,
//! initialised from a seed with He's scheme (`N(0, 2/fan_in)`, biases 0). For a mini-batch `X` (rows are
//! samples) the forward pass is `A_l = relu(A_{l-1} W_lᵀ + b_l)` with the bias and the ReLU fused into one sweep,
//! the last layer without ReLU, and the loss of a row `log Σ_c e^{z_c} − z_y`. Backpropagation reuses the
//! activation buffers for the deltas; the input layer's delta is never formed. Nothing in the hot loop allocates:
//! a [`Workspace`] holds every buffer for a batch size.
//!
//! Training lives next door: [`optimizer`] (SGD with momentum, Adam), [`jobs`] (parallel SGD with model averaging
//! and synchronous data-parallel SGD as multipass jobs) and [`full_batch`] (loss and gradient as one map-reduce
//! round, for L-BFGS, deterministic across worker counts).

mod dense;
pub mod full_batch;
pub mod jobs;
pub mod optimizer;

use cohort::rng::Rng;
use cohort::Shard;

use crate::error::{MlError, Result};
use crate::kernels::{multiversion, Accum};
use crate::tiles::Isa;
use dense::{Packed, Rows, Strided};

/// Rows per block when evaluating (forward only) or computing full-batch gradients.
pub const EVAL_BLOCK: usize = 256;

/// The shape of a multilayer perceptron, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    layers: Vec<usize>,
    /// Offset of each layer's weights in the flat parameter vector (biases follow the weights).
    offsets: Vec<usize>,
    n_params: usize,
}

impl Mlp {
    /// A network with these layer widths: inputs, hidden layers…, classes. Needs at least two entries, every
    /// width ≥ 1, at least two classes, and fewer than 2³¹ parameters.
    pub fn new(layers: &[usize]) -> Result<Mlp> {
        let bad = |detail: String| Err(MlError::Config { what: "MLP layers", detail });
        if layers.len() < 2 {
            return bad(format!("{layers:?}: give at least inputs and classes, e.g. 784,32,10"));
        }
        if let Some(i) = layers.iter().position(|&n| n == 0) {
            return bad(format!("{layers:?}: layer {i} has no units"));
        }
        if *layers.last().unwrap_or(&0) < 2 {
            return bad(format!("{layers:?}: the last layer holds the classes and needs at least 2"));
        }
        let mut offsets = Vec::with_capacity(layers.len() - 1);
        let mut n: usize = 0;
        for w in layers.windows(2) {
            offsets.push(n);
            n =
                w[1].checked_mul(w[0] + 1).and_then(|k| n.checked_add(k)).filter(|&k| k < i32::MAX as usize).ok_or(
                    MlError::Config { what: "MLP layers", detail: format!("{layers:?} has too many parameters") },
                )?;
        }
        Ok(Mlp { layers: layers.to_vec(), offsets, n_params: n })
    }

    /// Parses a comma-separated list of widths such as `784,32,10`.
    pub fn parse_layers(spec: &str) -> Result<Vec<usize>> {
        spec.split(',')
            .map(|s| {
                s.trim().parse::<usize>().map_err(|_| MlError::Config {
                    what: "MLP layers",
                    detail: format!("{spec:?}: {:?} is not a whole number; write widths like 784,32,10", s.trim()),
                })
            })
            .collect()
    }

    /// The layer widths.
    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// Inputs per row.
    pub fn inputs(&self) -> usize {
        self.layers[0]
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.layers[self.layers.len() - 1]
    }

    /// Length of the flat parameter vector.
    pub fn n_params(&self) -> usize {
        self.n_params
    }

    /// Floating-point operations of one forward and backward pass over one row (multiply-adds count two).
    pub fn flops_per_row(&self) -> f64 {
        let macs: usize = self.layers.windows(2).map(|w| w[0] * w[1]).sum();
        let first = self.layers[0] * self.layers[1];
        // forward, weight gradient, and the delta product except for the input layer
        2.0 * (3 * macs - first) as f64
    }

    /// He-initialised parameters: weights `N(0, 2/fan_in)`, biases 0, from `seed`.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = Rng::derive(seed, 0x6d6c70);
        let mut theta = vec![0.0f32; self.n_params];
        for (l, w) in self.layers.windows(2).enumerate() {
            let scale = (2.0 / w[0] as f64).sqrt();
            let start = self.offsets[l];
            for v in &mut theta[start..start + w[0] * w[1]] {
                *v = (rng.normal() * scale) as f32;
            }
        }
        theta
    }

    /// Weights (`out × in`) and biases of layer `l` (0 = the first hidden layer).
    fn layer<'a>(&self, theta: &'a [f32], l: usize) -> (&'a [f32], &'a [f32]) {
        let (n_in, n_out) = (self.layers[l], self.layers[l + 1]);
        let start = self.offsets[l];
        theta[start..start + n_out * (n_in + 1)].split_at(n_out * n_in)
    }

    fn layer_mut<'a>(&self, theta: &'a mut [f32], l: usize) -> (&'a mut [f32], &'a mut [f32]) {
        let (n_in, n_out) = (self.layers[l], self.layers[l + 1]);
        let start = self.offsets[l];
        theta[start..start + n_out * (n_in + 1)].split_at_mut(n_out * n_in)
    }

    /// Checks the length of a parameter vector.
    pub fn check_params(&self, theta_len: usize) -> Result<()> {
        if theta_len != self.n_params {
            return Err(MlError::Length {
                what: "MLP parameter vector",
                expected: self.n_params,
                got: theta_len,
                hint: "θ = [W₁, b₁, W₂, b₂, …] for the layer widths given",
            });
        }
        Ok(())
    }

    /// Checks a shard's width and returns its labels as class indices.
    pub fn classes_of(&self, shard: &Shard<'_, f32>) -> Result<Vec<u32>> {
        if shard.cols != self.inputs() {
            return Err(MlError::Columns {
                model: "MLP",
                expected: self.inputs(),
                got: shard.cols,
                hint: "the first layer width must equal the number of values per row",
            });
        }
        let labels = shard.labels.ok_or(MlError::NoLabels { model: "MLP" })?;
        let k = self.classes();
        labels
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let c = y as u32;
                if c as f32 == y && (c as usize) < k {
                    Ok(c)
                } else {
                    Err(MlError::Label { row: shard.first_row + i as u64, value: y.to_string(), classes: k })
                }
            })
            .collect()
    }

    /// Forward and backward pass over one batch: `x` holds `y.len()` rows. Adds `scale ×` the gradient of the
    /// *summed* loss to `grad` (use `1/rows` for the mean) and returns the summed loss and the number of rows whose
    /// most likely class is the label.
    ///
    /// The caller guarantees the shapes (checked once per pass, not per batch): `theta` and `grad` have
    /// [`n_params`](Self::n_params) values, `x` has `rows × inputs`, and labels are class indices.
    pub fn batch_grad(
        &self,
        theta: &[f32],
        x: &[f32],
        y: &[u32],
        ws: &mut Workspace,
        grad: &mut [f32],
        scale: f32,
    ) -> Result<(f64, usize)> {
        self.batch_grad_with(theta, x, y, ws, grad, scale, Accum::Add)
    }

    /// As [`batch_grad`](Self::batch_grad), with `accum` choosing whether `scale ×` the gradient is added to
    /// `grad` (`Accum::Add`) or overwrites it (`Accum::Replace`: no need to zero `grad` first, and the products
    /// write instead of read-modify-write).
    #[allow(clippy::too_many_arguments)]
    pub fn batch_grad_with(
        &self,
        theta: &[f32],
        x: &[f32],
        y: &[u32],
        ws: &mut Workspace,
        grad: &mut [f32],
        scale: f32,
        accum: Accum,
    ) -> Result<(f64, usize)> {
        let d = self.inputs();
        if x.len() != y.len() * d {
            return Err(MlError::Shape(format!("MLP batch: {} values for {} rows of {d}", x.len(), y.len())));
        }
        self.grad_of(theta, &Packed::new(x, d), y, ws, grad, scale, accum)
    }

    /// As [`batch_grad_with`](Self::batch_grad_with) for a batch whose rows lie wherever they are — a shuffled
    /// mini-batch read in place from the resident shards, never copied: `rows[i]` (at least
    /// [`inputs`](Self::inputs) values; only those are read) has label `y[i]`.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_grad_rows(
        &self,
        theta: &[f32],
        rows: &[&[f32]],
        y: &[u32],
        ws: &mut Workspace,
        grad: &mut [f32],
        scale: f32,
        accum: Accum,
    ) -> Result<(f64, usize)> {
        if rows.len() != y.len() {
            return Err(MlError::Shape(format!("MLP batch: {} rows for {} labels", rows.len(), y.len())));
        }
        self.grad_of(theta, rows, y, ws, grad, scale, accum)
    }

    #[allow(clippy::too_many_arguments)]
    fn grad_of<X: Rows + ?Sized>(
        &self,
        theta: &[f32],
        x: &X,
        y: &[u32],
        ws: &mut Workspace,
        grad: &mut [f32],
        scale: f32,
        accum: Accum,
    ) -> Result<(f64, usize)> {
        let nb = y.len();
        let depth = self.layers.len() - 1;
        let isa = Isa::detect();
        ws.ensure(self, nb);
        self.forward(theta, x, nb, ws, isa)?;
        let (loss, correct) = softmax_delta(&mut ws.acts[depth - 1][..nb * self.classes()], y, self.classes());
        for l in (0..depth).rev() {
            let (n_in, n_out) = (self.layers[l], self.layers[l + 1]);
            let (lower, upper) = ws.acts.split_at_mut(l);
            let delta = &upper[0][..nb * n_out];
            let (gw, gb) = self.layer_mut(grad, l);
            // ∇W = scale · δᵀ · input: A(s = row, i = unit) = δ[row, unit].
            let by_row = Strided { values: delta, s_step: n_out, i_step: 1 };
            if l == 0 {
                dense::atb(gw, n_out, by_row, x, n_in, scale, accum, isa)?;
            } else {
                let input = Packed::new(&lower[l - 1][..nb * n_in], n_in);
                dense::atb(gw, n_out, by_row, &input, n_in, scale, accum, isa)?;
            }
            if accum == Accum::Replace {
                gb.fill(0.0);
            }
            column_sums(delta, gb, scale);
            if l > 0 {
                // δ · W: A(s = unit, i = row) = δ[row, unit], B = the rows of W.
                let (w, _) = self.layer(theta, l);
                let back = &mut ws.back[..nb * n_in];
                let by_unit = Strided { values: delta, s_step: 1, i_step: n_out };
                dense::atb(back, nb, by_unit, &Packed::new(w, n_in), n_in, 1.0, Accum::Replace, isa)?;
                relu_mask(&mut lower[l - 1][..nb * n_in], back);
            }
        }
        Ok((loss, correct))
    }

    /// Forward pass of `nb` rows: fills `ws.acts` (hidden layers after ReLU, the last with the logits).
    fn forward<X: Rows + ?Sized>(&self, theta: &[f32], x: &X, nb: usize, ws: &mut Workspace, isa: Isa) -> Result<()> {
        let depth = self.layers.len() - 1;
        for l in 0..depth {
            let (n_in, n_out) = (self.layers[l], self.layers[l + 1]);
            let (w, b) = self.layer(theta, l);
            let (lower, upper) = ws.acts.split_at_mut(l);
            let out = &mut upper[0][..nb * n_out];
            if l == 0 {
                dense::xwt(out, x, w, n_in, n_out, isa)?;
            } else {
                dense::xwt(out, &Packed::new(&lower[l - 1][..nb * n_in], n_in), w, n_in, n_out, isa)?;
            }
            bias_activation(out, b, l + 1 < depth);
        }
        Ok(())
    }

    /// Mean loss and accuracy of `theta` over every row of `shard`.
    pub fn evaluate(&self, theta: &[f32], shard: &Shard<'_, f32>) -> Result<Evaluation> {
        self.check_params(theta.len())?;
        let classes = self.classes_of(shard)?;
        let rows = classes.len();
        if rows == 0 {
            return Err(MlError::Empty("MLP evaluation"));
        }
        let mut ws = Workspace::default();
        let depth = self.layers.len() - 1;
        let (d, k) = (self.inputs(), self.classes());
        let isa = Isa::detect();
        let (mut loss, mut correct) = (0.0, 0);
        for start in (0..rows).step_by(EVAL_BLOCK) {
            let nb = EVAL_BLOCK.min(rows - start);
            ws.ensure(self, nb);
            let block = Packed::new(&shard.values[start * d..(start + nb) * d], d);
            self.forward(theta, &block, nb, &mut ws, isa)?;
            let (l, c) = softmax_delta(&mut ws.acts[depth - 1][..nb * k], &classes[start..start + nb], k);
            loss += l;
            correct += c;
        }
        Ok(Evaluation { rows, loss: loss / rows as f64, accuracy: correct as f64 / rows as f64 })
    }
}

/// Loss and accuracy over a data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Rows evaluated.
    pub rows: usize,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Fraction of rows classified correctly.
    pub accuracy: f64,
}

/// Every buffer one batch needs, reused from batch to batch (grown on demand, never shrunk).
#[derive(Debug, Default, Clone)]
pub struct Workspace {
    rows: usize,
    /// Activations of layers 1..=L (row-major, `rows × width`), overwritten by the deltas during backpropagation.
    acts: Vec<Vec<f32>>,
    /// The product `delta · W` before the ReLU mask.
    back: Vec<f32>,
}

impl Workspace {
    fn ensure(&mut self, mlp: &Mlp, rows: usize) {
        let depth = mlp.layers.len() - 1;
        if self.acts.len() == depth && self.rows >= rows {
            return;
        }
        let rows = rows.max(self.rows);
        self.acts = mlp.layers[1..].iter().map(|&n| vec![0.0; rows * n]).collect();
        // `back` holds `delta · W_l` for layers l ≥ 1 only: the input layer's delta is never formed.
        let widest = mlp.layers[1..depth].iter().copied().max().unwrap_or(0);
        self.back = vec![0.0; rows * widest];
        self.rows = rows;
    }
}

/// Adds the bias to every row and, for hidden layers, applies the ReLU, in one sweep.
fn bias_activation(out: &mut [f32], b: &[f32], relu: bool) {
    for row in out.chunks_exact_mut(b.len()) {
        if relu {
            for (v, &bias) in row.iter_mut().zip(b) {
                let z = *v + bias;
                *v = if z > 0.0 { z } else { 0.0 };
            }
        } else {
            for (v, &bias) in row.iter_mut().zip(b) {
                *v += bias;
            }
        }
    }
}

/// `delta = back ⊙ [act > 0]`, written over `act` (the ReLU's derivative; the activation is no longer needed).
fn relu_mask(act: &mut [f32], back: &[f32]) {
    for (a, &g) in act.iter_mut().zip(back) {
        *a = if *a > 0.0 { g } else { 0.0 };
    }
}

/// `sums += scale · Σ_rows delta`.
fn column_sums(delta: &[f32], sums: &mut [f32], scale: f32) {
    let k = sums.len();
    for row in delta.chunks_exact(k) {
        for (s, &d) in sums.iter_mut().zip(row) {
            *s += scale * d;
        }
    }
}

/// Replaces each row of logits by `softmax − onehot(y)`; returns the summed loss `log Σ e^z − z_y` (in `f64`) and
/// the number of rows whose largest logit is the label's (ties go to the lower class).
fn softmax_delta(z: &mut [f32], y: &[u32], k: usize) -> (f64, usize) {
    let mut loss = 0.0f64;
    let mut correct = 0;
    // Shift every row by its maximum, then exponentiate the whole block in one vectorised sweep.
    for (row, &label) in z.chunks_exact_mut(k).zip(y) {
        let mut best = 0;
        for c in 1..k {
            if row[c] > row[best] {
                best = c;
            }
        }
        correct += usize::from(best == label as usize);
        let max = row[best];
        for v in row.iter_mut() {
            *v -= max;
        }
        loss -= f64::from(row[label as usize]);
    }
    exp_f32(z);
    for (row, &label) in z.chunks_exact_mut(k).zip(y) {
        let total: f32 = row.iter().sum();
        loss += f64::from(total.ln());
        let inv = 1.0 / total;
        for v in row.iter_mut() {
            *v *= inv;
        }
        row[label as usize] -= 1.0;
    }
    (loss, correct)
}

multiversion! {
    /// `e^v` for every value, through the vectorised `f64` [`exp`](crate::kernels::exp) (exact to `f32` rounding).
    fn exp_f32(values: &mut [f32]) {
        for v in values.iter_mut() {
            *v = crate::kernels::exp(f64::from(*v)) as f32;
        }
    }
}

#[cfg(test)]
mod tests;
