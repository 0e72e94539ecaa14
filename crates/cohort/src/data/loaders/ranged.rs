//! Reading one range of rows from a data file that workers can see themselves (a shared filesystem), so that each
//! worker loads only its chunks and the master never touches the bytes.
//!
//! Supported: IDX (images as rows of pixels scaled to `[0, 1]`, labels as class indices) and `.npy` (1-D or 2-D, C
//! order), each with an optional labels file. For an uncompressed file the reader seeks straight to the first row;
//! for a gzip file it has to decompress the rows before the range and discard them.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::input::{Input, FIRST_STEP, MAX_DEFLATE_RATIO};
use super::npy::{self, Dtype};
use super::{LoadElement, LoadError};

pub use crate::wire::message::{FileFormat, FileSource};

/// Shape and identity of a file source, read from its headers only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// Rows.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
    /// Whether a labels file is attached.
    pub has_labels: bool,
    /// SHA-256 over format, paths, sizes, modification times and headers: equal on every worker that sees the
    /// same files.
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Pixel,
    Label,
    Npy(Dtype),
}

#[derive(Debug, Clone, Copy)]
struct Layout {
    offset: u64,
    rows: usize,
    cols: usize,
    item: Item,
    item_size: u64,
}

/// Reads the headers: shape, labels present, fingerprint.
pub fn describe(source: &FileSource) -> Result<SourceInfo, LoadError> {
    let (values, mut hasher) = (layout(&source.values, source.format, false)?, Sha256::new());
    fingerprint(&mut hasher, &source.values, source.format)?;
    if let Some(labels_path) = &source.labels {
        let labels = layout(labels_path, source.format, true)?;
        if labels.rows != values.rows || labels.cols != 1 {
            return Err(LoadError::CountMismatch {
                values_path: source.values.clone(),
                values: values.rows,
                labels_path: labels_path.clone(),
                labels: labels.rows,
            });
        }
        fingerprint(&mut hasher, labels_path, source.format)?;
    }
    Ok(SourceInfo {
        rows: values.rows,
        cols: values.cols,
        has_labels: source.labels.is_some(),
        fingerprint: hasher.finalize().into(),
    })
}

/// Reads rows `range` of the source: values (row-major) and labels if the source has them. Fails on non-finite
/// values, naming the file and the row.
pub fn read_rows<T: LoadElement>(
    source: &FileSource,
    range: Range<usize>,
) -> Result<(Vec<T>, Option<Vec<T>>), LoadError> {
    let values_layout = layout(&source.values, source.format, false)?;
    let values = read_range::<T>(&source.values, values_layout, range.clone())?;
    let labels = match &source.labels {
        Some(path) => Some(read_range::<T>(path, layout(path, source.format, true)?, range)?),
        None => None,
    };
    Ok((values, labels))
}

fn fingerprint(h: &mut Sha256, path: &Path, format: FileFormat) -> Result<(), LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    h.update(format!("{format:?}\0{}\0{}\0{}\0", path.display(), meta.len(), mtime.as_nanos()).as_bytes());
    Ok(())
}

fn layout(path: &Path, format: FileFormat, labels: bool) -> Result<Layout, LoadError> {
    let mut input = Input::open(path)?;
    let invalid = |message: String| LoadError::Invalid { path: path.to_path_buf(), message };
    match format {
        FileFormat::Idx => {
            let magic = input.header(4)?;
            let ndims = if labels { 1 } else { 3 };
            if magic[..] != [0, 0, 0x08, ndims] {
                return Err(invalid(format!(
                    "expected an unsigned-byte IDX {} file (magic 0x000008{ndims:02x}), found 0x{}",
                    if labels { "label" } else { "image" },
                    hex::encode(&magic)
                )));
            }
            let dims: Vec<usize> = input
                .header(4 * usize::from(ndims))?
                .chunks_exact(4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .collect();
            let cols = dims[1..].iter().product::<usize>().max(1);
            let item = if labels { Item::Label } else { Item::Pixel };
            Ok(Layout { offset: input.pos(), rows: dims[0], cols, item, item_size: 1 })
        }
        FileFormat::Npy => {
            let (dtype, shape) = npy::read_header(&mut input)?;
            let (rows, cols) = match shape[..] {
                [r] => (r as usize, 1),
                [r, c] if !labels => (r as usize, c as usize),
                _ => return Err(invalid(format!("labels must be a 1-D array, this one has shape {shape:?}"))),
            };
            Ok(Layout { offset: input.pos(), rows, cols, item: Item::Npy(dtype), item_size: dtype.size() })
        }
    }
}

fn read_range<T: LoadElement>(path: &Path, l: Layout, range: Range<usize>) -> Result<Vec<T>, LoadError> {
    let io_err = |source| LoadError::Io { path: path.to_path_buf(), source };
    if range.end > l.rows || range.start > range.end {
        return Err(LoadError::Invalid {
            path: path.to_path_buf(),
            message: format!("rows {range:?} requested but the file holds {} rows; was it replaced?", l.rows),
        });
    }
    // The header's shape is not trusted: sizes are computed without overflow and checked against the file before
    // anything is allocated.
    let too_large = || LoadError::Header {
        path: path.to_path_buf(),
        offset: l.offset,
        message: format!(
            "rows {range:?} of {} values of {} bytes are more than any file holds; the header is corrupt",
            l.cols, l.item_size
        ),
    };
    let row_bytes = (l.cols as u64).checked_mul(l.item_size).ok_or_else(too_large)?;
    let start = (range.start as u64).checked_mul(row_bytes).and_then(|s| s.checked_add(l.offset));
    let len = (range.len() as u64).checked_mul(row_bytes);
    let (start, len) = start.zip(len).filter(|(s, n)| s.checked_add(*n).is_some()).ok_or_else(too_large)?;
    let mut file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut magic = [0u8; 2];
    let gzip = file.read(&mut magic).map_err(io_err)? == 2 && magic == [0x1f, 0x8b];
    file.rewind().map_err(io_err)?;
    let truncated =
        |ends_at: u64| LoadError::Truncated { path: path.to_path_buf(), ends_at, expected: start + len, gzip };
    if !gzip && start + len > file_len {
        return Err(truncated(file_len));
    }
    if gzip && start.saturating_add(len) > file_len.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1 << 16) {
        return Err(too_large());
    }
    let size = usize::try_from(len).map_err(|_| too_large())?;
    let buf = if gzip {
        let mut decoder = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
        let skipped = io::copy(&mut (&mut decoder).take(start), &mut io::sink()).map_err(io_err)?;
        if skipped < start {
            return Err(LoadError::Truncated { path: path.to_path_buf(), ends_at: skipped, expected: start, gzip });
        }
        // Only bounded, not checked: the buffer grows as data actually arrives.
        let mut buf = Vec::with_capacity(size.min(FIRST_STEP));
        match decoder.take(len).read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Err(e) => return Err(io_err(e)),
        }
        if buf.len() < size {
            return Err(truncated(start + buf.len() as u64));
        }
        buf
    } else {
        let mut buf = vec![0u8; size];
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        file.read_exact(&mut buf).map_err(|e| match e.kind() {
            // The file shrank since its length was read.
            io::ErrorKind::UnexpectedEof => truncated(start),
            _ => io_err(e),
        })?;
        buf
    };
    let values: Vec<T> = match l.item {
        Item::Pixel => buf.iter().map(|&p| T::from_f64(f64::from(p) / 255.0)).collect(),
        Item::Label => buf.iter().map(|&p| T::from_f64(f64::from(p))).collect(),
        Item::Npy(dtype) => npy::decode(dtype, &buf),
    };
    if let Some(i) = values.iter().position(|v| !v.finite()) {
        return Err(LoadError::Invalid {
            path: path.to_path_buf(),
            message: format!(
                "row {}, column {} is {}; clean the data before training",
                range.start + i / l.cols,
                i % l.cols,
                values[i]
            ),
        });
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loaders::{load_idx, load_npy};

    fn npy_file(path: &Path, shape: &str, values: &[f64]) {
        let header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
        let mut h = header.into_bytes();
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(b' ');
        }
        h.push(b'\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(h.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&h);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// A header claiming more rows than the file holds made `read_rows` allocate the claimed size before reading
    /// (terabytes: the process aborted), and a claimed row size near u64::MAX overflowed (found by the fuzzer).
    #[test]
    fn header_shapes_larger_than_the_file_are_errors_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        npy_file(&p, "(1099511627776, 1)", &[1.0, 2.0]);
        let src = FileSource::npy(&p, None);
        assert_eq!(describe(&src).unwrap().rows, 1 << 40);
        let e = read_rows::<f64>(&src, 0..1 << 40).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { ends_at: 144, gzip: false, .. }), "{e:?}");
        assert_eq!(read_rows::<f64>(&src, 0..2).unwrap().0, [1.0, 2.0]);

        npy_file(&p, "(3, 4611686018427387904)", &[1.0]);
        let e = read_rows::<f64>(&src, 1..2).unwrap_err();
        assert!(matches!(e, LoadError::Header { .. }) && e.to_string().contains("corrupt"), "{e:?}");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        npy_file(&p, "(1099511627776, 1)", &[1.0, 2.0]);
        std::io::Write::write_all(&mut gz, &std::fs::read(&p).unwrap()).unwrap();
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let e = read_rows::<f64>(&src, 0..1 << 40).unwrap_err();
        assert!(matches!(e, LoadError::Header { .. }), "{e:?}");
        let e = read_rows::<f64>(&src, 0..1000).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { ends_at: 144, gzip: true, .. }), "{e:?}");
        assert_eq!(read_rows::<f64>(&src, 1..2).unwrap().0, [2.0]);
    }

    #[test]
    fn ranges_of_npy_equal_the_full_load() {
        let dir = tempfile::tempdir().unwrap();
        let (v, l) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
        let values: Vec<f64> = (0..30).map(|i| i as f64 * 0.5).collect();
        npy_file(&v, "(10, 3)", &values);
        npy_file(&l, "(10,)", &(0..10).map(f64::from).collect::<Vec<_>>());
        let src = FileSource::npy(&v, Some(l.clone()));
        let info = describe(&src).unwrap();
        assert_eq!((info.rows, info.cols, info.has_labels), (10, 3, true));
        let full = load_npy::<f64>(&v, Some(&l)).unwrap();
        let (part, labels) = read_rows::<f64>(&src, 4..7).unwrap();
        assert_eq!(part, full.values()[12..21]);
        assert_eq!(labels.unwrap(), full.labels().unwrap()[4..7]);
        assert!(read_rows::<f64>(&src, 8..11).unwrap_err().to_string().contains("holds 10 rows"));
    }

    #[test]
    fn ranges_of_raw_and_gzip_idx_equal_the_full_load() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..5 * 2 * 3).map(|i| (i * 7) as u8).collect();
        let mut images = vec![0, 0, 8, 3];
        for d in [5u32, 2, 3] {
            images.extend_from_slice(&d.to_be_bytes());
        }
        images.extend_from_slice(&pixels);
        let mut labels = vec![0, 0, 8, 1];
        labels.extend_from_slice(&5u32.to_be_bytes());
        labels.extend_from_slice(&[3, 1, 4, 1, 5]);
        let (i, l) = (dir.path().join("i.idx"), dir.path().join("l.idx.gz"));
        std::fs::write(&i, &images).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &labels).unwrap();
        std::fs::write(&l, gz.finish().unwrap()).unwrap();
        let src = FileSource::idx(&i, Some(l.clone()));
        let full = load_idx::<f32>(&i, Some(&l)).unwrap();
        let (part, lab) = read_rows::<f32>(&src, 1..4).unwrap();
        assert_eq!(part, full.values()[6..24]);
        assert_eq!(lab.unwrap(), [1.0, 4.0, 1.0]);
        let info = describe(&src).unwrap();
        assert_eq!((info.rows, info.cols), (5, 6));
        // Truncating the image file makes the last rows unreadable, with the file named.
        std::fs::write(&i, &images[..images.len() - 4]).unwrap();
        let e = read_rows::<f32>(&src, 3..5).unwrap_err().to_string();
        assert!(e.contains("i.idx"), "{e}");
    }
}
