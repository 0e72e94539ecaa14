//! Diagnostic jobs: a plain sum (the smallest real job), a job that is nothing but its partial result (to measure
//! what a round costs per byte of result), and a fault injector that makes a worker crash, panic or abort on a chosen
//! chunk, so failure handling can be exercised against real processes.

use cohort::{MapReduce, Payload, Serde, Shard};
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

/// Returns `n` zeros from every chunk (`n` is the parameter) and adds them up element-wise, as a model's partial
/// sums are added: a round of it costs what the framework spends on a partial result of `8·n` bytes per chunk
/// (allocating, adding, encoding, sending and decoding it), with no other work. `cohort bench roofline` uses it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Zeros;

impl MapReduce for Zeros {
    const NAME: &'static str = "cohort.zeros";
    type Elem = f64;
    type Params = u64;
    type Output = Vec<f64>;

    fn map(&self, n: &u64, _: &Shard<'_, f64>) -> Vec<f64> {
        vec![0.0; usize::try_from(*n).unwrap_or(0)]
    }

    fn reduce(&self, mut a: Vec<f64>, b: Vec<f64>) -> Vec<f64> {
        for (x, y) in a.iter_mut().zip(&b) {
            *x += y;
        }
        a
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

/// A multipass probe: each replica counts its passes in its local state and reports `(replica, passes, Σ values)`;
/// the aggregate appends the reports, in replica order, to the state. Lets tests see that local state persists
/// (also across a move to another process: the count is saved and restored) and that aggregation order is fixed.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassProbe;

impl cohort::Multipass for PassProbe {
    const NAME: &'static str = "cohort.pass_probe";
    type Elem = f64;
    type State = Vec<f64>;
    type Partial = (u32, u64, f64);
    type Local = (u32, u64);

    fn init_local(&self, _state: &Vec<f64>, ctx: &cohort::ReplicaContext) -> (u32, u64) {
        (ctx.replica, 0)
    }

    fn save_local(&self, local: &(u32, u64)) -> Option<Vec<u8>> {
        Some(local.1.to_bytes())
    }

    fn restore_local(&self, _: &Vec<f64>, ctx: &cohort::ReplicaContext, saved: &[u8]) -> Result<(u32, u64), String> {
        Ok((ctx.replica, u64::from_bytes(saved).map_err(|e| e.to_string())?))
    }

    fn pass(&self, _state: &Vec<f64>, local: &mut (u32, u64), shards: &[Shard<'_, f64>]) -> (u32, u64, f64) {
        local.1 += 1;
        (local.0, local.1, shards.iter().flat_map(|s| s.values).sum())
    }

    fn aggregate(&self, state: &Vec<f64>, parts: Vec<cohort::Contribution<(u32, u64, f64)>>) -> Vec<f64> {
        let mut next = state.clone();
        for c in parts {
            next.extend([f64::from(c.partial.0), c.partial.1 as f64, c.partial.2, c.rows as f64]);
        }
        next
    }
}

/// Parameters of the slow job: how long each chunk's map sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowPlan {
    /// Milliseconds per chunk.
    pub millis: u64,
}

/// Sums like [`Sum`] but sleeps in every map: a long computation, to check that a busy worker keeps its heartbeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slow;

impl MapReduce for Slow {
    const NAME: &'static str = "cohort.slow";
    type Elem = f64;
    type Params = Serde<SlowPlan>;
    type Output = f64;

    fn map(&self, plan: &Serde<SlowPlan>, shard: &Shard<'_, f64>) -> f64 {
        std::thread::sleep(std::time::Duration::from_millis(plan.0.millis));
        shard.values.iter().sum()
    }

    fn reduce(&self, a: f64, b: f64) -> f64 {
        a + b
    }
}
