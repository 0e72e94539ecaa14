//! Diagnostic jobs: a plain sum (the smallest real job) and a fault injector that makes a worker crash, panic or
//! abort on a chosen chunk, so failure handling can be exercised against real processes.

use cohort::{MapReduce, Serde, Shard};
use serde::{Deserialize, Serialize};

/// Sums every value of the dataset.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sum;

impl MapReduce for Sum {
    const NAME: &'static str = "cohort.sum";
    type Elem = f64;
    type Params = ();
    type Output = f64;

    fn map(&self, _: &(), shard: &Shard<'_, f64>) -> f64 {
        shard.values.iter().sum()
    }

    fn reduce(&self, a: f64, b: f64) -> f64 {
        a + b
    }
}

/// What the fault job does when it reaches its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultAction {
    /// Print a line to stderr and exit with this status.
    Exit(i32),
    /// Panic (the worker survives and reports the failure).
    Panic,
    /// Abort the process (SIGABRT).
    Abort,
}

/// Parameters of the fault job: act on `chunk`, sum every other chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Chunk that triggers the action.
    pub chunk: u32,
    /// What to do there.
    pub action: FaultAction,
}

/// Sums like [`Sum`] but misbehaves on one chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fault;

impl MapReduce for Fault {
    const NAME: &'static str = "cohort.fault";
    type Elem = f64;
    type Params = Serde<FaultPlan>;
    type Output = f64;

    fn map(&self, plan: &Serde<FaultPlan>, shard: &Shard<'_, f64>) -> f64 {
        if shard.chunk == plan.0.chunk {
            match plan.0.action {
                FaultAction::Exit(code) => {
                    eprintln!("fault injected on chunk {}: exiting with status {code}", shard.chunk);
                    std::process::exit(code);
                }
                FaultAction::Panic => panic!("fault injected on chunk {}", shard.chunk),
                FaultAction::Abort => std::process::abort(),
            }
        }
        shard.values.iter().sum()
    }

    fn reduce(&self, a: f64, b: f64) -> f64 {
        a + b
    }
}
