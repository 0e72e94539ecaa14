//! `cohort demo`: the first command a newcomer runs. Trains the MLP (784-32-10) on Fashion-MNIST with local worker
//! processes and model averaging, for a few epochs with a progress bar. Without the data set it says how to install
//! it and trains on a generated stand-in instead, so the command always works offline.

use anyhow::Result;
use cohort::data::loaders::{find_named_in, named::FASHION_MNIST, search_dirs};

use super::mlp::{self, Verbosity};
use crate::cli::{DemoArgs, MlpArgs};

/// Rows of the generated stand-in when Fashion-MNIST is absent.
const GENERATED_ROWS: usize = 20_000;

/// Trains the MLP on Fashion-MNIST (or generated data) with local workers.
pub fn run(args: DemoArgs) -> Result<()> {
    let dirs = args.data_dir.clone().map_or_else(|| search_dirs(FASHION_MNIST), |d| vec![d]);
    let (dataset, train_rows, test_rows) = match find_named_in(FASHION_MNIST, &dirs) {
        Ok(_) => (FASHION_MNIST, args.train_rows, None),
        Err(e) => {
            println!("cohort demo: Fashion-MNIST is not installed.\n{e}");
            println!("Falling back to a generated data set of 28×28 images in 10 classes.\n");
            (
                "generated",
                Some(args.train_rows.unwrap_or(GENERATED_ROWS)),
                Some(args.train_rows.unwrap_or(GENERATED_ROWS).div_ceil(4)),
            )
        }
    };
    println!(
        "cohort demo: a 784-32-10 multilayer perceptron, parallel SGD with model averaging once per epoch, {} epochs",
        args.epochs
    );
    let epochs = args.epochs.to_string();
    let mut mlp_args = MlpArgs::parse_from(&["--dataset", dataset, "--epochs", &epochs])?;
    mlp_args.data_dir = args.data_dir;
    mlp_args.train_rows = train_rows;
    mlp_args.test_rows = test_rows;
    mlp_args.common.workers = args.workers;
    mlp_args.common.launch = args.launch;
    mlp_args.common.report = args.report;
    mlp::train(&mlp_args, &mlp::load(&mlp_args)?, Verbosity::Full)?;
    Ok(())
}
