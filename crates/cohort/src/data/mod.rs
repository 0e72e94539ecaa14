//! Datasets and how they are cut.
//!
//! A [`Dataset`] is a dense row-major table of `f32` or `f64` values with optional labels. It is cut into a fixed
//! number of *chunks* that does **not** depend on how many workers there are: chunk `i` holds rows
//! `[i·R/C, (i+1)·R/C)`. Workers receive contiguous chunk ranges ([`assign_chunks`]), and partial results are
//! combined in a fixed tree over chunk indices (`crate::tree`), so the result of a job does not depend on the number
//! of workers. A chunk is the unit that moves between workers.

pub mod loaders;
pub(crate) mod resident;
pub mod slicing;

use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::wire::{DatasetId, ElemType, Scalar};
pub use slicing::{assign_chunks, chunk_rows, default_chunk_count, MAX_DEFAULT_CHUNKS, MIN_ROWS_PER_CHUNK};

/// A value type a dataset can hold: `f32` or `f64`.
pub trait Element: Scalar + Default + Copy + PartialOrd + std::fmt::Debug + std::fmt::Display {
    /// Tag sent on the wire.
    const TYPE: ElemType;
    /// Whether the value is neither NaN nor infinite.
    fn finite(self) -> bool;
    /// Borrows `values` as a slice of this type, if it holds this type.
    fn view(values: &Values) -> Option<&[Self]>;
    /// Wraps a vector of this type.
    fn wrap(values: Vec<Self>) -> Values;
}

/// A vector of values whose element type is known only at run time (what a worker holds).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `f32` values.
    F32(Vec<f32>),
    /// `f64` values.
    F64(Vec<f64>),
}

impl Values {
    /// Decodes little-endian bytes as values of type `elem`.
    pub fn from_le(elem: ElemType, bytes: &[u8]) -> Result<Values, crate::wire::WireError> {
        Ok(match elem {
            ElemType::F32 => Values::F32(crate::wire::codec::scalars_from_le(bytes)?),
            ElemType::F64 => Values::F64(crate::wire::codec::scalars_from_le(bytes)?),
        })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

macro_rules! element {
    ($t:ty, $variant:ident) => {
        impl Element for $t {
            const TYPE: ElemType = ElemType::$variant;
            fn finite(self) -> bool {
                self.is_finite()
            }
            fn view(values: &Values) -> Option<&[Self]> {
                match values {
                    Values::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap(values: Vec<Self>) -> Values {
                Values::$variant(values)
            }
        }
    };
}
element!(f32, F32);
element!(f64, F64);

/// Why a dataset could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    /// No rows, or rows with no columns.
    #[error("dataset is empty ({rows} rows × {cols} columns); give at least one row with at least one value")]
    Empty {
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
    },
    /// A row whose length differs from the first row's.
    #[error(
        "ragged dataset: row {row} has {got} values but row 0 has {expected}; every row must have the same length"
    )]
    Ragged {
        /// Offending row.
        row: usize,
        /// Its length.
        got: usize,
        /// Length of row 0.
        expected: usize,
    },
    /// A flat buffer whose length is not a multiple of the column count.
    #[error("{len} values do not divide into rows of {cols} columns")]
    Shape {
        /// Number of values.
        len: usize,
        /// Columns requested.
        cols: usize,
    },
    /// NaN or infinity in the values or labels.
    #[error("{what} at row {row}, column {col} is {value}; clean or drop it before training")]
    NotFinite {
        /// "value" or "label".
        what: &'static str,
        /// Row index.
        row: usize,
        /// Column index (0 for labels).
        col: usize,
        /// The value, printed.
        value: String,
    },
    /// Label count differs from row count.
    #[error("{labels} labels for {rows} rows; give exactly one label per row")]
    Labels {
        /// Labels given.
        labels: usize,
        /// Rows in the dataset.
        rows: usize,
    },
    /// Chunk count out of range.
    #[error("cannot cut {rows} rows into {chunks} chunks; use between 1 and {rows} chunks (at most {max})")]
    Chunks {
        /// Chunks requested.
        chunks: usize,
        /// Rows available.
        rows: usize,
        /// Hard upper bound.
        max: usize,
    },
}

/// The largest chunk count a dataset may use (chunk indices are `u32` and the tree is padded to a power of two).
pub const MAX_CHUNKS: usize = 1 << 20;

/// A dense, row-major dataset with optional labels, cut into chunks. Its buffers are shared: cloning a dataset is
/// cheap (the cluster keeps a clone of every dataset it loads, to send chunks again when a worker is lost).
#[derive(Debug, Clone)]
pub struct Dataset<T: Element> {
    values: std::sync::Arc<Vec<T>>,
    cols: usize,
    labels: Option<std::sync::Arc<Vec<T>>>,
    chunks: usize,
}

impl<T: Element> Dataset<T> {
    /// Builds a dataset from a flat row-major buffer with `cols` values per row.
    ///
    /// Checks the shape and that every value is finite; the chunk count defaults to
    /// [`default_chunk_count`]`(rows)`.
    pub fn new(values: Vec<T>, cols: usize) -> Result<Self, DataError> {
        if cols == 0 || values.is_empty() {
            return Err(DataError::Empty { rows: values.len().checked_div(cols).unwrap_or(0), cols });
        }
        if !values.len().is_multiple_of(cols) {
            return Err(DataError::Shape { len: values.len(), cols });
        }
        if let Some(i) = values.iter().position(|v| !v.finite()) {
            return Err(DataError::NotFinite {
                what: "value",
                row: i / cols,
                col: i % cols,
                value: values[i].to_string(),
            });
        }
        let rows = values.len() / cols;
        Ok(Dataset { values: std::sync::Arc::new(values), cols, labels: None, chunks: default_chunk_count(rows) })
    }

    /// Builds a dataset from rows, rejecting ragged input.
    pub fn from_rows<R: AsRef<[T]>>(rows: &[R]) -> Result<Self, DataError> {
        let cols = rows.first().map_or(0, |r| r.as_ref().len());
        let mut values = Vec::with_capacity(rows.len() * cols);
        for (i, row) in rows.iter().enumerate() {
            let row = row.as_ref();
            if row.len() != cols {
                return Err(DataError::Ragged { row: i, got: row.len(), expected: cols });
            }
            values.extend_from_slice(row);
        }
        Self::new(values, cols)
    }

    /// Attaches one label per row.
    pub fn with_labels(mut self, labels: Vec<T>) -> Result<Self, DataError> {
        if labels.len() != self.rows() {
            return Err(DataError::Labels { labels: labels.len(), rows: self.rows() });
        }
        if let Some(i) = labels.iter().position(|v| !v.finite()) {
            return Err(DataError::NotFinite { what: "label", row: i, col: 0, value: labels[i].to_string() });
        }
        self.labels = Some(std::sync::Arc::new(labels));
        Ok(self)
    }

    /// Sets the number of chunks (1 ..= rows). Results are bit-identical across worker counts for a fixed chunk
    /// count; changing the chunk count may change the last bits of a floating-point reduction.
    pub fn with_chunks(mut self, chunks: usize) -> Result<Self, DataError> {
        if chunks == 0 || chunks > self.rows() || chunks > MAX_CHUNKS {
            return Err(DataError::Chunks { chunks, rows: self.rows(), max: MAX_CHUNKS });
        }
        self.chunks = chunks;
        Ok(self)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len() / self.cols
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// All values, row-major.
    pub fn values(&self) -> &[T] {
        &self.values
    }

    /// Labels, if any.
    pub fn labels(&self) -> Option<&[T]> {
        self.labels.as_deref().map(Vec::as_slice)
    }

    /// Rows of chunk `i`.
    pub fn chunk_rows(&self, i: usize) -> Range<usize> {
        chunk_rows(self.rows(), self.chunks, i)
    }

    /// A view of chunk `i`, as a job's `map` sees it.
    pub fn shard(&self, i: usize) -> Shard<'_, T> {
        let r = self.chunk_rows(i);
        Shard {
            values: &self.values[r.start * self.cols..r.end * self.cols],
            cols: self.cols,
            labels: self.labels.as_ref().map(|l| &l[r.clone()]),
            first_row: r.start as u64,
            chunk: i as u32,
        }
    }

    /// A view of the whole dataset as one shard (for sequential baselines and evaluation on the master).
    pub fn as_shard(&self) -> Shard<'_, T> {
        Shard {
            values: &self.values,
            cols: self.cols,
            labels: self.labels.as_deref().map(Vec::as_slice),
            first_row: 0,
            chunk: 0,
        }
    }

    /// Content hash: element type, shape, chunk count, values and labels.
    pub fn id(&self) -> DatasetId {
        let mut h = Sha256::new();
        h.update(b"cohort-dataset-v1");
        h.update([T::TYPE as u8]);
        for n in [self.rows() as u64, self.cols as u64, self.chunks as u64, u64::from(self.labels.is_some())] {
            h.update(n.to_le_bytes());
        }
        let mut buf = Vec::new();
        T::extend_le(&self.values, &mut buf);
        h.update(&buf);
        if let Some(l) = &self.labels {
            buf.clear();
            T::extend_le(l, &mut buf);
            h.update(&buf);
        }
        h.finalize().into()
    }
}

/// The part of a dataset one `map` call sees: the rows of one chunk.
#[derive(Debug, Clone, Copy)]
pub struct Shard<'a, T> {
    /// Values, row-major, `rows() * cols` of them.
    pub values: &'a [T],
    /// Values per row.
    pub cols: usize,
    /// One label per row, if the dataset has labels.
    pub labels: Option<&'a [T]>,
    /// Index of the first row in the whole dataset.
    pub first_row: u64,
    /// Index of this chunk.
    pub chunk: u32,
}

impl<'a, T> Shard<'a, T> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.cols).unwrap_or(0)
    }

    /// Row `i` of this shard.
    pub fn row(&self, i: usize) -> &'a [T] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }

    /// Iterator over rows.
    pub fn iter_rows(&self) -> std::slice::ChunksExact<'a, T> {
        self.values.chunks_exact(self.cols.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_empty_and_non_finite_are_named() {
        let e = Dataset::<f64>::from_rows(&[vec![1.0, 2.0], vec![3.0]]).unwrap_err();
        assert_eq!(e, DataError::Ragged { row: 1, got: 1, expected: 2 });
        assert!(matches!(Dataset::<f64>::from_rows::<Vec<f64>>(&[]), Err(DataError::Empty { .. })));
        assert!(matches!(Dataset::<f32>::new(vec![], 3), Err(DataError::Empty { .. })));
        assert!(matches!(Dataset::<f32>::new(vec![1.0; 5], 2), Err(DataError::Shape { len: 5, cols: 2 })));
        let e = Dataset::<f64>::new(vec![1.0, 2.0, f64::NAN, 4.0], 2).unwrap_err();
        assert!(e.to_string().contains("row 1, column 0 is NaN"), "{e}");
        let d = Dataset::<f64>::new(vec![1.0; 4], 2).unwrap();
        assert!(matches!(d.clone().with_labels(vec![1.0]), Err(DataError::Labels { labels: 1, rows: 2 })));
        assert!(matches!(d.with_chunks(3), Err(DataError::Chunks { .. })));
    }

    #[test]
    fn shards_cover_every_row_once() {
        let d = Dataset::<f32>::new((0..70).map(|v| v as f32).collect(), 2).unwrap().with_chunks(4).unwrap();
        let mut seen = vec![];
        for c in 0..d.chunks() {
            let s = d.shard(c);
            assert_eq!(s.first_row as usize, d.chunk_rows(c).start);
            seen.extend(s.iter_rows().map(|r| r[0] as usize / 2));
        }
        assert_eq!(seen, (0..35).collect::<Vec<_>>());
    }

    #[test]
    fn id_depends_on_contents_and_chunking() {
        let a = Dataset::<f64>::new(vec![1.0, 2.0, 3.0, 4.0], 2).unwrap();
        let b = Dataset::<f64>::new(vec![1.0, 2.0, 3.0, 5.0], 2).unwrap();
        assert_ne!(a.id(), b.id());
        assert_ne!(a.id(), a.clone().with_chunks(2).unwrap().id());
        assert_eq!(a.id(), a.clone().id());
    }
}
