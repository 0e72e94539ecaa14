//! `cohort bench ...`: benchmark programs that print tables (dispatched here; the MLP, qjam and resume benchmarks
//! in their own modules). Nothing here asserts on time; the figures are for people.

pub mod consistency;
pub mod faults;
pub mod launchers;
pub mod mlp;
pub mod qjam;
pub mod resume;
pub mod roofline;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cohort::job::Noop;
use cohort::{Dataset, WorkerSpec};

use crate::cli::{BenchCommand, BootstrapArgs, LaunchArgs, OverheadArgs};

/// Dispatches `cohort bench`.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Overhead(args) => overhead(args),
        BenchCommand::Bootstrap(args) => bootstrap(args),
        BenchCommand::Psgd(args) => mlp::psgd(args),
        BenchCommand::Sweep(args) => mlp::sweep(args),
        BenchCommand::Qjam(args) => qjam::run(args),
        BenchCommand::Resume(args) => resume::run(args),
        BenchCommand::Launchers(args) => launchers::run(args),
        BenchCommand::Faults(args) => faults::run(args),
        BenchCommand::Consistency(args) => consistency::run(args),
        BenchCommand::Roofline(args) => roofline::run(args),
    }
}

/// Cold (binary copied) and warm (binary cached) start of ssh workers, handshakes included.
pub fn bootstrap(args: BootstrapArgs) -> Result<()> {
    let (specs, spares, shown) = crate::launch::worker_specs(args.workers.as_deref(), &args.launch)?;
    if !specs.iter().any(|s| matches!(s, WorkerSpec::Ssh { .. })) {
        anyhow::bail!("bench bootstrap measures ssh workers: give --workers ssh://... or --hostfile");
    }
    let builder = crate::launch::builder(specs, spares, &args.launch)?;
    let binary = match &args.launch.worker_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    let size = std::fs::metadata(&binary)?.len();
    println!(
        "bootstrap of {shown}: binary {} ({}), {} runs each",
        binary.display(),
        crate::report::human_bytes(size),
        args.repeat
    );
    println!("{:<6} {:>8} {:>11} {:>11} {:>11}", "start", "workers", "median", "min", "max");
    for cold in [true, false] {
        let mut times = Vec::new();
        let mut workers = 0;
        for _ in 0..args.repeat.max(1) {
            if cold {
                builder.clear_remote_cache()?;
            }
            let t = Instant::now();
            let cluster = builder.clone().start()?;
            times.push(t.elapsed());
            workers = cluster.num_workers();
            cluster.shutdown();
        }
        times.sort();
        println!(
            "{:<6} {:>8} {:>11} {:>11} {:>11}",
            if cold { "cold" } else { "warm" },
            workers,
            fmt_dur(times[times.len() / 2]),
            fmt_dur(times[0]),
            fmt_dur(times[times.len() - 1])
        );
    }
    Ok(())
}

/// One row of the overhead table.
#[derive(Debug, Clone)]
pub struct OverheadRow {
    /// The worker spec measured.
    pub spec: String,
    /// Worker processes.
    pub workers: usize,
    /// Seconds to start the workers and finish every handshake.
    pub startup: Duration,
    /// Median round trip.
    pub median: Duration,
    /// 90th percentile round trip.
    pub p90: Duration,
    /// 99th percentile round trip.
    pub p99: Duration,
    /// Bytes sent plus received per round.
    pub bytes_per_round: f64,
}

/// Measures empty map-reduce rounds for each worker count.
pub fn overhead(args: OverheadArgs) -> Result<()> {
    let groups: Vec<String> = if args.workers.split(',').all(|s| s.trim().parse::<usize>().is_ok()) {
        args.workers.split(',').map(|n| format!("local:{}", n.trim())).collect()
    } else {
        vec![args.workers.clone()]
    };
    let rounds = args.rounds.max(1);
    println!("empty map-reduce round: {rounds} timed rounds per row, {} B of parameters", args.payload_bytes);
    println!(
        "{:<22} {:>7} {:>11} {:>11} {:>11} {:>11} {:>12}  target",
        "workers", "procs", "startup", "median", "p90", "p99", "bytes/round"
    );
    let mut rows = Vec::new();
    for spec in groups {
        let row = measure(&spec, &args.launch, rounds, args.payload_bytes)?;
        let target = match (row.spec.starts_with("local:"), row.workers) {
            (true, 2) => "≤ 50 µs",
            (true, 64) => "≤ 5 ms",
            _ => "",
        };
        println!(
            "{:<22} {:>7} {:>11} {:>11} {:>11} {:>11} {:>12.0}  {target}",
            row.spec,
            row.workers,
            fmt_dur(row.startup),
            fmt_dur(row.median),
            fmt_dur(row.p90),
            fmt_dur(row.p99),
            row.bytes_per_round
        );
        std::io::stdout().flush().ok();
        rows.push(row);
    }
    if let Some(path) = &args.csv {
        let mut out = String::from("spec,workers,startup_s,median_s,p90_s,p99_s,bytes_per_round\n");
        for r in &rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                r.spec,
                r.workers,
                r.startup.as_secs_f64(),
                r.median.as_secs_f64(),
                r.p90.as_secs_f64(),
                r.p99.as_secs_f64(),
                r.bytes_per_round
            ));
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn measure(spec: &str, launch: &LaunchArgs, rounds: usize, payload_bytes: usize) -> Result<OverheadRow> {
    let t = Instant::now();
    let mut cluster = crate::launch::builder(WorkerSpec::parse_list(spec)?, Vec::new(), launch)?.start()?;
    let startup = t.elapsed();
    let workers = cluster.num_workers();
    // One chunk per worker, so every worker takes part in every round.
    let data = Dataset::new(vec![0.0f64; workers], 1)?.with_chunks(workers)?;
    let handle = cluster.load(&data)?;
    let params = vec![0u8; payload_bytes];
    for _ in 0..rounds.div_ceil(10).min(200) {
        cluster.run(&Noop, &params, &handle)?;
    }
    let before = cluster.stats();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        cluster.run(&Noop, &params, &handle)?;
        times.push(t.elapsed());
    }
    let after = cluster.stats();
    cluster.shutdown();
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    let bytes = (after.bytes_sent + after.bytes_received - before.bytes_sent - before.bytes_received) as f64;
    Ok(OverheadRow {
        spec: spec.to_string(),
        workers,
        startup,
        median: pct(0.5),
        p90: pct(0.9),
        p99: pct(0.99),
        bytes_per_round: bytes / rounds as f64,
    })
}

/// `37.2 µs`, `4.10 ms`, `1.20 s`.
pub fn fmt_dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// The pid in a process label such as `worker 0 (local pid 4242)` or `server 5 (local pid 1234)`, for the
/// benchmarks that kill or stop a process.
pub(crate) fn pid_in(label: &str) -> Option<u32> {
    let at = label.find("pid ")? + 4;
    label[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pid_in_reads_worker_and_server_labels() {
        assert_eq!(super::pid_in("worker 0 (local pid 4242)"), Some(4242));
        assert_eq!(super::pid_in("server 5 (local pid 1234) at 127.0.0.1:5000"), Some(1234));
        assert_eq!(super::pid_in("worker 3 (ssh://host)"), None);
        assert_eq!(super::pid_in("worker 1 (local pid )"), None);
    }
}
