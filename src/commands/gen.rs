//! `cohort gen sparse`: writes a generated sparse binary-classification data set (power-law feature frequencies) as
//! a libsvm file, with `cohort_ml::sparse::SparseGenerator`, and says what it wrote.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cohort_ml::sparse::{encoded_cols, SparseGenerator, SparseSpec, ValueKind};

/// Data sets `cohort gen` writes.
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// Sparse binary classification, libsvm text: Zipf-distributed features, labels from hidden sparse weights
    /// plus noise (learnable by logistic regression). Rows depend only on the seed and their index.
    Sparse(GenSparseArgs),
}

/// Arguments of `cohort gen sparse`.
#[derive(Debug, Args)]
pub struct GenSparseArgs {
    /// Rows to write.
    #[arg(long, default_value_t = 100_000)]
    pub rows: usize,
    /// Number of features (at most 2^24 = 16777216); indices in the file are 1..=F.
    #[arg(long, default_value_t = 1 << 22)]
    pub features: usize,
    /// Mean non-zeros per row (each row has K ± 25 %).
    #[arg(long, default_value_t = 200)]
    pub nnz: usize,
    /// Write the file here.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,
    /// Seed (the hidden weights and every row).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Index of the first row: a test set for a training file of N rows is `--first-row N` with the same seed.
    #[arg(long, default_value_t = 0)]
    pub first_row: u64,
    /// Exponent of the power law of feature frequencies (1: Zipf's law).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Values: `tfidf` (rows of unit norm) or `binary` (all 1).
    #[arg(long, default_value = "tfidf")]
    pub values: ValueKind,
    /// Label noise, relative to the spread of the true margin (0: labels are the true weights' sign).
    #[arg(long, default_value_t = 0.3)]
    pub noise: f64,
}

/// Runs `cohort gen`.
pub fn run(command: GenCommand) -> Result<()> {
    match command {
        GenCommand::Sparse(args) => sparse(args),
    }
}

fn sparse(args: GenSparseArgs) -> Result<()> {
    let spec = SparseSpec {
        rows: args.rows,
        features: args.features,
        nnz: args.nnz,
        zipf: args.zipf,
        values: args.values,
        noise: args.noise,
        seed: args.seed,
        first_row: args.first_row,
        ..SparseSpec::default()
    };
    let start = Instant::now();
    let generator = SparseGenerator::new(spec).context("cohort gen sparse")?;
    let stats = generator.write_libsvm_file(&args.out)?;
    let seconds = start.elapsed().as_secs_f64();
    let mb = |bytes: f64| bytes / 1e6;
    let resident = (stats.rows * (encoded_cols(stats.max_nnz) + 1) * 4) as f64;
    println!("wrote {} ({} rows from row {}, seed {})", args.out.display(), stats.rows, args.first_row, args.seed);
    println!("  features          {} (distinct keys used: {})", args.features, stats.distinct_keys);
    println!(
        "  non-zeros         {} ({:.1} per row, widest row {})",
        stats.nonzeros,
        stats.nonzeros as f64 / stats.rows.max(1) as f64,
        stats.max_nnz
    );
    println!(
        "  positive rows     {} ({:.1} %)",
        stats.positives,
        100.0 * stats.positives as f64 / stats.rows.max(1) as f64
    );
    let rows = stats.rows.max(1) as f64;
    println!(
        "  hidden weights    accuracy {:.4}, mean loss {:.4} on these rows (the best possible accuracy)",
        stats.truth_correct as f64 / rows,
        stats.truth_loss / rows
    );
    println!("  file size         {:.1} MB", mb(stats.bytes as f64));
    println!("  resident encoding {:.1} MB (f32, padded to {} non-zeros per row)", mb(resident), stats.max_nnz);
    println!(
        "  time              {seconds:.2} s ({:.0} rows/s, {:.0} MB/s)",
        stats.rows as f64 / seconds,
        mb(stats.bytes as f64) / seconds
    );
    Ok(())
}
