//! `cohort train ...`: training commands and their closing summaries.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::start_cluster;
use crate::cli::LinearArgs;
use crate::jobs::linear::{self, LinearGradient};
use crate::progress::Progress;
use crate::report::{write_json, TrainReport};

/// `cohort train linear`: full-batch gradient descent, one map-reduce round per iteration.
pub fn linear(args: LinearArgs) -> Result<TrainReport> {
    let c = &args.common;
    if args.rows == 0 || args.features == 0 {
        bail!("--rows and --features must be at least 1 (got {} and {})", args.rows, args.features);
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be a positive number, got {}", args.lr);
    }
    let mut data = linear::generate(args.rows, args.features, c.seed)?;
    if let Some(chunks) = c.chunks {
        data = data.with_chunks(chunks)?;
    }

    let started = Instant::now();
    let (mut cluster, worker_spec) = start_cluster(c.workers.as_deref(), &c.launch)?;
    let startup = started.elapsed();
    let handle = cluster.load(&data)?;
    let load = started.elapsed() - startup;

    let mut params = vec![0.0; args.features + 1];
    let mut history = Vec::with_capacity(c.iterations);
    let mut iteration_time = Duration::ZERO;
    let progress = Progress::new("linear", c.iterations);
    for i in 0..c.iterations {
        let t = Instant::now();
        let (loss, grad) = linear::finish(args.rows, cluster.run(&LinearGradient, &params, &handle)?);
        if !loss.is_finite() {
            bail!("the loss diverged to {loss} at iteration {i}; lower --lr (now {})", args.lr);
        }
        for (p, g) in params.iter_mut().zip(&grad) {
            *p -= args.lr * g;
        }
        iteration_time += t.elapsed();
        history.push(loss);
        progress.step(i, &format!("loss {}", fmt_loss(loss)));
    }
    progress.finish();
    let (final_loss, _) = linear::finish(args.rows, cluster.run(&LinearGradient, &params, &handle)?);
    let wall = started.elapsed();
    let stats = cluster.stats();
    cluster.shutdown();

    let report = TrainReport {
        job: "linear".into(),
        worker_spec,
        workers: stats.workers,
        chunks: handle.chunks(),
        rows: args.rows,
        seed: c.seed,
        iterations: c.iterations,
        final_loss,
        loss_history: history,
        wall_seconds: wall.as_secs_f64(),
        startup_seconds: startup.as_secs_f64(),
        load_seconds: load.as_secs_f64(),
        mean_iteration_seconds: iteration_time.as_secs_f64() / c.iterations.max(1) as f64,
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        model_sha256: cohort::sha256_le(&params),
        protocol_version: cohort::wire::PROTOCOL_VERSION,
    };
    println!(
        "linear regression: {} rows × {} features, {} workers ({}), {} chunks",
        args.rows, args.features, report.workers, report.worker_spec, report.chunks
    );
    print_summary(&report);
    if let Some(path) = &c.report {
        write_json(path, &report)?;
        println!("  report            {}", path.display());
    }
    Ok(report)
}

/// Prints the closing summary shared by training commands.
pub fn print_summary(r: &TrainReport) {
    println!("  iterations        {}", r.iterations);
    println!("  final loss        {}", fmt_loss(r.final_loss));
    println!(
        "  wall time         {:.2} s (worker start-up {:.2} s, data load {:.2} s)",
        r.wall_seconds, r.startup_seconds, r.load_seconds
    );
    println!("  mean iteration    {:.2} ms", r.mean_iteration_seconds * 1e3);
    println!("  traffic           {} sent, {} received", human_bytes(r.bytes_sent), human_bytes(r.bytes_received));
    println!("  model sha256      {}", r.model_sha256);
}

/// A loss for humans: fixed-point when moderate, scientific when huge or tiny.
pub fn fmt_loss(loss: f64) -> String {
    if loss != 0.0 && !(1e-4..1e6).contains(&loss.abs()) {
        format!("{loss:.4e}")
    } else {
        format!("{loss:.6}")
    }
}

/// `1234567` → `1.2 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
