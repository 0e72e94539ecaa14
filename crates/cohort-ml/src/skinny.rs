//! Products with a short side, in `f64`, reading the data in place: `Z = X·Wᵀ` and `G += Rᵀ·X` where `X` is a
//! block of data rows (`f32` or `f64`, widened on the fly, exactly) and the other operand has few rows (the classes
//! of a softmax regression). This is the shape of a linear model's cost and gradient: thousands of rows, hundreds
//! of features, ten classes.
//!
//! A general GEMM (faer) packs its operands and pads the short side to its micro-kernel (a 12×4 tile: ten classes
//! waste a sixth of it), and needs `f32` data widened into an `f64` copy first. Here each product is a register
//! tile that reads the data straight from the shard:
//!
//! - [`xwt`]: 2 rows × 5 classes of dot products, each a 4-lane accumulator over the features, summed across
//!   lanes at the end; while the first classes are computed, the next rows are prefetched from memory;
//! - [`rtx_add`]: 5 classes × 8 features of `G`, accumulated over the rows of the block in registers and added to
//!   `G` once.
//!
//! On x86-64 with AVX2 and FMA the tiles are written with intrinsics (the compiler's vectoriser does not keep ten
//! accumulators in registers on its own); elsewhere the same arithmetic runs as portable code.
//!
//! **Determinism.** Every accumulation is a fused multiply-add, which IEEE 754 rounds once; the portable code uses
//! [`f64::mul_add`], which is correctly rounded everywhere (in hardware, or in software where the CPU lacks FMA).
//! Both paths perform the same operations in the same order lane by lane, so they give the same bits. A value of
//! `Z` depends only on its row of `X` and its row of `W`, and a value of `G` is accumulated over the rows in order,
//! so neither depends on how rows or classes are grouped into tiles.

use std::array::from_fn;

use crate::error::{MlError, Result};

/// Lanes of a dot-product accumulator.
const LANES: usize = 4;
/// Classes per tile.
const CLASSES: usize = 5;
/// Rows per tile of [`xwt`] (the intrinsic path; the portable one works a row at a time).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const ROWS: usize = 2;
/// Features per tile of [`rtx_add`] (the intrinsic path; the portable one works a feature at a time).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const COLS: usize = 8;

/// A data element the kernels read: `f32` or `f64`, widened to `f64` exactly.
pub trait Widen: Copy + Send + Sync + 'static {
    /// The value as `f64`.
    fn widen(self) -> f64;
    /// Loads four values as `f64` lanes.
    ///
    /// # Safety
    /// `p` must point at four readable values and the CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[doc(hidden)]
    unsafe fn load4(p: *const Self) -> std::arch::x86_64::__m256d;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f64 {
        f64::from(self)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load4(p: *const f32) -> std::arch::x86_64::__m256d {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees four readable values.
        _mm256_cvtps_pd(unsafe { _mm_loadu_ps(p) })
    }
}

impl Widen for f64 {
    #[inline(always)]
    fn widen(self) -> f64 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load4(p: *const f64) -> std::arch::x86_64::__m256d {
        // SAFETY: the caller guarantees four readable values.
        unsafe { std::arch::x86_64::_mm256_loadu_pd(p) }
    }
}

fn check(name: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(MlError::Shape(format!("{name}: {len} values is not {rows}×{cols}")));
    }
    Ok(())
}

/// Whether the intrinsic tiles can run here.
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `z = x · wᵀ`: `x` is `rows × d`, `w` is `k × d`, `z` is `rows × k`, all row-major.
pub fn xwt<T: Widen>(z: &mut [f64], x: &[T], w: &[f64], rows: usize, d: usize, k: usize) -> Result<()> {
    check("xwt output", z.len(), rows, k)?;
    check("xwt data", x.len(), rows, d)?;
    check("xwt weights", w.len(), k, d)?;
    if d == 0 {
        z.fill(0.0);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA, and the shapes are checked above.
        unsafe { x86::xwt(z, x, w, d, k) };
        return Ok(());
    }
    xwt_portable(z, x, w, d, k);
    Ok(())
}

/// `g += rᵀ · x`: `r` is `rows × k`, `x` is `rows × d`, `g` is `k × d`, all row-major. Each value of `g` gets the
/// sum over the rows, in row order, added once.
pub fn rtx_add<T: Widen>(g: &mut [f64], r: &[f64], x: &[T], rows: usize, k: usize, d: usize) -> Result<()> {
    check("rtx_add output", g.len(), k, d)?;
    check("rtx_add left", r.len(), rows, k)?;
    check("rtx_add data", x.len(), rows, d)?;
    if rows == 0 {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA, and the shapes are checked above.
        unsafe { x86::rtx_add(g, r, x, rows, k, d) };
        return Ok(());
    }
    rtx_portable(g, r, x, rows, k, d);
    Ok(())
}

/// The portable [`xwt`]: one-row tiles (a row's values do not depend on the tiling).
fn xwt_portable<T: Widen>(z: &mut [f64], x: &[T], w: &[f64], d: usize, k: usize) {
    let rows = x.len() / d;
    for r0 in 0..rows {
        let mut c0 = 0;
        while c0 < k {
            let c = (k - c0).min(CLASSES);
            xwt_row(z, x, w, d, k, r0, c0, c);
            c0 += c;
        }
    }
}

/// One row × `c ≤ 5` classes of `z = x · wᵀ`, portable.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn xwt_row<T: Widen>(z: &mut [f64], x: &[T], w: &[f64], d: usize, k: usize, r0: usize, c0: usize, c: usize) {
    match c {
        5 => xwt_tile::<5, T>(z, x, w, d, k, r0, c0),
        4 => xwt_tile::<4, T>(z, x, w, d, k, r0, c0),
        3 => xwt_tile::<3, T>(z, x, w, d, k, r0, c0),
        2 => xwt_tile::<2, T>(z, x, w, d, k, r0, c0),
        _ => xwt_tile::<1, T>(z, x, w, d, k, r0, c0),
    }
}

/// One row × `C` classes of `z = x · wᵀ`, starting at row `r0` and class `c0`.
#[inline(always)]
fn xwt_tile<const C: usize, T: Widen>(z: &mut [f64], x: &[T], w: &[f64], d: usize, k: usize, r0: usize, c0: usize) {
    let xs = &x[r0 * d..(r0 + 1) * d];
    let ws: [&[f64]; C] = from_fn(|c| &w[(c0 + c) * d..(c0 + c + 1) * d]);
    let mut acc = [[0.0f64; LANES]; C];
    for j in (0..d / LANES).map(|jb| jb * LANES) {
        for (c, a) in acc.iter_mut().enumerate() {
            for l in 0..LANES {
                a[l] = xs[j + l].widen().mul_add(ws[c][j + l], a[l]);
            }
        }
    }
    for (c, a) in acc.iter_mut().enumerate() {
        z[r0 * k + c0 + c] = finish_lanes(a, xs, ws[c]);
    }
}

/// The features beyond the last whole group of lanes (lane `l` takes feature `LANES·⌊d/LANES⌋ + l`), then the
/// sum across lanes, `(a₀ + a₁) + (a₂ + a₃)`. Shared by both paths, so they agree bit for bit.
#[inline(always)]
fn finish_lanes<T: Widen>(a: &mut [f64; LANES], x: &[T], w: &[f64]) -> f64 {
    let d = w.len();
    for (l, j) in (d / LANES * LANES..d).enumerate() {
        a[l] = x[j].widen().mul_add(w[j], a[l]);
    }
    (a[0] + a[1]) + (a[2] + a[3])
}

/// The portable [`rtx_add`]: `C ≤ 5` classes × one feature at a time.
fn rtx_portable<T: Widen>(g: &mut [f64], r: &[f64], x: &[T], rows: usize, k: usize, d: usize) {
    let mut c0 = 0;
    while c0 < k {
        let c = (k - c0).min(CLASSES);
        for j in 0..d {
            for cc in c0..c0 + c {
                let mut acc = 0.0f64;
                for i in 0..rows {
                    acc = r[i * k + cc].mul_add(x[i * d + j].widen(), acc);
                }
                g[cc * d + j] += acc;
            }
        }
        c0 += c;
    }
}

/// The tiles with AVX2 and FMA intrinsics.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{finish_lanes, xwt_row, Widen, CLASSES, COLS, LANES, ROWS};

    /// [`super::xwt`] with AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `x` is `rows × d`, `w` is `k × d`, `z` is `rows × k`, `d > 0`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn xwt<T: Widen>(z: &mut [f64], x: &[T], w: &[f64], d: usize, k: usize) {
        let rows = x.len() / d;
        let mut c0 = 0;
        while c0 < k {
            let c = (k - c0).min(CLASSES);
            let mut r0 = 0;
            if c == CLASSES {
                while r0 + ROWS <= rows {
                    // SAFETY: AVX2 and FMA are present (this function's contract); the tile lies inside the shapes.
                    unsafe { xwt_tile(z, x, w, d, k, r0, c0) };
                    r0 += ROWS;
                }
            }
            for r in r0..rows {
                xwt_row(z, x, w, d, k, r, c0, c);
            }
            c0 += c;
        }
    }

    /// Rows `r0, r0+1` × classes `c0..c0+5` of `z = x · wᵀ`.
    ///
    /// # Safety
    /// AVX2 and FMA, and the tile inside the shapes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn xwt_tile<T: Widen>(z: &mut [f64], x: &[T], w: &[f64], d: usize, k: usize, r0: usize, c0: usize) {
        let xs: [&[T]; ROWS] = std::array::from_fn(|i| &x[(r0 + i) * d..(r0 + i + 1) * d]);
        let ws: [&[f64]; CLASSES] = std::array::from_fn(|c| &w[(c0 + c) * d..(c0 + c + 1) * d]);
        let mut a = [[_mm256_setzero_pd(); CLASSES]; ROWS];
        let (x0, x1) = (xs[0].as_ptr(), xs[1].as_ptr());
        let wp: [*const f64; CLASSES] = std::array::from_fn(|c| ws[c].as_ptr());
        // The first class tile reads the rows from memory: ask for the rows two tiles ahead meanwhile, a cache line
        // at a time (a prefetch never faults, so running past the data is harmless).
        let (ahead, row_bytes) = (x1.wrapping_add(3 * d) as *const i8, d * size_of::<T>());
        let line = 64 / size_of::<T>();
        for j in (0..d / LANES).map(|jb| jb * LANES) {
            if c0 == 0 && j % line == 0 {
                let p = ahead.wrapping_add(j * size_of::<T>());
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(row_bytes));
            }
            // SAFETY: j + LANES ≤ d, the length of every row sliced above.
            unsafe {
                let xa = T::load4(x0.add(j));
                let xb = T::load4(x1.add(j));
                for c in 0..CLASSES {
                    let wv = _mm256_loadu_pd(wp[c].add(j));
                    a[0][c] = _mm256_fmadd_pd(xa, wv, a[0][c]);
                    a[1][c] = _mm256_fmadd_pd(xb, wv, a[1][c]);
                }
            }
        }
        for i in 0..ROWS {
            for c in 0..CLASSES {
                let mut lanes = [0.0f64; LANES];
                // SAFETY: four f64 are 32 writable bytes.
                unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), a[i][c]) };
                z[(r0 + i) * k + c0 + c] = finish_lanes(&mut lanes, xs[i], ws[c]);
            }
        }
    }

    /// [`super::rtx_add`] with AVX2 and FMA: tiles of 5 classes × 8 features, then narrower ones at the edges.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `r` is `rows × k`, `x` is `rows × d`, `g` is `k × d`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rtx_add<T: Widen>(g: &mut [f64], r: &[f64], x: &[T], rows: usize, k: usize, d: usize) {
        let mut c0 = 0;
        while c0 < k {
            let c = (k - c0).min(CLASSES);
            let mut j0 = 0;
            while j0 + COLS <= d {
                // SAFETY: AVX2 and FMA (this function's contract); the tile lies inside the shapes.
                unsafe {
                    match c {
                        5 => rtx_tile::<5, T>(g, r, x, rows, k, d, c0, j0),
                        4 => rtx_tile::<4, T>(g, r, x, rows, k, d, c0, j0),
                        3 => rtx_tile::<3, T>(g, r, x, rows, k, d, c0, j0),
                        2 => rtx_tile::<2, T>(g, r, x, rows, k, d, c0, j0),
                        _ => rtx_tile::<1, T>(g, r, x, rows, k, d, c0, j0),
                    }
                }
                j0 += COLS;
            }
            for j in j0..d {
                for cc in c0..c0 + c {
                    let mut acc = 0.0f64;
                    for i in 0..rows {
                        acc = r[i * k + cc].mul_add(x[i * d + j].widen(), acc);
                    }
                    g[cc * d + j] += acc;
                }
            }
            c0 += c;
        }
    }

    /// `C` classes × 8 features of `g += rᵀ · x`, from class `c0` and feature `j0`.
    ///
    /// # Safety
    /// AVX2 and FMA, and the tile inside the shapes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rtx_tile<const C: usize, T: Widen>(
        g: &mut [f64],
        r: &[f64],
        x: &[T],
        rows: usize,
        k: usize,
        d: usize,
        c0: usize,
        j0: usize,
    ) {
        assert!(rows * k <= r.len() && rows * d <= x.len() && c0 + C <= k && j0 + COLS <= d);
        let mut a = [[_mm256_setzero_pd(); 2]; C];
        let (xp, rp) = (x.as_ptr(), r.as_ptr());
        for i in 0..rows {
            // SAFETY: i < rows, so row i of x holds features j0..j0+8 and row i of r classes c0..c0+C (asserted).
            unsafe {
                let xrow = xp.add(i * d + j0);
                let (lo, hi) = (T::load4(xrow), T::load4(xrow.add(LANES)));
                for (c, ac) in a.iter_mut().enumerate() {
                    let s = _mm256_broadcast_sd(&*rp.add(i * k + c0 + c));
                    ac[0] = _mm256_fmadd_pd(s, lo, ac[0]);
                    ac[1] = _mm256_fmadd_pd(s, hi, ac[1]);
                }
            }
        }
        for (c, ac) in a.iter().enumerate() {
            let gs = &mut g[(c0 + c) * d + j0..(c0 + c) * d + j0 + COLS];
            let mut sums = [0.0f64; COLS];
            // SAFETY: eight f64 are 64 writable bytes.
            unsafe {
                _mm256_storeu_pd(sums.as_mut_ptr(), ac[0]);
                _mm256_storeu_pd(sums.as_mut_ptr().add(LANES), ac[1]);
            }
            for (v, s) in gs.iter_mut().zip(sums) {
                *v += s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort::rng::Rng;

    fn data(n: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.uniform() - 0.5).collect()
    }

    /// `Σ_j x_j w_j` the way the kernels define it: lane `l` accumulates features `l, l+4, …` by fused
    /// multiply-adds, then `(a₀ + a₁) + (a₂ + a₃)`.
    fn lane_dot(x: &[f64], w: &[f64]) -> f64 {
        let mut a = [0.0f64; LANES];
        for (j, (xv, wv)) in x.iter().zip(w).enumerate() {
            a[j % LANES] = xv.mul_add(*wv, a[j % LANES]);
        }
        (a[0] + a[1]) + (a[2] + a[3])
    }

    #[test]
    fn xwt_matches_a_naive_product_bit_for_bit() {
        for (rows, d, k) in [(1, 1, 1), (3, 7, 2), (5, 784, 10), (7, 13, 11), (64, 9, 6), (4, 3, 5)] {
            let x: Vec<f32> = data(rows * d, 1).iter().map(|&v| v as f32).collect();
            let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let w = data(k * d, 2);
            let mut z = vec![f64::NAN; rows * k];
            xwt(&mut z, &x, &w, rows, d, k).unwrap();
            let mut z64 = vec![f64::NAN; rows * k];
            xwt(&mut z64, &x64, &w, rows, d, k).unwrap();
            let mut portable = vec![f64::NAN; rows * k];
            xwt_portable(&mut portable, &x, &w, d, k);
            for i in 0..rows {
                for c in 0..k {
                    let want = lane_dot(&x64[i * d..(i + 1) * d], &w[c * d..(c + 1) * d]);
                    assert_eq!(z[i * k + c], want, "{rows}×{d}×{k} at {i},{c}");
                    assert_eq!(z64[i * k + c], want);
                    assert_eq!(portable[i * k + c], want);
                    let naive: f64 = (0..d).map(|j| x64[i * d + j] * w[c * d + j]).sum();
                    assert!((want - naive).abs() <= 1e-13 * (1.0 + naive.abs()));
                }
            }
        }
    }

    #[test]
    fn rtx_add_matches_a_naive_product_bit_for_bit() {
        for (rows, k, d) in [(1, 1, 1), (3, 2, 7), (64, 10, 784), (5, 11, 13), (2, 6, 17), (9, 5, 16)] {
            let r = data(rows * k, 3);
            let x = data(rows * d, 4);
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let start = data(k * d, 5);
            let mut g = start.clone();
            rtx_add(&mut g, &r, &x32, rows, k, d).unwrap();
            let mut g64 = start.clone();
            rtx_add(&mut g64, &r, &x, rows, k, d).unwrap();
            let mut portable = start.clone();
            rtx_portable(&mut portable, &r, &x32, rows, k, d);
            for c in 0..k {
                for j in 0..d {
                    // The row sum in row order by fused multiply-adds, added once: what the kernel promises.
                    let sum32 = (0..rows).fold(0.0, |s, i| r[i * k + c].mul_add(f64::from(x32[i * d + j]), s));
                    let sum64 = (0..rows).fold(0.0, |s, i| r[i * k + c].mul_add(x[i * d + j], s));
                    assert_eq!(g[c * d + j], start[c * d + j] + sum32, "{rows}×{k}×{d} at {c},{j}");
                    assert_eq!(portable[c * d + j], g[c * d + j]);
                    assert_eq!(g64[c * d + j], start[c * d + j] + sum64);
                }
            }
        }
    }

    #[test]
    fn tiling_does_not_change_bits() {
        // A row computed alone equals the same row inside a two-row tile.
        let (d, k) = (37, 7);
        let x: Vec<f32> = data(3 * d, 6).iter().map(|&v| v as f32).collect();
        let w = data(k * d, 7);
        let mut all = vec![0.0; 3 * k];
        xwt(&mut all, &x, &w, 3, d, k).unwrap();
        for i in 0..3 {
            let mut one = vec![0.0; k];
            xwt(&mut one, &x[i * d..(i + 1) * d], &w, 1, d, k).unwrap();
            assert_eq!(one, all[i * k..(i + 1) * k]);
        }
    }

    #[test]
    fn shapes_are_checked() {
        let mut z = vec![0.0; 4];
        assert!(xwt(&mut z, &[0.0f32; 6], &[0.0; 6], 2, 3, 2).is_ok());
        assert!(xwt(&mut z, &[0.0f32; 5], &[0.0; 6], 2, 3, 2).is_err());
        assert!(rtx_add(&mut z, &[0.0; 4], &[0.0f64; 6], 2, 2, 3).is_err());
        assert!(rtx_add(&mut z, &[], &[0.0f64; 0], 0, 2, 2).is_ok());
    }
}
