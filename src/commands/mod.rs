//! What each command does: parse (in `cli`), call the library, print. `run` dispatches a parsed command line;
//! starting workers and running a training loop through the library's driver is [`crate::launch`], the benchmark
//! programs are [`crate::bench`].

pub mod demo;
pub mod eval;
pub mod gen;
pub mod mlp;
pub mod ps;
pub mod slurm_script;
pub mod train;

use anyhow::{Context, Result};
use cohort::worker::{note_termination, RankWorker};
use cohort::Registry;

use crate::cli::{Cli, Command, TrainCommand};

/// Runs a parsed command line.
pub fn run(cli: Cli, registry: &Registry) -> Result<()> {
    // Under a launcher every rank runs this same command line: ranks ≥ 1 serve rank 0 here and never return.
    if let Some((workers, launch_args)) = crate::launch::launch_of(&cli.command) {
        match crate::launch::plan(workers, launch_args)? {
            crate::launch::Plan::Ranks(ranks) if ranks.env.rank > 0 => {
                let worker = RankWorker::new(&ranks.env, ranks.secret, ranks.timeout);
                std::process::exit(worker.serve(registry));
            }
            crate::launch::Plan::Ranks(ranks) => note_termination(format!(
                "cohort {} (the master): stopped by SIGTERM — the launcher ended the job (cancelled, out of time, \
                 or another rank failed)",
                ranks.env.describe()
            )),
            crate::launch::Plan::Slurm(s) => note_termination(format!(
                "cohort (the master of Slurm job {}): stopped by SIGTERM — the job was cancelled, reached its time \
                 limit or was preempted",
                s.job_id
            )),
            crate::launch::Plan::Specs(..) => {}
        }
    }
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Train(cmd) => match *cmd {
            TrainCommand::Linear(args) => train::linear(args).map(|_| ()),
            TrainCommand::Mlp(args) => mlp::run(args),
            TrainCommand::Sae(args) => train::sae(args).map(|_| ()),
            TrainCommand::Softmax(args) => train::softmax(args).map(|_| ()),
            TrainCommand::Ps(args) => ps::run(args, registry).map(|_| ()),
        },
        Command::Bench(cmd) => crate::bench::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::Gen(cmd) => gen::run(cmd),
        Command::SlurmScript(args) => slurm_script::run(args),
        Command::Worker => cohort::worker::serve_stdio(registry).context("worker mode"),
    }
}
