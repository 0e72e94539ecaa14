//! Sparse logistic regression through parameter servers, from a program: worker and server processes of this same
//! executable, a generated (or libsvm) data set loaded onto the workers, `Cluster::train_ps` with
//! [`SparseLogRegPs`], then the objective of the trained weights and the bytes the servers moved.
//!
//! ```sh
//! cargo run --release -p cohort-ml --example sparse_ps -- --rows 20000 --workers 2 --servers 2 --consistency ssp:2
//! cohort gen sparse --rows 100000 --out train.svm
//! cargo run --release -p cohort-ml --example sparse_ps -- --train train.svm --clocks 1000
//! ```
//!
//! Flags: `--train PATH` (a libsvm file; otherwise generated: `--rows`, `--features`, `--nnz`), `--workers N`,
//! `--servers N`, `--consistency bsp|ssp:S|asp:S,W|async`, `--rule` (default `sgd:50`), `--batch`, `--clocks`
//! (mini-batches per worker), `--l2`.

use std::error::Error;
use std::path::PathBuf;

use cohort::cluster::PsOptions;
use cohort::{Cluster, Registry, WorkerSpec};
use cohort_ml::ps::{self, Evaluate, SparseLogRegConfig, SparseLogRegPs};
use cohort_ml::sparse::{load_libsvm_sparse, SparseGenerator, SparseLoadOptions, SparseSpec};

struct Args {
    train: Option<PathBuf>,
    spec: SparseSpec,
    workers: usize,
    servers: usize,
    l2: f64,
    options: PsOptions,
}

fn parse() -> Result<Args, Box<dyn Error>> {
    let mut args = Args {
        train: None,
        spec: SparseSpec { rows: 20_000, features: 1 << 20, nnz: 100, ..SparseSpec::default() },
        workers: 2,
        servers: 2,
        l2: 1e-4,
        options: PsOptions { rule: "sgd:50".into(), batch: 50, clocks: 200, ..PsOptions::default() },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--train" => args.train = Some(value.into()),
            "--rows" => args.spec.rows = value.parse()?,
            "--features" => args.spec.features = value.parse()?,
            "--nnz" => args.spec.nnz = value.parse()?,
            "--workers" => args.workers = value.parse()?,
            "--servers" => args.servers = value.parse()?,
            "--consistency" => args.options.consistency = value.parse()?,
            "--rule" => args.options.rule = value,
            "--batch" => args.options.batch = value.parse()?,
            "--clocks" => args.options.clocks = value.parse()?,
            "--l2" => args.l2 = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn Error>> {
    // Every process of the program builds the same registry; in a worker or server process this call serves the
    // master and exits.
    let registry = ps::register(Registry::new());
    cohort::worker::run_if_worker(&registry);
    let args = parse()?;

    let set = match &args.train {
        Some(path) => load_libsvm_sparse(path, &SparseLoadOptions::default())?,
        None => SparseGenerator::new(args.spec.clone())?.dataset()?,
    };
    let config = SparseLogRegConfig::for_data(&set, args.l2)?;
    let mut cluster = Cluster::builder()
        .workers(vec![WorkerSpec::Local { count: args.workers }])
        .servers(vec![WorkerSpec::Local { count: args.servers }])
        .start()?;
    let data = cluster.load(&set.data.clone().with_chunks(4 * args.workers)?)?;
    let out = cluster.train_ps(&SparseLogRegPs, &config, &data, &args.options, |_| {})?;

    let trained = SparseLogRegPs.evaluate(&config, &out.params, &set.data)?;
    let pulled: u64 = out.metrics.iter().map(|m| m.pull_out.bytes).sum();
    let pushed: u64 = out.metrics.iter().map(|m| m.push_in.bytes).sum();
    let dense = 4 * config.features as u64 * args.options.clocks * args.workers as u64;
    println!(
        "{} rows, {} features: objective {:.4} (ln 2 = 0.6931 at zero), accuracy {:.4}, {:.2} s",
        set.rows(),
        config.features,
        trained.loss,
        trained.accuracy,
        out.wall.as_secs_f64()
    );
    println!("bytes pulled {pulled}, pushed {pushed}; a dense model would pull {dense}");
    Ok(())
}
