//! The user-facing job API and the registry that maps stable job names to code.
//!
//! A job is plain Rust compiled into the program. The master and every worker run the *same executable*; a worker
//! finds a job by its [`MapReduce::NAME`] in the [`Registry`] the program built at start-up. Nothing is shipped or
//! evaluated at run time.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use crate::data::resident::ResidentDataset;
use crate::data::{Element, Shard};
use crate::tree::Tree;
use crate::wire::{ElemType, Payload, WorkerFailure};

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

/// Where a replica stands in a multipass job: handed to [`Multipass::init_local`] and [`Multipass::restore_local`].
///
/// A multipass session runs a fixed number of *replicas* (model copies), each owning a fixed contiguous range of
/// chunks. Which process hosts a replica is the runtime's business: a process may host several, and a replica may
/// move to another process when its host is lost. Nothing a job sees depends on the number of processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaContext {
    /// This replica's index (0-based, in chunk order).
    pub replica: u32,
    /// Number of replicas in the session.
    pub replicas: u32,
    /// Rows this replica owns.
    pub rows: u64,
    /// Index of its first row in the whole dataset.
    pub first_row: u64,
    /// Seed of the session; derive replica-local randomness from `(seed, replica)` to stay reproducible.
    pub seed: u64,
}

/// One replica's contribution to an aggregate, in replica (= chunk) order.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution<P> {
    /// Rows the replica owns (a weight for averaging).
    pub rows: u64,
    /// What its pass returned.
    pub partial: P,
}

/// A multipass worker/aggregator job (Weimer, Rao and Zinkevich): every replica keeps its data *and* a mutable
/// local state between passes; each pass runs over the replica's resident rows starting from the broadcast state,
/// and the aggregator combines the replicas' results into the next state.
///
/// The number of replicas is a setting of the session (see [`Cluster::open_session`](crate::Cluster::open_session)),
/// not the number of processes: contributions arrive at `aggregate` in replica order and replica-local randomness
/// comes from [`ReplicaContext::seed`] and [`ReplicaContext::replica`], so a run is bit-identical for any number of
/// worker processes. (Unlike [`MapReduce`], the result depends on the number of replicas — that is the nature of
/// model averaging.)
///
/// **Surviving failures.** When the process hosting a replica is lost, the replica moves to another process: its
/// local state is rebuilt with [`restore_local`](Self::restore_local) from what [`save_local`](Self::save_local)
/// returned after the last completed pass, and the lost pass runs again from the same broadcast state. Implement
/// both so that `restore_local(save_local(l))` continues exactly like `l`, and the model after a failure is
/// bit-identical to a fault-free run; the same snapshots let a restarted master resume a session. With the
/// defaults (nothing saved) a moved replica starts again from `init_local`.
pub trait Multipass: Send + Sync + 'static {
    /// Stable name, unique within the program.
    const NAME: &'static str;
    /// Element type of the dataset.
    type Elem: Element;
    /// The state broadcast to every replica before each pass (e.g. model parameters).
    type State: Payload;
    /// What a replica sends back after a pass.
    type Partial: Payload;
    /// Replica-local state kept between passes (optimizer moments, RNG, cursor); sent only as
    /// [`save_local`](Self::save_local) encodes it.
    type Local: Send + 'static;

    /// Creates a replica's local state before its first pass.
    fn init_local(&self, state: &Self::State, ctx: &ReplicaContext) -> Self::Local;

    /// Runs one pass over the replica's shards (its chunks, in order).
    fn pass(&self, state: &Self::State, local: &mut Self::Local, shards: &[Shard<'_, Self::Elem>]) -> Self::Partial;

    /// Combines the contributions (in replica order) into the next state.
    fn aggregate(&self, state: &Self::State, contributions: Vec<Contribution<Self::Partial>>) -> Self::State;

    /// Encodes what of `local` must survive a move to another process or a restart of the master; called after
    /// every pass. Scratch buffers need not be saved. The default saves nothing.
    fn save_local(&self, local: &Self::Local) -> Option<Vec<u8>> {
        let _ = local;
        None
    }

    /// Rebuilds a local state from [`save_local`](Self::save_local)'s bytes. `state` is the state broadcast for the
    /// pass about to run. The default ignores `saved` and calls [`init_local`](Self::init_local).
    fn restore_local(&self, state: &Self::State, ctx: &ReplicaContext, saved: &[u8]) -> Result<Self::Local, String> {
        let _ = saved;
        Ok(self.init_local(state, ctx))
    }
}

/// What a replica's pass produced: the encoded partial and, if the job saves it, the encoded local state.
pub(crate) struct PassOutput {
    pub partial: Vec<u8>,
    pub saved: Option<Vec<u8>>,
}

/// A replica's local state on a worker, type-erased; `Restore` holds saved bytes not yet turned into a state.
pub(crate) enum LocalSlot {
    /// No pass has run here and nothing was restored: the next pass calls `init_local`.
    Fresh,
    /// Restore from these bytes (`None`: the job saves nothing; rebuild with `restore_local(&[])`'s default).
    Restore(Option<Vec<u8>>),
    /// A live local state.
    Live(Box<dyn std::any::Any + Send>),
}

/// A registered multipass job with its types erased, as a worker sees it.
pub(crate) trait ErasedMultipass: Send + Sync {
    fn elem(&self) -> ElemType;
    /// Runs a replica's pass, creating or restoring its local state in `local` first if needed.
    fn pass(
        &self,
        state: &[u8],
        local: &mut LocalSlot,
        data: &ResidentDataset,
        range: Range<u32>,
        ctx: ReplicaContext,
    ) -> Result<PassOutput, WorkerFailure>;
}

struct ErasedPass<J>(J);

impl<J: Multipass> ErasedMultipass for ErasedPass<J> {
    fn elem(&self) -> ElemType {
        J::Elem::TYPE
    }

    fn pass(
        &self,
        state: &[u8],
        local: &mut LocalSlot,
        data: &ResidentDataset,
        range: Range<u32>,
        ctx: ReplicaContext,
    ) -> Result<PassOutput, WorkerFailure> {
        let state = J::State::from_bytes(state)
            .map_err(|e| WorkerFailure::Decode { what: format!("state of `{}`", J::NAME), detail: e.to_string() })?;
        let shards = range.map(|c| data.shard::<J::Elem>(c)).collect::<Result<Vec<_>, _>>()?;
        let live = match std::mem::replace(local, LocalSlot::Fresh) {
            LocalSlot::Live(l) => l,
            LocalSlot::Fresh => Box::new(self.0.init_local(&state, &ctx)),
            LocalSlot::Restore(saved) => {
                let restored = match &saved {
                    Some(bytes) => self.0.restore_local(&state, &ctx, bytes),
                    None => Ok(self.0.init_local(&state, &ctx)),
                };
                match restored {
                    Ok(l) => Box::new(l),
                    Err(detail) => {
                        *local = LocalSlot::Restore(saved);
                        return Err(WorkerFailure::Restore { replica: ctx.replica, detail });
                    }
                }
            }
        };
        let slot = local;
        *slot = LocalSlot::Live(live);
        let LocalSlot::Live(boxed) = slot else { unreachable!("just set") };
        let local = boxed.downcast_mut::<J::Local>().ok_or_else(|| WorkerFailure::Restore {
            replica: ctx.replica,
            detail: format!("the session's local state belongs to another job than `{}`", J::NAME),
        })?;
        let partial = self.0.pass(&state, local, &shards).to_bytes();
        Ok(PassOutput { partial, saved: self.0.save_local(local) })
    }
}

/// A registered job with its types erased, as a worker sees it.
pub(crate) trait ErasedJob: Send + Sync {
    fn elem(&self) -> ElemType;
    /// Maps the chunks of `runs` (ascending, disjoint ranges) of `data` and hands the encoded partial of each
    /// covering tree node, left to right, to `emit` as soon as it is computed.
    fn run(
        &self,
        params: &[u8],
        data: &ResidentDataset,
        runs: &[Range<u32>],
        emit: &mut dyn FnMut(u32, Vec<u8>),
    ) -> Result<(), WorkerFailure>;
}

struct Erased<J>(J);

impl<J: MapReduce> ErasedJob for Erased<J> {
    fn elem(&self) -> ElemType {
        J::Elem::TYPE
    }

    fn run(
        &self,
        params: &[u8],
        data: &ResidentDataset,
        runs: &[Range<u32>],
        emit: &mut dyn FnMut(u32, Vec<u8>),
    ) -> Result<(), WorkerFailure> {
        let params = J::Params::from_bytes(params).map_err(|e| WorkerFailure::Decode {
            what: format!("parameters of `{}`", J::NAME),
            detail: e.to_string(),
        })?;
        // A range beyond the dataset (or reversed) would take the tree outside its leaves.
        if let Some(bad) = runs.iter().find(|r| r.start > r.end || r.end > data.total_chunks) {
            let chunk = if bad.start > bad.end { bad.start } else { bad.start.max(data.total_chunks) };
            return Err(WorkerFailure::MissingChunk { dataset: crate::data::resident::short_id(&data.id), chunk });
        }
        let tree = Tree::new(data.total_chunks);
        for run in runs {
            for node in tree.cover(run.clone()) {
                let value = tree.eval(
                    node,
                    &mut |chunk| data.shard::<J::Elem>(chunk).map(|shard| self.0.map(&params, &shard)),
                    &mut |a, b| self.0.reduce(a, b),
                )?;
                if let Some(value) = value {
                    emit(node, value.to_bytes());
                }
            }
        }
        Ok(())
    }
}

/// The jobs a program can run, by name. Build it once at start-up, identically in master and workers (they are
/// the same program), and hand it to [`crate::worker::run_if_worker`].
#[derive(Clone)]
pub struct Registry {
    jobs: BTreeMap<&'static str, Arc<dyn ErasedJob>>,
    passes: BTreeMap<&'static str, Arc<dyn ErasedMultipass>>,
    ps: BTreeMap<&'static str, Arc<dyn crate::ps::job::ErasedPsJob>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// A registry holding only cohort's built-in jobs ([`Noop`], used by `bench overhead`).
    pub fn new() -> Self {
        Registry { jobs: BTreeMap::new(), passes: BTreeMap::new(), ps: BTreeMap::new() }.map_reduce(Noop)
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

    /// Registers a parameter-server job.
    ///
    /// # Panics
    /// If another job already uses the same name.
    pub fn parameter_server<J: crate::ps::PsJob>(mut self, job: J) -> Self {
        assert!(!self.names().iter().any(|n| n == J::NAME), "two jobs are registered under the name {:?}", J::NAME);
        self.ps.insert(J::NAME, Arc::new(Arc::new(job)));
        self
    }

    /// Names of all registered jobs, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> =
            self.jobs.keys().chain(self.passes.keys()).chain(self.ps.keys()).map(|s| s.to_string()).collect();
        names.sort();
        names
    }

    pub(crate) fn get_pass(&self, name: &str) -> Option<&Arc<dyn ErasedMultipass>> {
        self.passes.get(name)
    }

    pub(crate) fn get_ps(&self, name: &str) -> Option<&Arc<dyn crate::ps::job::ErasedPsJob>> {
        self.ps.get(name)
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
