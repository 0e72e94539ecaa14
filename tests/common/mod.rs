//! Helpers shared by the integration tests: a cluster of real `cohort` worker processes, and running the binary.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use cohort::rng::Rng;
use cohort::{Cluster, Dataset, WorkerSpec};

/// The `cohort` executable built for these tests.
pub fn cohort_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cohort"))
}

/// Starts `n` local worker processes running the real `cohort` binary, the test process acting as master.
pub fn cluster(n: usize) -> Cluster {
    builder(n).start().expect("cluster starts")
}

/// A builder for `n` local `cohort` workers with a short heartbeat timeout.
pub fn builder(n: usize) -> cohort::ClusterBuilder {
    Cluster::builder()
        .workers(vec![WorkerSpec::Local { count: n }])
        .worker_program(cohort_bin())
        .heartbeat_interval(Duration::from_millis(100))
        .heartbeat_timeout(Duration::from_secs(10))
}

/// Runs the `cohort` binary with `args` and returns its output.
pub fn run_cohort(args: &[&str]) -> Output {
    Command::new(cohort_bin()).args(args).output().expect("cohort runs")
}

/// Runs `cohort` with `args` and checks it fails with a message containing `needle`, without panicking.
pub fn fails_with(args: &[&str], needle: &str) {
    let out = run_cohort(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Pids of the direct children of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command name (which is in parentheses and may contain spaces): state, ppid, ...
        let Some(rest) = stat.rsplit(')').next() else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Polls `cond` every 20 ms for up to `limit`; returns whether it became true.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid inside a worker label such as `worker 0 (local pid 4242)`.
pub fn pid_of(label: &str) -> u32 {
    label.rsplit("pid ").next().unwrap().trim_end_matches(')').parse().unwrap()
}
pub mod launch;
pub mod slurm;
pub mod sshd;

/// Three noisy classes in 12 dimensions (labels 0, 1, 2), cut into `chunks` chunks: a small classification task the
/// MLP learns in a few passes.
pub fn blobs(rows: usize, chunks: usize) -> Dataset<f32> {
    let mut rng = Rng::new(11);
    let mut x = Vec::new();
    let mut y = Vec::new();
    for _ in 0..rows {
        let c = rng.below(3) as usize;
        x.extend((0..12).map(|j| (if j % 3 == c { 1.5 } else { 0.0 } + rng.normal()) as f32));
        y.push(c as f32);
    }
    Dataset::new(x, 12).unwrap().with_labels(y).unwrap().with_chunks(chunks).unwrap()
}
