//! qjam's first example: sum the 3x4 matrix 1..12 on worker processes.
//!
//! ```text
//! cargo run --release --example sum_matrix -- --workers local:3
//! Result is: 78
//! COHORT_SECRET=$(openssl rand -hex 32) srun -n 4 target/release/examples/sum_matrix   # rank 0 prints it
//! ```

use cohort::{Cluster, Dataset, MapReduce, Registry, Shard, WorkerSpec};

/// The per-chunk work and how two partial sums combine.
struct SumMatrix;

impl MapReduce for SumMatrix {
    const NAME: &'static str = "example.sum_matrix";
    type Elem = f64;
    type Params = ();
    type Output = f64;

    fn map(&self, _params: &(), shard: &Shard<'_, f64>) -> f64 {
        shard.values.iter().sum()
    }

    fn reduce(&self, a: f64, b: f64) -> f64 {
        a + b
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let registry = Registry::new().map_reduce(SumMatrix);
    // In a worker process this serves the master and never returns.
    cohort::worker::run_if_worker(&registry);

    let args: Vec<String> = std::env::args().collect();
    let workers = match args.iter().position(|a| a == "--workers") {
        Some(i) => args.get(i + 1).ok_or("--workers needs a value, e.g. local:3")?.clone(),
        None => "local:2".to_string(),
    };

    let matrix = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]];
    // One row per chunk, so three workers each get a row.
    let dataset = Dataset::from_rows(&matrix)?.with_chunks(3)?;

    // Started N times by srun, mpirun or a Kubernetes Indexed Job with COHORT_SECRET set, rank 0 is the master
    // here and the other ranks have become its workers in `run_if_worker`.
    let builder = match cohort::launch::Ranks::from_env()? {
        Some(ranks) => Cluster::builder().launcher(ranks),
        None => Cluster::builder().workers(WorkerSpec::parse_list(&workers)?),
    };
    let mut cluster = builder.start()?;
    let data = cluster.load(&dataset)?;
    let result = cluster.run(&SumMatrix, &(), &data)?;
    println!("Result is: {result}");
    cluster.shutdown();
    Ok(())
}
