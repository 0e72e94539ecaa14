//! A killed master resumes from its checkpoint: the master process is SIGKILLed mid-run, a new process resumes
//! with `--resume`, and the final `model_sha256` equals an uninterrupted run's — for L-BFGS (softmax regression)
//! and for model averaging (the MLP); Ctrl-C checkpoints and stops; damaged, foreign and other-version checkpoints
//! are refused with clear errors.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs `cohort ARGS --report R` to its end and returns the report.
fn finish(args: &[&str], dir: &Path, name: &str) -> serde_json::Value {
    let rep = dir.join(name);
    let out = run_cohort(&[args, &["--report", rep.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    report(&rep)
}

/// Starts `cohort ARGS --checkpoint CKPT --checkpoint-every 1`, waits until the checkpoint has `at` steps, then
/// sends `signal` to the master. Returns the master's stderr.
fn interrupt_at(args: &[&str], ckpt: &Path, at: usize, signal: i32) -> String {
    let mut child = Command::new(cohort_bin())
        .args(args)
        .args(["--checkpoint", ckpt.to_str().unwrap(), "--checkpoint-every", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before step {at}: make it longer");
        let done = cohort_ml::checkpoint::read_manifest(ckpt).map_or(0, |m| m.completed);
        if done >= at {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint of step {at} within 300 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: signalling a child we started.
    unsafe { libc::kill(child.id() as i32, signal) };
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn lbfgs_softmax_resumes_after_sigkill_of_the_master_with_the_same_model() {
    if cohort::data::loaders::find_named("fashion-mnist").is_err() {
        eprintln!("skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = ["train", "softmax", "--train-rows", "12000", "--iterations", "30", "--workers", "local:2"];
    let straight = finish(&base, dir.path(), "straight.json");
    let ckpt = dir.path().join("ckpt");
    interrupt_at(&base, &ckpt, 8, libc::SIGKILL);
    // L-BFGS does not depend on the worker count: resume on three workers, with a log.
    let log = dir.path().join("log.jsonl");
    let mut resumed = base.to_vec();
    resumed[7] = "local:3";
    let args = [&resumed[..], &["--resume", ckpt.to_str().unwrap(), "--log-jsonl", log.to_str().unwrap()]].concat();
    let r = finish(&args, dir.path(), "resumed.json");
    assert_eq!(r["model_sha256"], straight["model_sha256"], "resumed model differs from the uninterrupted one");
    assert_eq!(r["iterations"], straight["iterations"]);
    assert_eq!(r["loss_history"], straight["loss_history"]);
    let at = r["resumed_at"].as_u64().unwrap();
    assert!(at >= 8 && r["resume_seconds"].as_f64().unwrap() > 0.0, "{r}");
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len() as u64, straight["iterations"].as_u64().unwrap() - at, "one line per iteration");
    assert_eq!(lines[0]["step"].as_u64().unwrap(), at + 1);
    assert!(lines.iter().all(|l| l["loss"].is_f64() && l["seconds"].is_f64() && l["bytes_sent"].is_u64()));
}

#[test]
fn model_averaging_resumes_after_sigkill_and_ctrl_c_with_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "train",
        "mlp",
        "--dataset",
        "generated",
        "--train-rows",
        "6000",
        "--test-rows",
        "300",
        "--epochs",
        "7",
        "--avg-every",
        "30",
        "--workers",
        "local:2",
    ];
    let straight = finish(&base, dir.path(), "straight.json");
    let ckpt = dir.path().join("killed");
    interrupt_at(&base, &ckpt, 2, libc::SIGKILL);
    // The session's replicas (2, one per worker of the first run) resume on any number of processes: on 3 here,
    // and on 2 from a copy of the same checkpoint.
    let copy = dir.path().join("killed-copy");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&ckpt).unwrap().flatten() {
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let on3 = [&base[..base.len() - 1], &["local:3", "--resume", ckpt.to_str().unwrap()]].concat();
    let r = finish(&on3, dir.path(), "resumed3.json");
    assert_eq!(r["model_sha256"], straight["model_sha256"], "resumed on 3 processes, the model differs");
    assert!(r["resumed_at"].as_u64().unwrap() >= 2);
    let r = finish(&[&base[..], &["--resume", copy.to_str().unwrap()]].concat(), dir.path(), "resumed.json");
    assert_eq!(r["model_sha256"], straight["model_sha256"], "resumed model differs from the uninterrupted one");

    // Ctrl-C: the master finishes the pass in flight, checkpoints, stops its workers and says how to go on.
    let ckpt = dir.path().join("interrupted");
    let stderr = interrupt_at(&base, &ckpt, 3, libc::SIGINT);
    assert!(stderr.contains("interrupted") && stderr.contains("--resume"), "{stderr}");
    let r = finish(&[&base[..], &["--resume", ckpt.to_str().unwrap()]].concat(), dir.path(), "again.json");
    assert_eq!(r["model_sha256"], straight["model_sha256"]);
}

#[test]
fn damaged_foreign_and_other_version_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let c = ckpt.to_str().unwrap();
    let base = [
        "train",
        "mlp",
        "--dataset",
        "generated",
        "--train-rows",
        "600",
        "--test-rows",
        "100",
        "--epochs",
        "2",
        "--workers",
        "local:1",
    ];
    finish(&[&base[..], &["--checkpoint", c]].concat(), dir.path(), "r.json");
    // A finished run resumes to the same end.
    finish(&[&base[..], &["--resume", c]].concat(), dir.path(), "again.json");
    // A fresh run does not overwrite a checkpoint.
    fails_with(&[&base[..], &["--checkpoint", c]].concat(), "already holds a checkpoint");
    // Another model shape, another data set, another optimizer.
    fails_with(&[&base[..], &["--hidden", "16", "--resume", c]].concat(), "layers = 784,32,10");
    fails_with(&[&base[..], &["--seed", "5", "--resume", c]].concat(), "checkpoint");
    let mut other_rows = base.to_vec();
    other_rows[5] = "700";
    fails_with(&[&other_rows[..], &["--resume", c]].concat(), "the data set");
    fails_with(&[&base[..], &["--sync", "bsp", "--resume", c]].concat(), "the algorithm = model-averaging");

    let manifest = cohort_ml::checkpoint::read_manifest(&ckpt).unwrap();
    let state = ckpt.join(&manifest.state_file);
    let bytes = std::fs::read(&state).unwrap();
    // A flipped byte.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    std::fs::write(&state, &flipped).unwrap();
    fails_with(&[&base[..], &["--resume", c]].concat(), "is damaged: SHA-256");
    // A truncated state file.
    std::fs::write(&state, &bytes[..bytes.len() - 100]).unwrap();
    fails_with(&[&base[..], &["--resume", c]].concat(), "truncated");
    std::fs::write(&state, &bytes).unwrap();
    // A truncated manifest, and another format version.
    let text = std::fs::read_to_string(ckpt.join("manifest.json")).unwrap();
    std::fs::write(ckpt.join("manifest.json"), &text[..text.len() / 2]).unwrap();
    fails_with(&[&base[..], &["--resume", c]].concat(), "manifest.json is damaged");
    std::fs::write(ckpt.join("manifest.json"), text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    fails_with(&[&base[..], &["--resume", c]].concat(), "version 2");
    // No checkpoint at all.
    fails_with(&[&base[..], &["--resume", dir.path().to_str().unwrap()]].concat(), "holds no checkpoint");
}

/// The same L-BFGS stepper trains the MLP and the sparse autoencoder: a run checkpointed after 4 iterations and
/// continued to 10 (on another worker count) ends with the model of a straight 10-iteration run.
#[test]
fn mlp_and_sae_lbfgs_continued_from_a_checkpoint_end_with_the_uninterrupted_model() {
    let mlp =
        ["train", "mlp", "--dataset", "generated", "--train-rows", "800", "--test-rows", "100", "--optimizer", "lbfgs"];
    let mut cases = vec![mlp.to_vec()];
    if cohort::data::loaders::find_named("fashion-mnist").is_ok() {
        cases.push(vec!["train", "sae", "--patches", "2000", "--hidden", "10"]);
    } else {
        eprintln!("sae case skipped: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)");
    }
    for base in cases {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        let c = ckpt.to_str().unwrap();
        let with = |extra: &[&'static str]| [&base[..], extra].concat();
        let straight = finish(&with(&["--iterations", "10", "--workers", "local:2"]), dir.path(), "s.json");
        let first = [&with(&["--iterations", "4", "--workers", "local:1"])[..], &["--checkpoint", c]].concat();
        let r = finish(&first, dir.path(), "a.json");
        assert_eq!(r["iterations"], 4);
        let rest = [&with(&["--iterations", "10", "--workers", "local:3"])[..], &["--resume", c]].concat();
        let r = finish(&rest, dir.path(), "b.json");
        assert_eq!(r["resumed_at"], 4, "{base:?}");
        assert_eq!(r["model_sha256"], straight["model_sha256"], "{base:?}: continued model differs");
    }
}
