//! Distributed L-BFGS over real worker processes: `cohort train sae` / `train softmax` / `eval` / `bench qjam`
//! end to end, the optimum reached over the cluster, and the same model for 1, 2 and 3 workers.
//!
//! Sizes are small: the workspace's own crates build at opt-level 0 in tests.

mod common;

use std::path::Path;

use cohort::rng::Rng;
use cohort::Dataset;
use cohort_ml::model_file::{self, Params};
use cohort_ml::optim::{FnObjective, Lbfgs, Stop};
use cohort_ml::softmax::SoftmaxConfig;
use cohort_ml::train::{Driver, LbfgsTrainer};
use common::*;
use serde_json::json;

/// A few smooth grayscale PNG images of different sizes in `dir`.
fn write_images(dir: &Path) {
    for (i, (w, h)) in [(24u32, 16u32), (12, 20), (32, 32)].into_iter().enumerate() {
        let img = image::GrayImage::from_fn(w, h, |x, y| {
            let v = 128.0 + 60.0 * ((x as f64 * 0.4 + i as f64).sin() + (y as f64 * 0.3).cos());
            image::Luma([v.clamp(0.0, 255.0) as u8])
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run_cohort(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sae_model_sha256_is_the_same_for_1_2_3_workers() {
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path());
    let images = dir.path().to_str().unwrap();
    let mut hashes = Vec::new();
    for n in 1..=3 {
        let path = dir.path().join(format!("r{n}.json"));
        let workers = format!("local:{n}");
        ok(&[
            "train",
            "sae",
            "--images",
            images,
            "--patches",
            "300",
            "--iterations",
            "6",
            "--chunks",
            "7",
            "--workers",
            &workers,
            "--report",
            path.to_str().unwrap(),
        ]);
        let r = report(&path);
        assert_eq!(r["workers"], n);
        assert_eq!(r["chunks"], 7);
        assert!(r["evaluations"].as_u64().unwrap() >= 6);
        assert!(r["mean_evaluation_seconds"].as_f64().unwrap() > 0.0);
        let history = r["loss_history"].as_array().unwrap();
        assert!(r["final_loss"].as_f64().unwrap() < history[0].as_f64().unwrap());
        hashes.push(r["model_sha256"].as_str().unwrap().to_string());
    }
    assert_eq!(hashes[0], hashes[1]);
    assert_eq!(hashes[0], hashes[2]);
}

/// Softmax regression on a small generated problem (strictly convex: λ > 0) trained over two worker processes
/// reaches the optimum: gradient norm ≈ 0, and the same point as the sequential optimizer.
#[test]
fn lbfgs_over_worker_processes_reaches_the_optimum() {
    let (rows, d, k) = (240, 5, 3);
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..rows * d).map(|_| rng.normal() as f32).collect();
    let y: Vec<f32> = x
        .chunks(d)
        .map(|r| {
            if r[0] + 0.5 * r[1] > 0.3 {
                0.0
            } else if r[2] > 0.0 {
                1.0
            } else {
                2.0
            }
        })
        .collect();
    let data = Dataset::new(x, d).unwrap().with_labels(y).unwrap().with_chunks(6).unwrap();
    let config = SoftmaxConfig::new(k, d, 1e-2);

    let mut cluster = cluster(2);
    let handle = cluster.load(&data).unwrap();
    let mut trainer = LbfgsTrainer::new(config, 200).unwrap();
    Driver::new().run(&mut trainer, &mut cluster, &handle, |_, _| {}).unwrap();
    let r = &trainer.result().unwrap();
    let grad_norm = r.gradient.iter().map(|g| g * g).sum::<f64>().sqrt();
    assert!(grad_norm < 1e-5, "gradient norm {grad_norm:e} after {} iterations ({})", r.iterations, r.stop);
    assert!(r.evaluations >= r.iterations);

    let mut sequential = FnObjective(|theta: &[f64]| config.cost_grad(theta, &data.as_shard()));
    let stop = Stop { max_iterations: 200, grad_tol: 1e-9, ..Stop::default() };
    let reference = Lbfgs::new(stop).minimize(&mut sequential, &config.init().unwrap()).unwrap();
    let dist = r.x.iter().zip(&reference.x).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(dist < 1e-4, "distributed and sequential optima differ by {dist:e}");
    assert!((r.cost - reference.cost).abs() < 1e-9 * reference.cost.abs().max(1.0));
    assert!(config.accuracy(&r.x, &data.as_shard()).unwrap() > 0.9);
}

/// Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`, done by `.ci/run`).
#[test]
fn softmax_on_fashion_mnist_saves_a_model_that_eval_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (rep, model) = (dir.path().join("r.json"), dir.path().join("m.cohort"));
    let out = ok(&[
        "train",
        "softmax",
        "--dataset",
        "fashion-mnist",
        "--train-rows",
        "2000",
        "--iterations",
        "15",
        "--workers",
        "local:2",
        "--report",
        rep.to_str().unwrap(),
        "--save-model",
        model.to_str().unwrap(),
    ]);
    assert!(out.contains("test accuracy"), "{out}");
    let r = report(&rep);
    let test = r["test_accuracy"].as_f64().unwrap();
    assert!(test > 0.6, "test accuracy {test}");
    assert!(r["train_accuracy"].as_f64().unwrap() > 0.6);
    let out = ok(&["eval", "--model", model.to_str().unwrap(), "--dataset", "fashion-mnist"]);
    assert!(out.contains(&format!("accuracy          {test:.4}")), "{out}");
    assert!(out.contains(r["model_sha256"].as_str().unwrap()), "{out}");
    fails_with(&["eval", "--model", model.to_str().unwrap(), "--dataset", "cifar"], "unknown data set \"cifar\"");
    fails_with(&["eval", "--model", model.to_str().unwrap(), "--split", "dev"], "--split must be");
}

#[test]
fn sae_model_round_trips_through_eval_and_bad_models_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path());
    let model = dir.path().join("sae.cohort");
    ok(&[
        "train",
        "sae",
        "--images",
        dir.path().to_str().unwrap(),
        "--patches",
        "200",
        "--hidden",
        "6",
        "--iterations",
        "3",
        "--workers",
        "local:1",
        "--save-model",
        model.to_str().unwrap(),
    ]);
    let saved = model_file::load(&model).unwrap();
    assert_eq!(saved.kind, "sae");
    assert!(matches!(saved.params, Params::F64(ref p) if p.len() == 2 * 6 * 64 + 6 + 64));

    let linear = dir.path().join("linear.cohort");
    model_file::save(&linear, "linear", json!({"features": 3}), json!({}), &Params::F64(vec![1.0; 4]), &[]).unwrap();
    fails_with(&["eval", "--model", linear.to_str().unwrap()], "a \"linear\" model cannot be evaluated");
    let bogus = dir.path().join("bogus.cohort");
    model_file::save(&bogus, "softmax", json!({"classes": 10}), json!({}), &Params::F64(vec![0.0; 7]), &[]).unwrap();
    fails_with(&["eval", "--model", bogus.to_str().unwrap()], "lacks \"features\"");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&bogus, bytes).unwrap();
    fails_with(&["eval", "--model", bogus.to_str().unwrap()], "truncated");
    fails_with(&["eval", "--model", "/nonexistent/m.cohort"], "cannot read model");
}

#[test]
fn bad_sae_inputs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    fails_with(&["train", "sae", "--images", d, "--workers", "local:1"], "holds no PNG or JPEG files");
    std::fs::write(dir.path().join("x.png"), b"not a png").unwrap();
    fails_with(&["train", "sae", "--images", d, "--workers", "local:1"], "x.png");
    fails_with(&["train", "sae", "--patches", "0"], "--patches and --hidden must be at least 1");
    fails_with(&["train", "sae", "--patches", "100000000000"], "--patches must be in 1..=10000000");
    fails_with(&["train", "sae", "--hidden", "1000000000"], "--hidden must be at most 4096");
    fails_with(&["train", "softmax", "--dataset", "mnist-digits"], "unknown data set");
    fails_with(&["train", "softmax", "--lambda=-1"], "--lambda must be");
    fails_with(&["bench", "qjam", "--workers", "1,x"], "--workers: \"x\" is not a positive count");
}

#[test]
fn bench_qjam_writes_csv_and_svg_and_trains_one_model() {
    let dir = tempfile::tempdir().unwrap();
    write_images(dir.path());
    let (csv, svg) = (dir.path().join("q.csv"), dir.path().join("q.svg"));
    let out = ok(&[
        "bench",
        "qjam",
        "--repeat",
        "1",
        "--workers",
        "1,2",
        "--patches",
        "200,1000",
        "--iterations",
        "2",
        "--hidden",
        "5",
        "--images",
        dir.path().to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(out.contains("Table 1") && out.contains("Table 2"), "{out}");
    assert!(out.contains("0.1458 s"), "qjam's 1-worker 1k time is printed beside ours: {out}");
    assert!(!out.contains("DIFFERS"), "{out}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    let sha = |l: &str| l.rsplit(',').next().unwrap().to_string();
    assert_eq!(sha(lines[1]), sha(lines[2]));
    assert_eq!(sha(lines[3]), sha(lines[4]));
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}
