//! Loading datasets from files: IDX (the MNIST format), CSV, libsvm/svmlight and NumPy `.npy`, plus the named data
//! set `fashion-mnist` found on the local machine.
//!
//! Every loader returns a [`Dataset`](crate::Dataset) of `f32` or `f64` (any [`LoadElement`]) or a [`LoadError`]
//! that names the file and the byte offset or line and column where the data went wrong. Binary files may be
//! gzip-compressed (recognised by their content, not their name). No input makes a loader panic, and no size read
//! from a header is allocated before it has been checked against the length of the file.
//!
//! ```no_run
//! use cohort::data::loaders::{load_csv, load_fashion_mnist, CsvOptions, LabelColumn, Split};
//!
//! # fn main() -> Result<(), cohort::data::loaders::LoadError> {
//! let train = load_fashion_mnist(Split::Train)?; // 60000 × 784, labels 0..=9
//! let table = load_csv::<f64>("data/iris.csv", &CsvOptions::default().header(true).label(LabelColumn::Last))?;
//! # Ok(()) }
//! ```

pub mod csv;
mod error;
pub mod idx;
mod input;
pub mod libsvm;
pub mod named;
pub mod npy;
pub mod ranged;

use std::str::FromStr;

use crate::data::Element;

pub use self::csv::{load_csv, CsvOptions, LabelColumn};
pub use error::LoadError;
pub use idx::{load_idx, load_idx_images, load_idx_labels, IdxImages};
pub use libsvm::{load_libsvm, read_libsvm_rows, LibsvmOptions, LibsvmRow};
pub use named::{find_named, find_named_in, load_fashion_mnist, load_mnist_like, search_dirs, Split};
pub use npy::{load_npy, load_npy_array, NpyArray};
pub use ranged::{describe, read_rows, FileFormat, FileSource, SourceInfo};

/// An element type the loaders can produce: `f32` or `f64`.
///
/// Text is parsed straight into the element type (so `f32` values are correctly rounded); binary values are
/// converted to the nearest representable value.
pub trait LoadElement: Element + FromStr {
    /// The type's name, as printed in errors.
    const NAME: &'static str;
    /// The nearest value to `v`.
    fn from_f64(v: f64) -> Self;
    /// The nearest value to `v`.
    fn from_f32(v: f32) -> Self;
    /// The nearest value to `v`.
    fn from_i64(v: i64) -> Self;
}

impl LoadElement for f32 {
    const NAME: &'static str = "f32";
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_i64(v: i64) -> Self {
        v as f32
    }
}

impl LoadElement for f64 {
    const NAME: &'static str = "f64";
    fn from_f64(v: f64) -> Self {
        v
    }
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn from_i64(v: i64) -> Self {
        v as f64
    }
}

/// Parses one text field as a finite number of type `T`, or says what is wrong with it.
///
/// `path`, `line` and `column` (1-based) only go into the error.
pub(crate) fn parse_field<T: LoadElement>(
    text: &str,
    path: &std::path::Path,
    line: u64,
    column: usize,
) -> Result<T, LoadError> {
    let parse_error = |message: String| LoadError::Parse { path: path.to_path_buf(), line, column, message };
    if text.is_empty() {
        return Err(parse_error("empty field is not a number; fill in the missing value or drop the row".into()));
    }
    match text.parse::<T>() {
        Ok(v) if v.finite() => Ok(v),
        Ok(_) => Err(LoadError::NotFinite { path: path.to_path_buf(), line, column, text: text.into(), ty: T::NAME }),
        Err(_) => Err(parse_error(format!("`{}` is not a number", shorten(text)))),
    }
}

/// `bytes` without a leading UTF-8 byte-order mark (spreadsheet programs like to write one).
pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

/// Cuts long text for an error message (on a character boundary).
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod test_files {
    //! Builders for small data files used by the loaders' tests.

    use std::io::Write;

    /// Bytes of an IDX file with type byte `ty`, the given dimensions and data.
    pub(super) fn idx_bytes(ty: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, ty, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_files::{gzip, idx_bytes};
    use super::*;

    /// Damaged files (bytes overwritten, cut short, extended) must give an error or a dataset, never a panic.
    #[test]
    fn damaged_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let pixels: Vec<u8> = (0..2 * 3 * 4).collect();
        let npy = b"\x93NUMPY\x01\x00\x3c\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n";
        let samples: Vec<Vec<u8>> = vec![
            idx_bytes(0x08, &[2, 3, 4], &pixels),
            idx_bytes(0x08, &[2], &[1, 2]),
            gzip(&idx_bytes(0x08, &[2, 3, 4], &pixels)),
            [&npy[..], &[0u8; 16][..]].concat(),
            b"a,b,c\n1,2,3\n4,\"5\",6\n".to_vec(),
            b"1 1:2 3:4 # c\n-1 qid:2 2:5\n".to_vec(),
        ];
        // A fixed xorshift sequence keeps the test deterministic.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        std::fs::write(&p, &samples[3]).unwrap();
        assert_eq!(load_npy::<f32>(&p, None).unwrap().values(), &[0.0; 4]);
        for sample in &samples {
            for _ in 0..60 {
                let mut bytes = sample.clone();
                match next() % 3 {
                    0 => bytes.truncate((next() % (bytes.len() as u64 + 1)) as usize),
                    1 => bytes.extend((0..next() % 9).map(|_| next() as u8)),
                    _ => {}
                }
                for _ in 0..next() % 4 {
                    if !bytes.is_empty() {
                        let i = (next() % bytes.len() as u64) as usize;
                        bytes[i] = next() as u8;
                    }
                }
                std::fs::write(&p, &bytes).unwrap();
                let _ = load_idx::<f32>(&p, Some(&p));
                let _ = load_idx_labels(&p);
                let _ = load_npy::<f64>(&p, Some(&p));
                let csv = CsvOptions::default().header(true).label(LabelColumn::Name("b".into()));
                let _ = load_csv::<f32>(&p, &csv);
                let _ = load_csv::<f64>(&p, &CsvOptions::default().label(LabelColumn::Last));
                let _ = load_libsvm::<f32>(&p, &LibsvmOptions::default().max_values(1 << 16));
            }
        }
    }
}
