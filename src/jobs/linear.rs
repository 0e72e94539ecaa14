//! Least-squares linear regression: the framework's smallest end-to-end job.
//!
//! Each round maps every chunk to its sum of squared residuals and its gradient sum; the master divides by the row
//! count and takes a gradient step. Rows are features followed by nothing else; the target is the dataset label.

use cohort::rng::Rng;
use cohort::{DataError, Dataset, MapReduce, Shard};

/// Map: `(Σ r², Σ r·[x, 1])` over a chunk, with `r = w·x + b − y` and parameters `[w, b]`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinearGradient;

impl MapReduce for LinearGradient {
    const NAME: &'static str = "linear.gradient";
    type Elem = f64;
    type Params = Vec<f64>;
    type Output = (f64, Vec<f64>);

    fn map(&self, params: &Vec<f64>, shard: &Shard<'_, f64>) -> (f64, Vec<f64>) {
        let d = shard.cols;
        let (w, b) = (&params[..d], params[d]);
        let labels = shard.labels.expect("linear regression data carries its targets as labels");
        let mut grad = vec![0.0; d + 1];
        let mut sse = 0.0;
        for (x, &y) in shard.iter_rows().zip(labels) {
            let r = x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + b - y;
            sse += r * r;
            for (g, xi) in grad.iter_mut().zip(x) {
                *g += r * xi;
            }
            grad[d] += r;
        }
        (sse, grad)
    }

    fn reduce(&self, (sse_a, mut g_a): (f64, Vec<f64>), (sse_b, g_b): (f64, Vec<f64>)) -> (f64, Vec<f64>) {
        for (a, b) in g_a.iter_mut().zip(&g_b) {
            *a += b;
        }
        (sse_a + sse_b, g_a)
    }
}

/// A generated regression problem: `y = x·w* + b* + 0.1·ε` with standard normal features and noise.
pub fn generate(rows: usize, features: usize, seed: u64) -> Result<Dataset<f64>, DataError> {
    let mut rng = Rng::new(seed);
    let w: Vec<f64> = (0..features).map(|_| rng.normal()).collect();
    let b = rng.normal();
    let mut values = Vec::with_capacity(rows * features);
    let mut targets = Vec::with_capacity(rows);
    for _ in 0..rows {
        let start = values.len();
        values.extend((0..features).map(|_| rng.normal()));
        let y = values[start..].iter().zip(&w).map(|(x, w)| x * w).sum::<f64>() + b + 0.1 * rng.normal();
        targets.push(y);
    }
    Dataset::new(values, features)?.with_labels(targets)
}

/// The least-squares objective over `rows` rows of `features` values, for the full-batch optimizers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearModel {
    /// Rows of the data set.
    pub rows: usize,
    /// Features per row.
    pub features: usize,
}

impl cohort_ml::train::RoundModel for LinearModel {
    type Job = LinearGradient;

    fn job(&self) -> LinearGradient {
        LinearGradient
    }

    fn params(&self, theta: &[f64]) -> cohort_ml::Result<Vec<f64>> {
        if theta.len() != self.features + 1 {
            return Err(cohort_ml::MlError::Length {
                what: "linear-regression parameters",
                expected: self.features + 1,
                got: theta.len(),
                hint: "θ = [w (features), b]",
            });
        }
        Ok(theta.to_vec())
    }

    fn finish(&self, _theta: &[f64], output: &(f64, Vec<f64>)) -> cohort_ml::Result<(f64, Vec<f64>)> {
        Ok(finish(self.rows, output.clone()))
    }

    fn settings(&self) -> std::collections::BTreeMap<String, String> {
        [("model", "linear".to_string()), ("features", self.features.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }
}

/// Turns the reduced `(Σ r², Σ r·[x, 1])` into `(loss, gradient)` with `loss = Σ r² / 2n`.
pub fn finish(rows: usize, (sse, mut grad): (f64, Vec<f64>)) -> (f64, Vec<f64>) {
    let n = rows as f64;
    grad.iter_mut().for_each(|g| *g /= n);
    (sse / (2.0 * n), grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let data = generate(50, 3, 1).unwrap();
        let params = vec![0.3, -0.2, 0.1, 0.05];
        let loss_at = |p: &Vec<f64>| finish(50, LinearGradient.map(p, &data.as_shard())).0;
        let (_, grad) = finish(50, LinearGradient.map(&params, &data.as_shard()));
        for i in 0..params.len() {
            let (mut up, mut down) = (params.clone(), params.clone());
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let numeric = (loss_at(&up) - loss_at(&down)) / 2e-6;
            assert!((numeric - grad[i]).abs() < 1e-6, "param {i}: {numeric} vs {}", grad[i]);
        }
    }
}
