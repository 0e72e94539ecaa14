//! End-to-end training runs: L-BFGS on the sparse autoencoder and on softmax regression, through the map-reduce
//! formulation exactly as a cluster evaluates it (chunks split among workers, partials combined in cohort's fixed
//! tree, finished on the master), checked against the sequential evaluation and for determinism.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ops::ControlFlow;

use cohort::data::assign_chunks;
use cohort::rng::Rng;
use cohort::tree::Tree;
use cohort::{Dataset, MapReduce};
use cohort_ml::optim::{FnObjective, Lbfgs, OptimError, OptimResult, Stop, StopReason};
use cohort_ml::sae::{sample_patches, SaeConfig, SaeJob};
use cohort_ml::softmax::{SoftmaxConfig, SoftmaxJob};
use cohort_ml::MlError;

/// What a cluster computes for one round with `workers` workers: each maps its contiguous chunk range and reduces it
/// into the aligned tree nodes it covers; the master combines the nodes from the root (cohort's fixed tree).
fn run_on<J: MapReduce>(job: &J, params: &J::Params, data: &Dataset<J::Elem>, workers: usize) -> J::Output {
    let tree = Tree::new(data.chunks() as u32);
    let mut parts = BTreeMap::new();
    for range in assign_chunks(data.chunks(), workers) {
        for node in tree.cover(range.start as u32..range.end as u32) {
            let mut leaf = |c: u32| Ok::<_, Infallible>(job.map(params, &data.shard(c as usize)));
            if let Some(value) = tree.eval(node, &mut leaf, &mut |a, b| job.reduce(a, b)).unwrap() {
                parts.insert(node, value);
            }
        }
    }
    tree.finish(&mut parts, &mut |a, b| job.reduce(a, b)).unwrap()
}

/// One round on three workers.
fn map_reduce<J: MapReduce>(job: &J, params: &J::Params, data: &Dataset<J::Elem>) -> J::Output {
    run_on(job, params, data, 3)
}

/// Smooth random "images" (sums of a few random waves), so that patches have structure to learn.
fn images(n: usize, side: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * side * side);
    for _ in 0..n {
        let waves: Vec<[f64; 3]> = (0..4).map(|_| [rng.normal(), rng.normal(), 6.0 * rng.uniform()]).collect();
        for r in 0..side {
            for c in 0..side {
                let v: f64 = waves.iter().map(|w| (0.3 * (w[0] * r as f64 + w[1] * c as f64) + w[2]).sin()).sum();
                out.push(v as f32);
            }
        }
    }
    out
}

fn train_sae(chunks: Option<usize>) -> OptimResult {
    let config = SaeConfig { hidden: 10, ..SaeConfig::default() };
    let patches = sample_patches(&images(20, 16, 1), 16, 16, 600, 8, 2).unwrap();
    let data = Dataset::new(patches, 64).unwrap().with_chunks(chunks.unwrap_or(1)).unwrap();
    let theta0 = config.init(3).unwrap();
    let stop = Stop { max_iterations: 40, ..Stop::default() };
    let mut objective = FnObjective(|theta: &[f64]| match chunks {
        None => config.cost_grad(theta, data.values()),
        Some(_) => config.finish(theta, &map_reduce(&SaeJob, &config.params(theta)?, &data)),
    });
    Lbfgs::new(stop).minimize(&mut objective, &theta0).unwrap()
}

#[test]
fn sparse_autoencoder_trains_with_lbfgs() {
    let r = train_sae(Some(5));
    let first = r.history[0];
    let last = *r.history.last().unwrap();
    assert_eq!(r.stop, StopReason::MaxIterations);
    assert!(last.cost < 0.25 * first.cost, "cost {} → {}", first.cost, last.cost);
    assert!(last.grad_norm < 0.05 * first.grad_norm, "gradient norm {} → {}", first.grad_norm, last.grad_norm);
    // L-BFGS with a good line search: about one evaluation per iteration.
    assert!(r.evaluations <= r.iterations * 3 / 2 + 5, "{} evaluations for {} iterations", r.evaluations, r.iterations);
}

#[test]
fn training_is_deterministic_and_chunking_only_moves_the_last_bits() {
    let a = train_sae(Some(5));
    let b = train_sae(Some(5));
    assert_eq!(a, b, "the same run twice is bit-identical");
    // Sequential and chunked evaluations differ only in the order of sums: the runs agree closely for the first
    // iterations (they drift apart slowly as rounding differences are amplified). The autoencoder's outer products
    // are f32 chains over blocks counted from a chunk's first patch, so chunking moves the gradient at the f32
    // level (about 4e-8 relative) and the costs of the next iterations by up to about 1.5e-8.
    let s = train_sae(None);
    for (x, y) in a.history.iter().zip(&s.history).take(10) {
        assert!(((x.cost - y.cost) / y.cost).abs() < 1e-7, "iteration {}: {} vs {}", x.iteration, x.cost, y.cost);
    }
}

#[test]
fn partials_are_bit_identical_for_any_number_of_workers() {
    let config = SaeConfig::default();
    let theta = config.init(5).unwrap();
    let patches = sample_patches(&images(10, 16, 4), 16, 16, 900, 8, 6).unwrap();
    let data = Dataset::new(patches, 64).unwrap().with_chunks(13).unwrap();
    let params = config.params(&theta).unwrap();
    let one = run_on(&SaeJob, &params, &data, 1);
    for workers in [2, 3, 7, 16] {
        assert_eq!(run_on(&SaeJob, &params, &data, workers), one, "{workers} workers");
    }
    let softmax = SoftmaxConfig::new(3, 5, 0.0);
    let train = blobs(300, 7).with_chunks(9).unwrap();
    let params = softmax.params(&vec![0.1; softmax.n_params()]).unwrap();
    let one = run_on(&SoftmaxJob, &params, &train, 1);
    for workers in [2, 4, 9] {
        assert_eq!(run_on(&SoftmaxJob, &params, &train, workers), one, "{workers} workers");
    }
}

/// Three Gaussian blobs in 5 dimensions, well separated.
fn blobs(rows: usize, seed: u64) -> Dataset<f32> {
    let mut rng = Rng::new(seed);
    let centres = [[2.0, 0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 2.0, -1.0, -1.0]];
    let mut x = Vec::with_capacity(rows * 5);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let class = rng.below(3) as usize;
        x.extend(centres[class].iter().map(|c| (c + 0.4 * rng.normal()) as f32));
        y.push(class as f32);
    }
    Dataset::new(x, 5).unwrap().with_labels(y).unwrap()
}

#[test]
fn softmax_regression_learns_separable_classes() {
    let config = SoftmaxConfig::new(3, 5, 1e-3);
    let train = blobs(400, 1).with_chunks(4).unwrap();
    let test = blobs(200, 2);
    let mut iterations_seen = 0;
    let mut objective =
        FnObjective(|theta: &[f64]| config.finish(theta, &map_reduce(&SoftmaxJob, &config.params(theta)?, &train)));
    let stop = Stop { grad_tol: 1e-8, cost_tol: 0.0, ..Stop::default() };
    let r = Lbfgs::new(stop)
        .minimize_with(&mut objective, &config.init().unwrap(), |_, _| {
            iterations_seen += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(r.stop, StopReason::GradientTolerance, "{r:?}");
    assert_eq!(iterations_seen, r.iterations + 1);
    // The optimum of a strictly convex problem: the sequential gradient vanishes there too.
    let (_, grad) = config.cost_grad(&r.x, &train.as_shard()).unwrap();
    assert!(grad.iter().all(|g| g.abs() < 1e-7));
    let accuracy = config.accuracy(&r.x, &test.as_shard()).unwrap();
    assert!(accuracy > 0.97, "test accuracy {accuracy}");
}

#[test]
fn a_bad_chunk_stops_training_with_its_error() {
    let config = SoftmaxConfig::new(3, 5, 1e-3);
    let good = blobs(40, 3);
    let mut labels = good.labels().unwrap().to_vec();
    labels[25] = 7.0;
    let data = Dataset::new(good.values().to_vec(), 5).unwrap().with_labels(labels).unwrap().with_chunks(4).unwrap();
    let mut objective =
        FnObjective(|theta: &[f64]| config.finish(theta, &map_reduce(&SoftmaxJob, &config.params(theta)?, &data)));
    let err = Lbfgs::default().minimize(&mut objective, &config.init().unwrap()).unwrap_err();
    match err {
        OptimError::Objective { evaluation: 1, source: MlError::Chunk { chunk: 2, message } } => {
            assert!(message.contains("label 7 at row 25"), "{message}")
        }
        other => panic!("{other}"),
    }
}
