//! The IDX format of MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number (two zero bytes, an element type, a dimension count), one big-endian `u32`
//! per dimension, then the elements in row-major order. Image files are `0x00000803` (unsigned bytes; count, rows,
//! columns) and label files `0x00000801` (unsigned bytes; count). Only the unsigned-byte element type `0x08` is
//! supported. The file must be exactly as long as its header says.

use std::path::Path;

use super::input::Input;
use super::{LoadElement, LoadError};
use crate::data::Dataset;

/// The IDX element type byte for unsigned bytes.
const TYPE_U8: u8 = 0x08;
/// IDX element type bytes defined by the format (all but `0x08` are rejected with a clear message).
const KNOWN_TYPES: [u8; 6] = [0x08, 0x09, 0x0b, 0x0c, 0x0d, 0x0e];

/// A stack of greyscale images read from an IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Pixel rows per image.
    pub rows: usize,
    /// Pixel columns per image.
    pub cols: usize,
    /// All pixels, image after image, each image row-major: `count * rows * cols` bytes.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Pixels per image (`rows * cols`).
    pub fn pixels_per_image(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels of image `i`, if there is one.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let n = self.pixels_per_image();
        self.pixels.get(i.checked_mul(n)?..i.checked_add(1)?.checked_mul(n)?)
    }
}

/// Reads an IDX image file (magic `0x00000803`), raw or gzip-compressed.
pub fn load_idx_images(path: impl AsRef<Path>) -> Result<IdxImages, LoadError> {
    let (dims, pixels) = read_idx(path.as_ref(), 3)?;
    Ok(IdxImages { count: dims[0], rows: dims[1], cols: dims[2], pixels })
}

/// Reads an IDX label file (magic `0x00000801`), raw or gzip-compressed: one byte per item.
pub fn load_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u8>, LoadError> {
    Ok(read_idx(path.as_ref(), 1)?.1)
}

/// Reads an IDX image file, and optionally its label file, as a dataset: one row per image with pixels scaled from
/// `0..=255` to `[0, 1]`, labels as class indices (`3.0` for class 3).
///
/// `load_idx::<f32>(..)` or `load_idx::<f64>(..)`. Fails if the two files hold different numbers of items.
pub fn load_idx<T: LoadElement>(images: impl AsRef<Path>, labels: Option<&Path>) -> Result<Dataset<T>, LoadError> {
    let images_path = images.as_ref();
    let images = load_idx_images(images_path)?;
    let labels = match labels {
        Some(path) => {
            let labels = load_idx_labels(path)?;
            if labels.len() != images.count {
                return Err(LoadError::CountMismatch {
                    values_path: images_path.to_path_buf(),
                    values: images.count,
                    labels_path: path.to_path_buf(),
                    labels: labels.len(),
                });
            }
            Some(labels)
        }
        None => None,
    };
    images_dataset(images_path, &images, labels.as_deref())
}

/// Builds the dataset of [`load_idx`] from images already read (`path` only goes into errors).
pub(crate) fn images_dataset<T: LoadElement>(
    path: &Path,
    images: &IdxImages,
    labels: Option<&[u8]>,
) -> Result<Dataset<T>, LoadError> {
    let data_error = |source| LoadError::Data { path: path.to_path_buf(), source };
    let mut scale = [T::default(); 256];
    for (p, s) in scale.iter_mut().enumerate() {
        *s = T::from_f64(p as f64 / 255.0);
    }
    // A plain indexed loop over slices: tens of millions of pixels stay fast even in unoptimised builds, where
    // iterator adapters cost a function call per element.
    let pixels: &[u8] = &images.pixels;
    let mut values = vec![T::default(); pixels.len()];
    let out: &mut [T] = &mut values;
    let mut i = 0;
    while i < pixels.len() {
        out[i] = scale[pixels[i] as usize];
        i += 1;
    }
    let dataset = Dataset::new(values, images.pixels_per_image()).map_err(data_error)?;
    match labels {
        Some(labels) => {
            dataset.with_labels(labels.iter().map(|&l| T::from_f64(f64::from(l))).collect()).map_err(data_error)
        }
        None => Ok(dataset),
    }
}

/// Reads an unsigned-byte IDX file with `ndims` dimensions: its dimensions and its elements.
fn read_idx(path: &Path, ndims: u8) -> Result<(Vec<usize>, Vec<u8>), LoadError> {
    let mut input = Input::open(path)?;
    let magic = input.header(4)?;
    let expected = u32::from_be_bytes([0, 0, TYPE_U8, ndims]);
    let found = u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]);
    let bad_magic = |hint: String| LoadError::BadMagic {
        path: path.to_path_buf(),
        found: format!("0x{found:08x}"),
        expected: format!("0x{expected:08x}"),
        hint,
    };
    if magic[0] != 0 || magic[1] != 0 || !KNOWN_TYPES.contains(&magic[2]) {
        return Err(bad_magic(
            "this is not an IDX file (they start with two zero bytes and a type byte 0x08..0x0e)".into(),
        ));
    }
    if magic[2] != TYPE_U8 {
        return Err(LoadError::IdxType { path: path.to_path_buf(), type_byte: magic[2] });
    }
    if magic[3] != ndims {
        let hint = match magic[3] {
            1 => "this is an IDX label file (1 dimension); pass it as the labels, not the images".to_string(),
            3 => "this is an IDX image file (3 dimensions); pass it as the images, not the labels".to_string(),
            n => format!("this IDX file has {n} dimensions; expected {ndims}"),
        };
        return Err(bad_magic(hint));
    }
    let header = input.header(4 * usize::from(ndims))?;
    let dims: Vec<u32> = header.chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).collect();
    // Images need a non-empty shape; the item count may be zero (the dataset then reports it as empty).
    if let Some(i) = dims.iter().skip(1).position(|&d| d == 0) {
        return Err(LoadError::Header {
            path: path.to_path_buf(),
            offset: 4 + 4 * (i as u64 + 1),
            message: format!("image dimension {} is 0; an image needs at least one row and one column", i + 1),
        });
    }
    // Three u32 factors cannot overflow u128; the payload check bounds the product by the file length.
    let len = dims.iter().fold(1u128, |acc, &d| acc * u128::from(d));
    let data = input.payload(u64::try_from(len).unwrap_or(u64::MAX))?;
    // A u32 fits a usize on every platform Rust's std supports with 32-bit or wider pointers.
    let dims = dims.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loaders::test_files::{gzip, idx_bytes};

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..3 * 2 * 4).map(|i| (i * 11) as u8).collect();
        (idx_bytes(0x08, &[3, 2, 4], &pixels), idx_bytes(0x08, &[3], &[7, 0, 9]))
    }

    #[test]
    fn idx_round_trip_raw_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = sample();
        for (name, images, labels) in [("raw", images.clone(), labels.clone()), ("gz", gzip(&images), gzip(&labels))] {
            let (ip, lp) = (dir.path().join(format!("i-{name}")), dir.path().join(format!("l-{name}")));
            std::fs::write(&ip, images).unwrap();
            std::fs::write(&lp, labels).unwrap();
            let img = load_idx_images(&ip).unwrap();
            assert_eq!((img.count, img.rows, img.cols), (3, 2, 4));
            assert_eq!(img.image(1).unwrap(), &(8..16).map(|i| (i * 11) as u8).collect::<Vec<_>>()[..]);
            assert_eq!(img.image(3), None);
            assert_eq!(load_idx_labels(&lp).unwrap(), vec![7, 0, 9]);

            let d = load_idx::<f32>(&ip, Some(&lp)).unwrap();
            assert_eq!((d.rows(), d.cols()), (3, 8));
            assert_eq!(d.values()[1], 11.0 / 255.0);
            assert_eq!(d.labels().unwrap(), &[7.0, 0.0, 9.0]);
            let d = load_idx::<f64>(&ip, None).unwrap();
            assert_eq!(d.values()[23], 253.0 / 255.0);
            assert!(d.labels().is_none());
        }
    }

    #[test]
    fn truncated_idx_names_file_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let (mut images, _) = sample();
        images.truncate(images.len() - 5);
        let p = dir.path().join("short");
        std::fs::write(&p, &images).unwrap();
        let e = load_idx_images(&p).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { ends_at: 35, expected: 40, gzip: false, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()) && msg.contains("byte 35") && msg.contains("40"), "{msg}");

        // The same, compressed: offsets count decompressed bytes.
        std::fs::write(&p, gzip(&images)).unwrap();
        let e = load_idx_images(&p).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { ends_at: 35, expected: 40, gzip: true, .. }), "{e:?}");

        // A header cut short, and a gzip stream cut short.
        std::fs::write(&p, &images[..6]).unwrap();
        assert!(matches!(load_idx_images(&p), Err(LoadError::Truncated { ends_at: 6, expected: 16, .. })));
        let (full, _) = sample();
        let gz = gzip(&full);
        std::fs::write(&p, &gz[..gz.len() - 12]).unwrap();
        assert!(matches!(load_idx_images(&p), Err(LoadError::Truncated { .. } | LoadError::Gzip { .. })));

        // Extra bytes after the data.
        let mut long = full.clone();
        long.push(1);
        std::fs::write(&p, &long).unwrap();
        let e = load_idx_images(&p).unwrap_err();
        assert!(matches!(e, LoadError::TrailingData { expected_end: 40, actual_end: 41, .. }), "{e:?}");
        std::fs::write(&p, gzip(&long)).unwrap();
        assert!(matches!(load_idx_images(&p), Err(LoadError::TrailingData { actual_end: 41, gzip: true, .. })));
    }

    #[test]
    fn huge_header_is_rejected_before_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("huge");
        std::fs::write(&p, idx_bytes(0x08, &[u32::MAX, u32::MAX, 1], &[1, 2, 3])).unwrap();
        let e = load_idx_images(&p).unwrap_err();
        assert!(matches!(e, LoadError::Truncated { ends_at: 19, expected: 18_446_744_065_119_617_041, .. }), "{e:?}");
        std::fs::write(&p, idx_bytes(0x08, &[u32::MAX, u32::MAX, u32::MAX], &[1, 2, 3])).unwrap();
        let e = load_idx_images(&p).unwrap_err();
        assert!(matches!(e, LoadError::Header { offset: 16, .. }), "{e:?}");
        std::fs::write(&p, gzip(&idx_bytes(0x08, &[u32::MAX, u32::MAX, u32::MAX], &[1, 2, 3]))).unwrap();
        let e = load_idx_images(&p).unwrap_err();
        assert!(matches!(e, LoadError::Header { offset: 16, .. }), "{e:?}");
    }

    #[test]
    fn wrong_magic_and_type_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let (images, labels) = sample();
        let (ip, lp) = (dir.path().join("images"), dir.path().join("labels"));
        std::fs::write(&ip, &images).unwrap();
        std::fs::write(&lp, &labels).unwrap();
        // Swapped files.
        let e = load_idx_images(&lp).unwrap_err();
        assert!(matches!(e, LoadError::BadMagic { .. }), "{e:?}");
        assert!(e.to_string().contains("0x00000801") && e.to_string().contains("label file"), "{e}");
        assert!(load_idx_labels(&ip).unwrap_err().to_string().contains("image file"));
        // Not IDX at all.
        let p = dir.path().join("text");
        std::fs::write(&p, "hello, world").unwrap();
        let e = load_idx_images(&p).unwrap_err();
        assert!(e.to_string().contains("not an IDX file"), "{e}");
        std::fs::write(&p, "").unwrap();
        assert!(matches!(load_idx_images(&p), Err(LoadError::Truncated { ends_at: 0, expected: 4, .. })));
        // A float IDX file.
        std::fs::write(&p, idx_bytes(0x0d, &[1, 1, 1], &[0; 4])).unwrap();
        let e = load_idx_images(&p).unwrap_err();
        assert!(matches!(e, LoadError::IdxType { type_byte: 0x0d, .. }));
        assert!(e.to_string().contains("0x0d (32-bit float)"), "{e}");
        // An empty image shape.
        std::fs::write(&p, idx_bytes(0x08, &[1, 0, 4], &[])).unwrap();
        assert!(matches!(load_idx_images(&p), Err(LoadError::Header { offset: 8, .. })));
    }

    #[test]
    fn image_and_label_counts_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (images, _) = sample();
        let (ip, lp) = (dir.path().join("images"), dir.path().join("labels"));
        std::fs::write(&ip, &images).unwrap();
        std::fs::write(&lp, idx_bytes(0x08, &[2], &[1, 2])).unwrap();
        let e = load_idx::<f32>(&ip, Some(&lp)).unwrap_err();
        assert!(matches!(e, LoadError::CountMismatch { values: 3, labels: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("3 rows") && e.to_string().contains("2 labels"), "{e}");
    }
}
