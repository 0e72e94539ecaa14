//! The user-facing job API and the registry that maps stable job names to code.
//!
//! A job is plain Rust compiled into the program. The master and every worker run the *same executable*; a worker
//! finds a job by its [`MapReduce::NAME`] in the [`Registry`] the program built at start-up. Nothing is shipped or
//! evaluated at run time.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use crate::cluster::store::ResidentDataset;
use crate::data::{Element, Shard};
use crate::tree::Tree;
use crate::wire::{ElemType, Payload};

/// A synchronous map-reduce job (qjam's `map` module).
///
/// `map` runs once per chunk of the dataset, single-threaded, on whichever worker holds the chunk; `reduce`
/// combines two partial results. The runtime applies `reduce` in a fixed tree over chunk indices, so the result is
/// bit-identical for any number of workers as long as `map` itself is deterministic.
///
/// ```
/// use cohort::{MapReduce, Shard};
///
/// /// Sums every value of the dataset, scaled by the parameter.
/// struct Sum;
///
/// impl MapReduce for Sum {
///     const NAME: &'static str = "example.sum";
///     type Elem = f64;
///     type Params = f64;
///     type Output = f64;
///
///     fn map(&self, scale: &f64, shard: &Shard<'_, f64>) -> f64 {
///         shard.values.iter().sum::<f64>() * scale
///     }
///
///     fn reduce(&self, a: f64, b: f64) -> f64 {
///         a + b
///     }
/// }
/// ```
pub trait MapReduce: Send + Sync + 'static {
    /// Stable name, unique within the program (e.g. `"linear.gradient"`).
    const NAME: &'static str;
    /// Element type of the dataset it maps over.
    type Elem: Element;
    /// Parameters sent to every worker each round.
    type Params: Payload;
    /// Partial and final result.
    type Output: Payload;

    /// Computes the partial result of one chunk.
    fn map(&self, params: &Self::Params, shard: &Shard<'_, Self::Elem>) -> Self::Output;

    /// Combines two partial results; `left` always covers lower chunk indices than `right`.
    fn reduce(&self, left: Self::Output, right: Self::Output) -> Self::Output;
}

/// Where a worker stands in a multipass job: handed to [`Multipass::init_local`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerContext {
    /// This worker's position among the workers holding data (0-based, in chunk order).
    pub index: u32,
    /// Number of workers holding data.
    pub workers: u32,
    /// Rows this worker holds.
    pub rows: u64,
    /// Index of its first row in the whole dataset.
    pub first_row: u64,
    /// Seed of the session; derive worker-local randomness from `(seed, index)` to stay reproducible.
    pub seed: u64,
}

/// One worker's contribution to an aggregate, in worker (= chunk) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution<P> {
    /// Rows the worker holds (a weight for averaging).
    pub rows: u64,
    /// What its pass returned.
    pub partial: P,
}

/// A multipass worker/aggregator job (Weimer, Rao and Zinkevich): every worker keeps its data *and* a mutable
/// local state between passes; each pass runs over the worker's resident rows starting from the broadcast state,
/// and the aggregator combines the workers' results into the next state.
///
/// Reproducible for a fixed number of workers and seed: contributions arrive at `aggregate` in worker order, and
/// worker-local randomness comes from [`WorkerContext::seed`]. (Unlike [`MapReduce`], the result depends on how the
/// rows are split among workers — that is the nature of model averaging.)
pub trait Multipass: Send + Sync + 'static {
    /// Stable name, unique within the program.
    const NAME: &'static str;
    /// Element type of the dataset.
    type Elem: Element;
    /// The state broadcast to every worker before each pass (e.g. model parameters).
    type State: Payload;
    /// What a worker sends back after a pass.
    type Partial: Payload;
    /// Worker-local state kept between passes (optimizer moments, RNG, cursor); never sent.
    type Local: Send + 'static;

    /// Creates a worker's local state before its first pass.
    fn init_local(&self, state: &Self::State, ctx: &WorkerContext) -> Self::Local;

    /// Runs one pass over the worker's shards (its chunks, in order).
    fn pass(&self, state: &Self::State, local: &mut Self::Local, shards: &[Shard<'_, Self::Elem>]) -> Self::Partial;

    /// Combines the contributions (in worker order) into the next state.
    fn aggregate(&self, state: &Self::State, contributions: Vec<Contribution<Self::Partial>>) -> Self::State;
}

/// A registered multipass job with its types erased, as a worker sees it.
pub(crate) trait ErasedMultipass: Send + Sync {
    fn elem(&self) -> ElemType;
    /// Runs a pass; creates the local state in `local` on first use.
    fn pass(
        &self,
        state: &[u8],
        local: &mut Option<Box<dyn std::any::Any + Send>>,
        data: &ResidentDataset,
        range: Range<u32>,
        ctx: WorkerContext,
    ) -> Result<Vec<u8>, String>;
}

struct ErasedPass<J>(J);

impl<J: Multipass> ErasedMultipass for ErasedPass<J> {
    fn elem(&self) -> ElemType {
        J::Elem::TYPE
    }

    fn pass(
        &self,
        state: &[u8],
        local: &mut Option<Box<dyn std::any::Any + Send>>,
        data: &ResidentDataset,
        range: Range<u32>,
        ctx: WorkerContext,
    ) -> Result<Vec<u8>, String> {
        let state = J::State::from_bytes(state).map_err(|e| format!("cannot decode the state: {e}"))?;
        let shards = range.map(|c| data.shard::<J::Elem>(c)).collect::<Result<Vec<_>, _>>()?;
        let slot = local.get_or_insert_with(|| Box::new(self.0.init_local(&state, &ctx)));
        let local = slot.downcast_mut::<J::Local>().ok_or("local state of another job in this session")?;
        Ok(self.0.pass(&state, local, &shards).to_bytes())
    }
}

/// A registered job with its types erased, as a worker sees it.
pub(crate) trait ErasedJob: Send + Sync {
    fn elem(&self) -> ElemType;
    /// Maps chunks `range` of `data` and returns the encoded partial of each covering tree node.
    fn run(&self, params: &[u8], data: &ResidentDataset, range: Range<u32>) -> Result<Vec<(u32, Vec<u8>)>, String>;
}

struct Erased<J>(J);

impl<J: MapReduce> ErasedJob for Erased<J> {
    fn elem(&self) -> ElemType {
        J::Elem::TYPE
    }

    fn run(&self, params: &[u8], data: &ResidentDataset, range: Range<u32>) -> Result<Vec<(u32, Vec<u8>)>, String> {
        let params = J::Params::from_bytes(params).map_err(|e| format!("cannot decode parameters: {e}"))?;
        let tree = Tree::new(data.total_chunks);
        let mut out = Vec::new();
        for node in tree.cover(range) {
            let value = tree.eval(
                node,
                &mut |chunk| data.shard::<J::Elem>(chunk).map(|shard| self.0.map(&params, &shard)),
                &mut |a, b| self.0.reduce(a, b),
            )?;
            if let Some(value) = value {
                out.push((node, value.to_bytes()));
            }
        }
        Ok(out)
    }
}

/// The jobs a program can run, by name. Build it once at start-up, identically in master and workers (they are
/// the same program), and hand it to [`crate::worker::run_if_worker`].
#[derive(Clone)]
pub struct Registry {
    jobs: BTreeMap<&'static str, Arc<dyn ErasedJob>>,
    passes: BTreeMap<&'static str, Arc<dyn ErasedMultipass>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding only cohort's built-in jobs ([`Noop`], used by `bench overhead`).
    pub fn new() -> Self {
        Registry { jobs: BTreeMap::new(), passes: BTreeMap::new() }.map_reduce(Noop)
    }

    /// Registers a map-reduce job.
    ///
    /// # Panics
    /// If another job already uses the same name: that is a programming error, caught on the first run.
    pub fn map_reduce<J: MapReduce>(mut self, job: J) -> Self {
        assert!(
            !self.jobs.contains_key(J::NAME) && !self.passes.contains_key(J::NAME),
            "two jobs are registered under the name {:?}",
            J::NAME
        );
        self.jobs.insert(J::NAME, Arc::new(Erased(job)));
        self
    }

    /// Registers a multipass job.
    ///
    /// # Panics
    /// If another job already uses the same name.
    pub fn multipass<J: Multipass>(mut self, job: J) -> Self {
        assert!(
            !self.jobs.contains_key(J::NAME) && !self.passes.contains_key(J::NAME),
            "two jobs are registered under the name {:?}",
            J::NAME
        );
        self.passes.insert(J::NAME, Arc::new(ErasedPass(job)));
        self
    }

    /// Names of all registered jobs, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.jobs.keys().chain(self.passes.keys()).map(|s| s.to_string()).collect();
        names.sort();
        names
    }

    pub(crate) fn get_pass(&self, name: &str) -> Option<&Arc<dyn ErasedMultipass>> {
        self.passes.get(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn ErasedJob>> {
        self.jobs.get(name)
    }
}

/// The empty job: maps every chunk to `()`. Measures the runtime's own overhead per round.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl MapReduce for Noop {
    const NAME: &'static str = "cohort.noop";
    type Elem = f64;
    type Params = Vec<u8>;
    type Output = ();

    fn map(&self, _params: &Vec<u8>, _shard: &Shard<'_, f64>) {}

    fn reduce(&self, _left: (), _right: ()) {}
}
