//! Ranks started through the environment contract alone (`RANK`/`WORLD_SIZE`, a Kubernetes Indexed Job's
//! `JOB_COMPLETION_INDEX`), with real `cohort` processes on loopback: the same model as local workers, the
//! Kubernetes manifest's variables, every misconfiguration named, and failures in both directions — a dead worker
//! rank is detected, a dead master ends its ranks.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use cohort::launch::env::{detect, Source};
use common::launch::*;
use common::sshd::free_port;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `world` ranks of the short linear job with `secret`, each with `extra` applied; returns rank 0's report.
fn run_ranks(world: usize, secret: &str, extra: impl Fn(usize, &mut Command)) -> (String, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let port = free_port();
    // Workers first: they wait for rank 0, which may start last.
    let mut procs: Vec<Watched> = (0..world)
        .rev()
        .map(|rank| {
            let mut cmd = rank_command(rank, world, port, secret, &linear_args(&path));
            extra(rank, &mut cmd);
            Watched::spawn(cmd)
        })
        .collect();
    procs.reverse();
    for (rank, p) in procs.into_iter().enumerate() {
        let (status, stderr) = p.finish(LIMIT);
        assert!(status.success(), "rank {rank}: {status}\n{stderr}");
    }
    report(&path)
}

#[test]
fn ranks_from_the_environment_train_the_local_model() {
    let local = local_sha(3);
    let secret = secret_hex();
    // The secret in the environment: ranks 1 and 2 become workers in run_if_worker, before the command line.
    let (sha, workers) = run_ranks(3, &secret, |_, _| {});
    assert_eq!((sha.as_str(), workers), (local.as_str(), 2));

    // The secret in a file given on the command line: ranks become workers after parsing it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (sha, workers) = run_ranks(4, &secret, |_, cmd| {
        cmd.env_remove("COHORT_SECRET").arg("--secret-file").arg(&file);
    });
    assert_eq!((sha.as_str(), workers), (local.as_str(), 3));
}

#[test]
fn a_user_program_runs_as_ranks_through_run_if_worker() {
    let example = cohort_bin().parent().unwrap().join("examples").join("sum_matrix");
    assert!(example.exists(), "{} was not built", example.display());
    let (port, secret) = (free_port(), secret_hex());
    let rank = |rank: usize| {
        let mut cmd = Command::new(&example);
        cmd.env("RANK", rank.to_string())
            .env("WORLD_SIZE", "3")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("COHORT_SECRET", &secret);
        cmd
    };
    let workers: Vec<Watched> = (1..3).map(|r| Watched::spawn(rank(r))).collect();
    let out = rank(0).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Result is: 78");
    for w in workers {
        let (status, stderr) = w.finish(LIMIT);
        assert!(status.success(), "{stderr}");
    }
}

/// The Kubernetes manifest's job name, service, completions and container environment.
struct Manifest {
    job: String,
    subdomain: String,
    service: String,
    completions: usize,
    parallelism: usize,
    env: HashMap<String, String>,
    secret_from_secret: bool,
}

/// Reads the few fields the contract depends on from the manifest (a line scanner: the file keeps a plain layout).
fn manifest() -> Manifest {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/cohort-train.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs: Vec<&str> = text.split("\n---\n").collect();
    let service = docs.iter().find(|d| d.contains("kind: Service")).expect("a Service");
    let job = docs.iter().find(|d| d.contains("kind: Job")).expect("a Job");
    let field = |doc: &str, key: &str| -> String {
        doc.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in the manifest"))
            .split('#')
            .next()
            .unwrap()
            .trim()
            .trim_matches('"')
            .to_string()
    };
    let lines: Vec<&str> = job.lines().map(str::trim).collect();
    let mut env = HashMap::new();
    let mut secret_from_secret = false;
    for (i, l) in lines.iter().enumerate() {
        if let Some(name) = l.strip_prefix("- name: ") {
            match lines.get(i + 1).and_then(|n| n.strip_prefix("value: ")) {
                Some(v) => {
                    env.insert(name.to_string(), v.split('#').next().unwrap().trim().trim_matches('"').to_string());
                }
                None if name == "COHORT_SECRET" => secret_from_secret = lines[i + 1] == "valueFrom:",
                None => {}
            }
        }
    }
    Manifest {
        job: field(job, "name"),
        subdomain: field(job, "subdomain"),
        service: field(service, "name"),
        completions: field(job, "completions").parse().unwrap(),
        parallelism: field(job, "parallelism").parse().unwrap(),
        env,
        secret_from_secret,
    }
}

#[test]
fn the_kubernetes_manifest_fits_the_contract_and_trains_the_local_model() {
    let m = manifest();
    assert_eq!(m.subdomain, m.service, "the pods' subdomain must be the headless Service");
    assert_eq!(m.completions, m.parallelism, "all ranks must run at once");
    assert_eq!(m.env["WORLD_SIZE"], m.completions.to_string());
    assert_eq!(m.env["MASTER_ADDR"], format!("{}-0.{}", m.job, m.service));
    assert!(m.secret_from_secret, "COHORT_SECRET must come from a Secret");
    // Every pod, as Kubernetes starts it: the manifest's variables plus its completion index.
    for index in 0..m.completions {
        let mut vars = m.env.clone();
        vars.insert("JOB_COMPLETION_INDEX".into(), index.to_string());
        let env = detect(&|name| vars.get(name).cloned()).unwrap().unwrap();
        assert_eq!((env.source, env.rank, env.world), (Source::IndexedJob, index, m.completions));
        assert_eq!(env.master.host, m.env["MASTER_ADDR"]);
        assert_eq!(env.master.port.to_string(), m.env["MASTER_PORT"]);
    }
    // And the same pods as processes on loopback (no cluster DNS here, so MASTER_ADDR and MASTER_PORT point at
    // this host): JOB_COMPLETION_INDEX as the only rank variable.
    let secret = secret_hex();
    let (sha, workers) = run_ranks(m.completions, &secret, |rank, cmd| {
        for (k, v) in &m.env {
            if k != "MASTER_ADDR" && k != "MASTER_PORT" {
                cmd.env(k, v);
            }
        }
        cmd.env_remove("RANK").env("JOB_COMPLETION_INDEX", rank.to_string());
    });
    assert_eq!((sha, workers), (local_sha(3), m.completions as u64 - 1));
}

/// Runs the short job as ranks `0..world` with per-rank environments; returns each rank's status and stderr.
fn run_each(world: usize, port: u16, setup: impl Fn(usize, &mut Command)) -> Vec<(std::process::ExitStatus, String)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let secret = secret_hex();
    let procs: Vec<Watched> = (0..world)
        .map(|rank| {
            let mut cmd = rank_command(rank, world, port, &secret, &linear_args(&path));
            cmd.env("COHORT_CONNECT_TIMEOUT", "20");
            setup(rank, &mut cmd);
            Watched::spawn(cmd)
        })
        .collect();
    procs.into_iter().map(|p| p.finish(LIMIT)).collect()
}

#[test]
fn a_rank_with_another_secret_is_refused_and_named() {
    let port = free_port();
    let out = run_each(3, port, |rank, cmd| {
        if rank == 2 {
            cmd.env("COHORT_SECRET", secret_hex());
        }
        if rank == 0 {
            cmd.args(["--connect-timeout", "3"]);
        }
    });
    let (status, stderr) = &out[0];
    assert!(!status.success());
    assert!(stderr.contains("waiting for rank 2 of 3") && stderr.contains("authentication failed"), "{stderr}");
    assert!(stderr.contains("connected: rank 1"), "{stderr}");
    let (status, stderr) = &out[2];
    assert!(
        !status.success() && stderr.contains("refused rank 2 of 3") && stderr.contains("authentication"),
        "{stderr}"
    );
    // Rank 1 was admitted, then its master gave up: it says so and exits.
    let (status, stderr) = &out[1];
    assert!(!status.success() && stderr.contains("went away"), "{stderr}");
    for (_, stderr) in &out {
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn misfit_ranks_fail_the_start_with_both_sides_named() {
    // Two processes claim rank 1.
    let out = run_each(3, free_port(), |rank, cmd| {
        if rank == 2 {
            cmd.env("RANK", "1");
        }
    });
    assert!(!out[0].0.success() && out[0].1.contains("two processes claim rank 1"), "{}", out[0].1);
    // A rank that counts another world size.
    let out = run_each(3, free_port(), |rank, cmd| {
        if rank == 2 {
            cmd.env("WORLD_SIZE", "4");
        }
    });
    assert!(out[0].1.contains("rank 2") && out[0].1.contains("disagree on the world size"), "{}", out[0].1);
    assert!(out[2].1.contains("refused") && out[2].1.contains("world size"), "{}", out[2].1);
}

#[test]
fn misconfigured_environments_fail_at_once_with_the_variable_named() {
    let secret = secret_hex();
    // (environment, flags, what the error must say)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        (vec![("RANK", "1")], vec![], &["RANK=1", "WORLD_SIZE is not"]),
        (vec![("RANK", "3"), ("WORLD_SIZE", "3"), ("MASTER_ADDR", "h")], vec![], &["RANK=3", "not below"]),
        (vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")], vec![], &["COHORT_SECRET", "openssl rand"]),
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("COHORT_SECRET", &secret)],
            vec!["--workers", "local:2"],
            &["rank 0 of 2", "--workers local:2"],
        ),
        (
            vec![("COHORT_SECRET", "xyz"), ("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
            vec![],
            &["COHORT_SECRET", "64 hex"],
        ),
        (vec![], vec!["--workers", "ranks"], &["no launcher variables"]),
        (vec![], vec!["--workers", "slurm"], &["SLURM_JOB_ID", "salloc"]),
        (vec![], vec!["--workers", "slurm:0"], &["between 1 and"]),
    ];
    for (vars, flags, needles) in cases {
        let mut cmd = Command::new(cohort_bin());
        cmd.args(["train", "linear", "--rows", "100", "--iterations", "1"]).args(&flags);
        for v in ["RANK", "WORLD_SIZE", "COHORT_SECRET", "SLURM_JOB_ID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"] {
            cmd.env_remove(v);
        }
        cmd.envs(vars.iter().copied());
        let (status, stderr) = Watched::spawn(cmd).finish(LIMIT);
        assert!(!status.success(), "{vars:?} {flags:?} succeeded");
        for n in needles {
            assert!(stderr.contains(n), "{vars:?} {flags:?}: {stderr:?} lacks {n:?}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_unreachable_master_is_named_with_where_its_address_came_from() {
    let port = free_port();
    let mut cmd = rank_command(1, 2, port, &secret_hex(), &linear_args(std::path::Path::new("/nonexistent")));
    cmd.env("COHORT_CONNECT_TIMEOUT", "1");
    let (status, stderr) = Watched::spawn(cmd).finish(LIMIT);
    assert!(!status.success());
    for needle in [format!("127.0.0.1:{port}"), "within 1.0s".into(), "host from MASTER_ADDR".into(), "refused".into()]
    {
        assert!(stderr.contains(&needle), "{stderr:?} lacks {needle:?}");
    }
}

#[test]
fn a_stranger_on_the_port_does_not_stop_the_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.json");
    let (port, secret) = (free_port(), secret_hex());
    let master = Watched::spawn(rank_command(0, 2, port, &secret, &linear_args(&path)));
    // Something that is not a cohort rank connects first, and says nonsense.
    let deadline = std::time::Instant::now() + LIMIT;
    let stranger = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() > deadline => panic!("rank 0 never listened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    std::io::Write::write_all(&mut &stranger, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let worker = Watched::spawn(rank_command(1, 2, port, &secret, &linear_args(&path)));
    let (status, stderr) = master.finish(LIMIT);
    assert!(status.success(), "{stderr}");
    assert!(worker.finish(LIMIT).0.success());
    assert_eq!(report(&path).0, local_sha(3));
}

/// Starts `world` ranks of an endless job and waits until rank 0 has admitted every worker.
fn endless_ranks(world: usize) -> Vec<Watched> {
    let (port, secret) = (free_port(), secret_hex());
    let mut ranks: Vec<Watched> = (0..world)
        .map(|rank| {
            let mut cmd = rank_command(rank, world, port, &secret, &endless_args());
            cmd.env("COHORT_LOG", "info");
            Watched::spawn(cmd)
        })
        .collect();
    let all = format!("all {} ranks connected", world - 1);
    assert!(ranks[0].wait_for(&all, LIMIT), "rank 0 never admitted every rank:\n{}", ranks[0].seen());
    ranks
}

#[test]
fn a_dead_worker_rank_is_detected_and_the_job_goes_on_with_the_others() {
    let mut ranks = endless_ranks(3);
    let victim = ranks.remove(2);
    signal(victim.child.id(), libc::SIGKILL);
    // The master says what it lost and recovers onto rank 1 (ranks are remote: no respawn, no spare here).
    let reported = ranks[0].wait_for("recovering (loss 1 of at most", LIMIT);
    assert!(reported, "the master did not report the loss:\n{}", ranks[0].seen());
    let seen = ranks[0].seen();
    assert!(seen.contains("(rank 2 on") && seen.contains("died") && seen.contains("connection lost"), "{seen}");
    // Still training: the master ends when told to, and takes the surviving rank with it.
    signal(ranks[0].child.id(), libc::SIGTERM);
    ranks.remove(0).finish(LIMIT);
    ranks.remove(0).finish(LIMIT);
}

#[test]
fn a_dead_master_ends_its_ranks_promptly() {
    let ranks = endless_ranks(3);
    signal(ranks[0].child.id(), libc::SIGKILL);
    for (i, rank) in ranks.into_iter().enumerate().skip(1) {
        // `finish` fails the test if the rank is still running after the limit: no orphan.
        let (status, stderr) = rank.finish(Duration::from_secs(20));
        assert_eq!(status.code(), Some(1), "rank {i}: {stderr}");
        assert!(
            stderr.contains("master") && (stderr.contains("went away") || stderr.contains("lost the connection")),
            "{stderr}"
        );
    }
}

#[test]
fn sigterm_from_the_launcher_is_named_on_the_rank_and_detected_by_the_master() {
    let mut ranks = endless_ranks(2);
    let worker = ranks.remove(1);
    signal(worker.child.id(), libc::SIGTERM);
    let (status, stderr) = worker.finish(LIMIT);
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGTERM), "{stderr}");
    assert!(stderr.contains("rank 1 of 2") && stderr.contains("stopped by SIGTERM"), "{stderr}");
    // The master notices and goes on alone; stop it.
    assert!(ranks[0].wait_for("recovering", LIMIT), "{}", ranks[0].seen());
    let seen = ranks[0].seen();
    assert!(seen.contains("(rank 1 on") && seen.contains("died"), "{seen}");
    signal(ranks[0].child.id(), libc::SIGTERM);
    ranks.remove(0).finish(LIMIT);
}

#[test]
fn bench_launchers_prints_the_matrix_with_one_model() {
    // The Slurm rows are left out (tests/slurm.rs runs them against a real cluster); the MPI rows run where mpirun
    // and mpiexec are installed.
    let out = Command::new(cohort_bin())
        .args(["bench", "launchers", "--repeat", "1", "--rows", "2000", "--iterations", "3"])
        .args(["--skip", "srun,salloc,sbatch"])
        .env_remove("SLURM_CONF")
        .env_remove("COHORT_SECRET")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("every launcher trained the same model"), "{stdout}");
    for row in ["local ", "env contract", "srun", "mpirun"] {
        assert!(stdout.lines().any(|l| l.starts_with(row)), "no {row} row in\n{stdout}");
    }
}
