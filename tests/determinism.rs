//! The result of a job, and so the trained model, is bit-identical for any number of worker processes.

mod common;

use cohort::rng::Rng;
use cohort::Dataset;
use cohort_cli::jobs::diag::Sum;
use cohort_cli::jobs::linear::{self, LinearGradient};
use common::*;

/// Values spanning many magnitudes, so that a different summation order would change the last bits.
fn awkward_data() -> Dataset<f64> {
    let mut rng = Rng::new(9);
    let values: Vec<f64> = (0..3000).map(|_| rng.normal() * 10f64.powi(rng.below(12) as i32 - 6)).collect();
    Dataset::new(values, 3).unwrap().with_chunks(37).unwrap()
}

#[test]
fn sum_is_bit_identical_for_1_2_3_7_and_16_workers() {
    let data = awkward_data();
    let mut results = Vec::new();
    for n in [1, 2, 3, 7, 16] {
        let mut c = cluster(n);
        let h = c.load(&data).unwrap();
        results.push((n, c.run(&Sum, &(), &h).unwrap().to_bits()));
        c.shutdown();
    }
    assert!(results.iter().all(|&(_, bits)| bits == results[0].1), "{results:?}");
    // The order matters for this data: a plain left-to-right sum differs, so the test can fail.
    let naive: f64 = data.values().iter().sum();
    assert_ne!(naive.to_bits(), results[0].1, "data too tame to detect a change of order");
}

#[test]
fn gradient_descent_gives_the_same_model_for_1_2_3_and_7_processes() {
    let mut hashes = Vec::new();
    for n in ["1", "2", "3", "7"] {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("r.json");
        let out = run_cohort(&[
            "train",
            "linear",
            "--rows",
            "3000",
            "--features",
            "5",
            "--iterations",
            "15",
            "--workers",
            &format!("local:{n}"),
            "--report",
            report.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(json["workers"], n.parse::<u64>().unwrap());
        for key in
            ["iterations", "final_loss", "wall_seconds", "mean_iteration_seconds", "bytes_sent", "bytes_received"]
        {
            assert!(!json[key].is_null(), "report lacks {key}");
        }
        hashes.push(json["model_sha256"].as_str().unwrap().to_string());
    }
    assert_eq!(hashes[0].len(), 64);
    assert!(hashes.iter().all(|h| h == &hashes[0]), "{hashes:?}");
}

#[test]
fn data_stays_resident_and_rounds_move_only_parameters() {
    let data = linear::generate(20_000, 8, 3).unwrap();
    let data_bytes = (data.values().len() + data.rows()) * 8;
    // Even placement: speed-weighted placement may legitimately move a few chunks when workers differ in speed.
    let mut c = builder(3).placement(cohort::Placement::Even).start().unwrap();
    let h = c.load(&data).unwrap();
    let after_load = c.stats();
    assert!(after_load.bytes_sent as usize >= data_bytes, "the data went out once");
    let params = vec![0.0; 9];
    for _ in 0..10 {
        c.run(&LinearGradient, &params, &h).unwrap();
    }
    // Loading the same dataset again is free.
    c.load(&data).unwrap();
    let per_round = (c.stats().bytes_sent - after_load.bytes_sent) / 10;
    assert!(per_round < 1000, "{per_round} bytes sent per round; data must not be resent");
    assert_eq!(c.stats().rounds, 10);
}

#[test]
fn many_jobs_and_datasets_share_one_cluster() {
    let mut c = cluster(2);
    let a = c.load(&Dataset::from_rows(&[[1.0], [2.0], [3.0]]).unwrap()).unwrap();
    let b = c.load(&Dataset::from_rows(&[[10.0, 20.0]]).unwrap()).unwrap();
    assert_eq!(c.run(&Sum, &(), &a).unwrap(), 6.0);
    assert_eq!(c.run(&Sum, &(), &b).unwrap(), 30.0);
    c.unload(a).unwrap();
    let err = c.run(&Sum, &(), &a).unwrap_err().to_string();
    assert!(err.contains("not loaded"), "{err}");
    assert_eq!(c.run(&Sum, &(), &b).unwrap(), 30.0);
}

#[test]
fn automatic_worker_count_keeps_many_for_heavy_chunks_and_one_for_tiny_ones_with_the_same_results() {
    use cohort_cli::jobs::diag::{Slow, SlowPlan};
    let data = Dataset::new((1..=8).map(f64::from).collect(), 1).unwrap().with_chunks(8).unwrap();
    // Chunks that take 60 ms each: four workers are clearly best.
    let mut c = builder(4).auto_workers(true).start().unwrap();
    let h = c.load(&data).unwrap();
    let slow = cohort::Serde(SlowPlan { millis: 60 });
    assert_eq!(c.run(&Slow, &slow, &h).unwrap(), 36.0);
    let choice = c.auto_choice().cloned().unwrap();
    assert_eq!((choice.started, choice.chose), (4, 4), "{choice:?}");
    assert_eq!(choice.predicted.len(), 4);
    assert_eq!(c.num_workers(), 4);
    // Chunks that take microseconds: the per-worker overhead dominates and one worker is kept.
    let mut c = builder(4).auto_workers(true).start().unwrap();
    let h = c.load(&data).unwrap();
    assert_eq!(c.run(&Sum, &(), &h).unwrap(), 36.0);
    let choice = c.auto_choice().cloned().unwrap();
    assert!(choice.chose < 4, "{choice:?}");
    assert_eq!(c.num_workers(), choice.chose);
    for _ in 0..3 {
        assert_eq!(c.run(&Sum, &(), &h).unwrap(), 36.0);
    }
    assert!(c.failures().is_empty(), "retired workers are not failures");
}
