//! Sparse rows kept in cohort's dense, chunked [`Dataset`] without changing the framework: each row is encoded as
//! a fixed-width dense row, and [`SparseRows`] reads a [`Shard`] of such rows back without copying.
//!
//! # Layout
//!
//! A data set whose rows have at most `W` non-zeros (the *width*) is a `Dataset<f32>` with `1 + 2W` columns:
//!
//! ```text
//! column   0     1 ..= W                 W+1 ..= 2W
//!          nnz   key_0 … key_{nnz−1} 0…  value_0 … value_{nnz−1} 0…
//! ```
//!
//! and the class in the dataset's labels (`1.0` positive, `0.0` negative). Keys are 0-based feature indices,
//! strictly increasing along a row; the padding after the `nnz` used places is zero and never read. Keys and values
//! are separate blocks so that a row's keys and values are two contiguous slices.
//!
//! **Why `f32` with keys below 2²⁴.** A non-zero costs 8 bytes (key and value) in `f32` against 16 in `f64`, so
//! the resident data set takes about what its libsvm text takes, and half what `f64` would. `f32` holds every whole
//! number up to 2²⁴ = 16 777 216 exactly, which covers data sets of "millions of features" (the generator's default
//! is 2²² features); values are `f32` anyway. A key space beyond 2²⁴ would need hashing into 2²⁴ buckets or the
//! `f64` variant of this layout.
//!
//! Padding every row to the widest costs `W / mean nnz` extra: the generator draws row lengths within ±25 % of the
//! mean, so about 1.25×.

use std::ops::Range;

use cohort::{Dataset, Shard};

use crate::error::{MlError, Result};

/// Keys must be below this (2²⁴): the encoding holds keys as `f32` values, exact up to here.
pub const MAX_FEATURES: usize = 1 << 24;

/// Values per encoded row for rows of at most `width` non-zeros: `1 + 2·width`.
pub fn encoded_cols(width: usize) -> usize {
    1 + 2 * width
}

/// An encoded sparse data set: the dense dataset to load onto a cluster, and what it holds.
#[derive(Debug, Clone)]
pub struct SparseDataset {
    /// The encoded rows (see the [module docs](self)), labels `0.0`/`1.0`.
    pub data: Dataset<f32>,
    /// Non-zeros per row at most (the padding width `W`).
    pub width: usize,
    /// Number of features: keys are below it (the count given when loading, or one more than the largest key).
    pub features: usize,
    /// Non-zeros over all rows.
    pub nonzeros: u64,
}

impl SparseDataset {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.rows()
    }

    /// Bytes the encoded values and labels take in memory (what a worker keeps resident for all chunks).
    pub fn resident_bytes(&self) -> u64 {
        ((self.data.values().len() + self.rows()) * std::mem::size_of::<f32>()) as u64
    }

    /// A view of all rows (for sequential baselines and evaluation on the master).
    pub fn rows_view(&self) -> Result<SparseRows<'_>> {
        SparseRows::new(&self.data.as_shard())
    }
}

/// Builds an encoded data set row by row.
#[derive(Debug, Clone)]
pub struct SparseBuilder {
    width: usize,
    values: Vec<f32>,
    labels: Vec<f32>,
    features: usize,
    nonzeros: u64,
}

impl SparseBuilder {
    /// A builder for rows of at most `width ≥ 1` non-zeros.
    pub fn new(width: usize) -> Result<SparseBuilder> {
        if width == 0 || width > MAX_FEATURES {
            return Err(MlError::Config {
                what: "sparse padding width",
                detail: format!("{width}: need 1 ..= {MAX_FEATURES} non-zeros per row"),
            });
        }
        Ok(SparseBuilder { width, values: Vec::new(), labels: Vec::new(), features: 0, nonzeros: 0 })
    }

    /// Reserves room for `rows` more rows.
    pub fn reserve(&mut self, rows: usize) {
        self.values.reserve(rows.saturating_mul(encoded_cols(self.width)));
        self.labels.reserve(rows);
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Appends a row: its class, its keys (strictly increasing, below [`MAX_FEATURES`]) and their values (finite).
    /// A row with more non-zeros than the width, or with bad keys or values, is an error naming the row (0-based,
    /// in push order).
    pub fn push(&mut self, positive: bool, keys: &[u64], values: &[f32]) -> Result<()> {
        let row = self.labels.len() as u64;
        let bad = |detail: String| MlError::SparseRow { row, detail };
        if keys.len() != values.len() {
            return Err(bad(format!("{} keys but {} values", keys.len(), values.len())));
        }
        if keys.len() > self.width {
            return Err(bad(format!(
                "{} non-zeros, more than the padding width {}; encode with a width of at least {}",
                keys.len(),
                self.width,
                keys.len()
            )));
        }
        for (j, &k) in keys.iter().enumerate() {
            if k >= MAX_FEATURES as u64 {
                return Err(bad(format!(
                    "key {k} is not below 2^24 = {MAX_FEATURES}, the most the f32 encoding holds exactly"
                )));
            }
            if j > 0 && k <= keys[j - 1] {
                return Err(bad(format!("key {k} follows {}; keys must increase along a row", keys[j - 1])));
            }
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(bad(format!("value {v} is not finite")));
        }
        let w = self.width;
        let start = self.values.len();
        self.values.resize(start + encoded_cols(w), 0.0);
        let encoded = &mut self.values[start..];
        encoded[0] = keys.len() as f32;
        for (slot, &k) in encoded[1..=w].iter_mut().zip(keys) {
            *slot = k as f32;
        }
        encoded[1 + w..1 + w + values.len()].copy_from_slice(values);
        self.labels.push(if positive { 1.0 } else { 0.0 });
        self.nonzeros += keys.len() as u64;
        if let Some(&last) = keys.last() {
            self.features = self.features.max(last as usize + 1);
        }
        Ok(())
    }

    /// The data set; `features` is one more than the largest key pushed unless a larger count is given.
    pub fn finish(self, features: Option<usize>) -> Result<SparseDataset> {
        if let Some(f) = features.filter(|&f| f < self.features) {
            return Err(MlError::Config {
                what: "feature count",
                detail: format!("{f} given, but a row holds key {}", self.features - 1),
            });
        }
        let data = Dataset::new(self.values, encoded_cols(self.width))?.with_labels(self.labels)?;
        Ok(SparseDataset {
            data,
            width: self.width,
            features: features.unwrap_or(self.features),
            nonzeros: self.nonzeros,
        })
    }
}

/// A zero-copy view of encoded sparse rows: a [`Shard`] (one chunk on a worker, or a whole data set) read as
/// (label, keys, values) per row.
///
/// Creating the view checks only the shape; each row is checked when it is read ([`row`](Self::row)), so a worker
/// that reads a mini-batch pays for those rows only. A malformed row is an error naming it (its index in the whole
/// data set), never a panic.
#[derive(Debug, Clone, Copy)]
pub struct SparseRows<'a> {
    values: &'a [f32],
    labels: &'a [f32],
    width: usize,
    first_row: u64,
}

impl<'a> SparseRows<'a> {
    /// Reads `shard` as encoded sparse rows: `1 + 2W` columns for some `W ≥ 1`, one label per row.
    pub fn new(shard: &Shard<'a, f32>) -> Result<SparseRows<'a>> {
        let cols = shard.cols;
        if cols < 3 || cols.is_multiple_of(2) {
            return Err(MlError::Config {
                what: "sparse encoding",
                detail: format!(
                    "rows of {cols} values are not [nnz, W keys, W values] (1 + 2W values for W ≥ 1); load the data \
                     with cohort_ml::sparse::load_libsvm_sparse"
                ),
            });
        }
        let labels = shard.labels.ok_or(MlError::NoLabels { model: "sparse logistic regression" })?;
        if !shard.values.len().is_multiple_of(cols) || labels.len() != shard.values.len() / cols {
            return Err(MlError::Length {
                what: "labels of the sparse rows",
                expected: shard.values.len() / cols,
                got: labels.len(),
                hint: "give one label per row",
            });
        }
        Ok(SparseRows { values: shard.values, labels, width: (cols - 1) / 2, first_row: shard.first_row })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The padding width `W`: non-zeros per row at most.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Index of the first row in the whole data set.
    pub fn first_row(&self) -> u64 {
        self.first_row
    }

    /// Row `i` of the view (0-based), checked: `nnz` a whole number in `0..=W`, keys whole numbers below
    /// [`MAX_FEATURES`] and strictly increasing, values finite, label `0` or `1`.
    pub fn row(&self, i: usize) -> Result<SparseRow<'a>> {
        let row = self.first_row + i as u64;
        let bad = |detail: String| MlError::SparseRow { row, detail };
        if i >= self.len() {
            return Err(bad(format!("out of range: the view holds {} rows", self.len())));
        }
        let w = self.width;
        let encoded = &self.values[i * (1 + 2 * w)..(i + 1) * (1 + 2 * w)];
        let nnz = encoded[0];
        if !(nnz >= 0.0 && nnz <= w as f32 && nnz.fract() == 0.0) {
            return Err(bad(format!("non-zero count {nnz} is not a whole number in 0..={w}")));
        }
        let n = nnz as usize;
        let keys = &encoded[1..1 + n];
        let values = &encoded[1 + w..1 + w + n];
        let mut previous = -1.0f32;
        for &k in keys {
            if !(k >= 0.0 && k < MAX_FEATURES as f32 && k.fract() == 0.0) {
                return Err(bad(format!("key {k} is not a whole number in 0..2^24")));
            }
            if k <= previous {
                return Err(bad(format!("key {k} follows {previous}; keys must increase along a row")));
            }
            previous = k;
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(bad(format!("value {v} is not finite")));
        }
        let label = self.labels[i];
        if label != 0.0 && label != 1.0 {
            return Err(bad(format!("label {label} is not 0 or 1")));
        }
        Ok(SparseRow { row, positive: label == 1.0, keys, values })
    }

    /// Every row, in order.
    pub fn iter(&self) -> impl Iterator<Item = Result<SparseRow<'a>>> + '_ {
        (0..self.len()).map(|i| self.row(i))
    }

    /// Rows `range` (indices of this view) as a mini-batch.
    pub fn batch(&self, range: Range<usize>) -> Result<Vec<SparseRow<'a>>> {
        range.map(|i| self.row(i)).collect()
    }

    /// The rows at `indices` (of this view) as a mini-batch, in that order.
    pub fn gather(&self, indices: &[usize]) -> Result<Vec<SparseRow<'a>>> {
        indices.iter().map(|&i| self.row(i)).collect()
    }
}

/// One checked sparse row, borrowed from the resident data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseRow<'a> {
    row: u64,
    positive: bool,
    keys: &'a [f32],
    values: &'a [f32],
}

impl<'a> SparseRow<'a> {
    /// Index of the row in the whole data set.
    pub fn index(&self) -> u64 {
        self.row
    }

    /// Whether the row is of the positive class.
    pub fn positive(&self) -> bool {
        self.positive
    }

    /// The label as a number: `1.0` positive, `0.0` negative.
    pub fn label(&self) -> f64 {
        if self.positive {
            1.0
        } else {
            0.0
        }
    }

    /// Number of non-zeros.
    pub fn nnz(&self) -> usize {
        self.keys.len()
    }

    /// Key `j` (`j < nnz`).
    pub fn key(&self, j: usize) -> u64 {
        self.keys[j] as u64
    }

    /// The keys, increasing.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = u64> + 'a {
        self.keys.iter().map(|&k| k as u64)
    }

    /// The values, in key order.
    pub fn values(&self) -> &'a [f32] {
        self.values
    }

    /// `(key, value)` pairs in key order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (u64, f32)> + 'a {
        self.keys.iter().zip(self.values).map(|(&k, &v)| (k as u64, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_rows() -> SparseDataset {
        let mut b = SparseBuilder::new(3).unwrap();
        b.push(true, &[2, 7, 9], &[0.5, 1.0, -2.0]).unwrap();
        b.push(false, &[4], &[3.0]).unwrap();
        b.finish(Some(12)).unwrap()
    }

    #[test]
    fn rows_are_laid_out_and_read_back() {
        let set = two_rows();
        assert_eq!((set.rows(), set.width, set.features, set.nonzeros), (2, 3, 12, 4));
        assert_eq!(set.data.cols(), 7);
        assert_eq!(set.data.values(), &[3.0, 2.0, 7.0, 9.0, 0.5, 1.0, -2.0, 1.0, 4.0, 0.0, 0.0, 3.0, 0.0, 0.0]);
        assert_eq!(set.data.labels().unwrap(), &[1.0, 0.0]);
        assert_eq!(set.resident_bytes(), 16 * 4);
        let view = set.rows_view().unwrap();
        assert_eq!((view.len(), view.width(), view.first_row()), (2, 3, 0));
        let r = view.row(0).unwrap();
        assert!(r.positive() && r.label() == 1.0);
        assert_eq!(r.entries().collect::<Vec<_>>(), [(2, 0.5), (7, 1.0), (9, -2.0)]);
        let r = view.row(1).unwrap();
        assert_eq!((r.index(), r.positive(), r.nnz(), r.key(0), r.values()), (1, false, 1, 4, &[3.0f32][..]));
        assert_eq!(view.batch(0..2).unwrap().len(), 2);
        assert_eq!(view.gather(&[1, 0]).unwrap()[0].index(), 1);
        // A chunk of the data set: row indices stay global.
        let chunked = set.data.clone().with_chunks(2).unwrap();
        let shard = chunked.shard(1);
        let view = SparseRows::new(&shard).unwrap();
        assert_eq!(view.row(0).unwrap().index(), 1);
        assert!(matches!(view.row(1), Err(MlError::SparseRow { row: 2, .. })));
    }

    #[test]
    fn bad_rows_are_refused_naming_the_row() {
        let mut b = SparseBuilder::new(2).unwrap();
        b.push(true, &[1], &[1.0]).unwrap();
        let e = b.push(true, &[1, 2, 3], &[1.0; 3]).unwrap_err();
        assert!(e.to_string().starts_with("sparse row 1: 3 non-zeros, more than the padding width 2"), "{e}");
        assert!(b.push(true, &[3, 3], &[1.0; 2]).unwrap_err().to_string().contains("keys must increase"));
        assert!(b.push(true, &[1 << 24], &[1.0]).unwrap_err().to_string().contains("2^24"));
        assert!(b.push(true, &[1], &[f32::NAN]).is_err());
        assert!(b.push(true, &[1], &[]).is_err());
        assert!(b.clone().finish(Some(1)).is_err());
        assert!(SparseBuilder::new(0).is_err());

        // Encoded rows damaged in memory.
        let bad = |values: Vec<f32>, label: f32| {
            let d = Dataset::new(values, 5).unwrap().with_labels(vec![label]).unwrap();
            SparseRows::new(&d.as_shard()).unwrap().row(0).unwrap_err().to_string()
        };
        assert!(bad(vec![3.0, 1.0, 2.0, 1.0, 1.0], 1.0).contains("non-zero count 3"));
        assert!(bad(vec![1.5, 1.0, 2.0, 1.0, 1.0], 1.0).contains("non-zero count 1.5"));
        assert!(bad(vec![2.0, 2.0, 1.0, 1.0, 1.0], 1.0).contains("key 1 follows 2"));
        assert!(bad(vec![1.0, 0.5, 0.0, 1.0, 0.0], 1.0).contains("key 0.5"));
        assert!(bad(vec![1.0, -1.0, 0.0, 1.0, 0.0], 1.0).contains("key -1"));
        assert!(bad(vec![1.0, 1.0, 0.0, 1.0, 0.0], 2.0).contains("label 2"));
        // Shapes that are not the encoding.
        let even = Dataset::new(vec![0.0f32; 4], 4).unwrap().with_labels(vec![0.0]).unwrap();
        assert!(matches!(SparseRows::new(&even.as_shard()), Err(MlError::Config { .. })));
        let unlabeled = Dataset::new(vec![0.0f32; 3], 3).unwrap();
        assert!(matches!(SparseRows::new(&unlabeled.as_shard()), Err(MlError::NoLabels { .. })));
    }
}
