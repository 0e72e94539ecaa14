//! Delimited text (CSV, TSV, ...): one row per line, every field a number.
//!
//! The header row is optional, the delimiter configurable, and one column may be the label (chosen by index or by
//! header name); every other column is a feature. Fields may be quoted and are trimmed of surrounding whitespace.
//! Blank lines are skipped. Errors give the file and the 1-based line and column of the offending field.

use std::path::Path;

use ::csv::{ByteRecord, ReaderBuilder, Trim};

use super::input::Input;
use super::{parse_field, shorten, strip_bom, LoadElement, LoadError};
use crate::data::Dataset;

/// Which column of a CSV file holds the labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LabelColumn {
    /// No labels: every column is a feature.
    #[default]
    None,
    /// The column at this 0-based index.
    Index(usize),
    /// The column with this name in the header row (needs [`CsvOptions::header`]).
    Name(String),
    /// The last column.
    Last,
}

/// How to read a CSV file. Start from `CsvOptions::default()` (no header, `,`, no labels) and adjust.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CsvOptions {
    /// Whether the first non-blank line is a header of column names.
    pub header: bool,
    /// The field delimiter (`b','`; `b'\t'` for TSV, `b';'`, ...).
    pub delimiter: u8,
    /// Which column holds the labels, if any.
    pub label: LabelColumn,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions { header: false, delimiter: b',', label: LabelColumn::None }
    }
}

impl CsvOptions {
    /// Sets whether the first line is a header.
    pub fn header(mut self, header: bool) -> Self {
        self.header = header;
        self
    }

    /// Sets the field delimiter.
    pub fn delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// Sets the label column.
    pub fn label(mut self, label: LabelColumn) -> Self {
        self.label = label;
        self
    }
}

/// Reads a CSV file (raw or gzip-compressed) as a dataset of `T` (`f32` or `f64`).
///
/// Every field must be a finite number; the first mistake is reported as, e.g.,
/// `data.csv: line 17, column 3: `abc` is not a number`.
pub fn load_csv<T: LoadElement>(path: impl AsRef<Path>, options: &CsvOptions) -> Result<Dataset<T>, LoadError> {
    let path = path.as_ref();
    let bytes = Input::open(path)?.read_rest()?;
    parse_csv(path, &bytes, options)
}

/// The shape every row must have, known from the header or the first row.
struct Layout {
    /// Fields per row.
    width: usize,
    /// 1-based line it was learnt from.
    line: u64,
    /// Index of the label field, if any.
    label: Option<usize>,
}

fn parse_csv<T: LoadElement>(path: &Path, bytes: &[u8], options: &CsvOptions) -> Result<Dataset<T>, LoadError> {
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(options.delimiter)
        .trim(Trim::All)
        .from_reader(strip_bom(bytes));
    let mut record = ByteRecord::new();
    let mut layout: Option<Layout> = None;
    let mut values = Vec::new();
    let mut labels = Vec::new();
    while next_record(path, &mut reader, &mut record)? {
        let line = record.position().map_or(0, |p| p.line());
        let blank = record.len() == 1 && record[0].is_empty();
        if blank && layout.as_ref().is_none_or(|l| l.width > 1) {
            continue;
        }
        let layout = match &layout {
            Some(layout) => layout,
            None => {
                let names = options.header.then_some(&record);
                let label = label_index(path, line, options, record.len(), names)?;
                let first = layout.insert(Layout { width: record.len(), line, label });
                if options.header {
                    continue;
                }
                &*first
            }
        };
        if record.len() != layout.width {
            return Err(LoadError::Ragged {
                path: path.to_path_buf(),
                line,
                got: record.len(),
                first_line: layout.line,
                expected: layout.width,
            });
        }
        for (i, field) in record.iter().enumerate() {
            let Ok(text) = std::str::from_utf8(field) else {
                return Err(LoadError::Parse {
                    path: path.to_path_buf(),
                    line,
                    column: i + 1,
                    message: "the field is not valid UTF-8 text, so not a number".into(),
                });
            };
            let v = parse_field(text, path, line, i + 1)?;
            if layout.label == Some(i) {
                labels.push(v);
            } else {
                values.push(v);
            }
        }
    }
    let (width, label) = layout.map_or((0, None), |l| (l.width, l.label));
    let cols = width.saturating_sub(usize::from(label.is_some()));
    let data_error = |source| LoadError::Data { path: path.to_path_buf(), source };
    let dataset = Dataset::new(values, cols).map_err(data_error)?;
    match label {
        Some(_) => dataset.with_labels(labels).map_err(data_error),
        None => Ok(dataset),
    }
}

/// Reads the next record; `false` at the end of the file.
fn next_record(path: &Path, reader: &mut ::csv::Reader<&[u8]>, record: &mut ByteRecord) -> Result<bool, LoadError> {
    reader.read_byte_record(record).map_err(|e| LoadError::Parse {
        path: path.to_path_buf(),
        line: e.position().map_or(0, |p| p.line()),
        column: 1,
        message: e.to_string(),
    })
}

/// Finds the label field among `width` fields; `names` is the header row, if there is one.
fn label_index(
    path: &Path,
    line: u64,
    options: &CsvOptions,
    width: usize,
    names: Option<&ByteRecord>,
) -> Result<Option<usize>, LoadError> {
    let invalid = |message: String| LoadError::Invalid { path: path.to_path_buf(), message };
    let index = match &options.label {
        LabelColumn::None => return Ok(None),
        LabelColumn::Last => width.saturating_sub(1),
        LabelColumn::Index(i) if *i < width => *i,
        LabelColumn::Index(i) => {
            return Err(invalid(format!(
                "line {line}: label column index {i} (0-based) is out of range: the row has {width} columns"
            )))
        }
        LabelColumn::Name(name) => {
            let Some(names) = names else {
                return Err(invalid(format!(
                    "the label column is given by name (`{name}`) but the file is read without a header row; read \
                     it with a header or give the column's index"
                )));
            };
            match names.iter().position(|n| n == name.as_bytes()) {
                Some(i) => i,
                None => {
                    let known: Vec<String> =
                        names.iter().take(20).map(|n| format!("`{}`", shorten(&String::from_utf8_lossy(n)))).collect();
                    return Err(invalid(format!(
                        "line {line}: no column named `{name}` in the header; its columns are {}{}",
                        known.join(", "),
                        if names.len() > 20 { ", ..." } else { "" }
                    )));
                }
            }
        }
    };
    if width <= 1 {
        return Err(invalid(format!(
            "line {line}: the only column is the label, which leaves no feature columns; check the delimiter \
             (`{}` was used)",
            char::from(options.delimiter).escape_default()
        )));
    }
    Ok(Some(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load<T: LoadElement>(text: &str, options: &CsvOptions) -> Result<Dataset<T>, LoadError> {
        parse_csv(Path::new("t.csv"), text.as_bytes(), options)
    }

    #[test]
    fn csv_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.csv");
        let rows = [[1.5f64, -2.0, 0.0], [3.25, 4e-3, 1.0], [1e10, 0.1, 2.0]];
        let mut text = String::from("a,b,class\n");
        for r in &rows {
            text.push_str(&format!("{},{},{}\n", r[0], r[1], r[2]));
        }
        std::fs::write(&p, &text).unwrap();
        let opts = CsvOptions::default().header(true).label(LabelColumn::Name("class".into()));
        let d = load_csv::<f64>(&p, &opts).unwrap();
        assert_eq!((d.rows(), d.cols()), (3, 2));
        assert_eq!(d.values(), &[1.5, -2.0, 3.25, 4e-3, 1e10, 0.1]);
        assert_eq!(d.labels().unwrap(), &[0.0, 1.0, 2.0]);
        // The same as f32 (parsed straight to f32), gzip-compressed, label by index.
        std::fs::write(&p, crate::data::loaders::test_files::gzip(text.as_bytes())).unwrap();
        let d = load_csv::<f32>(&p, &opts.clone().label(LabelColumn::Index(0))).unwrap();
        assert_eq!(d.values(), &[-2.0, 0.0, 4e-3, 1.0, 0.1, 2.0]);
        assert_eq!(d.labels().unwrap(), &[1.5, 3.25, 1e10]);
    }

    #[test]
    fn delimiter_quotes_blank_lines_and_last_label() {
        let d =
            load::<f64>("1;\"2\"; 3\n\n  \n4;5;6\r\n", &CsvOptions::default().delimiter(b';').label(LabelColumn::Last))
                .unwrap();
        assert_eq!(d.values(), &[1.0, 2.0, 4.0, 5.0]);
        assert_eq!(d.labels().unwrap(), &[3.0, 6.0]);
        let d = load::<f32>("\u{feff}x\n1\n2\n", &CsvOptions::default().header(true).label(LabelColumn::None)).unwrap();
        assert_eq!((d.rows(), d.cols(), d.labels()), (2, 1, None));
        let d = load::<f32>("\u{feff}1\t2\n", &CsvOptions::default().delimiter(b'\t')).unwrap();
        assert_eq!(d.values(), &[1.0, 2.0]);
    }

    #[test]
    fn ragged_csv_names_both_lines() {
        let e = load::<f64>("1,2,3\n4,5,6\n7,8\n", &CsvOptions::default()).unwrap_err();
        assert!(matches!(e, LoadError::Ragged { line: 3, got: 2, first_line: 1, expected: 3, .. }), "{e:?}");
        assert!(e.to_string().starts_with("t.csv: line 3 has 2 fields but line 1 has 3"), "{e}");
        let e = load::<f64>("a,b\n1,2,3\n", &CsvOptions::default().header(true)).unwrap_err();
        assert!(matches!(e, LoadError::Ragged { line: 2, got: 3, first_line: 1, expected: 2, .. }), "{e:?}");
    }

    #[test]
    fn non_numeric_csv_field_is_located() {
        let mut text = String::new();
        for i in 0..16 {
            text.push_str(&format!("{i},{i},{i}\n"));
        }
        text.push_str("1,2,abc\n");
        let e = load::<f32>(&text, &CsvOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "t.csv: line 17, column 3: `abc` is not a number");
        let e = load::<f32>("1,,3\n", &CsvOptions::default()).unwrap_err();
        assert!(e.to_string().contains("line 1, column 2: empty field"), "{e}");
        let e = load::<f32>("1,2\n3,\u{ff}\n", &CsvOptions::default()).unwrap_err();
        assert!(matches!(e, LoadError::Parse { line: 2, column: 2, .. }), "{e:?}");
    }

    #[test]
    fn nan_and_infinity_in_csv_are_rejected() {
        for (text, bad) in [("1,2\n3,NaN\n", "NaN"), ("1,inf\n", "inf"), ("1,1e39\n", "1e39")] {
            let e = load::<f32>(text, &CsvOptions::default()).unwrap_err();
            assert!(matches!(&e, LoadError::NotFinite { text, ty: "f32", .. } if text == bad), "{e:?}");
            assert!(e.to_string().contains(&format!("`{bad}` is not a finite f32")), "{e}");
        }
        assert!(load::<f64>("1,1e39\n", &CsvOptions::default()).is_ok());
    }

    #[test]
    fn bad_label_columns_are_explained() {
        let e = load::<f64>("a,b\n1,2\n", &CsvOptions::default().header(true).label(LabelColumn::Name("c".into())))
            .unwrap_err();
        assert!(e.to_string().contains("no column named `c`") && e.to_string().contains("`a`, `b`"), "{e}");
        let e = load::<f64>("1,2\n", &CsvOptions::default().label(LabelColumn::Name("c".into()))).unwrap_err();
        assert!(e.to_string().contains("without a header row"), "{e}");
        let e = load::<f64>("1,2\n", &CsvOptions::default().label(LabelColumn::Index(2))).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = load::<f64>("1;2\n", &CsvOptions::default().label(LabelColumn::Last)).unwrap_err();
        assert!(e.to_string().contains("no feature columns"), "{e}");
        assert!(matches!(load::<f64>("", &CsvOptions::default()), Err(LoadError::Data { .. })));
    }
}
