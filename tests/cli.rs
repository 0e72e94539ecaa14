//! The command line: clear one-line errors and non-zero exits for bad input; the demo and the example run.

mod common;

use std::process::Command;

use common::*;

#[test]
fn malformed_worker_specs_are_one_line_errors() {
    fails_with(&["train", "linear", "--workers", "local:0"], "invalid worker spec \"local:0\"");
    fails_with(&["train", "linear", "--workers", "local:two"], "not a number");
    fails_with(&["train", "linear", "--workers", "gpu:4"], "unknown kind of worker");
    fails_with(&["train", "linear", "--workers", "local:2,,local:1"], "empty worker spec");
}

#[test]
fn bad_training_arguments_are_errors() {
    fails_with(&["train", "linear", "--rows", "0"], "--rows and --features must be at least 1");
    fails_with(&["train", "linear", "--lr=-1"], "--lr must be a positive number");
    fails_with(
        &["train", "linear", "--rows", "10", "--chunks", "11", "--workers", "local:1"],
        "cannot cut 10 rows into 11 chunks",
    );
    fails_with(&["train", "linear", "--rows", "100", "--lr", "50", "--workers", "local:1"], "diverged");
}

#[test]
fn demo_without_the_data_set_says_how_to_install_it_and_trains_on_generated_data() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let out = run_cohort(&["demo", "--workers", "local:2", "--data-dir", dir, "--epochs", "1", "--train-rows", "2000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("apt-get install dataset-fashion-mnist"), "{stdout}");
    assert!(stdout.contains("on generated") && stdout.contains("test evaluation"), "{stdout}");
    assert!(stdout.contains("model sha256"), "{stdout}");
}

#[test]
fn demo_trains_on_fashion_mnist_when_it_is_installed() {
    if cohort::data::loaders::find_named("fashion-mnist").is_err() {
        eprintln!("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    let out = run_cohort(&["demo", "--workers", "local:2", "--epochs", "1", "--train-rows", "2000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("on fashion-mnist") && stdout.contains("test evaluation"), "{stdout}");
    assert!(!stdout.contains("not installed"), "{stdout}");
}

#[test]
fn sum_matrix_example_prints_78() {
    // Cargo builds examples next to the test binaries' parent directory.
    let example = cohort_bin().parent().unwrap().join("examples").join("sum_matrix");
    assert!(example.exists(), "{} was not built", example.display());
    for workers in ["local:1", "local:3"] {
        let out = Command::new(&example).args(["--workers", workers]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Result is: 78");
    }
}

#[test]
fn overhead_bench_prints_a_table() {
    let out = run_cohort(&["bench", "overhead", "--workers", "1,2", "--rounds", "20"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("median") && stdout.lines().any(|l| l.starts_with("local:2")), "{stdout}");
}

#[test]
fn train_softmax_example_trains_checkpoints_and_resumes_a_finished_run() {
    let example = cohort_bin().parent().unwrap().join("examples").join("train_softmax");
    assert!(example.exists(), "{} was not built", example.display());
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let run = || {
        let out = Command::new(&example)
            .args(["--workers", "local:2", "--checkpoint", ckpt.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout.lines().find(|l| l.starts_with("model_sha256")).unwrap().to_string()
    };
    let first = run();
    assert!(ckpt.join("manifest.json").is_file());
    assert_eq!(run(), first, "resuming the finished run gives its model");
}
