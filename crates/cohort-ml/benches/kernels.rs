//! Criterion benchmarks of the numerical core, one thread: a sparse-autoencoder cost+gradient evaluation on
//! 100 000 patches (64 visible, 25 hidden), sequential and cut into 64 chunks as a distributed run would; a
//! softmax-regression evaluation on 60 000 × 784 × 10 (Fashion-MNIST's shape), sequential and in 40 chunks; and the
//! vectorised sigmoid against `f64::exp`.
//!
//! Run with `cargo bench -p cohort-ml --bench kernels`; `-- --test` runs each benchmark once (a smoke test).

use std::hint::black_box;

use cohort::rng::Rng;
use cohort::{Dataset, MapReduce};
use cohort_ml::kernels::sigmoid_slice;
use cohort_ml::sae::{SaeConfig, SaeJob};
use cohort_ml::softmax::{SoftmaxConfig, SoftmaxJob};
use criterion::Criterion;

/// Evaluates a map-reduce job the way the cluster does: every chunk mapped, partials reduced left to right.
fn map_reduce<J: MapReduce>(job: &J, params: &J::Params, data: &Dataset<J::Elem>) -> J::Output {
    let mut total = None;
    for chunk in 0..data.chunks() {
        let partial = job.map(params, &data.shard(chunk));
        total = Some(match total {
            None => partial,
            Some(left) => job.reduce(left, partial),
        });
    }
    total.expect("at least one chunk")
}

fn sae(c: &mut Criterion) {
    let config = SaeConfig::default();
    let theta = config.init(1).unwrap();
    let mut rng = Rng::new(2);
    let patches: Vec<f64> = (0..100_000 * 64).map(|_| 0.1 + 0.8 * rng.uniform()).collect();
    let data = Dataset::new(patches, 64).unwrap().with_chunks(64).unwrap();
    let params = config.params(&theta).unwrap();
    let mut group = c.benchmark_group("sae_100k_patches_64x25");
    group.sample_size(20);
    group.bench_function("sequential", |b| b.iter(|| black_box(config.cost_grad(&theta, data.values()).unwrap())));
    group.bench_function("64_chunks", |b| {
        b.iter(|| {
            let total = map_reduce(&SaeJob, &params, &data);
            black_box(config.finish(&theta, &total).unwrap())
        })
    });
    group.finish();
}

fn softmax(c: &mut Criterion) {
    let config = SoftmaxConfig::new(10, 784, 1e-4);
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..60_000 * 784).map(|_| rng.uniform() as f32).collect();
    let y: Vec<f32> = (0..60_000).map(|_| rng.below(10) as f32).collect();
    let data = Dataset::new(x, 784).unwrap().with_labels(y).unwrap().with_chunks(40).unwrap();
    let theta: Vec<f64> = (0..config.n_params()).map(|_| 0.01 * rng.normal()).collect();
    let params = config.params(&theta).unwrap();
    let mut group = c.benchmark_group("softmax_60000x784x10");
    group.sample_size(20);
    group.bench_function("sequential", |b| b.iter(|| black_box(config.cost_grad(&theta, &data.as_shard()).unwrap())));
    group.bench_function("40_chunks", |b| {
        b.iter(|| {
            let total = map_reduce(&SoftmaxJob, &params, &data);
            black_box(config.finish(&theta, &total).unwrap())
        })
    });
    group.finish();
}

fn sigmoid(c: &mut Criterion) {
    let mut rng = Rng::new(4);
    let z: Vec<f64> = (0..2_500_000).map(|_| 20.0 * rng.uniform() - 10.0).collect();
    let mut out = z.clone();
    let mut group = c.benchmark_group("sigmoid_2.5M");
    group.sample_size(20);
    group.bench_function("kernels::sigmoid_slice", |b| {
        b.iter(|| {
            out.copy_from_slice(&z);
            sigmoid_slice(&mut out);
            black_box(&out);
        })
    });
    group.bench_function("f64::exp loop", |b| {
        b.iter(|| {
            for (o, &v) in out.iter_mut().zip(&z) {
                *o = 1.0 / (1.0 + (-v).exp());
            }
            black_box(&out);
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    sae(&mut c);
    softmax(&mut c);
    sigmoid(&mut c);
    c.final_summary();
}
