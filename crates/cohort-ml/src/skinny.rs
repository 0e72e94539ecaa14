//! Products with a short side, reading the data in place: `Z = X·Wᵀ` and `G += Rᵀ·X` where `X` is a block of data
//! rows (`f32` or `f64`) and the other operand (`f64`) has few rows (the classes of a softmax regression). This is
//! the shape of a linear model's cost and gradient: thousands of rows, hundreds of features, ten classes.
//!
//! A general GEMM (faer) packs its operands and pads the short side to its micro-kernel (a 12×4 tile: ten classes
//! waste a sixth of it), and needs `f32` data widened into an `f64` copy first. Here each product is a register
//! tile that reads the data straight from the shard:
//!
//! - [`xwt`]: 2 rows × 5 classes of dot products, each a vector accumulator over the features, summed across lanes
//!   at the end; while the first classes are computed, the next rows are prefetched from memory;
//! - [`rtx_add`]: 5 classes × 8 (`f64` data) or 16 (`f32` data) features of `G`, accumulated over the rows of the
//!   block in registers and added to `G`.
//!
//! **`f64` data** are multiplied in `f64`: four lanes, every accumulation a fused multiply-add.
//!
//! **`f32` data** are multiplied in `f32` (eight lanes per vector, twice the `f64` rate) and summed in `f64` beyond
//! short runs. [`xwt`] rounds `W` to `f32` once per call; over each run of [`RUN_FEATURES`] features (in whole groups
//! of eight) lane `l` of eight accumulates features `l, l+8, …` by `f32` fused multiply-adds, then the run's low and
//! high four lanes are widened and added, in that order, to four `f64` lanes; the last `d mod 8` features are
//! multiplied in `f64` with the `f64` weights. [`rtx_add`] rounds `R` to `f32` once per call; each value of `G` gets,
//! run by run over [`RUN_ROWS`] rows in row order, the run's `f32` fused multiply-add sum widened and added. Both
//! are accurate to about 1e-7 relative (the `f32` rounding of `W` or `R` and a few `f32` roundings per lane), and
//! the logits, with `W` rounded, are not smooth in `W` below that level.
//!
//! On x86-64 with AVX2 and FMA the tiles are written with intrinsics (the compiler's vectoriser does not keep ten
//! accumulators in registers on its own); elsewhere the same arithmetic runs as portable code.
//!
//! **Determinism.** Every accumulation is a fused multiply-add, which IEEE 754 rounds once; the portable code uses
//! [`f64::mul_add`] and [`f32::mul_add`], which are correctly rounded everywhere (in hardware, or in software where
//! the CPU lacks FMA), and widening `f32` to `f64` is exact. Both paths perform the same operations in the same order
//! lane by lane, so they give the same bits. A value of `Z` depends only on its row of `X` and its row of `W`, and a
//! value of `G` is accumulated over the rows in order (runs counted from the call's first row), so neither depends
//! on how rows or classes are grouped into tiles.

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
    /// [`xwt`] after its shape checks, with `d > 0`: the kernel for this element type.
    #[doc(hidden)]
    fn xwt_checked(z: &mut [f64], x: &[Self], w: &[f64], d: usize, k: usize);
    /// [`rtx_add`] after its shape checks, with `rows > 0`: the kernel for this element type.
    #[doc(hidden)]
    fn rtx_checked(g: &mut [f64], r: &[f64], x: &[Self], rows: usize, k: usize, d: usize);
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

    fn xwt_checked(z: &mut [f64], x: &[f32], w: &[f64], d: usize, k: usize) {
        let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, and the caller checked the shapes (`wf` has the shape of `w`).
            unsafe { x86::xwt32(z, x, &wf, w, d, k) };
            return;
        }
        xwt32_portable(z, x, &wf, w, d, k);
    }

    fn rtx_checked(g: &mut [f64], r: &[f64], x: &[f32], rows: usize, k: usize, d: usize) {
        let rf: Vec<f32> = r.iter().map(|&v| v as f32).collect();
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, and the caller checked the shapes (`rf` has the shape of `r`).
            unsafe { x86::rtx32(g, &rf, x, rows, k, d) };
            return;
        }
        rtx32_portable(g, &rf, x, rows, k, d);
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

    fn xwt_checked(z: &mut [f64], x: &[f64], w: &[f64], d: usize, k: usize) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, and the caller checked the shapes.
            unsafe { x86::xwt(z, x, w, d, k) };
            return;
        }
        xwt_portable(z, x, w, d, k);
    }

    fn rtx_checked(g: &mut [f64], r: &[f64], x: &[f64], rows: usize, k: usize, d: usize) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA, and the caller checked the shapes.
            unsafe { x86::rtx_add(g, r, x, rows, k, d) };
            return;
        }
        rtx_portable(g, r, x, rows, k, d);
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
    T::xwt_checked(z, x, w, d, k);
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
    T::rtx_checked(g, r, x, rows, k, d);
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

/// Lanes of an `f32` accumulator.
const LANES32: usize = 8;
/// Features per `f32` run of [`xwt`] on `f32` data (a multiple of 8): each run's products are summed in `f32`, then widened.
pub const RUN_FEATURES: usize = 128;
/// Rows per `f32` run of [`rtx_add`] on `f32` data: each run's products are summed in `f32`, then widened.
pub const RUN_ROWS: usize = 64;

/// The portable [`xwt`] on `f32` data (`wf` is `w` rounded to `f32`): one value at a time.
fn xwt32_portable(z: &mut [f64], x: &[f32], wf: &[f32], w: &[f64], d: usize, k: usize) {
    let rows = x.len() / d;
    for i in 0..rows {
        let xs = &x[i * d..(i + 1) * d];
        for c in 0..k {
            let (wfs, ws) = (&wf[c * d..(c + 1) * d], &w[c * d..(c + 1) * d]);
            let mut acc = [0.0f64; LANES];
            let body = d / LANES32 * LANES32;
            let mut j0 = 0;
            while j0 < body {
                let end = (j0 + RUN_FEATURES).min(body);
                let mut a = [0.0f32; LANES32];
                for j in (j0..end).step_by(LANES32) {
                    for l in 0..LANES32 {
                        a[l] = xs[j + l].mul_add(wfs[j + l], a[l]);
                    }
                }
                widen_run(&mut acc, &a);
                j0 = end;
            }
            z[i * k + c] = finish32(&mut acc, xs, ws);
        }
    }
}

/// Adds a run's `f32` lanes to the `f64` lanes: lane `l` gets `(acc_l + a_l) + a_{l+4}`, as two vector additions.
#[inline(always)]
fn widen_run(acc: &mut [f64; LANES], a: &[f32; LANES32]) {
    for l in 0..LANES {
        acc[l] += f64::from(a[l]);
    }
    for l in 0..LANES {
        acc[l] += f64::from(a[l + LANES]);
    }
}

/// The features beyond the last whole group of eight, in `f64` with the `f64` weights (feature
/// `8·⌊d/8⌋ + i` goes to lane `i mod 4`), then `(a₀ + a₁) + (a₂ + a₃)`. Shared by both paths.
#[inline(always)]
fn finish32(a: &mut [f64; LANES], x: &[f32], w: &[f64]) -> f64 {
    let d = w.len();
    for (i, j) in (d / LANES32 * LANES32..d).enumerate() {
        a[i % LANES] = f64::from(x[j]).mul_add(w[j], a[i % LANES]);
    }
    (a[0] + a[1]) + (a[2] + a[3])
}

/// One value of [`rtx_add`] on `f32` data (`rf` is `r` rounded to `f32`): `g[c][j]` plus each run's `f32` sum,
/// widened, run by run. Shared by both paths (the intrinsic one for the edges).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rtx32_value(g: f64, rf: &[f32], x: &[f32], rows: usize, k: usize, d: usize, c: usize, j: usize) -> f64 {
    let mut out = g;
    let mut i0 = 0;
    while i0 < rows {
        let end = (i0 + RUN_ROWS).min(rows);
        let mut s = 0.0f32;
        for i in i0..end {
            s = rf[i * k + c].mul_add(x[i * d + j], s);
        }
        out += f64::from(s);
        i0 = end;
    }
    out
}

/// The portable [`rtx_add`] on `f32` data: one value at a time.
fn rtx32_portable(g: &mut [f64], rf: &[f32], x: &[f32], rows: usize, k: usize, d: usize) {
    for c in 0..k {
        for j in 0..d {
            g[c * d + j] = rtx32_value(g[c * d + j], rf, x, rows, k, d, c, j);
        }
    }
}

/// The tiles with AVX2 and FMA intrinsics.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        finish32, finish_lanes, rtx32_value, xwt32_portable, xwt_row, Widen, CLASSES, COLS, LANES, LANES32, ROWS,
        RUN_FEATURES, RUN_ROWS,
    };

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

    /// [`super::xwt`] on `f32` data with AVX2 and FMA: `wf` is `w` rounded to `f32`.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `x` is `rows × d`, `w` and `wf` are `k × d`, `z` is `rows × k`, `d > 0`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn xwt32(z: &mut [f64], x: &[f32], wf: &[f32], w: &[f64], d: usize, k: usize) {
        assert!(wf.len() == w.len() && w.len() == k * d && x.len().is_multiple_of(d) && z.len() == x.len() / d * k);
        let rows = x.len() / d;
        let mut c0 = 0;
        while c0 < k {
            let c = (k - c0).min(CLASSES);
            let mut r0 = 0;
            if c == CLASSES {
                while r0 + ROWS <= rows {
                    // SAFETY: AVX2 and FMA are present (this function's contract); the tile lies inside the shapes.
                    unsafe { xwt32_tile::<ROWS>(z, x, wf, w, d, k, r0, c0) };
                    r0 += ROWS;
                }
            }
            // The edges: a last odd row in a one-row tile; fewer than five classes a value at a time with the
            // portable arithmetic.
            for r in r0..rows {
                if c == CLASSES {
                    // SAFETY: as above, with one row.
                    unsafe { xwt32_tile::<1>(z, x, wf, w, d, k, r, c0) };
                    continue;
                }
                let mut one = [0.0f64; CLASSES];
                xwt32_portable(
                    &mut one[..c],
                    &x[r * d..(r + 1) * d],
                    &wf[c0 * d..(c0 + c) * d],
                    &w[c0 * d..(c0 + c) * d],
                    d,
                    c,
                );
                z[r * k + c0..r * k + c0 + c].copy_from_slice(&one[..c]);
            }
            c0 += c;
        }
    }

    /// Rows `r0..r0+R` × classes `c0..c0+5` of `z = x · wᵀ` on `f32` data: `f32` products summed in `f32` over runs
    /// of features, each run widened into `f64` lanes.
    ///
    /// # Safety
    /// AVX2 and FMA, and the tile inside the shapes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn xwt32_tile<const R: usize>(
        z: &mut [f64],
        x: &[f32],
        wf: &[f32],
        w: &[f64],
        d: usize,
        k: usize,
        r0: usize,
        c0: usize,
    ) {
        let xs: [&[f32]; R] = std::array::from_fn(|i| &x[(r0 + i) * d..(r0 + i + 1) * d]);
        let wfs: [&[f32]; CLASSES] = std::array::from_fn(|c| &wf[(c0 + c) * d..(c0 + c + 1) * d]);
        let xp: [*const f32; R] = std::array::from_fn(|i| xs[i].as_ptr());
        let wp: [*const f32; CLASSES] = std::array::from_fn(|c| wfs[c].as_ptr());
        let mut acc = [[_mm256_setzero_pd(); CLASSES]; R];
        // As in `xwt_tile`: the first class tile prefetches the rows two tiles ahead, a cache line at a time (the
        // one-row edge tile does not).
        let prefetch = c0 == 0 && R == ROWS;
        let (ahead, row_bytes) = (xp[R - 1].wrapping_add(3 * d) as *const i8, d * size_of::<f32>());
        let line = 64 / size_of::<f32>();
        let body = d / LANES32 * LANES32;
        let mut j0 = 0;
        while j0 < body {
            let end = (j0 + RUN_FEATURES).min(body);
            let mut a = [[_mm256_setzero_ps(); CLASSES]; R];
            for j in (j0..end).step_by(LANES32) {
                if prefetch && j % line == 0 {
                    let p = ahead.wrapping_add(j * size_of::<f32>());
                    _mm_prefetch::<_MM_HINT_T0>(p);
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(row_bytes));
                }
                // SAFETY: j + 8 ≤ body ≤ d, the length of every row sliced above.
                unsafe {
                    let xv: [__m256; R] = std::array::from_fn(|i| _mm256_loadu_ps(xp[i].add(j)));
                    for c in 0..CLASSES {
                        let wv = _mm256_loadu_ps(wp[c].add(j));
                        for i in 0..R {
                            a[i][c] = _mm256_fmadd_ps(xv[i], wv, a[i][c]);
                        }
                    }
                }
            }
            for i in 0..R {
                for c in 0..CLASSES {
                    let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a[i][c]));
                    let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a[i][c]));
                    acc[i][c] = _mm256_add_pd(_mm256_add_pd(acc[i][c], lo), hi);
                }
            }
            j0 = end;
        }
        for i in 0..R {
            for c in 0..CLASSES {
                let mut lanes = [0.0f64; LANES];
                // SAFETY: four f64 are 32 writable bytes.
                unsafe { _mm256_storeu_pd(lanes.as_mut_ptr(), acc[i][c]) };
                z[(r0 + i) * k + c0 + c] = finish32(&mut lanes, xs[i], &w[(c0 + c) * d..(c0 + c + 1) * d]);
            }
        }
    }

    /// [`super::rtx_add`] on `f32` data with AVX2 and FMA (`rf` is `r` rounded to `f32`): tiles of 5 classes × 16
    /// features, then 8, then a value at a time at the edges.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; `rf` is `rows × k`, `x` is `rows × d`, `g` is `k × d`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn rtx32(g: &mut [f64], rf: &[f32], x: &[f32], rows: usize, k: usize, d: usize) {
        let mut c0 = 0;
        while c0 < k {
            let c = (k - c0).min(CLASSES);
            let mut j0 = 0;
            while j0 + 2 * LANES32 <= d {
                // SAFETY: AVX2 and FMA (this function's contract); the tile lies inside the shapes.
                unsafe { rtx32_cols::<2>(g, rf, x, rows, k, d, c0, c, j0) };
                j0 += 2 * LANES32;
            }
            if j0 + LANES32 <= d {
                // SAFETY: as above.
                unsafe { rtx32_cols::<1>(g, rf, x, rows, k, d, c0, c, j0) };
                j0 += LANES32;
            }
            for j in j0..d {
                for cc in c0..c0 + c {
                    g[cc * d + j] = rtx32_value(g[cc * d + j], rf, x, rows, k, d, cc, j);
                }
            }
            c0 += c;
        }
    }

    /// `c ≤ 5` classes × `8·V` features from class `c0` and feature `j0`.
    ///
    /// # Safety
    /// AVX2 and FMA, and the tile inside the shapes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rtx32_cols<const V: usize>(
        g: &mut [f64],
        rf: &[f32],
        x: &[f32],
        rows: usize,
        k: usize,
        d: usize,
        c0: usize,
        c: usize,
        j0: usize,
    ) {
        // SAFETY (all arms): AVX2 and FMA (this function's contract); the tile lies inside the shapes.
        unsafe {
            match c {
                5 => rtx32_tile::<5, V>(g, rf, x, rows, k, d, c0, j0),
                4 => rtx32_tile::<4, V>(g, rf, x, rows, k, d, c0, j0),
                3 => rtx32_tile::<3, V>(g, rf, x, rows, k, d, c0, j0),
                2 => rtx32_tile::<2, V>(g, rf, x, rows, k, d, c0, j0),
                _ => rtx32_tile::<1, V>(g, rf, x, rows, k, d, c0, j0),
            }
        }
    }

    /// `C` classes × `8·V` features of `g += rᵀ · x` on `f32` data: `f32` products summed in `f32` over runs of
    /// rows, each run widened and added to `g`.
    ///
    /// # Safety
    /// AVX2 and FMA, and the tile inside the shapes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rtx32_tile<const C: usize, const V: usize>(
        g: &mut [f64],
        rf: &[f32],
        x: &[f32],
        rows: usize,
        k: usize,
        d: usize,
        c0: usize,
        j0: usize,
    ) {
        assert!(rows * k <= rf.len() && rows * d <= x.len() && c0 + C <= k && j0 + V * LANES32 <= d);
        assert!(g.len() >= k * d);
        let (xp, rp, gp) = (x.as_ptr(), rf.as_ptr(), g.as_mut_ptr());
        let mut i0 = 0;
        while i0 < rows {
            let end = (i0 + RUN_ROWS).min(rows);
            let mut a = [[_mm256_setzero_ps(); V]; C];
            for i in i0..end {
                // SAFETY: i < rows, so row i of x holds features j0..j0+8V and row i of rf classes c0..c0+C
                // (asserted).
                unsafe {
                    let xrow = xp.add(i * d + j0);
                    let xv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(xrow.add(v * LANES32)));
                    for (cc, ac) in a.iter_mut().enumerate() {
                        let s = _mm256_broadcast_ss(&*rp.add(i * k + c0 + cc));
                        for v in 0..V {
                            ac[v] = _mm256_fmadd_ps(s, xv[v], ac[v]);
                        }
                    }
                }
            }
            for (cc, ac) in a.iter().enumerate() {
                for (v, av) in ac.iter().enumerate() {
                    // SAFETY: the eight values at (c0+cc)·d + j0 + 8v lie inside g (asserted: c0 + C ≤ k,
                    // j0 + 8V ≤ d, g.len() ≥ k·d).
                    unsafe {
                        let p = gp.add((c0 + cc) * d + j0 + v * LANES32);
                        let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(*av));
                        let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(*av));
                        _mm256_storeu_pd(p, _mm256_add_pd(_mm256_loadu_pd(p), lo));
                        _mm256_storeu_pd(p.add(LANES), _mm256_add_pd(_mm256_loadu_pd(p.add(LANES)), hi));
                    }
                }
            }
            i0 = end;
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

    /// The same for `f32` data, as the kernels define it: `w` rounded to `f32`; over runs of `RUN_FEATURES`
    /// features in whole groups of eight, lane `l` of eight accumulates features `l, l+8, …` by `f32` fused
    /// multiply-adds and is added into `f64` lane `l mod 4` (low half first); the rest in `f64` on lanes
    /// `i mod 4`; then `(a₀ + a₁) + (a₂ + a₃)`.
    fn lane_dot32(x: &[f32], w: &[f64]) -> f64 {
        let d = x.len();
        let body = d / 8 * 8;
        let mut a = [0.0f64; 4];
        for run in (0..body).step_by(RUN_FEATURES) {
            let mut s = [0.0f32; 8];
            for j in run..(run + RUN_FEATURES).min(body) {
                s[j % 8] = x[j].mul_add(w[j] as f32, s[j % 8]);
            }
            for half in [0, 4] {
                for l in 0..4 {
                    a[l] += f64::from(s[half + l]);
                }
            }
        }
        for j in body..d {
            a[(j - body) % 4] = f64::from(x[j]).mul_add(w[j], a[(j - body) % 4]);
        }
        (a[0] + a[1]) + (a[2] + a[3])
    }

    const SHAPES: [(usize, usize, usize); 8] =
        [(1, 1, 1), (3, 7, 2), (5, 784, 10), (7, 13, 11), (64, 9, 6), (4, 3, 5), (6, 300, 10), (3, 21, 5)];

    #[test]
    fn xwt_matches_a_naive_product_bit_for_bit() {
        for (rows, d, k) in SHAPES {
            let x: Vec<f32> = data(rows * d, 1).iter().map(|&v| v as f32).collect();
            let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let w = data(k * d, 2);
            let mut z = vec![f64::NAN; rows * k];
            xwt(&mut z, &x, &w, rows, d, k).unwrap();
            let mut z64 = vec![f64::NAN; rows * k];
            xwt(&mut z64, &x64, &w, rows, d, k).unwrap();
            let mut portable = vec![f64::NAN; rows * k];
            xwt_portable(&mut portable, &x64, &w, d, k);
            let mut portable32 = vec![f64::NAN; rows * k];
            let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            xwt32_portable(&mut portable32, &x, &wf, &w, d, k);
            for i in 0..rows {
                for c in 0..k {
                    let (xs, ws) = (&x64[i * d..(i + 1) * d], &w[c * d..(c + 1) * d]);
                    let want = lane_dot(xs, ws);
                    assert_eq!(z64[i * k + c], want, "{rows}×{d}×{k} at {i},{c}");
                    assert_eq!(portable[i * k + c], want);
                    let want32 = lane_dot32(&x[i * d..(i + 1) * d], ws);
                    assert_eq!(z[i * k + c], want32, "f32 {rows}×{d}×{k} at {i},{c}");
                    assert_eq!(portable32[i * k + c], want32);
                    let naive: f64 = (0..d).map(|j| xs[j] * ws[j]).sum();
                    let scale: f64 = (0..d).map(|j| (xs[j] * ws[j]).abs()).sum();
                    assert!((want - naive).abs() <= 1e-13 * (1.0 + naive.abs()));
                    // f32 products: w rounded (u = 2⁻²⁴) and at most RUN_FEATURES/8 + 1 roundings per lane.
                    let bound = (RUN_FEATURES / 8 + 2) as f64 * f64::from(f32::EPSILON) / 2.0 * scale + 1e-15;
                    assert!((want32 - naive).abs() <= bound, "{want32} vs {naive} (bound {bound:e})");
                }
            }
        }
    }

    #[test]
    fn rtx_add_matches_a_naive_product_bit_for_bit() {
        for (rows, k, d) in [(1, 1, 1), (3, 2, 7), (64, 10, 784), (5, 11, 13), (2, 6, 17), (9, 5, 16), (100, 3, 40)] {
            let r = data(rows * k, 3);
            let x = data(rows * d, 4);
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let start = data(k * d, 5);
            let mut g = start.clone();
            rtx_add(&mut g, &r, &x32, rows, k, d).unwrap();
            let mut g64 = start.clone();
            rtx_add(&mut g64, &r, &x, rows, k, d).unwrap();
            let mut portable = start.clone();
            rtx_portable(&mut portable, &r, &x, rows, k, d);
            let mut portable32 = start.clone();
            let rf: Vec<f32> = r.iter().map(|&v| v as f32).collect();
            rtx32_portable(&mut portable32, &rf, &x32, rows, k, d);
            for c in 0..k {
                for j in 0..d {
                    // f64 data: the row sum in row order by fused multiply-adds, added once.
                    let sum64 = (0..rows).fold(0.0, |s, i| r[i * k + c].mul_add(x[i * d + j], s));
                    assert_eq!(g64[c * d + j], start[c * d + j] + sum64, "{rows}×{k}×{d} at {c},{j}");
                    assert_eq!(portable[c * d + j], g64[c * d + j]);
                    // f32 data: r rounded to f32, each run of RUN_ROWS rows summed by f32 fused multiply-adds in
                    // row order, widened and added.
                    let mut want = start[c * d + j];
                    for run in (0..rows).step_by(RUN_ROWS) {
                        let s = (run..(run + RUN_ROWS).min(rows))
                            .fold(0.0f32, |s, i| (r[i * k + c] as f32).mul_add(x32[i * d + j], s));
                        want += f64::from(s);
                    }
                    assert_eq!(g[c * d + j], want, "f32 {rows}×{k}×{d} at {c},{j}");
                    assert_eq!(portable32[c * d + j], want);
                    let exact = (0..rows).map(|i| r[i * k + c] * f64::from(x32[i * d + j])).sum::<f64>();
                    let scale = (0..rows).map(|i| (r[i * k + c] * f64::from(x32[i * d + j])).abs()).sum::<f64>();
                    let bound = (RUN_ROWS + 2) as f64 * f64::from(f32::EPSILON) / 2.0 * scale + 1e-14;
                    assert!((want - start[c * d + j] - exact).abs() <= bound, "f32 {rows}×{k}×{d} at {c},{j}");
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
