//! NumPy `.npy` files (format versions 1, 2 and 3).
//!
//! A `.npy` file is the magic `\x93NUMPY`, a version, a header length, a header that is a Python dict literal
//! (`{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 784), }`), then the raw array. Little-endian
//! `<f4` and `<f8` are read as they are; `<i4`, `<i8` and `|u1` are converted to the nearest `f32`/`f64`. The array
//! must be 1-D (one feature per row) or 2-D (rows × features) in C order.

use std::path::Path;

use super::input::Input;
use super::{shorten, LoadElement, LoadError};
use crate::data::Dataset;

/// The first six bytes of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// The largest header accepted (NumPy itself refuses headers over 10 000 bytes by default).
const MAX_HEADER: usize = 1 << 20;
/// The dtypes that can be read, as printed in errors.
const SUPPORTED: &str = "<f4, <f8, <i4, <i8 and |u1";

/// An array read from a `.npy` file, converted to `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray<T> {
    /// The shape: one or two dimensions.
    pub shape: Vec<usize>,
    /// The elements in C (row-major) order.
    pub values: Vec<T>,
}

/// Element types of a `.npy` file that can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F4,
    F8,
    I4,
    I8,
    U1,
}

impl Dtype {
    pub(crate) fn size(self) -> u64 {
        match self {
            Dtype::F4 | Dtype::I4 => 4,
            Dtype::F8 | Dtype::I8 => 8,
            Dtype::U1 => 1,
        }
    }
}

/// Reads a 1-D or 2-D `.npy` array (raw or gzip-compressed), converting its elements to `T`.
pub fn load_npy_array<T: LoadElement>(path: impl AsRef<Path>) -> Result<NpyArray<T>, LoadError> {
    let path = path.as_ref();
    let mut input = Input::open(path)?;
    let (dtype, shape) = read_header(&mut input)?;
    // At most two dimensions of at most u64::MAX each, times 8: computed without overflow in u128.
    let bytes = shape.iter().fold(u128::from(dtype.size()), |acc, &d| acc.saturating_mul(u128::from(d)));
    let data = input.payload(u64::try_from(bytes).unwrap_or(u64::MAX))?;
    // The payload fits in memory, so unless it is empty every dimension fits a usize.
    let shape = shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    Ok(NpyArray { shape, values: decode(dtype, &data) })
}

/// Reads a `.npy` array as a dataset (a 1-D array is one feature per row), with labels from an optional 1-D `.npy`
/// file of the same length.
pub fn load_npy<T: LoadElement>(values: impl AsRef<Path>, labels: Option<&Path>) -> Result<Dataset<T>, LoadError> {
    let values_path = values.as_ref();
    let array = load_npy_array::<T>(values_path)?;
    let (rows, cols) = match array.shape[..] {
        [rows] => (rows, 1),
        [rows, cols] => (rows, cols),
        // read_header admits only one or two dimensions.
        _ => (0, 0),
    };
    let data_error = |path: &Path, source| LoadError::Data { path: path.to_path_buf(), source };
    let dataset = Dataset::new(array.values, cols).map_err(|e| data_error(values_path, e))?;
    let Some(labels_path) = labels else { return Ok(dataset) };
    let labels = load_npy_array::<T>(labels_path)?;
    if labels.shape.len() != 1 {
        return Err(LoadError::Invalid {
            path: labels_path.to_path_buf(),
            message: format!(
                "labels must be a 1-D array but this one has shape {}; save `labels.ravel()` instead",
                shape_text(&labels.shape)
            ),
        });
    }
    if labels.values.len() != rows {
        return Err(LoadError::CountMismatch {
            values_path: values_path.to_path_buf(),
            values: rows,
            labels_path: labels_path.to_path_buf(),
            labels: labels.values.len(),
        });
    }
    dataset.with_labels(labels.values).map_err(|e| data_error(labels_path, e))
}

/// Reads the magic, version and header; returns the dtype and the shape (1 or 2 dimensions).
pub(crate) fn read_header(input: &mut Input) -> Result<(Dtype, Vec<u64>), LoadError> {
    let path = input.path().to_path_buf();
    let header_error = |offset: u64, message: String| LoadError::Header { path: path.clone(), offset, message };
    let start = input.header(8)?;
    if start[..6] != MAGIC[..] {
        let hint = if start.starts_with(b"PK\x03\x04") {
            "this is a zip archive, perhaps a .npz: extract the .npy files from it first"
        } else {
            "this is not a NumPy .npy file"
        };
        return Err(LoadError::BadMagic {
            path,
            found: format!("`{}`", start[..6].escape_ascii()),
            expected: format!("`{}`", MAGIC.escape_ascii()),
            hint: hint.into(),
        });
    }
    let (major, minor) = (start[6], start[7]);
    let len = match major {
        1 => {
            let b = input.header(2)?;
            usize::from(u16::from_le_bytes([b[0], b[1]]))
        }
        2 | 3 => {
            let b = input.header(4)?;
            usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(usize::MAX)
        }
        _ => {
            let message = format!("format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)");
            return Err(header_error(6, format!("{message}; save the array with NumPy's `np.save`")));
        }
    };
    if len > MAX_HEADER {
        return Err(header_error(8, format!("header length {len} is over {MAX_HEADER} bytes; the header is corrupt")));
    }
    let offset = input.pos();
    let text = input.header(len)?;
    let Ok(text) = std::str::from_utf8(&text) else {
        return Err(header_error(offset, "the header is not text; the file is corrupt".into()));
    };
    let dict = Parser { s: text.as_bytes(), i: 0 }.dict().map_err(|reason| {
        header_error(offset, format!("cannot read the header `{}`: {reason}", shorten(text.trim_end())))
    })?;
    let get = |key: &str| dict.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let missing =
        |key: &str| header_error(offset, format!("the header has no valid `{key}` entry; the file is corrupt"));
    let dtype = match get("descr") {
        Some(PyValue::Str(descr)) => dtype(&path, descr)?,
        Some(PyValue::Other(raw)) => {
            return Err(LoadError::NpyDtype {
                path,
                dtype: shorten(raw),
                reason: "structured (record) arrays are not supported; save a plain numeric array".into(),
            })
        }
        _ => return Err(missing("descr")),
    };
    let Some(PyValue::Bool(fortran)) = get("fortran_order") else { return Err(missing("fortran_order")) };
    let Some(PyValue::Tuple(shape)) = get("shape") else { return Err(missing("shape")) };
    if shape.is_empty() || shape.len() > 2 {
        return Err(header_error(
            offset,
            format!(
                "the array has {} dimensions (shape {}); save a 1-D array or a 2-D (rows, features) array, e.g. \
                 `a.reshape(len(a), -1)`",
                shape.len(),
                shape_text(shape)
            ),
        ));
    }
    // For one dimension both orders are the same bytes.
    if *fortran && shape.len() == 2 {
        return Err(LoadError::NpyFortranOrder { path });
    }
    Ok((dtype, shape.clone()))
}

fn dtype(path: &Path, descr: &str) -> Result<Dtype, LoadError> {
    let unsupported = |reason: String| LoadError::NpyDtype { path: path.to_path_buf(), dtype: descr.into(), reason };
    match descr {
        "<f4" => Ok(Dtype::F4),
        "<f8" => Ok(Dtype::F8),
        "<i4" => Ok(Dtype::I4),
        "<i8" => Ok(Dtype::I8),
        "|u1" | "<u1" => Ok(Dtype::U1),
        _ => match descr.strip_prefix('>') {
            Some(rest) => Err(unsupported(format!(
                "big-endian data is not supported; convert it with `a.astype('<{rest}')` (supported: {SUPPORTED})"
            ))),
            None => Err(unsupported(format!(
                "supported dtypes are {SUPPORTED}; convert with `a.astype(np.float32)` or `np.float64`"
            ))),
        },
    }
}

/// Converts little-endian elements to `T`.
pub(crate) fn decode<T: LoadElement>(dtype: Dtype, bytes: &[u8]) -> Vec<T> {
    match dtype {
        Dtype::F4 => bytes.chunks_exact(4).map(|c| T::from_f32(f32::from_le_bytes(array(c)))).collect(),
        Dtype::F8 => bytes.chunks_exact(8).map(|c| T::from_f64(f64::from_le_bytes(array(c)))).collect(),
        Dtype::I4 => bytes.chunks_exact(4).map(|c| T::from_i64(i32::from_le_bytes(array(c)).into())).collect(),
        Dtype::I8 => bytes.chunks_exact(8).map(|c| T::from_i64(i64::from_le_bytes(array(c)))).collect(),
        Dtype::U1 => bytes.iter().map(|&b| T::from_f32(f32::from(b))).collect(),
    }
}

/// The first `N` bytes of `c` as an array (`c` is a chunk of exactly `N` bytes).
fn array<const N: usize>(c: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&c[..N]);
    a
}

fn shape_text<D: std::fmt::Display>(shape: &[D]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// A value in the header dict, as far as the loader cares.
#[derive(Debug, Clone, PartialEq)]
enum PyValue {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
    /// Anything else (a list, a nested dict, a number), as written.
    Other(String),
}

/// A parser for the Python dict literal of a `.npy` header: string keys; string, boolean, integer-tuple, integer,
/// list or dict values.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn dict(mut self) -> Result<Vec<(String, PyValue)>, String> {
        let mut entries = Vec::new();
        self.expect(b'{')?;
        loop {
            if self.eat(b'}') {
                break;
            }
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value()?;
            entries.push((key, value));
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        self.skip_ws();
        match self.s.get(self.i) {
            None => Ok(entries),
            Some(_) => Err(format!("unexpected text after the dict at header byte {}", self.i)),
        }
    }

    fn value(&mut self) -> Result<PyValue, String> {
        self.skip_ws();
        match self.s.get(self.i) {
            Some(b'\'' | b'"') => self.string().map(PyValue::Str),
            Some(b'(') => self.tuple().map(PyValue::Tuple),
            Some(b'[' | b'{') => self.nested().map(PyValue::Other),
            Some(c) if c.is_ascii_digit() => self.int().map(|n| PyValue::Other(n.to_string())),
            Some(_) if self.keyword("True") => Ok(PyValue::Bool(true)),
            Some(_) if self.keyword("False") => Ok(PyValue::Bool(false)),
            _ => Err(format!("unexpected value at header byte {}", self.i)),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let Some(&quote) = self.s.get(self.i).filter(|&&c| c == b'\'' || c == b'"') else {
            return Err(format!("expected a quoted string at header byte {}", self.i));
        };
        let start = self.i + 1;
        let Some(len) = self.s[start..].iter().position(|&c| c == quote) else {
            return Err(format!("unterminated string at header byte {}", self.i));
        };
        self.i = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn tuple(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut items = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(items);
            }
            items.push(self.int()?);
            // Python 2 wrote long integers with an `L` suffix.
            self.eat(b'L');
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(items);
            }
        }
    }

    fn int(&mut self) -> Result<u64, String> {
        self.skip_ws();
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(c) = self.s.get(self.i).filter(|c| c.is_ascii_digit()) {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(c - b'0')))
                .ok_or_else(|| format!("integer too large at header byte {start}"))?;
            self.i += 1;
        }
        if self.i == start {
            return Err(format!("expected a non-negative integer at header byte {start}"));
        }
        Ok(n)
    }

    /// Skips a bracketed value (list or dict), minding quoted strings, and returns its text.
    fn nested(&mut self) -> Result<String, String> {
        let start = self.i;
        let mut depth = 0usize;
        while let Some(&c) = self.s.get(self.i) {
            match c {
                b'[' | b'{' | b'(' => depth += 1,
                b']' | b'}' | b')' => depth = depth.saturating_sub(1),
                b'\'' | b'"' => {
                    self.string()?;
                    continue;
                }
                _ => {}
            }
            self.i += 1;
            if depth == 0 {
                return Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned());
            }
        }
        Err(format!("unclosed bracket at header byte {start}"))
    }

    fn keyword(&mut self, word: &str) -> bool {
        let found = self.s[self.i..].starts_with(word.as_bytes());
        if found {
            self.i += word.len();
        }
        found
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        let found = self.s.get(self.i) == Some(&c);
        if found {
            self.i += 1;
        }
        found
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{}` at header byte {}", char::from(c), self.i))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of a `.npy` file as NumPy writes it: the header padded with spaces to a multiple of 64 bytes.
    fn npy_bytes(major: u8, descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let fortran = if fortran { "True" } else { "False" };
        npy_raw(major, &format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"), data)
    }

    /// Bytes of a `.npy` file with the header dict written as given.
    fn npy_raw(major: u8, dict: &str, data: &[u8]) -> Vec<u8> {
        let mut header = dict.to_string();
        let prefix = if major == 1 { 10 } else { 12 };
        while !(prefix + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[major, 0]);
        if major == 1 {
            out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn npy_round_trip_for_every_dtype_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let f8: Vec<f64> = vec![1.5, -2.25, 3.0, 1e-300, 5.0, 6.0];
        let f8_bytes: Vec<u8> = f8.iter().flat_map(|v| v.to_le_bytes()).collect();
        for major in [1, 2, 3] {
            let p = write(dir.path(), "a.npy", &npy_bytes(major, "<f8", false, "(2, 3)", &f8_bytes));
            let d = load_npy::<f64>(&p, None).unwrap();
            assert_eq!((d.rows(), d.cols()), (2, 3));
            assert_eq!(d.values(), &f8[..]);
        }
        let f4: Vec<u8> = [0.5f32, 0.25, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let i4: Vec<u8> = [7i32, -8, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
        let i8: Vec<u8> = [1i64 << 40, -1, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let cases: [(&str, &[u8], [f64; 3]); 4] = [
            ("<f4", &f4, [0.5, 0.25, -1.0]),
            ("<i4", &i4, [7.0, -8.0, 9.0]),
            ("<i8", &i8, [(1u64 << 40) as f64, -1.0, 2.0]),
            ("|u1", &[0, 128, 255], [0.0, 128.0, 255.0]),
        ];
        for (descr, data, expected) in cases {
            let p = write(dir.path(), "b.npy", &npy_bytes(1, descr, false, "(3,)", data));
            let a = load_npy_array::<f64>(&p).unwrap();
            assert_eq!((a.shape, a.values), (vec![3], expected.to_vec()), "{descr}");
        }
        // Values with labels from a second file; a 1-D array in "Fortran order" is the same bytes.
        let values = write(dir.path(), "x.npy", &npy_bytes(1, "<f4", false, "(3, 1)", &f4));
        let labels = write(dir.path(), "y.npy", &npy_bytes(1, "|u1", true, "(3,)", &[2, 0, 1]));
        let d = load_npy::<f32>(&values, Some(&labels)).unwrap();
        assert_eq!((d.rows(), d.cols()), (3, 1));
        assert_eq!(d.values(), &[0.5, 0.25, -1.0]);
        assert_eq!(d.labels().unwrap(), &[2.0, 0.0, 1.0]);
        // Labels of the wrong length or shape.
        let short = write(dir.path(), "s.npy", &npy_bytes(1, "|u1", false, "(2,)", &[1, 2]));
        assert!(matches!(load_npy::<f32>(&values, Some(&short)), Err(LoadError::CountMismatch { .. })));
        let e = load_npy::<f32>(&values, Some(&values)).unwrap_err();
        assert!(e.to_string().contains("1-D") && e.to_string().contains("(3, 1)"), "{e}");
    }

    #[test]
    fn fortran_order_npy_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "f.npy", &npy_bytes(1, "<f8", true, "(2, 2)", &[0; 32]));
        let e = load_npy::<f64>(&p, None).unwrap_err();
        assert!(matches!(e, LoadError::NpyFortranOrder { .. }), "{e:?}");
        assert!(e.to_string().contains("Fortran") && e.to_string().contains("ascontiguousarray"), "{e}");
    }

    #[test]
    fn unsupported_npy_dtypes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (descr, hint) in [(">f8", "big-endian"), ("<c16", "supported dtypes"), ("<U3", "supported dtypes")] {
            let p = write(dir.path(), "d.npy", &npy_bytes(1, descr, false, "(2,)", &[0; 32]));
            let e = load_npy::<f64>(&p, None).unwrap_err();
            assert!(matches!(&e, LoadError::NpyDtype { dtype, .. } if dtype == descr), "{e:?}");
            assert!(e.to_string().contains(&format!("`{descr}`")) && e.to_string().contains(hint), "{e}");
        }
        let structured = npy_raw(1, "{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,), }", &[0; 16]);
        let p = write(dir.path(), "r.npy", &structured);
        let e = load_npy::<f64>(&p, None).unwrap_err();
        assert!(e.to_string().contains("structured"), "{e}");
    }

    #[test]
    fn malformed_npy_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "m.npy", b"PK\x03\x04 not an npy");
        assert!(load_npy::<f64>(&p, None).unwrap_err().to_string().contains("npz"));
        let p = write(dir.path(), "m.npy", &npy_bytes(4, "<f8", false, "(1,)", &[0; 8]));
        assert!(matches!(load_npy::<f64>(&p, None), Err(LoadError::Header { offset: 6, .. })));
        let p = write(dir.path(), "m.npy", &npy_bytes(1, "<f8", false, "(2, 2, 2)", &[0; 64]));
        assert!(load_npy::<f64>(&p, None).unwrap_err().to_string().contains("3 dimensions"));
        let p = write(dir.path(), "m.npy", &npy_bytes(1, "<f8", false, "(3,)", &[0; 16]));
        assert!(matches!(load_npy::<f64>(&p, None), Err(LoadError::Truncated { .. })));
        let p = write(dir.path(), "m.npy", &npy_bytes(1, "<f8", false, "(999999, 999999)", &[0; 16]));
        let e = load_npy::<f64>(&p, None).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { expected: 7_999_984_000_136, .. }), "{e:?}");
        let p = write(dir.path(), "m.npy", &npy_bytes(1, "<f8", false, "(99999999999, 99999999999)", &[0; 16]));
        let e = load_npy::<f64>(&p, None).unwrap_err();
        assert!(matches!(e, LoadError::Header { offset: 128, .. }) && e.to_string().contains("corrupt"), "{e:?}");
        let mut bytes = npy_bytes(1, "<f8", false, "(1,)", &[0; 8]);
        bytes[10] = b'[';
        let p = write(dir.path(), "m.npy", &bytes);
        assert!(load_npy::<f64>(&p, None).unwrap_err().to_string().contains("cannot read the header"));
        let nan: Vec<u8> = [1.0f64, f64::NAN].iter().flat_map(|v| v.to_le_bytes()).collect();
        let p = write(dir.path(), "m.npy", &npy_bytes(1, "<f8", false, "(2,)", &nan));
        let e = load_npy::<f64>(&p, None).unwrap_err();
        assert!(matches!(e, LoadError::Data { .. }) && e.to_string().contains("row 1"), "{e}");
    }
}
