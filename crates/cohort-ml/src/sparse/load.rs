//! Reading libsvm/svmlight files (raw or gzip-compressed) into the sparse encoding, with cohort's libsvm parser
//! ([`cohort::data::loaders::read_libsvm_rows`]): errors name the file, the line and, for a bad token, the column.
//!
//! Labels must be binary: `1` (or `+1`) is the positive class, `-1` or `0` the negative. Indices are 1-based as
//! libsvm has them; keys are the indices minus one, and must be below 2²⁴ (see [`super::encoding`]).

use std::path::{Path, PathBuf};

use cohort::data::loaders::{read_libsvm_rows, LibsvmRow};

use super::encoding::{SparseBuilder, SparseDataset, MAX_FEATURES};
use super::SparseError;

/// How to read a libsvm file into the sparse encoding. Start from `SparseLoadOptions::default()` and adjust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SparseLoadOptions {
    /// The number of features; `None`: one more than the largest key. An index above it is an error.
    pub features: Option<usize>,
    /// The padding width (non-zeros per row at most); `None`: the widest row's. A wider row is an error.
    pub width: Option<usize>,
}

impl SparseLoadOptions {
    /// Sets the number of features (so that a training and a test file give weight vectors of one length).
    pub fn features(mut self, features: usize) -> Self {
        self.features = Some(features);
        self
    }

    /// Sets the padding width.
    pub fn width(mut self, width: usize) -> Self {
        self.width = Some(width);
        self
    }
}

/// Reads a libsvm file of binary-labelled rows into the sparse encoding.
pub fn load_libsvm_sparse(
    path: impl AsRef<Path>,
    options: &SparseLoadOptions,
) -> std::result::Result<SparseDataset, SparseError> {
    let path = path.as_ref();
    // The rows as read (compressed sparse rows), before the padding width is known.
    let mut labels: Vec<bool> = Vec::new();
    let mut starts = vec![0usize];
    let mut keys: Vec<u32> = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    read_libsvm_rows::<f32>(path, options.features, |r: LibsvmRow<'_, f32>| {
        let positive = match r.label {
            1.0 => true,
            0.0 | -1.0 => false,
            other => {
                return Err(format!(
                    "label {other} is not a binary class; use 1 (or +1) for the positive class and -1 or 0 for the \
                     negative"
                ))
            }
        };
        if let Some(width) = options.width.filter(|&w| r.entries.len() > w) {
            return Err(format!(
                "row {} has {} non-zeros, more than the padding width {width}; give a larger width, or none to use \
                 the widest row's",
                r.row,
                r.entries.len()
            ));
        }
        for &(k, v) in r.entries {
            if k >= MAX_FEATURES {
                return Err(format!(
                    "feature index {} is above 2^24 = {MAX_FEATURES}, the most the f32 encoding holds exactly; hash \
                     the features into fewer",
                    k + 1
                ));
            }
            keys.push(k as u32);
            values.push(v);
        }
        starts.push(keys.len());
        labels.push(positive);
        Ok(())
    })?;
    let in_file = |source| SparseError::File { path: PathBuf::from(path), source };
    let widest = starts.windows(2).map(|s| s[1] - s[0]).max().unwrap_or(0);
    let mut builder = SparseBuilder::new(options.width.unwrap_or(widest).max(1)).map_err(in_file)?;
    builder.reserve(labels.len());
    let mut row_keys: Vec<u64> = Vec::new();
    for (r, &positive) in labels.iter().enumerate() {
        let (start, end) = (starts[r], starts[r + 1]);
        row_keys.clear();
        row_keys.extend(keys[start..end].iter().map(|&k| u64::from(k)));
        builder.push(positive, &row_keys, &values[start..end]).map_err(in_file)?;
    }
    builder.finish(options.features).map_err(in_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.svm");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn files_load_into_the_encoding() {
        let (_dir, path) = write("+1 1:0.5 4000000:2\n# comment\n-1 2:1\n0 3:1 5:1 9:0.25\n");
        let set = load_libsvm_sparse(&path, &SparseLoadOptions::default()).unwrap();
        assert_eq!((set.rows(), set.width, set.features, set.nonzeros), (3, 3, 4_000_000, 6));
        let view = set.rows_view().unwrap();
        let rows: Vec<_> = view.iter().map(|r| r.unwrap()).collect();
        assert_eq!(rows[0].entries().collect::<Vec<_>>(), [(0, 0.5), (3_999_999, 2.0)]);
        assert_eq!(rows.iter().map(|r| r.positive()).collect::<Vec<_>>(), [true, false, false]);
        assert_eq!(rows[2].keys().collect::<Vec<_>>(), [2, 4, 8]);
        let wide = load_libsvm_sparse(&path, &SparseLoadOptions::default().width(5).features(1 << 22)).unwrap();
        assert_eq!((wide.width, wide.features, wide.data.cols()), (5, 1 << 22, 11));
    }

    #[test]
    fn bad_files_name_the_file_and_line() {
        let cases = [
            ("1 1:1\n1 1:1 2:1 3:1\n", SparseLoadOptions::default().width(2), "line 2: row 1 has 3 non-zeros"),
            ("1 1:1\n2 1:1\n", SparseLoadOptions::default(), "line 2: label 2 is not a binary class"),
            ("1 16777217:1\n", SparseLoadOptions::default(), "line 1: feature index 16777217 is above 2^24"),
            ("1 1:1\n1 7:1\n", SparseLoadOptions::default().features(5), "line 2, column 2"),
            ("1 1:x\n", SparseLoadOptions::default(), "line 1, column 2"),
            ("# nothing\n", SparseLoadOptions::default(), "dataset is empty"),
        ];
        for (text, options, what) in cases {
            let (_dir, path) = write(text);
            let e = load_libsvm_sparse(&path, &options).unwrap_err().to_string();
            assert!(e.contains("rows.svm") && e.contains(what), "{text:?}: {e}");
        }
        let e = load_libsvm_sparse("/nonexistent/rows.svm", &SparseLoadOptions::default()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/rows.svm"), "{e}");
    }
}
