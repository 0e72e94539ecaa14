//! `cohort bench consistency`: the parameter server's consistency modes side by side. For each straggler setting
//! (none, and worker 0 slowed down F times) one cluster of local workers and servers is started and the data
//! loaded once; then each mode trains the same model from the same start for the same number of clocks, the model
//! is fetched and evaluated every `--eval-every` seconds, and the table gives the time to the target accuracy (or
//! objective), the final accuracy, the bytes moved, the staleness observed and the barrier wait. Optional sections:
//! model block scheduling against plain SSP (bytes at equal accuracy), and a server killed mid-run under
//! replication 2 (recovery time). `--servers 1,2` repeats the table for each server count (the servers' update rate
//! side by side, e.g. for the sparse model). A CSV and an SVG of accuracy against time are written on request.

use std::path::PathBuf;

use crate::cli::{defaults, LaunchArgs};
use crate::commands::ps::{workload, WorkloadSpec};
use crate::plot::Chart;
use crate::psrun::{self, Run};
use crate::report::human_bytes;
use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `cohort bench consistency`.
#[derive(Debug, Args)]
pub struct ConsistencyArgs {
    /// The model: `softmax` or `mlp` (Fashion-MNIST), `sparse` (generated sparse logistic regression), `linear`.
    #[arg(long, default_value = "softmax")]
    pub model: String,
    /// Modes to compare, separated by spaces or `;` (ASP's `S,W` keeps its comma).
    #[arg(long, default_value = "bsp ssp:1 ssp:4 asp:4,16 async")]
    pub modes: String,
    /// Local worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Local server processes; a list (`1,2`) repeats the table for each count.
    #[arg(long, default_value = "2")]
    pub servers: String,
    /// How many times slower worker 0 is in the second half of the table (1: no straggler runs).
    #[arg(long, default_value_t = 3.0)]
    pub straggler: f32,
    /// Randomly varying speed instead of (or with) the straggler: each clock takes up to 1 + JITTER times as long.
    #[arg(long, default_value_t = 0.0)]
    pub jitter: f32,
    /// The target test accuracy (classifiers) whose time each mode is measured by.
    #[arg(long, default_value_t = 0.80)]
    pub target: f64,
    /// The target objective for models without accuracy (sparse, linear).
    #[arg(long)]
    pub target_loss: Option<f64>,
    /// Passes over the training rows (all workers together).
    #[arg(long, default_value_t = 2.0)]
    pub epochs: f64,
    /// Mini-batch rows.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Update rule (default per model).
    #[arg(long)]
    pub rule: Option<String>,
    /// Seconds between model evaluations.
    #[arg(long, default_value_t = 0.25)]
    pub eval_every: f64,
    /// Also compare model block scheduling with these settings (`KEYS,THRESHOLD,PERIOD`) against plain SSP(1).
    #[arg(long, value_name = "KEYS,THRESHOLD,PERIOD")]
    pub blocks: Option<String>,
    /// Also kill a server mid-run under replication 2 (three servers) and print the recovery time.
    #[arg(long)]
    pub kill: bool,
    /// Train on the first N rows (softmax, mlp) or generate N rows (sparse, linear).
    #[arg(long, value_name = "N")]
    pub train_rows: Option<usize>,
    /// Named data set of softmax and mlp.
    #[arg(long, default_value = defaults::DATASET)]
    pub dataset: String,
    /// `sparse`: features of the generated data.
    #[arg(long, default_value_t = 1 << 20)]
    pub features: u64,
    /// Seed of the data, the initial model and the batch order.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Also write the table as CSV here.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// Also draw accuracy (or loss) against time, one line per run, as SVG here.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
}

/// One run of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Server processes.
    pub servers: usize,
    /// `none`, `3x` or `jitter`.
    pub setting: String,
    /// The mode (and `+blocks`).
    pub mode: String,
    /// Seconds to the target, if reached.
    pub to_target: Option<f64>,
    /// Final accuracy (classifiers).
    pub accuracy: Option<f64>,
    /// Final loss.
    pub loss: f64,
    /// Seconds of the run.
    pub wall: f64,
    /// Bytes pushed and pulled by all workers.
    pub pushed: u64,
    /// Bytes pulled.
    pub pulled: u64,
    /// Mean and largest staleness.
    pub staleness: (f64, u64),
    /// Updates applied per second.
    pub updates_per_sec: f64,
    /// Mean barrier wait of a worker, seconds.
    pub waited: f64,
    /// The evaluation curve.
    pub curve: Vec<(f64, f64)>,
}

fn row(servers: usize, setting: &str, mode: &str, run: &Run, target: Target) -> Row {
    let o = &run.outcome;
    let (pushed, pulled) = o.bytes();
    let waited = o.workers.iter().map(|w| w.waited.as_secs_f64()).sum::<f64>() / o.workers.len().max(1) as f64;
    Row {
        servers,
        setting: setting.into(),
        mode: mode.into(),
        to_target: match target {
            Target::Accuracy(a) => run.time_to_accuracy(a),
            Target::Loss(l) => run.time_to_loss(l),
        },
        accuracy: run.last.accuracy,
        loss: run.last.loss,
        wall: o.wall.as_secs_f64(),
        pushed,
        pulled,
        staleness: o.staleness_summary(),
        updates_per_sec: o.updates_per_sec(),
        waited,
        curve: run.curve.iter().map(|(t, e)| (*t, e.accuracy.unwrap_or(e.loss))).collect(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Accuracy(f64),
    Loss(f64),
}

/// `--servers 1,2`: positive counts.
fn counts(s: &str) -> Result<Vec<usize>> {
    let counts: Vec<usize> = s
        .split(',')
        .map(|c| c.trim().parse().ok().filter(|&n| n >= 1))
        .collect::<Option<_>>()
        .with_context(|| format!("--servers {s:?} must be counts of at least 1, e.g. 2 or 1,2"))?;
    Ok(counts)
}

fn modes(s: &str) -> Result<Vec<String>> {
    let modes: Vec<String> =
        s.split([' ', ';']).filter(|m| !m.trim().is_empty()).map(|m| m.trim().to_string()).collect();
    for m in &modes {
        m.parse::<cohort::ps::Consistency>().map_err(|e| anyhow::anyhow!("--modes: {m:?}: {e}"))?;
    }
    anyhow::ensure!(!modes.is_empty(), "--modes names no mode");
    Ok(modes)
}

/// Runs the benchmark.
pub fn run(args: ConsistencyArgs) -> Result<()> {
    let modes = modes(&args.modes)?;
    let server_counts = counts(&args.servers)?;
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let spec = WorkloadSpec {
        model: args.model.clone(),
        seed: args.seed,
        dataset: args.dataset.clone(),
        train_rows: args.train_rows,
        train: None,
        test: None,
        features: args.features,
    };
    let mut settings: Vec<(usize, String, Option<f32>)> = Vec::new();
    for &n in &server_counts {
        settings.push((n, "none".into(), None));
        if args.straggler > 1.0 {
            settings.push((n, format!("{}x", args.straggler), Some(args.straggler)));
        }
    }
    let base = psrun::Settings {
        consistency: String::new(),
        rule: args.rule.clone(),
        batch: args.batch,
        seed: args.seed,
        replication: 1,
        blocks: None,
        jitter: args.jitter,
        eval_every: Some(args.eval_every),
        divergence: cohort::cluster::DEFAULT_DIVERGENCE,
    };
    let mut rows = Vec::new();
    let mut target = None;
    for (servers, setting, straggler) in &settings {
        let mut launch = LaunchArgs::default();
        if let Some(f) = straggler {
            launch.straggler = vec![format!("0:{f}")];
        }
        let specs = vec![cohort::WorkerSpec::Local { count: *servers }];
        let workers = format!("local:{}", args.workers);
        let (mut cluster, _) = crate::launch::start_cluster_with_servers(Some(&workers), &launch, specs)?;
        let mut work = workload(&spec)?;
        work.load(&mut cluster)?;
        let t = *target.get_or_insert_with(|| match (work.classifier(), args.target_loss) {
            (_, Some(l)) => Target::Loss(l),
            (true, None) => Target::Accuracy(args.target),
            (false, None) => Target::Loss(f64::NAN),
        });
        let clocks = psrun::clocks_for(args.epochs, work.rows(), args.workers, args.batch);
        if rows.is_empty() {
            println!(
                "consistency modes: {} ({} keys, {} rows), {} workers, {} server(s), {clocks} clocks of {} rows each, \
                 target {}",
                work.name(),
                work.num_params(),
                work.rows(),
                args.workers,
                args.servers,
                args.batch,
                match t {
                    Target::Accuracy(a) => format!("accuracy {a}"),
                    Target::Loss(l) => format!("objective {l}"),
                }
            );
            print_header();
        }
        let mut runs: Vec<(String, Option<String>)> = modes.iter().map(|m| (m.clone(), None)).collect();
        if let (Some(b), None) = (&args.blocks, straggler) {
            // Block scheduling is compared with plain SSP(1): run it too when the modes do not.
            if !modes.iter().any(|m| m == "ssp:1") {
                runs.push(("ssp:1".into(), None));
            }
            runs.push(("ssp:1".into(), Some(b.clone())));
        }
        for (mode, blocks) in runs {
            let settings = psrun::Settings { consistency: mode.clone(), blocks: blocks.clone(), ..base.clone() };
            let options = settings.options(work.as_ref(), clocks)?;
            let run = psrun::run(&mut cluster, work.as_ref(), &options, |_| {})
                .with_context(|| format!("{mode} with straggler {setting}, {servers} server(s)"))?;
            let name = if blocks.is_some() { format!("{mode}+blocks") } else { mode.clone() };
            let r = row(*servers, setting, &name, &run, t);
            print_row(&r);
            if let Some(d) = &run.outcome.diverged {
                println!("    ({d})");
            }
            rows.push(r);
        }
        cluster.shutdown();
    }
    summarise(&rows);
    if args.kill {
        kill(&args, &spec, &base)?;
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&rows)).with_context(|| format!("cannot write {}", path.display()))?;
        println!("csv: {}", path.display());
    }
    if let Some(path) = &args.svg {
        let y = if matches!(target, Some(Target::Accuracy(_))) { "test accuracy" } else { "objective" };
        let mut chart = Chart::new(&format!("{}: {y} against time", args.model), "seconds", y);
        for r in &rows {
            chart = chart.line(&format!("{} {}", r.mode, r.setting), r.curve.clone());
        }
        chart.save(path)?;
        println!("svg: {}", path.display());
    }
    Ok(())
}

fn print_header() {
    println!(
        "{:>3} {:<8} {:<14} {:>9} {:>9} {:>9} {:>8} {:>10} {:>10} {:>11} {:>10} {:>8}",
        "srv",
        "slow",
        "mode",
        "to target",
        "accuracy",
        "loss",
        "wall",
        "pushed",
        "pulled",
        "staleness",
        "updates/s",
        "waited"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:>3} {:<8} {:<14} {:>9} {:>9} {:>9.4} {:>7.2}s {:>10} {:>10} {:>6.2}/{:<4} {:>10.0} {:>7.2}s",
        r.servers,
        r.setting,
        r.mode,
        r.to_target.map_or("never".into(), |t| format!("{t:.2}s")),
        r.accuracy.map_or("-".into(), |a| format!("{a:.4}")),
        r.loss,
        r.wall,
        human_bytes(r.pushed),
        human_bytes(r.pulled),
        r.staleness.0,
        r.staleness.1,
        r.updates_per_sec,
        r.waited
    );
}

/// The targets: with the straggler, the best of SSP/ASP against BSP (≥ 1.5x sooner, accuracy within 0.5 %), and
/// block scheduling against SSP(1) (≥ 30 % fewer bytes).
fn summarise(rows: &[Row]) {
    let groups: std::collections::BTreeSet<(usize, String)> =
        rows.iter().map(|r| (r.servers, r.setting.clone())).collect();
    for (servers, setting) in groups {
        let rows: Vec<&Row> = rows.iter().filter(|r| r.servers == servers).collect();
        let of = |m: &str| rows.iter().copied().find(|r| r.setting == setting && r.mode == m);
        if let Some(bsp) = of("bsp") {
            let bounded = rows.iter().filter(|r| {
                r.setting == setting
                    && (r.mode.starts_with("ssp") || r.mode.starts_with("asp"))
                    && !r.mode.ends_with("+blocks")
            });
            let best =
                bounded.filter(|r| r.to_target.is_some()).min_by(|a, b| a.to_target.partial_cmp(&b.to_target).unwrap());
            match (bsp.to_target, best) {
                (Some(tb), Some(b)) => println!(
                    "{servers} server(s), straggler {setting}: {} reached the target {:.2}x as fast as BSP (target ≥ 1.5x with a straggler); final \
                     accuracy {} vs BSP's {} (target within 0.005)",
                    b.mode,
                    tb / b.to_target.unwrap_or(f64::NAN),
                    b.accuracy.map_or("-".into(), |a| format!("{a:.4}")),
                    bsp.accuracy.map_or("-".into(), |a| format!("{a:.4}"))
                ),
                _ => println!("{servers} server(s), straggler {setting}: BSP or every bounded mode missed the target"),
            }
        }
        if let (Some(plain), Some(blocked)) = (of("ssp:1"), of("ssp:1+blocks")) {
            let (a, b) = (plain.pushed + plain.pulled, blocked.pushed + blocked.pulled);
            println!(
                "block scheduling: {} instead of {} ({:.1} % fewer bytes; target ≥ 30 %), final accuracy {} vs {}",
                human_bytes(b),
                human_bytes(a),
                100.0 * (1.0 - b as f64 / a.max(1) as f64),
                blocked.accuracy.map_or(format!("loss {:.4}", blocked.loss), |x| format!("{x:.4}")),
                plain.accuracy.map_or(format!("loss {:.4}", plain.loss), |x| format!("{x:.4}")),
            );
        }
    }
}

/// A server killed a third of the way into an SSP(1) run under replication 2 (three servers): the run completes,
/// and the recovery time (every running worker progressing again) is printed.
fn kill(args: &ConsistencyArgs, spec: &WorkloadSpec, base: &psrun::Settings) -> Result<()> {
    let servers = vec![cohort::WorkerSpec::Local { count: 3 }];
    let workers = format!("local:{}", args.workers);
    let (mut cluster, _) = crate::launch::start_cluster_with_servers(Some(&workers), &LaunchArgs::default(), servers)?;
    let mut work = workload(spec)?;
    work.load(&mut cluster)?;
    let clocks = psrun::clocks_for(args.epochs, work.rows(), args.workers, args.batch);
    let settings = psrun::Settings { consistency: "ssp:1".into(), replication: 2, eval_every: None, ..base.clone() };
    let options = settings.options(work.as_ref(), clocks)?;
    let victim = cluster.server_labels()[1].clone();
    let pid = super::pid_in(&victim).with_context(|| format!("no pid in {victim:?}"))?;
    let mut killed = None;
    let run = psrun::run(&mut cluster, work.as_ref(), &options, |r| {
        if killed.is_none() && r.clock * 3 >= clocks {
            // SAFETY: signalling a server process this benchmark started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            killed = Some(r.seconds);
        }
    })?;
    let failures = cluster.failures();
    cluster.shutdown();
    let f = failures.first().context("the server was not lost (the run ended before the kill?)")?;
    let recovery = f.recovered.map(|r| r.saturating_sub(f.detected));
    println!(
        "server kill (replication 2, 3 servers, ssp:1): killed {victim} at {:.2} s; run completed in {:.2} s, every \
         worker progressing again {} after detection; final {}",
        killed.unwrap_or(f64::NAN),
        run.outcome.wall.as_secs_f64(),
        recovery.map_or("never".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3)),
        run.last.accuracy.map_or(format!("loss {:.4}", run.last.loss), |a| format!("accuracy {a:.4}")),
    );
    Ok(())
}

/// The table as CSV.
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "servers,straggler,mode,seconds_to_target,accuracy,loss,wall_seconds,pushed_bytes,pulled_bytes,mean_staleness,\
         max_staleness,updates_per_second,mean_wait_seconds\n",
    );
    for r in rows {
        out += &format!(
            "{},{},{},{},{},{},{:.3},{},{},{:.3},{},{:.1},{:.3}\n",
            r.servers,
            r.setting,
            csv_field(&r.mode),
            r.to_target.map_or(String::new(), |t| format!("{t:.3}")),
            r.accuracy.map_or(String::new(), |a| format!("{a:.4}")),
            r.loss,
            r.wall,
            r.pushed,
            r.pulled,
            r.staleness.0,
            r.staleness.1,
            r.updates_per_sec,
            r.waited
        );
    }
    out
}

/// A CSV field, quoted when it holds a comma or a quote (ASP's `asp:4,16`).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
