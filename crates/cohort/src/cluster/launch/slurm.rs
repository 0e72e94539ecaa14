//! Slurm from the master's side: `--workers slurm` inside an allocation runs one `srun` step of worker tasks that
//! connect back to the master, and the master supervises that `srun` as it supervises local processes.
//!
//! ```text
//! master (batch script or salloc shell)                  tasks of the step
//!   listen on a free port
//!   srun --ntasks=N --kill-on-bad-exit=0 --label --input=none --export=ALL <cohort>
//!     env COHORT_ROLE=worker COHORT_CONNECT=<host>:<port> COHORT_SECRET (or COHORT_SECRET_FILE)
//!                                                          SLURM_PROCID → the task's index
//!   admit every task (rank line, HMAC proof)     ◀──       connect, "COHORT-RANK <procid> <ntasks>", handshake
//! ```
//!
//! `srun` dies with the master (`PR_SET_PDEATHSIG`), and each task exits when its connection ends, so a master that
//! dies leaves no step running. A task that dies is a lost connection like any other; the error quotes `srun`'s
//! stderr, which says when Slurm itself ended the step (cancelled, time limit).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{secret, LaunchError, LauncherProcess, CONNECT_ENV};
use crate::cluster::process::WorkerProcess;
use crate::cluster::process::{hostname, ROLE_ENV, SECRET_ENV};
use crate::cluster::spec::MAX_WORKERS_PER_SPEC;
use crate::wire::handshake::Secret;

/// How many workers `--workers slurm...` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlurmRequest {
    /// `slurm`: one worker per task of the allocation (`SLURM_NTASKS`, else one per node).
    PerTask,
    /// `slurm:N`: N workers.
    Tasks(usize),
    /// `slurm?slots=K`: K workers on every node of the allocation.
    PerNode(usize),
}

impl SlurmRequest {
    /// Parses `slurm`, `slurm:N` or `slurm?slots=K`; `Ok(None)` for a spec of another kind.
    pub fn parse(spec: &str) -> Result<Option<SlurmRequest>, LaunchError> {
        let t = spec.trim();
        let Some(rest) = t.strip_prefix("slurm") else { return Ok(None) };
        let bad = |reason: &str| LaunchError::Spec { spec: spec.to_string(), reason: reason.to_string() };
        let count = |n: &str| {
            n.parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_WORKERS_PER_SPEC).contains(n))
                .ok_or_else(|| bad(&format!("{n:?} must be a number of workers between 1 and {MAX_WORKERS_PER_SPEC}")))
        };
        if rest.is_empty() {
            return Ok(Some(SlurmRequest::PerTask));
        }
        if let Some(n) = rest.strip_prefix(':') {
            return count(n).map(|n| Some(SlurmRequest::Tasks(n)));
        }
        if let Some(q) = rest.strip_prefix('?') {
            return match q.split_once('=') {
                Some(("slots", k)) => count(k).map(|k| Some(SlurmRequest::PerNode(k))),
                _ => Err(bad("the only option is slots=K (workers per node), e.g. slurm?slots=4")),
            };
        }
        Err(bad("expected slurm (one worker per task), slurm:N (N workers) or slurm?slots=K (K per node)"))
    }
}

/// A `--workers slurm` master's plan: how many tasks on which nodes, and how to reach it.
#[derive(Debug, Clone)]
pub struct SlurmWorkers {
    /// The allocation's job id.
    pub job_id: String,
    /// Worker tasks to start.
    pub tasks: usize,
    /// `--nodes` and `--ntasks-per-node` for `slurm?slots=K`.
    pub per_node: Option<(usize, usize)>,
    /// The host the tasks connect to (`MASTER_ADDR`, else this host's name).
    pub master_host: String,
    /// The `srun` to run.
    pub srun: PathBuf,
    /// Extra arguments for `srun`, before the program.
    pub srun_args: Vec<String>,
    /// A secret file on a shared file system: the tasks get its path instead of the secret itself.
    pub secret_file: Option<PathBuf>,
    /// How long `srun` may take to start every task and have it connect.
    pub timeout: Duration,
}

impl SlurmWorkers {
    /// Reads the allocation from the environment (`SLURM_JOB_ID`, `SLURM_NTASKS`, `SLURM_JOB_NUM_NODES`).
    pub fn from_env(request: SlurmRequest) -> Result<SlurmWorkers, LaunchError> {
        Self::from_vars(request, &|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// [`from_env`](Self::from_env) with the environment given as a function.
    pub fn from_vars(request: SlurmRequest, get: &dyn Fn(&str) -> Option<String>) -> Result<SlurmWorkers, LaunchError> {
        let var = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let job_id = var("SLURM_JOB_ID").or_else(|| var("SLURM_JOBID")).ok_or(LaunchError::NoAllocation)?;
        let number = |name: &str| -> Result<Option<usize>, LaunchError> {
            var(name)
                .map(|v| {
                    v.parse::<usize>()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or(LaunchError::NotANumber { var: name.into(), value: v })
                })
                .transpose()
        };
        let nodes = match number("SLURM_JOB_NUM_NODES")? {
            Some(n) => n,
            None => number("SLURM_NNODES")?.unwrap_or(1),
        };
        let (tasks, per_node) = match request {
            SlurmRequest::PerTask => match number("SLURM_NTASKS")? {
                Some(n) => (n, None),
                None => (number("SLURM_NPROCS")?.unwrap_or(nodes), None),
            },
            SlurmRequest::Tasks(n) => (n, None),
            SlurmRequest::PerNode(k) => (k * nodes, Some((nodes, k))),
        };
        let master_host = var("MASTER_ADDR").unwrap_or_else(hostname);
        Ok(SlurmWorkers {
            job_id,
            tasks,
            per_node,
            master_host,
            srun: PathBuf::from("srun"),
            srun_args: Vec::new(),
            secret_file: None,
            timeout: super::DEFAULT_RANK_TIMEOUT,
        })
    }

    /// The `srun` command that starts the tasks of `program` and points them at `connect`.
    pub(crate) fn command(&self, program: &Path, connect: &str, secret: &Secret) -> Command {
        let mut cmd = Command::new(&self.srun);
        cmd.arg(format!("--ntasks={}", self.tasks));
        if let Some((nodes, k)) = self.per_node {
            cmd.arg(format!("--nodes={nodes}")).arg(format!("--ntasks-per-node={k}"));
        }
        // The master decides what a lost task means (the runtime may recover); srun must not kill the others.
        cmd.args(["--kill-on-bad-exit=0", "--label", "--input=none", "--export=ALL"]);
        cmd.args(&self.srun_args).arg(program);
        cmd.env(ROLE_ENV, "worker").env(CONNECT_ENV, connect);
        match &self.secret_file {
            Some(path) => cmd.env(secret::SECRET_FILE_ENV, path).env_remove(SECRET_ENV),
            None => cmd.env(SECRET_ENV, secret.to_hex()).env_remove(secret::SECRET_FILE_ENV),
        };
        // A task's rank is its SLURM_PROCID: no other launcher's variables may shadow it.
        for name in [
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "JOB_COMPLETION_INDEX",
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "PMI_RANK",
            "PMI_SIZE",
        ] {
            cmd.env_remove(name);
        }
        cmd
    }

    /// Starts `srun`; its stdout (the tasks' stray prints) and stderr go to the master's stderr as `[slurm] ...`.
    pub(crate) fn spawn(
        &self,
        program: &Path,
        connect: &str,
        secret: &Secret,
        forward: bool,
    ) -> Result<LauncherProcess, LaunchError> {
        let mut cmd = self.command(program, connect, secret);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        crate::cluster::ssh::die_with_parent(&mut cmd);
        let (process, stdout, stdin) =
            WorkerProcess::spawn(cmd, "slurm".into(), forward).map_err(|e| LaunchError::Io {
                what: format!("cannot run {} (is this a Slurm node with srun on PATH?)", self.srun.display()),
                source: e,
            })?;
        drop(stdin);
        std::thread::Builder::new()
            .name("slurm-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if forward {
                        eprintln!("[slurm] {line}");
                    }
                }
            })
            .map_err(|e| LaunchError::Io { what: "starting a thread for srun's output".into(), source: e })?;
        Ok(LauncherProcess { name: "srun", process })
    }
}

/// What `srun`'s last words mean, when they say it.
pub(crate) fn explain(stderr_tail: &[String]) -> Option<String> {
    let any = |needle: &str| stderr_tail.iter().any(|l| l.contains(needle));
    let hint = if any("DUE TO TIME LIMIT") {
        "the Slurm job reached its time limit (sbatch --time)"
    } else if any("CANCELLED") {
        "Slurm cancelled the step or the job (scancel, preemption, or a node failure)"
    } else if any("More processors requested than permitted")
        || any("Requested node configuration is not available")
        || any("Requested nodes are busy")
    {
        "the allocation cannot hold that many tasks: ask for fewer workers (--workers slurm:N), allocate more \
         tasks (sbatch -n), or allow sharing CPUs (--overcommit)"
    } else if any("Unable to create step") {
        "Slurm refused to create the worker step (see srun's message above)"
    } else if any("out-of-memory") || any("oom-kill") || any("OOM") {
        "a task ran out of memory: ask for more (--mem) or use more tasks"
    } else if stderr_tail.iter().any(|l| l.contains(": task ") && (l.contains("Killed") || l.contains("Terminated"))) {
        "a task was killed by a signal"
    } else {
        return None;
    };
    Some(hint.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(v: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn slurm_specs_parse() {
        assert_eq!(SlurmRequest::parse("slurm").unwrap(), Some(SlurmRequest::PerTask));
        assert_eq!(SlurmRequest::parse("slurm:8").unwrap(), Some(SlurmRequest::Tasks(8)));
        assert_eq!(SlurmRequest::parse("slurm?slots=4").unwrap(), Some(SlurmRequest::PerNode(4)));
        assert_eq!(SlurmRequest::parse("local:2").unwrap(), None);
        for (bad, needle) in [
            ("slurm:0", "between 1 and"),
            ("slurm:x", "\"x\""),
            ("slurm?cores=2", "slots=K"),
            ("slurmy", "expected slurm"),
            ("slurm:2?slots=3", "between 1 and"),
        ] {
            let e = SlurmRequest::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn the_allocation_decides_the_task_count() {
        let alloc =
            [("SLURM_JOB_ID", "12"), ("SLURM_NTASKS", "6"), ("SLURM_JOB_NUM_NODES", "2"), ("MASTER_ADDR", "n1")];
        let w = SlurmWorkers::from_vars(SlurmRequest::PerTask, &vars(&alloc)).unwrap();
        assert_eq!((w.job_id.as_str(), w.tasks, w.per_node, w.master_host.as_str()), ("12", 6, None, "n1"));
        let w = SlurmWorkers::from_vars(SlurmRequest::PerNode(3), &vars(&alloc)).unwrap();
        assert_eq!((w.tasks, w.per_node), (6, Some((2, 3))));
        assert_eq!(SlurmWorkers::from_vars(SlurmRequest::Tasks(4), &vars(&alloc)).unwrap().tasks, 4);
        // `salloc -N 2` without -n: one worker per node.
        let w = SlurmWorkers::from_vars(SlurmRequest::PerTask, &vars(&[("SLURM_JOB_ID", "3"), ("SLURM_NNODES", "2")]));
        assert_eq!(w.unwrap().tasks, 2);
        let e = SlurmWorkers::from_vars(SlurmRequest::PerTask, &vars(&[])).unwrap_err().to_string();
        assert!(e.contains("SLURM_JOB_ID") && e.contains("salloc"), "{e}");
        let e = SlurmWorkers::from_vars(SlurmRequest::PerTask, &vars(&[("SLURM_JOB_ID", "1"), ("SLURM_NTASKS", "0")]));
        assert!(e.unwrap_err().to_string().contains("SLURM_NTASKS=\"0\""));
    }

    #[test]
    fn the_srun_command_carries_the_plan_and_never_the_secret_on_its_command_line() {
        let w = SlurmWorkers::from_vars(
            SlurmRequest::PerNode(2),
            &vars(&[("SLURM_JOB_ID", "5"), ("SLURM_JOB_NUM_NODES", "3"), ("MASTER_ADDR", "n0")]),
        )
        .unwrap();
        let secret = Secret::generate();
        let cmd = w.command(Path::new("/opt/cohort"), "n0:4242", &secret);
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args[..3], ["--ntasks=6", "--nodes=3", "--ntasks-per-node=2"]);
        assert!(args.contains(&"--kill-on-bad-exit=0".to_string()) && args.last().unwrap() == "/opt/cohort");
        assert!(!args.iter().any(|a| a.contains(&secret.to_hex())));
        let env: HashMap<String, Option<String>> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_string_lossy().into_owned())))
            .collect();
        assert_eq!(env["COHORT_CONNECT"].as_deref(), Some("n0:4242"));
        assert_eq!(env["COHORT_SECRET"].as_deref(), Some(secret.to_hex().as_str()));
        assert_eq!(env["RANK"], None, "RANK must be removed");
    }

    #[test]
    fn srun_messages_are_explained() {
        let line = |s: &str| vec![s.to_string()];
        let cases = [
            ("slurmstepd: error: *** STEP 7.1 ON vm CANCELLED AT 2025-01-01T00:00:00 ***", "cancelled"),
            ("slurmstepd: error: *** JOB 7 ON vm CANCELLED AT 2025 DUE TO TIME LIMIT ***", "time limit"),
            ("srun: error: Unable to create step for job 7: More processors requested than permitted", "fewer workers"),
            ("srun: error: vm: task 1: Killed", "killed by a signal"),
        ];
        for (text, needle) in cases {
            assert!(explain(&line(text)).unwrap().contains(needle), "{text}");
        }
        assert_eq!(explain(&line("srun: launching")), None);
    }
}
