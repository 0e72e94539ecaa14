//! `cohort bench faults`: how well jobs survive losing workers. Each scenario (L-BFGS softmax on Fashion-MNIST,
//! model averaging on the MLP) first runs fault-free to get its model hash and time; then, run after run, a thread
//! SIGKILLs or SIGSTOPs a random worker process at a random moment of the run (while data loads, mid-round,
//! between rounds). The table says how many runs completed, how many ended with the fault-free model, how long
//! detection took (from the signal to the master declaring the worker lost), how long until the lost work was whole
//! again, and what the fault cost in wall time. A straggler scenario compares even and speed-weighted placement
//! with one worker slowed down.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cohort::data::loaders::Split;
use cohort::rng::Rng;
use cohort::{Cluster, Dataset, Placement, WorkerSpec};
use cohort_ml::mlp::jobs::TrainSpec;
use cohort_ml::mlp::optimizer::OptimizerSpec;
use cohort_ml::mlp::Mlp;
use cohort_ml::softmax::{SoftmaxConfig, SoftmaxJob};
use cohort_ml::train::{AveragingTrainer, Driver, LbfgsTrainer, Schedule};

use crate::cli::{FaultsArgs, LaunchArgs};

/// A training job the bench runs again and again.
enum Workload {
    Softmax { data: Dataset<f32>, config: SoftmaxConfig, iterations: usize },
    Averaging { data: Dataset<f32>, spec: TrainSpec, theta0: Vec<f32>, epochs: usize, seed: u64 },
}

impl Workload {
    fn name(&self) -> &'static str {
        match self {
            Workload::Softmax { .. } => "softmax L-BFGS",
            Workload::Averaging { .. } => "MLP model avg",
        }
    }

    /// Loads the data and trains; returns the model hash and the time loading took.
    fn train(&self, cluster: &mut Cluster) -> Result<(String, Duration)> {
        let t = Instant::now();
        match self {
            Workload::Softmax { data, config, iterations } => {
                let h = cluster.load(data)?;
                let load = t.elapsed();
                let mut t = LbfgsTrainer::from(*config, config.init()?, *iterations);
                Driver::new().run(&mut t, cluster, &h, |_, _| {})?;
                Ok((cohort::sha256_le(&t.result().context("no iteration was run")?.x), load))
            }
            Workload::Averaging { data, spec, theta0, epochs, seed } => {
                let h = cluster.load(data)?;
                let load = t.elapsed();
                let mut t = AveragingTrainer::new(spec.clone(), theta0.clone(), Schedule::Constant, *epochs, *seed)?;
                Driver::new().run(&mut t, cluster, &h, |_, _| {})?;
                Ok((cohort::sha256_le(t.theta()), load))
            }
        }
    }
}

/// What one run with a fault gave.
struct FaultRun {
    completed: bool,
    identical: bool,
    /// The signal landed before the run ended.
    hit: bool,
    during: Option<&'static str>,
    detection: Option<Duration>,
    recovery: Option<Duration>,
    wall: Duration,
    error: Option<String>,
}

/// Runs `cohort bench faults`.
pub fn run(args: FaultsArgs) -> Result<()> {
    if args.runs == 0 || args.workers < 2 {
        bail!(
            "--runs must be ≥ 1 and --workers ≥ 2 (a worker is lost in every run), got {} and {}",
            args.runs,
            args.workers
        );
    }
    let launch = LaunchArgs { heartbeat_timeout: args.heartbeat_timeout, max_failures: 3, ..LaunchArgs::default() };
    let mut rng = Rng::new(args.seed);
    let mut rows = Vec::new();
    for scenario in args.scenarios.split(',').map(str::trim) {
        let workload = match scenario {
            "softmax" => softmax_workload(&args)?,
            "avg" => averaging_workload(&args)?,
            other => bail!("unknown scenario {other:?}; expected softmax or avg"),
        };
        let (hash, clean_wall, round) = baseline(&workload, &args, &launch)?;
        eprintln!(
            "bench faults: {}: fault-free {:.2} s, model {}",
            workload.name(),
            clean_wall.as_secs_f64(),
            &hash[..16]
        );
        for signal in args.signals.split(',').map(str::trim) {
            let sig = match signal {
                "kill" => libc::SIGKILL,
                "stop" => libc::SIGSTOP,
                other => bail!("unknown signal {other:?}; expected kill or stop"),
            };
            let mut runs = Vec::new();
            for i in 0..args.runs {
                let r = fault_run(&workload, &args, &launch, sig, clean_wall, &hash, &mut rng)?;
                eprintln!(
                    "bench faults: {} {signal} run {}/{}: {}{}",
                    workload.name(),
                    i + 1,
                    args.runs,
                    if r.identical {
                        "identical"
                    } else if r.completed {
                        "DIFFERENT MODEL"
                    } else {
                        "FAILED"
                    },
                    r.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                );
                runs.push(r);
            }
            rows.push((workload.name(), signal, runs, clean_wall, round));
        }
    }
    print_table(&rows, &args);
    if args.straggler > 1.0 {
        straggler(&args, &launch)?;
    }
    Ok(())
}

fn softmax_workload(args: &FaultsArgs) -> Result<Workload> {
    let mut train = crate::launch::named_dataset("fashion-mnist", Split::Train)?;
    if let Some(n) = args.train_rows {
        train = cohort_ml::datasets::head(train, Some(n))?;
    }
    let config = SoftmaxConfig::new(cohort_ml::datasets::classes(&train)?, train.cols(), 1e-4);
    Ok(Workload::Softmax { data: train, config, iterations: args.iterations })
}

fn averaging_workload(args: &FaultsArgs) -> Result<Workload> {
    let data = cohort_ml::datasets::prepare(&cohort_ml::datasets::Request {
        name: "fashion-mnist",
        train_rows: args.train_rows,
        test_rows: Some(1),
        seed: args.seed,
        ..Default::default()
    })?;
    let mlp = Mlp::new(&[data.train.cols(), 32, 10])?;
    let spec = TrainSpec {
        layers: mlp.layers().to_vec(),
        optimizer: OptimizerSpec::adam(0.005),
        batch: 64,
        steps: 0,
        block_momentum: 0.0,
    };
    Ok(Workload::Averaging {
        data: data.train,
        spec,
        theta0: mlp.init(args.seed),
        epochs: args.epochs,
        seed: args.seed,
    })
}

fn cluster(args: &FaultsArgs, launch: &LaunchArgs) -> Result<Cluster> {
    let specs = vec![WorkerSpec::Local { count: args.workers }];
    Ok(crate::launch::builder(specs, Vec::new(), launch)?.forward_stderr(false).start()?)
}

/// Two fault-free runs: the model hash (they must agree), the shorter wall time, and the mean time of a round (a
/// map-reduce round or a pass, data loading excluded).
fn baseline(w: &Workload, args: &FaultsArgs, launch: &LaunchArgs) -> Result<(String, Duration, Duration)> {
    let mut hashes = Vec::new();
    let mut walls = Vec::new();
    let mut round = Duration::MAX;
    for _ in 0..2 {
        let mut c = cluster(args, launch)?;
        let t = Instant::now();
        let (hash, load) = w.train(&mut c)?;
        hashes.push(hash);
        walls.push(t.elapsed());
        let rounds = c.stats().rounds.max(1) as u32;
        round = round.min(t.elapsed().saturating_sub(load) / rounds);
        c.shutdown();
    }
    if hashes[0] != hashes[1] {
        bail!("{}: two fault-free runs gave different models ({} and {})", w.name(), hashes[0], hashes[1]);
    }
    Ok((hashes.remove(0), walls.into_iter().min().unwrap_or_default(), round))
}

/// One run with a fault: a thread signals a random worker after a random delay (unless the run ends first).
fn fault_run(
    w: &Workload,
    args: &FaultsArgs,
    launch: &LaunchArgs,
    sig: i32,
    clean: Duration,
    hash: &str,
    rng: &mut Rng,
) -> Result<FaultRun> {
    let mut c = cluster(args, launch)?;
    let pids: Vec<u32> = c.worker_labels().iter().filter_map(|l| super::pid_in(l)).collect();
    let victim = pids[rng.below(pids.len() as u64) as usize];
    let delay = clean.mul_f64(0.9 * rng.uniform());
    let epoch = c.epoch();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let killer = std::thread::spawn(move || -> Option<Duration> {
        if done_rx.recv_timeout(delay).is_ok() {
            return None; // the run ended first
        }
        // SAFETY: signalling a worker process this cluster started.
        unsafe { libc::kill(victim as i32, sig) };
        Some(epoch.elapsed())
    });
    let t = Instant::now();
    let result = w.train(&mut c);
    let wall = t.elapsed();
    let _ = done_tx.send(());
    let injected = killer.join().unwrap_or(None);
    let failures = c.failures();
    c.shutdown();
    // A stopped worker the master killed is gone; one it never noticed (the run ended first) must not linger.
    // SAFETY: signals to a process we started, which may already have been reaped (then ESRCH).
    unsafe {
        libc::kill(victim as i32, libc::SIGCONT);
        libc::kill(victim as i32, libc::SIGKILL);
    }
    let first = failures.first();
    let detection = match (injected, first) {
        (Some(at), Some(f)) => Some(f.detected.saturating_sub(at)),
        _ => None,
    };
    let recovery = first.and_then(|f| f.recovered.map(|r| r.saturating_sub(f.detected)));
    let (completed, identical, error) = match &result {
        Ok((h, _)) => (true, h == hash, None),
        Err(e) => (false, false, Some(format!("{e:#}"))),
    };
    Ok(FaultRun {
        completed,
        identical,
        hit: injected.is_some(),
        during: first.map(|f| f.during),
        detection,
        recovery,
        wall,
        error,
    })
}

fn stats(xs: &[Duration]) -> String {
    if xs.is_empty() {
        return "-".into();
    }
    let mean = xs.iter().sum::<Duration>() / xs.len() as u32;
    let max = xs.iter().max().copied().unwrap_or_default();
    format!("{} / {}", super::fmt_dur(mean), super::fmt_dur(max))
}

type Row<'a> = (&'a str, &'a str, Vec<FaultRun>, Duration, Duration);

fn print_table(rows: &[Row<'_>], args: &FaultsArgs) {
    println!(
        "\nworker faults: {} local workers, heartbeat timeout {} s; each run signals one random worker at a random moment",
        args.workers, args.heartbeat_timeout
    );
    println!(
        "{:<15} {:<6} {:>5} {:>10} {:>10} {:>24} {:>21} {:>21} {:>21} {:>10}",
        "job",
        "signal",
        "runs",
        "completed",
        "identical",
        "hit (load/round/pass/btw)",
        "detect mean / max",
        "recovery mean / max",
        "overhead mean / max",
        "round"
    );
    for (job, signal, runs, clean, round) in rows {
        let n = runs.len();
        let completed = runs.iter().filter(|r| r.completed).count();
        let identical = runs.iter().filter(|r| r.identical).count();
        let hit: Vec<&FaultRun> = runs.iter().filter(|r| r.hit && r.during.is_some()).collect();
        let phase = |p: &str| hit.iter().filter(|r| r.during == Some(p)).count();
        let phases = format!(
            "{} ({}/{}/{}/{})",
            hit.len(),
            phase("during load"),
            phase("during a round"),
            phase("during a pass"),
            phase("between operations")
        );
        let detect: Vec<Duration> = hit.iter().filter_map(|r| r.detection).collect();
        let recover: Vec<Duration> = hit.iter().filter_map(|r| r.recovery).collect();
        let overhead: Vec<Duration> = hit.iter().map(|r| r.wall.saturating_sub(*clean)).collect();
        println!(
            "{job:<15} {signal:<6} {n:>5} {:>10} {:>10} {phases:>24} {:>21} {:>21} {:>21} {:>10}",
            format!("{completed}/{n}"),
            format!("{identical}/{n}"),
            stats(&detect),
            stats(&recover),
            stats(&overhead),
            super::fmt_dur(*round)
        );
    }
    println!(
        "(hit: runs where the signal landed before the run ended, by what the cluster was doing when it noticed; detect: \
         signal to declared lost; recovery: declared lost to the interrupted operation complete; overhead: wall time \
         beyond the fault-free run; round: fault-free time of one round or pass)"
    );
    let failed: Vec<&String> = rows.iter().flat_map(|r| r.2.iter().filter_map(|x| x.error.as_ref())).collect();
    for e in failed {
        println!("failed run: {e}");
    }
}

/// Even against speed-weighted placement, with one of the workers `--straggler` times slower: the mean round time
/// over the second half of the rounds (weighted placement moves chunks after a few rounds of measurement).
fn straggler(args: &FaultsArgs, launch: &LaunchArgs) -> Result<()> {
    let mut train = crate::launch::named_dataset("fashion-mnist", Split::Train)?;
    if let Some(n) = args.train_rows {
        train = cohort_ml::datasets::head(train, Some(n))?;
    }
    let config = SoftmaxConfig::new(cohort_ml::datasets::classes(&train)?, train.cols(), 1e-4);
    let params = config.params(&config.init()?)?;
    println!(
        "\nstraggler: worker 1 of {} is {}x slower; softmax cost+gradient rounds on {} rows, mean of the last {} of {} rounds",
        args.workers,
        args.straggler,
        train.rows(),
        args.straggler_rounds / 2,
        args.straggler_rounds
    );
    println!("{:<10} {:>12} {:>28}", "placement", "round", "chunks per worker");
    let mut means = Vec::new();
    for (name, placement) in [("even", Placement::Even), ("weighted", Placement::Weighted)] {
        let specs = vec![WorkerSpec::Local { count: args.workers }];
        let mut c = crate::launch::builder(specs, Vec::new(), launch)?
            .placement(placement)
            .straggler(1, args.straggler)
            .forward_stderr(false)
            .start()?;
        let h = c.load(&train)?;
        let mut times = Vec::new();
        for _ in 0..args.straggler_rounds {
            let t = Instant::now();
            c.run(&SoftmaxJob, &params, &h)?;
            times.push(t.elapsed());
        }
        let tail = &times[times.len() / 2..];
        let mean = tail.iter().sum::<Duration>() / tail.len().max(1) as u32;
        let chunks: Vec<String> = c.worker_reports().iter().filter(|w| w.live).map(|w| w.chunks.to_string()).collect();
        println!("{name:<10} {:>12} {:>28}", super::fmt_dur(mean), chunks.join(" / "));
        means.push(mean);
        c.shutdown();
    }
    println!(
        "speed-weighted placement is {:.2}x faster per round than even placement (target ≥ 1.4x)",
        means[0].as_secs_f64() / means[1].as_secs_f64().max(1e-9)
    );
    Ok(())
}
