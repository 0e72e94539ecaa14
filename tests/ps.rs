//! The parameter server over real worker and server processes: every consistency mode trains, BSP is
//! bit-identical run to run, servers own disjoint ranges, a server killed under replication 2 loses no acknowledged
//! update (a counter job counts them), and a lost worker is dropped while the others finish.

mod common;

use std::time::Duration;

use cohort::cluster::{PsEvent, PsOptions};
use cohort::{Cluster, Dataset, WorkerSpec};
use cohort_cli::jobs::linear::generate;
use cohort_cli::jobs::ps::{linear_mse as mse, PsCounter, PsLinear};
use common::*;

fn ps_cluster(workers: usize, servers: usize) -> Cluster {
    builder(workers).servers(vec![WorkerSpec::Local { count: servers }]).start().expect("cluster starts")
}

fn options(consistency: &str, clocks: u64) -> PsOptions {
    PsOptions {
        consistency: consistency.parse().unwrap(),
        rule: "sgd:0.05".into(),
        batch: 32,
        clocks,
        seed: 3,
        progress_every: 10,
        ..PsOptions::default()
    }
}

#[test]
fn bsp_trains_and_is_bit_identical_run_to_run() {
    let data = generate(2_000, 6, 7).unwrap().with_chunks(8).unwrap();
    let before = mse(&data, &[0.0; 7]);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut c = ps_cluster(2, 2);
        let h = c.load(&data).unwrap();
        let mut progress = 0;
        let out = c.train_ps(&PsLinear, &6, &h, &options("bsp", 60), |_| progress += 1).unwrap();
        assert!(progress >= 12, "{progress} progress reports");
        assert_eq!(out.workers.len(), 2);
        assert!(out.workers.iter().all(|w| w.clocks == 60 && !w.lost), "{:?}", out.workers);
        assert_eq!(out.metrics.len(), 2, "one metrics record per range");
        runs.push(out.params);
    }
    assert_eq!(runs[0], runs[1], "BSP runs differ");
    let after = mse(&data, &runs[0]);
    assert!(after < before / 10.0, "mse {before} → {after}");
}

#[test]
fn every_consistency_mode_trains() {
    let data = generate(2_000, 6, 7).unwrap().with_chunks(8).unwrap();
    let before = mse(&data, &[0.0; 7]);
    let mut c = ps_cluster(3, 2);
    let h = c.load(&data).unwrap();
    for mode in ["ssp:1", "asp:3,8", "async"] {
        let out = c.train_ps(&PsLinear, &6, &h, &options(mode, 60), |_| {}).unwrap();
        let after = mse(&data, &out.params);
        assert!(after < before / 10.0, "{mode}: mse {before} → {after}");
        let reads: u64 = out.metrics.iter().map(|m| m.staleness.values().sum::<u64>()).sum();
        assert!(reads > 0, "{mode}: no read recorded in the staleness histograms");
    }
}

/// Kills `victim` after `after`.
fn kill_later(victim: u32, after: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        // SAFETY: signalling a process this test's cluster started.
        unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    })
}

#[test]
fn a_server_killed_under_replication_two_loses_no_acknowledged_update() {
    let data = Dataset::new((0..400).map(f64::from).collect(), 1).unwrap().with_chunks(4).unwrap();
    let mut c = ps_cluster(2, 3);
    let h = c.load(&data).unwrap();
    let servers = c.server_labels();
    assert_eq!(servers.len(), 3);
    let killer = kill_later(pid_of(&servers[1]), Duration::from_millis(300));
    let opts = PsOptions { rule: "sgd:1".into(), replication: 2, clocks: 3_000, batch: 8, ..options("ssp:2", 0) };
    let out = c.train_ps(&PsCounter, &(90, 0), &h, &opts, |_| {}).unwrap();
    killer.join().unwrap();
    assert_eq!(c.failures().len(), 1, "the server was not lost (the run ended first?): {:?}", c.failures());
    assert!(c.failures()[0].worker.starts_with("server"), "{:?}", c.failures());
    assert!(c.failures()[0].recovered.is_some(), "the workers did not go on after the failover");
    // Every key was pushed once per clock by each of the two workers: exactly 6 000, none lost, none twice.
    assert!(out.params.iter().all(|&v| v == 6_000.0), "counts {:?}", &out.params[..10]);
}

/// One run loses a server (replication 2 keeps its ranges) and a worker (dropped): it completes, its failures name
/// both, and the counts show no acknowledged update lost: the survivors' 2 × 3 000 pushes on every key, plus the
/// lost worker's, the same on every key of a range.
#[test]
fn a_run_survives_losing_a_server_and_a_worker() {
    let data = Dataset::new((0..600).map(f64::from).collect(), 1).unwrap().with_chunks(6).unwrap();
    let mut c = ps_cluster(3, 3);
    let h = c.load(&data).unwrap();
    // Killed as worker 0 passes clocks 1 000 and 2 000 (not by time: a fast machine could finish first).
    let mut victims = vec![pid_of(&c.worker_labels()[2]), pid_of(&c.server_labels()[1])];
    let opts = PsOptions { rule: "sgd:1".into(), replication: 2, clocks: 3_000, batch: 8, ..options("ssp:2", 0) };
    let out = c
        .train_ps(&PsCounter, &(90, 0), &h, &opts, |e| {
            if let PsEvent::Progress { worker: 0, clock, .. } = e {
                if clock >= 1_000 * (3 - victims.len() as u64) {
                    if let Some(pid) = victims.pop() {
                        // SAFETY: signalling a process this test's cluster started.
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    }
                }
            }
        })
        .unwrap();
    assert!(victims.is_empty(), "worker 0 did not report clocks 1 000 and 2 000");
    let failures = c.failures();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures.iter().any(|f| f.worker.starts_with("server") && f.recovered.is_some()), "{failures:?}");
    assert!(failures.iter().any(|f| f.worker.starts_with("worker")), "{failures:?}");
    let lost: Vec<bool> = out.workers.iter().map(|w| w.lost).collect();
    assert_eq!(lost, [false, false, true], "{:?}", out.workers);
    assert!(out.params.iter().all(|&v| (6_000.0..=9_000.0).contains(&v)), "{:?}", &out.params[..5]);
    for range in out.params.chunks(30) {
        assert!(range.iter().all(|&v| v == range[0]), "a range's keys disagree: {range:?}");
    }
}

#[test]
fn a_lost_worker_is_dropped_and_the_others_finish() {
    let data = Dataset::new((0..600).map(f64::from).collect(), 1).unwrap().with_chunks(6).unwrap();
    let mut c = ps_cluster(3, 2);
    let h = c.load(&data).unwrap();
    let victim = pid_of(&c.worker_labels()[2]);
    let killer = kill_later(victim, Duration::from_millis(300));
    let opts = PsOptions { rule: "sgd:1".into(), clocks: 3_000, batch: 8, ..options("bsp", 0) };
    let out = c.train_ps(&PsCounter, &(20, 0), &h, &opts, |_| {}).unwrap();
    killer.join().unwrap();
    let lost: Vec<bool> = out.workers.iter().map(|w| w.lost).collect();
    assert_eq!(lost, [false, false, true], "{:?}", out.workers);
    assert!(out.workers[..2].iter().all(|w| w.clocks == 3_000));
    // The survivors' 6 000 pushes are all there, plus whatever the lost one had pushed.
    assert!(out.params.iter().all(|&v| (6_000.0..9_000.0).contains(&v)), "{:?}", &out.params[..5]);
}

#[test]
fn a_diverging_run_stops_with_a_clear_error_and_keeps_the_last_good_model() {
    let data = generate(2_000, 6, 7).unwrap().with_chunks(8).unwrap();
    let mut c = ps_cluster(2, 2);
    let h = c.load(&data).unwrap();
    // A sound run first, then the same run with a learning rate that makes it blow up.
    let opts = PsOptions { eval_every: Some(Duration::from_millis(20)), ..options("async", 4_000) };
    let sound = c.train_ps(&PsLinear, &6, &h, &PsOptions { clocks: 200, ..opts.clone() }, |_| {}).unwrap();
    assert!(sound.diverged.is_none());
    let wild = PsOptions { rule: "sgd:3".into(), progress_every: 2, ..opts };
    let out = c.train_ps(&PsLinear, &6, &h, &wild, |_| {}).unwrap();
    let d = out.diverged.as_ref().expect("the run diverged");
    assert!(d.loss.is_nan() || d.loss > 10.0 * d.first, "{d:?}");
    assert!(d.to_string().contains("diverged") && d.to_string().contains("lower the learning rate"), "{d}");
    assert!(out.params.iter().all(|v| v.is_finite()), "the kept model is not finite: {:?}", out.params);
    assert!(out.workers.iter().all(|w| w.clocks < 4_000), "the run went on: {:?}", out.workers);
    // The cluster is still usable: the next run trains.
    let again = c.train_ps(&PsLinear, &6, &h, &options("bsp", 20), |_| {}).unwrap();
    assert!(again.diverged.is_none() && again.workers.iter().all(|w| w.clocks == 20));
}

#[test]
fn cohort_train_ps_reports_the_run_and_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("ps.json");
    let out = run_cohort(&[
        "train",
        "ps",
        "--model",
        "linear",
        "--train-rows",
        "4000",
        "--servers",
        "2",
        "--workers",
        "local:2",
        "--consistency",
        "ssp:1",
        "--clocks",
        "60",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("staleness") && stdout.contains("range 1"), "{stdout}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["ranges"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(r["workers"].as_array().unwrap().len(), 2, "{r}");
    assert!(r["workers"].as_array().unwrap().iter().all(|w| w["clocks"] == 60), "{r}");
    assert!(r["max_staleness"].as_u64().unwrap() <= 1, "SSP(1) read staler than 1: {r}");
    assert!(r["final_loss"].as_f64().unwrap() < 1.0, "{r}");
    fails_with(
        &["train", "ps", "--model", "linear", "--consistency", "ssp", "--workers", "local:1"],
        "--consistency \"ssp\"",
    );
    fails_with(&["train", "ps", "--model", "linear", "--rule", "sgd:-1", "--workers", "local:1"], "--rule");
    fails_with(&["train", "ps", "--model", "nope", "--workers", "local:1"], "--model \"nope\"");
    fails_with(&["train", "ps", "--model", "linear", "--servers", "0", "--workers", "local:1"], "--servers 0");
    fails_with(
        &["train", "ps", "--model", "linear", "--servers", "2", "--replication", "3", "--workers", "local:1"],
        "replication 3",
    );
}

/// `cohort bench consistency` with a list of server counts, a straggler and block scheduling: one CSV row per
/// (servers, straggler, mode), ASP's mode quoted, the block-scheduling row, and an SVG.
#[test]
fn bench_consistency_writes_its_table_csv_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, svg) = (dir.path().join("c.csv"), dir.path().join("c.svg"));
    let out = run_cohort(&[
        "bench",
        "consistency",
        "--model",
        "linear",
        "--train-rows",
        "2000",
        "--modes",
        "bsp asp:2,8",
        "--workers",
        "2",
        "--servers",
        "1,2",
        "--straggler",
        "2",
        "--epochs",
        "0.5",
        "--batch",
        "32",
        "--eval-every",
        "0.05",
        "--target-loss",
        "10",
        "--blocks",
        "8,0.5,4",
        "--csv",
        csv.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("block scheduling:"), "{stdout}");
    let table = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = table.lines().skip(1).collect();
    // Per server count: bsp and asp without and with the straggler, and ssp:1 with and without blocks without it.
    assert_eq!(rows.len(), 2 * 6, "{table}");
    for servers in ["1", "2"] {
        for prefix in
            ["none,bsp,", "none,\"asp:2,8\",", "2x,bsp,", "2x,\"asp:2,8\",", "none,ssp:1,", "none,ssp:1+blocks,"]
        {
            let want = format!("{servers},{prefix}");
            assert!(rows.iter().any(|r| r.starts_with(&want)), "no row {want}: {table}");
        }
    }
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    fails_with(&["bench", "consistency", "--servers", "1,0"], "--servers \"1,0\" must be counts of at least 1");
}
