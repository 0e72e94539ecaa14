//! A Zipf (power-law) distribution over ranks `0..n`, `P(r) ∝ (r + 1)^−s`, sampled in constant time by
//! rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion to generate variates from monotone
//! discrete distributions", ACM TOMACS 6(3), 1996) — the method of Apache Commons RNG's Zipf sampler. A table of
//! the cumulative distribution would cost 8 bytes per feature and a binary search per draw; this costs a few
//! floating-point operations and rarely rejects.

use cohort::rng::Rng;

use crate::error::{MlError, Result};

/// Zipf's law with exponent `s > 0` over `n` ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct Zipf {
    n: usize,
    s: f64,
    /// `H(1.5) − 1`: the lower end of the area that is sampled (rank 1 owns `[H(1.5) − h(1), H(1.5)]`).
    h_x1: f64,
    /// `H(n + 0.5)`: the upper end.
    h_n: f64,
    /// Shortcut: a proposal this close to its rank is accepted without evaluating `H`.
    shortcut: f64,
    /// `Σ_{k=1}^{n} k^−s`, the normaliser of the probabilities.
    harmonic: f64,
}

impl Zipf {
    /// The distribution over `n ≥ 1` ranks with exponent `s` (finite, `> 0`; 1 is Zipf's classic law).
    pub fn new(n: usize, s: f64) -> Result<Zipf> {
        if n == 0 || !(s > 0.0 && s.is_finite()) {
            return Err(MlError::Config {
                what: "Zipf distribution",
                detail: format!("{n} ranks with exponent {s}: need at least 1 rank and a finite exponent > 0"),
            });
        }
        let h_x1 = h_integral(1.5, s) - 1.0;
        let h_n = h_integral(n as f64 + 0.5, s);
        let shortcut = 2.0 - h_integral_inverse(h_integral(2.5, s) - h(2.0, s), s);
        let harmonic = harmonic(n, s);
        Ok(Zipf { n, s, h_x1, h_n, shortcut, harmonic })
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.n
    }

    /// The exponent.
    pub fn exponent(&self) -> f64 {
        self.s
    }

    /// Probability of rank `r` (0-based); 0 outside `0..n`.
    pub fn probability(&self, r: usize) -> f64 {
        if r >= self.n {
            return 0.0;
        }
        h(r as f64 + 1.0, self.s) / self.harmonic
    }

    /// One rank (0-based; rank 0 is the most likely).
    pub fn sample(&self, rng: &mut Rng) -> usize {
        loop {
            // Uniform in (H(1.5) − 1, H(n + 0.5)].
            let u = self.h_n + rng.uniform() * (self.h_x1 - self.h_n);
            let x = h_integral_inverse(u, self.s);
            // Round to the nearest rank (1-based), kept inside 1..=n against rounding at the ends.
            let k = (x + 0.5).floor().clamp(1.0, self.n as f64);
            if k - x <= self.shortcut || u >= h_integral(k + 0.5, self.s) - h(k, self.s) {
                return k as usize - 1;
            }
        }
    }
}

/// `Σ_{k=1}^{n} k^−s`: the first terms summed, the rest by the Euler–Maclaurin formula (integral, end-point and
/// first-derivative terms; the next term is below 1e-15 of the sum), so that millions of ranks cost nothing.
fn harmonic(n: usize, s: f64) -> f64 {
    const EXACT: usize = 1000;
    // Smallest terms first, for an accurate sum.
    let head: f64 = (1..=n.min(EXACT)).rev().map(|k| h(k as f64, s)).sum();
    if n <= EXACT {
        return head;
    }
    let (a, b) = ((EXACT + 1) as f64, n as f64);
    let derivative = |x: f64| -s * h(x, s) / x;
    let tail = h_integral(b, s) - h_integral(a, s) + (h(a, s) + h(b, s)) / 2.0 + (derivative(b) - derivative(a)) / 12.0;
    head + tail
}

/// `h(x) = x^−s`, the unnormalised probability of rank `x` (1-based).
fn h(x: f64, s: f64) -> f64 {
    (-s * x.ln()).exp()
}

/// `H(x) = ∫_1^x h`, written so that it stays exact as `s → 1` (where it becomes `ln x`).
fn h_integral(x: f64, s: f64) -> f64 {
    let log_x = x.ln();
    expm1_over_x((1.0 - s) * log_x) * log_x
}

/// The inverse of [`h_integral`].
fn h_integral_inverse(x: f64, s: f64) -> f64 {
    // t ≥ −1 always holds mathematically; the clamp guards against rounding.
    let t = (x * (1.0 - s)).max(-1.0);
    (log1p_over_x(t) * x).exp()
}

/// `ln(1 + x) / x`, continuous at 0.
fn log1p_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x − 1) / x`, continuous at 0.
fn expm1_over_x(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampled frequencies match the probabilities, for the classic exponent, a steeper one, a flat one and a
    /// single rank.
    #[test]
    fn frequencies_match_the_law() {
        for (n, s) in [(10, 1.0), (7, 2.5), (12, 0.4), (1, 1.0)] {
            let zipf = Zipf::new(n, s).unwrap();
            let total: f64 = (0..n).map(|r| zipf.probability(r)).sum();
            assert!((total - 1.0).abs() < 1e-12, "{total}");
            let mut rng = Rng::new(n as u64);
            let draws = 200_000;
            let mut counts = vec![0usize; n];
            for _ in 0..draws {
                counts[zipf.sample(&mut rng)] += 1;
            }
            for (r, &c) in counts.iter().enumerate() {
                let expected = zipf.probability(r) * draws as f64;
                // Five standard deviations of a binomial count.
                let tolerance = 5.0 * expected.sqrt() + 1.0;
                assert!((c as f64 - expected).abs() < tolerance, "n {n} s {s} rank {r}: {c} vs {expected:.0}");
            }
        }
    }

    #[test]
    fn the_normaliser_of_many_ranks_matches_the_sum() {
        for (n, s) in [(1001, 1.0), (5000, 1.0), (100_000, 0.7), (100_000, 1.3)] {
            let exact: f64 = (1..=n).rev().map(|k| (k as f64).powf(-s)).sum();
            let zipf = Zipf::new(n, s).unwrap();
            assert!((zipf.harmonic - exact).abs() < 1e-12 * exact, "n {n} s {s}: {} vs {exact}", zipf.harmonic);
        }
    }

    #[test]
    fn huge_rank_counts_stay_in_range_and_bad_settings_are_refused() {
        let zipf = Zipf::new(1 << 24, 1.0).unwrap();
        let mut rng = Rng::new(3);
        assert!((0..10_000).all(|_| zipf.sample(&mut rng) < 1 << 24));
        assert!(Zipf::new(0, 1.0).is_err());
        assert!(Zipf::new(5, 0.0).is_err());
        assert!(Zipf::new(5, f64::NAN).is_err());
    }
}
