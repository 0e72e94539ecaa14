//! cohort under a real single-node Slurm cluster (Debian's slurm-wlm and munge, daemons started by
//! `scripts/single-node-slurm.sh` and stopped by pid): `srun -n 3` ranks, `--workers slurm` inside `salloc`, and
//! `sbatch --wait` of a `cohort slurm-script` all train the `local:3` model; a worker task that dies, a cancelled
//! step and a dead master are each named, and nothing is left running.
//!
//! These tests need root and slurm-wlm + munge (CI installs them); elsewhere each prints why it skips.

mod common;

use std::net::ToSocketAddrs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::launch::*;
use common::slurm::{unavailable, Slurm};
use common::*;

macro_rules! require_slurm {
    () => {
        if let Some(reason) = unavailable() {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

const LIMIT: Duration = Duration::from_secs(90);

/// `--workers slurm` tasks connect to the master's host name; where it does not resolve, point them at loopback.
fn master_addr(cmd: &mut Command) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if (host.trim(), 0).to_socket_addrs().is_err() {
        cmd.env("MASTER_ADDR", "127.0.0.1");
    }
}

/// Runs `cmd` to completion and checks that it succeeded.
fn succeeds(cmd: Command, slurm: &Slurm) -> String {
    let (status, stderr) = Watched::spawn(cmd).finish(LIMIT);
    assert!(status.success(), "{status}\n{stderr}\n{}", slurm.logs());
    stderr
}

#[test]
fn srun_salloc_and_sbatch_train_the_local_model() {
    require_slurm!();
    let slurm = Slurm::start();
    let local = local_sha(3);
    let dir = tempfile::tempdir().unwrap();

    // srun -n 3: three ranks of the same command line; the secret in the environment srun passes on.
    let path = dir.path().join("srun.json");
    let mut cmd = slurm.command("srun");
    cmd.args(["-n", "3", "--overcommit", "--kill-on-bad-exit=1"]).arg(cohort_bin()).args(linear_args(&path));
    cmd.env("COHORT_SECRET", secret_hex());
    succeeds(cmd, &slurm);
    assert_eq!(report(&path), (local.clone(), 2), "srun -n 3");

    // The same with the secret in a file on the (here trivially) shared file system.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, secret_hex()).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.path().join("srun-file.json");
    let mut cmd = slurm.command("srun");
    cmd.args(["-n", "3", "--overcommit"]).arg(cohort_bin()).args(linear_args(&path)).arg("--secret-file").arg(&secret);
    cmd.env_remove("COHORT_SECRET");
    succeeds(cmd, &slurm);
    assert_eq!(report(&path), (local.clone(), 2), "srun -n 3 --secret-file");

    // --workers slurm inside an allocation: the master starts its three workers with srun.
    let path = dir.path().join("salloc.json");
    let mut cmd = slurm.command("salloc");
    cmd.args(["-n", "3", "--overcommit"]).arg(cohort_bin()).args(linear_args(&path)).args(["--workers", "slurm"]);
    master_addr(&mut cmd);
    succeeds(cmd, &slurm);
    assert_eq!(report(&path), (local.clone(), 3), "salloc + --workers slurm");

    // sbatch --wait of the script `cohort slurm-script` writes.
    let path = dir.path().join("sbatch.json");
    let script = dir.path().join("job.sh");
    let output = dir.path().join("job-%j.out");
    let out = Command::new(cohort_bin())
        .args(["slurm-script", "--tasks", "3", "--overcommit", "--output", &output.display().to_string()])
        .arg("--out")
        .arg(&script)
        .arg("--")
        .args(linear_args(&path))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut cmd = slurm.command("sbatch");
    cmd.arg("--wait").arg(&script);
    master_addr(&mut cmd);
    succeeds(cmd, &slurm);
    assert_eq!(report(&path), (local, 3), "sbatch --wait");
    let log = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("job-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("the job's output file");
    assert!(log.contains("model sha256") && log.contains("slurm (3 tasks in job"), "{log}");
    assert!(eventually(Duration::from_secs(20), || slurm.queue().is_empty()), "jobs left: {}", slurm.queue());
}

/// Starts an endless `--workers slurm` job in `salloc` and waits until its master has admitted every task.
fn endless_slurm_master(slurm: &Slurm, tag: &str) -> Watched {
    let mut cmd = slurm.command("salloc");
    cmd.args(["-n", "3", "--overcommit"]).arg(cohort_bin()).args(endless_args()).args(["--workers", "slurm"]);
    cmd.env("COHORT_LOG", "info").env("COHORT_TEST_TAG", tag);
    master_addr(&mut cmd);
    let mut master = Watched::spawn(cmd);
    assert!(
        master.wait_for("all 3 slurm tasks connected", LIMIT),
        "the tasks never connected:\n{}\n{}",
        master.seen(),
        slurm.logs()
    );
    master
}

#[test]
fn failures_under_slurm_are_named_and_leave_nothing_running() {
    require_slurm!();
    let slurm = Slurm::start();

    // A worker task killed mid-job: the master names it and goes on with the other task; stopped, it leaves nothing.
    let tag = new_tag();
    let mut master = endless_slurm_master(&slurm, &tag);
    let victim = tagged(&tag, &["COHORT_ROLE=worker", "SLURM_PROCID=1"]);
    assert_eq!(victim.len(), 1, "{victim:?}");
    signal(victim[0], libc::SIGKILL);
    assert!(master.wait_for("recovering (loss 1", LIMIT), "the loss was not reported:\n{}", master.seen());
    let seen = master.seen();
    assert!(seen.contains("(slurm task 1 on") && seen.contains("died") && seen.contains("srun"), "{seen}");
    let pid = master.child.id();
    signal(pid, libc::SIGTERM);
    master.finish(LIMIT);
    assert!(eventually(Duration::from_secs(20), || tagged(&tag, &[]).is_empty()), "left: {:?}", tagged(&tag, &[]));

    // The worker step cancelled by Slurm: the master says so.
    let tag = new_tag();
    let master = endless_slurm_master(&slurm, &tag);
    let steps = slurm.steps();
    let step = steps.iter().find(|s| s.ends_with(".0")).unwrap_or_else(|| panic!("no worker step in {steps:?}"));
    assert!(slurm.command("scancel").arg(step).status().unwrap().success());
    let (status, stderr) = master.finish(LIMIT);
    assert!(!status.success());
    assert!(stderr.contains("died") && stderr.contains("Slurm cancelled the step"), "{stderr}");
    assert!(eventually(Duration::from_secs(20), || tagged(&tag, &[]).is_empty()), "left: {:?}", tagged(&tag, &[]));

    // The master killed: its srun and every task end with it, and the allocation is released.
    let tag = new_tag();
    let master = endless_slurm_master(&slurm, &tag);
    let pid = tagged(&tag, &["COHORT_LOG=info"])
        .into_iter()
        .find(|&p| !tagged(&tag, &["COHORT_ROLE=worker"]).contains(&p) && is_cohort(p))
        .expect("the master process");
    signal(pid, libc::SIGKILL);
    master.finish(LIMIT);
    assert!(eventually(Duration::from_secs(20), || tagged(&tag, &[]).is_empty()), "left: {:?}", tagged(&tag, &[]));

    // srun -n 3 ranks whose rank 0 is killed: the other ranks end promptly, so srun returns.
    let tag = new_tag();
    let mut cmd = slurm.command("srun");
    cmd.args(["-n", "3", "--overcommit"]).arg(cohort_bin()).args(endless_args());
    cmd.env("COHORT_SECRET", secret_hex()).env("COHORT_LOG", "info").env("COHORT_TEST_TAG", &tag);
    let mut srun = Watched::spawn(cmd);
    assert!(srun.wait_for("all 2 ranks connected", LIMIT), "never connected:\n{}\n{}", srun.seen(), slurm.logs());
    let rank0 = tagged(&tag, &["SLURM_PROCID=0"]).into_iter().find(|&p| is_cohort(p)).expect("rank 0");
    signal(rank0, libc::SIGKILL);
    let (status, stderr) = srun.finish(LIMIT);
    assert!(!status.success());
    assert!(stderr.contains("went away") || stderr.contains("lost the connection"), "{stderr}");
    assert!(eventually(Duration::from_secs(20), || tagged(&tag, &[]).is_empty()), "left: {:?}", tagged(&tag, &[]));
    assert!(eventually(Duration::from_secs(20), || slurm.queue().is_empty()), "jobs left: {}", slurm.queue());
}

/// Whether `pid` runs the cohort binary (not srun, salloc or slurmstepd).
fn is_cohort(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == cohort_bin())
}
