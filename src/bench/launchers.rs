//! `cohort bench launchers`: the launcher matrix. The same small training job under local workers, the
//! `RANK`/`WORLD_SIZE` contract (processes this command starts itself), `srun`, `salloc` with `--workers slurm`,
//! `sbatch --wait`, Open MPI's `mpirun` and MPICH's `mpiexec`, with each run's start-up (rank 0's wait for its
//! workers, from its report), the whole command's wall time and the model hash, which must be the same everywhere.
//! A launcher that is not installed or not reachable is listed as skipped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use cohort::wire::handshake::Secret;

/// Arguments of `cohort bench launchers`.
#[derive(Debug, Args)]
pub struct LaunchersArgs {
    /// Processes each launcher starts (rank 0 is the master, so rank launchers have one worker fewer); local,
    /// salloc and sbatch rows start this many workers.
    #[arg(long, default_value_t = 3)]
    pub ranks: usize,
    /// Runs of each row; the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Rows of the generated regression problem.
    #[arg(long, default_value_t = 20_000)]
    pub rows: usize,
    /// Gradient-descent iterations.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Seconds one run may take before it is stopped and counted as failed.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Rows to leave out, comma-separated: local, env, srun, salloc, sbatch, mpirun, mpiexec.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

/// One way of starting the job.
struct Row {
    name: &'static str,
    shown: String,
    workers: usize,
    /// Why the row cannot run here, if it cannot.
    skip: Option<String>,
}

/// What one run measured.
struct Run {
    startup: f64,
    wall: f64,
    sha: String,
}

/// Runs the matrix and prints the table.
pub fn run(args: LaunchersArgs) -> Result<()> {
    if args.ranks < 2 || args.repeat == 0 || args.rows == 0 {
        bail!("--ranks must be at least 2, --repeat and --rows at least 1");
    }
    let limit = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--timeout must be positive")?;
    let bin = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("cohort-bench-launchers-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let n = args.ranks;
    let job = vec![
        "train".to_string(),
        "linear".into(),
        "--rows".into(),
        args.rows.to_string(),
        "--features".into(),
        "16".into(),
        "--iterations".into(),
        args.iterations.to_string(),
    ];
    const ROWS: [&str; 7] = ["local", "env", "srun", "salloc", "sbatch", "mpirun", "mpiexec"];
    if let Some(bad) = args.skip.iter().find(|s| !ROWS.contains(&s.as_str())) {
        bail!("--skip {bad:?}: the rows are {}", ROWS.join(", "));
    }
    let slurm = slurm_unavailable();
    let mut rows = vec![
        Row { name: "local", shown: format!("cohort train linear --workers local:{n}"), workers: n, skip: None },
        Row { name: "env contract", shown: format!("{n} × cohort with RANK/WORLD_SIZE"), workers: n - 1, skip: None },
        Row {
            name: "srun",
            shown: format!("srun -n {n} --overcommit cohort ..."),
            workers: n - 1,
            skip: slurm.clone(),
        },
        Row {
            name: "salloc + slurm",
            shown: format!("salloc -n {n} --overcommit cohort ... --workers slurm"),
            workers: n,
            skip: slurm.clone(),
        },
        Row {
            name: "sbatch",
            shown: format!("sbatch --wait (cohort slurm-script --tasks {n})"),
            workers: n,
            skip: slurm,
        },
        Row {
            name: "mpirun",
            shown: format!("mpirun --oversubscribe -np {n} cohort ..."),
            workers: n - 1,
            skip: missing("mpirun.openmpi"),
        },
        Row {
            name: "mpiexec",
            shown: format!("mpiexec.hydra -n {n} cohort ..."),
            workers: n - 1,
            skip: missing("mpiexec.hydra"),
        },
    ];
    for row in &mut rows {
        let key = row.name.split_whitespace().next().unwrap_or_default();
        if args.skip.iter().any(|s| s == key) {
            row.skip = Some("--skip".into());
        }
    }
    println!(
        "launcher matrix: cohort train linear, {} rows × 16 features, {} iterations, {n} processes; medians of {} runs",
        args.rows, args.iterations, args.repeat
    );
    println!("(start-up: rank 0 from starting its cluster to every worker admitted; command: the whole launch)\n");
    println!("{:<15} {:<52} {:>7} {:>10} {:>9}  model_sha256", "launcher", "how", "workers", "start-up", "command");
    let mut hashes = Vec::new();
    for row in &rows {
        if let Some(why) = &row.skip {
            println!("{:<15} {:<52} {:>7} {:>10} {:>9}  skipped: {why}", row.name, row.shown, "-", "-", "-");
            continue;
        }
        let mut runs = Vec::new();
        let mut failure = None;
        for i in 0..args.repeat {
            let report = dir.join(format!("{}-{i}.json", row.name.replace(' ', "-")));
            match run_row(row.name, &bin, &job, n, &report, &dir, limit) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    failure = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        if let Some(f) = failure {
            let first = f.lines().next().unwrap_or_default().to_string();
            println!("{:<15} {:<52} {:>7} {:>10} {:>9}  FAILED: {first}", row.name, row.shown, row.workers, "-", "-");
            hashes.push(format!("failed ({})", row.name));
            continue;
        }
        let median = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let sha = runs[0].sha.clone();
        let stable = runs.iter().all(|r| r.sha == sha);
        println!(
            "{:<15} {:<52} {:>7} {:>10} {:>9}  {}{}",
            row.name,
            row.shown,
            row.workers,
            super::fmt_dur(Duration::from_secs_f64(median(|r| r.startup))),
            format!("{:.2} s", median(|r| r.wall)),
            sha,
            if stable { "" } else { " (differs between runs!)" }
        );
        hashes.push(sha);
    }
    let _ = std::fs::remove_dir_all(&dir);
    hashes.dedup();
    match hashes.as_slice() {
        [one] if !one.starts_with("failed") => {
            println!("\nevery launcher trained the same model: {one}");
            Ok(())
        }
        [] => bail!("no launcher could run"),
        _ => bail!("the launchers did not all train the same model: {}", hashes.join(", ")),
    }
}

/// Why Slurm cannot be used from here, if it cannot.
fn slurm_unavailable() -> Option<String> {
    if let Some(why) = missing("srun") {
        return Some(why);
    }
    let ok = Command::new("sinfo")
        .args(["-h", "-o", "%a"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .and_then(|c| wait_limited(c, Duration::from_secs(10)).ok())
        .is_some_and(|(status, ..)| status.success());
    (!ok).then(|| "no Slurm controller answers (sinfo failed; is SLURM_CONF set?)".to_string())
}

/// `Some(reason)` when `program` is not on PATH.
fn missing(program: &str) -> Option<String> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    (!found).then(|| format!("{program} is not installed"))
}

/// One run of one row; reads rank 0's report.
fn run_row(
    name: &str,
    bin: &Path,
    job: &[String],
    n: usize,
    report: &Path,
    dir: &Path,
    limit: Duration,
) -> Result<Run> {
    let _ = std::fs::remove_file(report);
    let mut args: Vec<String> = job.to_vec();
    args.extend(["--report".into(), report.display().to_string()]);
    let secret = Secret::generate().to_hex();
    let started = Instant::now();
    let command = |program: &str| {
        let mut c = Command::new(program);
        c.env("COHORT_SECRET", &secret).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    let children: Vec<Child> = match name {
        "local" => {
            let mut c = command(&bin.display().to_string());
            c.args(&args).args(["--workers", &format!("local:{n}")]).env_remove("COHORT_SECRET");
            vec![c.spawn()?]
        }
        "env contract" => {
            let port = free_port()?.to_string();
            (0..n)
                .map(|rank| {
                    let mut c = command(&bin.display().to_string());
                    c.args(&args)
                        .env("RANK", rank.to_string())
                        .env("WORLD_SIZE", n.to_string())
                        .env("MASTER_ADDR", "127.0.0.1")
                        .env("MASTER_PORT", &port);
                    c.spawn()
                })
                .collect::<std::io::Result<_>>()?
        }
        "srun" => {
            let mut c = command("srun");
            c.args(["-n", &n.to_string(), "--overcommit", "--kill-on-bad-exit=1"]).arg(bin).args(&args);
            vec![c.spawn()?]
        }
        "salloc + slurm" => {
            let mut c = command("salloc");
            c.args(["-n", &n.to_string(), "--overcommit"]).arg(bin).args(&args).args(["--workers", "slurm"]);
            c.env_remove("COHORT_SECRET");
            vec![c.spawn()?]
        }
        "sbatch" => {
            let script = dir.join("job.sh");
            let mut script_args: Vec<String> = vec![
                "--tasks".into(),
                n.to_string(),
                "--overcommit".into(),
                "--binary".into(),
                bin.display().to_string(),
            ];
            script_args.extend(["--output".into(), dir.join("sbatch-%j.out").display().to_string(), "--".into()]);
            script_args.extend(args.iter().cloned());
            let refs: Vec<&str> = script_args.iter().map(String::as_str).collect();
            std::fs::write(
                &script,
                crate::commands::slurm_script::script(&crate::commands::slurm_script::parse_args(&refs)?)?,
            )?;
            let mut c = command("sbatch");
            c.arg("--wait").arg(&script).env_remove("COHORT_SECRET");
            vec![c.spawn()?]
        }
        "mpirun" => {
            let mut c = command("mpirun.openmpi");
            c.args(["--oversubscribe", "-np", &n.to_string(), "-x", "COHORT_SECRET"]).arg(bin).args(&args);
            // Open MPI refuses root unless told twice; these variables say it for runs as root (CI).
            c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
            vec![c.spawn()?]
        }
        "mpiexec" => {
            let mut c = command("mpiexec.hydra");
            c.args(["-n", &n.to_string()]).arg(bin).args(&args);
            vec![c.spawn()?]
        }
        other => bail!("unknown launcher row {other}"),
    };
    let deadline = started + limit;
    let mut errors = Vec::new();
    for child in children {
        let (status, stderr) = wait_limited(child, deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        if !status.success() {
            errors.push(format!("{status}: {}", stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    let text = std::fs::read_to_string(report).with_context(|| format!("no report at {}", report.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    Ok(Run {
        startup: json["startup_seconds"].as_f64().context("report without startup_seconds")?,
        wall,
        sha: json["model_sha256"].as_str().context("report without model_sha256")?.to_string(),
    })
}

/// A TCP port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits for `child` at most `limit` (killing it then), returning its status and stderr.
fn wait_limited(mut child: Child, limit: Duration) -> Result<(std::process::ExitStatus, String), String> {
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok((status, reader.join().unwrap_or_default())),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {limit:?}; stopped"));
            }
        }
    }
}
