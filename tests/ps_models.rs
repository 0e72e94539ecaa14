//! cohort-ml's models trained through parameter servers over real worker and server processes: softmax regression
//! and the MLP on a Fashion-MNIST subset (the generated stand-in when the data set is not installed) reach a sensible
//! accuracy and are bit-identical run to run under BSP, their saved models score the same under `cohort eval`; sparse
//! logistic regression trains under async and SSP while pulls and pushes carry only the keys a batch touches.

mod common;

use cohort::cluster::{PsOptions, PsOutcome};
use cohort::data::loaders::named::FASHION_MNIST;
use cohort::ps::PsJob;
use cohort::{Cluster, Dataset, WorkerSpec};
use cohort_ml::datasets::{self, TrainTest};
use cohort_ml::mlp::Mlp;
use cohort_ml::ps::{Evaluate, MlpPs, SoftmaxPs, SparseLogRegConfig, SparseLogRegPs};
use cohort_ml::softmax::SoftmaxConfig;
use cohort_ml::sparse::{SparseGenerator, SparseSpec};
use common::*;

fn ps_cluster(workers: usize, servers: usize) -> Cluster {
    builder(workers).servers(vec![WorkerSpec::Local { count: servers }]).start().expect("cluster starts")
}

/// 2 000 training and 1 000 test rows of Fashion-MNIST, or of the generated stand-in when it is not installed
/// (`apt-get install dataset-fashion-mnist`; CI installs it). `raw`: pixels in [0, 1], else standardised.
fn images(raw: bool) -> (TrainTest, bool) {
    let real = cohort::data::loaders::find_named(FASHION_MNIST).is_ok();
    if !real {
        eprintln!("Fashion-MNIST is not installed: using the generated stand-in");
    }
    let name = if real { FASHION_MNIST } else { "generated" };
    let request = datasets::Request {
        name,
        train_rows: Some(2_000),
        test_rows: Some(1_000),
        seed: 1,
        raw,
        ..datasets::Request::default()
    };
    (datasets::prepare(&request).expect("the data set loads"), real)
}

fn options(consistency: &str, rule: &str, batch: usize, clocks: u64) -> PsOptions {
    PsOptions {
        consistency: consistency.parse().unwrap(),
        rule: rule.into(),
        batch,
        clocks,
        seed: 5,
        progress_every: 0,
        ..PsOptions::default()
    }
}

/// Trains `job` twice on fresh clusters of 2 workers and 2 servers under BSP; checks both runs completed and agree
/// bit for bit, and returns the first.
fn bsp_twice<J: Evaluate>(job: &J, config: &J::Config, train: &Dataset<f32>, options: &PsOptions) -> PsOutcome {
    let mut runs: Vec<PsOutcome> = Vec::new();
    for _ in 0..2 {
        let mut c = ps_cluster(2, 2);
        let h = c.load(train).unwrap();
        let out = c.train_ps(job, config, &h, options, |_| {}).unwrap();
        assert!(out.workers.iter().all(|w| w.clocks == options.clocks && !w.lost), "{:?}", out.workers);
        assert_eq!(out.metrics.len(), 2, "one metrics record per server range");
        runs.push(out);
    }
    let bits = |o: &PsOutcome| o.params.iter().map(|p| p.to_bits()).collect::<Vec<u32>>();
    assert_eq!(bits(&runs[0]), bits(&runs[1]), "two BSP runs of {} differ", J::NAME);
    runs.swap_remove(0)
}

/// `cohort eval`'s accuracy of a saved model on the first 1 000 test rows.
fn eval_accuracy(model: &std::path::Path) -> f64 {
    let out = run_cohort(&["eval", "--model", model.to_str().unwrap(), "--dataset", FASHION_MNIST, "--rows", "1000"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cohort eval: {}", String::from_utf8_lossy(&out.stderr));
    let line = stdout.lines().find(|l| l.trim_start().starts_with("accuracy")).expect("an accuracy line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn softmax_under_bsp_learns_fashion_mnist_identically_run_to_run() {
    let (data, real) = images(true);
    let config = SoftmaxConfig::new(10, 784, 1e-4);
    let train = data.train.clone().with_chunks(4).unwrap();
    let out = bsp_twice(&SoftmaxPs, &config, &train, &options("bsp", "sgd:0.1", 50, 120));
    let before = SoftmaxPs.evaluate(&config, &SoftmaxPs.init(&config, 0), &data.test).unwrap();
    let after = SoftmaxPs.evaluate(&config, &out.params, &data.test).unwrap();
    eprintln!("softmax: test {before:?} → {after:?} in {:?}", out.wall);
    assert!(after.loss < 0.5 * before.loss, "test loss {} → {}", before.loss, after.loss);
    assert!(after.accuracy > if real { 0.7 } else { 0.45 }, "test accuracy {}", after.accuracy);
    if real {
        // The model file is the one `cohort train softmax` writes: `cohort eval` scores it the same.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("softmax.safetensors");
        SoftmaxPs::save_model(&path, &config, &out.params, serde_json::json!({ "consistency": "bsp" })).unwrap();
        assert!((eval_accuracy(&path) - after.accuracy).abs() < 1e-4);
    }
}

#[test]
fn mlp_under_bsp_learns_fashion_mnist_identically_run_to_run() {
    let (data, real) = images(false);
    let mlp = Mlp::new(&[784, 32, 10]).unwrap();
    let train = data.train.clone().with_chunks(4).unwrap();
    let out = bsp_twice(&MlpPs, &mlp, &train, &options("bsp", "sgd:0.05", 32, 120));
    let before = MlpPs.evaluate(&mlp, &MlpPs.init(&mlp, 5), &data.test).unwrap();
    let after = MlpPs.evaluate(&mlp, &out.params, &data.test).unwrap();
    eprintln!("mlp: test {before:?} → {after:?} in {:?}", out.wall);
    assert!(after.loss < 0.5 * before.loss, "test loss {} → {}", before.loss, after.loss);
    assert!(after.accuracy > if real { 0.7 } else { 0.45 }, "test accuracy {}", after.accuracy);
    if real {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlp.safetensors");
        MlpPs::save_model(&path, &mlp, &out.params, data.scaling.as_ref(), serde_json::json!({})).unwrap();
        assert!((eval_accuracy(&path) - after.accuracy).abs() < 1e-4);
    }
}

#[test]
fn sparse_logistic_regression_moves_only_touched_keys_under_async_and_ssp() {
    const FEATURES: usize = 1 << 18;
    let spec = SparseSpec { rows: 5_000, features: FEATURES, nnz: 50, seed: 3, ..SparseSpec::default() };
    let set = SparseGenerator::new(spec).unwrap().dataset().unwrap();
    let config = SparseLogRegConfig::for_data(&set, 1e-4).unwrap();
    let train = set.data.clone().with_chunks(8).unwrap();
    let before = SparseLogRegPs.evaluate(&config, &vec![0.0; FEATURES], &set.data).unwrap();
    let mut c = ps_cluster(2, 2);
    let h = c.load(&train).unwrap();
    for mode in ["async", "ssp:2"] {
        let (batch, clocks) = (50, 100);
        let out = c.train_ps(&SparseLogRegPs, &config, &h, &options(mode, "sgd:50", batch, clocks), |_| {}).unwrap();
        let after = SparseLogRegPs.evaluate(&config, &out.params, &set.data).unwrap();
        let (pulls, pulled, pushed, keys_in): (u64, u64, u64, u64) = out.metrics.iter().fold((0, 0, 0, 0), |s, m| {
            (s.0 + m.pull_out.messages, s.1 + m.pull_out.bytes, s.2 + m.push_in.bytes, s.3 + m.pull_in.bytes)
        });
        let dense = 2 * clocks * 4 * FEATURES as u64;
        eprintln!(
            "sparse {mode}: objective {:.4} → {:.4}, accuracy {:.4} → {:.4}; {pulls} pull replies, {pulled} bytes \
             pulled and {pushed} pushed (dense: {dense} each way), staleness {:?}",
            before.loss,
            after.loss,
            before.accuracy,
            after.accuracy,
            out.metrics.iter().map(|m| &m.staleness).collect::<Vec<_>>()
        );
        assert!(after.loss < 0.75 * before.loss, "{mode}: objective {} → {}", before.loss, after.loss);
        let stalest = out.metrics.iter().filter_map(|m| m.max_staleness()).max();
        assert!(mode != "ssp:2" || stalest <= Some(2), "{mode}: a read {stalest:?} clocks stale");
        // A pull reply carries 4 bytes per key and its request 8 per key listed; a push 12 per key (key and value).
        assert_eq!(keys_in, 2 * pulled, "{mode}");
        assert_eq!(pushed, 3 * pulled, "{mode}: the pushes carry exactly the keys pulled");
        // Each batch pulls at most its rows' non-zeros: far below the dense model.
        let keys = pulled / 4;
        let most = 2 * clocks * (batch * set.width) as u64;
        assert!(keys > 2 * clocks * 50 && keys <= most, "{mode}: {keys} keys pulled, at most {most}");
        assert!(pulled * 20 < dense, "{mode}: {pulled} bytes pulled, dense {dense}");
    }
}

/// One server holding every key takes pushes of over 100 kB in one frame (a frame's header is at most 64 KiB, so the
/// links carry the request as the payload): each batch of 100 rows × 200 non-zeros pushes about 12 000 keys.
#[test]
fn one_server_takes_pushes_larger_than_a_frame_header() {
    const FEATURES: usize = 1 << 20;
    let spec = SparseSpec { rows: 1_000, features: FEATURES, nnz: 200, seed: 8, ..SparseSpec::default() };
    let set = SparseGenerator::new(spec).unwrap().dataset().unwrap();
    let config = SparseLogRegConfig::for_data(&set, 1e-4).unwrap();
    let mut c = ps_cluster(1, 1);
    let h = c.load(&set.data).unwrap();
    let out = c.train_ps(&SparseLogRegPs, &config, &h, &options("async", "sgd:50", 100, 10), |_| {}).unwrap();
    let push = &out.metrics[0].push_in;
    assert_eq!(push.messages, 10, "every push reached the server: {push:?}");
    assert!(push.bytes / push.messages > 100_000, "pushes of {} bytes each", push.bytes / push.messages);
    let before = SparseLogRegPs.evaluate(&config, &vec![0.0; FEATURES], &set.data).unwrap();
    let after = SparseLogRegPs.evaluate(&config, &out.params, &set.data).unwrap();
    assert!(after.loss < 0.9 * before.loss, "objective {} → {}", before.loss, after.loss);
}

/// The README's sample of training sparse logistic regression from a program is the example program's code (which
/// `cargo test` compiles), line for line and in order.
#[test]
fn the_readme_sample_is_the_example_program() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("crates/cohort-ml/examples/sparse_ps.rs")).unwrap();
    let section = readme.split("**Training with parameter servers.**").nth(1).expect("the README section");
    let sample = section.split("```rust\n").nth(1).and_then(|s| s.split("```").next()).expect("a rust block");
    let mut lines = example.lines().map(str::trim);
    for line in sample.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(lines.any(|l| l == line), "README line {line:?} is not in the example (in this order)");
    }
    assert!(sample.lines().count() > 10);
}
