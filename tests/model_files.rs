//! Saved models are safetensors files that other tools open: a Python program (numpy and the `safetensors`
//! package, installed by `.ci/run`) reads a softmax model cohort trained on Fashion-MNIST and reproduces its test
//! accuracy; the MLP saves its model too, and `cohort eval` reads it back.

mod common;

use std::process::Command;

use common::*;

fn report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Whether `python3` with numpy and safetensors is here; `.ci/run` sets `COHORT_REQUIRE_PYTHON=1` so that CI
/// fails instead of skipping.
fn python_ready() -> bool {
    let ok =
        Command::new("python3").args(["-c", "import numpy, safetensors"]).output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("COHORT_REQUIRE_PYTHON").is_some() {
        panic!("python3 with numpy and safetensors is required here (pip install numpy safetensors)");
    }
    ok
}

#[test]
fn python_reproduces_the_test_accuracy_of_a_saved_softmax_model() {
    let Ok(data_dir) = cohort::data::loaders::find_named("fashion-mnist") else {
        eprintln!("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
        return;
    };
    if !python_ready() {
        eprintln!("skipped: python3 with numpy and safetensors is not installed (pip install numpy safetensors)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (model, rep) = (dir.path().join("softmax.safetensors"), dir.path().join("r.json"));
    let args = ["train", "softmax", "--train-rows", "5000", "--iterations", "30", "--workers", "local:2"];
    let out = run_cohort(
        &[&args[..], &["--save-model", model.to_str().unwrap(), "--report", rep.to_str().unwrap()]].concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let accuracy = report(&rep)["test_accuracy"].as_f64().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/check_model.py");
    let out = Command::new("python3")
        .args([script, model.to_str().unwrap(), data_dir.to_str().unwrap(), &accuracy.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("{accuracy:.4}")), "{stdout}");
}

#[test]
fn the_mlp_saves_its_model_with_its_standardisation_and_eval_scores_it() {
    if cohort::data::loaders::find_named("fashion-mnist").is_err() {
        eprintln!("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (model, rep) = (dir.path().join("mlp.safetensors"), dir.path().join("r.json"));
    let out = run_cohort(&[
        "train",
        "mlp",
        "--train-rows",
        "3000",
        "--epochs",
        "2",
        "--workers",
        "local:2",
        "--save-model",
        model.to_str().unwrap(),
        "--report",
        rep.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = report(&rep);
    let saved = cohort_ml::model_file::load(&model).unwrap();
    assert_eq!((saved.kind.as_str(), saved.sha256.as_str()), ("mlp", r["model_sha256"].as_str().unwrap()));
    assert_eq!(saved.extra.len(), 2, "input.mean and input.scale");
    let out = run_cohort(&["eval", "--model", model.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let accuracy = r["test_accuracy"].as_f64().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("accuracy          {accuracy:.4}")), "{stdout}");
}
