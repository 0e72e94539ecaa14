//! Jobs for the parameter server compiled into the binary: least squares (a small dense model, for tests and the
//! library example's shape) and a counter whose every push adds exactly one to each key it touches, so a run's
//! final parameters count the pushes applied — how the tests check that no acknowledged update is lost or applied
//! twice when a server fails over.

use cohort::ps::{Batch, BatchStats, PsJob, Selection};

/// Least squares on rows `[x…]` with the target as label: one weight per column plus a bias.
#[derive(Debug, Clone, Copy, Default)]
pub struct PsLinear;

impl PsJob for PsLinear {
    const NAME: &'static str = "ps.linear";
    type Elem = f64;
    /// Columns of the data.
    type Config = u64;

    fn num_params(&self, cols: &u64) -> u64 {
        cols + 1
    }

    fn init(&self, cols: &u64, _seed: u64) -> Vec<f32> {
        vec![0.0; *cols as usize + 1]
    }

    fn keys(&self, cols: &u64, _batch: &Batch<'_, f64>) -> Selection {
        Selection::Range { start: 0, end: cols + 1 }
    }

    fn gradient(
        &self,
        cols: &u64,
        w: &[f32],
        _: &Selection,
        b: &Batch<'_, f64>,
        g: &mut [f32],
    ) -> Result<BatchStats, String> {
        let labels = b.labels.ok_or("ps.linear needs a target per row (labels)")?;
        if b.cols as u64 != *cols {
            return Err(format!("rows have {} values, the model {cols}", b.cols));
        }
        let n = b.rows().max(1) as f64;
        let mut loss = 0.0;
        for (r, row) in b.values.chunks_exact(b.cols).enumerate() {
            let pred: f64 = row.iter().zip(w).map(|(x, w)| x * f64::from(*w)).sum::<f64>() + f64::from(w[b.cols]);
            let err = pred - labels[r];
            loss += err * err / 2.0;
            for (gi, x) in g.iter_mut().zip(row) {
                *gi += (err * x / n) as f32;
            }
            g[b.cols] += (err / n) as f32;
        }
        Ok(BatchStats { loss_sum: loss, correct: 0, rows: b.rows() as u64 })
    }
}

/// Mean squared error of least-squares weights `w` (one per column, then the bias) on `data`.
pub fn linear_mse(data: &cohort::Dataset<f64>, w: &[f32]) -> f64 {
    let (x, cols) = (data.values(), data.cols());
    let Some(y) = data.labels() else { return f64::NAN };
    if w.len() != cols + 1 || data.rows() == 0 {
        return f64::NAN;
    }
    let mut s = 0.0;
    for (r, row) in x.chunks_exact(cols).enumerate() {
        let p: f64 = row.iter().zip(w).map(|(a, b)| a * f64::from(*b)).sum::<f64>() + f64::from(w[cols]);
        s += (p - y[r]).powi(2);
    }
    s / data.rows() as f64
}

/// Counts pushes: every push has gradient −1 on each key it touches, so under SGD with learning rate 1 a key's value
/// is the number of pushes that touched it. Dense (every key, every push) or sparse (the keys `value mod n` of the
/// batch's first column).
#[derive(Debug, Clone, Copy, Default)]
pub struct PsCounter;

impl PsJob for PsCounter {
    const NAME: &'static str = "ps.counter";
    type Elem = f64;
    /// (keys, sparse).
    type Config = (u64, u8);

    fn num_params(&self, c: &(u64, u8)) -> u64 {
        c.0
    }

    fn init(&self, c: &(u64, u8), _seed: u64) -> Vec<f32> {
        vec![0.0; c.0 as usize]
    }

    fn keys(&self, c: &(u64, u8), batch: &Batch<'_, f64>) -> Selection {
        if c.1 == 0 {
            return Selection::Range { start: 0, end: c.0 };
        }
        let mut keys: Vec<u64> =
            batch.values.chunks_exact(batch.cols.max(1)).map(|row| (row[0].abs() as u64) % c.0).collect();
        keys.sort_unstable();
        keys.dedup();
        Selection::Keys(keys)
    }

    fn gradient(
        &self,
        _: &(u64, u8),
        _: &[f32],
        _: &Selection,
        b: &Batch<'_, f64>,
        g: &mut [f32],
    ) -> Result<BatchStats, String> {
        g.fill(-1.0);
        Ok(BatchStats { loss_sum: 0.0, correct: 0, rows: b.rows() as u64 })
    }
}
