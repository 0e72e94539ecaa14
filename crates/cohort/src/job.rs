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
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding only cohort's built-in jobs ([`Noop`], used by `bench overhead`).
    pub fn new() -> Self {
        Registry { jobs: BTreeMap::new() }.map_reduce(Noop)
    }

    /// Registers a map-reduce job.
    ///
    /// # Panics
    /// If another job already uses the same name: that is a programming error, caught on the first run.
    pub fn map_reduce<J: MapReduce>(mut self, job: J) -> Self {
        let previous = self.jobs.insert(J::NAME, Arc::new(Erased(job)));
        assert!(previous.is_none(), "two jobs are registered under the name {:?}", J::NAME);
        self
    }

    /// Names of all registered jobs, sorted.
    pub fn names(&self) -> Vec<String> {
        self.jobs.keys().map(|s| s.to_string()).collect()
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
