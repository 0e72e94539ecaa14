//! The MLP over real worker processes: model averaging is reproducible for a fixed seed and worker count, the
//! full-batch round is bit-identical across worker counts, a short run on real Fashion-MNIST beats chance by a wide
//! margin, and bad shapes are one-line errors.

mod common;

use cohort::Dataset;
use cohort_ml::mlp::full_batch::{FullBatch, MlpCostGrad};
use cohort_ml::mlp::jobs::{BspJob, BspState, PsgdJob, PsgdState, TrainSpec};
use cohort_ml::mlp::optimizer::OptimizerSpec;
use cohort_ml::mlp::Mlp;
use common::*;

fn spec(steps: usize) -> TrainSpec {
    TrainSpec { layers: vec![12, 8, 3], optimizer: OptimizerSpec::adam(0.01), batch: 16, steps, block_momentum: 0.0 }
}

#[test]
fn model_averaging_is_reproducible_and_learns() {
    let data = blobs(480, 8);
    let mlp = Mlp::new(&[12, 8, 3]).unwrap();
    let theta0 = mlp.init(1);
    let before = mlp.evaluate(&theta0, &data.as_shard()).unwrap();
    let mut c = cluster(2);
    let h = c.load(&data).unwrap();
    let mut runs = Vec::new();
    for steps in [0, 0, 5] {
        let session = c.open_session(9);
        let mut state = PsgdState::new(spec(steps), theta0.clone());
        for _ in 0..4 {
            state = c.pass(&PsgdJob, &session, &state, &h).unwrap();
            assert_eq!(state.error, None);
        }
        // A whole pass sees every row once; a pass of 5 steps sees 5 batches per worker.
        let expected = if steps == 0 { 480 } else { 2 * 5 * 16 };
        assert_eq!(state.stats.seen, expected);
        c.close_session(session).unwrap();
        runs.push(state.theta);
    }
    assert_eq!(runs[0], runs[1], "same seed and workers, same model");
    assert_ne!(runs[0], runs[2]);
    let after = mlp.evaluate(&runs[0], &data.as_shard()).unwrap();
    assert!(after.loss < before.loss / 2.0 && after.accuracy > 0.8, "{before:?} → {after:?}");
}

#[test]
fn model_averaging_resumed_on_a_new_cluster_continues_bit_identically() {
    // Passes of 7 steps over 240 rows per replica: local epochs end mid-pass, so the saved cursor, epoch and Adam
    // moments all matter.
    let data = blobs(480, 8);
    let theta0 = Mlp::new(&[12, 8, 3]).unwrap().init(5);
    let run = |c: &mut cohort::Cluster, session: &cohort::Session, mut state: PsgdState, passes: usize| {
        let h = c.load(&data).unwrap();
        for _ in 0..passes {
            state = c.pass(&PsgdJob, session, &state, &h).unwrap();
            assert_eq!(state.error, None);
        }
        state
    };
    let mut c = cluster(2);
    let session = c.open_session(21);
    let straight = run(&mut c, &session, PsgdState::new(spec(7), theta0.clone()), 6);

    let session = c.open_session(21);
    let half = run(&mut c, &session, PsgdState::new(spec(7), theta0), 3);
    let snapshot = c.session_snapshot(&session);
    assert_eq!((snapshot.replicas, snapshot.passes), (2, 3));
    assert!(snapshot.locals.iter().all(Option::is_some));
    drop(c); // the master "dies": the workers and their local states are gone

    let mut fresh = cluster(2);
    let resumed = fresh.resume_session(snapshot).unwrap();
    let resumed = run(&mut fresh, &resumed, half, 3);
    assert_eq!(resumed.theta, straight.theta, "resumed model differs from the uninterrupted one");
}

#[test]
fn synchronous_sgd_returns_the_mean_gradient_of_a_step() {
    let data = blobs(96, 8);
    let mlp = Mlp::new(&[12, 8, 3]).unwrap();
    let theta = mlp.init(2);
    let mut c = cluster(2);
    let h = c.load(&data).unwrap();
    let session = c.open_session(3);
    let state = c.pass(&BspJob, &session, &BspState::new(spec(0), theta.clone()), &h).unwrap();
    assert_eq!(state.error, None);
    assert_eq!(state.stats.seen, 16, "each of two workers takes 8 of the 16 rows");
    assert_eq!(state.grad.len(), mlp.n_params());
    assert!(state.grad.iter().any(|g| *g != 0.0));
    assert_eq!(state.theta, theta, "the master applies the update, not the aggregate");
}

#[test]
fn full_batch_gradient_is_bit_identical_for_any_worker_count() {
    let data = blobs(300, 8);
    let objective = FullBatch { mlp: Mlp::new(&[12, 8, 3]).unwrap(), lambda: 1e-3 };
    let theta: Vec<f64> = objective.mlp.init(4).iter().map(|&v| f64::from(v)).collect();
    let params = objective.params(&theta).unwrap();
    let mut results = Vec::new();
    for workers in [1, 3] {
        let mut c = cluster(workers);
        let h = c.load(&data).unwrap();
        let partial = c.run(&MlpCostGrad, &params, &h).unwrap();
        results.push(objective.finish(&theta, &partial).unwrap());
    }
    assert_eq!(results[0].0.to_bits(), results[1].0.to_bits());
    assert!(results[0].1.iter().zip(&results[1].1).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn a_worker_error_reaches_the_master_without_a_panic() {
    // Labels outside the three classes.
    let data = Dataset::new(vec![0.5f32; 12 * 4], 12).unwrap().with_labels(vec![0.0, 1.0, 7.0, 2.0]).unwrap();
    let mut c = cluster(1);
    let h = c.load(&data).unwrap();
    let s = c.open_session(1);
    let state = c.pass(&PsgdJob, &s, &PsgdState::new(spec(0), Mlp::new(&[12, 8, 3]).unwrap().init(0)), &h).unwrap();
    let error = state.error.expect("an error");
    assert!(error.contains("label 7"), "{error}");
}

#[test]
fn mlp_beats_chance_on_a_small_real_subset() {
    if cohort::data::loaders::find_named("fashion-mnist").is_err() {
        eprintln!("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("mlp.json");
    let plot = dir.path().join("curves.svg");
    let out = run_cohort(&[
        "train",
        "mlp",
        "--workers",
        "local:2",
        "--train-rows",
        "2000",
        "--test-rows",
        "1000",
        "--epochs",
        "3",
        "--report",
        report.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("epoch") && stdout.contains("test evaluation"), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // Ten classes: chance is 0.1.
    let accuracy = r["test_accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.6, "test accuracy {accuracy}");
    assert_eq!(r["epochs"], 3);
    assert_eq!(r["per_epoch"].as_array().unwrap().len(), 3);
    assert!(r["mean_epoch_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(r["job"], "mlp");
    assert!(r["model_sha256"].as_str().unwrap().len() == 64);
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
}

#[test]
fn bad_mlp_arguments_are_one_line_errors() {
    let base =
        ["train", "mlp", "--dataset", "generated", "--train-rows", "50", "--test-rows", "20", "--workers", "local:1"];
    let with = |extra: &[&'static str]| base.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>();
    fails_with(&with(&["--layers", "784,x,10"]), "not a whole number");
    fails_with(&with(&["--layers", "700,32,10"]), "the data has 784 values per row");
    fails_with(&with(&["--layers", "784"]), "at least inputs and classes");
    fails_with(&with(&["--layers", "784,0,10"]), "has no units");
    fails_with(&with(&["--epochs", "0"]), "--epochs must be at least 1");
    fails_with(&with(&["--lr=-1"]), "learning rate");
    fails_with(&["train", "mlp", "--dataset", "mnist-ish"], "unknown --dataset");
    let empty = tempfile::tempdir().unwrap();
    fails_with(
        &["train", "mlp", "--data-dir", empty.path().to_str().unwrap()],
        "apt-get install dataset-fashion-mnist",
    );
}

#[test]
fn sweep_and_psgd_benchmarks_print_their_tables() {
    let out = run_cohort(&["bench", "sweep", "--quick", "--dataset", "generated", "--train-rows", "600"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for table in ["workers", "neurons per layer", "hidden layers", "epochs"] {
        assert!(stdout.lines().any(|l| l == table), "no {table} table: {stdout}");
    }
    assert!(stdout.contains("loss %") && stdout.contains("accuracy %") && stdout.contains("time %"), "{stdout}");
    // The baseline row of each table is the baseline itself.
    assert!(stdout.contains("       1     100.0       100.0     100.0"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let args = ["bench", "psgd", "--dataset", "generated", "--train-rows", "600", "--passes", "2", "--workers", "1,2"];
    let out = run_cohort(&[&args[..], &["--out", dir.path().to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("sequential") && stdout.contains("avg 2") && stdout.contains("time per pass"), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("psgd_objective.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 2, "{csv}");
    for f in ["psgd_time.csv", "psgd_objective.svg", "psgd_time.svg"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
}
