//! Failures against real worker processes: crashes, kills, stalls, panics, rejected handshakes, bad programs.
//! Each must produce a clear error, promptly, never a hang or a panic.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use cohort::wire::handshake::{master_handshake, HandshakeError, MasterHandshake, Secret};
use cohort::{Dataset, Error, MapReduce, Serde, Shard};
use cohort_cli::jobs::diag::{Fault, FaultAction, FaultPlan, Sum};
use common::*;

fn four_chunks() -> Dataset<f64> {
    Dataset::from_rows(&[[1.0], [2.0], [3.0], [4.0]]).unwrap().with_chunks(4).unwrap()
}

fn fault(chunk: u32, action: FaultAction) -> Serde<FaultPlan> {
    Serde(FaultPlan { chunk, action })
}

#[test]
fn with_no_failures_allowed_a_worker_that_exits_is_reported_with_status_and_stderr() {
    let mut c = builder(2).forward_stderr(false).max_failures(0).start().unwrap();
    let h = c.load(&four_chunks()).unwrap();
    let err = c.run(&Fault, &fault(3, FaultAction::Exit(3)), &h).unwrap_err();
    let Error::WorkerDied { worker, status, stderr_tail } = &err else { panic!("{err}") };
    assert!(worker.starts_with("worker 1 (local pid"), "{worker}");
    assert_eq!(status, "exited with status 3");
    assert!(stderr_tail.iter().any(|l| l.contains("fault injected on chunk 3")), "{stderr_tail:?}");
    // The cluster refuses further work instead of hanging on the dead worker.
    assert!(c.run(&Sum, &(), &h).unwrap_err().to_string().contains("unusable"));
}

#[test]
fn a_job_that_kills_every_worker_it_touches_stops_after_max_failures_naming_each_loss() {
    // The fault is deterministic: every replacement dies on chunk 3 again. Past --max-failures the cluster gives up
    // with the whole list instead of looping forever.
    let mut c = builder(2).forward_stderr(false).max_failures(2).start().unwrap();
    let h = c.load(&four_chunks()).unwrap();
    let err = c.run(&Fault, &fault(3, FaultAction::Exit(3)), &h).unwrap_err();
    let Error::TooManyFailures { max, failures } = &err else { panic!("{err}") };
    assert_eq!(*max, 2);
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(failures.iter().all(|f| f.contains("exited with status 3") && f.contains("fault injected")), "{err}");
    assert!(err.to_string().contains("--max-failures"), "{err}");
}

#[test]
fn an_aborting_worker_is_reported_with_its_signal() {
    let mut c = builder(2).forward_stderr(false).max_failures(0).start().unwrap();
    let h = c.load(&four_chunks()).unwrap();
    let err = c.run(&Fault, &fault(0, FaultAction::Abort), &h).unwrap_err().to_string();
    assert!(err.contains("worker 0") && err.contains("killed by signal 6 (SIGABRT)"), "{err}");
}

#[test]
fn a_panicking_job_fails_the_round_but_not_the_cluster() {
    let mut c = builder(2).forward_stderr(false).start().unwrap();
    let h = c.load(&four_chunks()).unwrap();
    let err = c.run(&Fault, &fault(1, FaultAction::Panic), &h).unwrap_err().to_string();
    assert!(err.contains("`cohort.fault` failed on worker 0") && err.contains("fault injected on chunk 1"), "{err}");
    assert_eq!(c.run(&Fault, &fault(99, FaultAction::Panic), &h).unwrap(), 10.0);
    assert_eq!(c.stats().failures, 0, "a job's own failure is not a lost worker");
}

#[test]
fn a_worker_killed_between_rounds_is_replaced_and_the_next_round_is_unchanged() {
    let mut c = cluster(3);
    let h = c.load(&four_chunks()).unwrap();
    assert_eq!(c.run(&Sum, &(), &h).unwrap(), 10.0);
    let victim = pid_of(&c.worker_labels()[1]);
    // SAFETY: sending a signal to a child process we started.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    assert_eq!(c.run(&Sum, &(), &h).unwrap(), 10.0);
    let failures = c.failures();
    assert_eq!(failures.len(), 1);
    assert!(failures[0].worker.starts_with("worker 1") && failures[0].cause.contains("SIGKILL"), "{failures:?}");
    assert!(failures[0].recovered.is_some());
    let labels = c.worker_labels();
    assert_eq!(labels.len(), 3, "the lost worker was replaced: {labels:?}");
    assert!(labels.iter().all(|l| pid_of(l) != victim));
}

#[test]
fn with_no_failures_allowed_a_stopped_worker_is_declared_stalled() {
    let mut c = builder(2).heartbeat_timeout(Duration::from_millis(800)).max_failures(0).start().unwrap();
    let h = c.load(&four_chunks()).unwrap();
    let victim = pid_of(&c.worker_labels()[0]);
    // SAFETY: signals to a child process we started.
    unsafe { libc::kill(victim as i32, libc::SIGSTOP) };
    let err = c.run(&Sum, &(), &h).unwrap_err();
    unsafe { libc::kill(victim as i32, libc::SIGCONT) };
    assert!(matches!(&err, Error::WorkerStalled { worker, .. } if worker.starts_with("worker 0")), "{err}");
}

#[test]
fn a_job_missing_from_the_worker_binary_is_named() {
    struct NotThere;
    impl MapReduce for NotThere {
        const NAME: &'static str = "tests.not_registered";
        type Elem = f64;
        type Params = ();
        type Output = ();
        fn map(&self, _: &(), _: &Shard<'_, f64>) {}
        fn reduce(&self, _: (), _: ()) {}
    }
    let mut c = cluster(1);
    let h = c.load(&four_chunks()).unwrap();
    let err = c.run(&NotThere, &(), &h).unwrap_err().to_string();
    assert!(err.contains("tests.not_registered") && err.contains("linear.gradient"), "{err}");
}

#[test]
fn a_worker_running_another_binary_is_rejected() {
    let err = builder(1).forward_stderr(false).expect_binary_sha256([0xab; 32]).start().err().unwrap().to_string();
    assert!(err.contains("failed the handshake") && err.contains(&"ab".repeat(32)), "{err}");
}

/// Starts a real `cohort` worker process with `secret` in its environment.
fn raw_worker(secret: &Secret) -> std::process::Child {
    Command::new(cohort_bin())
        .env("COHORT_ROLE", "worker")
        .env("COHORT_SECRET", secret.to_hex())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_worker_without_the_job_secret_is_rejected_and_says_why() {
    let mut child = raw_worker(&Secret::generate());
    let hash = cohort::wire::file_sha256(&cohort_bin()).unwrap();
    let hs = MasterHandshake::new(Secret::generate(), hash);
    let (mut r, mut w) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let err = master_handshake(&mut r, &mut w, &hs, 0).unwrap_err();
    assert!(matches!(err, HandshakeError::Proof { who: "worker" }), "{err}");
    drop(w);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rejected by the master: authentication failed"), "{stderr}");
}

#[test]
fn a_master_speaking_another_protocol_version_is_rejected_by_the_worker() {
    let secret = Secret::generate();
    let mut child = raw_worker(&secret);
    let hash = cohort::wire::file_sha256(&cohort_bin()).unwrap();
    let hs = MasterHandshake::with_version(secret, hash, 999);
    let (mut r, mut w) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let err = master_handshake(&mut r, &mut w, &hs, 0).unwrap_err().to_string();
    assert!(err.contains("rejected by the worker") && err.contains("999"), "{err}");
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("protocol version mismatch"));
}

#[test]
fn programs_that_are_not_cohort_workers_are_diagnosed() {
    // `cat` echoes the master's Hello back: a peer that is not a cohort worker.
    let err = cohort::Cluster::builder()
        .workers(vec![cohort::WorkerSpec::Local { count: 1 }])
        .worker_program("/bin/cat")
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not a cohort worker"), "{err}");

    // A program that prints text: the bytes are not frames, and the error says what to check.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("chatty");
    let mut f = std::fs::File::create(&script).unwrap();
    writeln!(f, "#!/bin/sh\necho 'usage: chatty [options]'\nsleep 1").unwrap();
    drop(f);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = cohort::Cluster::builder()
        .workers(vec![cohort::WorkerSpec::Local { count: 1 }])
        .worker_program(&script)
        .forward_stderr(false)
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not cohort frames") && err.contains("run_if_worker"), "{err}");

    // A program that does not exist.
    let err = cohort::Cluster::builder()
        .workers(vec![cohort::WorkerSpec::Local { count: 1 }])
        .worker_program("/nonexistent/cohort")
        .start()
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/cohort"), "{err}");
}

#[test]
fn workers_exit_when_the_master_is_killed() {
    let mut master = Command::new(cohort_bin())
        .args([
            "train",
            "linear",
            "--rows",
            "2000",
            "--features",
            "4",
            "--iterations",
            "100000000",
            "--workers",
            "local:3",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let master_pid = master.id();
    assert!(eventually(Duration::from_secs(30), || children(master_pid).len() == 3), "workers did not start");
    let workers = children(master_pid);
    master.kill().unwrap();
    master.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || workers.iter().all(|&p| !alive(p))),
        "orphaned workers: {:?}",
        workers.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
}

#[test]
fn dropping_the_cluster_stops_every_worker() {
    let c = cluster(4);
    let pids: Vec<u32> = c.worker_labels().iter().map(|l| pid_of(l)).collect();
    assert!(pids.iter().all(|&p| alive(p)));
    drop(c);
    assert!(pids.iter().all(|&p| !alive(p)), "workers outlived the cluster");
}
