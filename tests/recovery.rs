//! Jobs that lose workers finish with the model of a fault-free run: real training commands over real worker
//! processes, with a worker killed (SIGKILL) or stopped (SIGSTOP) at a chosen point — while its data loads, in the
//! middle of a round, in the middle of a pass, between rounds — locally and over a real sshd, with a spare and
//! without. Faults are injected with `COHORT_FAULT` (see `cohort::cluster::worker::fault`), which makes exactly one
//! worker process kill or stop itself at that point.

mod common;

use std::process::Command;
use std::time::Duration;

use cohort::Dataset;
use cohort_ml::mlp::jobs::{PsgdJob, PsgdState, TrainSpec};
use cohort_ml::mlp::optimizer::OptimizerSpec;
use cohort_ml::mlp::Mlp;
use common::sshd::{unavailable, Sshd};
use common::*;

/// Fast detection for the tests: a stopped worker is declared lost after 1 s.
const FAST: [&str; 4] = ["--heartbeat-timeout", "1", "--heartbeat-interval", "0.1"];

/// Runs `cohort` with `args` (plus a report path) and, if given, a fault armed in one worker. Returns the report,
/// or stderr on failure.
fn run(args: &[&str], fault: Option<&str>) -> Result<serde_json::Value, String> {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.json");
    let mut cmd = Command::new(cohort_bin());
    cmd.args(args).args(FAST).arg("--report").arg(&report);
    if let Some(f) = fault {
        cmd.env("COHORT_FAULT", f).env("COHORT_FAULT_ONCE", dir.path().join("fired"));
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    if let Some(f) = fault {
        assert!(dir.path().join("fired").exists(), "fault {f} never fired; stderr:\n{stderr}");
        assert!(stderr.contains("injected fault"), "{stderr}");
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap())
}

/// `base` followed by `more`.
fn with<'a>(base: &[&'a str], more: &[&'a str]) -> Vec<&'a str> {
    [base, more].concat()
}

fn sha(report: &serde_json::Value) -> String {
    report["model_sha256"].as_str().expect("report has model_sha256").to_string()
}

const SOFTMAX: [&str; 11] = [
    "train",
    "softmax",
    "--dataset",
    "fashion-mnist",
    "--train-rows",
    "6000",
    "--iterations",
    "6",
    "--chunks",
    "16",
    "--workers",
];

#[test]
fn lbfgs_softmax_survives_a_worker_killed_or_stopped_during_load_and_mid_round() {
    let clean = sha(&run(&with(&SOFTMAX, &["local:2"]), None).unwrap());
    for fault in [
        "load:3:kill",   // while its chunks arrive
        "map:12:kill:4", // in the middle of the fourth round
        "map:2:stop:3",  // frozen mid-round: found by the heartbeat deadline
    ] {
        let got = run(&with(&SOFTMAX, &["local:2"]), Some(fault)).unwrap_or_else(|e| panic!("{fault}: {e}"));
        assert_eq!(sha(&got), clean, "{fault}");
    }
    // Without respawning, the survivor takes the lost chunks; still the same model.
    let no_respawn = with(&SOFTMAX, &["local:3", "--no-respawn"]);
    assert_eq!(sha(&run(&no_respawn, Some("map:7:kill:2")).unwrap()), clean);
}

const MLP: [&str; 12] =
    ["train", "mlp", "--sync", "avg", "--epochs", "3", "--train-rows", "4000", "--chunks", "16", "--replicas", "4"];

#[test]
fn model_averaging_with_fixed_replicas_is_identical_for_any_process_count_and_after_losses() {
    let clean = sha(&run(&with(&MLP, &["--workers", "local:2"]), None).unwrap());
    for workers in ["local:1", "local:3"] {
        assert_eq!(sha(&run(&with(&MLP, &["--workers", workers]), None).unwrap()), clean, "{workers}");
    }
    for fault in ["pass:5:kill:2", "pass:13:stop:3", "load:9:kill"] {
        let got = run(&with(&MLP, &["--workers", "local:2"]), Some(fault)).unwrap_or_else(|e| panic!("{fault}: {e}"));
        assert_eq!(sha(&got), clean, "{fault}");
    }
}

#[test]
fn a_replica_whose_worker_is_killed_between_passes_continues_from_its_saved_state() {
    let data = blobs(600, 12);
    let spec = TrainSpec {
        layers: vec![12, 8, 3],
        optimizer: OptimizerSpec::adam(0.01),
        batch: 16,
        steps: 7,
        block_momentum: 0.0,
    };
    let theta0 = Mlp::new(&[12, 8, 3]).unwrap().init(3);
    let train = |kill_after: Option<usize>| {
        let mut c = builder(3).replicas(3).start().unwrap();
        let h = c.load(&data).unwrap();
        let session = c.open_session(5);
        let mut state = PsgdState::new(spec.clone(), theta0.clone());
        for pass in 0..6 {
            if kill_after == Some(pass) {
                let victim = pid_of(&c.worker_labels()[1]);
                // SAFETY: signalling a child process we started.
                assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
            }
            state = c.pass(&PsgdJob, &session, &state, &h).unwrap();
            assert_eq!(state.error, None);
        }
        (state.theta, c.failures().len())
    };
    let (clean, none) = train(None);
    assert_eq!(none, 0);
    let (recovered, one) = train(Some(3));
    assert_eq!(one, 1);
    assert_eq!(recovered, clean, "the moved replica did not continue exactly");
}

#[test]
fn a_stopped_worker_busy_in_a_long_map_is_never_declared_lost() {
    // Each chunk's map sleeps 1.5 s, longer than the 1 s heartbeat timeout: heartbeats come from their own thread.
    use cohort_cli::jobs::diag::{Slow, SlowPlan};
    let data = Dataset::from_rows(&[[1.0], [2.0], [3.0], [4.0]]).unwrap().with_chunks(4).unwrap();
    let mut c = builder(2)
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_secs(1))
        .start()
        .unwrap();
    let h = c.load(&data).unwrap();
    assert_eq!(c.run(&Slow, &cohort::Serde(SlowPlan { millis: 1500 }), &h).unwrap(), 10.0);
    assert!(c.failures().is_empty(), "{:?}", c.failures());
}

#[test]
fn ssh_workers_recover_on_the_same_host_without_a_spare_and_on_a_spare_with_one() {
    if let Some(reason) = unavailable() {
        eprintln!("skipping: {reason}");
        return;
    }
    let sshd = Sshd::start();
    let spare = Sshd::start();
    let clean = sha(&run(&with(&SOFTMAX, &["local:2"]), None).unwrap());
    let mut ssh_args: Vec<String> = sshd.ssh_args();
    // The spare's host key must be trusted too.
    let known = tempfile::NamedTempFile::new().unwrap();
    let kh = |s: &Sshd| std::fs::read_to_string(s.dir.path().join("known_hosts")).unwrap();
    std::fs::write(known.path(), kh(&sshd) + &kh(&spare)).unwrap();
    std::fs::copy(sshd.dir.path().join("authorized_keys"), spare.dir.path().join("authorized_keys")).unwrap();
    let pos = ssh_args.iter().position(|a| a.starts_with("UserKnownHostsFile=")).unwrap();
    ssh_args[pos] = format!("UserKnownHostsFile={}", known.path().display());
    let ssh_args: Vec<&str> = ssh_args.iter().map(String::as_str).collect();

    // No spare: the other worker on the host takes the lost chunks.
    let spec = sshd.spec(2);
    let args = [&with(&SOFTMAX, &[&spec])[..], &ssh_args[..]].concat();
    let got = run(&args, Some("map:9:kill:3")).unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert_eq!(sha(&got), clean);

    // A spare host: it is bootstrapped only when needed, and takes over.
    let spare_spec = spare.spec(1);
    let args = [&with(&SOFTMAX, &[&spec])[..], &ssh_args[..], &["--spares", &spare_spec]].concat();
    assert!(spare.cached_binaries().is_empty(), "the spare was touched before it was needed");
    let got = run(&args, Some("map:4:stop:2")).unwrap_or_else(|e| panic!("{e}\n{}\n{}", sshd.log(), spare.log()));
    assert_eq!(sha(&got), clean);
    assert_eq!(spare.cached_binaries().len(), 1, "the spare was not used");
}

#[test]
fn bench_faults_prints_its_tables() {
    let out = Command::new(cohort_bin())
        .args(["bench", "faults", "--runs", "1", "--scenarios", "softmax", "--signals", "kill", "--iterations", "3"])
        .args(["--train-rows", "3000", "--straggler", "3", "--straggler-rounds", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    let row = stdout.lines().find(|l| l.starts_with("softmax L-BFGS  kill")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("1/1        1/1"), "the run did not complete with the fault-free model: {row}");
    assert!(stdout.contains("speed-weighted placement is"), "{stdout}");
}
