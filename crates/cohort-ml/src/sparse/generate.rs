//! A deterministic generator of sparse binary-classification data with power-law feature frequencies — the kind of
//! data parameter servers exist for — written as libsvm text or encoded in memory.
//!
//! **Rows.** Row `i` is a function of `(seed, i)` alone, so a file of `N` rows is a prefix of a file of `N + M`
//! rows, and a test set is the rows after the training rows (`first_row`). A row has `nnz ± 25 %` distinct features
//! (uniform), drawn from Zipf's law over the `features` ranks (`P(rank r) ∝ (r + 1)^−s`, [`Zipf`]): a few features
//! are in nearly every row, most features are rare, many never occur. Ranks are mapped to keys by a seeded
//! permutation, so frequent keys are spread over the whole key space as hashed features are (a server owning any
//! key range sees hot and cold keys alike).
//!
//! **Values.** [`ValueKind::TfIdf`] (the default): a feature drawn `tf` times has the weight
//! `(1 + ln tf) · idf`, with `idf = 1 − ln q` and `q` the probability that the feature occurs in a row; the row is
//! then scaled to unit Euclidean norm and every value rounded to a multiple of 10⁻⁵ (at least 10⁻⁵), so the text is
//! short and reads back to the same `f32`. [`ValueKind::Binary`]: every value is 1.
//!
//! **Labels.** A hidden sparse weight vector `w*` has independent standard-normal weights on the `informative` most
//! frequent ranks (default `features / 64`) and zero elsewhere. A row is positive when
//! `c·(w*·x) + noise·ε > 0` with `ε` standard normal and `c` making `c·(w*·x)` of unit root-mean-square (measured
//! on 1000 pilot rows of their own stream). The labelling is linear in the stored values, so logistic regression
//! can learn it; with `noise` 0.3 the best possible accuracy is about 91 %, and by symmetry the classes are
//! balanced.
//!
//! **Text.** `+1 k:v k:v ...` or `-1 ...`, one row per line, indices 1-based (the libsvm convention:
//! index = key + 1) and increasing, no comments. liblinear, scikit-learn's `load_svmlight_file` and
//! [`super::load_libsvm_sparse`] read it.

use std::io::{self, Write};
use std::path::Path;
use std::str::FromStr;

use cohort::rng::Rng;

use super::encoding::{SparseBuilder, SparseDataset, MAX_FEATURES};
use super::logreg::logistic_loss;
use super::zipf::Zipf;
use super::SparseError;
use crate::error::{MlError, Result};

/// Stream salts: each random quantity has its own stream of the seed.
const ROWS: u64 = 0x5ba7_5e00_0000_0001;
const TRUTH: u64 = 0x5ba7_5e00_0000_0002;
const KEYS: u64 = 0x5ba7_5e00_0000_0003;
const PILOT: u64 = 0x5ba7_5e00_0000_0004;
/// Pilot rows that calibrate the margin's scale.
const PILOT_ROWS: u64 = 1000;
/// Values are multiples of 1 / QUANTUM.
const QUANTUM: f64 = 1e5;

/// What the non-zero values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// tf-idf weights, rows of unit norm (see the [module docs](self)).
    TfIdf,
    /// Every value 1.
    Binary,
}

impl FromStr for ValueKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tfidf" => Ok(ValueKind::TfIdf),
            "binary" => Ok(ValueKind::Binary),
            other => Err(format!("unknown value kind {other:?}: use tfidf or binary")),
        }
    }
}

/// What to generate. Start from `SparseSpec::default()` and adjust.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseSpec {
    /// Rows to generate.
    pub rows: usize,
    /// Number of features (keys `0..features`), at most 2²⁴.
    pub features: usize,
    /// Mean non-zeros per row; each row has `nnz ± nnz/4`, uniformly.
    pub nnz: usize,
    /// Exponent `s` of the power law of feature frequencies (1: Zipf's law).
    pub zipf: f64,
    /// What the values are.
    pub values: ValueKind,
    /// The most frequent ranks that carry true weight (`None`: `features / 64`, at least 1).
    pub informative: Option<usize>,
    /// Standard deviation of the label noise, relative to the margin's root-mean-square.
    pub noise: f64,
    /// Seed: the same seed gives the same rows on every machine.
    pub seed: u64,
    /// Index of the first row (a test set starts where the training rows end).
    pub first_row: u64,
}

impl Default for SparseSpec {
    /// 100 000 rows, 2²² features, 200 non-zeros per row, Zipf exponent 1, tf-idf values, noise 0.3, seed 42.
    fn default() -> Self {
        SparseSpec {
            rows: 100_000,
            features: 1 << 22,
            nnz: 200,
            zipf: 1.0,
            values: ValueKind::TfIdf,
            informative: None,
            noise: 0.3,
            seed: 42,
            first_row: 0,
        }
    }
}

impl SparseSpec {
    /// The fewest and the most non-zeros a row has.
    pub fn nnz_range(&self) -> (usize, usize) {
        (self.nnz - self.nnz / 4, self.nnz + self.nnz / 4)
    }

    fn informative(&self) -> usize {
        self.informative.unwrap_or(self.features / 64).max(1)
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &'static str, detail: String| Err(MlError::Config { what, detail });
        if !(4..=MAX_FEATURES).contains(&self.features) {
            return bad("feature count", format!("{}: use 4 ..= 2^24 = {MAX_FEATURES}", self.features));
        }
        let (_, most) = self.nnz_range();
        if self.nnz == 0 || most > self.features / 4 {
            return bad(
                "non-zeros per row",
                format!(
                    "{} (rows of up to {most}) with {} features: need at least 1, and rows of at most a quarter of \
                     the features",
                    self.nnz, self.features
                ),
            );
        }
        if !(self.zipf > 0.0 && self.zipf.is_finite()) {
            return bad("Zipf exponent", format!("{}: need a finite exponent > 0", self.zipf));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return bad("label noise", format!("{}: need a finite number ≥ 0", self.noise));
        }
        if self.informative() > self.features {
            return bad(
                "informative features",
                format!("{} of {} features: need at most all of them", self.informative(), self.features),
            );
        }
        Ok(())
    }
}

/// A seeded bijection of `0..n`: an invertible mix of `⌈log₂ n⌉`-bit words (odd multiplications, additions and
/// xor-shifts, all modulo 2^bits), walked until it lands below `n` (cycle walking; under two steps on average).
#[derive(Debug, Clone)]
struct KeyMap {
    n: u64,
    mask: u64,
    shift: u32,
    mul: [u64; 2],
    add: [u64; 2],
}

impl KeyMap {
    fn new(n: u64, rng: &mut Rng) -> KeyMap {
        let bits = 64 - (n - 1).leading_zeros();
        let mask = if bits == 64 { u64::MAX } else { (1 << bits) - 1 };
        KeyMap {
            n,
            mask,
            shift: (bits / 2).max(1),
            mul: [rng.next_u64() | 1, rng.next_u64() | 1],
            add: [rng.next_u64(), rng.next_u64()],
        }
    }

    fn key(&self, rank: u64) -> u64 {
        let mut x = rank;
        loop {
            for r in 0..2 {
                x = x.wrapping_mul(self.mul[r]).wrapping_add(self.add[r]) & self.mask;
                x ^= x >> self.shift;
            }
            if x < self.n {
                return x;
            }
        }
    }
}

/// One generated row: class, keys (increasing) and values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GeneratedRow {
    /// Whether the row is of the positive class.
    pub positive: bool,
    /// Keys, increasing.
    pub keys: Vec<u64>,
    /// Values, in key order.
    pub values: Vec<f32>,
    /// Scratch: the ranks drawn, then (rank, draws) runs, then (key, value) pairs.
    draws: Vec<u32>,
    runs: Vec<(u32, u32)>,
    pairs: Vec<(u64, f32)>,
}

/// What writing a data set produced.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GenStats {
    /// Rows written.
    pub rows: usize,
    /// Positive rows.
    pub positives: usize,
    /// Non-zeros over all rows.
    pub nonzeros: u64,
    /// Non-zeros of the widest row.
    pub max_nnz: usize,
    /// Distinct keys that occur.
    pub distinct_keys: usize,
    /// Bytes of text written.
    pub bytes: u64,
    /// Rows the hidden weights classify right (`w*·x > 0` for the positive rows): the best possible accuracy.
    pub truth_correct: usize,
    /// Sum of the logistic losses of the hidden (scaled) weights.
    pub truth_loss: f64,
}

/// The generator of a [`SparseSpec`]: holds the key permutation, the hidden weights and the margin's scale.
#[derive(Debug, Clone)]
pub struct SparseGenerator {
    spec: SparseSpec,
    zipf: Zipf,
    keys: KeyMap,
    /// True weight of each informative rank.
    truth: Vec<f64>,
    /// Factor that gives the true margin a unit root-mean-square.
    scale: f64,
}

impl SparseGenerator {
    /// Checks the spec and prepares the generator (the hidden weights, and the scale from the pilot rows).
    pub fn new(spec: SparseSpec) -> Result<SparseGenerator> {
        spec.validate()?;
        let zipf = Zipf::new(spec.features, spec.zipf)?;
        let keys = KeyMap::new(spec.features as u64, &mut Rng::derive(spec.seed ^ KEYS, 0));
        let mut rng = Rng::derive(spec.seed ^ TRUTH, 0);
        let truth = (0..spec.informative()).map(|_| rng.normal()).collect();
        let mut generator = SparseGenerator { spec, zipf, keys, truth, scale: 1.0 };
        let mut row = GeneratedRow::default();
        let mut square = 0.0;
        for j in 0..PILOT_ROWS {
            square += generator.draw(&mut Rng::derive(generator.spec.seed ^ PILOT, j), &mut row).powi(2);
        }
        let rms = (square / PILOT_ROWS as f64).sqrt();
        if rms > 0.0 {
            generator.scale = 1.0 / rms;
        }
        Ok(generator)
    }

    /// The spec.
    pub fn spec(&self) -> &SparseSpec {
        &self.spec
    }

    /// Non-zeros per row at most: the padding width of [`dataset`](Self::dataset).
    pub fn max_nnz(&self) -> usize {
        self.spec.nnz_range().1
    }

    /// The hidden weights as a dense vector over the keys, scaled as the labels see them (`c·w*`).
    pub fn true_weights(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.spec.features];
        for (rank, &t) in self.truth.iter().enumerate() {
            w[self.keys.key(rank as u64) as usize] = (t * self.scale) as f32;
        }
        w
    }

    /// Row `index` (of the whole data set, not counting from `first_row`) into `row`.
    pub fn row_into(&self, index: u64, row: &mut GeneratedRow) {
        self.labelled(index, row);
    }

    /// [`row_into`](Self::row_into), returning the row's margin under the hidden (scaled) weights.
    fn labelled(&self, index: u64, row: &mut GeneratedRow) -> f64 {
        let mut rng = Rng::derive(self.spec.seed ^ ROWS, index);
        let margin = self.scale * self.draw(&mut rng, row);
        row.positive = margin + self.spec.noise * rng.normal() > 0.0;
        margin
    }

    /// Row `index` (of the whole data set).
    pub fn row(&self, index: u64) -> GeneratedRow {
        let mut row = GeneratedRow::default();
        self.row_into(index, &mut row);
        row
    }

    /// Draws a row's features and values from `rng` into `row` (keys, values) and returns its true margin `w*·x`.
    fn draw(&self, rng: &mut Rng, row: &mut GeneratedRow) -> f64 {
        let (fewest, most) = self.spec.nnz_range();
        let target = fewest + rng.below((most - fewest + 1) as u64) as usize;
        // Draw until `target` distinct ranks: each round draws as many as are missing, so it never overshoots.
        row.draws.clear();
        let mut distinct = 0;
        while distinct < target {
            for _ in distinct..target {
                row.draws.push(self.zipf.sample(rng) as u32);
            }
            row.draws.sort_unstable();
            distinct = 1 + row.draws.windows(2).filter(|w| w[0] != w[1]).count();
        }
        row.runs.clear();
        for &rank in &row.draws {
            match row.runs.last_mut() {
                Some((r, tf)) if *r == rank => *tf += 1,
                _ => row.runs.push((rank, 1)),
            }
        }
        row.pairs.clear();
        match self.spec.values {
            ValueKind::Binary => row.pairs.extend(row.runs.iter().map(|&(rank, _)| (self.keys.key(rank.into()), 1.0))),
            ValueKind::TfIdf => {
                let raw: Vec<f64> = row.runs.iter().map(|&(rank, tf)| self.tf_idf(rank as usize, tf)).collect();
                let norm = raw.iter().map(|v| v * v).sum::<f64>().sqrt();
                for (&(rank, _), &v) in row.runs.iter().zip(&raw) {
                    row.pairs.push((self.keys.key(rank.into()), quantise(v / norm)));
                }
            }
        }
        // Ranks ascending: the margin's summation order is fixed.
        let margin = row
            .runs
            .iter()
            .zip(&row.pairs)
            .filter_map(|(&(rank, _), &(_, v))| self.truth.get(rank as usize).map(|t| t * f64::from(v)))
            .sum();
        row.pairs.sort_unstable_by_key(|&(k, _)| k);
        row.keys.clear();
        row.values.clear();
        for &(k, v) in &row.pairs {
            row.keys.push(k);
            row.values.push(v);
        }
        margin
    }

    /// `(1 + ln tf) · (1 − ln q)`, `q` the probability that rank `rank` occurs in a row of `nnz` draws.
    fn tf_idf(&self, rank: usize, tf: u32) -> f64 {
        let q = -(-(self.spec.nnz as f64) * self.zipf.probability(rank)).exp_m1();
        (1.0 + f64::from(tf).ln()) * (1.0 - q.ln())
    }

    /// Writes the rows as libsvm text to `out` (buffer it) and returns what was written.
    pub fn write_libsvm(&self, out: &mut impl Write) -> io::Result<GenStats> {
        let mut stats = GenStats::default();
        let mut seen = vec![0u64; self.spec.features.div_ceil(64)];
        let mut row = GeneratedRow::default();
        let mut line = Vec::with_capacity(16 * self.max_nnz() + 4);
        for i in 0..self.spec.rows as u64 {
            let margin = self.labelled(self.spec.first_row + i, &mut row);
            stats.truth_correct += usize::from((margin > 0.0) == row.positive);
            stats.truth_loss += logistic_loss(margin, if row.positive { 1.0 } else { 0.0 });
            line.clear();
            format_row(&row, self.spec.values, &mut line);
            out.write_all(&line)?;
            stats.rows += 1;
            stats.positives += usize::from(row.positive);
            stats.nonzeros += row.keys.len() as u64;
            stats.max_nnz = stats.max_nnz.max(row.keys.len());
            stats.bytes += line.len() as u64;
            for &k in &row.keys {
                seen[(k / 64) as usize] |= 1 << (k % 64);
            }
        }
        stats.distinct_keys = seen.iter().map(|w| w.count_ones() as usize).sum();
        Ok(stats)
    }

    /// Writes the rows as a libsvm file at `path`.
    pub fn write_libsvm_file(&self, path: impl AsRef<Path>) -> std::result::Result<GenStats, SparseError> {
        let path = path.as_ref();
        let io_err = |source| SparseError::Write { path: path.to_path_buf(), source };
        let file = std::fs::File::create(path).map_err(io_err)?;
        let mut out = io::BufWriter::with_capacity(1 << 20, file);
        let stats = self.write_libsvm(&mut out).map_err(io_err)?;
        out.flush().map_err(io_err)?;
        Ok(stats)
    }

    /// The rows encoded in memory (padding width [`max_nnz`](Self::max_nnz)), without a file.
    pub fn dataset(&self) -> Result<SparseDataset> {
        let mut builder = SparseBuilder::new(self.max_nnz())?;
        builder.reserve(self.spec.rows);
        let mut row = GeneratedRow::default();
        for i in 0..self.spec.rows as u64 {
            self.row_into(self.spec.first_row + i, &mut row);
            builder.push(row.positive, &row.keys, &row.values)?;
        }
        builder.finish(Some(self.spec.features))
    }
}

/// `v ∈ (0, 1]` rounded to a multiple of 10⁻⁵, at least 10⁻⁵, as the `f32` that its text (see [`format_value`])
/// reads back as.
fn quantise(v: f64) -> f32 {
    let q = (v * QUANTUM).round().clamp(1.0, QUANTUM);
    (q / QUANTUM) as f32
}

/// Appends the text of a value made by [`quantise`]: `1`, or `0.` and up to five digits without trailing zeros.
fn format_value(v: f32, out: &mut Vec<u8>) {
    let q = (f64::from(v) * QUANTUM).round() as u32;
    if q >= QUANTUM as u32 {
        out.push(b'1');
        return;
    }
    let mut digits = [b'0'; 5];
    let mut rest = q;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let used = 5 - digits.iter().rev().take_while(|&&d| d == b'0').count();
    out.extend_from_slice(b"0.");
    out.extend_from_slice(&digits[..used.max(1)]);
}

/// Appends `n` in decimal.
fn format_uint(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends one line of libsvm text: `+1`/`-1`, then ` index:value` with index = key + 1.
fn format_row(row: &GeneratedRow, kind: ValueKind, out: &mut Vec<u8>) {
    out.extend_from_slice(if row.positive { b"+1" } else { b"-1" });
    for (&k, &v) in row.keys.iter().zip(&row.values) {
        out.push(b' ');
        format_uint(k + 1, out);
        out.push(b':');
        match kind {
            ValueKind::Binary => out.push(b'1'),
            ValueKind::TfIdf => format_value(v, out),
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(rows: usize) -> SparseSpec {
        SparseSpec { rows, features: 5000, nnz: 40, seed: 7, ..SparseSpec::default() }
    }

    /// Every value `quantise` can return reads back from its text as the same `f32`.
    #[test]
    fn every_quantised_value_round_trips_through_its_text() {
        let mut text = Vec::new();
        for q in 1..=QUANTUM as u32 {
            let v = quantise(f64::from(q) / QUANTUM);
            text.clear();
            format_value(v, &mut text);
            let s = std::str::from_utf8(&text).unwrap();
            assert_eq!(s.parse::<f32>().unwrap().to_bits(), v.to_bits(), "{q}: {s}");
        }
        text.clear();
        format_value(quantise(0.012), &mut text);
        assert_eq!(text, b"0.012");
        assert_eq!(quantise(1e-9), 1e-5);
        let mut n = Vec::new();
        format_uint(0, &mut n);
        format_uint(16_777_216, &mut n);
        assert_eq!(n, b"016777216");
    }

    #[test]
    fn the_key_map_is_a_permutation() {
        for n in [4u64, 5, 64, 1000, 4097] {
            let map = KeyMap::new(n, &mut Rng::new(n));
            let mut keys: Vec<u64> = (0..n).map(|r| map.key(r)).collect();
            if n >= 64 {
                assert_ne!(keys[..4], [0, 1, 2, 3], "n {n}: the frequent ranks should not stay in place");
            }
            keys.sort_unstable();
            assert_eq!(keys, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn rows_depend_on_seed_and_index_only() {
        let g = SparseGenerator::new(small(30)).unwrap();
        let (fewest, most) = g.spec().nnz_range();
        for i in 0..30 {
            let r = g.row(i);
            assert!((fewest..=most).contains(&r.keys.len()), "{}", r.keys.len());
            assert!(r.keys.windows(2).all(|w| w[0] < w[1]) && r.keys.iter().all(|&k| k < 5000));
            let norm: f64 = r.values.iter().map(|&v| f64::from(v).powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-3, "{norm}");
        }
        // The same row from a generator started further on, and from a new generator of the same seed.
        let later = SparseGenerator::new(SparseSpec { first_row: 10, ..small(5) }).unwrap();
        let (all, part) = (g.dataset().unwrap(), later.dataset().unwrap());
        let cols = all.data.cols();
        assert_eq!(part.data.values(), &all.data.values()[10 * cols..15 * cols]);
        assert_eq!(part.data.labels().unwrap(), &all.data.labels().unwrap()[10..15]);
        assert_eq!(SparseGenerator::new(small(30)).unwrap().row(3), g.row(3));
        assert_ne!(SparseGenerator::new(SparseSpec { seed: 8, ..small(30) }).unwrap().row(3), g.row(3));
        let binary = SparseGenerator::new(SparseSpec { values: ValueKind::Binary, ..small(3) }).unwrap();
        assert!(binary.row(0).values.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn the_text_is_libsvm_with_one_based_indices() {
        let g = SparseGenerator::new(small(20)).unwrap();
        let mut out = Vec::new();
        let stats = g.write_libsvm(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 20);
        assert_eq!(stats.bytes, text.len() as u64);
        let first = text.lines().next().unwrap();
        let row = g.row(0);
        let label = if row.positive { "+1" } else { "-1" };
        assert!(first.starts_with(&format!("{label} {}:", row.keys[0] + 1)), "{first}");
        assert_eq!(first.split(' ').count(), 1 + row.keys.len());
        assert_eq!(stats.nonzeros, (0..20).map(|i| g.row(i).keys.len() as u64).sum::<u64>());
        assert!(stats.distinct_keys > 40 && stats.distinct_keys < 20 * 50);
        assert!(stats.truth_correct > 10 && stats.truth_loss > 0.0);
    }

    #[test]
    fn bad_specs_are_refused() {
        for spec in [
            SparseSpec { features: 3, ..small(1) },
            SparseSpec { features: MAX_FEATURES + 1, ..small(1) },
            SparseSpec { nnz: 0, ..small(1) },
            SparseSpec { nnz: 1001, ..small(1) },
            SparseSpec { zipf: 0.0, ..small(1) },
            SparseSpec { noise: -1.0, ..small(1) },
            SparseSpec { informative: Some(5001), ..small(1) },
        ] {
            assert!(matches!(SparseGenerator::new(spec.clone()), Err(MlError::Config { .. })), "{spec:?}");
        }
        assert_eq!("binary".parse::<ValueKind>(), Ok(ValueKind::Binary));
        assert!("dense".parse::<ValueKind>().is_err());
    }
}
