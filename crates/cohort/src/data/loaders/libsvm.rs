//! The libsvm / svmlight sparse text format, densified ([`load_libsvm`]) or row by row ([`read_libsvm_rows`]).
//!
//! Each line is `label index:value index:value ...` with 1-based, strictly increasing feature indices; `#` starts a
//! comment and `qid:n` tokens are ignored. Missing features are zero. The dense width is the largest index seen, or
//! a feature count given by the caller (so that a training and a test file get the same width). Data sets too wide
//! to densify (millions of features) are read with [`read_libsvm_rows`], which hands over each row's entries and
//! leaves the in-memory layout to the caller.

use std::path::Path;

use super::input::Input;
use super::{parse_field, shorten, strip_bom, LoadElement, LoadError};
use crate::data::Dataset;

/// The default limit on the number of values of the densified dataset (2²⁸, 1 GiB of `f32`).
pub const DEFAULT_MAX_VALUES: usize = 1 << 28;

/// How to read a libsvm file. Start from `LibsvmOptions::default()` and adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LibsvmOptions {
    /// The number of features (the dense width); `None` uses the largest index in the file.
    pub features: Option<usize>,
    /// The most values (rows × features) the densified dataset may have; a guard against a stray huge index.
    pub max_values: usize,
}

impl Default for LibsvmOptions {
    fn default() -> Self {
        LibsvmOptions { features: None, max_values: DEFAULT_MAX_VALUES }
    }
}

impl LibsvmOptions {
    /// Sets the number of features; an index above it is an error.
    pub fn features(mut self, features: usize) -> Self {
        self.features = Some(features);
        self
    }

    /// Sets the limit on rows × features.
    pub fn max_values(mut self, max_values: usize) -> Self {
        self.max_values = max_values;
        self
    }
}

/// Reads a libsvm/svmlight file (raw or gzip-compressed) as a dense dataset of `T` with one label per row.
pub fn load_libsvm<T: LoadElement>(path: impl AsRef<Path>, options: &LibsvmOptions) -> Result<Dataset<T>, LoadError> {
    let path = path.as_ref();
    let bytes = Input::open(path)?.read_rest()?;
    parse_libsvm(path, &bytes, options)
}

/// One row of a libsvm file as [`read_libsvm_rows`] hands it over.
#[derive(Debug, Clone, Copy)]
pub struct LibsvmRow<'a, T> {
    /// 1-based line of the file the row is on.
    pub line: u64,
    /// 0-based index of the row (lines without a row, such as comments, are not counted).
    pub row: usize,
    /// The label.
    pub label: T,
    /// The features: 0-based indices (the file's minus one), strictly increasing, with their values.
    pub entries: &'a [(usize, T)],
}

/// Reads a libsvm/svmlight file (raw or gzip-compressed) row by row, without densifying it: calls `row` once per
/// row, in file order. An index above `features` (when given) is an error naming the line and column; `row` may
/// refuse a row with a message, which becomes an error naming the file and the line.
pub fn read_libsvm_rows<T: LoadElement>(
    path: impl AsRef<Path>,
    features: Option<usize>,
    row: impl FnMut(LibsvmRow<'_, T>) -> Result<(), String>,
) -> Result<(), LoadError> {
    let path = path.as_ref();
    let bytes = Input::open(path)?.read_rest()?;
    parse_rows(path, &bytes, features, row)
}

fn parse_libsvm<T: LoadElement>(path: &Path, bytes: &[u8], options: &LibsvmOptions) -> Result<Dataset<T>, LoadError> {
    let mut labels: Vec<T> = Vec::new();
    // Sparse rows: row r's entries are entries[starts[r]..starts[r + 1]].
    let mut starts = vec![0usize];
    let mut entries: Vec<(usize, T)> = Vec::new();
    // Largest index seen (1-based), and the line it is on.
    let mut widest = (0usize, 0u64);
    parse_rows(path, bytes, options.features, |row: LibsvmRow<'_, T>| {
        labels.push(row.label);
        if let Some(&(last, _)) = row.entries.last() {
            if last + 1 > widest.0 {
                widest = (last + 1, row.line);
            }
        }
        entries.extend_from_slice(row.entries);
        starts.push(entries.len());
        Ok(())
    })?;
    let rows = labels.len();
    let cols = options.features.unwrap_or(widest.0);
    let cells = rows.checked_mul(cols).filter(|&c| c <= options.max_values).ok_or_else(|| LoadError::Invalid {
        path: path.to_path_buf(),
        message: format!(
            "densifying {rows} rows × {cols} features (the largest index, {}, is on line {}) would need more than \
             the limit of {} values; check that index, or raise LibsvmOptions::max_values",
            widest.0, widest.1, options.max_values
        ),
    })?;
    let mut values = vec![T::default(); cells];
    for (r, bounds) in starts.windows(2).enumerate() {
        for &(c, v) in &entries[bounds[0]..bounds[1]] {
            values[r * cols + c] = v;
        }
    }
    let data_error = |source| LoadError::Data { path: path.to_path_buf(), source };
    Dataset::new(values, cols).and_then(|d| d.with_labels(labels)).map_err(data_error)
}

/// Parses every line of `bytes` and hands each row to `row` (see [`read_libsvm_rows`]).
fn parse_rows<T: LoadElement>(
    path: &Path,
    bytes: &[u8],
    features: Option<usize>,
    mut row: impl FnMut(LibsvmRow<'_, T>) -> Result<(), String>,
) -> Result<(), LoadError> {
    // The current row's entries, reused from line to line.
    let mut entries: Vec<(usize, T)> = Vec::new();
    let mut rows = 0usize;
    for (n, raw) in strip_bom(bytes).split(|&b| b == b'\n').enumerate() {
        let line = n as u64 + 1;
        let error =
            |column: usize, message: String| LoadError::Parse { path: path.to_path_buf(), line, column, message };
        let raw = raw.split(|&b| b == b'#').next().unwrap_or_default();
        let Ok(text) = std::str::from_utf8(raw) else {
            return Err(error(1, "the line is not valid UTF-8 text".into()));
        };
        let mut tokens = text.split_ascii_whitespace();
        let Some(label) = tokens.next() else { continue };
        let label = parse_field(label, path, line, 1)?;
        entries.clear();
        let mut previous = 0usize;
        for (i, token) in tokens.enumerate() {
            let column = i + 2;
            let Some((key, value)) = token.split_once(':') else {
                return Err(error(column, format!("`{}` is not `index:value`", shorten(token))));
            };
            if key == "qid" {
                continue;
            }
            let Ok(index) = key.parse::<usize>() else {
                return Err(error(
                    column,
                    format!("`{}`: feature index `{}` is not a positive integer", shorten(token), shorten(key)),
                ));
            };
            if index == 0 {
                return Err(error(
                    column,
                    format!(
                        "`{}`: feature index 0, but libsvm indices start at 1 (add 1 to every index of a 0-based file)",
                        shorten(token)
                    ),
                ));
            }
            if index <= previous {
                return Err(error(
                    column,
                    format!(
                        "`{}`: feature index {index} follows {previous}; indices must increase along a line (sort \
                         them and remove duplicates)",
                        shorten(token)
                    ),
                ));
            }
            if let Some(features) = features.filter(|&f| index > f) {
                return Err(error(
                    column,
                    format!("feature index {index} is above the feature count {features} given"),
                ));
            }
            previous = index;
            entries.push((index - 1, parse_field(value, path, line, column)?));
        }
        row(LibsvmRow { line, row: rows, label, entries: &entries }).map_err(|message| LoadError::Invalid {
            path: path.to_path_buf(),
            message: format!("line {line}: {message}"),
        })?;
        rows += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, options: &LibsvmOptions) -> Result<Dataset<f64>, LoadError> {
        parse_libsvm(Path::new("t.svm"), text.as_bytes(), options)
    }

    #[test]
    fn libsvm_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.svm");
        let text = "# a comment line\n+1 qid:3 1:0.5 3:-2 # trailing comment\n-1 2:4e-1\n\n0 1:1 2:2 4:3\r\n";
        std::fs::write(&p, text).unwrap();
        let d = load_libsvm::<f32>(&p, &LibsvmOptions::default()).unwrap();
        assert_eq!((d.rows(), d.cols()), (3, 4));
        assert_eq!(d.values(), &[0.5, 0.0, -2.0, 0.0, 0.0, 0.4, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0]);
        assert_eq!(d.labels().unwrap(), &[1.0, -1.0, 0.0]);
        let d = load_libsvm::<f64>(&p, &LibsvmOptions::default().features(6)).unwrap();
        assert_eq!((d.rows(), d.cols()), (3, 6));
        assert_eq!(&d.values()[6..12], &[0.0, 0.4, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn rows_are_handed_over_sparse_and_a_refusal_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wide.svm");
        std::fs::write(&p, "# header\n1 3:0.5 4000000:2\n\n-1 qid:7 1:1\n").unwrap();
        let mut seen = Vec::new();
        read_libsvm_rows::<f32>(&p, None, |r| {
            seen.push((r.line, r.row, r.label, r.entries.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [(2, 0, 1.0, vec![(2, 0.5), (3_999_999, 2.0)]), (4, 1, -1.0, vec![(0, 1.0)])]);
        let e = read_libsvm_rows::<f32>(&p, None, |r| if r.row == 1 { Err("too wide".into()) } else { Ok(()) })
            .unwrap_err();
        assert!(e.to_string().ends_with("wide.svm: line 4: too wide"), "{e}");
        let e = read_libsvm_rows::<f32>(&p, Some(10), |_| Ok(())).unwrap_err();
        assert!(matches!(e, LoadError::Parse { line: 2, column: 3, .. }), "{e:?}");
    }

    #[test]
    fn bad_libsvm_tokens_are_located() {
        let opts = LibsvmOptions::default();
        let cases = [
            ("1 1:1\n1 2:x\n", 2, 2, "`x` is not a number"),
            ("1 1:1 oops\n", 1, 3, "`oops` is not `index:value`"),
            ("1 a:1\n", 1, 2, "feature index `a` is not a positive integer"),
            ("1 0:1\n", 1, 2, "indices start at 1"),
            ("1 2:1 2:3\n", 1, 3, "feature index 2 follows 2"),
            ("1 3:1 2:3\n", 1, 3, "feature index 2 follows 3"),
            ("abc 1:1\n", 1, 1, "`abc` is not a number"),
        ];
        for (text, line, column, what) in cases {
            let e = load(text, &opts).unwrap_err();
            assert!(
                matches!(&e, LoadError::Parse { line: l, column: c, .. } if *l == line && *c == column),
                "{text:?}: {e:?}"
            );
            assert!(e.to_string().contains(what), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("t.svm: line {line}, column {column}: ")), "{e}");
        }
        let e = load("1 1:nan\n", &opts).unwrap_err();
        assert!(matches!(e, LoadError::NotFinite { line: 1, column: 2, .. }), "{e:?}");
        let e = load("1 5:1\n", &opts.clone().features(4)).unwrap_err();
        assert!(e.to_string().contains("above the feature count 4"), "{e}");
        let e = load("1 1:1\n1 4000000000:1\n", &opts).unwrap_err();
        assert!(e.to_string().contains("is on line 2") && e.to_string().contains("max_values"), "{e}");
        assert!(matches!(load("1\n", &opts), Err(LoadError::Data { .. })));
    }
}
