//! Parameter-server runs as the command line and the benchmarks see them: a [`Workload`] is a job, its
//! configuration, its training data and how to evaluate a model, behind one object-safe trait so that a command
//! can pick the model by name; [`run`] trains one through [`cohort::Cluster::train_ps`], evaluating the snapshots
//! it fetches into an accuracy-over-time curve. The training loop itself is the library's.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use cohort::cluster::{PsEvent, PsOptions, PsOutcome};
use cohort::ps::{BlockConfig, Consistency, PsJob};
use cohort::{Cluster, Dataset, DatasetHandle};

/// A model's quality at some parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    /// Mean loss (the objective) on the evaluation rows.
    pub loss: f64,
    /// Fraction classified correctly, for classifiers.
    pub accuracy: Option<f64>,
}

/// A model to train through parameter servers, with its data.
pub trait Workload {
    /// Short name (`softmax`, `mlp`, `sparse`, `linear`).
    fn name(&self) -> &str;
    /// The update rule used when none is given.
    fn default_rule(&self) -> &str;
    /// Training rows.
    fn rows(&self) -> usize;
    /// Length of the parameter vector.
    fn num_params(&self) -> u64;
    /// Whether [`evaluate`](Self::evaluate) gives an accuracy.
    fn classifier(&self) -> bool;
    /// Loads the training data onto the cluster's workers.
    fn load(&mut self, cluster: &mut Cluster) -> Result<()>;
    /// Trains (after [`load`](Self::load)).
    fn train(&self, cluster: &mut Cluster, options: &PsOptions, on: &mut dyn FnMut(PsEvent<'_>)) -> Result<PsOutcome>;
    /// Evaluates parameters on the held-out rows (or the training rows when there are none).
    fn evaluate(&self, params: &[f32]) -> Eval;
    /// Saves trained parameters as a model file (safetensors, the format `cohort eval` opens), with `training` in
    /// its metadata.
    fn save(&self, path: &std::path::Path, params: &[f32], training: serde_json::Value) -> Result<()>;
}

/// How a [`Job`] writes its model file.
pub type Saver = Box<dyn Fn(&std::path::Path, &[f32], serde_json::Value) -> Result<()> + Send + Sync>;

/// The evaluation function of a [`Job`].
pub type Evaluator = Box<dyn Fn(&[f32]) -> Eval + Send + Sync>;

/// A [`Workload`] made of a [`PsJob`], its configuration, its training data and an evaluation function.
pub struct Job<J: PsJob> {
    name: String,
    rule: String,
    job: J,
    config: J::Config,
    train: Dataset<J::Elem>,
    handle: Option<DatasetHandle<J::Elem>>,
    eval: Evaluator,
    classifier: bool,
    saver: Saver,
}

impl<J: PsJob> Job<J> {
    /// A workload called `name` whose default rule is `rule`.
    pub fn new(
        name: &str,
        rule: &str,
        job: J,
        config: J::Config,
        train: Dataset<J::Elem>,
        eval: impl Fn(&[f32]) -> Eval + Send + Sync + 'static,
    ) -> Job<J> {
        let kind = name.to_string();
        let saver: Saver = Box::new(move |path, params, training| {
            let params = cohort_ml::model_file::Params::F32(params.to_vec());
            Ok(cohort_ml::model_file::save(path, &kind, serde_json::Value::Null, training, &params, &[])?)
        });
        Job {
            name: name.into(),
            rule: rule.into(),
            job,
            config,
            train,
            handle: None,
            eval: Box::new(eval),
            classifier: false,
            saver,
        }
    }

    /// Marks the workload a classifier (its evaluation gives an accuracy).
    pub fn classifier(mut self) -> Job<J> {
        self.classifier = true;
        self
    }

    /// Sets how the model file is written (default: the parameters as one `f32` tensor, kind = the name).
    pub fn saver(
        mut self,
        save: impl Fn(&std::path::Path, &[f32], serde_json::Value) -> Result<()> + Send + Sync + 'static,
    ) -> Job<J> {
        self.saver = Box::new(save);
        self
    }
}

impl<J: PsJob> Workload for Job<J> {
    fn name(&self) -> &str {
        &self.name
    }

    fn default_rule(&self) -> &str {
        &self.rule
    }

    fn rows(&self) -> usize {
        self.train.rows()
    }

    fn classifier(&self) -> bool {
        self.classifier
    }

    fn num_params(&self) -> u64 {
        self.job.num_params(&self.config)
    }

    fn load(&mut self, cluster: &mut Cluster) -> Result<()> {
        self.handle = Some(cluster.load(&self.train).with_context(|| format!("loading the {} data", self.name))?);
        Ok(())
    }

    fn train(&self, cluster: &mut Cluster, options: &PsOptions, on: &mut dyn FnMut(PsEvent<'_>)) -> Result<PsOutcome> {
        let handle = self.handle.as_ref().context("the workload's data is not loaded")?;
        Ok(cluster.train_ps(&self.job, &self.config, handle, options, on)?)
    }

    fn evaluate(&self, params: &[f32]) -> Eval {
        (self.eval)(params)
    }

    fn save(&self, path: &std::path::Path, params: &[f32], training: serde_json::Value) -> Result<()> {
        (self.saver)(path, params, training)
    }
}

/// One progress report of a worker, as the run's log keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Seconds since the run started.
    pub seconds: f64,
    /// The worker.
    pub worker: u32,
    /// Clocks it completed.
    pub clock: u64,
    /// Its mean training loss since its previous report.
    pub loss: f64,
}

/// A finished run: the library's outcome, the evaluated snapshots and the final evaluation.
pub struct Run {
    /// What the library returned.
    pub outcome: PsOutcome,
    /// `(seconds since the start, evaluation)` of every snapshot, then of the final model.
    pub curve: Vec<(f64, Eval)>,
    /// The final model's evaluation.
    pub last: Eval,
    /// Every progress report.
    pub reports: Vec<Report>,
}

impl Run {
    /// Seconds until the evaluation first reached `accuracy` (`None`: never).
    pub fn time_to_accuracy(&self, accuracy: f64) -> Option<f64> {
        self.curve.iter().find(|(_, e)| e.accuracy.is_some_and(|a| a >= accuracy)).map(|(t, _)| *t)
    }

    /// Seconds until the evaluated loss first fell to `loss` (`None`: never).
    pub fn time_to_loss(&self, loss: f64) -> Option<f64> {
        self.curve.iter().find(|(_, e)| e.loss <= loss).map(|(t, _)| *t)
    }
}

/// Trains `work` with `options`, evaluating every snapshot the run fetches (`options.eval_every`) and the final
/// model; `on_report` hears every worker report as it comes.
pub fn run(
    cluster: &mut Cluster,
    work: &dyn Workload,
    options: &PsOptions,
    mut on_report: impl FnMut(&Report),
) -> Result<Run> {
    let mut curve = Vec::new();
    let mut reports = Vec::new();
    let outcome = work.train(cluster, options, &mut |e| match e {
        PsEvent::Progress { worker, clock, loss_sum, rows, elapsed, .. } => {
            let r = Report {
                seconds: elapsed.as_secs_f64(),
                worker,
                clock,
                loss: if rows == 0 { f64::NAN } else { loss_sum / rows as f64 },
            };
            on_report(&r);
            reports.push(r);
        }
        PsEvent::Snapshot { elapsed, params } => curve.push((elapsed.as_secs_f64(), work.evaluate(params))),
    })?;
    let last = work.evaluate(&outcome.params);
    curve.push((outcome.wall.as_secs_f64(), last));
    Ok(Run { outcome, curve, last, reports })
}

/// A run's settings as the command line and the benchmarks give them (strings and plain numbers), checked and turned
/// into the library's [`PsOptions`] by [`Settings::options`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// `bsp`, `ssp:S`, `asp:S,W` or `async`.
    pub consistency: String,
    /// The servers' update rule (`None`: the workload's default).
    pub rule: Option<String>,
    /// Mini-batch rows.
    pub batch: usize,
    /// Seed of the initial model and the batch order.
    pub seed: u64,
    /// Servers per key range.
    pub replication: usize,
    /// Model block scheduling, `KEYS,THRESHOLD,PERIOD`.
    pub blocks: Option<String>,
    /// Random slow-down of each clock, up to `1 + jitter` times.
    pub jitter: f32,
    /// Seconds between snapshots of the model.
    pub eval_every: Option<f64>,
    /// Stop when a loss exceeds this many times the first (0: never).
    pub divergence: f64,
}

impl Settings {
    /// The library's options for `clocks` clocks per worker of `work`; every setting checked, with an error naming
    /// the flag.
    pub fn options(&self, work: &dyn Workload, clocks: u64) -> Result<PsOptions> {
        let consistency: Consistency = self
            .consistency
            .parse()
            .map_err(|e| anyhow::anyhow!("--consistency {:?}: {e} (bsp, ssp:S, asp:S,W or async)", self.consistency))?;
        let rule = self.rule.clone().unwrap_or_else(|| work.default_rule().to_string());
        rule.parse::<cohort::ps::RuleSpec>().map_err(|e| anyhow::anyhow!("--rule {rule:?}: {e}"))?;
        if self.replication == 0 {
            bail!("--replication must be at least 1");
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if !(self.jitter.is_finite() && self.jitter >= 0.0) {
            bail!("--jitter must be 0 or more, got {}", self.jitter);
        }
        if !(self.divergence.is_finite() && (self.divergence == 0.0 || self.divergence > 1.0)) {
            bail!("--divergence must be 0 (never stop) or a factor above 1, got {}", self.divergence);
        }
        Ok(PsOptions {
            consistency,
            rule,
            batch: self.batch,
            clocks,
            seed: self.seed,
            replication: self.replication,
            blocks: self.blocks.as_deref().map(parse_blocks).transpose()?,
            jitter: self.jitter,
            progress_every: (clocks / 20).clamp(1, 50),
            eval_every: self.eval_every.map(|s| seconds("eval-every", s)).transpose()?,
            divergence: (self.divergence > 0.0).then_some(self.divergence),
        })
    }
}

/// `--blocks KEYS,THRESHOLD,PERIOD`.
pub fn parse_blocks(s: &str) -> Result<BlockConfig> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || anyhow::anyhow!("--blocks {s:?} must look like KEYS,THRESHOLD,PERIOD, e.g. 1024,0.01,8");
    let [keys, threshold, period] = parts[..] else { return Err(bad()) };
    let (Ok(block), Ok(threshold), Ok(max_period)) = (keys.parse(), threshold.parse(), period.parse()) else {
        return Err(bad());
    };
    Ok(BlockConfig { block, threshold, max_period })
}

/// Clocks per worker for `epochs` passes over `rows` rows by `workers` workers with mini-batches of `batch`.
pub fn clocks_for(epochs: f64, rows: usize, workers: usize, batch: usize) -> u64 {
    let per_worker = rows as f64 / workers.max(1) as f64;
    ((epochs * per_worker / batch.max(1) as f64).ceil() as u64).max(1)
}

/// `--servers`: a count of local server processes (`2`) or worker-style groups (`local:2,ssh://host`).
pub fn server_specs(servers: &str) -> Result<Vec<cohort::WorkerSpec>> {
    match servers.trim().parse::<usize>() {
        Ok(0) => anyhow::bail!("--servers 0: a parameter-server run needs at least one server"),
        Ok(n) => Ok(vec![cohort::WorkerSpec::Local { count: n }]),
        Err(_) => cohort::WorkerSpec::parse_list(servers).with_context(|| {
            format!("--servers {servers:?} must be a count (2) or groups such as local:2 or ssh://host?slots=2")
        }),
    }
}

/// A duration in seconds from the command line, checked.
pub fn seconds(name: &str, secs: f64) -> Result<Duration> {
    if secs.is_finite() && secs > 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        anyhow::bail!("--{name} must be a positive number of seconds, got {secs}")
    }
}
