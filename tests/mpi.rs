//! cohort under real MPI launchers: Open MPI's `mpirun --oversubscribe -np 3` (Debian's openmpi-bin) and MPICH's
//! `mpiexec.hydra -n 3` (mpich) start three ranks of the same command line, which train the `local:3` model; a
//! rank killed under mpirun ends the job with a message instead of a hang.
//!
//! Each test prints why it skips when its launcher is not installed (CI installs both).

mod common;

use std::process::Command;
use std::time::Duration;

use common::launch::*;
use common::*;

const LIMIT: Duration = Duration::from_secs(90);

/// `Some(reason)` when `program` is not installed.
fn missing(program: &str) -> Option<String> {
    let found = ["/usr/bin", "/usr/local/bin"].iter().any(|d| std::path::Path::new(d).join(program).exists());
    (!found).then(|| format!("{program} is not installed (apt-get install openmpi-bin mpich)"))
}

/// Open MPI's mpirun, allowed to run as root (CI runs the tests as root).
fn mpirun() -> Command {
    let mut cmd = Command::new("mpirun.openmpi");
    cmd.args(["--oversubscribe", "-np", "3", "-x", "COHORT_SECRET"]);
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd.env("COHORT_SECRET", secret_hex());
    cmd
}

#[test]
fn mpirun_and_mpiexec_train_the_local_model() {
    let local = local_sha(3);
    let dir = tempfile::tempdir().unwrap();
    match missing("mpirun.openmpi") {
        Some(why) => eprintln!("skipping mpirun: {why}"),
        None => {
            let path = dir.path().join("mpirun.json");
            let mut cmd = mpirun();
            cmd.arg(cohort_bin()).args(linear_args(&path));
            let (status, stderr) = Watched::spawn(cmd).finish(LIMIT);
            assert!(status.success(), "{stderr}");
            assert_eq!(report(&path), (local.clone(), 2), "mpirun -np 3");
        }
    }
    match missing("mpiexec.hydra") {
        Some(why) => eprintln!("skipping mpiexec: {why}"),
        None => {
            let path = dir.path().join("mpiexec.json");
            let mut cmd = Command::new("mpiexec.hydra");
            cmd.args(["-n", "3"]).arg(cohort_bin()).args(linear_args(&path)).env("COHORT_SECRET", secret_hex());
            let (status, stderr) = Watched::spawn(cmd).finish(LIMIT);
            assert!(status.success(), "{stderr}");
            assert_eq!(report(&path), (local, 2), "mpiexec.hydra -n 3");
        }
    }
}

#[test]
fn a_rank_killed_under_mpirun_ends_the_job_with_a_message() {
    if let Some(why) = missing("mpirun.openmpi") {
        eprintln!("skipping: {why}");
        return;
    }
    let tag = new_tag();
    let mut cmd = mpirun();
    cmd.args(["-x", "COHORT_LOG", "-x", "COHORT_TEST_TAG"]).arg(cohort_bin()).args(endless_args());
    cmd.env("COHORT_LOG", "info").env("COHORT_TEST_TAG", &tag);
    let mut job = Watched::spawn(cmd);
    assert!(job.wait_for("all 2 ranks connected", LIMIT), "the ranks never connected:\n{}", job.seen());
    let victim = tagged(&tag, &["OMPI_COMM_WORLD_RANK=2"]);
    assert_eq!(victim.len(), 1, "{victim:?}");
    signal(victim[0], libc::SIGKILL);
    let (status, stderr) = job.finish(LIMIT);
    assert!(!status.success());
    // Rank 0 names the lost worker, or (when mpirun stops it first) says that the launcher ended the job.
    assert!(
        (stderr.contains("(rank 2 on") && stderr.contains("died")) || stderr.contains("stopped by SIGTERM"),
        "{stderr}"
    );
    assert!(eventually(Duration::from_secs(20), || tagged(&tag, &[]).is_empty()), "left: {:?}", tagged(&tag, &[]));
}
