//! What each command does. `run` dispatches a parsed command line.

pub mod bench;
pub mod bench_launch;
pub mod bench_mlp;
pub mod demo;
pub mod eval;
pub mod lbfgs;
pub mod mlp;
pub mod qjam;
pub mod slurm_script;
pub mod train;

use std::time::Duration;

use anyhow::{Context, Result};
use cohort::data::loaders::{load_fashion_mnist, named::FASHION_MNIST, Split};
use cohort::launch::{self, Launcher, RankEnv, RankWorker, Ranks, SlurmRequest, SlurmWorkers};
use cohort::{Cluster, ClusterBuilder, DataChannel, Dataset, Placement, Registry, WorkerSpec};

use crate::cli::{Cli, Command, LaunchArgs, TrainCommand};

/// Runs a parsed command line.
pub fn run(cli: Cli, registry: &Registry) -> Result<()> {
    // Under a launcher every rank runs this same command line: ranks ≥ 1 serve rank 0 here and never return.
    if let Some((workers, launch_args)) = launch_of(&cli.command) {
        match plan(workers, launch_args)? {
            Plan::Ranks(ranks) if ranks.env.rank > 0 => {
                let worker = RankWorker::new(&ranks.env, ranks.secret, ranks.timeout);
                std::process::exit(worker.serve(registry));
            }
            Plan::Ranks(ranks) => launch::note_termination(format!(
                "cohort {} (the master): stopped by SIGTERM — the launcher ended the job (cancelled, out of time, \
                 or another rank failed)",
                ranks.env.describe()
            )),
            Plan::Slurm(s) => launch::note_termination(format!(
                "cohort (the master of Slurm job {}): stopped by SIGTERM — the job was cancelled, reached its time \
                 limit or was preempted",
                s.job_id
            )),
            Plan::Specs(..) => {}
        }
    }
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Train(TrainCommand::Linear(args)) => train::linear(args).map(|_| ()),
        Command::Train(TrainCommand::Mlp(args)) => mlp::run(args),
        Command::Train(TrainCommand::Sae(args)) => train::sae(args).map(|_| ()),
        Command::Train(TrainCommand::Softmax(args)) => train::softmax(args).map(|_| ()),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::SlurmScript(args) => slurm_script::run(args),
        Command::Worker => cohort::worker::serve_stdio(registry).context("worker mode"),
    }
}

/// `--workers` and the launch flags of a command that starts workers.
pub fn launch_of(command: &Command) -> Option<(Option<&str>, &LaunchArgs)> {
    let common = match command {
        Command::Demo(args) => return Some((args.workers.as_deref(), &args.launch)),
        Command::Train(TrainCommand::Linear(args)) => &args.common,
        Command::Train(TrainCommand::Mlp(args)) => &args.common,
        Command::Train(TrainCommand::Sae(args)) => &args.common,
        Command::Train(TrainCommand::Softmax(args)) => &args.common,
        _ => return None,
    };
    Some((common.workers.as_deref(), &common.launch))
}

/// Where a command's workers come from.
pub enum Plan {
    /// Worker groups this process starts itself (local, ssh), spares, and how to show them.
    Specs(Vec<WorkerSpec>, Vec<WorkerSpec>, String),
    /// This process is one rank of a job that a launcher started N times.
    Ranks(Ranks),
    /// This process is a master inside a Slurm allocation and starts its workers with srun.
    Slurm(SlurmWorkers),
}

/// Decides where the workers come from: `--workers ranks`, `--workers slurm...`, explicit groups, or — with no
/// `--workers` and no `--hostfile` — the ranks of a launcher when its variables say this process is one of two or
/// more, else one local worker per core.
pub fn plan(workers: Option<&str>, launch_args: &LaunchArgs) -> Result<Plan> {
    let workers = workers.map(str::trim);
    let timeout = |default: Duration| -> Result<Duration> {
        match launch_args.connect_timeout {
            Some(secs) => positive_secs("connect-timeout", secs),
            None => Ok(default),
        }
    };
    let ranks = |env: RankEnv| -> Result<Plan> {
        let secret = launch::secret::load(launch_args.secret_file.as_deref())?
            .ok_or_else(|| launch::LaunchError::NoSecret { context: format!("this process, {},", env.describe()) })?;
        let timeout = timeout(launch::timeout_from_env()?)?;
        Ok(Plan::Ranks(Ranks { env, secret, timeout }))
    };
    match workers {
        Some("ranks") => {
            if launch_args.hostfile.is_some() {
                anyhow::bail!("--workers ranks takes its workers from the launcher; drop --hostfile");
            }
            let env = RankEnv::from_env()?.with_context(|| {
                "--workers ranks: no launcher variables found (RANK/WORLD_SIZE, JOB_COMPLETION_INDEX, \
                 OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/PMI_SIZE, or SLURM_PROCID in an srun step); start cohort with \
                 srun, mpirun, mpiexec or a Kubernetes Indexed Job"
            })?;
            if env.world < 2 {
                anyhow::bail!(
                    "--workers ranks needs two or more processes (one master, the rest workers); {}",
                    env.describe()
                );
            }
            ranks(env)
        }
        Some(spec) if SlurmRequest::parse(spec)?.is_some() => {
            let request = SlurmRequest::parse(spec)?.expect("checked above");
            if launch_args.hostfile.is_some() {
                anyhow::bail!("--workers {spec} starts its workers with srun; drop --hostfile");
            }
            let mut s = SlurmWorkers::from_env(request)?;
            s.secret_file = launch_args.secret_file.clone();
            s.timeout = timeout(launch::DEFAULT_RANK_TIMEOUT)?;
            Ok(Plan::Slurm(s))
        }
        explicit => {
            let launcher = RankEnv::from_env();
            if explicit.is_none() && launch_args.hostfile.is_none() {
                let launcher = launcher
                    .context("reading the launcher's variables (to run without them, give --workers local:N)")?;
                if let Some(env) = launcher.filter(|e| e.world >= 2) {
                    return ranks(env);
                }
            } else if let Ok(Some(env)) = launcher.as_ref().map(|e| e.as_ref().filter(|e| e.world >= 2)) {
                anyhow::bail!(
                    "this process is {}, yet {} asks it to start workers of its own; under a launcher drop \
                     --workers (or say --workers ranks) so that the ranks work together, or start one process",
                    env.describe(),
                    explicit.map_or_else(|| "--hostfile".to_string(), |w| format!("--workers {w}"))
                );
            }
            let (specs, spares, shown) = worker_specs(explicit, launch_args)?;
            Ok(Plan::Specs(specs, spares, shown))
        }
    }
}

fn positive_secs(name: &str, v: f64) -> Result<Duration> {
    if v.is_finite() && v > 0.0 {
        Ok(Duration::from_secs_f64(v))
    } else {
        anyhow::bail!("--{name} must be a positive number of seconds, got {v}")
    }
}

/// The default worker spec: one local process per core.
pub fn default_workers() -> String {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    format!("local:{cores}")
}

/// The worker specs from `--workers` and `--hostfile` (default: one local process per core), the spares from
/// `--spares` and the hostfile's `spare` lines, and how to show the workers.
pub fn worker_specs(workers: Option<&str>, launch: &LaunchArgs) -> Result<(Vec<WorkerSpec>, Vec<WorkerSpec>, String)> {
    let mut specs = Vec::new();
    let mut spares = Vec::new();
    let mut shown = Vec::new();
    if let Some(w) = workers {
        specs.extend(WorkerSpec::parse_list(w)?);
        shown.push(w.to_string());
    }
    if let Some(path) = &launch.hostfile {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read hostfile {}", path.display()))?;
        let file = WorkerSpec::parse_hostfile(&text, &path.display().to_string())?;
        specs.extend(file.workers);
        spares.extend(file.spares);
        shown.push(format!("hostfile {}", path.display()));
    }
    if specs.is_empty() {
        let d = default_workers();
        specs = WorkerSpec::parse_list(&d)?;
        shown.push(d);
    }
    if let Some(s) = &launch.spares {
        spares.extend(WorkerSpec::parse_list(s).context("--spares")?);
    }
    Ok((specs, spares, shown.join(" + ")))
}

/// A cluster builder configured from the launch flags.
pub fn builder(specs: Vec<WorkerSpec>, spares: Vec<WorkerSpec>, launch: &LaunchArgs) -> Result<ClusterBuilder> {
    let interval = positive_secs("heartbeat-interval", launch.heartbeat_interval)?;
    let timeout = positive_secs("heartbeat-timeout", launch.heartbeat_timeout)?;
    if timeout < interval * 2 {
        anyhow::bail!(
            "--heartbeat-timeout {} s must be at least twice --heartbeat-interval {} s, or busy workers would be \
             declared lost",
            launch.heartbeat_timeout,
            launch.heartbeat_interval
        );
    }
    let mut b = Cluster::builder()
        .workers(specs)
        .spares(spares)
        .heartbeat_interval(interval)
        .heartbeat_timeout(timeout)
        .connect_timeout(positive_secs("connect-timeout", launch.connect_timeout.unwrap_or(10.0))?)
        .data_channel(launch.data_channel.parse::<DataChannel>().map_err(anyhow::Error::msg)?)
        .max_failures(launch.max_failures)
        .respawn_local(!launch.no_respawn)
        .placement(launch.placement.parse::<Placement>().map_err(|e| anyhow::anyhow!("--placement: {e}"))?);
    if let Some(r) = launch.replicas {
        if r == 0 {
            anyhow::bail!("--replicas must be at least 1");
        }
        b = b.replicas(r);
    }
    for s in &launch.straggler {
        let parsed = s.split_once(':').and_then(|(w, f)| Some((w.parse::<usize>().ok()?, f.parse::<f32>().ok()?)));
        match parsed {
            Some((w, f)) if f.is_finite() && f >= 1.0 => b = b.straggler(w, f),
            _ => anyhow::bail!("--straggler {s:?} must look like WORKER:FACTOR with FACTOR ≥ 1, e.g. 1:3"),
        }
    }
    for opt in &launch.ssh_options {
        let (k, v) = opt
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--ssh-option {opt:?} must look like KEY=VALUE, e.g. IdentityFile=~/.ssh/id"))?;
        b = b.ssh_option(k, v);
    }
    if let Some(bin) = &launch.worker_binary {
        if !bin.is_file() {
            anyhow::bail!("--worker-binary {} is not a file", bin.display());
        }
        b = b.remote_binary(bin);
    }
    Ok(b)
}

/// Starts the cluster the command line asks for (see [`plan`]): local or ssh workers, the other ranks of a
/// launcher's job, or an srun step inside a Slurm allocation.
pub fn start_cluster(workers: Option<&str>, launch: &LaunchArgs) -> Result<(Cluster, String)> {
    // `auto`: start one local worker per core and keep, after the first round, the count predicted fastest.
    let auto = workers.is_some_and(|w| w.trim() == "auto");
    let (builder, shown) = match plan(if auto { None } else { workers }, launch)? {
        Plan::Specs(specs, spares, shown) => {
            let shown = if auto { format!("auto (from {shown})") } else { shown };
            (builder(specs, spares, launch)?.auto_workers(auto), shown)
        }
        Plan::Ranks(ranks) => {
            let l = Launcher::Ranks(ranks);
            let shown = l.describe();
            (builder(Vec::new(), Vec::new(), launch)?.launcher(l), shown)
        }
        Plan::Slurm(s) => {
            let l = Launcher::Slurm(s);
            let shown = l.describe();
            (builder(Vec::new(), Vec::new(), launch)?.launcher(l), shown)
        }
    };
    let cluster = builder.start().with_context(|| format!("starting workers {shown}"))?;
    Ok((cluster, shown))
}

/// Loads a split of a named data set (`fashion-mnist`).
pub fn named_dataset(name: &str, split: Split) -> Result<Dataset<f32>> {
    match name {
        FASHION_MNIST => Ok(load_fashion_mnist(split)?),
        other => anyhow::bail!("unknown data set {other:?}; cohort knows: {FASHION_MNIST}"),
    }
}

/// A cluster started from the training flags with one dataset loaded onto it, and how long each step took.
pub struct Started<T> {
    /// The running cluster.
    pub cluster: Cluster,
    /// The worker spec as shown to the user.
    pub worker_spec: String,
    /// The loaded dataset.
    pub handle: cohort::DatasetHandle<T>,
    /// When starting began (for the wall time).
    pub started: std::time::Instant,
    /// Time to start the workers and finish their handshakes.
    pub startup: Duration,
    /// Time to load the dataset onto them.
    pub load: Duration,
}

/// Starts the workers of `--workers`/`--hostfile` and loads `data` onto them, timing both.
pub fn start_and_load<T: cohort::Element>(c: &crate::cli::CommonArgs, data: &cohort::Dataset<T>) -> Result<Started<T>> {
    let started = std::time::Instant::now();
    let (mut cluster, worker_spec) = start_cluster(c.workers.as_deref(), &c.launch)?;
    let startup = started.elapsed();
    let handle = cluster.load(data)?;
    let load = started.elapsed() - startup;
    Ok(Started { cluster, worker_spec, handle, started, startup, load })
}
