//! `cohort demo`: the first command a newcomer runs. Offline, local worker processes, a real training job.

use anyhow::Result;

use crate::cli::{CommonArgs, DemoArgs, LinearArgs};

/// Trains linear regression on a generated data set with local workers.
pub fn run(args: DemoArgs) -> Result<()> {
    println!("cohort demo: gradient descent on 200 000 generated rows, one map-reduce round per iteration");
    let linear = LinearArgs {
        rows: 200_000,
        features: 32,
        lr: 0.5,
        common: CommonArgs {
            workers: args.workers,
            launch: args.launch,
            iterations: 60,
            seed: 42,
            report: args.report,
            chunks: None,
        },
    };
    super::train::linear(linear)?;
    Ok(())
}
