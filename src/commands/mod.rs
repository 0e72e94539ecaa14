//! What each command does: parse (in `cli`), call the library, print. `run` dispatches a parsed command line;
//! starting workers and running a training loop through the library's driver is [`crate::launch`], the benchmark
//! programs are [`crate::bench`].

pub mod demo;
pub mod eval;
pub mod mlp;
pub mod train;

use anyhow::{Context, Result};
use cohort::Registry;

use crate::cli::{Cli, Command, TrainCommand};

/// Runs a parsed command line.
pub fn run(cli: Cli, registry: &Registry) -> Result<()> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Train(cmd) => match *cmd {
            TrainCommand::Linear(args) => train::linear(args).map(|_| ()),
            TrainCommand::Mlp(args) => mlp::run(args),
            TrainCommand::Sae(args) => train::sae(args).map(|_| ()),
            TrainCommand::Softmax(args) => train::softmax(args).map(|_| ()),
        },
        Command::Bench(cmd) => crate::bench::run(cmd),
        Command::Eval(args) => eval::run(args),
        Command::Worker => cohort::worker::serve_stdio(registry).context("worker mode"),
    }
}
