//! The loaders' error type. Every variant names the file and where in it things went wrong (a byte offset for the
//! binary formats, a 1-based line and column for the text formats) and, where there is one, how to fix it.

use std::io;
use std::path::PathBuf;

use crate::data::DataError;

/// Why a data file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file starts like gzip but does not decompress.
    #[error(
        "{}: corrupt gzip data after {offset} decompressed bytes: {source}; download or compress the file again",
        path.display()
    )]
    Gzip {
        /// The file.
        path: PathBuf,
        /// Decompressed bytes read before the error.
        offset: u64,
        /// What the decompressor said.
        source: io::Error,
    },
    /// The data stops before the point its header promises.
    #[error(
        "{}: the data ends at byte {ends_at}{} but the header says it runs to byte {expected}: the file is \
         truncated; download or write it again",
        path.display(),
        decompressed(*gzip)
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the data actually ends.
        ends_at: u64,
        /// Where the header says it ends.
        expected: u64,
        /// Whether the offsets count decompressed bytes.
        gzip: bool,
    },
    /// More data follows the point where the header says the data ends.
    #[error(
        "{}: the header says the data ends at byte {expected_end}{} but there are {actual_end} bytes: header and \
         contents disagree (wrong header, or extra data appended to the file)",
        path.display(),
        decompressed(*gzip)
    )]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Where the header says the data ends.
        expected_end: u64,
        /// Where it actually ends.
        actual_end: u64,
        /// Whether the offsets count decompressed bytes.
        gzip: bool,
    },
    /// The file does not start with the magic number of the expected format.
    #[error("{}: byte 0: magic number {found} where {expected} was expected; {hint}", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// What the file starts with, printed.
        found: String,
        /// What it should start with, printed.
        expected: String,
        /// What the file probably is and what to do.
        hint: String,
    },
    /// A header that is well-formed enough to read but describes something unusable.
    #[error("{}: byte {offset}: {message}", path.display())]
    Header {
        /// The file.
        path: PathBuf,
        /// Offset of the offending header field.
        offset: u64,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// An IDX file whose elements are not unsigned bytes.
    #[error(
        "{}: byte 2: IDX element type 0x{type_byte:02x} ({}) is not supported; only 0x08 (unsigned byte, as in \
         MNIST) is",
        path.display(),
        idx_type_name(*type_byte)
    )]
    IdxType {
        /// The file.
        path: PathBuf,
        /// The type byte found.
        type_byte: u8,
    },
    /// A `.npy` file whose dtype cannot be loaded.
    #[error("{}: NumPy dtype `{dtype}` is not supported: {reason}", path.display())]
    NpyDtype {
        /// The file.
        path: PathBuf,
        /// The dtype as written in the header (`descr`).
        dtype: String,
        /// Why, and how to convert.
        reason: String,
    },
    /// A 2-D `.npy` file stored in column-major order.
    #[error(
        "{}: the array is stored in Fortran (column-major) order, which is not supported; save it in C order, e.g. \
         `np.save(path, np.ascontiguousarray(a))`",
        path.display()
    )]
    NpyFortranOrder {
        /// The file.
        path: PathBuf,
    },
    /// A values file and a labels file that disagree on the number of rows.
    #[error(
        "{} holds {values} rows but {} holds {labels} labels; give files that belong together (e.g. train images \
         with train labels)",
        values_path.display(),
        labels_path.display()
    )]
    CountMismatch {
        /// The values (images) file.
        values_path: PathBuf,
        /// Rows it holds.
        values: usize,
        /// The labels file.
        labels_path: PathBuf,
        /// Labels it holds.
        labels: usize,
    },
    /// A field or token of a text file that cannot be read.
    #[error("{}: line {line}, column {column}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column (field or whitespace-separated token).
        column: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A text row with a different number of fields than the first row.
    #[error(
        "{}: line {line} has {got} fields but line {first_line} has {expected}; every row needs the same number of \
         fields (check for a missing or extra delimiter)",
        path.display()
    )]
    Ragged {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending row.
        line: u64,
        /// Fields on it.
        got: usize,
        /// 1-based line of the first row.
        first_line: u64,
        /// Fields on the first row.
        expected: usize,
    },
    /// NaN or infinity (or a number too large for the element type) in a text file.
    #[error(
        "{}: line {line}, column {column}: `{text}` is not a finite {ty} (NaN, infinity or out of range); clean the \
         value or drop the row",
        path.display()
    )]
    NotFinite {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: u64,
        /// 1-based column.
        column: usize,
        /// The field as written.
        text: String,
        /// The element type it was read as (`f32` or `f64`).
        ty: &'static str,
    },
    /// Options that do not fit the file (a label column that is not there, a dataset too large to densify, ...).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, where, and how to fix it.
        message: String,
    },
    /// A named data set that is not on this machine.
    #[error("data set `{name}` not found; looked in:\n{}\n{hint}", searched.join("\n"))]
    NotFound {
        /// The data set's name.
        name: String,
        /// Each place searched, with why it did not qualify.
        searched: Vec<String>,
        /// How to get the data set.
        hint: String,
    },
    /// A data set name the loaders do not know.
    #[error("unknown data set `{name}`; known data sets: {}", known.join(", "))]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// The names that are known.
        known: Vec<&'static str>,
    },
    /// The file was read but the values do not make a dataset (empty, non-finite values, ...).
    #[error("{}: {source}", path.display())]
    Data {
        /// The file.
        path: PathBuf,
        /// Why the dataset could not be built.
        source: DataError,
    },
}

fn decompressed(gzip: bool) -> &'static str {
    if gzip {
        " of the decompressed stream"
    } else {
        ""
    }
}

fn idx_type_name(byte: u8) -> &'static str {
    match byte {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0b => "16-bit integer",
        0x0c => "32-bit integer",
        0x0d => "32-bit float",
        0x0e => "64-bit float",
        _ => "not an IDX type",
    }
}
