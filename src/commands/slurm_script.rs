//! `cohort slurm-script -- train ...`: writes an sbatch script that runs a cohort command on a Slurm cluster. The
//! master runs in the batch step and starts one worker per task with `srun` (`--workers slurm`); the command line
//! is checked here, so a typo fails now rather than in the queue.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use cohort::cluster::ssh::sh_quote;

use crate::cli::Cli;

/// Arguments of `cohort slurm-script`.
#[derive(Debug, Args)]
pub struct SlurmScriptArgs {
    /// Worker tasks (`#SBATCH --ntasks`); the master runs beside them in the batch step.
    #[arg(long, default_value_t = 4)]
    pub tasks: usize,
    /// Nodes (`#SBATCH --nodes`).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Wall-clock limit (`#SBATCH --time`), e.g. `01:00:00`.
    #[arg(long)]
    pub time: Option<String>,
    /// Partition (`#SBATCH --partition`).
    #[arg(long)]
    pub partition: Option<String>,
    /// Job name (`#SBATCH --job-name`).
    #[arg(long, default_value = "cohort")]
    pub job_name: String,
    /// Where Slurm writes the job's output (`#SBATCH --output`; `%j` is the job id).
    #[arg(long, default_value = "cohort-%j.out")]
    pub output: String,
    /// Allow more tasks than CPUs (`#SBATCH --overcommit`).
    #[arg(long)]
    pub overcommit: bool,
    /// Any other sbatch option, e.g. `--sbatch=--mem=4G` (repeatable).
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// The cohort executable the nodes run (default: this one; it must be at the same path on every node).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Write the script here (mode 755) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The cohort command to run, after `--`, e.g. `-- train softmax --iterations 100`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Checks the command and writes the script.
pub fn run(args: SlurmScriptArgs) -> Result<()> {
    let script = script(&args)?;
    match &args.out {
        Some(path) => {
            let mut f =
                std::fs::File::create(path).with_context(|| format!("cannot write the script {}", path.display()))?;
            f.write_all(script.as_bytes())?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
            println!("wrote {}; submit it with: sbatch {}", path.display(), path.display());
        }
        None => print!("{script}"),
    }
    Ok(())
}

/// The text of the script.
pub fn script(args: &SlurmScriptArgs) -> Result<String> {
    if args.tasks == 0 || args.nodes == Some(0) {
        bail!("--tasks and --nodes must be at least 1");
    }
    let mut argv = vec!["cohort".to_string()];
    argv.extend(args.command.iter().cloned());
    let cli = Cli::try_parse_from(&argv)
        .map_err(|e| anyhow::anyhow!("the command after `--` is not a valid cohort command line:\n{}", e.render()))?;
    let Some((workers, launch)) = crate::launch::launch_of(&cli.command) else {
        bail!("`{}` starts no workers; give a training command such as `-- train softmax`", args.command.join(" "));
    };
    if let Some(w) = workers {
        bail!("the script runs the command with --workers slurm; drop --workers {w}");
    }
    if launch.hostfile.is_some() {
        bail!("the script runs the command with --workers slurm; drop --hostfile");
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this executable's path; pass --binary PATH")?,
    };
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(
        "# Written by `cohort slurm-script`. Submit with `sbatch FILE` (`sbatch --wait FILE` blocks until done).\n",
    );
    s.push_str("# The master runs in the batch step and starts one worker per task with srun (--workers slurm);\n");
    s.push_str("# the cohort executable must be at the same path on every node.\n");
    let mut directive = |d: String| s.push_str(&format!("#SBATCH {d}\n"));
    directive(format!("--job-name={}", args.job_name));
    directive(format!("--ntasks={}", args.tasks));
    if let Some(n) = args.nodes {
        directive(format!("--nodes={n}"));
    }
    if let Some(t) = &args.time {
        directive(format!("--time={t}"));
    }
    if let Some(p) = &args.partition {
        directive(format!("--partition={p}"));
    }
    if args.overcommit {
        directive("--overcommit".into());
    }
    directive(format!("--output={}", args.output));
    for extra in &args.sbatch {
        if extra.contains('\n') {
            bail!("--sbatch {extra:?} spans lines");
        }
        directive(extra.clone());
    }
    s.push_str("set -euo pipefail\n");
    let mut line = format!("exec {}", sh_quote(&binary.display().to_string()));
    for a in &args.command {
        line.push(' ');
        line.push_str(&sh_quote(a));
    }
    line.push_str(" --workers slurm\n");
    s.push_str(&line);
    Ok(s)
}

/// Parses `slurm-script` arguments as the command line would (for tests).
pub fn parse_args(args: &[&str]) -> Result<SlurmScriptArgs> {
    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        inner: SlurmScriptArgs,
    }
    let argv = std::iter::once("slurm-script").chain(args.iter().copied());
    Ok(Wrapper::try_parse_from(argv)?.inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_carries_the_directives_and_the_checked_command() {
        let args = parse_args(&[
            "--tasks",
            "3",
            "--time",
            "00:10:00",
            "--overcommit",
            "--sbatch=--mem=1G",
            "--binary",
            "/opt/cohort",
            "--",
            "train",
            "linear",
            "--rows",
            "2000",
            "--report",
            "/tmp/it's.json",
        ])
        .unwrap();
        let s = script(&args).unwrap();
        for needle in [
            "#SBATCH --ntasks=3\n",
            "#SBATCH --time=00:10:00\n",
            "#SBATCH --overcommit\n",
            "#SBATCH --mem=1G\n",
            "exec '/opt/cohort' 'train' 'linear' '--rows' '2000' '--report' '/tmp/it'\\''s.json' --workers slurm\n",
        ] {
            assert!(s.contains(needle), "{needle:?} not in\n{s}");
        }
        assert!(s.starts_with("#!/bin/bash\n"));
    }

    #[test]
    fn bad_commands_fail_before_they_reach_the_queue() {
        for (args, needle) in [
            (vec!["--", "train", "lineaar"], "not a valid cohort command"),
            (vec!["--", "eval", "--model", "m"], "starts no workers"),
            (vec!["--", "train", "linear", "--workers", "local:2"], "drop --workers local:2"),
            (vec!["--tasks", "0", "--", "train", "linear"], "at least 1"),
        ] {
            let e = script(&parse_args(&args).unwrap()).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
