//! Named data sets found on the local machine; for now `fashion-mnist`.
//!
//! Nothing is downloaded: the files are looked for, in order, in `$COHORT_DATA/<name>`, `$COHORT_DATA`,
//! `./data/<name>` and `/usr/share/datasets/<name>` (where Debian's `dataset-fashion-mnist` package puts them). A
//! directory qualifies when it holds all four IDX files, each either plain or gzip-compressed with a `.gz` suffix.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::idx::load_idx;
use super::{LoadElement, LoadError};
use crate::data::Dataset;

/// The name of the Fashion-MNIST data set.
pub const FASHION_MNIST: &str = "fashion-mnist";
/// The data sets [`find_named`] knows.
pub const KNOWN: &[&str] = &[FASHION_MNIST];
/// The environment variable naming a directory of data sets.
pub const DATA_ENV: &str = "COHORT_DATA";
/// Where the Debian/Ubuntu `dataset-*` packages install data sets.
const SYSTEM_DIR: &str = "/usr/share/datasets";
/// The files of an MNIST-like data set (each may also carry a `.gz` suffix).
const FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// Which part of a data set to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training set (`train-*` files; 60 000 images for Fashion-MNIST).
    Train,
    /// The test set (`t10k-*` files; 10 000 images for Fashion-MNIST).
    Test,
}

impl Split {
    /// The prefix of this split's file names.
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// The directories [`find_named`] searches for data set `name`, in order (reads `COHORT_DATA`).
pub fn search_dirs(name: &str) -> Vec<PathBuf> {
    search_dirs_from(name, std::env::var_os(DATA_ENV))
}

fn search_dirs_from(name: &str, cohort_data: Option<OsString>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(root) = cohort_data.filter(|v| !v.is_empty()).map(PathBuf::from) {
        dirs.push(root.join(name));
        dirs.push(root);
    }
    dirs.push(Path::new(".").join("data").join(name));
    dirs.push(Path::new(SYSTEM_DIR).join(name));
    dirs
}

/// Finds the directory holding data set `name` (see the [module docs](self) for where it looks).
///
/// The error lists every place searched, why each did not qualify, and how to get the data set.
pub fn find_named(name: &str) -> Result<PathBuf, LoadError> {
    find_named_in(name, &search_dirs(name))
}

/// Like [`find_named`], searching `dirs` in order instead of the default places.
pub fn find_named_in(name: &str, dirs: &[PathBuf]) -> Result<PathBuf, LoadError> {
    if !KNOWN.contains(&name) {
        return Err(LoadError::UnknownDataset { name: name.into(), known: KNOWN.to_vec() });
    }
    let mut searched = Vec::new();
    for dir in dirs {
        match check_dir(dir) {
            Ok(()) => return Ok(dir.clone()),
            Err(reason) => searched.push(format!("  - {}: {reason}", dir.display())),
        }
    }
    Err(LoadError::NotFound {
        name: name.into(),
        searched,
        hint: format!(
            "To get it: `apt-get install dataset-{name}` (Debian/Ubuntu, installs {SYSTEM_DIR}/{name}), or put the \
             four IDX files ({}, each plain or with .gz) in ./data/{name}, or point {DATA_ENV} at a directory \
             holding them (or holding a `{name}` directory with them).",
            FILES.join(", ")
        ),
    })
}

/// Loads Fashion-MNIST from the directory [`find_named`] finds: 784 pixels per row scaled to `[0, 1]`, labels
/// `0.0..=9.0`.
pub fn load_fashion_mnist(split: Split) -> Result<Dataset<f32>, LoadError> {
    let dir = find_named(FASHION_MNIST)?;
    let data = load_mnist_like::<f32>(&dir, split)?;
    let invalid = |message: String| LoadError::Invalid { path: dir.clone(), message };
    if data.cols() != 28 * 28 {
        return Err(invalid(format!("images have {} pixels, not 28 × 28; this is not Fashion-MNIST", data.cols())));
    }
    if let Some(l) = data.labels().and_then(|l| l.iter().find(|&&l| l > 9.0)) {
        return Err(invalid(format!("label {l} is not a class 0..=9; this is not Fashion-MNIST")));
    }
    Ok(data)
}

/// Loads one split of an MNIST-like data set from `dir`: `<split>-images-idx3-ubyte` and `<split>-labels-idx1-ubyte`
/// (each plain or `.gz`), where the split is `train` or `t10k`. Pixels are scaled to `[0, 1]` and labels are class
/// indices.
pub fn load_mnist_like<T: LoadElement>(dir: impl AsRef<Path>, split: Split) -> Result<Dataset<T>, LoadError> {
    let dir = dir.as_ref();
    let prefix = split.prefix();
    let images = file_in(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels = file_in(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    load_idx(&images, Some(&labels))
}

/// The path of `base` or `base.gz` in `dir`, the plain file first.
fn find_file(dir: &Path, base: &str) -> Option<PathBuf> {
    [dir.join(base), dir.join(format!("{base}.gz"))].into_iter().find(|p| p.is_file())
}

fn file_in(dir: &Path, base: &str) -> Result<PathBuf, LoadError> {
    find_file(dir, base).ok_or_else(|| LoadError::Io {
        path: dir.join(base),
        source: io::Error::new(io::ErrorKind::NotFound, "no such file, with or without .gz"),
    })
}

/// Whether `dir` holds all the files; if not, why not.
fn check_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(if dir.exists() { "not a directory".into() } else { "no such directory".into() });
    }
    let missing: Vec<String> =
        FILES.iter().filter(|f| find_file(dir, f).is_none()).map(|f| format!("{f}(.gz)")).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::loaders::test_files::{gzip, idx_bytes};

    /// Writes a tiny MNIST-like data set (2×3 images; 4 train, 2 test) to `dir`, the train files compressed.
    fn write_tiny(dir: &Path) {
        for (prefix, count, gz) in [("train", 4u32, true), ("t10k", 2, false)] {
            let pixels: Vec<u8> = (0..count * 6).map(|i| (i * 10) as u8).collect();
            let labels: Vec<u8> = (0..count).map(|i| (i % 10) as u8).collect();
            for (kind, bytes) in [
                ("images-idx3-ubyte", idx_bytes(0x08, &[count, 2, 3], &pixels)),
                ("labels-idx1-ubyte", idx_bytes(0x08, &[count], &labels)),
            ] {
                let (name, bytes) = if gz {
                    (format!("{prefix}-{kind}.gz"), gzip(&bytes))
                } else {
                    (format!("{prefix}-{kind}"), bytes)
                };
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn search_order_follows_cohort_data() {
        let dirs = search_dirs_from("fashion-mnist", Some("/d".into()));
        let expected = ["/d/fashion-mnist", "/d", "./data/fashion-mnist", "/usr/share/datasets/fashion-mnist"];
        assert_eq!(dirs, expected.iter().map(PathBuf::from).collect::<Vec<_>>());
        assert_eq!(search_dirs_from("fashion-mnist", Some("".into())).len(), 2);
        assert_eq!(search_dirs_from("fashion-mnist", None).len(), 2);
    }

    #[test]
    fn named_data_set_is_found_and_loaded() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("fashion-mnist");
        std::fs::create_dir(&dir).unwrap();
        write_tiny(&dir);
        let found = find_named_in("fashion-mnist", &[root.path().join("nowhere"), dir.clone()]).unwrap();
        assert_eq!(found, dir);
        let train = load_mnist_like::<f32>(&found, Split::Train).unwrap();
        assert_eq!((train.rows(), train.cols()), (4, 6));
        assert_eq!(train.values()[7], 70.0 / 255.0);
        assert_eq!(train.labels().unwrap(), &[0.0, 1.0, 2.0, 3.0]);
        let test = load_mnist_like::<f64>(&found, Split::Test).unwrap();
        assert_eq!((test.rows(), test.cols()), (2, 6));
    }

    #[test]
    fn missing_named_data_set_says_where_it_looked_and_how_to_get_it() {
        let root = tempfile::tempdir().unwrap();
        let partial = root.path().join("partial");
        std::fs::create_dir(&partial).unwrap();
        write_tiny(&partial);
        std::fs::remove_file(partial.join("t10k-labels-idx1-ubyte")).unwrap();
        let dirs = search_dirs_from("fashion-mnist", Some(root.path().into()));
        let dirs = [&dirs[..2], std::slice::from_ref(&partial)].concat();
        let e = find_named_in("fashion-mnist", &dirs).unwrap_err();
        assert!(matches!(&e, LoadError::NotFound { searched, .. } if searched.len() == 3), "{e:?}");
        let msg = e.to_string();
        for needle in [
            &format!("{}: no such directory", root.path().join("fashion-mnist").display()),
            &format!("{}: missing train-images-idx3-ubyte(.gz), train-labels", root.path().display()),
            &format!("{}: missing t10k-labels-idx1-ubyte(.gz)\n", partial.display()),
            "apt-get install dataset-fashion-mnist",
            "./data/fashion-mnist",
            "COHORT_DATA",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
        }
        let e = load_mnist_like::<f32>(&partial, Split::Test).unwrap_err();
        assert!(e.to_string().contains("t10k-labels-idx1-ubyte: no such file"), "{e}");
        let e = find_named_in("cifar", &dirs).unwrap_err();
        assert!(e.to_string().contains("known data sets: fashion-mnist"), "{e}");
    }

    #[test]
    fn real_fashion_mnist_when_installed() {
        let dir = Path::new(SYSTEM_DIR).join(FASHION_MNIST);
        if check_dir(&dir).is_err() {
            println!("skipped: {} is absent (apt-get install dataset-fashion-mnist)", dir.display());
            return;
        }
        for (split, rows) in [(Split::Train, 60_000), (Split::Test, 10_000)] {
            let started = std::time::Instant::now();
            let data = load_mnist_like::<f32>(&dir, split).unwrap();
            println!("{split:?}: loaded in {:?}", started.elapsed());
            assert_eq!((data.rows(), data.cols()), (rows, 784), "{split:?}");
            let labels = data.labels().unwrap();
            assert!(labels.iter().all(|&l| (0.0..=9.0).contains(&l) && l.fract() == 0.0));
            assert!((0..10).all(|c| labels.contains(&(c as f32))));
            // Pixels are bytes scaled by 1/255, so the extremes of the first images must be exactly 0 and 1.
            let head = &data.values()[..100 * 784];
            assert_eq!(head.iter().copied().fold(f32::MAX, f32::min), 0.0);
            assert_eq!(head.iter().copied().fold(f32::MIN, f32::max), 1.0);
        }
    }
}
