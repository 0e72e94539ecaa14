//! The sequential SGD baseline of sparse logistic regression on a libsvm file (e.g. one `cohort gen sparse` wrote):
//! loads it into the resident encoding, runs mini-batch SGD through the same `batch_keys`/`loss_grad` a
//! parameter-server worker uses, and prints the objective and accuracy per epoch — the target a distributed run
//! is measured against.
//!
//! ```sh
//! cohort gen sparse --rows 100000 --out train.svm
//! cohort gen sparse --rows 10000 --first-row 100000 --out test.svm
//! cargo run --release -p cohort-ml --example sparse_sgd -- --train train.svm --test test.svm --epochs 3
//! ```
//!
//! Flags: `--features F` (default 2^22, as `cohort gen sparse` writes), `--lr`, `--l2`, `--batch`, `--epochs`,
//! `--seed`.

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use cohort_ml::sparse::{evaluate, load_libsvm_sparse, sgd, SgdConfig, SparseDataset, SparseLoadOptions};

struct Args {
    train: PathBuf,
    test: Option<PathBuf>,
    features: usize,
    config: SgdConfig,
}

fn parse() -> Result<Args, Box<dyn Error>> {
    let mut args = Args { train: PathBuf::new(), test: None, features: 1 << 22, config: SgdConfig::default() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--train" => args.train = value.into(),
            "--test" => args.test = Some(value.into()),
            "--features" => args.features = value.parse()?,
            "--lr" => args.config.lr = value.parse()?,
            "--l2" => args.config.l2 = value.parse()?,
            "--batch" => args.config.batch = value.parse()?,
            "--epochs" => args.config.epochs = value.parse()?,
            "--seed" => args.config.seed = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if args.train.as_os_str().is_empty() {
        return Err("give the training file with --train PATH".into());
    }
    Ok(args)
}

fn load(path: &PathBuf, features: usize) -> Result<SparseDataset, Box<dyn Error>> {
    let start = Instant::now();
    let set = load_libsvm_sparse(path, &SparseLoadOptions::default().features(features))?;
    println!(
        "{}: {} rows, {} non-zeros ({:.1} per row, width {}), resident {:.1} MB, loaded in {:.2} s",
        path.display(),
        set.rows(),
        set.nonzeros,
        set.nonzeros as f64 / set.rows() as f64,
        set.width,
        set.resident_bytes() as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(set)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse()?;
    let train = load(&args.train, args.features)?;
    let test = args.test.as_ref().map(|p| load(p, args.features)).transpose()?;
    let (train_rows, test_rows) = (train.rows_view()?, test.as_ref().map(|t| t.rows_view()).transpose()?);
    let c = &args.config;
    println!("SGD: step {}, λ {}, batch {}, {} epochs, seed {}", c.lr, c.l2, c.batch, c.epochs, c.seed);
    println!("epoch  objective  train acc  test acc  updates  keys/update  seconds");
    let mut failure = None;
    sgd(&train_rows, args.features, c, |r, weights| {
        let tested = test_rows.as_ref().map(|t| evaluate(weights, c.l2, t));
        let test_acc = match tested {
            Some(Ok(e)) => format!("{:.4}", e.accuracy),
            Some(Err(e)) => {
                failure = Some(e);
                "error".into()
            }
            None => "-".into(),
        };
        println!(
            "{:>5}  {:>9.5}  {:>9.4}  {:>8}  {:>7}  {:>11.0}  {:>7.2}",
            r.epoch,
            r.train.objective,
            r.train.accuracy,
            test_acc,
            r.updates,
            r.keys_touched as f64 / r.updates as f64,
            r.seconds
        );
    })?;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
