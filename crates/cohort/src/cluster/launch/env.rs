//! The environment contract: every cluster manager's variables mapped onto one rank/world structure.
//!
//! A launcher starts the same command N times and tells each process who it is through its environment. This module
//! is the only place that knows those variables:
//!
//! | launcher | rank | world | local rank | rank 0's host | port |
//! | --- | --- | --- | --- | --- | --- |
//! | torchrun, Kubeflow/Kubernetes operators | `RANK` | `WORLD_SIZE` | `LOCAL_RANK` | `MASTER_ADDR` | `MASTER_PORT` |
//! | Kubernetes Indexed Job | `JOB_COMPLETION_INDEX` | `WORLD_SIZE` | | `MASTER_ADDR` | `MASTER_PORT` |
//! | Open MPI `mpirun` | `OMPI_COMM_WORLD_RANK` | `OMPI_COMM_WORLD_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` | one node: this host | job id |
//! | MPICH/Hydra `mpiexec` | `PMI_RANK` | `PMI_SIZE` | `MPI_LOCALRANKID` | one node: this host | 29500 |
//! | Slurm `srun` | `SLURM_PROCID` | `SLURM_STEP_NUM_TASKS` | `SLURM_LOCALID` | first of `SLURM_STEP_NODELIST` | job and step id |
//!
//! `MASTER_ADDR` and `MASTER_PORT` override the host and port for every launcher. When launchers nest (an `mpirun`
//! whose daemons `srun` started, torchrun inside an `srun` step), the innermost one describes this process, so the
//! first complete set in the order of the table wins. Within one launcher's set, a half-set variable group, a rank
//! not below the world size, a number that does not parse or two variables that disagree is an error naming them.
//! Slurm counts only inside a job step (`SLURM_STEP_ID` set): a batch script or an `salloc` shell is not a rank.

use std::fmt;

use super::hostlist;
use super::LaunchError;

/// Port rank 0 listens on when nothing else decides it (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;
/// Ports derived from a launcher's job id fall in `DERIVED_PORT_BASE..DERIVED_PORT_BASE + DERIVED_PORT_SPAN`,
/// below Linux's ephemeral range.
pub const DERIVED_PORT_BASE: u16 = 20000;
/// Width of the range of derived ports.
pub const DERIVED_PORT_SPAN: u16 = 10000;

/// Which launcher's variables describe this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `RANK`/`WORLD_SIZE` (torchrun, Kubeflow's PyTorchJob and other Kubernetes operators).
    Torchrun,
    /// `JOB_COMPLETION_INDEX`/`WORLD_SIZE` (a Kubernetes Indexed Job).
    IndexedJob,
    /// `OMPI_COMM_WORLD_*` (Open MPI's `mpirun`).
    OpenMpi,
    /// `PMI_RANK`/`PMI_SIZE` (MPICH's Hydra `mpiexec`, Intel MPI).
    Mpich,
    /// `SLURM_PROCID`/`SLURM_STEP_NUM_TASKS` (a Slurm job step started by `srun`).
    Slurm,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Torchrun => "RANK/WORLD_SIZE",
            Source::IndexedJob => "Kubernetes Indexed Job",
            Source::OpenMpi => "Open MPI",
            Source::Mpich => "MPICH/PMI",
            Source::Slurm => "Slurm",
        })
    }
}

/// Where rank 0 listens, and how that was decided (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterAddr {
    /// Host name or address of rank 0.
    pub host: String,
    /// TCP port rank 0 listens on.
    pub port: u16,
    /// Where the host came from, e.g. `MASTER_ADDR` or `first node of SLURM_STEP_NODELIST`.
    pub host_from: String,
    /// Where the port came from, e.g. `MASTER_PORT` or `derived from Slurm job 12 step 0`.
    pub port_from: String,
}

impl fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// This process's place in a job started by a launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnv {
    /// The launcher whose variables were used.
    pub source: Source,
    /// This process's rank, `0..world`. Rank 0 is the master.
    pub rank: usize,
    /// Number of processes the launcher started.
    pub world: usize,
    /// Rank among the processes on this node, when the launcher says.
    pub local_rank: Option<usize>,
    /// Where rank 0 listens.
    pub master: MasterAddr,
    /// The variables that gave rank and world, as `NAME=value` (for messages).
    pub evidence: Vec<String>,
}

impl RankEnv {
    /// Reads the process environment. `Ok(None)` when no launcher started this process.
    pub fn from_env() -> Result<Option<RankEnv>, LaunchError> {
        detect(&|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    /// `rank 1 of 3 (Slurm: SLURM_PROCID=1, SLURM_STEP_NUM_TASKS=3)`.
    pub fn describe(&self) -> String {
        format!("rank {} of {} ({}: {})", self.rank, self.world, self.source, self.evidence.join(", "))
    }
}

/// One launcher's rank, world and local rank, before the master's address is worked out.
struct Found {
    source: Source,
    rank: usize,
    world: usize,
    local: Option<usize>,
    evidence: Vec<String>,
}

/// Maps the variables `get` returns onto the rank/world contract. `Ok(None)` when no launcher's variables are set.
/// Empty values count as unset.
pub fn detect(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<RankEnv>, LaunchError> {
    let var = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    // Every set is checked, so a half-set group is an error even when another launcher is complete.
    let generic = generic(&var)?;
    let ompi = mpi_family(&var, Source::OpenMpi, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", OMPI_LOCAL)?;
    let mpich = mpi_family(&var, Source::Mpich, "PMI_RANK", "PMI_SIZE", MPICH_LOCAL)?;
    let slurm = slurm(&var)?;
    // `srun --mpi=pmi2` sets PMI_RANK/PMI_SIZE too: when they agree with Slurm's, Slurm's set (which knows the
    // nodes) describes the same step.
    let mpich = mpich.filter(|m| slurm.as_ref().is_none_or(|s| (s.rank, s.world) != (m.rank, m.world)));
    let Some(found) = generic.or(ompi).or(mpich).or(slurm) else {
        if let Some(w) = var("WORLD_SIZE") {
            return Err(LaunchError::Incomplete {
                set: format!("WORLD_SIZE={w}"),
                missing: "RANK (or JOB_COMPLETION_INDEX)".into(),
                hint: "torchrun-style ranks need both; set RANK to this process's rank".into(),
            });
        }
        return Ok(None);
    };
    let master = master_addr(&var, &found)?;
    Ok(Some(RankEnv {
        source: found.source,
        rank: found.rank,
        world: found.world,
        local_rank: found.local,
        master,
        evidence: found.evidence,
    }))
}

/// Local rank and local size variables of an MPI family.
struct LocalVars {
    rank: &'static str,
    size: &'static str,
}

const OMPI_LOCAL: LocalVars = LocalVars { rank: "OMPI_COMM_WORLD_LOCAL_RANK", size: "OMPI_COMM_WORLD_LOCAL_SIZE" };
const MPICH_LOCAL: LocalVars = LocalVars { rank: "MPI_LOCALRANKID", size: "MPI_LOCALNRANKS" };

fn number(name: &str, value: &str) -> Result<usize, LaunchError> {
    value.parse::<usize>().map_err(|_| LaunchError::NotANumber { var: name.into(), value: value.into() })
}

/// Checks `0 ≤ rank < world` and `world ≥ 1`.
fn check_range(rank_var: &str, rank: usize, size_var: &str, world: usize) -> Result<(), LaunchError> {
    if world == 0 {
        return Err(LaunchError::EmptyWorld { var: size_var.into() });
    }
    if rank >= world {
        return Err(LaunchError::RankOutOfRange {
            rank_var: rank_var.into(),
            rank,
            size_var: size_var.into(),
            size: world,
        });
    }
    Ok(())
}

/// Reads an optional local rank and checks it against an optional local size.
fn local_rank(
    var: &dyn Fn(&str) -> Option<String>,
    rank_var: &str,
    size_var: &str,
) -> Result<Option<usize>, LaunchError> {
    let Some(v) = var(rank_var) else { return Ok(None) };
    let local = number(rank_var, &v)?;
    if let Some(s) = var(size_var) {
        let size = number(size_var, &s)?;
        check_range(rank_var, local, size_var, size)?;
    }
    Ok(Some(local))
}

/// `RANK`/`WORLD_SIZE`, or a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX` with `WORLD_SIZE`.
fn generic(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Found>, LaunchError> {
    let rank = var("RANK").map(|v| number("RANK", &v).map(|n| (n, v))).transpose()?;
    let index = var("JOB_COMPLETION_INDEX").map(|v| number("JOB_COMPLETION_INDEX", &v).map(|n| (n, v))).transpose()?;
    let (source, rank_var, rank) = match (rank, index) {
        (None, None) => return Ok(None),
        (Some((r, _)), Some((i, _))) if r != i => {
            return Err(LaunchError::Disagree {
                a: format!("RANK={r}"),
                b: format!("JOB_COMPLETION_INDEX={i}"),
                hint: "set only one of them, or both to the pod's completion index".into(),
            })
        }
        (Some((r, _)), _) => (Source::Torchrun, "RANK", r),
        (None, Some((i, _))) => (Source::IndexedJob, "JOB_COMPLETION_INDEX", i),
    };
    let Some(w) = var("WORLD_SIZE") else {
        return Err(LaunchError::Incomplete {
            set: format!("{rank_var}={rank}"),
            missing: "WORLD_SIZE".into(),
            hint: "set WORLD_SIZE to the number of processes (in an Indexed Job, the Job's completions)".into(),
        });
    };
    let world = number("WORLD_SIZE", &w)?;
    check_range(rank_var, rank, "WORLD_SIZE", world)?;
    let local = local_rank(var, "LOCAL_RANK", "LOCAL_WORLD_SIZE")?;
    let evidence = vec![format!("{rank_var}={rank}"), format!("WORLD_SIZE={world}")];
    Ok(Some(Found { source, rank, world, local, evidence }))
}

/// An MPI launcher's rank and size pair.
fn mpi_family(
    var: &dyn Fn(&str) -> Option<String>,
    source: Source,
    rank_var: &str,
    size_var: &str,
    locals: LocalVars,
) -> Result<Option<Found>, LaunchError> {
    let (rank, size) = match (var(rank_var), var(size_var)) {
        (None, None) => return Ok(None),
        (Some(r), Some(s)) => (number(rank_var, &r)?, number(size_var, &s)?),
        (Some(r), None) => {
            return Err(LaunchError::Incomplete {
                set: format!("{rank_var}={r}"),
                missing: size_var.into(),
                hint: format!("{source} sets both; was the environment copied from another process?"),
            })
        }
        (None, Some(s)) => {
            return Err(LaunchError::Incomplete {
                set: format!("{size_var}={s}"),
                missing: rank_var.into(),
                hint: format!("{source} sets both; was the environment copied from another process?"),
            })
        }
    };
    check_range(rank_var, rank, size_var, size)?;
    let local = local_rank(var, locals.rank, locals.size)?;
    let evidence = vec![format!("{rank_var}={rank}"), format!("{size_var}={size}")];
    Ok(Some(Found { source, rank, world: size, local, evidence }))
}

/// A Slurm job step: `SLURM_PROCID` with the step's task count. Without `SLURM_STEP_ID` this is a batch script or an
/// `salloc` shell, which is not a rank.
fn slurm(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Found>, LaunchError> {
    let Some(p) = var("SLURM_PROCID") else { return Ok(None) };
    if var("SLURM_STEP_ID").or_else(|| var("SLURM_STEPID")).is_none() {
        return Ok(None);
    }
    let rank = number("SLURM_PROCID", &p)?;
    let Some((size_var, s)) =
        ["SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"].iter().find_map(|name| var(name).map(|v| (*name, v)))
    else {
        return Err(LaunchError::Incomplete {
            set: format!("SLURM_PROCID={rank}"),
            missing: "SLURM_STEP_NUM_TASKS (or SLURM_NTASKS)".into(),
            hint: "srun sets both in every task; was the environment copied from another process?".into(),
        });
    };
    let world = number(size_var, &s)?;
    check_range("SLURM_PROCID", rank, size_var, world)?;
    let local = var("SLURM_LOCALID").map(|v| number("SLURM_LOCALID", &v)).transpose()?;
    let evidence = vec![format!("SLURM_PROCID={rank}"), format!("{size_var}={world}")];
    Ok(Some(Found { source: Source::Slurm, rank, world, local, evidence }))
}

/// Where rank 0 listens: `MASTER_ADDR`/`MASTER_PORT`, or what the launcher implies.
fn master_addr(var: &dyn Fn(&str) -> Option<String>, found: &Found) -> Result<MasterAddr, LaunchError> {
    let (host, host_from) = match var("MASTER_ADDR") {
        Some(h) => (h, "MASTER_ADDR".to_string()),
        None => launcher_host(var, found)?,
    };
    let (port, port_from) = match var("MASTER_PORT") {
        Some(p) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| LaunchError::BadPort { var: "MASTER_PORT".into(), value: p.clone() })?;
            (port, "MASTER_PORT".to_string())
        }
        None => launcher_port(var, found.source),
    };
    Ok(MasterAddr { host, port, host_from, port_from })
}

/// Rank 0's host when `MASTER_ADDR` is not set.
fn launcher_host(var: &dyn Fn(&str) -> Option<String>, found: &Found) -> Result<(String, String), LaunchError> {
    let single_node = |size_var: &str| -> Result<Option<(String, String)>, LaunchError> {
        match var(size_var) {
            Some(s) if number(size_var, &s)? == found.world => {
                Ok(Some(("127.0.0.1".into(), format!("all ranks on this node ({size_var}={s})"))))
            }
            _ => Ok(None),
        }
    };
    let missing = |hint: &str| LaunchError::NoMaster { launcher: found.source.to_string(), hint: hint.into() };
    match found.source {
        Source::Torchrun | Source::IndexedJob => Err(missing(
            "set MASTER_ADDR to rank 0's host (torchrun and Kubernetes operators set it; in an Indexed Job use \
             <job-name>-0.<headless-service-name>)",
        )),
        Source::OpenMpi => single_node(OMPI_LOCAL.size)?.ok_or_else(|| {
            missing(
                "the ranks span several nodes; pass rank 0's host with `mpirun -x MASTER_ADDR=<host>` \
                 (with the default mapping, the first host of the hostfile)",
            )
        }),
        Source::Mpich => single_node(MPICH_LOCAL.size)?.ok_or_else(|| {
            missing(
                "the ranks span several nodes; pass rank 0's host with `mpiexec -genv MASTER_ADDR <host>` \
                 (with the default mapping, the first host of the host list)",
            )
        }),
        Source::Slurm => {
            for name in ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"] {
                if let Some(list) = var(name) {
                    let host = hostlist::first(&list).map_err(|reason| LaunchError::BadHostList {
                        var: name.into(),
                        value: list.clone(),
                        reason,
                    })?;
                    return Ok((host, format!("first node of {name}")));
                }
            }
            Err(missing("neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set; set MASTER_ADDR"))
        }
    }
}

/// Rank 0's port when `MASTER_PORT` is not set: derived from the launcher's job id where it has one, so that two
/// jobs on one node do not collide, else [`DEFAULT_PORT`].
fn launcher_port(var: &dyn Fn(&str) -> Option<String>, source: Source) -> (u16, String) {
    let key = match source {
        Source::Slurm => var("SLURM_JOB_ID").or_else(|| var("SLURM_JOBID")).map(|job| {
            let step = var("SLURM_STEP_ID").or_else(|| var("SLURM_STEPID")).unwrap_or_default();
            (format!("slurm:{job}.{step}"), format!("derived from Slurm job {job} step {step}"))
        }),
        Source::OpenMpi => var("OMPI_MCA_ess_base_jobid")
            .or_else(|| var("PMIX_NAMESPACE"))
            .map(|job| (format!("ompi:{job}"), format!("derived from Open MPI job {job}"))),
        _ => None,
    };
    match key {
        Some((key, from)) => (derived_port(&key), format!("{from}; set MASTER_PORT to choose")),
        None => (DEFAULT_PORT, "the default; set MASTER_PORT to choose".into()),
    }
}

/// A port in `DERIVED_PORT_BASE..DERIVED_PORT_BASE + DERIVED_PORT_SPAN` from a job key (FNV-1a).
pub fn derived_port(key: &str) -> u16 {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    DERIVED_PORT_BASE + (hash % u64::from(DERIVED_PORT_SPAN)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn run(vars: &[(&str, &str)]) -> Result<Option<RankEnv>, LaunchError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        detect(&|name| map.get(name).cloned())
    }

    /// What a row expects: source, rank, world, local rank, host, port (`0`: any derived port).
    type Want = (Source, usize, usize, Option<usize>, &'static str, u16);
    /// Some variables, as `(name, value)`.
    type Vars = Vec<(&'static str, &'static str)>;

    /// The environment of task 1 of `srun -n 3` in job 12, as Slurm 22.05 sets it (trimmed).
    const SRUN: &[(&str, &str)] = &[
        ("SLURM_JOB_ID", "12"),
        ("SLURM_JOBID", "12"),
        ("SLURM_STEP_ID", "0"),
        ("SLURM_STEPID", "0"),
        ("SLURM_PROCID", "1"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NTASKS", "3"),
        ("SLURM_NPROCS", "3"),
        ("SLURM_STEP_NUM_TASKS", "3"),
        ("SLURM_JOB_NODELIST", "node[07-08]"),
        ("SLURM_STEP_NODELIST", "node[07-08]"),
        ("SLURM_NODEID", "0"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        extra: &[(&'static str, &'static str)],
    ) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = base.iter().filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)).copied().collect();
        v.extend(extra.iter().filter(|(_, val)| !val.is_empty()).copied());
        v
    }

    #[test]
    fn every_launcher_maps_onto_rank_and_world() {
        let slurm_port = derived_port("slurm:12.0");
        let rows: Vec<(&str, Vars, Want)> = vec![
            ("srun task", SRUN.to_vec(), (Source::Slurm, 1, 3, Some(1), "node07", slurm_port)),
            (
                "srun, step list differs from the job's",
                with(
                    SRUN,
                    &[("SLURM_STEP_NODELIST", "gpu[3-4]"), ("SLURM_STEP_NUM_TASKS", "2"), ("SLURM_NTASKS", "2")],
                ),
                (Source::Slurm, 1, 2, Some(1), "gpu3", slurm_port),
            ),
            (
                "srun, MASTER_ADDR and MASTER_PORT override",
                with(SRUN, &[("MASTER_ADDR", "head"), ("MASTER_PORT", "4000")]),
                (Source::Slurm, 1, 3, Some(1), "head", 4000),
            ),
            (
                "srun --mpi=pmi2 (Slurm and PMI agree)",
                with(SRUN, &[("PMI_RANK", "1"), ("PMI_SIZE", "3")]),
                (Source::Slurm, 1, 3, Some(1), "node07", slurm_port),
            ),
            (
                "Open MPI on one node",
                vec![
                    ("OMPI_COMM_WORLD_RANK", "2"),
                    ("OMPI_COMM_WORLD_SIZE", "3"),
                    ("OMPI_COMM_WORLD_LOCAL_RANK", "2"),
                    ("OMPI_COMM_WORLD_LOCAL_SIZE", "3"),
                    ("OMPI_MCA_ess_base_jobid", "1866137601"),
                ],
                (Source::OpenMpi, 2, 3, Some(2), "127.0.0.1", derived_port("ompi:1866137601")),
            ),
            (
                "Open MPI on two nodes with MASTER_ADDR",
                vec![
                    ("OMPI_COMM_WORLD_RANK", "3"),
                    ("OMPI_COMM_WORLD_SIZE", "4"),
                    ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
                    ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
                    ("MASTER_ADDR", "node1"),
                ],
                (Source::OpenMpi, 3, 4, Some(1), "node1", DEFAULT_PORT),
            ),
            (
                "Open MPI started by srun inside an allocation: the innermost launcher wins",
                with(
                    SRUN,
                    &[
                        ("OMPI_COMM_WORLD_RANK", "0"),
                        ("OMPI_COMM_WORLD_SIZE", "1"),
                        ("OMPI_COMM_WORLD_LOCAL_SIZE", "1"),
                    ],
                ),
                (Source::OpenMpi, 0, 1, None, "", 0),
            ),
            (
                "MPICH/Hydra on one node",
                vec![
                    ("PMI_RANK", "0"),
                    ("PMI_SIZE", "2"),
                    ("MPI_LOCALRANKID", "0"),
                    ("MPI_LOCALNRANKS", "2"),
                    ("PMI_FD", "6"),
                ],
                (Source::Mpich, 0, 2, Some(0), "127.0.0.1", DEFAULT_PORT),
            ),
            (
                "torchrun",
                vec![
                    ("RANK", "1"),
                    ("WORLD_SIZE", "4"),
                    ("LOCAL_RANK", "1"),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "10.1.2.3"),
                    ("MASTER_PORT", "29400"),
                ],
                (Source::Torchrun, 1, 4, Some(1), "10.1.2.3", 29400),
            ),
            (
                "torchrun inside an srun step: RANK wins",
                with(SRUN, &[("RANK", "5"), ("WORLD_SIZE", "6"), ("MASTER_ADDR", "n1"), ("MASTER_PORT", "1234")]),
                (Source::Torchrun, 5, 6, None, "n1", 1234),
            ),
            (
                "Kubernetes Indexed Job",
                vec![
                    ("JOB_COMPLETION_INDEX", "2"),
                    ("WORLD_SIZE", "3"),
                    ("MASTER_ADDR", "cohort-train-0.cohort-train"),
                    ("MASTER_PORT", "29500"),
                ],
                (Source::IndexedJob, 2, 3, None, "cohort-train-0.cohort-train", 29500),
            ),
            (
                "Indexed Job with RANK copied from the index",
                vec![("JOB_COMPLETION_INDEX", "1"), ("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "m")],
                (Source::Torchrun, 1, 2, None, "m", DEFAULT_PORT),
            ),
            (
                "blank values count as unset",
                vec![("RANK", " 0 "), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "h"), ("LOCAL_RANK", "")],
                (Source::Torchrun, 0, 1, None, "h", DEFAULT_PORT),
            ),
        ];
        for (name, vars, (source, rank, world, local, host, port)) in rows {
            let env = run(&vars).unwrap_or_else(|e| panic!("{name}: {e}")).unwrap_or_else(|| panic!("{name}: none"));
            assert_eq!((env.source, env.rank, env.world, env.local_rank), (source, rank, world, local), "{name}");
            if !host.is_empty() {
                assert_eq!(env.master.host, host, "{name}");
            }
            if port != 0 {
                assert_eq!(env.master.port, port, "{name}");
            }
            assert!(env.describe().contains(&format!("rank {rank} of {world}")), "{name}");
        }
    }

    #[test]
    fn no_launcher_is_none() {
        for (name, vars) in [
            ("nothing", vec![]),
            ("an sbatch script (no step)", vec![("SLURM_JOB_ID", "3"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "3")]),
            ("an salloc shell", vec![("SLURM_JOB_ID", "4"), ("SLURM_NTASKS", "3"), ("SLURM_JOB_NODELIST", "vm")]),
            ("unrelated MASTER_ADDR", vec![("MASTER_ADDR", "x"), ("MASTER_PORT", "1")]),
        ] {
            assert!(run(&vars).unwrap_or_else(|e| panic!("{name}: {e}")).is_none(), "{name}");
        }
    }

    #[test]
    fn bad_combinations_name_the_variables() {
        let rows: Vec<(&str, Vars, &[&str])> = vec![
            ("RANK without WORLD_SIZE", vec![("RANK", "1")], &["RANK=1", "WORLD_SIZE is not"]),
            ("WORLD_SIZE without RANK", vec![("WORLD_SIZE", "3")], &["WORLD_SIZE=3", "RANK"]),
            (
                "index without WORLD_SIZE",
                vec![("JOB_COMPLETION_INDEX", "0")],
                &["JOB_COMPLETION_INDEX=0", "completions"],
            ),
            (
                "rank = size",
                vec![("RANK", "3"), ("WORLD_SIZE", "3"), ("MASTER_ADDR", "h")],
                &["RANK=3", "not below WORLD_SIZE=3"],
            ),
            ("empty world", vec![("RANK", "0"), ("WORLD_SIZE", "0"), ("MASTER_ADDR", "h")], &["WORLD_SIZE=0"]),
            ("not a number", vec![("RANK", "one"), ("WORLD_SIZE", "3")], &["RANK=\"one\""]),
            ("negative", vec![("RANK", "-1"), ("WORLD_SIZE", "3")], &["RANK=\"-1\""]),
            (
                "RANK and the index disagree",
                vec![("RANK", "1"), ("JOB_COMPLETION_INDEX", "2"), ("WORLD_SIZE", "3")],
                &["RANK=1", "JOB_COMPLETION_INDEX=2", "disagree"],
            ),
            ("no MASTER_ADDR", vec![("RANK", "1"), ("WORLD_SIZE", "2")], &["MASTER_ADDR", "<job-name>-0"]),
            (
                "bad MASTER_PORT",
                vec![("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "70000")],
                &["MASTER_PORT=\"70000\"", "1-65535"],
            ),
            (
                "port zero",
                vec![("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "0")],
                &["MASTER_PORT=\"0\""],
            ),
            (
                "LOCAL_RANK beyond LOCAL_WORLD_SIZE",
                vec![
                    ("RANK", "1"),
                    ("WORLD_SIZE", "4"),
                    ("MASTER_ADDR", "h"),
                    ("LOCAL_RANK", "2"),
                    ("LOCAL_WORLD_SIZE", "2"),
                ],
                &["LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"],
            ),
            (
                "Open MPI rank alone",
                vec![("OMPI_COMM_WORLD_RANK", "0")],
                &["OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE"],
            ),
            ("PMI size alone", vec![("PMI_SIZE", "4")], &["PMI_SIZE=4", "PMI_RANK"]),
            (
                "Open MPI rank beyond size",
                vec![("OMPI_COMM_WORLD_RANK", "4"), ("OMPI_COMM_WORLD_SIZE", "4")],
                &["OMPI_COMM_WORLD_RANK=4", "OMPI_COMM_WORLD_SIZE=4"],
            ),
            (
                "Open MPI across nodes without MASTER_ADDR",
                vec![("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "4"), ("OMPI_COMM_WORLD_LOCAL_SIZE", "2")],
                &["Open MPI", "mpirun -x MASTER_ADDR"],
            ),
            (
                "MPICH across nodes without MASTER_ADDR",
                vec![("PMI_RANK", "1"), ("PMI_SIZE", "4")],
                &["MPICH", "-genv MASTER_ADDR"],
            ),
            (
                "a half-set group is an error even beside a complete one",
                with(SRUN, &[("PMI_RANK", "1")]),
                &["PMI_RANK=1", "PMI_SIZE"],
            ),
            (
                "srun task without a task count",
                vec![("SLURM_PROCID", "0"), ("SLURM_STEP_ID", "0"), ("SLURM_JOB_NODELIST", "vm")],
                &["SLURM_PROCID=0", "SLURM_STEP_NUM_TASKS"],
            ),
            (
                "srun rank beyond the step",
                with(SRUN, &[("SLURM_PROCID", "3")]),
                &["SLURM_PROCID=3", "SLURM_STEP_NUM_TASKS=3"],
            ),
            (
                "garbled node list",
                with(SRUN, &[("SLURM_STEP_NODELIST", "node[07-"), ("SLURM_JOB_NODELIST", "")]),
                &["SLURM_STEP_NODELIST=\"node[07-\"", "unclosed"],
            ),
            (
                "srun without any node list",
                with(SRUN, &[("SLURM_STEP_NODELIST", ""), ("SLURM_JOB_NODELIST", "")]),
                &["SLURM_STEP_NODELIST", "MASTER_ADDR"],
            ),
        ];
        for (name, vars, needles) in rows {
            let err = match run(&vars) {
                Ok(v) => panic!("{name}: accepted as {v:?}"),
                Err(e) => e.to_string(),
            };
            for n in needles {
                assert!(err.contains(n), "{name}: {err:?} lacks {n:?}");
            }
        }
    }

    #[test]
    fn derived_ports_stay_in_their_range_and_differ_between_steps() {
        let ports: Vec<u16> = (0..200).map(|s| derived_port(&format!("slurm:77.{s}"))).collect();
        assert!(ports.iter().all(|p| (DERIVED_PORT_BASE..DERIVED_PORT_BASE + DERIVED_PORT_SPAN).contains(p)));
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert!(distinct.len() > 190, "{} distinct ports of 200", distinct.len());
    }
}
