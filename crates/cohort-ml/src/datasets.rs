//! Training and test data for the classifiers: Fashion-MNIST (found where `cohort::data::loaders` looks) or a
//! generated stand-in of the same shape, cut to the first rows asked for and, unless asked otherwise, standardised
//! with the training rows' statistics ([`Scaling`]).

use std::path::Path;

use cohort::data::loaders::{find_named_in, load_mnist_like, named::FASHION_MNIST, search_dirs, LoadError, Split};
use cohort::rng::Rng;
use cohort::{DataError, Dataset};

/// Why a data set could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The files could not be found or read.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The values do not form a data set.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A request that cannot be met.
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, DatasetError>;

/// Training and test rows, and where they came from.
#[derive(Debug, Clone)]
pub struct TrainTest {
    /// Training rows.
    pub train: Dataset<f32>,
    /// Test rows.
    pub test: Dataset<f32>,
    /// Human-readable origin, e.g. `fashion-mnist (/usr/share/datasets/fashion-mnist)`.
    pub source: String,
    /// The standardisation applied to both (`None`: raw values).
    pub scaling: Option<Scaling>,
}

/// A per-feature affine map `x' = (x − mean) · scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    /// Per-feature mean.
    pub mean: Vec<f32>,
    /// Per-feature factor (1 / standard deviation, or 1 for a constant feature).
    pub scale: Vec<f32>,
}

impl Scaling {
    /// The map that standardises `train`'s features (zero mean, unit variance; constant features only centred).
    pub fn fit(train: &Dataset<f32>) -> Scaling {
        let d = train.cols();
        let n = train.rows().max(1) as f64;
        let mut sum = vec![0.0f64; d];
        let mut sq = vec![0.0f64; d];
        for row in train.values().chunks_exact(d) {
            for ((m, s), &v) in sum.iter_mut().zip(&mut sq).zip(row) {
                *m += f64::from(v);
                *s += f64::from(v) * f64::from(v);
            }
        }
        let (mut mean, mut scale) = (Vec::with_capacity(d), Vec::with_capacity(d));
        for (&m, &s) in sum.iter().zip(&sq) {
            let mu = m / n;
            let sd = (s / n - mu * mu).max(0.0).sqrt();
            mean.push(mu as f32);
            scale.push(if sd > 1e-6 { (1.0 / sd) as f32 } else { 1.0 });
        }
        Scaling { mean, scale }
    }

    /// Applies the map to every row of `data`.
    pub fn apply(&self, data: Dataset<f32>) -> Result<Dataset<f32>> {
        let d = data.cols();
        if d != self.mean.len() || d != self.scale.len() {
            return Err(DatasetError::Invalid(format!(
                "the standardisation is for {} features but the data has {d}",
                self.mean.len()
            )));
        }
        let mut values = data.values().to_vec();
        for row in values.chunks_exact_mut(d) {
            for ((v, &mu), &inv) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = (*v - mu) * inv;
            }
        }
        let out = Dataset::new(values, d)?;
        Ok(match data.labels() {
            Some(l) => out.with_labels(l.to_vec())?,
            None => out,
        })
    }
}

/// How to prepare a [`TrainTest`].
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// `fashion-mnist` or `generated`.
    pub name: &'a str,
    /// Look only in this directory (Fashion-MNIST).
    pub dir: Option<&'a Path>,
    /// Keep the first N training rows.
    pub train_rows: Option<usize>,
    /// Keep the first N test rows.
    pub test_rows: Option<usize>,
    /// Seed of the generated stand-in.
    pub seed: u64,
    /// Keep the raw pixels instead of standardising.
    pub raw: bool,
}

/// Fashion-MNIST's training and test splits with raw pixels in [0, 1], from `dir` or the usual places.
pub fn fashion_mnist(dir: Option<&Path>) -> Result<TrainTest> {
    prepare(&Request { name: FASHION_MNIST, dir, raw: true, ..Request::default() })
}

/// Loads (or generates) the data set `request.name`, keeps the first rows and standardises it.
pub fn prepare(request: &Request<'_>) -> Result<TrainTest> {
    let (train, test, source) = match request.name {
        FASHION_MNIST => {
            let dirs = request.dir.map_or_else(|| search_dirs(FASHION_MNIST), |d| vec![d.to_path_buf()]);
            let found = find_named_in(FASHION_MNIST, &dirs)?;
            let train = load_mnist_like::<f32>(&found, Split::Train)?;
            let test = load_mnist_like::<f32>(&found, Split::Test)?;
            (train, test, format!("{FASHION_MNIST} ({})", found.display()))
        }
        "generated" => {
            let train = generated(request.train_rows.unwrap_or(60_000), request.seed)?;
            let test = generated(request.test_rows.unwrap_or(10_000), request.seed ^ 0x7e57)?;
            (train, test, "generated (784 features, 10 classes)".to_string())
        }
        other => {
            return Err(DatasetError::Invalid(format!("unknown --dataset {other:?}: use fashion-mnist or generated")))
        }
    };
    let (train, test) = (head(train, request.train_rows)?, head(test, request.test_rows)?);
    if request.raw {
        return Ok(TrainTest { train, test, source, scaling: None });
    }
    let scaling = Scaling::fit(&train);
    Ok(TrainTest { train: scaling.apply(train)?, test: scaling.apply(test)?, source, scaling: Some(scaling) })
}

/// The first `rows` rows of `data` (all if `None` or more than there are).
pub fn head(data: Dataset<f32>, rows: Option<usize>) -> Result<Dataset<f32>> {
    let n = rows.unwrap_or(usize::MAX).min(data.rows());
    if n == 0 {
        return Err(DatasetError::Invalid("--train-rows/--test-rows must be at least 1".into()));
    }
    if n == data.rows() {
        return Ok(data);
    }
    let d = data.cols();
    let labels = data.labels().map(|l| l[..n].to_vec());
    let mut out = Dataset::new(data.values()[..n * d].to_vec(), d)?;
    if let Some(l) = labels {
        out = out.with_labels(l)?;
    }
    Ok(out)
}

/// Number of classes of a labelled data set: one more than the largest label (at least 2).
pub fn classes(data: &Dataset<f32>) -> Result<usize> {
    let labels = data
        .labels()
        .ok_or_else(|| DatasetError::Invalid("the data set has no labels; a classifier needs class labels".into()))?;
    let max = labels.iter().fold(0.0f32, |m, &l| m.max(l));
    if !(0.0..1e6).contains(&max) {
        return Err(DatasetError::Invalid(format!("labels must be class indices 0, 1, 2, ...; found {max}")));
    }
    Ok((max as usize + 1).max(2))
}

/// A generated stand-in for Fashion-MNIST: 28×28 "images" of 10 classes, each a noisy, randomly shifted copy of
/// its class's smooth random template, pixels in [0, 1]. Learnable, but not linearly trivial.
pub fn generated(rows: usize, seed: u64) -> Result<Dataset<f32>> {
    const SIDE: usize = 28;
    let mut rng = Rng::new(0xfa5e);
    // Templates: a few random Gaussian blobs per class (fixed across seeds, so train and test share them).
    let templates: Vec<Vec<f32>> = (0..10)
        .map(|_| {
            let blobs: Vec<(f64, f64, f64)> = (0..4)
                .map(|_| (4.0 + 20.0 * rng.uniform(), 4.0 + 20.0 * rng.uniform(), 2.0 + 4.0 * rng.uniform()))
                .collect();
            (0..SIDE * SIDE)
                .map(|p| {
                    let (r, c) = ((p / SIDE) as f64, (p % SIDE) as f64);
                    let v: f64 = blobs
                        .iter()
                        .map(|(br, bc, s)| (-((r - br).powi(2) + (c - bc).powi(2)) / (2.0 * s * s)).exp())
                        .sum();
                    v.min(1.0) as f32
                })
                .collect()
        })
        .collect();
    let mut rng = Rng::new(seed);
    let mut values = Vec::with_capacity(rows * SIDE * SIDE);
    let mut labels = Vec::with_capacity(rows);
    for _ in 0..rows {
        let class = rng.below(10) as usize;
        let (dr, dc) = (rng.below(5) as isize - 2, rng.below(5) as isize - 2);
        let gain = 0.15 + 0.35 * rng.uniform() as f32;
        for p in 0..SIDE * SIDE {
            let (r, c) = ((p / SIDE) as isize + dr, (p % SIDE) as isize + dc);
            let base = if (0..SIDE as isize).contains(&r) && (0..SIDE as isize).contains(&c) {
                templates[class][r as usize * SIDE + c as usize]
            } else {
                0.0
            };
            values.push((gain * base + 0.5 * rng.normal() as f32).clamp(0.0, 1.0));
        }
        labels.push(class as f32);
    }
    Ok(Dataset::new(values, SIDE * SIDE)?.with_labels(labels)?)
}
