//! Register-tiled products for small fixed shapes, every output value one chain of fused multiply-adds, and the
//! element-wise layers around them: the sparse autoencoder's five products per block (see [`crate::sae`]).
//!
//! [`product`] computes `C[i, c] = start + Σ_t A(i, t) · B[t, c]` for `i < rows` and `c < L·vecs`, where `A` is
//! read with arbitrary strides (so `Xᵀ` is as cheap as `X`), `B` and `C` are row-major with a row stride, and the
//! chain starts at zero or at a row vector (a bias). The element type is `f32`
//! (`L` = 8 lanes per vector) or `f64` (`L` = 4), see [`Elem`]; the columns come in whole vectors (the caller pads
//! its matrices), so that a register holds `L` columns of one row of `C`.
//!
//! A general GEMM (faer) packs its operands and picks its micro-kernel per call; for the autoencoder's shapes
//! (blocks of a few dozen rows against 25 or 64 columns, depths of 25 to 64) that overhead and the padding of its
//! 12×4 tiles cost about a third of the time. Here a tile of `R` rows × `V` vectors of columns keeps its
//! `R·V` accumulators in registers for the whole depth: each step broadcasts `R` values of `A`, loads `V` vectors
//! of `B` and issues `R·V` fused multiply-adds. The caller picks the tile shape per product (`R·V` around 10 to
//! 12 accumulators hides the FMA latency and leaves registers for the operands); edges get smaller tiles.
//!
//! The layers ([`hidden_layer`], [`output_layer`], [`hidden_delta`]) work on the products' `f32` results: the
//! sigmoids in `f32` ([`crate::kernels::sigmoid32`], a few ulp), `d`, `δ3` and `e` in `f32` (`e` as an exact `f64`
//! product rounded once), and every per-patch sum (`Σa2`, `Σd`, `Σe`, `Σδ3`, `Σ r²`) in `f64`, on the values
//! widened exactly.
//!
//! On x86-64 with AVX2 and FMA the tiles and sigmoids are written with intrinsics; elsewhere (or when asked, for the
//! tests) portable loops compute the same values.
//!
//! **Determinism.** Each value of `C` is `start`, then `acc = a·b + acc` rounded once (a fused multiply-add) for
//! `t = 0, 1, …, depth − 1` in order. The portable path uses [`f32::mul_add`] and [`f64::mul_add`], correctly rounded
//! everywhere (in hardware, or in software where the CPU lacks FMA), so both paths give the same bits, and a value
//! does not depend on the tiling, nor on the other rows or columns computed with it. Widening `f32` to `f64` is
//! exact and narrowing rounds to nearest on both paths; the sigmoid is the same sequence of operations on both.
//! [`widen_add`] adds a block's `f32` result to `f64` sums, one addition per value.

use crate::error::{MlError, Result};
use crate::kernels::{multiversion, sigmoid32};

/// Values per `f32` vector register (AVX2): the layers' rows come in whole groups of this many values.
pub(crate) const LANES: usize = 8;

/// An element type of [`product`]: `f32` or `f64`.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    /// Values per AVX2 vector.
    const LANES: usize;
    /// Zero.
    const ZERO: Self;
    /// `self · a + b`, rounded once.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// An AVX2 vector of this type.
    #[cfg(target_arch = "x86_64")]
    type Vector: Copy;
    /// A vector of zeros.
    ///
    /// # Safety
    /// The CPU must have AVX2 (as for all the methods below).
    #[cfg(target_arch = "x86_64")]
    unsafe fn zero() -> Self::Vector;
    /// Loads a vector from `p` (any alignment).
    ///
    /// # Safety
    /// AVX2; `p` points at [`Elem::LANES`] readable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load(p: *const Self) -> Self::Vector;
    /// Stores a vector at `p` (any alignment).
    ///
    /// # Safety
    /// AVX2; `p` points at [`Elem::LANES`] writable values.
    #[cfg(target_arch = "x86_64")]
    unsafe fn store(p: *mut Self, x: Self::Vector);
    /// The value at `p` in every lane.
    ///
    /// # Safety
    /// AVX2; `p` points at a readable value.
    #[cfg(target_arch = "x86_64")]
    unsafe fn splat(p: *const Self) -> Self::Vector;
    /// `a · b + c` lane by lane, rounded once.
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn fmadd(a: Self::Vector, b: Self::Vector, c: Self::Vector) -> Self::Vector;
}

impl Elem for f32 {
    const LANES: usize = 8;
    const ZERO: f32 = 0.0;
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32) -> f32 {
        f32::mul_add(self, a, b)
    }
    #[cfg(target_arch = "x86_64")]
    type Vector = std::arch::x86_64::__m256;
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn zero() -> Self::Vector {
        std::arch::x86_64::_mm256_setzero_ps()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const f32) -> Self::Vector {
        // SAFETY: the caller guarantees eight readable values.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store(p: *mut f32, x: Self::Vector) {
        // SAFETY: the caller guarantees eight writable values.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(p, x) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn splat(p: *const f32) -> Self::Vector {
        // SAFETY: the caller guarantees a readable value.
        unsafe { std::arch::x86_64::_mm256_broadcast_ss(&*p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fmadd(a: Self::Vector, b: Self::Vector, c: Self::Vector) -> Self::Vector {
        std::arch::x86_64::_mm256_fmadd_ps(a, b, c)
    }
}

impl Elem for f64 {
    const LANES: usize = 4;
    const ZERO: f64 = 0.0;
    #[inline(always)]
    fn mul_add(self, a: f64, b: f64) -> f64 {
        f64::mul_add(self, a, b)
    }
    #[cfg(target_arch = "x86_64")]
    type Vector = std::arch::x86_64::__m256d;
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn zero() -> Self::Vector {
        std::arch::x86_64::_mm256_setzero_pd()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(p: *const f64) -> Self::Vector {
        // SAFETY: the caller guarantees four readable values.
        unsafe { std::arch::x86_64::_mm256_loadu_pd(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn store(p: *mut f64, x: Self::Vector) {
        // SAFETY: the caller guarantees four writable values.
        unsafe { std::arch::x86_64::_mm256_storeu_pd(p, x) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn splat(p: *const f64) -> Self::Vector {
        // SAFETY: the caller guarantees a readable value.
        unsafe { std::arch::x86_64::_mm256_broadcast_sd(&*p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fmadd(a: Self::Vector, b: Self::Vector, c: Self::Vector) -> Self::Vector {
        std::arch::x86_64::_mm256_fmadd_pd(a, b, c)
    }
}

/// Which implementation runs the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX2 and FMA intrinsics (x86-64 only; [`Isa::detect`] picks it when the CPU has both).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2Fma,
    /// Portable code, the same bits.
    Portable,
}

impl Isa {
    /// The fastest implementation this CPU runs.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }
}

/// Where the chains of a [`product`] start.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start<'a, T> {
    /// At zero.
    Zero,
    /// At the same row vector for every output row (a bias); at least `L·vecs` values.
    Row(&'a [T]),
}

/// The operands of a [`product`]: `A(i, t) = a[i·a_row + t·a_step]`, `B[t, c] = b[t·ldb + c]`, `t < depth`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operands<'a, T> {
    /// Values of `A`.
    pub a: &'a [T],
    /// Distance in `a` between two output rows.
    pub a_row: usize,
    /// Distance in `a` between two steps of the chain.
    pub a_step: usize,
    /// Values of `B`, row-major.
    pub b: &'a [T],
    /// Row stride of `B`.
    pub ldb: usize,
    /// Length of every chain.
    pub depth: usize,
}

/// `C[i, c] = start + Σ_t A(i, t)·B[t, c]` (see the module docs) for `i < rows`, `c < L·vecs` (`L` =
/// [`Elem::LANES`]); `C` is row-major with row stride `ldc`. `R × V` is the tile shape of the intrinsic path (rows ×
/// vectors of columns, at most 6 × 4); the result does not depend on it. Returns a shape error, before touching
/// anything, if an operand is too short for the shapes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product<const R: usize, const V: usize, T: Elem>(
    c: &mut [T],
    ldc: usize,
    rows: usize,
    vecs: usize,
    ops: &Operands<'_, T>,
    start: Start<'_, T>,
    isa: Isa,
) -> Result<()> {
    const { assert!(R >= 1 && R <= 6 && V >= 1 && V <= 4) };
    if rows == 0 || vecs == 0 {
        return Ok(());
    }
    let cols = vecs * T::LANES;
    let bad = |what: &str| Err(MlError::Shape(format!("tiled product: {what} ({rows}×{cols}, depth {})", ops.depth)));
    if ldc < cols || (rows - 1).checked_mul(ldc).and_then(|n| n.checked_add(cols)).is_none_or(|n| n > c.len()) {
        return bad("the destination is too short");
    }
    if ops.depth > 0 {
        let a_last = (rows - 1).checked_mul(ops.a_row).zip((ops.depth - 1).checked_mul(ops.a_step));
        if a_last.and_then(|(x, y)| x.checked_add(y)).is_none_or(|n| n >= ops.a.len()) {
            return bad("the left operand is too short");
        }
        if ops.ldb < cols
            || (ops.depth - 1).checked_mul(ops.ldb).and_then(|n| n.checked_add(cols)).is_none_or(|n| n > ops.b.len())
        {
            return bad("the right operand is too short");
        }
    }
    if let Start::Row(bias) = start {
        if bias.len() < cols {
            return bad("the start row is too short");
        }
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            let raw = x86::Raw::new(c, ldc, rows, vecs, ops, start);
            // SAFETY: `Isa::Avx2Fma` is only made by `detect` on a CPU with AVX2 and FMA (or by a test after the
            // same check), and every index the tiles touch lies within the bounds checked above.
            unsafe { x86::product::<R, V, T>(&raw) };
        }
        _ => portable(c, ldc, rows, cols, ops, start),
    }
    Ok(())
}

/// Adds `src`, widened, to `dst`: `rows` rows of `width` values, `stride` values apart in both (the end of a
/// block's `f32` chains, added to the chunk's `f64` sums). Exact widening and one `f64` addition per value: the
/// compiler's vectorised loop gives the same bits as any other.
pub(crate) fn widen_add(dst: &mut [f64], src: &[f32], width: usize, stride: usize) -> Result<()> {
    if width > stride || dst.len() != src.len() || !dst.len().is_multiple_of(stride) {
        return Err(MlError::Shape(format!(
            "widen_add: {} values into {} ({width} every {stride})",
            src.len(),
            dst.len()
        )));
    }
    widen_add_rows(dst, src, width, stride);
    Ok(())
}

multiversion! {
    /// [`widen_add`] after its checks.
    fn widen_add_rows(dst: &mut [f64], src: &[f32], width: usize, stride: usize) {
        for (d, s) in dst.chunks_exact_mut(stride).zip(src.chunks_exact(stride)) {
            for (d, &s) in d[..width].iter_mut().zip(&s[..width]) {
                *d += f64::from(s);
            }
        }
    }
}

/// Checks that `len` values are whole rows of `stride` values whose first `width` are used, `width` a whole
/// number of `f32` vectors.
fn check_rows(what: &str, len: usize, width: usize, stride: usize) -> Result<()> {
    if width == 0 || !width.is_multiple_of(LANES) || stride < width || !len.is_multiple_of(stride) {
        return Err(MlError::Shape(format!(
            "{what}: {len} values are not rows of {width} (a multiple of {LANES}) every {stride} values"
        )));
    }
    Ok(())
}

/// Hidden layer of a block of the sparse autoencoder: `a2 ← y = σ(a2)` (the bias is already in) and
/// `d = y(1−y)` in `f32`, and `y` widened and added per unit to `a_sum` (in `f64`), row after row. Rows of `a2` and `d` start `stride` values apart; the first `a_sum.len()` values of each (a multiple
/// of [`LANES`]) are used.
pub(crate) fn hidden_layer(a2: &mut [f32], d: &mut [f32], a_sum: &mut [f64], stride: usize, isa: Isa) -> Result<()> {
    check_rows("hidden layer", a2.len(), a_sum.len(), stride)?;
    if d.len() != a2.len() {
        return Err(MlError::Shape(format!("hidden layer: {} values of d for {} activations", d.len(), a2.len())));
    }
    match isa {
        // SAFETY: `Isa::Avx2Fma` means the CPU has AVX2 and FMA; the lengths are checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::hidden_layer(a2, d, a_sum, stride) },
        _ => hidden_layer_portable(a2, d, a_sum, stride),
    }
    Ok(())
}

/// Output layer of a block: with `a3 = σ(z3)` (the bias is already in) and `r = a3 − x` in `f32`,
/// `δ3 = r ⊙ a3(1−a3)` in place of `z3`, with `r²` (in `f64`, exact) added per column to `rec` and `δ3` widened to
/// `delta3_sum` (both `f64`), row after row. Rows of `z3` and `x` start `stride` values apart; the first
/// `rec.len()` values of each (a multiple of [`LANES`]) are used. Prefetches the
/// rows of `next` (the next block's patches, `v` values each), one per row computed, so that their memory latency
/// hides behind the sigmoids.
#[allow(clippy::too_many_arguments)]
pub(crate) fn output_layer(
    z3: &mut [f32],
    x: &[f32],
    stride: usize,
    next: &[f64],
    v: usize,
    rec: &mut [f64],
    delta3_sum: &mut [f64],
    isa: Isa,
) -> Result<()> {
    check_rows("output layer", z3.len(), rec.len(), stride)?;
    if x.len() != z3.len() || delta3_sum.len() != rec.len() || v == 0 {
        return Err(MlError::Shape(format!("output layer: {} patch values for {} outputs", x.len(), z3.len())));
    }
    match isa {
        // SAFETY: `Isa::Avx2Fma` means the CPU has AVX2 and FMA; the lengths are checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::output_layer(z3, x, stride, next, v, rec, delta3_sum) },
        _ => output_layer_portable(z3, x, stride, next.chunks(v), rec, delta3_sum),
    }
    Ok(())
}

/// Turns `W2ᵀδ3` into `e = W2ᵀδ3 ⊙ d` in place (the product of two `f32` values, exact in `f64`, rounded to
/// `f32`), adding `e` (before rounding) and `d` per unit to `e_sum` and `d_sum` in `f64`, row after row (rows
/// `stride` values apart, the first `e_sum.len()` used). Plain element-wise work that the compiler vectorises well:
/// one implementation.
pub(crate) fn hidden_delta(
    e: &mut [f32],
    d: &[f32],
    e_sum: &mut [f64],
    d_sum: &mut [f64],
    stride: usize,
) -> Result<()> {
    check_rows("hidden delta", e.len(), e_sum.len(), stride)?;
    if d.len() != e.len() || d_sum.len() != e_sum.len() {
        return Err(MlError::Shape(format!("hidden delta: {} values of d for {} of e", d.len(), e.len())));
    }
    hidden_delta_portable(e, d, e_sum, d_sum, stride);
    Ok(())
}

/// The portable [`product`]: each row of `C` is set to its start, then the chains advance one step at a time
/// (the same operations in the same order as the tiles, element by element).
fn portable<T: Elem>(c: &mut [T], ldc: usize, rows: usize, cols: usize, ops: &Operands<'_, T>, start: Start<'_, T>) {
    for i in 0..rows {
        let out = &mut c[i * ldc..i * ldc + cols];
        match start {
            Start::Zero => out.fill(T::ZERO),
            Start::Row(bias) => out.copy_from_slice(&bias[..cols]),
        }
        for t in 0..ops.depth {
            let a = ops.a[i * ops.a_row + t * ops.a_step];
            for (acc, &b) in out.iter_mut().zip(&ops.b[t * ops.ldb..t * ops.ldb + cols]) {
                *acc = a.mul_add(b, *acc);
            }
        }
    }
}

multiversion! {
    /// The portable [`hidden_layer`].
    fn hidden_layer_portable(a2: &mut [f32], d: &mut [f32], a_sum: &mut [f64], stride: usize) {
        let width = a_sum.len();
        for (row, d_row) in a2.chunks_exact_mut(stride).zip(d.chunks_exact_mut(stride)) {
            for ((a, dv), s) in row[..width].iter_mut().zip(&mut d_row[..width]).zip(a_sum.iter_mut()) {
                let y = sigmoid32(*a);
                *a = y;
                *dv = y * (1.0 - y);
                *s += f64::from(y);
            }
        }
    }
}

multiversion! {
    /// The portable [`output_layer`].
    fn output_layer_portable(
        z3: &mut [f32],
        x: &[f32],
        stride: usize,
        next: std::slice::Chunks<'_, f64>,
        rec: &mut [f64],
        delta3_sum: &mut [f64],
    ) {
        let width = rec.len();
        let mut ahead = next;
        for (row, x_row) in z3.chunks_exact_mut(stride).zip(x.chunks_exact(stride)) {
            if let Some(p) = ahead.next() {
                crate::kernels::prefetch(p);
            }
            for (((z, &xv), r2), g) in
                row[..width].iter_mut().zip(&x_row[..width]).zip(rec.iter_mut()).zip(delta3_sum.iter_mut())
            {
                let y = sigmoid32(*z);
                let r = y - xv;
                let wide = f64::from(r);
                *r2 += wide * wide;
                let delta = r * (y * (1.0 - y));
                *z = delta;
                *g += f64::from(delta);
            }
        }
    }
}

multiversion! {
    /// [`hidden_delta`], vectorised by the compiler.
    fn hidden_delta_portable(e: &mut [f32], d: &[f32], e_sum: &mut [f64], d_sum: &mut [f64], stride: usize) {
        let width = e_sum.len();
        for (e_row, d_row) in e.chunks_exact_mut(stride).zip(d.chunks_exact(stride)) {
            for (((e, &d), es), ds) in
                e_row[..width].iter_mut().zip(&d_row[..width]).zip(e_sum.iter_mut()).zip(d_sum.iter_mut())
            {
                let d = f64::from(d);
                let value = f64::from(*e) * d;
                *e = value as f32;
                *es += value;
                *ds += d;
            }
        }
    }
}

/// The tiles and layers with AVX2 and FMA intrinsics.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::{Elem, Operands, Start, LANES};
    use crate::kernels::sigmoid32_avx2;

    /// `f64` values per vector.
    const LANES64: usize = 4;

    /// Sigmoids of this many vectors of a row of the output layer are computed together (see
    /// [`crate::kernels::sigmoid32_avx2`]): a whole row of 64 outputs. Measured on Zen 3 (100 000 patches, one
    /// worker): 8 is 6% faster than 4; 2 and 4 are alike.
    const GROUP: usize = 8;

    /// The same for the hidden layer, whose groups run across row ends (4, 8 and 16 measured alike).
    const HIDDEN_GROUP: usize = 4;

    /// Eight `f32` values as a vector (also used by the MLP's tiles).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn load(v: &[f32; LANES]) -> __m256 {
        // SAFETY: eight readable values.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    /// A vector into eight `f32` values.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn store(v: &mut [f32; LANES], x: __m256) {
        // SAFETY: eight writable values.
        unsafe { _mm256_storeu_ps(v.as_mut_ptr(), x) }
    }

    /// Adds the eight values of `x`, widened, to the `f64` values at `sum`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn widen_add(sum: &mut [f64; LANES], x: __m256) {
        let halves = [_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x)];
        let (sum, _) = sum.as_chunks_mut::<LANES64>();
        for (s, half) in sum.iter_mut().zip(halves) {
            // SAFETY: four readable and writable values.
            unsafe {
                _mm256_storeu_pd(s.as_mut_ptr(), _mm256_add_pd(_mm256_loadu_pd(s.as_ptr()), _mm256_cvtps_pd(half)))
            }
        }
    }

    /// The first `N` values of `s` (which must hold them).
    #[inline(always)]
    fn first<T, const N: usize>(s: &[T]) -> &[T; N] {
        s.first_chunk().expect("a whole vector")
    }

    /// The first `N` values of `s` (which must hold them).
    #[inline(always)]
    fn first_mut<T, const N: usize>(s: &mut [T]) -> &mut [T; N] {
        s.first_chunk_mut().expect("a whole vector")
    }

    /// Vectors `at[0..G]` (offsets into `a2` and `d`; columns `col[0..G]` of `a_sum`) of the hidden layer.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hidden_group<const G: usize>(a2: &mut [f32], d: &mut [f32], a_sum: &mut [f64], at: [usize; G], col: [usize; G]) {
        let mut z = [_mm256_setzero_ps(); G];
        for g in 0..G {
            z[g] = load(first(&a2[at[g]..]));
        }
        let y = sigmoid32_avx2(z);
        for g in 0..G {
            store(first_mut(&mut a2[at[g]..]), y[g]);
            store(first_mut(&mut d[at[g]..]), _mm256_mul_ps(y[g], _mm256_sub_ps(_mm256_set1_ps(1.0), y[g])));
            widen_add(first_mut(&mut a_sum[col[g]..]), y[g]);
        }
    }

    /// [`super::hidden_layer`] with AVX2 and FMA: the same operations as the portable code, lane by lane. The
    /// sigmoids run [`HIDDEN_GROUP`] vectors at a time, across row ends; each unit's sum still gets its rows in
    /// order.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the lengths are those [`super::hidden_layer`] checks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn hidden_layer(a2: &mut [f32], d: &mut [f32], a_sum: &mut [f64], stride: usize) {
        let per_row = a_sum.len() / LANES;
        let total = a2.len() / stride * per_row;
        let at = |k: usize| k / per_row * stride + k % per_row * LANES;
        let col = |k: usize| k % per_row * LANES;
        let mut k = 0;
        while k + HIDDEN_GROUP <= total {
            let (at, col) = (std::array::from_fn(|g| at(k + g)), std::array::from_fn(|g| col(k + g)));
            hidden_group::<HIDDEN_GROUP>(a2, d, a_sum, at, col);
            k += HIDDEN_GROUP;
        }
        while k < total {
            hidden_group::<1>(a2, d, a_sum, [at(k)], [col(k)]);
            k += 1;
        }
    }

    /// Vectors `c..c+G` of one row of the output layer.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn output_group<const G: usize>(
        z: &mut [[f32; LANES]],
        x: &[[f32; LANES]],
        rec: &mut [[f64; LANES]],
        delta3_sum: &mut [[f64; LANES]],
        c: usize,
    ) {
        let mut pre = [_mm256_setzero_ps(); G];
        for g in 0..G {
            pre[g] = load(&z[c + g]);
        }
        let y = sigmoid32_avx2(pre);
        for g in 0..G {
            let r = _mm256_sub_ps(y[g], load(&x[c + g]));
            let halves = [_mm256_castps256_ps128(r), _mm256_extractf128_ps::<1>(r)];
            let (sums, _) = rec[c + g].as_chunks_mut::<LANES64>();
            for (s, half) in sums.iter_mut().zip(halves) {
                let wide = _mm256_cvtps_pd(half);
                // SAFETY: four readable and writable values.
                unsafe {
                    let sq = _mm256_add_pd(_mm256_loadu_pd(s.as_ptr()), _mm256_mul_pd(wide, wide));
                    _mm256_storeu_pd(s.as_mut_ptr(), sq);
                }
            }
            let slope = _mm256_mul_ps(y[g], _mm256_sub_ps(_mm256_set1_ps(1.0), y[g]));
            let delta = _mm256_mul_ps(r, slope);
            store(&mut z[c + g], delta);
            widen_add(&mut delta3_sum[c + g], delta);
        }
    }

    /// [`super::output_layer`] with AVX2 and FMA: the same operations as the portable code, lane by lane.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA; the lengths are those [`super::output_layer`] checks.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output_layer(
        z3: &mut [f32],
        x: &[f32],
        stride: usize,
        next: &[f64],
        v: usize,
        rec: &mut [f64],
        delta3_sum: &mut [f64],
    ) {
        let width = rec.len();
        let (rec, _) = rec.as_chunks_mut::<LANES>();
        let (delta3_sum, _) = delta3_sum.as_chunks_mut::<LANES>();
        let n = width / LANES;
        let mut ahead = next.chunks(v);
        for (row, x_row) in z3.chunks_exact_mut(stride).zip(x.chunks_exact(stride)) {
            if let Some(p) = ahead.next() {
                crate::kernels::prefetch(p);
            }
            let (z, _) = row[..width].as_chunks_mut::<LANES>();
            let (x, _) = x_row[..width].as_chunks::<LANES>();
            let mut c = 0;
            while c + GROUP <= n {
                output_group::<GROUP>(z, x, rec, delta3_sum, c);
                c += GROUP;
            }
            while c < n {
                output_group::<1>(z, x, rec, delta3_sum, c);
                c += 1;
            }
        }
    }

    /// Where the chains start, as a pointer.
    #[derive(Clone, Copy)]
    enum RawStart<T> {
        Zero,
        Row(*const T),
    }

    /// A checked [`super::product`] as raw pointers.
    pub(super) struct Raw<T> {
        c: *mut T,
        ldc: usize,
        rows: usize,
        vecs: usize,
        a: *const T,
        a_row: usize,
        a_step: usize,
        b: *const T,
        ldb: usize,
        depth: usize,
        start: RawStart<T>,
    }

    impl<T> Raw<T> {
        pub(super) fn new(
            c: &mut [T],
            ldc: usize,
            rows: usize,
            vecs: usize,
            ops: &Operands<'_, T>,
            start: Start<'_, T>,
        ) -> Raw<T> {
            let start = match start {
                Start::Zero => RawStart::Zero,
                Start::Row(bias) => RawStart::Row(bias.as_ptr()),
            };
            Raw {
                c: c.as_mut_ptr(),
                ldc,
                rows,
                vecs,
                a: ops.a.as_ptr(),
                a_row: ops.a_row,
                a_step: ops.a_step,
                b: ops.b.as_ptr(),
                ldb: ops.ldb,
                depth: ops.depth,
                start,
            }
        }
    }

    /// Runs the tiles over the whole product: column groups of `V` vectors outside (their slice of `B` stays in
    /// the L1 cache), rows of `R` inside; the edges take the largest tile that fits.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA, and `k` must come from a product whose bounds [`super::product`] checked.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn product<const R: usize, const V: usize, T: Elem>(k: &Raw<T>) {
        let mut c0 = 0;
        while c0 < k.vecs {
            let vw = (k.vecs - c0).min(V);
            let mut i0 = 0;
            while i0 < k.rows {
                let rh = (k.rows - i0).min(R);
                // SAFETY: rows i0..i0+rh and vectors c0..c0+vw lie inside the checked product; AVX2 and FMA are
                // present (this function's contract).
                unsafe {
                    macro_rules! dispatch {
                        ($(($r:literal, $v:literal)),*) => {
                            match (rh, vw) {
                                $(($r, $v) => tile::<$r, $v, T>(k, i0, c0),)*
                                _ => unreachable!("tile {rh}×{vw} beyond 6×4"),
                            }
                        };
                    }
                    dispatch!(
                        (1, 1),
                        (1, 2),
                        (1, 3),
                        (1, 4),
                        (2, 1),
                        (2, 2),
                        (2, 3),
                        (2, 4),
                        (3, 1),
                        (3, 2),
                        (3, 3),
                        (3, 4),
                        (4, 1),
                        (4, 2),
                        (4, 3),
                        (4, 4),
                        (5, 1),
                        (5, 2),
                        (5, 3),
                        (5, 4),
                        (6, 1),
                        (6, 2),
                        (6, 3),
                        (6, 4)
                    )
                }
                i0 += rh;
            }
            c0 += vw;
        }
    }

    /// Rows `i0..i0+R` × columns `L·c0..L·(c0+V)` of the product, accumulated in registers over the whole depth.
    ///
    /// # Safety
    /// AVX2 and FMA, and the tile inside the checked product.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    // Index loops keep the schedule readable: R broadcasts, then per vector of B one load and R multiply-adds.
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const R: usize, const V: usize, T: Elem>(k: &Raw<T>, i0: usize, c0: usize) {
        let lanes = T::LANES;
        // SAFETY (whole body): AVX2 and FMA are present (this function's contract); every pointer below addresses
        // an element of the checked product: rows i0..i0+R of C and A, columns L·c0..L·(c0+V) of B, C and the start
        // row, steps 0..depth of A and B. The pointers are advanced with `wrapping_add`, and read only while they
        // address a step below `depth`.
        unsafe {
            let mut acc = [[T::zero(); V]; R];
            match k.start {
                RawStart::Zero => {}
                RawStart::Row(bias) => {
                    for v in 0..V {
                        let b = T::load(bias.add(lanes * (c0 + v)));
                        for row in acc.iter_mut() {
                            row[v] = b;
                        }
                    }
                }
            }
            let mut ap = [k.a; R];
            for (i, p) in ap.iter_mut().enumerate() {
                *p = k.a.add((i0 + i) * k.a_row);
            }
            let mut bp = k.b.add(lanes * c0);
            for _ in 0..k.depth {
                let mut s = [T::zero(); R];
                for i in 0..R {
                    s[i] = T::splat(ap[i]);
                    ap[i] = ap[i].wrapping_add(k.a_step);
                }
                for v in 0..V {
                    let b = T::load(bp.add(lanes * v));
                    for i in 0..R {
                        acc[i][v] = T::fmadd(s[i], b, acc[i][v]);
                    }
                }
                bp = bp.wrapping_add(k.ldb);
            }
            for (i, row) in acc.iter().enumerate() {
                for (v, a) in row.iter().enumerate() {
                    T::store(k.c.add((i0 + i) * k.ldc + lanes * (c0 + v)), *a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort::rng::Rng;

    fn data<T: From<f32>>(n: usize, seed: u64) -> Vec<T> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| T::from(rng.uniform() as f32 - 0.5)).collect()
    }

    /// Runs one product with every tile shape the sparse autoencoder uses and the portable path, and checks that
    /// all agree bit for bit with the chain written out.
    fn check<T: Elem + From<f32> + Into<f64>>(rows: usize, vecs: usize, depth: usize, transposed: bool, start: usize) {
        let cols = vecs * T::LANES;
        let ldc = cols + 4;
        let ldb = cols + 8;
        let (a_row, a_step) = if transposed { (1, rows + 3) } else { (depth + 2, 1) };
        let a = data::<T>(rows.max(1) * a_row + depth.max(1) * a_step + 1, 1);
        let b = data::<T>(depth.max(1) * ldb, 2);
        let bias = data::<T>(cols, 3);
        let init = data::<T>(rows * ldc, 4);
        let start_kind = start;
        let start = if start_kind == 0 { Start::Zero } else { Start::Row(&bias) };
        let ops = Operands { a: &a, a_row, a_step, b: &b, ldb, depth };
        let mut want = init.clone();
        for i in 0..rows {
            for col in 0..cols {
                let mut acc = if start_kind == 0 { T::ZERO } else { bias[col] };
                for t in 0..depth {
                    acc = a[i * a_row + t * a_step].mul_add(b[t * ldb + col], acc);
                }
                want[i * ldc + col] = acc;
            }
        }
        let isa = Isa::detect();
        let mut got = [init.clone(), init.clone(), init.clone(), init.clone(), init.clone()];
        product::<3, 4, T>(&mut got[0], ldc, rows, vecs, &ops, start, isa).unwrap();
        product::<5, 2, T>(&mut got[1], ldc, rows, vecs, &ops, start, isa).unwrap();
        product::<6, 2, T>(&mut got[2], ldc, rows, vecs, &ops, start, isa).unwrap();
        product::<1, 1, T>(&mut got[3], ldc, rows, vecs, &ops, start, isa).unwrap();
        product::<3, 4, T>(&mut got[4], ldc, rows, vecs, &ops, start, Isa::Portable).unwrap();
        for g in &got {
            for (&x, &y) in g.iter().zip(&want) {
                assert_eq!(
                    x.into().to_bits(),
                    y.into().to_bits(),
                    "{rows}×{vecs}×{depth} transposed {transposed} start {start_kind}"
                );
            }
        }
    }

    #[test]
    fn every_tiling_and_the_portable_path_give_the_chain_bit_for_bit() {
        for (rows, vecs, depth) in
            [(1, 1, 1), (7, 7, 64), (25, 16, 64), (13, 16, 25), (64, 7, 64), (5, 3, 0), (11, 5, 9), (25, 8, 128)]
        {
            for transposed in [false, true] {
                for start in 0..2 {
                    check::<f64>(rows, vecs, depth, transposed, start);
                    check::<f32>(rows, vecs, depth, transposed, start);
                }
            }
        }
    }

    #[test]
    fn the_layers_give_the_same_bits_on_both_paths() {
        // Three rows of 16 columns (two vectors), with pre-activations from saturated to linear.
        let (rows, width, stride) = (3, 16, 24);
        let pre: Vec<f32> = (0..rows * stride).map(|i| (i as f32 - 36.0) * 0.7).collect();
        let x: Vec<f32> = data::<f32>(rows * stride, 5).iter().map(|v| v + 0.5).collect();
        let next = data::<f64>(10, 6);
        let run = |isa: Isa| {
            let (mut a2, mut d, mut a_sum) = (pre.clone(), vec![0.0f32; pre.len()], vec![0.25; width]);
            hidden_layer(&mut a2, &mut d, &mut a_sum, stride, isa).unwrap();
            let (mut z3, mut rec, mut d3) = (pre.clone(), vec![0.5; width], vec![-0.5; width]);
            output_layer(&mut z3, &x, stride, &next, 5, &mut rec, &mut d3, isa).unwrap();
            let f = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let g = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            (f(&a2), f(&d), g(&a_sum), f(&z3), g(&rec), g(&d3))
        };
        assert_eq!(run(Isa::detect()), run(Isa::Portable));
    }

    #[test]
    fn short_operands_are_errors() {
        let a = [1.0; 16];
        let b = [1.0; 16];
        let ops = Operands { a: &a, a_row: 4, a_step: 1, b: &b, ldb: 4, depth: 4 };
        let mut c = [0.0; 16];
        let isa = Isa::detect();
        assert!(product::<3, 4, f64>(&mut c, 4, 4, 1, &ops, Start::Zero, isa).is_ok());
        assert_eq!(c, [4.0; 16]);
        assert!(product::<3, 4, f64>(&mut c, 4, 5, 1, &ops, Start::Zero, isa).is_err());
        assert!(product::<3, 4, f64>(&mut c, 4, 4, 2, &ops, Start::Zero, isa).is_err());
        assert!(product::<3, 4, f64>(&mut c, 4, 4, 1, &Operands { depth: 5, ..ops }, Start::Zero, isa).is_err());
        assert!(product::<3, 4, f64>(&mut c, 4, 4, 1, &ops, Start::Row(&[0.0; 3]), isa).is_err());
        assert!(product::<3, 4, f64>(&mut c, 3, 4, 1, &ops, Start::Zero, isa).is_err());
    }
}
