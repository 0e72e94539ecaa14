//! Model block scheduling, on the worker: blocks of keys whose accumulated update is small are synchronised less
//! often ("synchronize the parameters in different frequency, based on the magnitude of update").
//!
//! The key space is cut into blocks of `block` consecutive keys. [`BlockFilter`] sits between a worker's gradient
//! computation and its [`ClientCore`](super::ClientCore). "Small" is relative: a block is quiet when its magnitude
//! per key is below `threshold` times the mean over the blocks in play, so one setting means the same thing whatever
//! the model's scale or learning rate (an absolute threshold makes every block quiet once the steps are small, and
//! the model then learns from values many clocks old).
//!
//! - **Pushes.** The worker adds each clock's update to the filter instead of pushing it. At the end of the clock,
//!   [`BlockFilter::take`] returns the blocks to push: those whose accumulated update has a mean magnitude per key
//!   (`sum |Δ| / block length`) of at least `threshold` times the mean of that figure over every block holding an
//!   update, and those holding a contribution `max_period - 1` clocks old. The rest stays accumulated (a residual,
//!   added to later clocks' updates): nothing is dropped, an update is delayed by at most `max_period - 1` clocks,
//!   and [`BlockFilter::flush`] empties everything at the end. A block goes as a dense update when every key of it
//!   was touched, else as a sparse update of the touched keys only, so untouched keys get no rule step (Adam's state
//!   of an untouched key stays as it was).
//! - **Pulls.** Each block has a pull period, 1 at first. After a pull the worker reports the old and new values of
//!   everything it pulled ([`BlockFilter::pulled_ranges`]); a block whose values moved per key and per clock since
//!   its last pull by less than `threshold` times the mean over the blocks of that pull doubles its period (at most
//!   `max_period`), one that moved more goes back to 1. [`BlockFilter::due`] and [`BlockFilter::due_keys`] say what
//!   to pull at a clock; a block not due is read from the worker's copy, at most `max_period - 1` clocks older than
//!   the consistency mode alone would allow.
//!
//! The consistency mode still governs every pull and clock that is sent; block scheduling trades extra staleness
//! on quiet blocks for bytes. `threshold = 0` or `max_period = 1` turns it off.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::error::{PsError, Result};
use super::protocol::Update;

/// Block scheduling settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BlockConfig {
    /// Keys per block (at least 1).
    pub block: u64,
    /// The fraction of the mean over blocks (of the accumulated update per key, for pushes; of the change per key
    /// and clock, for pulls) below which a block is quiet: not pushed yet, pulled less often. Finite, at least 0;
    /// 0.5 holds back blocks with less than half the typical activity.
    pub threshold: f32,
    /// The most clocks a block goes without being pushed (while it holds an update) or pulled. At least 1.
    pub max_period: u32,
}

impl BlockConfig {
    fn validate(&self) -> Result<()> {
        if self.block == 0 {
            return Err(PsError::config("blocks need at least one key"));
        }
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(PsError::config(format!("block threshold {} is not a finite value >= 0", self.threshold)));
        }
        if self.max_period == 0 {
            return Err(PsError::config("block max_period must be at least 1"));
        }
        Ok(())
    }
}

/// What block scheduling saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStats {
    /// Blocks pushed.
    pub pushed: u64,
    /// Times a block holding an update was held back at the end of a clock.
    pub held_back: u64,
    /// Blocks pulled.
    pub pulled: u64,
    /// Times a block was not due for a pull when asked.
    pub not_due: u64,
}

#[derive(Debug, Clone, Default)]
struct Block {
    /// Keys with a residual, in the order first touched.
    touched: Vec<u64>,
    /// Clock of the oldest contribution not pushed yet.
    pending_since: Option<u64>,
    pull_period: u32,
    last_pull: Option<u64>,
}

/// The worker-side block filter. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct BlockFilter {
    config: BlockConfig,
    keys: Range<u64>,
    /// Accumulated, not yet pushed, per key of the model.
    residual: Vec<f32>,
    has_residual: Vec<bool>,
    blocks: Vec<Block>,
    stats: BlockStats,
}

impl BlockFilter {
    /// A filter for the model keys `keys` (the whole model, over all servers). Blocks are aligned to `keys.start`.
    pub fn new(config: BlockConfig, keys: Range<u64>) -> Result<BlockFilter> {
        config.validate()?;
        let n = usize::try_from(keys.end.saturating_sub(keys.start))
            .map_err(|_| PsError::config(format!("the key range {keys:?} does not fit in memory")))?;
        if n == 0 {
            return Err(PsError::config(format!("the key range {keys:?} is empty")));
        }
        let blocks = n.div_ceil(config.block as usize);
        Ok(BlockFilter {
            config,
            keys,
            residual: vec![0.0; n],
            has_residual: vec![false; n],
            blocks: vec![Block { pull_period: 1, ..Block::default() }; blocks],
            stats: BlockStats::default(),
        })
    }

    /// What was saved so far.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// The keys of block `b`.
    pub fn block_keys(&self, b: usize) -> Range<u64> {
        let start = self.keys.start + b as u64 * self.config.block;
        start..(start + self.config.block).min(self.keys.end)
    }

    fn block_of(&self, key: u64) -> usize {
        ((key - self.keys.start) / self.config.block) as usize
    }

    fn check_key(&self, key: u64) -> Result<()> {
        if self.keys.contains(&key) {
            Ok(())
        } else {
            Err(PsError::KeyOutOfRange { key, lo: self.keys.start, hi: self.keys.end })
        }
    }

    /// Accumulates an update computed at `clock`. A key outside the model, or a non-finite value, is an error and
    /// nothing of the update is taken.
    pub fn add(&mut self, clock: u64, update: &Update) -> Result<()> {
        let (keys, values): (Vec<u64>, &[f32]) = match update {
            Update::Dense { range_start, values } => {
                let end = range_start.saturating_add(values.len() as u64);
                if !values.is_empty() {
                    self.check_key(*range_start)?;
                    self.check_key(end - 1)?;
                }
                ((*range_start..end).collect(), values)
            }
            Update::Sparse { keys, values } => {
                if keys.len() != values.len() {
                    return Err(PsError::LengthMismatch { keys: keys.len(), values: values.len() });
                }
                keys.iter().try_for_each(|k| self.check_key(*k))?;
                (keys.clone(), values)
            }
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(PsError::NonFinite { key: keys[i], value: values[i].to_string() });
        }
        for (k, v) in keys.into_iter().zip(values) {
            let off = (k - self.keys.start) as usize;
            let b = self.block_of(k);
            if !self.has_residual[off] {
                self.has_residual[off] = true;
                self.blocks[b].touched.push(k);
            }
            self.residual[off] += v;
            self.blocks[b].pending_since.get_or_insert(clock);
        }
        Ok(())
    }

    /// The updates to push at the end of `clock`: the significant blocks and those that waited long enough.
    pub fn take(&mut self, clock: u64) -> Vec<Update> {
        // Mean absolute residual per key of every block holding one.
        let masses: Vec<(usize, f64)> = (0..self.blocks.len())
            .filter(|&b| self.blocks[b].pending_since.is_some())
            .map(|b| {
                let len = self.block_keys(b).end - self.block_keys(b).start;
                let residual = |k: &u64| self.residual[(k - self.keys.start) as usize].abs() as f64;
                (b, self.blocks[b].touched.iter().map(residual).sum::<f64>() / len as f64)
            })
            .collect();
        let mean = masses.iter().map(|(_, m)| m).sum::<f64>() / masses.len().max(1) as f64;
        let bar = self.config.threshold as f64 * mean;
        let mut out = Vec::new();
        for (b, mass) in masses {
            let since = self.blocks[b].pending_since.expect("filtered on it");
            let overdue = clock.saturating_sub(since) + 1 >= self.config.max_period as u64;
            if mass >= bar || overdue {
                let update = self.emit(b);
                push_merged(&mut out, update);
            } else {
                self.stats.held_back += 1;
            }
        }
        out
    }

    /// Everything still accumulated (at the end of training, or before leaving).
    pub fn flush(&mut self) -> Vec<Update> {
        let pending: Vec<usize> = (0..self.blocks.len()).filter(|b| self.blocks[*b].pending_since.is_some()).collect();
        let mut out = Vec::new();
        for b in pending {
            let update = self.emit(b);
            push_merged(&mut out, update);
        }
        out
    }

    fn emit(&mut self, b: usize) -> Update {
        self.stats.pushed += 1;
        let range = self.block_keys(b);
        let block = &mut self.blocks[b];
        block.pending_since = None;
        let mut keys = std::mem::take(&mut block.touched);
        keys.sort_unstable();
        let mut take = |k: u64| {
            let off = (k - self.keys.start) as usize;
            self.has_residual[off] = false;
            std::mem::take(&mut self.residual[off])
        };
        if keys.len() as u64 == range.end - range.start {
            Update::Dense { range_start: range.start, values: keys.into_iter().map(&mut take).collect() }
        } else {
            let values = keys.iter().map(|k| take(*k)).collect();
            Update::Sparse { keys, values }
        }
    }

    fn is_due(&self, b: usize, clock: u64) -> bool {
        let block = &self.blocks[b];
        block.last_pull.is_none_or(|last| clock >= last + block.pull_period as u64)
    }

    /// The key ranges to pull at `clock` (due blocks, adjacent ones merged), within `within`.
    pub fn due(&mut self, clock: u64, within: Range<u64>) -> Vec<Range<u64>> {
        let (start, end) = (within.start.max(self.keys.start), within.end.min(self.keys.end));
        let mut out: Vec<Range<u64>> = Vec::new();
        if start >= end {
            return out;
        }
        for b in self.block_of(start)..=self.block_of(end - 1) {
            let r = self.block_keys(b);
            let r = r.start.max(start)..r.end.min(end);
            if !self.is_due(b, clock) {
                self.stats.not_due += 1;
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    /// Of `keys`, those whose blocks are due for a pull at `clock` (in the same order). Keys outside the model are
    /// left out.
    pub fn due_keys(&mut self, clock: u64, keys: &[u64]) -> Vec<u64> {
        let mut seen_not_due = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if !self.keys.contains(k) {
                continue;
            }
            let b = self.block_of(*k);
            if self.is_due(b, clock) {
                out.push(*k);
            } else if seen_not_due.insert(b) {
                self.stats.not_due += 1;
            }
        }
        out
    }

    /// Reports a pull at `clock` of `keys` whose values went from `old` (the worker's copy) to `new`: each block
    /// covered gets its next pull period from how much it moved (see the module docs).
    pub fn pulled(&mut self, clock: u64, keys: &[u64], old: &[f32], new: &[f32]) {
        self.pulled_parts(clock, keys.iter().copied().zip(old.iter().zip(new)).map(|(k, (o, n))| (k, *o, *n)));
    }

    /// [`pulled`](Self::pulled) for one pull made of several runs of consecutive keys, each `(start, old, new)`.
    pub fn pulled_ranges(&mut self, clock: u64, runs: &[(u64, &[f32], &[f32])]) {
        let items = runs.iter().flat_map(|(start, old, new)| {
            old.iter().zip(new.iter()).enumerate().map(move |(i, (o, n))| (start + i as u64, *o, *n))
        });
        self.pulled_parts(clock, items);
    }

    fn pulled_parts(&mut self, clock: u64, items: impl Iterator<Item = (u64, f32, f32)>) {
        // Per block: total absolute change and keys seen, then the change per key and per clock since its last pull.
        let mut moved: std::collections::BTreeMap<usize, (f64, u64)> = std::collections::BTreeMap::new();
        for (k, o, n) in items {
            if self.keys.contains(&k) {
                let e = moved.entry(self.block_of(k)).or_default();
                e.0 += (n - o).abs() as f64;
                e.1 += 1;
            }
        }
        let rates: Vec<(usize, f64)> = moved
            .into_iter()
            .map(|(b, (sum, count))| {
                let clocks = self.blocks[b].last_pull.map_or(1, |last| clock.saturating_sub(last).max(1));
                (b, sum / count as f64 / clocks as f64)
            })
            .collect();
        let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / rates.len().max(1) as f64;
        let bar = self.config.threshold as f64 * mean;
        for (b, rate) in rates {
            self.stats.pulled += 1;
            let block = &mut self.blocks[b];
            block.last_pull = Some(clock);
            block.pull_period =
                if rate < bar { (block.pull_period.saturating_mul(2)).min(self.config.max_period) } else { 1 };
        }
    }

    /// [`pulled`](Self::pulled) for the consecutive keys `range_start..`.
    pub fn pulled_range(&mut self, clock: u64, range_start: u64, old: &[f32], new: &[f32]) {
        self.pulled_ranges(clock, &[(range_start, old, new)]);
    }
}

/// Appends `update` (a block after those already in `out`, in key order) to the last update when they join: dense
/// runs that meet become one run, sparse updates one list (still ascending), so the blocks of a clock travel as few
/// requests, not one each.
fn push_merged(out: &mut Vec<Update>, update: Update) {
    match (out.last_mut(), update) {
        (Some(Update::Dense { range_start, values }), Update::Dense { range_start: next, values: more })
            if *range_start + values.len() as u64 == next =>
        {
            values.extend(more);
        }
        (Some(Update::Sparse { keys, values }), Update::Sparse { keys: more_keys, values: more }) => {
            keys.extend(more_keys);
            values.extend(more);
        }
        (_, update) => out.push(update),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn filter(block: u64, threshold: f32, max_period: u32, n: u64) -> BlockFilter {
        BlockFilter::new(BlockConfig { block, threshold, max_period }, 0..n).unwrap()
    }

    fn dense(start: u64, values: &[f32]) -> Update {
        Update::Dense { range_start: start, values: values.to_vec() }
    }

    /// The keys and values of `updates`, in key order.
    fn per_key(updates: &[Update]) -> std::collections::BTreeMap<u64, f32> {
        let mut out = std::collections::BTreeMap::new();
        for u in updates {
            match u {
                Update::Dense { range_start, values } => {
                    for (i, v) in values.iter().enumerate() {
                        *out.entry(range_start + i as u64).or_default() += v;
                    }
                }
                Update::Sparse { keys, values } => {
                    for (k, v) in keys.iter().zip(values) {
                        *out.entry(*k).or_default() += v;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn big_updates_go_every_clock_small_ones_wait_at_most_max_period() {
        let mut f = filter(4, 1.0, 3, 8);
        for clock in 0..6 {
            f.add(clock, &dense(0, &[2.0; 8][..4])).unwrap(); // block 0: mean 2 per clock
            f.add(clock, &dense(4, &[0.1; 4])).unwrap(); // block 1: mean 0.1 per clock
            let out = per_key(&f.take(clock));
            assert!((0..4).all(|k| out[&k] == 2.0), "clock {clock}: {out:?}");
            // Block 1 goes once its oldest contribution is max_period - 1 = 2 clocks old: clocks 2 and 5.
            let block1: Vec<f32> = (4..8).filter_map(|k| out.get(&k).copied()).collect();
            if clock % 3 == 2 {
                assert!(block1.len() == 4 && block1.iter().all(|v| (v - 0.3).abs() < 1e-6), "{out:?}");
            } else {
                assert!(block1.is_empty(), "clock {clock}: {out:?}");
            }
        }
        assert_eq!(f.stats().held_back, 4);
    }

    #[test]
    fn partly_touched_blocks_go_sparse_and_untouched_keys_get_nothing() {
        let mut f = filter(4, 0.0, 1, 8);
        f.add(0, &Update::Sparse { keys: vec![6, 1, 6], values: vec![1.0, 2.0, 3.0] }).unwrap();
        let out = f.take(0);
        // Two blocks' sparse updates, merged into one request.
        assert_eq!(out, vec![Update::Sparse { keys: vec![1, 6], values: vec![2.0, 4.0] }]);
        assert!(f.take(1).is_empty() && f.flush().is_empty());
    }

    #[test]
    fn bad_updates_and_configs_are_errors() {
        let mut f = filter(4, 0.5, 2, 8);
        assert!(matches!(f.add(0, &dense(6, &[1.0; 3])), Err(PsError::KeyOutOfRange { key: 8, .. })));
        assert!(matches!(f.add(0, &dense(0, &[f32::NAN])), Err(PsError::NonFinite { key: 0, .. })));
        let bad = Update::Sparse { keys: vec![1], values: vec![] };
        assert!(matches!(f.add(0, &bad), Err(PsError::LengthMismatch { .. })));
        assert!(f.flush().is_empty(), "a refused update leaves nothing behind");
        for (c, why) in [
            (BlockConfig { block: 0, threshold: 0.0, max_period: 1 }, "at least one key"),
            (BlockConfig { block: 1, threshold: -1.0, max_period: 1 }, "threshold"),
            (BlockConfig { block: 1, threshold: 0.0, max_period: 0 }, "max_period"),
        ] {
            assert!(BlockFilter::new(c, 0..4).unwrap_err().to_string().contains(why));
        }
        assert!(BlockFilter::new(BlockConfig { block: 1, threshold: 0.0, max_period: 1 }, 3..3).is_err());
    }

    #[test]
    fn quiet_blocks_are_pulled_less_often_and_busy_ones_every_clock() {
        let mut f = filter(2, 0.5, 4, 4);
        let mut pulls = [Vec::new(), Vec::new()];
        for clock in 0..12 {
            for r in f.due(clock, 0..4) {
                for b in (r.start / 2)..r.end.div_ceil(2) {
                    pulls[b as usize].push(clock);
                }
                let old = vec![0.0; (r.end - r.start) as usize];
                // Keys 0..2 move by 1 each pull; keys 2..4 by 0.1.
                let new: Vec<f32> = (r.start..r.end).map(|k| if k < 2 { 1.0 } else { 0.1 }).collect();
                f.pulled_range(clock, r.start, &old, &new);
            }
        }
        assert_eq!(pulls[0], (0..12).collect::<Vec<_>>());
        assert_eq!(pulls[1], vec![0, 2, 6, 10], "period 1, 2, 4, 4");
        assert_eq!(f.due_keys(12, &[3, 0, 2, 9]), vec![0]);
    }

    /// Quiet is relative to the other blocks: the same updates scaled by 10⁻⁶ or 10⁶ are held back and pulled alike.
    #[test]
    fn the_threshold_is_relative_so_the_scale_of_the_updates_does_not_matter() {
        let schedule = |scale: f32| {
            let mut f = filter(4, 0.5, 4, 16);
            let mut pushes = Vec::new();
            let mut periods = Vec::new();
            for clock in 0..8 {
                // Block b moves by (b + 1)³ / 64 a key: blocks 0 and 1 are quiet beside 2 and 3.
                let values: Vec<f32> = (0..16).map(|k| scale * ((k / 4 + 1) as f32).powi(3) / 64.0).collect();
                f.add(clock, &dense(0, &values)).unwrap();
                let mut sent: Vec<u64> = per_key(&f.take(clock)).keys().map(|k| k / 4).collect();
                sent.dedup();
                pushes.push(sent);
                let old = vec![0.0; 16];
                f.pulled_range(clock, 0, &old, &values);
                periods.push(f.blocks.iter().map(|b| b.pull_period).collect::<Vec<_>>());
            }
            (pushes, periods)
        };
        let (pushes, periods) = schedule(1.0);
        assert_eq!(pushes[0], vec![2, 3], "the busy blocks go at once");
        assert!(pushes.iter().flatten().filter(|&&b| b == 0).count() < 8, "block 0 is held back: {pushes:?}");
        assert_eq!(periods[0], vec![2, 2, 1, 1], "quiet blocks are pulled less often");
        assert_eq!(schedule(1e-6), (pushes.clone(), periods.clone()));
        assert_eq!(schedule(1e6), (pushes, periods));
    }

    /// With a client and a server: quiet blocks cost fewer bytes, and once flushed the model is the same.
    #[test]
    fn a_worker_pushes_fewer_bytes_and_ends_with_the_same_model() {
        use crate::ps::{ClientCore, Consistency, ServerConfig, ServerCore, Sgd};
        let run = |filtered: bool| {
            let config = ServerConfig::new(0..64, 1, Consistency::Async);
            let mut server = ServerCore::new(config, Box::new(Sgd { lr: 1.0 }), vec![0.0; 64]).unwrap();
            let mut client = ClientCore::new(0, vec![0, 64]).unwrap();
            let mut f = filter(8, 0.5, 5, 64);
            let t = std::time::Duration::ZERO;
            for clock in 0..20 {
                // Keys 0..32 move by 1 a clock, keys 32..64 by 0.25.
                let values: Vec<f32> = (0..64).map(|k| if k < 32 { 1.0 } else { 0.25 }).collect();
                let update = Update::Dense { range_start: 0, values };
                let updates = if filtered {
                    f.add(clock, &update).unwrap();
                    f.take(clock)
                } else {
                    vec![update]
                };
                let mut requests = Vec::new();
                for u in updates {
                    requests.extend(client.push(u).unwrap());
                }
                requests.extend(client.advance());
                for (_, r) in requests {
                    server.handle(r, t);
                }
            }
            for u in f.flush() {
                for (_, r) in client.push(u).unwrap() {
                    server.handle(r, t);
                }
            }
            (server.params().to_vec(), server.metrics().push_in.bytes)
        };
        let (plain, plain_bytes) = run(false);
        let (blocked, blocked_bytes) = run(true);
        assert_eq!(plain, blocked);
        // Busy blocks every clock, quiet ones every second clock: 3/4 of the bytes.
        assert_eq!((plain_bytes, blocked_bytes), (20 * 64 * 4, 20 * 32 * 4 + 10 * 32 * 4));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever the updates: every contribution is pushed exactly once (integers, so sums are exact), within
        /// max_period - 1 clocks.
        #[test]
        fn nothing_is_lost_and_nothing_waits_too_long(
            block in 1u64..6,
            n in 1u64..20,
            max_period in 1u32..5,
            threshold in 0u32..4,
            clocks in prop::collection::vec(prop::collection::vec((0u64..20, -3i32..4), 0..8), 1..10),
        ) {
            let mut f = filter(block, threshold as f32, max_period, n);
            let mut added = vec![0i64; n as usize];
            let mut pushed = vec![0i64; n as usize];
            // Per key, the clocks of contributions not yet pushed.
            let mut waiting: Vec<Vec<u64>> = vec![Vec::new(); n as usize];
            let credit = |u: &Update, waiting: &mut Vec<Vec<u64>>, pushed: &mut Vec<i64>| {
                let (keys, values): (Vec<u64>, Vec<f32>) = match u {
                    Update::Dense { range_start, values } =>
                        ((*range_start..*range_start + values.len() as u64).collect(), values.clone()),
                    Update::Sparse { keys, values } => (keys.clone(), values.clone()),
                };
                for (k, v) in keys.iter().zip(values) {
                    pushed[*k as usize] += v as i64;
                    waiting[*k as usize].clear();
                }
            };
            for (clock, ups) in clocks.iter().enumerate() {
                let clock = clock as u64;
                for (k, v) in ups {
                    let k = k % n;
                    f.add(clock, &Update::Sparse { keys: vec![k], values: vec![*v as f32] }).unwrap();
                    added[k as usize] += *v as i64;
                    waiting[k as usize].push(clock);
                }
                for u in f.take(clock) {
                    credit(&u, &mut waiting, &mut pushed);
                }
                for w in &waiting {
                    if let Some(first) = w.first() {
                        prop_assert!(clock - first + 1 < max_period as u64, "a contribution waited too long");
                    }
                }
            }
            for u in f.flush() {
                credit(&u, &mut waiting, &mut pushed);
            }
            prop_assert_eq!(added, pushed);
        }
    }
}
