//! The job a parameter-server run trains: what a user writes ([`PsJob`]: which keys a mini-batch needs, and its
//! gradient), the mini-batches a worker draws from its resident rows ([`Sampler`]), and the type-erased form a worker
//! process finds in its registry.
//!
//! A worker's mini-batch at clock `c` is a pure function of the run's seed, the worker's index and `c`: local epoch
//! `e = c / batches_per_epoch` visits the worker's rows in the order of the identity permutation shuffled by a
//! generator derived from `(seed, worker, e)`. So a worker that replaces a lost one at the same index, over the same
//! chunks, draws exactly the batches the lost one would have.

use std::ops::Range;

use crate::data::resident::ResidentDataset;
use crate::data::Element;
use crate::ps::protocol::Selection;
use crate::rng::Rng;
use crate::wire::{ElemType, Payload, WorkerFailure};

/// The rows of one mini-batch, gathered contiguously.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a, T> {
    /// Values, row-major, `rows() * cols` of them.
    pub values: &'a [T],
    /// One label per row, if the data set has labels.
    pub labels: Option<&'a [T]>,
    /// Values per row.
    pub cols: usize,
}

impl<T> Batch<'_, T> {
    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.cols).unwrap_or(0)
    }
}

/// What a worker learned from one mini-batch, summed over its rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchStats {
    /// Σ loss over the rows (at the parameters read).
    pub loss_sum: f64,
    /// Rows classified correctly (0 where that means nothing).
    pub correct: u64,
    /// Rows.
    pub rows: u64,
}

impl BatchStats {
    /// Adds another batch's figures.
    pub fn add(&mut self, other: BatchStats) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.rows += other.rows;
    }
}

/// A model trained through parameter servers. Workers own the loop: each clock they draw a mini-batch from their
/// resident rows, pull the keys it needs, compute the gradient, and push it; the servers apply the update rule under
/// the run's consistency mode. You write which keys a batch needs and its gradient, nothing else.
///
/// ```
/// use cohort::ps::{job::{Batch, BatchStats, PsJob}, Selection};
///
/// /// Least squares: one weight per column.
/// struct Linear;
///
/// impl PsJob for Linear {
///     const NAME: &'static str = "example.ps_linear";
///     type Elem = f32;
///     type Config = u64; // number of columns
///
///     fn num_params(&self, cols: &u64) -> u64 { *cols }
///     fn init(&self, cols: &u64, _seed: u64) -> Vec<f32> { vec![0.0; *cols as usize] }
///     fn keys(&self, cols: &u64, _batch: &Batch<'_, f32>) -> Selection { Selection::Range { start: 0, end: *cols } }
///     fn gradient(&self, _: &u64, w: &[f32], _: &Selection, b: &Batch<'_, f32>, g: &mut [f32]) -> Result<BatchStats, String> {
///         let labels = b.labels.ok_or("no labels")?;
///         let mut loss = 0.0;
///         for (r, row) in b.values.chunks_exact(b.cols).enumerate() {
///             let err = row.iter().zip(w).map(|(x, w)| x * w).sum::<f32>() - labels[r];
///             loss += f64::from(err * err) / 2.0;
///             for (g, x) in g.iter_mut().zip(row) { *g += err * x / b.rows() as f32; }
///         }
///         Ok(BatchStats { loss_sum: loss, correct: 0, rows: b.rows() as u64 })
///     }
/// }
/// ```
pub trait PsJob: Send + Sync + 'static {
    /// Stable name, unique within the program.
    const NAME: &'static str;
    /// Element type of the data set.
    type Elem: Element;
    /// The model's settings (layer sizes, regularisation ...), sent to every worker with the run.
    type Config: Payload + Clone + Send + Sync;

    /// Length of the parameter vector (keys `0..num_params`).
    fn num_params(&self, config: &Self::Config) -> u64;

    /// Initial parameters (on the master).
    fn init(&self, config: &Self::Config, seed: u64) -> Vec<f32>;

    /// The keys a mini-batch reads and updates: a range (all of a dense model) or a sorted list without repeats.
    fn keys(&self, config: &Self::Config, batch: &Batch<'_, Self::Elem>) -> Selection;

    /// Adds the gradient of the batch's mean loss with respect to `params` (the values of `keys`, in their order)
    /// into `grad` (zeroed, same length), and returns the batch's figures. An `Err` (bad data) stops the run with
    /// the message.
    fn gradient(
        &self,
        config: &Self::Config,
        params: &[f32],
        keys: &Selection,
        batch: &Batch<'_, Self::Elem>,
        grad: &mut [f32],
    ) -> Result<BatchStats, String>;
}

/// Draws a worker's mini-batches: a pure function of `(seed, worker, clock)` over the worker's rows.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    worker: u32,
    rows: usize,
    batch: usize,
    epoch: Option<u64>,
    order: Vec<u32>,
}

impl Sampler {
    /// A sampler of batches of `batch` rows over `rows` rows.
    pub fn new(seed: u64, worker: u32, rows: usize, batch: usize) -> Sampler {
        Sampler { seed, worker, rows, batch: batch.max(1), epoch: None, order: Vec::new() }
    }

    /// Batches in one pass over the rows.
    pub fn batches_per_epoch(&self) -> u64 {
        self.rows.div_ceil(self.batch).max(1) as u64
    }

    /// Row indices (into the worker's rows) of the batch of `clock`.
    pub fn batch(&mut self, clock: u64) -> &[u32] {
        let per = self.batches_per_epoch();
        let (epoch, b) = (clock / per, (clock % per) as usize);
        if self.epoch != Some(epoch) {
            self.order = (0..self.rows as u32).collect();
            let stream = 0x7073_6261_7463_6800 ^ (u64::from(self.worker) << 40) ^ epoch;
            Rng::derive(self.seed, stream).shuffle(&mut self.order);
            self.epoch = Some(epoch);
        }
        let start = (b * self.batch).min(self.rows);
        let end = ((b + 1) * self.batch).min(self.rows);
        &self.order[start..end]
    }
}

/// A batch gathered by a type-erased job, ready for its gradient.
pub(crate) trait Prepared {
    /// The keys it reads and updates.
    fn keys(&self) -> &Selection;
    /// Its gradient at `params` (the values of [`keys`](Self::keys)), written into `grad`.
    fn gradient(&mut self, params: &[f32], grad: &mut Vec<f32>) -> Result<BatchStats, WorkerFailure>;
}

/// A registered parameter-server job with its types erased, as a worker sees it.
pub(crate) trait ErasedPsJob: Send + Sync {
    fn elem(&self) -> ElemType;
    /// Gathers rows `rows` (indices into the rows of `chunks`, in chunk order) of `data` into a batch.
    fn prepare(
        &self,
        config: &[u8],
        data: &ResidentDataset,
        chunks: &[Range<u32>],
        rows: &[u32],
    ) -> Result<Box<dyn Prepared>, WorkerFailure>;
    /// Rows held in `chunks`.
    fn rows(&self, data: &ResidentDataset, chunks: &[Range<u32>]) -> usize {
        chunks.iter().map(|r| data.rows_in(r.clone()) as usize).sum()
    }
}

struct PreparedBatch<J: PsJob> {
    job: std::sync::Arc<J>,
    config: J::Config,
    keys: Selection,
    values: Vec<J::Elem>,
    labels: Option<Vec<J::Elem>>,
    cols: usize,
}

impl<J: PsJob> Prepared for PreparedBatch<J> {
    fn keys(&self) -> &Selection {
        &self.keys
    }

    fn gradient(&mut self, params: &[f32], grad: &mut Vec<f32>) -> Result<BatchStats, WorkerFailure> {
        grad.clear();
        grad.resize(params.len(), 0.0);
        let batch = Batch { values: &self.values, labels: self.labels.as_deref(), cols: self.cols };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.job.gradient(&self.config, params, &self.keys, &batch, grad)
        }))
        .unwrap_or_else(|p| Err(crate::error::panic_message(&p)))
        .map_err(|message| WorkerFailure::Panicked { message })
    }
}

impl<J: PsJob> ErasedPsJob for std::sync::Arc<J> {
    fn elem(&self) -> ElemType {
        J::Elem::TYPE
    }

    fn prepare(
        &self,
        config: &[u8],
        data: &ResidentDataset,
        chunks: &[Range<u32>],
        rows: &[u32],
    ) -> Result<Box<dyn Prepared>, WorkerFailure> {
        let config = J::Config::from_bytes(config).map_err(|e| WorkerFailure::Decode {
            what: format!("configuration of `{}`", J::NAME),
            detail: e.to_string(),
        })?;
        // Where each chunk's rows start among the worker's rows.
        let mut starts = Vec::new();
        let mut shards = Vec::new();
        let mut total = 0usize;
        for c in chunks.iter().cloned().flatten() {
            let s = data.shard::<J::Elem>(c)?;
            starts.push(total);
            total += s.rows();
            shards.push(s);
        }
        let cols = data.cols as usize;
        let mut values = Vec::with_capacity(rows.len() * cols);
        let has_labels = shards.iter().all(|s| s.labels.is_some()) && !shards.is_empty();
        let mut labels = has_labels.then(|| Vec::with_capacity(rows.len()));
        for &r in rows {
            let r = r as usize;
            let s = starts.partition_point(|&start| start <= r).saturating_sub(1);
            let local = r - starts[s];
            values.extend_from_slice(shards[s].row(local));
            if let (Some(l), Some(sl)) = (&mut labels, shards[s].labels) {
                l.push(sl[local]);
            }
        }
        let batch = Batch { values: &values, labels: labels.as_deref(), cols };
        let keys = self.keys(&config, &batch);
        Ok(Box::new(PreparedBatch { job: std::sync::Arc::clone(self), config, keys, values, labels, cols }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_a_function_of_seed_worker_and_clock() {
        let mut a = Sampler::new(7, 2, 10, 4);
        assert_eq!(a.batches_per_epoch(), 3);
        let epoch0: Vec<u32> = (0..3).flat_map(|c| a.batch(c).to_vec()).collect();
        let mut sorted = epoch0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>(), "an epoch visits every row once");
        // Another sampler, asked out of order, agrees.
        let mut b = Sampler::new(7, 2, 10, 4);
        assert_eq!(b.batch(4).to_vec(), a.batch(4).to_vec());
        assert_eq!(b.batch(1).to_vec(), epoch0[4..8].to_vec());
        // Another worker or epoch shuffles differently.
        assert_ne!(Sampler::new(7, 3, 10, 4).batch(0).to_vec(), epoch0[..4].to_vec());
        assert_ne!(a.batch(3).to_vec(), epoch0[..4].to_vec());
    }
}
