//! `cohort bench resume`: the master is killed (SIGKILL) mid-run, a new master process resumes from the
//! checkpoint, and the final `model_sha256` is compared with an uninterrupted run's — `--runs` times per scenario,
//! at kill points spread over the run. Prints each run's resume time (a new process starting its workers,
//! loading the data and restoring the checkpoint) and the checkpoint cost of the uninterrupted run at the default
//! interval.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cohort_ml::checkpoint;
use serde_json::Value;

use crate::cli::ResumeArgs;

/// Runs `cohort ARGS` to its end and returns its report.
fn run_to_end(exe: &Path, args: &[String], report: &Path) -> Result<Value> {
    let out = Command::new(exe).args(args).arg("--report").arg(report).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("`cohort {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&std::fs::read(report)?)?)
}

/// Waits until the checkpoint in `dir` has `at` units done (then SIGKILLs `child`); `false` if the run ended first.
fn kill_at(child: &mut Child, dir: &Path, at: usize) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        if checkpoint::read_manifest(dir).is_ok_and(|m| m.completed >= at) {
            child.kill()?; // SIGKILL
            child.wait()?;
            return Ok(true);
        }
        if Instant::now() > deadline {
            child.kill()?;
            bail!("the run did not reach {at} steps in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `cohort bench resume`.
pub fn run(args: ResumeArgs) -> Result<()> {
    let exe = std::env::current_exe()?;
    let tmp = std::env::temp_dir().join(format!("cohort-bench-resume-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = scenarios(&args, &exe, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn scenarios(args: &ResumeArgs, exe: &Path, tmp: &Path) -> Result<()> {
    let w = format!("local:{}", args.workers);
    for scenario in args.scenarios.split(',').map(str::trim) {
        let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
        let (mut base, total) = match scenario {
            "softmax" => {
                (strings(&["train", "softmax", "--iterations", &args.iterations.to_string()]), args.iterations)
            }
            "avg" => {
                let rows = args.train_rows.unwrap_or(20_000).to_string();
                let a = ["train", "mlp", "--dataset", "generated", "--train-rows", &rows, "--test-rows", "2000"];
                (strings(&[&a[..], &["--epochs", &args.epochs.to_string()]].concat()), args.epochs)
            }
            other => bail!("--scenarios: unknown scenario {other:?}; use softmax and/or avg"),
        };
        base.extend(["--workers".to_string(), w.clone()]);
        if let (Some(n), "softmax") = (args.train_rows, scenario) {
            base.extend(["--train-rows".to_string(), n.to_string()]);
        }
        if total < 3 || args.runs == 0 {
            bail!("give at least 3 iterations or epochs and 1 run");
        }
        let reference_dir = tmp.join(format!("{scenario}-reference"));
        let reference = run_to_end(
            exe,
            &[base.clone(), vec!["--checkpoint".into(), path(&reference_dir)]].concat(),
            &tmp.join("ref.json"),
        )?;
        let sha = reference["model_sha256"].as_str().unwrap_or_default().to_string();
        println!("scenario {scenario}: `cohort {}`", base.join(" "));
        println!(
            "  uninterrupted: model_sha256 {}…, {} checkpoints at the default interval cost {:.1} ms on the training \
             loop = {:.2} % of {:.2} s of training, and {:.1} ms for the last one at the end",
            &sha[..16.min(sha.len())],
            reference["checkpoints_written"],
            reference["checkpoint_seconds"].as_f64().unwrap_or(f64::NAN) * 1e3,
            reference["checkpoint_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
            reference["checkpoint_seconds"].as_f64().unwrap_or(f64::NAN)
                / reference["checkpoint_share"].as_f64().unwrap_or(f64::NAN),
            reference["final_checkpoint_seconds"].as_f64().unwrap_or(f64::NAN) * 1e3
        );
        println!(
            "{:>5}  {:>9}  {:>9}  {:>10}  {:>11}  result",
            "run", "killed at", "resumed", "resume (s)", "total (s)"
        );
        let (mut same, mut times) = (0, Vec::new());
        for run in 1..=args.runs {
            let at = 1 + run * (total - 2) / (args.runs + 1);
            let dir = tmp.join(format!("{scenario}-{run}"));
            let _ = std::fs::remove_dir_all(&dir);
            let mut child = Command::new(exe)
                .args(&base)
                .args(["--checkpoint", &path(&dir), "--checkpoint-every", "1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            if !kill_at(&mut child, &dir, at)? {
                println!("{run:>5}  {:>9}  the run finished before the kill point; not counted", "-");
                continue;
            }
            let started = Instant::now();
            let report =
                run_to_end(exe, &[base.clone(), vec!["--resume".into(), path(&dir)]].concat(), &tmp.join("r.json"))?;
            let total_s = started.elapsed().as_secs_f64();
            let ok = report["model_sha256"].as_str() == Some(sha.as_str());
            same += usize::from(ok);
            let resume = report["resume_seconds"].as_f64().unwrap_or(f64::NAN);
            times.push(resume);
            println!(
                "{run:>5}  {at:>9}  {:>9}  {resume:>10.3}  {total_s:>11.2}  {}",
                report["resumed_at"],
                if ok { "identical" } else { "DIFFERS" }
            );
        }
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        println!("  identical final model in {same}/{} runs; mean resume time {mean:.3} s\n", args.runs);
    }
    Ok(())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}
