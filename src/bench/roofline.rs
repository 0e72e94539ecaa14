//! `cohort bench roofline`: how far each model's map is from what this machine can do.
//!
//! First the machine's limits ([`cohort_ml::roofline`]): the rate of fused multiply-adds from registers (the
//! processor's limit, the reference for "% of peak"), the GEMM rate faer reaches on square products in `f32`
//! and `f64`, on one core and on all cores at once, and the memory read bandwidth. Then, for each model's map —
//! the sparse autoencoder's cost and gradient (100 000 and 1 000 patches), softmax regression on Fashion-MNIST, the
//! MLP's full-batch forward/backward, and one epoch of the MLP's model averaging (Adam, batch 64) — its arithmetic
//! (the products' floating-point operations), the bytes it reads, the rate it reaches in this process on one thread
//! and its share of the peak; and, with real worker processes (`local:N`), the time of a whole round and how much
//! of it is framework overhead.
//!
//! **Overhead** is the round time minus the time the same map takes in this process on as many threads as there
//! are workers, each mapping the chunks that worker holds (the same [`assign_chunks`] placement): what is left is
//! sending the parameters, waking the workers, encoding, sending, decoding and reducing the partials. Every figure is
//! the fastest of its repetitions, since on a shared machine other work can only make a run slower; the median
//! round is printed too.
//!
//! Last, the framework alone: rounds of `cohort.zeros`, a job that does nothing but return a partial result of a
//! given size from each of 4 or 64 chunks — what a round costs per round, per chunk and per byte of result.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use cohort::data::loaders::{find_named, Split};
use cohort::data::slicing::{assign_chunks, chunk_count_by_cost, MAX_DEFAULT_CHUNKS};
use cohort::{Cluster, Contribution, Dataset, MapReduce, Multipass, ReplicaContext, WorkerSpec};
use cohort_ml::datasets::{self, Request};
use cohort_ml::mlp::full_batch::{FullBatch, MlpCostGrad};
use cohort_ml::mlp::jobs::{PsgdJob, PsgdLocal, PsgdState, TrainSpec};
use cohort_ml::mlp::optimizer::OptimizerSpec;
use cohort_ml::mlp::Mlp;
use cohort_ml::roofline::{fastest, fma_peak, gemm_peak, memory_bandwidth, Bandwidth, GemmPeak, Precision};
use cohort_ml::sae::{sample_patches, SaeConfig, SaeJob};
use cohort_ml::softmax::{SoftmaxConfig, SoftmaxJob};
use serde::Serialize;

use crate::cli::{defaults, LaunchArgs};
use crate::commands::train::sae_chunks;
use crate::jobs::diag::Zeros;
use crate::patches::{self, PATCH};
use crate::report::human_bytes;

/// Arguments of `cohort bench roofline`.
#[derive(Debug, Args, Clone)]
pub struct RooflineArgs {
    /// Worker counts whose rounds are measured, each with its own `local:N` cluster (default: 1 and one per core).
    #[arg(long)]
    pub workers: Option<String>,
    /// Small data sets and short probes (a few seconds): a smoke test, not a measurement.
    #[arg(long)]
    pub quick: bool,
    /// Timed rounds per map and worker count (default 20; 3 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Also write every figure as JSON here.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Seconds a worker may stay silent before it is declared stalled.
    #[arg(long, default_value_t = 20.0)]
    pub heartbeat_timeout: f64,
}

/// The machine the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model, from `/proc/cpuinfo`.
    pub cpu: String,
    /// Cores available to this process.
    pub cores: usize,
    /// 1-, 5- and 15-minute load averages when the benchmark started.
    pub load_average_start: Option<[f64; 3]>,
    /// The same when it ended.
    pub load_average_end: Option<[f64; 3]>,
}

/// A measured arithmetic rate.
#[derive(Debug, Clone, Serialize)]
pub struct PeakFigure {
    /// `fma` (fused multiply-adds from registers: the processor's limit) or `gemm` (faer on square products).
    pub kind: String,
    /// `f32` or `f64`.
    pub precision: String,
    /// Threads multiplying at once (one product each).
    pub threads: usize,
    /// Side of the square product that reached the rate (0 for `fma`).
    pub size: usize,
    /// GFLOP/s, summed over the threads.
    pub gflops: f64,
}

/// A measured memory read bandwidth.
#[derive(Debug, Clone, Serialize)]
pub struct BandwidthFigure {
    /// Threads reading at once.
    pub threads: usize,
    /// Bytes per thread's buffer.
    pub bytes_per_thread: usize,
    /// GB/s, summed over the threads.
    pub gbytes_per_second: f64,
}

/// One round figure: a map on `workers` worker processes.
#[derive(Debug, Clone, Serialize)]
pub struct RoundFigure {
    /// Worker processes.
    pub workers: usize,
    /// Fastest round, seconds.
    pub round_seconds: f64,
    /// Median round, seconds.
    pub round_median_seconds: f64,
    /// The same map in this process on `workers` threads (fastest), seconds.
    pub in_process_seconds: f64,
    /// `round_seconds − in_process_seconds`.
    pub overhead_seconds: f64,
    /// Overhead over the round time.
    pub overhead_share: f64,
    /// GFLOP/s of the fastest round.
    pub gflops: f64,
    /// Of the peak (the FMA rate where measured, else faer's GEMM rate) of `min(workers, cores)` cores in the map's
    /// precision.
    pub peak_fraction: f64,
}

/// The figures of one model's map.
#[derive(Debug, Clone, Serialize)]
pub struct MapFigure {
    /// What was measured.
    pub name: String,
    /// Rows of data.
    pub rows: usize,
    /// Chunks the rows are cut into.
    pub chunks: usize,
    /// Precision of the products.
    pub precision: String,
    /// Floating-point operations of the products (multiply-adds count two).
    pub flops: f64,
    /// Bytes read from the data set (values and labels) plus the partial results written and read.
    pub bytes: f64,
    /// Fastest time on one thread of this process, all chunks, seconds.
    pub in_process_seconds: f64,
    /// GFLOP/s on one thread.
    pub gflops: f64,
    /// Of one core's peak (the FMA rate where measured, else faer's GEMM rate).
    pub peak_fraction: f64,
    /// What the roofline allows on one core: `min(peak, flops/bytes × bandwidth)`, GFLOP/s.
    pub bound_gflops: f64,
    /// Rounds with worker processes.
    pub rounds: Vec<RoundFigure>,
}

/// A round of a job that does nothing but return a partial result: what the framework costs per round, per chunk
/// and per byte of result.
#[derive(Debug, Clone, Serialize)]
pub struct FrameworkFigure {
    /// Worker processes.
    pub workers: usize,
    /// Chunks (one row each).
    pub chunks: usize,
    /// Bytes of each chunk's partial result.
    pub partial_bytes: usize,
    /// Fastest round, seconds.
    pub round_seconds: f64,
    /// Median round, seconds.
    pub round_median_seconds: f64,
    /// The same in this process on `workers` threads (allocating and adding the partials), seconds.
    pub in_process_seconds: f64,
}

/// Everything `cohort bench roofline` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Roofline {
    /// The machine.
    pub machine: Machine,
    /// Whether this was a `--quick` run (small data, short probes).
    pub quick: bool,
    /// Arithmetic rates: FMA from registers (where the CPU has AVX2 and FMA) and faer GEMM.
    pub peaks: Vec<PeakFigure>,
    /// Memory read bandwidths.
    pub bandwidth: Vec<BandwidthFigure>,
    /// One entry per map.
    pub maps: Vec<MapFigure>,
    /// Rounds of a job that only returns partial results (`cohort.zeros`).
    pub framework: Vec<FrameworkFigure>,
}

/// What the benchmark needs of a model's map.
trait Workload {
    /// Name, precision, rows, chunks, flops and bytes.
    fn shape(&self) -> Shape;
    /// One evaluation in this process on `workers` threads (each mapping one worker's chunks).
    fn in_process(&mut self, workers: usize) -> Result<()>;
    /// Loads the data onto `cluster`, runs `warmup` untimed and `rounds` timed rounds, unloads it.
    fn rounds(&mut self, cluster: &mut Cluster, warmup: usize, rounds: usize) -> Result<Vec<Duration>>;
}

/// The static figures of a workload.
struct Shape {
    name: String,
    precision: Precision,
    rows: usize,
    chunks: usize,
    flops: f64,
    bytes: f64,
}

/// A map-reduce job over a data set: one evaluation is one round.
struct MapWork<J: MapReduce> {
    name: String,
    precision: Precision,
    job: J,
    params: J::Params,
    data: Dataset<J::Elem>,
    flops: f64,
    partial_bytes: f64,
}

impl<J: MapReduce> Workload for MapWork<J>
where
    J::Params: Sync,
    J::Output: Send,
{
    fn shape(&self) -> Shape {
        let elem = std::mem::size_of::<J::Elem>() as f64;
        let labels = self.data.labels().map_or(0, |l| l.len() * 4) as f64;
        Shape {
            name: self.name.clone(),
            precision: self.precision,
            rows: self.data.rows(),
            chunks: self.data.chunks(),
            flops: self.flops,
            bytes: self.data.values().len() as f64 * elem + labels + self.data.chunks() as f64 * self.partial_bytes,
        }
    }

    fn in_process(&mut self, workers: usize) -> Result<()> {
        let (job, params, data) = (&self.job, &self.params, &self.data);
        let map_range = |range: std::ops::Range<usize>| {
            range.map(|c| job.map(params, &data.shard(c))).reduce(|a, b| job.reduce(a, b))
        };
        let ranges = assign_chunks(data.chunks(), workers);
        let parts: Vec<Option<J::Output>> = if workers == 1 {
            vec![map_range(0..data.chunks())]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = ranges.into_iter().map(|r| s.spawn(move || map_range(r))).collect();
                handles.into_iter().map(|h| h.join().expect("map thread panicked")).collect()
            })
        };
        std::hint::black_box(parts.into_iter().flatten().reduce(|a, b| job.reduce(a, b)));
        Ok(())
    }

    fn rounds(&mut self, cluster: &mut Cluster, warmup: usize, rounds: usize) -> Result<Vec<Duration>> {
        let handle = cluster.load(&self.data)?;
        for _ in 0..warmup {
            cluster.run(&self.job, &self.params, &handle)?;
        }
        let mut times = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            std::hint::black_box(cluster.run(&self.job, &self.params, &handle)?);
            times.push(t.elapsed());
        }
        cluster.unload(handle)?;
        Ok(times)
    }
}

/// One epoch of the MLP's model averaging: one multipass pass in which every worker runs Adam over its rows.
struct PsgdWork {
    data: Dataset<f32>,
    state: PsgdState,
    mlp: Mlp,
    /// In-process worker-local states, per worker count (kept across repetitions, as a session keeps them).
    locals: Vec<(usize, Vec<PsgdLocal>)>,
}

impl PsgdWork {
    fn contexts(&self, workers: usize) -> Vec<(ReplicaContext, std::ops::Range<usize>)> {
        let ranges = assign_chunks(self.data.chunks(), workers);
        let holders: Vec<_> = ranges.into_iter().filter(|r| !r.is_empty()).collect();
        let n = holders.len() as u32;
        holders
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let first = self.data.chunk_rows(r.start).start;
                let end = self.data.chunk_rows(r.end - 1).end;
                let ctx = ReplicaContext {
                    replica: i as u32,
                    replicas: n,
                    rows: (end - first) as u64,
                    first_row: first as u64,
                    seed: 42,
                };
                (ctx, r)
            })
            .collect()
    }
}

impl Workload for PsgdWork {
    fn shape(&self) -> Shape {
        let rows = self.data.rows();
        Shape {
            name: format!("mlp {} epoch (Adam, batch 64)", layers_name(self.mlp.layers())),
            precision: Precision::F32,
            rows,
            chunks: self.data.chunks(),
            flops: self.mlp.flops_per_row() * rows as f64,
            bytes: (self.data.values().len() * 4 + rows * 4) as f64,
        }
    }

    fn in_process(&mut self, workers: usize) -> Result<()> {
        let contexts = self.contexts(workers);
        if !self.locals.iter().any(|(w, _)| *w == workers) {
            let locals = contexts.iter().map(|(ctx, _)| PsgdJob.init_local(&self.state, ctx)).collect();
            self.locals.push((workers, locals));
        }
        let (data, state) = (&self.data, &self.state);
        let locals = &mut self.locals.iter_mut().find(|(w, _)| *w == workers).expect("inserted above").1;
        let run = |(ctx, range): &(ReplicaContext, std::ops::Range<usize>), local: &mut PsgdLocal| {
            let shards: Vec<_> = range.clone().map(|c| data.shard(c)).collect();
            Contribution { rows: ctx.rows, partial: PsgdJob.pass(state, local, &shards) }
        };
        let parts: Vec<Contribution<_>> = if contexts.len() == 1 {
            vec![run(&contexts[0], &mut locals[0])]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> =
                    contexts.iter().zip(locals.iter_mut()).map(|(c, l)| s.spawn(move || run(c, l))).collect();
                handles.into_iter().map(|h| h.join().expect("pass thread panicked")).collect()
            })
        };
        let next = PsgdJob.aggregate(&self.state, parts);
        if let Some(e) = next.error {
            bail!("in-process pass failed: {e}");
        }
        Ok(())
    }

    fn rounds(&mut self, cluster: &mut Cluster, warmup: usize, rounds: usize) -> Result<Vec<Duration>> {
        let handle = cluster.load(&self.data)?;
        let session = cluster.open_session(42);
        let mut state = self.state.clone();
        let mut times = Vec::with_capacity(rounds);
        for i in 0..warmup + rounds {
            let t = Instant::now();
            let next = cluster.pass(&PsgdJob, &session, &state, &handle)?;
            if i >= warmup {
                times.push(t.elapsed());
            }
            if let Some(e) = &next.error {
                bail!("pass failed: {e}");
            }
            state.theta = next.theta;
        }
        cluster.close_session(session)?;
        cluster.unload(handle)?;
        Ok(times)
    }
}

fn layers_name(layers: &[usize]) -> String {
    layers.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("-")
}

/// Sizes of the data sets: full, or `--quick`.
struct Sizes {
    sae_large: usize,
    sae_small: usize,
    rows: usize,
    probe: Duration,
    gemm_sizes: &'static [usize],
    bandwidth_bytes: usize,
    inprocess_budget: Duration,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                sae_large: 5_000,
                sae_small: 1_000,
                rows: 2_000,
                probe: Duration::from_millis(20),
                gemm_sizes: &[64, 128],
                bandwidth_bytes: 16 << 20,
                inprocess_budget: Duration::from_millis(50),
            }
        } else {
            Sizes {
                sae_large: 100_000,
                sae_small: 1_000,
                rows: 60_000,
                probe: Duration::from_millis(400),
                gemm_sizes: &[128, 256, 384, 512, 768],
                bandwidth_bytes: 256 << 20,
                inprocess_budget: Duration::from_secs(3),
            }
        }
    }
}

/// The workloads, on Fashion-MNIST when it is installed and on generated data of the same shapes otherwise.
fn workloads(sizes: &Sizes) -> Result<(Vec<Box<dyn Workload>>, String)> {
    let installed = find_named("fashion-mnist").is_ok();
    let source = if installed { "fashion-mnist" } else { "generated" };
    let seed = 42;
    let mut out: Vec<Box<dyn Workload>> = Vec::new();

    let sae = SaeConfig::default();
    let theta = sae.init(seed)?;
    let images = if installed { None } else { Some(datasets::generated(10_000, seed)?) };
    for n in [sizes.sae_large, sizes.sae_small] {
        let values = match &images {
            None => patches::sample(None, Split::Train, n, seed)?.0,
            Some(images) => sample_patches(images.values(), 28, 28, n, PATCH, seed)?,
        };
        let data = Dataset::new(values, PATCH * PATCH)?.with_chunks(sae_chunks(n, &sae, None))?;
        out.push(Box::new(MapWork {
            name: format!("sae 64-25-64, {} patches", thousands(n)),
            // The products run in f32 (cohort_ml::sae, sums over patches in f64), so they are measured against
            // the f32 peak.
            precision: Precision::F32,
            job: SaeJob,
            params: sae.params(&theta)?,
            flops: sae.flops_per_row() * n as f64,
            partial_bytes: sae.n_sums() as f64 * 8.0,
            data,
        }));
    }

    let raw = datasets::prepare(&Request {
        name: source,
        train_rows: Some(sizes.rows),
        test_rows: Some(1),
        seed,
        raw: true,
        ..Request::default()
    })?
    .train;
    let softmax = SoftmaxConfig::new(10, raw.cols(), 1e-4);
    // A point away from zero, so the exponentials see realistic logits.
    let theta: Vec<f64> = (0..softmax.n_params()).map(|i| ((i * 7919) % 2001) as f64 * 1e-5 - 0.01).collect();
    let rows = raw.rows();
    let chunks = chunk_count_by_cost(rows, softmax.flops_per_row(), MAX_DEFAULT_CHUNKS);
    out.push(Box::new(MapWork {
        name: format!("softmax {}×10, {} rows", raw.cols(), thousands(rows)),
        // The products run in f32 (cohort_ml::skinny on f32 data), so they are measured against the f32 peak.
        precision: Precision::F32,
        job: SoftmaxJob,
        params: softmax.params(&theta)?,
        flops: softmax.flops_per_row() * rows as f64,
        partial_bytes: softmax.n_sums() as f64 * 8.0,
        data: raw.with_chunks(chunks)?,
    }));

    let std = datasets::prepare(&Request {
        name: source,
        train_rows: Some(sizes.rows),
        test_rows: Some(1),
        seed,
        raw: false,
        ..Request::default()
    })?
    .train;
    let mlp = Mlp::new(&[std.cols(), 32, 10])?;
    let theta: Vec<f64> = mlp.init(seed).into_iter().map(f64::from).collect();
    let full = FullBatch { mlp: mlp.clone(), lambda: 0.0 };
    let chunks = defaults::LBFGS_CHUNKS.min(std.chunks());
    out.push(Box::new(MapWork {
        name: format!("mlp {} forward+backward, {} rows", layers_name(mlp.layers()), thousands(rows)),
        precision: Precision::F32,
        job: MlpCostGrad,
        params: full.params(&theta)?,
        flops: mlp.flops_per_row() * rows as f64,
        partial_bytes: (1 + mlp.n_params()) as f64 * 8.0,
        data: std.clone().with_chunks(chunks)?,
    }));
    let spec = TrainSpec {
        layers: mlp.layers().to_vec(),
        optimizer: OptimizerSpec::adam(0.005),
        batch: 64,
        steps: 0,
        block_momentum: 0.0,
    };
    out.push(Box::new(PsgdWork { state: PsgdState::new(spec, mlp.init(seed)), mlp, data: std, locals: Vec::new() }));
    Ok((out, source.to_string()))
}

fn thousands(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// The CPU model from `/proc/cpuinfo` (Linux), or "unknown CPU".
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The load averages from `/proc/loadavg` (Linux).
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn parse_workers(text: &str) -> Result<Vec<usize>> {
    let list = text
        .split(',')
        .map(|s| s.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("--workers {text:?}: give positive worker counts such as 1,2"))?;
    if list.is_empty() {
        bail!("--workers needs at least one count");
    }
    Ok(list)
}

/// Runs the benchmark and prints the tables.
pub fn run(args: RooflineArgs) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = parse_workers(&args.workers.clone().unwrap_or_else(|| format!("1,{cores}")))?;
    let rounds = args.rounds.unwrap_or(if args.quick { 3 } else { 20 });
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let warmup = if args.quick { 1 } else { 3 };
    let sizes = Sizes::new(args.quick);
    let machine_start = load_average();
    eprintln!("bench roofline: probing the machine");

    let mut peaks = Vec::new();
    let mut fma = Vec::new();
    for precision in [Precision::F64, Precision::F32] {
        for threads in [1, cores] {
            fma.extend(fma_peak(precision, threads, sizes.probe));
            peaks.push(gemm_peak(precision, sizes.gemm_sizes, threads, sizes.probe)?);
        }
    }
    let bandwidth: Vec<Bandwidth> =
        [1, cores].iter().map(|&t| memory_bandwidth(t, sizes.bandwidth_bytes, sizes.probe * 2)).collect();
    // The processor's limit where measured, else what faer reaches.
    let reference = if fma.is_empty() { &peaks } else { &fma };
    let peak_of = |p: Precision, threads: usize| -> f64 {
        let rate =
            |t: usize| reference.iter().find(|g| g.precision == p && g.threads == t).map_or(f64::NAN, |g| g.flops);
        if threads >= cores {
            rate(cores)
        } else {
            rate(1) * threads as f64
        }
    };

    let (mut work, source) = workloads(&sizes)?;
    // Even placement: the workers hold the chunk ranges the in-process comparison maps (`assign_chunks`), not
    // ranges weighted by measured speed, so the difference between the two is the framework's alone.
    let launch =
        LaunchArgs { heartbeat_timeout: args.heartbeat_timeout, placement: "even".into(), ..LaunchArgs::default() };
    let mut maps = Vec::new();
    for w in &mut work {
        let shape = w.shape();
        eprintln!("bench roofline: {}", shape.name);
        let mut failed = None;
        let single = fastest(sizes.inprocess_budget, 3, || {
            if let Err(e) = w.in_process(1) {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e.context(format!("{} in process", shape.name)));
        }
        let one_core = peak_of(shape.precision, 1);
        let bw = bandwidth.first().map_or(f64::NAN, |b| b.bytes_per_second);
        let mut figure = MapFigure {
            name: shape.name.clone(),
            rows: shape.rows,
            chunks: shape.chunks,
            precision: shape.precision.to_string(),
            flops: shape.flops,
            bytes: shape.bytes,
            in_process_seconds: single.as_secs_f64(),
            gflops: shape.flops / single.as_secs_f64() / 1e9,
            peak_fraction: shape.flops / single.as_secs_f64() / one_core,
            bound_gflops: one_core.min(shape.flops / shape.bytes * bw) / 1e9,
            rounds: Vec::new(),
        };
        for &n in &workers {
            let mut failed = None;
            let parallel = if n == 1 {
                single
            } else {
                fastest(sizes.inprocess_budget, 3, || {
                    if let Err(e) = w.in_process(n) {
                        failed = Some(e);
                    }
                })
            };
            if let Some(e) = failed {
                return Err(e.context(format!("{} in process on {n} threads", shape.name)));
            }
            let mut cluster = crate::launch::builder(vec![WorkerSpec::Local { count: n }], Vec::new(), &launch)?
                .start()
                .with_context(|| format!("starting {n} local workers"))?;
            let mut times = w.rounds(&mut cluster, warmup, rounds)?;
            cluster.shutdown();
            times.sort();
            let best = times[0].as_secs_f64();
            let overhead = best - parallel.as_secs_f64();
            figure.rounds.push(RoundFigure {
                workers: n,
                round_seconds: best,
                round_median_seconds: times[times.len() / 2].as_secs_f64(),
                in_process_seconds: parallel.as_secs_f64(),
                overhead_seconds: overhead,
                overhead_share: overhead / best,
                gflops: shape.flops / best / 1e9,
                peak_fraction: shape.flops / best / peak_of(shape.precision, n),
            });
        }
        maps.push(figure);
    }

    eprintln!("bench roofline: framework rounds");
    let mut framework = Vec::new();
    for &n in &workers {
        let mut cluster = crate::launch::builder(vec![WorkerSpec::Local { count: n }], Vec::new(), &launch)?
            .start()
            .with_context(|| format!("starting {n} local workers"))?;
        for chunks in [4, 64] {
            // A scalar, the sparse autoencoder's partial (4 940 values) and the MLP's (25 451 values).
            for values in [1usize, 4_940, 25_451] {
                let mut w = MapWork {
                    name: String::new(),
                    precision: Precision::F64,
                    job: Zeros,
                    params: values as u64,
                    data: Dataset::new(vec![0.0f64; chunks], 1)?.with_chunks(chunks)?,
                    flops: 0.0,
                    partial_bytes: values as f64 * 8.0,
                };
                let mut failed = None;
                let local = fastest(sizes.inprocess_budget / 10, 3, || {
                    if let Err(e) = w.in_process(n) {
                        failed = Some(e);
                    }
                });
                if let Some(e) = failed {
                    return Err(e);
                }
                let mut times = w.rounds(&mut cluster, warmup, rounds * 5)?;
                times.sort();
                framework.push(FrameworkFigure {
                    workers: n,
                    chunks,
                    partial_bytes: values * 8,
                    round_seconds: times[0].as_secs_f64(),
                    round_median_seconds: times[times.len() / 2].as_secs_f64(),
                    in_process_seconds: local.as_secs_f64(),
                });
            }
        }
        cluster.shutdown();
    }

    let report = Roofline {
        machine: Machine {
            cpu: cpu_model(),
            cores,
            load_average_start: machine_start,
            load_average_end: load_average(),
        },
        quick: args.quick,
        peaks: fma.iter().map(|g| peak_figure("fma", g)).chain(peaks.iter().map(|g| peak_figure("gemm", g))).collect(),
        bandwidth: bandwidth
            .iter()
            .map(|b| BandwidthFigure {
                threads: b.threads,
                bytes_per_thread: b.bytes_per_thread,
                gbytes_per_second: b.bytes_per_second / 1e9,
            })
            .collect(),
        maps,
        framework,
    };
    print!("{}", table(&report, &source, rounds));
    if let Some(path) = &args.json {
        crate::report::write_json(path, &report)?;
        println!("json: {}", path.display());
    }
    Ok(())
}

fn peak_figure(kind: &str, g: &GemmPeak) -> PeakFigure {
    PeakFigure {
        kind: kind.into(),
        precision: g.precision.to_string(),
        threads: g.threads,
        size: g.size,
        gflops: g.flops / 1e9,
    }
}

fn ms(s: f64) -> String {
    if s.abs() >= 1.0 {
        format!("{s:.2} s")
    } else if s.abs() >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.0} µs", s * 1e6)
    }
}

fn load(l: Option<[f64; 3]>) -> String {
    l.map_or_else(|| "unknown".into(), |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
}

/// The printed tables.
pub fn table(r: &Roofline, source: &str, rounds: usize) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(
        out,
        "\nroofline: {} ({} cores); load average {} at the start, {} at the end{}",
        m.cpu,
        m.cores,
        load(m.load_average_start),
        load(m.load_average_end),
        if r.quick { "; --quick: small data, short probes, not a measurement" } else { "" }
    );
    let _ = writeln!(
        out,
        "\nPeak: fused multiply-adds from registers (the processor's limit, the reference for %peak below) and faer \
         GEMM on square products (n = the side that reached it); fastest of the probes"
    );
    for p in &r.peaks {
        let what = if p.kind == "fma" { "FMA ".to_string() } else { format!("GEMM (n = {})", p.size) };
        let _ = writeln!(
            out,
            "  {:<15} {}  {} thread{}  {:>7.1} GFLOP/s",
            what,
            p.precision,
            p.threads,
            if p.threads == 1 { " " } else { "s" },
            p.gflops,
        );
    }
    for b in &r.bandwidth {
        let _ = writeln!(
            out,
            "Memory read bandwidth, {} thread{}: {:.1} GB/s ({} per thread)",
            b.threads,
            if b.threads == 1 { "" } else { "s" },
            b.gbytes_per_second,
            human_bytes(b.bytes_per_thread as u64)
        );
    }
    let _ = writeln!(out, "\nMaps in this process, one thread, all chunks (data: {source})");
    let _ = writeln!(
        out,
        "{:<38} {:>6} {:>4} {:>8} {:>9} {:>7} {:>10} {:>8} {:>6} {:>8}",
        "map", "chunks", "prec", "GFLOP", "bytes", "flop/B", "time", "GFLOP/s", "%peak", "bound"
    );
    for f in &r.maps {
        let _ = writeln!(
            out,
            "{:<38} {:>6} {:>4} {:>8.3} {:>9} {:>7.1} {:>10} {:>8.1} {:>5.0}% {:>8.1}",
            f.name,
            f.chunks,
            f.precision,
            f.flops / 1e9,
            human_bytes(f.bytes as u64),
            f.flops / f.bytes,
            ms(f.in_process_seconds),
            f.gflops,
            f.peak_fraction * 100.0,
            f.bound_gflops
        );
    }
    let _ = writeln!(
        out,
        "\nRounds with worker processes (fastest of {rounds}; overhead = round − the same map in this process on as \
         many threads)"
    );
    let _ = writeln!(
        out,
        "{:<38} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>6}",
        "map", "workers", "round", "median", "compute", "overhead", "share", "GFLOP/s", "%peak"
    );
    for f in &r.maps {
        for (i, x) in f.rounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:<38} {:>7} {:>10} {:>10} {:>10} {:>10} {:>7.1}% {:>8.1} {:>5.0}%",
                if i == 0 { f.name.as_str() } else { "" },
                x.workers,
                ms(x.round_seconds),
                ms(x.round_median_seconds),
                ms(x.in_process_seconds),
                ms(x.overhead_seconds),
                x.overhead_share * 100.0,
                x.gflops,
                x.peak_fraction * 100.0
            );
        }
    }
    let _ = writeln!(
        out,
        "\nFramework: rounds of a job that only returns a partial result of the given size per chunk (fastest of \
         {}; in this process = allocating and adding the same partials on as many threads)",
        rounds * 5
    );
    let _ = writeln!(
        out,
        "{:>7} {:>7} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "workers", "chunks", "partial", "round", "median", "in process", "overhead"
    );
    for x in &r.framework {
        let _ = writeln!(
            out,
            "{:>7} {:>7} {:>12} {:>10} {:>10} {:>12} {:>10}",
            x.workers,
            x.chunks,
            human_bytes(x.partial_bytes as u64),
            ms(x.round_seconds),
            ms(x.round_median_seconds),
            ms(x.in_process_seconds),
            ms(x.round_seconds - x.in_process_seconds)
        );
    }
    out
}
