//! Workers started by the cluster managers people already have: Slurm (`srun`, `sbatch`), MPI launchers (`mpirun`,
//! `mpiexec`), Kubernetes Indexed Jobs and anything that sets torchrun's `RANK`/`WORLD_SIZE`/`MASTER_ADDR`.
//!
//! Two ways in, one path after start-up:
//!
//! - **Ranks** ([`Ranks`]): a launcher starts the same command N times. [`env`](mod@env) maps its variables onto one
//!   rank/world contract; rank 0 is the master and listens on `MASTER_PORT`; every other rank connects to it over
//!   TCP and serves as a worker (`cluster::worker::RankWorker`, reached through
//!   [`run_if_worker`](crate::cluster::worker::run_if_worker)).
//! - **Slurm from the master's side** ([`SlurmWorkers`], `--workers slurm`): a master inside an allocation runs one
//!   `srun` step whose tasks connect back to it the same way, and supervises that `srun`.
//!
//! Either way a connection is admitted only after the HMAC proof of the job secret ([`rank`]), and the admitted
//! connections join the cluster as ordinary workers, so failure detection, determinism and
//! every job work as with local processes. A worker rank exits as soon as its master goes away.

pub mod env;
pub mod hostlist;
pub mod rank;
pub mod secret;
pub mod slurm;

use std::time::{Duration, Instant};

pub use env::{MasterAddr, RankEnv, Source};
pub use slurm::{SlurmRequest, SlurmWorkers};

use super::process::{describe_status, WorkerProcess};
use crate::wire::handshake::Secret;

/// Environment variable telling a worker started by `--workers slurm` where its master listens (`host:port`).
pub const CONNECT_ENV: &str = "COHORT_CONNECT";
/// Environment variable bounding, in seconds, how long a worker rank tries to reach its master (default 60).
pub const CONNECT_TIMEOUT_ENV: &str = "COHORT_CONNECT_TIMEOUT";
/// How long ranks wait for each other by default: launchers start ranks at about the same time, but a Kubernetes
/// pod may wait for its image.
pub const DEFAULT_RANK_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything that can go wrong when starting or joining a job under a launcher. Each message names the variable,
/// host or value at fault and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// One variable of a launcher's group is set without its partner.
    #[error("{set} is set but {missing} is not: {hint}")]
    Incomplete {
        /// The variable that is set, as `NAME=value`.
        set: String,
        /// The variable that is missing.
        missing: String,
        /// How to fix it.
        hint: String,
    },
    /// A rank, size or count that is not a whole number.
    #[error("{var}={value:?} is not a whole number ≥ 0")]
    NotANumber {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// A rank at or above the world size.
    #[error("{rank_var}={rank} is not below {size_var}={size}: ranks run from 0 to {size_var} − 1")]
    RankOutOfRange {
        /// The rank variable.
        rank_var: String,
        /// Its value.
        rank: usize,
        /// The size variable.
        size_var: String,
        /// Its value.
        size: usize,
    },
    /// A world of no processes.
    #[error("{var}=0: a job needs at least one process")]
    EmptyWorld {
        /// The size variable.
        var: String,
    },
    /// Two variables that must agree do not.
    #[error("{a} and {b} disagree: {hint}")]
    Disagree {
        /// One variable, as `NAME=value`.
        a: String,
        /// The other.
        b: String,
        /// How to fix it.
        hint: String,
    },
    /// Nothing says where rank 0 runs.
    #[error("the {launcher} variables do not say where rank 0 listens: {hint}")]
    NoMaster {
        /// The launcher.
        launcher: String,
        /// How to fix it.
        hint: String,
    },
    /// A port variable that is not a port.
    #[error("{var}={value:?} is not a port number (1-65535)")]
    BadPort {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// A Slurm host list that does not parse.
    #[error("{var}={value:?} is not a Slurm host list: {reason}")]
    BadHostList {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Ranks need a shared secret and none was given.
    #[error("{context} needs a job secret shared by every rank: {}", secret::SECRET_HOWTO)]
    NoSecret {
        /// Who needs it, e.g. `rank 1 of 3 (Slurm: ...)`.
        context: String,
    },
    /// A secret that cannot be used.
    #[error("bad job secret in {origin}: {reason}")]
    BadSecret {
        /// `COHORT_SECRET` or the file.
        origin: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Rank 0 (or a `--workers slurm` master) cannot open its port.
    #[error("{what} cannot listen on port {port} ({port_from}): {reason}")]
    Listen {
        /// Who listens.
        what: String,
        /// The port.
        port: u16,
        /// Where the port came from.
        port_from: String,
        /// The operating system's reason and the fix.
        reason: String,
    },
    /// A worker rank cannot connect to rank 0 in time.
    #[error(
        "{what} cannot reach the master (rank 0) at {master} within {after:.1?} ({from}); last error: {last}. Check \
         that rank 0 started, that it listens there, and that no firewall blocks the port"
    )]
    Unreachable {
        /// This rank.
        what: String,
        /// `host:port` tried.
        master: String,
        /// Where host and port came from, e.g. `host from MASTER_ADDR; port from MASTER_PORT`.
        from: String,
        /// The connect timeout.
        after: Duration,
        /// The last connection error.
        last: String,
    },
    /// The master refused this rank after checking its proof.
    #[error("the master at {master} refused {what}: {reason}")]
    Refused {
        /// This rank.
        what: String,
        /// The master's address.
        master: String,
        /// The master's reason.
        reason: String,
    },
    /// Whatever listens at the master's address is not this job's master.
    #[error("{what}: the process at {master} is not this job's master ({detail}); check MASTER_ADDR and MASTER_PORT (another job on the same port?) and that every rank has the same secret")]
    NotOurMaster {
        /// This rank.
        what: String,
        /// The address.
        master: String,
        /// What it did.
        detail: String,
    },
    /// The master's connection ended before it shut the job down.
    #[error("{what}: the master at {master} went away before ending the job ({detail}); it failed or was stopped — see rank 0's output")]
    MasterGone {
        /// This rank.
        what: String,
        /// The master's address.
        master: String,
        /// How the connection ended.
        detail: String,
    },
    /// Not every expected rank connected in time.
    #[error(
        "timed out after {after:.1?} waiting for {missing} to connect to {what}{}{}. Check that every rank started, \
         that MASTER_ADDR and MASTER_PORT lead here, and that all ranks share the secret; --connect-timeout SECS \
         (or {CONNECT_TIMEOUT_ENV}) waits longer",
        if .connected.is_empty() { String::new() } else { format!("; connected: {}", .connected.join(", ")) },
        if .refused.is_empty() { String::new() } else { format!("; refused: {}", .refused.join("; ")) }
    )]
    AdmissionTimeout {
        /// Who waited.
        what: String,
        /// The ranks that never came, e.g. `ranks 2 and 3 of 4`.
        missing: String,
        /// Ranks that did connect.
        connected: Vec<String>,
        /// Connections refused, with reasons.
        refused: Vec<String>,
        /// The timeout.
        after: Duration,
    },
    /// An authenticated rank that does not fit the job: a duplicate, a rank outside the expected range, or another
    /// world size.
    #[error("{0}")]
    Misfit(String),
    /// No Slurm allocation around a master asked for `--workers slurm`.
    #[error(
        "--workers slurm starts workers inside a Slurm allocation, but SLURM_JOB_ID is not set: run cohort inside \
         `salloc -n N ...` or an sbatch script (`cohort slurm-script` writes one)"
    )]
    NoAllocation,
    /// A `--workers slurm...` spec that does not parse.
    #[error("invalid worker spec {spec:?}: {reason}")]
    Spec {
        /// The text.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The launcher process (`srun`) ended before every worker connected.
    #[error("{launcher} {status} before every worker connected{hint}{}", tail(.stderr_tail))]
    LauncherExited {
        /// The launcher, e.g. `srun`.
        launcher: String,
        /// How it ended.
        status: String,
        /// What that means, if known.
        hint: String,
        /// Its last stderr lines.
        stderr_tail: Vec<String>,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn tail(lines: &[String]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str("\n    ");
        s.push_str(l);
    }
    s
}

/// Rank 0 of a job started by a launcher: the rank contract, the shared secret and how long to wait for the others.
#[derive(Debug, Clone)]
pub struct Ranks {
    /// This process's place in the job (rank 0).
    pub env: RankEnv,
    /// The secret every rank proves.
    pub secret: Secret,
    /// How long to wait for every other rank to connect.
    pub timeout: Duration,
}

impl Ranks {
    /// Rank 0's configuration when this process is rank 0 of a launcher's job of two or more processes and a
    /// secret is given in the environment (`COHORT_SECRET` or `COHORT_SECRET_FILE`) — the same condition under
    /// which [`run_if_worker`](crate::cluster::worker::run_if_worker) turns the other ranks into workers.
    /// `Ok(None)` otherwise.
    ///
    /// ```no_run
    /// # use cohort::{Cluster, WorkerSpec};
    /// # fn main() -> Result<(), cohort::Error> {
    /// let builder = match cohort::launch::Ranks::from_env()? {
    ///     Some(ranks) => Cluster::builder().launcher(ranks), // rank 0 under srun, mpirun, Kubernetes...
    ///     None => Cluster::builder().workers(WorkerSpec::parse_list("local:3")?),
    /// };
    /// let cluster = builder.start()?;
    /// # Ok(()) }
    /// ```
    pub fn from_env() -> Result<Option<Ranks>, LaunchError> {
        let get = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        if !secret::in_env(&get) {
            return Ok(None);
        }
        match RankEnv::from_env()? {
            Some(env) if env.world >= 2 && env.rank == 0 => {
                let secret = secret::load(None)?.ok_or_else(|| LaunchError::NoSecret { context: env.describe() })?;
                Ok(Some(Ranks { env, secret, timeout: timeout_from_env()? }))
            }
            _ => Ok(None),
        }
    }
}

/// How a cluster gets workers from a launcher, beside its local and ssh workers.
#[derive(Debug, Clone)]
pub enum Launcher {
    /// This process is rank 0; ranks 1.. connect to it.
    Ranks(Ranks),
    /// This process is a master inside a Slurm allocation and starts its workers with `srun`.
    Slurm(SlurmWorkers),
}

impl From<Ranks> for Launcher {
    fn from(r: Ranks) -> Launcher {
        Launcher::Ranks(r)
    }
}

impl From<SlurmWorkers> for Launcher {
    fn from(s: SlurmWorkers) -> Launcher {
        Launcher::Slurm(s)
    }
}

impl Launcher {
    /// Number of workers this launcher provides.
    pub fn workers(&self) -> usize {
        match self {
            Launcher::Ranks(r) => r.env.world.saturating_sub(1),
            Launcher::Slurm(s) => s.tasks,
        }
    }

    /// The job secret the launcher's workers know, if it dictates one (ranks share one; a secret file).
    pub(crate) fn secret(&self) -> Result<Option<Secret>, LaunchError> {
        match self {
            Launcher::Ranks(r) => Ok(Some(r.secret.clone())),
            Launcher::Slurm(s) => s.secret_file.as_deref().map(secret::read_file).transpose(),
        }
    }

    /// How it shows in reports, e.g. `ranks (Slurm, 3 processes)` or `slurm (3 tasks in job 12)`.
    pub fn describe(&self) -> String {
        match self {
            Launcher::Ranks(r) => format!("ranks ({}, {} processes)", r.env.source, r.env.world),
            Launcher::Slurm(s) => format!("slurm ({} tasks in job {})", s.tasks, s.job_id),
        }
    }
}

/// The connect timeout of a worker rank: `COHORT_CONNECT_TIMEOUT` seconds, or [`DEFAULT_RANK_TIMEOUT`].
pub fn timeout_from_env() -> Result<Duration, LaunchError> {
    match std::env::var(CONNECT_TIMEOUT_ENV) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| LaunchError::NotANumber { var: CONNECT_TIMEOUT_ENV.into(), value: v }),
        _ => Ok(DEFAULT_RANK_TIMEOUT),
    }
}

/// A process that started several workers at once (`srun`): kept by the cluster so that its exit status and
/// stderr explain a lost worker, and stopped after the workers.
pub(crate) struct LauncherProcess {
    name: &'static str,
    process: WorkerProcess,
}

impl LauncherProcess {
    /// Fails if the launcher has already exited.
    pub(crate) fn check_running(&mut self) -> Result<(), LaunchError> {
        match self.process.exit_status(Duration::ZERO) {
            None => Ok(()),
            Some(status) => {
                let stderr_tail = self.process.stderr_tail(Duration::from_millis(500));
                Err(LaunchError::LauncherExited {
                    launcher: self.name.into(),
                    status: describe_status(status),
                    hint: slurm::explain(&stderr_tail).map(|h| format!(" — {h}")).unwrap_or_default(),
                    stderr_tail,
                })
            }
        }
    }

    /// Waits until `deadline` for the launcher to exit by itself (its workers have been shut down); then asks it to
    /// stop with SIGTERM, which `srun` passes on to every task of its step, and kills it if it is still there two
    /// seconds later.
    pub(crate) fn finish(&mut self, deadline: Instant) {
        if self.process.exit_status(deadline.saturating_duration_since(Instant::now())).is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which cannot have been reused: the child is not reaped yet.
        unsafe {
            libc::kill(self.process.pid() as libc::pid_t, libc::SIGTERM);
        }
        self.process.finish(Instant::now() + Duration::from_secs(2));
    }
}

/// Status and stderr tail for a lost worker that has no process of ours: what its launcher says, if there is one.
pub(crate) fn lost_connection(launchers: &mut [LauncherProcess]) -> (String, Vec<String>) {
    let Some(l) = launchers.first_mut() else {
        return (
            "connection lost (its process exited or was killed; the launcher's output says how)".into(),
            Vec::new(),
        );
    };
    let status = match l.process.exit_status(Duration::from_secs(2)) {
        Some(s) => format!("{} {}", l.name, describe_status(s)),
        None => format!("{} is still running", l.name),
    };
    let tail = l.process.stderr_tail(Duration::from_millis(500));
    let hint = slurm::explain(&tail).map(|h| format!(" — {h}")).unwrap_or_default();
    (format!("connection lost; {status}{hint}"), tail)
}
