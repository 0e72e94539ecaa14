//! Starting workers from the launch flags, and running a training stepper through the library's driver with the
//! flags every training command shares ([`fit`]): checkpoints, resume, JSON lines, Ctrl-C, progress.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cohort::data::loaders::{load_fashion_mnist, named::FASHION_MNIST, Split};
use cohort::launch::{self, Launcher, RankEnv, Ranks, SlurmRequest, SlurmWorkers};
use cohort::{Cluster, ClusterBuilder, DataChannel, Dataset, Placement, WorkerSpec};
use cohort_ml::train::{Driver, Outcome, StepRecord, Stepper, Summary};

use crate::cli::{Command, CommonArgs, LaunchArgs, TrainCommand};
use crate::progress::Progress;
use crate::report::{fmt_loss, TrainReport};

/// When this process started (set by `main`), so that a resumed run's `resume_seconds` counts reading the data.
pub static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// `--workers` and the launch flags of a command that starts workers.
pub fn launch_of(command: &Command) -> Option<(Option<&str>, &LaunchArgs)> {
    let common = match command {
        Command::Demo(args) => return Some((args.workers.as_deref(), &args.launch)),
        Command::Train(train) => match train.as_ref() {
            TrainCommand::Linear(args) => &args.common,
            TrainCommand::Mlp(args) => &args.common,
            TrainCommand::Sae(args) => &args.common,
            TrainCommand::Softmax(args) => &args.common,
            TrainCommand::Ps(args) => &args.common,
        },
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
    start_cluster_with_servers(workers, launch, Vec::new())
}

/// [`start_cluster`] with parameter-server processes as well (local or ssh; a launcher's ranks are all workers).
pub fn start_cluster_with_servers(
    workers: Option<&str>,
    launch: &LaunchArgs,
    servers: Vec<WorkerSpec>,
) -> Result<(Cluster, String)> {
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
    let cluster = builder.servers(servers).start().with_context(|| format!("starting workers {shown}"))?;
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
pub fn start_and_load<T: cohort::Element>(c: &CommonArgs, data: &cohort::Dataset<T>) -> Result<Started<T>> {
    let started = std::time::Instant::now();
    let (mut cluster, worker_spec) = start_cluster(c.workers.as_deref(), &c.launch)?;
    let startup = started.elapsed();
    let handle = cluster.load(data)?;
    let load = started.elapsed() - startup;
    Ok(Started { cluster, worker_spec, handle, started, startup, load })
}

/// A training run done by [`fit`], with its figures.
pub struct Fitted {
    /// What the driver reported.
    pub summary: Summary,
    /// Every completed iteration or epoch of this process.
    pub records: Vec<StepRecord>,
    /// The worker spec as shown.
    pub worker_spec: String,
    /// Traffic and workers.
    pub stats: cohort::Stats,
    /// Chunks of the data set.
    pub chunks: usize,
    /// Worker start-up, data load and the whole run.
    pub startup: Duration,
    /// Time to load the data.
    pub load: Duration,
    /// Time from the start of the process to the end of the data load (reading the data, starting workers).
    pub before: Duration,
    /// Wall time of the run.
    pub wall: Duration,
    /// Workers lost during the run.
    pub failures: Vec<cohort::FailureRecord>,
    /// What each worker held and did.
    pub workers: Vec<cohort::WorkerReport>,
    /// What `--workers auto` chose.
    pub auto: Option<cohort::cluster::AutoChoice>,
}

impl Fitted {
    /// The fields every training report has; the caller fills in the rest.
    pub fn report(&self, job: &str, c: &CommonArgs, rows: usize, loss: Vec<f64>, model_sha256: String) -> TrainReport {
        let s = &self.summary;
        let here = s.completed - s.resumed_at.unwrap_or(0);
        let checkpoints = s.checkpoints;
        TrainReport {
            job: job.into(),
            worker_spec: self.worker_spec.clone(),
            workers: self.stats.workers,
            chunks: self.chunks,
            rows,
            seed: c.seed,
            iterations: s.completed,
            final_loss: loss.last().copied().unwrap_or(f64::NAN),
            loss_history: loss,
            wall_seconds: self.wall.as_secs_f64(),
            startup_seconds: self.startup.as_secs_f64(),
            load_seconds: self.load.as_secs_f64(),
            mean_iteration_seconds: s.train_seconds / here.max(1) as f64,
            bytes_sent: self.stats.bytes_sent,
            bytes_received: self.stats.bytes_received,
            model_sha256,
            protocol_version: cohort::wire::PROTOCOL_VERSION,
            evaluations: None,
            mean_evaluation_seconds: None,
            stop_reason: match &s.outcome {
                Outcome::Finished(why) => Some(why.clone()),
                Outcome::Interrupted => None,
            },
            train_accuracy: None,
            test_accuracy: None,
            resumed_at: s.resumed_at,
            resume_seconds: s.resumed_at.map(|_| self.before.as_secs_f64() + s.restore_seconds),
            checkpoints_written: checkpoints.map(|c| c.written),
            checkpoint_seconds: checkpoints.map(|c| c.blocking.as_secs_f64()),
            final_checkpoint_seconds: checkpoints.map(|_| s.final_save_seconds),
            checkpoint_share: s.checkpoint_share(),
            failures: self.failures.iter().map(Into::into).collect(),
            worker_reports: self.workers.iter().map(Into::into).collect(),
            auto_workers: self.auto.as_ref().map(Into::into),
        }
    }
}

/// Starts the workers, loads `data`, runs `stepper` through the driver the common flags configure (checkpoint,
/// resume, JSON lines, Ctrl-C) with a progress display over `total` iterations or epochs, and stops the workers.
pub fn fit<S: Stepper>(
    c: &CommonArgs,
    data: &Dataset<S::Elem>,
    stepper: &mut S,
    label: &str,
    total: usize,
    mut observer: impl FnMut(&S, &mut StepRecord),
) -> Result<Fitted> {
    if c.checkpoint_every > 0 && c.checkpoint.is_none() && c.resume.is_none() {
        bail!("--checkpoint-every needs --checkpoint DIR (or --resume DIR)");
    }
    let Started { mut cluster, worker_spec, handle, started, startup, load } = start_and_load(c, data)?;
    let mut driver = Driver::new().stop_on(crate::signals::interrupt_flag());
    let dir = c.checkpoint.as_ref().or(c.resume.as_ref());
    if let Some(dir) = dir {
        driver = driver.checkpoint(dir, c.checkpoint_every);
    }
    if let Some(from) = &c.resume {
        driver = driver.resume(from);
    }
    if let Some(path) = &c.log_jsonl {
        driver = driver.log_jsonl(path);
    }
    let progress = Progress::new(label, total);
    let mut records = Vec::new();
    let result = driver.run(stepper, &mut cluster, &handle, |s, r| {
        observer(s, r);
        progress.step(r.step.saturating_sub(1), &format!("loss {}", fmt_loss(r.loss)));
        records.push(r.clone());
    });
    progress.finish();
    let wall = started.elapsed();
    let stats = cluster.stats();
    let (failures, workers, auto) = (cluster.failures(), cluster.worker_reports(), cluster.auto_choice().cloned());
    cluster.shutdown();
    let summary = result.map_err(|e| {
        let kept = match dir {
            Some(d) => format!(
                "the checkpoint in {} holds the last completed {}: continue with --resume {}",
                d.display(),
                stepper.unit(),
                d.display()
            ),
            None => format!("give --checkpoint DIR to keep the last completed {} when a run fails", stepper.unit()),
        };
        anyhow::Error::from(e).context(format!("training stopped; {kept}"))
    })?;
    if summary.outcome == Outcome::Interrupted {
        let (n, unit) = (summary.completed, stepper.unit());
        match dir {
            Some(d) => bail!(
                "interrupted after {n} {unit}s; the checkpoint in {} continues the run: give the same command with \
                 --resume {}",
                d.display(),
                d.display()
            ),
            None => {
                bail!("interrupted after {n} {unit}s; nothing was saved (give --checkpoint DIR to be able to resume)")
            }
        }
    }
    let chunks = handle.chunks();
    let before = PROCESS_START.get().map_or(startup + load, |t| (started - *t) + startup + load);
    Ok(Fitted { summary, records, worker_spec, stats, chunks, startup, load, before, wall, failures, workers, auto })
}
