//! Softmax (multinomial logistic) regression with L2 weight decay: cost and gradient as one map-reduce round.
//!
//! With `k` classes and `d` features, the parameters are `θ = [W (k×d, row-major), b (k)]` in `f64`; the data are
//! `f32` rows of `d` features (e.g. Fashion-MNIST pixels in [0, 1]) with `f32` labels that are class indices
//! `0..k`. For a row `x` with label `y`, `z = W x + b` and the loss is `log Σ_c e^{z_c} − z_y`, computed as
//! `max z + log Σ_c e^{z_c − max z}` so that it never overflows. The cost is the mean loss plus `(λ/2)‖W‖²` (the
//! bias is not decayed), and `∂loss/∂z = softmax(z) − onehot(y)`.
//!
//! Each chunk returns a [`Partial`] with `count` = rows and sums `[Σ loss (1), Σ ∂/∂W (k×d), Σ ∂/∂b (k)]`;
//! `reduce` adds them and [`SoftmaxConfig::finish`] divides by the count and adds the decay term.
//!
//! **Precision and kernels.** The data are `f32` and the parameters `f64`. A chunk is processed in blocks of
//! [`BLOCK_ROWS`] rows that stay in the L2 cache: the logits `Z = X·Wᵀ` and the gradient `G += (P − Y)ᵀ·X` go
//! through [`crate::skinny`], which reads the `f32` rows in place with register tiles shaped for ten classes. Its
//! products are `f32` (`W` and `P − Y` rounded to `f32`), summed in `f32` over short runs and in `f64` beyond, so
//! the cost and gradient are accurate to about 1e-7 relative; the softmax, the loss and the sums across blocks and
//! chunks are `f64`. Since `W` is rounded to `f32` in the logits, the cost is not smooth below that level: a
//! central finite difference with step 1e-5 agrees with the gradient to about 1e-4 once there are ≥ 8 features
//! (to 1e-6 with step 1e-3).

use cohort::wire::WireError;
use cohort::{MapReduce, Payload, Shard};

use crate::error::{MlError, Result};
use crate::kernels::{exp, multiversion, with_scratch};
use crate::partial::Partial;
use crate::skinny::{rtx_add, xwt};

/// Rows per block inside a chunk: the block's rows (`rows × d` values, 200 kB for Fashion-MNIST) stay in L2 between
/// the two products.
pub const BLOCK_ROWS: usize = 64;

/// Shape and weight decay of a softmax regression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftmaxConfig {
    /// Number of classes `k` (≥ 2).
    pub classes: usize,
    /// Features per row `d`.
    pub features: usize,
    /// L2 weight decay `λ` on `W`.
    pub lambda: f64,
}

impl SoftmaxConfig {
    /// `k` classes, `d` features, decay `λ`.
    pub fn new(classes: usize, features: usize, lambda: f64) -> Self {
        SoftmaxConfig { classes, features, lambda }
    }

    /// Checks the shape and `λ`.
    pub fn validate(&self) -> Result<()> {
        if self.classes < 2 || self.features == 0 {
            return Err(MlError::Config {
                what: "softmax shape",
                detail: format!(
                    "{} classes × {} features: need ≥ 2 classes and ≥ 1 feature",
                    self.classes, self.features
                ),
            });
        }
        if self.classes.checked_mul(self.features + 1).is_none_or(|n| n > u32::MAX as usize) {
            return Err(MlError::Config {
                what: "softmax shape",
                detail: format!("{} × {} is too large", self.classes, self.features),
            });
        }
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return Err(MlError::Config { what: "weight decay λ", detail: format!("{} is not ≥ 0", self.lambda) });
        }
        Ok(())
    }

    /// Length of the parameter vector: `k·(d + 1)`.
    pub fn n_params(&self) -> usize {
        self.classes * (self.features + 1)
    }

    /// Floating-point operations of one row's cost and gradient (multiply-adds count two): the two products
    /// `z = W x` and `∇W += (p − y) xᵀ`. The exponentials and element-wise work are not counted.
    pub fn flops_per_row(&self) -> f64 {
        4.0 * self.classes as f64 * self.features as f64
    }

    /// Length of the sums of a [`Partial`]: `1 + k·(d + 1)`.
    pub fn n_sums(&self) -> usize {
        1 + self.n_params()
    }

    /// The starting point: all zeros (the problem is convex; every class starts equally likely).
    pub fn init(&self) -> Result<Vec<f64>> {
        self.validate()?;
        Ok(vec![0.0; self.n_params()])
    }

    /// The parameters to send to the workers for one evaluation at `theta`.
    pub fn params(&self, theta: &[f64]) -> Result<SoftmaxParams> {
        self.check_theta(theta)?;
        Ok(SoftmaxParams { classes: self.classes, features: self.features, theta: theta.to_vec() })
    }

    fn check_theta(&self, theta: &[f64]) -> Result<()> {
        self.validate()?;
        if theta.len() != self.n_params() {
            return Err(MlError::Length {
                what: "softmax parameter vector",
                expected: self.n_params(),
                got: theta.len(),
                hint: "θ = [W (classes×features), b (classes)]",
            });
        }
        Ok(())
    }

    fn check_shard(&self, shard: &Shard<'_, f32>) -> Result<()> {
        if shard.cols != self.features {
            return Err(MlError::Columns {
                model: "softmax regression",
                expected: self.features,
                got: shard.cols,
                hint: "the dataset's rows must hold `features` values",
            });
        }
        Ok(())
    }

    /// The partial sums over the rows of `shard` (what one chunk's `map` computes).
    pub fn partial(&self, theta: &[f64], shard: &Shard<'_, f32>) -> Result<Partial> {
        self.check_theta(theta)?;
        self.check_shard(shard)?;
        let labels = shard.labels.ok_or(MlError::NoLabels { model: "softmax regression" })?;
        let classes = class_indices(labels, self.classes, shard.first_row)?;
        partial_sums(self.classes, self.features, theta, shard.values, &classes)
    }

    /// Cost and gradient at `theta` from the reduced partial of all chunks.
    pub fn finish(&self, theta: &[f64], partial: &Partial) -> Result<(f64, Vec<f64>)> {
        self.check_theta(theta)?;
        partial.check(self.n_sums())?;
        if partial.count == 0 {
            return Err(MlError::Empty("softmax regression"));
        }
        let m = partial.count as f64;
        let n_w = self.classes * self.features;
        let decay = theta[..n_w].iter().map(|w| w * w).sum::<f64>();
        let cost = partial.sums[0] / m + 0.5 * self.lambda * decay;
        let mut grad: Vec<f64> = partial.sums[1..].iter().map(|s| s / m).collect();
        for (g, w) in grad[..n_w].iter_mut().zip(theta) {
            *g += self.lambda * w;
        }
        Ok((cost, grad))
    }

    /// Cost and gradient over all rows of `shard` in one piece: the sequential baseline.
    pub fn cost_grad(&self, theta: &[f64], shard: &Shard<'_, f32>) -> Result<(f64, Vec<f64>)> {
        let partial = self.partial(theta, shard)?;
        self.finish(theta, &partial)
    }

    /// The most likely class of every row of `shard` (ties go to the lower class).
    pub fn predict(&self, theta: &[f64], shard: &Shard<'_, f32>) -> Result<Vec<usize>> {
        self.check_theta(theta)?;
        self.check_shard(shard)?;
        let (k, d) = (self.classes, self.features);
        let (w, b) = theta.split_at(k * d);
        let rows = shard.rows();
        let mut out = Vec::with_capacity(rows);
        let block = rows.clamp(1, BLOCK_ROWS);
        let mut z = vec![0.0; block * k];
        for start in (0..rows).step_by(block) {
            let nb = block.min(rows - start);
            let z = &mut z[..nb * k];
            xwt(z, &shard.values[start * d..(start + nb) * d], w, nb, d, k)?;
            for row in z.chunks_exact(k) {
                let mut best = 0;
                for c in 1..k {
                    if row[c] + b[c] > row[best] + b[best] {
                        best = c;
                    }
                }
                out.push(best);
            }
        }
        Ok(out)
    }

    /// Fraction of rows of `shard` whose predicted class equals the label.
    pub fn accuracy(&self, theta: &[f64], shard: &Shard<'_, f32>) -> Result<f64> {
        let labels = shard.labels.ok_or(MlError::NoLabels { model: "softmax regression" })?;
        let classes = class_indices(labels, self.classes, shard.first_row)?;
        if classes.is_empty() {
            return Err(MlError::Empty("accuracy"));
        }
        let predicted = self.predict(theta, shard)?;
        let correct = predicted.iter().zip(&classes).filter(|(p, c)| **p == **c as usize).count();
        Ok(correct as f64 / classes.len() as f64)
    }
}

/// Labels as class indices, or the first label that is not one.
fn class_indices(labels: &[f32], classes: usize, first_row: u64) -> Result<Vec<u32>> {
    labels
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            // `as` saturates (and maps NaN to 0), so the round trip holds exactly for whole numbers in u32 range.
            let class = y as u32;
            if class as f32 == y && (class as usize) < classes {
                Ok(class)
            } else {
                Err(MlError::Label { row: first_row + i as u64, value: y.to_string(), classes })
            }
        })
        .collect()
}

fn partial_sums(k: usize, d: usize, theta: &[f64], values: &[f32], classes: &[u32]) -> Result<Partial> {
    let rows = classes.len();
    let mut out = Partial::zeros(1 + k * (d + 1));
    out.count = rows as u64;
    if rows == 0 {
        return Ok(out);
    }
    let (w, b) = theta.split_at(k * d);
    let (loss, grads) = out.sums.split_at_mut(1);
    let (grad_w, grad_b) = grads.split_at_mut(k * d);
    let block = rows.min(BLOCK_ROWS);
    let mut loss_sum = 0.0;
    with_scratch(block * k, |z: &mut [f64]| -> Result<()> {
        for start in (0..rows).step_by(block) {
            let nb = block.min(rows - start);
            let (x, z) = (&values[start * d..(start + nb) * d], &mut z[..nb * k]);
            xwt(z, x, w, nb, d, k)?;
            loss_sum += softmax_rows(z, b, &classes[start..start + nb], grad_b);
            rtx_add(grad_w, z, x, nb, k, d)?;
        }
        Ok(())
    })?;
    loss[0] = loss_sum;
    Ok(out)
}

multiversion! {
    /// For each row of logits `z` (`b.len()` classes): adds the bias, returns the summed loss
    /// `log Σ e^z − z_y`, replaces the row by `softmax(z) − onehot(y)` and adds that to `grad_b`.
    fn softmax_rows(z: &mut [f64], b: &[f64], classes: &[u32], grad_b: &mut [f64]) -> f64 {
        let k = b.len();
        let mut loss = 0.0;
        // Shift every row by its maximum (the loss keeps `max − z_y`), then exponentiate the block in one flat,
        // fully vectorised loop.
        for (row, &y) in z.chunks_exact_mut(k).zip(classes) {
            let mut max = f64::NEG_INFINITY;
            for (v, &bias) in row.iter_mut().zip(b) {
                *v += bias;
                max = if *v > max { *v } else { max };
            }
            loss += max - row[y as usize];
            for v in row.iter_mut() {
                *v -= max;
            }
        }
        for v in z.iter_mut() {
            *v = exp(*v);
        }
        for (row, &y) in z.chunks_exact_mut(k).zip(classes) {
            let total: f64 = row.iter().sum();
            loss += total.ln();
            let inv = 1.0 / total;
            for (v, g) in row.iter_mut().zip(grad_b.iter_mut()) {
                *v *= inv;
                *g += *v;
            }
            row[y as usize] -= 1.0;
            grad_b[y as usize] -= 1.0;
        }
        loss
    }
}

/// What the master sends each worker per evaluation: the shape and `θ` (`λ` enters only in
/// [`SoftmaxConfig::finish`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SoftmaxParams {
    /// Number of classes.
    pub classes: usize,
    /// Features per row.
    pub features: usize,
    /// Parameter vector `[W (k×d), b (k)]`.
    pub theta: Vec<f64>,
}

impl Payload for SoftmaxParams {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.classes as u64).encode(out);
        (self.features as u64).encode(out);
        self.theta.encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        let classes = u64::decode(input)?;
        let features = u64::decode(input)?;
        let theta = Vec::decode(input)?;
        let size = |n: u64| usize::try_from(n).map_err(|_| WireError::Malformed(format!("size {n} too large")));
        Ok(SoftmaxParams { classes: size(classes)?, features: size(features)?, theta })
    }
}

/// Softmax regression's cost-and-gradient round (`"softmax.cost_grad"`): `map` returns a chunk's [`Partial`]
/// (sum of losses, gradient sums, row count), `reduce` adds them, [`SoftmaxConfig::finish`] adds the decay.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftmaxJob;

impl MapReduce for SoftmaxJob {
    const NAME: &'static str = "softmax.cost_grad";
    type Elem = f32;
    type Params = SoftmaxParams;
    type Output = Partial;

    fn map(&self, params: &SoftmaxParams, shard: &Shard<'_, f32>) -> Partial {
        let config = SoftmaxConfig { classes: params.classes, features: params.features, lambda: 0.0 };
        config.partial(&params.theta, shard).unwrap_or_else(|e| Partial::failed(shard.chunk, &e))
    }

    fn reduce(&self, left: Partial, right: Partial) -> Partial {
        left.merge(right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort::rng::Rng;
    use cohort::Dataset;

    /// Loss and gradient written out directly, with `f64::exp`.
    fn reference(c: &SoftmaxConfig, theta: &[f64], x: &[f32], y: &[f32]) -> (f64, Vec<f64>) {
        let (k, d) = (c.classes, c.features);
        let m = y.len() as f64;
        let mut cost = 0.0;
        let mut g = vec![0.0; theta.len()];
        for (row, &label) in x.chunks(d).zip(y) {
            let z: Vec<f64> = (0..k)
                .map(|j| theta[k * d + j] + (0..d).map(|i| theta[j * d + i] * f64::from(row[i])).sum::<f64>())
                .collect();
            let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = z.iter().map(|v| (v - max).exp()).sum();
            cost += (max + total.ln() - z[label as usize]) / m;
            for j in 0..k {
                let p = (z[j] - max).exp() / total - if j == label as usize { 1.0 } else { 0.0 };
                for i in 0..d {
                    g[j * d + i] += p * f64::from(row[i]) / m;
                }
                g[k * d + j] += p / m;
            }
        }
        for i in 0..k * d {
            cost += 0.5 * c.lambda * theta[i] * theta[i];
            g[i] += c.lambda * theta[i];
        }
        (cost, g)
    }

    fn data(rows: usize, d: usize, k: usize, seed: u64) -> Dataset<f32> {
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..rows * d).map(|_| rng.uniform() as f32).collect();
        let y: Vec<f32> = (0..rows).map(|_| rng.below(k as u64) as f32).collect();
        Dataset::new(x, d).unwrap().with_labels(y).unwrap()
    }

    fn rel_err(a: &[f64], b: &[f64]) -> f64 {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        let sum = a.iter().zip(b).map(|(x, y)| (x + y) * (x + y)).sum::<f64>().sqrt();
        diff / sum
    }

    fn random_theta(c: &SoftmaxConfig, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..c.n_params()).map(|_| rng.normal()).collect()
    }

    /// Relative error between the gradient at `theta` and central finite differences of the cost with step `eps`.
    fn finite_difference_error(c: &SoftmaxConfig, data: &Dataset<f32>, theta: &[f64], eps: f64) -> f64 {
        let cost = |t: &[f64]| c.cost_grad(t, &data.as_shard()).unwrap().0;
        let (_, grad) = c.cost_grad(theta, &data.as_shard()).unwrap();
        let numeric: Vec<f64> = (0..theta.len())
            .map(|i| {
                let mut t = theta.to_vec();
                t[i] += eps;
                let up = cost(&t);
                t[i] -= 2.0 * eps;
                (up - cost(&t)) / (2.0 * eps)
            })
            .collect();
        rel_err(&numeric, &grad)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let c = SoftmaxConfig::new(3, 4, 0.1);
        let data = data(15, 4, 3, 1);
        let theta = random_theta(&c, 2);
        let err = finite_difference_error(&c, &data, &theta, 1e-5);
        assert!(err <= 1e-7, "relative error {err:e}");
    }

    /// The same check where the products run in `f32` (64 features: whole runs of 8). The step must be large
    /// enough that the cost's `f32` rounding (about 1e-7 relative) does not swamp the difference, so the check is
    /// limited by the difference's own truncation error (about 1e-5 at this step); the gradient's accuracy itself
    /// is checked against the all-`f64` reference below.
    #[test]
    fn gradient_matches_finite_differences_on_the_f32_path() {
        let c = SoftmaxConfig::new(10, 64, 0.1);
        let data = data(40, 64, 10, 5);
        let theta = random_theta(&c, 6);
        let err = finite_difference_error(&c, &data, &theta, 1e-3);
        assert!(err <= 3e-5, "relative error {err:e}");
    }

    #[test]
    fn matches_the_reference_and_chunking_does_not_matter() {
        let c = SoftmaxConfig::new(10, 20, 1e-3);
        let data = data(300, 20, 10, 3).with_chunks(5).unwrap();
        let theta = random_theta(&c, 4);
        let (cost, grad) = c.cost_grad(&theta, &data.as_shard()).unwrap();
        let (cost_ref, grad_ref) = reference(&c, &theta, data.values(), data.labels().unwrap());
        // The products are f32 (`crate::skinny`): W and P − Y are rounded to f32 (2⁻²⁴ ≈ 6e-8), so the cost and
        // gradient agree with the all-f64 reference to about that, not to f64 rounding.
        assert!(((cost - cost_ref) / cost_ref).abs() < 1e-7);
        assert!(rel_err(&grad, &grad_ref) < 1e-7);
        let params = c.params(&theta).unwrap();
        let total =
            (0..5).map(|i| SoftmaxJob.map(&params, &data.shard(i))).reduce(|a, b| SoftmaxJob.reduce(a, b)).unwrap();
        assert_eq!(total.count, 300);
        let (cost_mr, grad_mr) = c.finish(&theta, &total).unwrap();
        // Chunks restart the f32 runs of rows in the gradient product, so the gradient moves at the f32 level.
        assert!(((cost - cost_mr) / cost).abs() < 1e-12);
        assert!(rel_err(&grad, &grad_mr) < 1e-7);
        assert_eq!(SoftmaxParams::from_bytes(&params.to_bytes()).unwrap(), params);
    }

    #[test]
    fn huge_logits_stay_finite() {
        let c = SoftmaxConfig::new(3, 2, 0.0);
        let data =
            Dataset::new(vec![1000.0f32, -1000.0, -1000.0, 1000.0], 2).unwrap().with_labels(vec![0.0, 2.0]).unwrap();
        let theta = vec![5.0, 0.0, 0.0, 5.0, -5.0, -5.0, 0.0, 0.0, 0.0];
        let (cost, grad) = c.cost_grad(&theta, &data.as_shard()).unwrap();
        assert!(cost.is_finite() && grad.iter().all(|g| g.is_finite()));
        // Row 0 is certain of class 0 (loss 0); row 1 puts its class 2 at logit 5000 below class 1: mean 2500.
        assert!((cost - 2500.0).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn predictions_and_accuracy() {
        let c = SoftmaxConfig::new(3, 2, 0.0);
        // Class c scores x·w_c: class 0 likes feature 0, class 1 feature 1, class 2 neither (bias).
        let theta = vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5];
        let x = vec![2.0f32, 0.0, 0.0, 2.0, 0.1, 0.1, 2.0, 0.0];
        let data = Dataset::new(x, 2).unwrap().with_labels(vec![0.0, 1.0, 2.0, 1.0]).unwrap();
        assert_eq!(c.predict(&theta, &data.as_shard()).unwrap(), vec![0, 1, 2, 0]);
        assert_eq!(c.accuracy(&theta, &data.as_shard()).unwrap(), 0.75);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let c = SoftmaxConfig::new(10, 4, 0.0);
        let theta = c.init().unwrap();
        for bad in [3.5f32, -1.0, 10.0] {
            let data = Dataset::new(vec![0.5f32; 8], 4).unwrap().with_labels(vec![1.0, bad]).unwrap();
            let err = c.cost_grad(&theta, &data.as_shard()).unwrap_err();
            assert!(matches!(err, MlError::Label { row: 1, .. }), "{err}");
        }
        let unlabeled = Dataset::new(vec![0.5f32; 8], 4).unwrap();
        assert!(matches!(c.cost_grad(&theta, &unlabeled.as_shard()), Err(MlError::NoLabels { .. })));
        assert!(matches!(c.accuracy(&theta, &unlabeled.as_shard()), Err(MlError::NoLabels { .. })));
        let narrow = Dataset::new(vec![0.5f32; 6], 3).unwrap().with_labels(vec![0.0, 1.0]).unwrap();
        assert!(matches!(c.cost_grad(&theta, &narrow.as_shard()), Err(MlError::Columns { .. })));
        assert!(matches!(c.predict(&theta[1..], &narrow.as_shard()), Err(MlError::Length { .. })));
        assert!(SoftmaxConfig::new(1, 4, 0.0).init().is_err());
        // Inside a job: the chunk's error reaches the master.
        let data = Dataset::new(vec![0.5f32; 8], 4).unwrap().with_labels(vec![1.0, 11.0]).unwrap();
        let partial = SoftmaxJob.map(&c.params(&theta).unwrap(), &data.shard(0));
        let err = c.finish(&theta, &partial).unwrap_err();
        assert!(err.to_string().contains("label 11 at row 1"), "{err}");
    }
}
