//! The MLP's products in `f32` as register tiles, reading the mini-batch's rows where they lie (no gather):
//!
//! - [`xwt`]: `Z = X·Wᵀ` (the forward pass: `X` is `rows × n_in`, `W` is `n_out × n_in` row-major, as the layers
//!   store their weights): each value a dot product, eight lanes of fused multiply-adds over the inputs summed
//!   across lanes at the end;
//! - [`atb`]: `C = α·AᵀB` or `C += α·AᵀB` with `A` read through strides (the weight gradient `δᵀX`, with `A = δ`;
//!   the back-propagated `δ·W`, with `A = δᵀ`): eight columns of `C` per vector, each a chain of fused
//!   multiply-adds over the rows of `B`.
//!
//! A general GEMM (faer) packs both operands on every call and needs the batch copied into one block first; for a
//! batch of 64 rows against 32 units that packing and the copy (200 kB per batch) cost about a fifth of an epoch.
//! Here the rows of `X` are a list of slices into the resident shards, visited in place, and a tile keeps 12
//! accumulators in registers for the whole depth: 6 rows × 2 units for [`xwt`] (the six rows stay in the L1 cache
//! while every unit's weights stream past them; the first units' pass prefetches the next six rows), 6 rows of `C`
//! × 2 vectors for [`atb`] (the slice of `B` stays in the L1 cache while every row of `C` reads it).
//!
//! On x86-64 with AVX2 and FMA the tiles are written with intrinsics; elsewhere (or when asked, for the tests) a
//! portable loop computes the same chains.
//!
//! **Determinism.** In [`xwt`], lane `l` of a value accumulates inputs `l, l+8, …` (whole groups of eight) by
//! fused multiply-adds from zero; the lanes are summed as `((l₀+l₄)+(l₂+l₆)) + ((l₁+l₅)+(l₃+l₇))`; the last
//! `n_in mod 8` inputs continue the chain by fused multiply-adds. In [`atb`] each value is one chain of fused
//! multiply-adds over the rows of `B` in order, from zero, then scaled (`α·s`, or `α·s + C` in one rounding). Both
//! paths perform exactly these operations ([`f32::mul_add`] is correctly rounded everywhere), so they give the
//! same bits, and no value depends on the tiling or on the other rows and units computed with it.

use crate::error::{MlError, Result};
use crate::kernels::Accum;
use crate::tiles::Isa;

/// Values per vector register (AVX2, `f32`).
const LANES: usize = 8;

/// Rows of a matrix, each at least as long as the product needs: a packed block, or a list of rows wherever they
/// lie (a shuffled mini-batch inside the resident shards).
pub(crate) trait Rows {
    /// Number of rows.
    fn count(&self) -> usize;
    /// Row `i` (`i < count()`).
    fn row(&self, i: usize) -> &[f32];
    /// The first value of row `i`, without a bounds check.
    ///
    /// # Safety
    /// `i < count()`.
    unsafe fn row_ptr(&self, i: usize) -> *const f32;
}

/// Row-major rows of `width` values, packed one after the other.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packed<'a> {
    values: &'a [f32],
    width: usize,
}

impl<'a> Packed<'a> {
    /// `values` as rows of `width` (a trailing partial row is ignored; a width of 0 has no rows).
    pub(crate) fn new(values: &'a [f32], width: usize) -> Self {
        Packed { values, width }
    }
}

impl Rows for Packed<'_> {
    fn count(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.width..(i + 1) * self.width]
    }

    unsafe fn row_ptr(&self, i: usize) -> *const f32 {
        // SAFETY: `i < count()`, so row `i` lies inside `values` (the caller's contract).
        unsafe { self.values.as_ptr().add(i * self.width) }
    }
}

impl Rows for [&[f32]] {
    fn count(&self) -> usize {
        self.len()
    }

    fn row(&self, i: usize) -> &[f32] {
        self[i]
    }

    unsafe fn row_ptr(&self, i: usize) -> *const f32 {
        // SAFETY: `i < count()` (the caller's contract).
        unsafe { self.get_unchecked(i).as_ptr() }
    }
}

/// Checks that every row of `x` holds at least `width` values.
fn check_rows<X: Rows + ?Sized>(what: &str, x: &X, width: usize) -> Result<()> {
    if let Some(i) = (0..x.count()).find(|&i| x.row(i).len() < width) {
        return Err(MlError::Shape(format!(
            "{what}: row {i} has {} values, the product needs {width}",
            x.row(i).len()
        )));
    }
    Ok(())
}

/// `z = x · wᵀ`: `x` has `rows` rows of at least `n_in` values, `w` is `n_out × n_in`, `z` is `rows × n_out`, all
/// row-major. Returns a shape error, before touching anything, if an operand does not fit.
pub(crate) fn xwt<X: Rows + ?Sized>(
    z: &mut [f32],
    x: &X,
    w: &[f32],
    n_in: usize,
    n_out: usize,
    isa: Isa,
) -> Result<()> {
    let rows = x.count();
    check_rows("forward product", x, n_in)?;
    if w.len() != n_out * n_in || z.len() != rows * n_out {
        return Err(MlError::Shape(format!(
            "forward product: {} weights for {n_out}×{n_in}, {} outputs for {rows}×{n_out}",
            w.len(),
            z.len()
        )));
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only made on a CPU with AVX2 and FMA; the shapes are checked above.
        Isa::Avx2Fma => unsafe { x86::xwt(z, x, w, n_in, n_out) },
        _ => {
            for r in 0..rows {
                let xr = &x.row(r)[..n_in];
                for (o, out) in z[r * n_out..(r + 1) * n_out].iter_mut().enumerate() {
                    *out = dot(xr, &w[o * n_in..(o + 1) * n_in]);
                }
            }
        }
    }
    Ok(())
}

/// The portable dot product of [`xwt`]: eight lanes, summed in the module's order, then the tail.
fn dot(x: &[f32], w: &[f32]) -> f32 {
    let whole = x.len() / LANES * LANES;
    let mut lanes = [0.0f32; LANES];
    for (xs, ws) in x[..whole].chunks_exact(LANES).zip(w[..whole].chunks_exact(LANES)) {
        for l in 0..LANES {
            lanes[l] = xs[l].mul_add(ws[l], lanes[l]);
        }
    }
    finish_dot(&lanes, &x[whole..], &w[whole..])
}

/// Sums the eight lanes of a dot product in the module's order and continues the chain over the tail.
#[inline(always)]
fn finish_dot(lanes: &[f32; LANES], x_tail: &[f32], w_tail: &[f32]) -> f32 {
    let l = lanes;
    let mut s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    for (&a, &b) in x_tail.iter().zip(w_tail) {
        s = a.mul_add(b, s);
    }
    s
}

/// `A(s, i) = values[s·s_step + i·i_step]`: the left operand of [`atb`], read through strides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided<'a> {
    /// The values.
    pub values: &'a [f32],
    /// Distance between two steps of a chain (two rows of `B`).
    pub s_step: usize,
    /// Distance between two rows of the output.
    pub i_step: usize,
}

/// `C[i, k] = α · Σ_s A(s, i)·B[s, k]` (`Accum::Replace`) or `C[i, k] += …` (`Accum::Add`, one rounding) for
/// `i < n_i`, `k < width`, `s < b.count()`; `C` is `n_i × width` row-major. Returns a shape error, before touching
/// anything, if an operand does not fit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn atb<B: Rows + ?Sized>(
    c: &mut [f32],
    n_i: usize,
    a: Strided<'_>,
    b: &B,
    width: usize,
    alpha: f32,
    accum: Accum,
    isa: Isa,
) -> Result<()> {
    let depth = b.count();
    check_rows("transposed product", b, width)?;
    if c.len() != n_i * width {
        return Err(MlError::Shape(format!("transposed product: {} outputs for {n_i}×{width}", c.len())));
    }
    if n_i > 0 && depth > 0 {
        let last = (depth - 1).checked_mul(a.s_step).zip((n_i - 1).checked_mul(a.i_step));
        if last.and_then(|(x, y)| x.checked_add(y)).is_none_or(|n| n >= a.values.len()) {
            return Err(MlError::Shape(format!(
                "transposed product: {} values cannot hold a {depth}×{n_i} left operand",
                a.values.len()
            )));
        }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only made on a CPU with AVX2 and FMA; the shapes are checked above.
        Isa::Avx2Fma => unsafe { x86::atb(c, n_i, a, b, width, alpha, accum) },
        _ => {
            for i in 0..n_i {
                for k in 0..width {
                    store(&mut c[i * width + k], chain(a, b, i, k), alpha, accum);
                }
            }
        }
    }
    Ok(())
}

/// One value of [`atb`] before scaling, as a scalar chain: `Σ_s A(s, i)·B[s, k]` by fused multiply-adds in order.
fn chain<B: Rows + ?Sized>(a: Strided<'_>, b: &B, i: usize, k: usize) -> f32 {
    let mut s = 0.0f32;
    for t in 0..b.count() {
        s = a.values[t * a.s_step + i * a.i_step].mul_add(b.row(t)[k], s);
    }
    s
}

/// Writes one finished chain of [`atb`].
#[inline(always)]
fn store(c: &mut f32, sum: f32, alpha: f32, accum: Accum) {
    *c = match accum {
        Accum::Replace => alpha * sum,
        Accum::Add => alpha.mul_add(sum, *c),
    };
}

/// The tiles with AVX2 and FMA intrinsics.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{chain, finish_dot, store, Rows, Strided, LANES};
    use crate::tiles::x86::{load, store as store_vec};

    use crate::kernels::Accum;

    /// Calls `$f::<R, C, …>(…)` for the tile shape `(R, C) = ($rows, $cols)`, `R ≤ 6`, `C ≤ 2` (the shapes of both
    /// products' tiles).
    macro_rules! by_shape {
        ($rows:expr, $cols:expr, $f:ident::<_, _ $(, $extra:ty)*>($($arg:expr),* $(,)?)) => {
            match ($rows, $cols) {
                (1, 1) => $f::<1, 1 $(, $extra)*>($($arg),*),
                (1, 2) => $f::<1, 2 $(, $extra)*>($($arg),*),
                (2, 1) => $f::<2, 1 $(, $extra)*>($($arg),*),
                (2, 2) => $f::<2, 2 $(, $extra)*>($($arg),*),
                (3, 1) => $f::<3, 1 $(, $extra)*>($($arg),*),
                (3, 2) => $f::<3, 2 $(, $extra)*>($($arg),*),
                (4, 1) => $f::<4, 1 $(, $extra)*>($($arg),*),
                (4, 2) => $f::<4, 2 $(, $extra)*>($($arg),*),
                (5, 1) => $f::<5, 1 $(, $extra)*>($($arg),*),
                (5, 2) => $f::<5, 2 $(, $extra)*>($($arg),*),
                (6, 1) => $f::<6, 1 $(, $extra)*>($($arg),*),
                (6, 2) => $f::<6, 2 $(, $extra)*>($($arg),*),
                (r, c) => unreachable!("tile {r}×{c} beyond 6×2"),
            }
        };
    }

    /// Rows × units of an [`xwt`](super::xwt) tile (at most what `by_shape` dispatches).
    const XR: usize = 6;
    const XC: usize = 2;
    /// Rows of `C` × vectors of an [`atb`](super::atb) tile (at most what `by_shape` dispatches).
    const AI: usize = 6;
    const AV: usize = 2;

    /// [`super::xwt`]: rows in tiles of [`XR`] outside (their values stay in the L1 cache while every unit
    /// reads them), units in tiles of [`XC`] inside; the edges take smaller tiles.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the shapes are those [`super::xwt`] checks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn xwt<X: Rows + ?Sized>(z: &mut [f32], x: &X, w: &[f32], n_in: usize, n_out: usize) {
        let rows = x.count();
        let mut r0 = 0;
        while r0 < rows {
            let rh = (rows - r0).min(XR);
            let xs: [&[f32]; XR] = std::array::from_fn(|i| &x.row(r0 + i.min(rh - 1))[..n_in]);
            let next: [&[f32]; XR] = std::array::from_fn(|i| {
                let r = r0 + XR + i;
                if r < rows {
                    &x.row(r)[..n_in]
                } else {
                    &[]
                }
            });
            let mut o0 = 0;
            while o0 < n_out {
                let cw = (n_out - o0).min(XC);
                // The first column tile reads the rows from memory; meanwhile it asks for the next tile's rows.
                let ahead = if o0 == 0 { Some(&next) } else { None };
                by_shape!(rh, cw, xwt_tile::<_, _>(z, &xs, ahead, w, n_in, n_out, r0, o0));
                o0 += cw;
            }
            r0 += rh;
        }
    }

    /// Rows `r0..r0+R` × units `o0..o0+C` of `z = x·wᵀ`; prefetches the rows of `ahead`, if given.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    fn xwt_tile<const R: usize, const C: usize>(
        z: &mut [f32],
        xs: &[&[f32]; XR],
        ahead: Option<&[&[f32]; XR]>,
        w: &[f32],
        n_in: usize,
        n_out: usize,
        r0: usize,
        o0: usize,
    ) {
        let ws: [&[f32]; C] = std::array::from_fn(|c| &w[(o0 + c) * n_in..(o0 + c + 1) * n_in]);
        let xp: [*const f32; R] = std::array::from_fn(|i| xs[i].as_ptr());
        let wp: [*const f32; C] = std::array::from_fn(|c| ws[c].as_ptr());
        let steps = n_in / LANES;
        // SAFETY: every row of `xs` and `ws` holds `n_in ≥ steps·8` values; AVX2 and FMA are enabled here.
        let acc = unsafe {
            match ahead {
                Some(rows) => xwt_chains::<R, C, true>(&xp, &wp, steps, rows),
                None => xwt_chains::<R, C, false>(&xp, &wp, steps, &[&[]; XR]),
            }
        };
        let whole = steps * LANES;
        for i in 0..R {
            for c in 0..C {
                let mut lanes = [0.0f32; LANES];
                store_vec(&mut lanes, acc[i][c]);
                z[(r0 + i) * n_out + o0 + c] = finish_dot(&lanes, &xs[i][whole..], &ws[c][whole..]);
            }
        }
    }

    /// One step of [`xwt_chains`]: eight inputs from `at` into every accumulator.
    ///
    /// # Safety
    /// Every pointer in `xp` and `wp` points at `at + 8` readable values; AVX2 and FMA.
    #[inline(always)]
    unsafe fn step<const R: usize, const C: usize>(
        acc: &mut [[__m256; C]; R],
        xp: &[*const f32; R],
        wp: &[*const f32; C],
        at: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            let wl: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(wp[c].add(at)));
            for i in 0..R {
                let xv = _mm256_loadu_ps(xp[i].add(at));
                for c in 0..C {
                    acc[i][c] = _mm256_fmadd_ps(xv, wl[c], acc[i][c]);
                }
            }
        }
    }

    /// The vector part of an [`xwt_tile`]: `R × C` accumulators over `steps` groups of eight inputs; with
    /// `PREFETCH`, one cache line of each row of `ahead` per two steps.
    ///
    /// # Safety
    /// Every pointer in `xp` and `wp` points at `steps·8` readable values; AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn xwt_chains<const R: usize, const C: usize, const PREFETCH: bool>(
        xp: &[*const f32; R],
        wp: &[*const f32; C],
        steps: usize,
        ahead: &[&[f32]; XR],
    ) -> [[__m256; C]; R] {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        // Two steps per iteration (one cache line of each row), then the odd step left over.
        let pairs = steps / 2;
        for jp in 0..pairs {
            let at = jp * 2 * LANES;
            if PREFETCH {
                for row in ahead {
                    if let Some(p) = row.get(at) {
                        _mm_prefetch::<_MM_HINT_T0>(p as *const f32 as *const i8);
                    }
                }
            }
            // SAFETY: `at + 16 ≤ steps·8`, within every row (the caller's contract).
            unsafe {
                step::<R, C>(&mut acc, xp, wp, at);
                step::<R, C>(&mut acc, xp, wp, at + LANES);
            }
        }
        if steps % 2 == 1 {
            // SAFETY: the last step, `(steps − 1)·8 + 8 ≤ steps·8`.
            unsafe { step::<R, C>(&mut acc, xp, wp, (steps - 1) * LANES) };
        }
        acc
    }

    /// [`super::atb`]: vector groups of [`AV`] outside (their slice of `B` stays in the L1 cache while every row
    /// of `C` reads it), rows of `C` in tiles of [`AI`] inside; the last `width mod 8` columns as scalar chains.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the shapes are those [`super::atb`] checks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn atb<B: Rows + ?Sized>(
        c: &mut [f32],
        n_i: usize,
        a: Strided<'_>,
        b: &B,
        width: usize,
        alpha: f32,
        accum: Accum,
    ) {
        let vecs = width / LANES;
        let mut v0 = 0;
        while v0 < vecs {
            let vw = (vecs - v0).min(AV);
            let mut i0 = 0;
            while i0 < n_i {
                let ih = (n_i - i0).min(AI);
                by_shape!(ih, vw, atb_tile::<_, _, B>(c, a, b, width, alpha, accum, i0, v0));
                i0 += ih;
            }
            v0 += vw;
        }
        for i in 0..n_i {
            for k in vecs * LANES..width {
                store(&mut c[i * width + k], chain(a, b, i, k), alpha, accum);
            }
        }
    }

    /// Rows `i0..i0+I` × vectors `v0..v0+V` of [`super::atb`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    fn atb_tile<const I: usize, const V: usize, B: Rows + ?Sized>(
        c: &mut [f32],
        a: Strided<'_>,
        b: &B,
        width: usize,
        alpha: f32,
        accum: Accum,
        i0: usize,
        v0: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; I];
        let k0 = v0 * LANES;
        let a_ptr = a.values.as_ptr();
        for t in 0..b.count() {
            // SAFETY: `super::atb` checked that every row of `b` holds `width ≥ k0 + 8·V` values and that
            // `A(s, i)` lies inside `a.values` for every `s < b.count()`, `i < n_i` (here `i0 + I ≤ n_i`).
            unsafe {
                let row = b.row_ptr(t).add(k0);
                let bl: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(row.add(v * LANES)));
                let at = a_ptr.add(t * a.s_step + i0 * a.i_step);
                for (i, row_acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*at.add(i * a.i_step));
                    for (sum, &bv) in row_acc.iter_mut().zip(&bl) {
                        *sum = _mm256_fmadd_ps(av, bv, *sum);
                    }
                }
            }
        }
        let scale = _mm256_set1_ps(alpha);
        for i in 0..I {
            let out = &mut c[(i0 + i) * width + k0..(i0 + i) * width + k0 + V * LANES];
            let (out, _) = out.as_chunks_mut::<LANES>();
            for v in 0..V {
                let value = match accum {
                    Accum::Replace => _mm256_mul_ps(scale, acc[i][v]),
                    Accum::Add => _mm256_fmadd_ps(scale, acc[i][v], load(&out[v])),
                };
                store_vec(&mut out[v], value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort::rng::Rng;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    fn isas() -> Vec<Isa> {
        let mut out = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            out.push(Isa::detect());
        }
        out
    }

    #[test]
    fn xwt_matches_the_defined_chains_bit_for_bit_on_every_path_and_shape() {
        for &(rows, n_in, n_out) in &[(1, 1, 1), (7, 13, 5), (64, 784, 32), (5, 8, 3), (4, 33, 10), (0, 4, 2)] {
            let x = values(rows * n_in + 3, 1);
            let w = values(n_out * n_in, 2);
            // Rows scattered through a larger buffer, in a shuffled order.
            let list: Vec<&[f32]> = (0..rows).map(|r| &x[((r * 7) % rows.max(1)) * n_in..][..n_in + 3]).collect();
            let want: Vec<f32> = (0..rows)
                .flat_map(|r| {
                    (0..n_out).map(|o| dot(&list[r][..n_in], &w[o * n_in..(o + 1) * n_in])).collect::<Vec<_>>()
                })
                .collect();
            for isa in isas() {
                let mut z = vec![f32::NAN; rows * n_out];
                xwt(&mut z, list.as_slice(), &w, n_in, n_out, isa).unwrap();
                assert_eq!(
                    z.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{isa:?} {rows}×{n_in}×{n_out}"
                );
                // Packed rows give the same bits as the list.
                let packed: Vec<f32> = list.iter().flat_map(|r| r[..n_in].to_vec()).collect();
                let mut zp = vec![f32::NAN; rows * n_out];
                xwt(&mut zp, &Packed::new(&packed, n_in), &w, n_in, n_out, isa).unwrap();
                assert_eq!(
                    zp.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
            // And the dot products are dot products.
            for (r, row) in list.iter().enumerate() {
                for o in 0..n_out {
                    let exact: f64 = (0..n_in).map(|k| f64::from(row[k]) * f64::from(w[o * n_in + k])).sum();
                    assert!((f64::from(want[r * n_out + o]) - exact).abs() < 1e-4 * (1.0 + exact.abs()));
                }
            }
        }
    }

    #[test]
    fn atb_matches_the_defined_chains_bit_for_bit_on_every_path_and_shape() {
        // (depth, n_i, width, transposed A)
        for &(depth, n_i, width, transposed) in &[
            (1, 1, 1, false),
            (64, 32, 784, false),
            (9, 5, 27, false),
            (10, 64, 32, true),
            (0, 3, 16, false),
            (3, 0, 8, true),
        ] {
            let a = values(depth * n_i, 3);
            let (s_step, i_step) = if transposed { (1, depth) } else { (n_i, 1) };
            let strided = Strided { values: &a, s_step, i_step };
            let b = values(depth * (width + 2), 4);
            let list: Vec<&[f32]> = (0..depth).rev().map(|t| &b[t * (width + 2)..(t + 1) * (width + 2)]).collect();
            let init = values(n_i * width, 5);
            for accum in [Accum::Replace, Accum::Add] {
                let want: Vec<f32> = (0..n_i * width)
                    .map(|e| {
                        let (i, k) = (e / width, e % width);
                        let mut s = 0.0f32;
                        for (t, row) in list.iter().enumerate() {
                            s = a[t * s_step + i * i_step].mul_add(row[k], s);
                        }
                        let mut out = init[e];
                        store(&mut out, s, 0.5, accum);
                        out
                    })
                    .collect();
                for isa in isas() {
                    let mut c = init.clone();
                    atb(&mut c, n_i, strided, list.as_slice(), width, 0.5, accum, isa).unwrap();
                    assert_eq!(
                        c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} {depth}×{n_i}×{width} {accum:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn shapes_are_checked_before_anything_is_written() {
        let x = values(20, 1);
        let w = values(12, 2);
        let mut z = [7.0f32; 8];
        let short: Vec<&[f32]> = vec![&x[..4], &x[..3]];
        assert!(xwt(&mut z[..6], short.as_slice(), &w, 4, 3, Isa::Portable).is_err());
        assert!(xwt(&mut z[..5], &Packed::new(&x[..8], 4), &w, 4, 3, Isa::Portable).is_err());
        let strided = Strided { values: &w[..5], s_step: 3, i_step: 1 };
        assert!(atb(&mut z[..8], 3, strided, &Packed::new(&x[..8], 4), 4, 1.0, Accum::Replace, Isa::detect()).is_err());
        assert!(z.iter().all(|&v| v == 7.0));
    }
}
