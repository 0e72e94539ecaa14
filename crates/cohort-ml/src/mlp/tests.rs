//! Tests of the MLP: shapes, the gradient against finite differences of an independent `f64` implementation,
//! and that the optimizers learn a separable problem.

use cohort::rng::Rng;
use cohort::Dataset;

use super::full_batch::FullBatch;
use super::optimizer::{Optimizer, OptimizerSpec};
use super::*;

/// The loss summed over rows, written out with plain loops in `f64`.
fn reference_loss(layers: &[usize], theta: &[f64], x: &[f32], y: &[u32]) -> f64 {
    let mut total = 0.0;
    for (row, &label) in x.chunks(layers[0]).zip(y) {
        let mut a: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
        let mut offset = 0;
        for (l, w) in layers.windows(2).enumerate() {
            let (n_in, n_out) = (w[0], w[1]);
            let mut z = vec![0.0; n_out];
            for (j, zj) in z.iter_mut().enumerate() {
                *zj = theta[offset + n_out * n_in + j]
                    + (0..n_in).map(|i| theta[offset + j * n_in + i] * a[i]).sum::<f64>();
                if l + 2 < layers.len() {
                    *zj = zj.max(0.0);
                }
            }
            offset += n_out * (n_in + 1);
            a = z;
        }
        let max = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        total += max + a.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - a[label as usize];
    }
    total
}

fn random_problem(layers: &[usize], rows: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = Rng::new(seed);
    let x = (0..rows * layers[0]).map(|_| rng.normal() as f32).collect();
    let y = (0..rows).map(|_| rng.below(*layers.last().unwrap() as u64) as u32).collect();
    (x, y)
}

#[test]
fn shapes_are_validated() {
    assert!(Mlp::new(&[784]).is_err());
    assert!(Mlp::new(&[784, 0, 10]).is_err());
    assert!(Mlp::new(&[784, 32, 1]).is_err());
    assert!(Mlp::new(&[usize::MAX / 2, 4, 10]).is_err());
    assert_eq!(Mlp::new(&[784, 32, 10]).unwrap().n_params(), 784 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(Mlp::parse_layers("784, 32,10").unwrap(), vec![784, 32, 10]);
    assert!(Mlp::parse_layers("784,x,10").unwrap_err().to_string().contains("\"x\""));
    assert!(Mlp::parse_layers("").is_err());
}

#[test]
fn gradient_matches_finite_differences() {
    // Two hidden layers so that the ReLU mask and the delta product between hidden layers are exercised.
    for layers in [vec![7, 5, 4, 3], vec![6, 4, 2]] {
        let mlp = Mlp::new(&layers).unwrap();
        let (x, y) = random_problem(&layers, 9, 3);
        let theta = mlp.init(5);
        // Non-zero biases so that ReLU kinks do not line up with zero.
        let theta: Vec<f32> = theta.iter().enumerate().map(|(i, v)| v + 0.05 * ((i % 7) as f32 - 3.0)).collect();
        let mut grad = vec![0.0f32; mlp.n_params()];
        let mut ws = Workspace::default();
        let (loss, _) = mlp.batch_grad(&theta, &x, &y, &mut ws, &mut grad, 1.0).unwrap();
        let t64: Vec<f64> = theta.iter().map(|&v| f64::from(v)).collect();
        let reference = reference_loss(&layers, &t64, &x, &y);
        assert!((loss - reference).abs() < 1e-5 * reference.abs().max(1.0), "{loss} vs {reference}");
        let eps = 1e-6;
        let mut diff2 = 0.0;
        let mut norm2 = 0.0;
        for i in 0..t64.len() {
            let mut plus = t64.clone();
            plus[i] += eps;
            let mut minus = t64.clone();
            minus[i] -= eps;
            let fd = (reference_loss(&layers, &plus, &x, &y) - reference_loss(&layers, &minus, &x, &y)) / (2.0 * eps);
            diff2 += (fd - f64::from(grad[i])).powi(2);
            norm2 += fd * fd;
        }
        let rel = (diff2 / norm2).sqrt();
        assert!(rel < 1e-5, "{layers:?}: relative gradient error {rel:e}");
    }
}

#[test]
fn gradient_accumulates_with_a_scale() {
    let layers = [5, 3, 2];
    let mlp = Mlp::new(&layers).unwrap();
    let (x, y) = random_problem(&layers, 6, 1);
    let theta = mlp.init(1);
    let mut ws = Workspace::default();
    let mut whole = vec![0.0f32; mlp.n_params()];
    mlp.batch_grad(&theta, &x, &y, &mut ws, &mut whole, 0.5).unwrap();
    // Two halves added into one buffer give the same sum (up to f32 rounding).
    let mut halves = vec![0.0f32; mlp.n_params()];
    mlp.batch_grad(&theta, &x[..15], &y[..3], &mut ws, &mut halves, 0.5).unwrap();
    mlp.batch_grad(&theta, &x[15..], &y[3..], &mut ws, &mut halves, 0.5).unwrap();
    for (a, b) in whole.iter().zip(&halves) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // Replacing gives what adding to zeros gives, whatever the buffer held.
    let mut replaced = vec![f32::NAN; mlp.n_params()];
    mlp.batch_grad_with(&theta, &x, &y, &mut ws, &mut replaced, 0.5, Accum::Replace).unwrap();
    assert_eq!(replaced, whole);
}

/// Two Gaussian blobs per class in 10 dimensions.
fn blobs(rows: usize, seed: u64) -> Dataset<f32> {
    let mut rng = Rng::new(seed);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for _ in 0..rows {
        let c = rng.below(3) as usize;
        for j in 0..10 {
            let centre = if j % 3 == c { 2.0 } else { 0.0 };
            x.push((centre + 0.7 * rng.normal()) as f32);
        }
        y.push(c as f32);
    }
    Dataset::new(x, 10).unwrap().with_labels(y).unwrap()
}

#[test]
fn sgd_and_adam_learn_separable_classes() {
    let data = blobs(600, 2);
    let mlp = Mlp::new(&[10, 16, 3]).unwrap();
    let shard = data.as_shard();
    let classes = mlp.classes_of(&shard).unwrap();
    for spec in [OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9 }, OptimizerSpec::adam(0.01)] {
        let mut theta = mlp.init(3);
        let before = mlp.evaluate(&theta, &shard).unwrap();
        let mut opt = Optimizer::new(spec, mlp.n_params());
        let mut grad = vec![0.0; mlp.n_params()];
        let mut ws = Workspace::default();
        for _ in 0..5 {
            for start in (0..600).step_by(32) {
                let end = (start + 32).min(600);
                grad.fill(0.0);
                let scale = 1.0 / (end - start) as f32;
                mlp.batch_grad(
                    &theta,
                    &shard.values[start * 10..end * 10],
                    &classes[start..end],
                    &mut ws,
                    &mut grad,
                    scale,
                )
                .unwrap();
                opt.step(&mut theta, &grad);
            }
        }
        let after = mlp.evaluate(&theta, &shard).unwrap();
        assert!(after.loss < before.loss / 3.0, "{spec:?}: {before:?} → {after:?}");
        assert!(after.accuracy > 0.95, "{spec:?}: {after:?}");
    }
}

#[test]
fn bad_shards_are_errors_not_panics() {
    let mlp = Mlp::new(&[10, 4, 3]).unwrap();
    let theta = mlp.init(0);
    let unlabelled = Dataset::new(vec![0.0f32; 20], 10).unwrap();
    assert!(matches!(mlp.evaluate(&theta, &unlabelled.as_shard()), Err(MlError::NoLabels { .. })));
    let wrong = Dataset::new(vec![0.0f32; 20], 5).unwrap().with_labels(vec![0.0; 4]).unwrap();
    assert!(matches!(mlp.evaluate(&theta, &wrong.as_shard()), Err(MlError::Columns { .. })));
    let bad_label = Dataset::new(vec![0.0f32; 20], 10).unwrap().with_labels(vec![0.0, 3.0]).unwrap();
    assert!(matches!(mlp.evaluate(&theta, &bad_label.as_shard()), Err(MlError::Label { row: 1, .. })));
    assert!(mlp.evaluate(&theta[1..], &bad_label.as_shard()).is_err());
}

#[test]
fn full_batch_gradient_is_the_mean_plus_decay() {
    let data = blobs(50, 4);
    let mlp = Mlp::new(&[10, 6, 3]).unwrap();
    let objective = FullBatch { mlp: mlp.clone(), lambda: 0.01 };
    let theta: Vec<f64> = mlp.init(7).iter().map(|&v| f64::from(v)).collect();
    let partial = objective.partial(&theta, &data.as_shard()).unwrap();
    let (cost, grad) = objective.finish(&theta, &partial).unwrap();
    let eps = 1e-3;
    for i in [0, 17, 60, mlp.n_params() - 1] {
        let mut plus = theta.clone();
        plus[i] += eps;
        let mut minus = theta.clone();
        minus[i] -= eps;
        let f = |t: &[f64]| objective.finish(t, &objective.partial(t, &data.as_shard()).unwrap()).unwrap().0;
        let fd = (f(&plus) - f(&minus)) / (2.0 * eps);
        assert!((fd - grad[i]).abs() < 2e-3 * (1.0 + fd.abs()), "θ[{i}]: {fd} vs {}", grad[i]);
    }
    assert!(cost > 0.0);
}

#[test]
fn block_momentum_filters_the_averaged_update() {
    use cohort::{Contribution, Multipass};

    use super::jobs::{PassStats, PsgdJob, PsgdState, TrainSpec, WorkerPartial};
    let spec = |mu| TrainSpec {
        layers: vec![1, 2],
        optimizer: OptimizerSpec::adam(0.01),
        batch: 1,
        steps: 0,
        block_momentum: mu,
    };
    let part = |v: f32, rows| Contribution {
        rows,
        partial: WorkerPartial { values: vec![v, v, v, v], stats: PassStats::default(), error: None },
    };
    // Plain averaging: the row-weighted mean (1·1 + 3·3) / 4 = 2.5.
    let avg = PsgdJob.aggregate(&PsgdState::new(spec(0.0), vec![0.0; 4]), vec![part(1.0, 1), part(3.0, 3)]);
    assert_eq!(avg.theta, vec![2.5; 4]);
    // μ = 0.5: first Δ = 2.5 → v = 2.5, θ = 2.5; then the workers return 3.0 → Δ = 0.5, v = 1.75, θ = 4.25.
    let first = PsgdJob.aggregate(&PsgdState::new(spec(0.5), vec![0.0; 4]), vec![part(1.0, 1), part(3.0, 3)]);
    assert_eq!((first.theta[0], first.velocity[0]), (2.5, 2.5));
    let second = PsgdJob.aggregate(&first, vec![part(3.0, 1), part(3.0, 3)]);
    assert_eq!((second.theta[0], second.velocity[0]), (4.25, 1.75));
}
