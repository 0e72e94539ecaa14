//! Training from your own program with the API `cohort train` uses: softmax regression by distributed L-BFGS on
//! local worker processes, checkpointed every 10 iterations into `--checkpoint DIR` (run it again: it resumes, or
//! reports the finished run).
//!
//! `cargo run --release --example train_softmax -- --workers local:2 --checkpoint /tmp/softmax-ckpt`

use cohort::{Cluster, Registry, WorkerSpec};
use cohort_ml::datasets::{self, Request};
use cohort_ml::softmax::{SoftmaxConfig, SoftmaxJob};
use cohort_ml::train::{Driver, LbfgsTrainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In a worker process this serves the master and never returns.
    cohort::worker::run_if_worker(&Registry::new().map_reduce(SoftmaxJob));
    let flag = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let workers = flag("--workers").unwrap_or_else(|| "local:2".into());
    let checkpoint = flag("--checkpoint").unwrap_or_else(|| "softmax-checkpoint".into());

    // Fashion-MNIST-shaped generated data (use `name: "fashion-mnist"` for the real thing).
    let request = Request { name: "generated", train_rows: Some(4000), test_rows: Some(1000), ..Request::default() };
    let data = datasets::prepare(&request)?;
    let mut cluster = Cluster::builder().workers(WorkerSpec::parse_list(&workers)?).start()?;
    let train = cluster.load(&data.train)?;

    let model = SoftmaxConfig::new(10, 784, 1e-4);
    let mut trainer = LbfgsTrainer::new(model, 40)?;
    let summary = Driver::new().checkpoint(&checkpoint, 10).resume_if_present().run(
        &mut trainer,
        &mut cluster,
        &train,
        |_, r| println!("iteration {:>3}  loss {:.5}", r.step, r.loss),
    )?;

    let theta = trainer.result().ok_or("no iteration was run")?.x;
    let accuracy = model.accuracy(&theta, &data.test.as_shard())?;
    println!("{} after {} iterations; test accuracy {accuracy:.4}", summary.outcome, summary.completed);
    println!("model_sha256 {}", cohort::sha256_le(&theta));
    Ok(())
}
