//! Numerical kernels: single-threaded matrix products on row-major slices, and a fast, accurate, vectorisable
//! `exp`/sigmoid.
//!
//! **Matrix products** go through faer with [`faer::Par::Seq`]: one worker process uses one core, the parallelism
//! is the workers. [`view`] / [`view_mut`] borrow a row-major slice (a [`cohort::Shard`]'s values, a parameter
//! block) as a faer matrix without copying, and [`matmul`] checks shapes and returns an error where faer would
//! panic. A transposed operand is just [`MatRef::transpose`] of a view: no copy either.
//!
//! **`exp`** is a branch-free Cody–Waite reduction `x = n·ln2 + r`, `|r| ≤ ln2/2`, the [6/6] Padé approximant
//! `e^r ≈ P(r)/P(-r)` (approximation error below 1e-18) and a scale by `2^n` built from the exponent bits; the
//! sigmoid folds its own division into the Padé quotient, so it too costs one division. Both are plain scalar code
//! that the compiler vectorises: element-wise loops are compiled for AVX-512, AVX2 (each with FMA) and the
//! baseline SSE2, and the CPU picks at run time (the AVX-512 variant needs Rust ≥ 1.89 at build time). The
//! reduction and the polynomials are written with fused multiply-adds, which shortens the chain of dependent
//! operations that bounds a vectorised sigmoid's speed (a division's latency already takes a third of it): on one
//! Zen 3 core a sigmoid takes about 0.9 ns in a loop over cached values, against 1.2–1.4 ns with separate
//! multiplications and additions and about 4.5 ns for `1/(1+f64::exp(-x))`. The relative error against `f64::exp`
//! stays below 1e-15 (a few ulp, see the tests). `sigmoid32` is the `f32` counterpart (a Cody–Waite reduction
//! and a degree-5 polynomial, below 3e-7 relative), also written with AVX2 intrinsics over several vectors at once
//! (`sigmoid32_avx2`, the same bits) for the sparse autoencoder's layers.
//!
//! **Determinism.** Everything here is single-threaded with a fixed order of operations. The element-wise kernels
//! use IEEE add/mul/div and fused multiply-adds written out as `mul_add` (never a contraction left to the
//! compiler, which Rust does not do): a fused multiply-add is rounded once by definition, whether the CPU does it
//! (the AVX2 and AVX-512 variants) or a correctly rounded software `fma` does (the baseline variant, slow, for
//! x86-64 CPUs without FMA), so every variant gives the same bits. faer's GEMM picks its micro-kernel by CPU
//! features (AVX-512, AVX2), so machines with *different* SIMD levels may differ in the last bits of a product;
//! machines of one kind agree bit for bit.

use faer::linalg::matmul::matmul as faer_matmul;
pub use faer::{Accum, MatMut, MatRef};

use crate::error::{MlError, Result};

/// Borrows a row-major slice of `rows × cols` values as a matrix (no copy).
pub fn view<T>(values: &[T], rows: usize, cols: usize) -> Result<MatRef<'_, T>> {
    check_len(values.len(), rows, cols, cols)?;
    Ok(MatRef::from_row_major_slice(values, rows, cols))
}

/// Borrows a mutable row-major slice of `rows × cols` values as a matrix (no copy).
pub fn view_mut<T>(values: &mut [T], rows: usize, cols: usize) -> Result<MatMut<'_, T>> {
    check_len(values.len(), rows, cols, cols)?;
    Ok(MatMut::from_row_major_slice_mut(values, rows, cols))
}

/// Borrows `rows × cols` values of a row-major buffer whose rows start `row_stride` values apart (a block of columns
/// of a wider matrix) as a mutable matrix.
pub fn view_strided_mut(values: &mut [f64], rows: usize, cols: usize, row_stride: usize) -> Result<MatMut<'_, f64>> {
    if row_stride < cols {
        return Err(MlError::Shape(format!("row stride {row_stride} is smaller than the {cols} columns")));
    }
    check_len(values.len(), rows, cols, row_stride)?;
    // Built as the transpose of a column-major view: faer 0.24's `from_row_major_slice_with_stride_mut` swaps the
    // two strides (it yields a column-major matrix), which the test `strided_destination_leaves_other_columns_alone`
    // pins down.
    Ok(MatMut::from_column_major_slice_with_stride_mut(values, cols, rows, row_stride).transpose_mut())
}

fn check_len(len: usize, rows: usize, cols: usize, row_stride: usize) -> Result<()> {
    let needed = if rows == 0 || cols == 0 {
        Some(0)
    } else {
        (rows - 1).checked_mul(row_stride).and_then(|n| n.checked_add(cols))
    };
    match needed {
        // A strided view may be shorter than rows × stride; a dense one must be exact.
        Some(n) if (row_stride == cols && len == rows * cols) || (row_stride != cols && len >= n) => Ok(()),
        _ => Err(MlError::Shape(format!(
            "a buffer of {len} values cannot hold a {rows}×{cols} matrix with row stride {row_stride}"
        ))),
    }
}

/// Checks that a `dst = lhs · rhs` product has matching `(rows, cols)` shapes.
fn check_product(dst: (usize, usize), lhs: (usize, usize), rhs: (usize, usize)) -> Result<()> {
    if lhs.1 != rhs.0 || dst.0 != lhs.0 || dst.1 != rhs.1 {
        return Err(MlError::Shape(format!("{}×{} = {}×{} · {}×{}", dst.0, dst.1, lhs.0, lhs.1, rhs.0, rhs.1)));
    }
    Ok(())
}

/// `dst = lhs · rhs` (`Accum::Replace`) or `dst += lhs · rhs` (`Accum::Add`), single-threaded.
pub fn matmul(dst: MatMut<'_, f64>, accum: Accum, lhs: MatRef<'_, f64>, rhs: MatRef<'_, f64>) -> Result<()> {
    check_product((dst.nrows(), dst.ncols()), (lhs.nrows(), lhs.ncols()), (rhs.nrows(), rhs.ncols()))?;
    faer_matmul(dst, accum, lhs, rhs, 1.0, faer::Par::Seq);
    Ok(())
}

/// `dst = alpha · lhs · rhs` (`Accum::Replace`) or `dst += alpha · lhs · rhs` (`Accum::Add`) in `f32`,
/// single-threaded: the mini-batch products of the MLP.
pub fn matmul_f32(
    dst: MatMut<'_, f32>,
    accum: Accum,
    lhs: MatRef<'_, f32>,
    rhs: MatRef<'_, f32>,
    alpha: f32,
) -> Result<()> {
    check_product((dst.nrows(), dst.ncols()), (lhs.nrows(), lhs.ncols()), (rhs.nrows(), rhs.ncols()))?;
    faer_matmul(dst, accum, lhs, rhs, alpha, faer::Par::Seq);
    Ok(())
}

/// Defines a function several times — for the baseline target, with AVX2 and FMA enabled and (with a compiler that
/// supports it) with AVX-512 enabled — and picks the widest one the CPU supports at run time. The body should be
/// plain scalar loops over slices calling `#[inline(always)]` helpers such as [`exp`] and [`sigmoid`]; it is
/// inlined into each variant and auto-vectorises to that width. Every variant computes the same IEEE operations
/// lane by lane — `a * b + c` stays two roundings (Rust never contracts it), `mul_add` stays one (an FMA
/// instruction where enabled, a correctly rounded software `fma` on the baseline) — so all variants give the same
/// bits.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if $crate::kernels::has_avx512() {
                    // SAFETY: `avx512` only needs the CPU features `has_avx512` just detected.
                    return unsafe { avx512($($arg),*) };
                }
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: `avx2` only needs the CPU features just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Whether the CPU has the AVX-512 subsets the AVX-512 kernel variants are compiled for.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Asks the CPU to bring `values` into the cache (every 64-byte line), without waiting for them: for data a kernel
/// will read soon, requested while other work keeps the core busy so that the memory latency overlaps with it. A
/// no-op where the architecture has no prefetch instruction wired up here.
#[inline(always)]
pub(crate) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(values);
        let start = values.as_ptr() as *const i8;
        for offset in (0..bytes).step_by(64) {
            // SAFETY: SSE is part of the x86-64 baseline, and a prefetch never faults nor has any architectural
            // effect (the address lies inside `values` anyway).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// A value type with a scratch buffer per thread (see [`with_scratch`]): `f64` and `f32` each have their own, so a
/// kernel can hold one of each at once.
pub(crate) trait Scratch: Copy + Default + 'static {
    /// Runs `f` on this thread's buffer.
    fn with_buffer<R>(f: impl FnOnce(&std::cell::RefCell<Vec<Self>>) -> R) -> R;
}

macro_rules! scratch_buffer {
    ($t:ty) => {
        impl Scratch for $t {
            fn with_buffer<R>(f: impl FnOnce(&std::cell::RefCell<Vec<Self>>) -> R) -> R {
                thread_local! {
                    static SCRATCH: std::cell::RefCell<Vec<$t>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                SCRATCH.with(f)
            }
        }
    };
}
scratch_buffer!(f64);
scratch_buffer!(f32);

/// Runs `f` on a scratch buffer of `len` values that is reused across calls on this thread. A worker maps chunk
/// after chunk; a fresh buffer of a few hundred kB each time would be mapped and page-faulted anew by the allocator.
/// The contents are unspecified: write before reading.
pub(crate) fn with_scratch<T: Scratch, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    T::with_buffer(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, T::default());
            }
            f(&mut buf[..len])
        }
        // Re-entered (a kernel inside a kernel): fall back to a fresh buffer.
        Err(_) => f(&mut vec![T::default(); len]),
    })
}

const LOG2_E: f64 = std::f64::consts::LOG2_E;
/// `ln 2` split so that `n · LN2_HI` is exact for `|n| < 2^11` (the high part has 32 significant bits).
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
/// `1.5 · 2^52`: adding it rounds to an integer and leaves that integer in the low mantissa bits.
const SHIFTER: f64 = 6_755_399_441_055_744.0;
/// Below this `exp` returns 0 (true values are below 3.3e-308, about the smallest normal number).
const EXP_LO: f64 = -708.0;
/// Above this `exp` returns infinity (`ln(f64::MAX) ≈ 709.7827`; inputs up to here overflow correctly anyway).
const EXP_HI: f64 = 709.79;

/// Splits `x` (already clamped to `[EXP_LO, EXP_HI]`) into `x = n·ln2 + r` with `|r| ≤ ln2/2 + ε`; returns
/// `2^(n-1)` and `r`. Half the scale keeps n = 1024 (x within 0.01 of ln(f64::MAX)) representable; the caller
/// multiplies by 2 last, which is exact or overflows exactly when the result does.
#[inline(always)]
fn reduce(x: f64) -> (f64, f64) {
    let t = x.mul_add(LOG2_E, SHIFTER);
    let n = t - SHIFTER;
    // Cody–Waite: `n · LN2_HI` is exact, so `r` carries the full precision of ln 2 (about 2^-85 absolute).
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // The low mantissa bits of `t` hold n in two's complement; adding the bias 1023 - 1 and shifting into the
    // exponent field gives 2^(n-1) (n - 1 + 1023 lies in [1, 2046] for the clamped range).
    let half_scale = f64::from_bits(t.to_bits().wrapping_add(1022) << 52);
    (half_scale, r)
}

/// The [6/6] Padé approximant of `e^r`, `e^r ≈ P(r) / P(-r)`, returned as `(P(r), P(-r))`. With
/// `P(r) = E(r²) + r·O(r²)` both values share their work; for `|r| ≤ 0.35` the approximation error is below 1e-18
/// relative, so what remains is rounding (a few ulp).
#[inline(always)]
fn pade(r: f64) -> (f64, f64) {
    let r2 = r * r;
    let r4 = r2 * r2;
    let even = r4.mul_add(r2.mul_add(PADE_E6, PADE_E4), r2.mul_add(PADE_E2, 1.0));
    let odd = r * r4.mul_add(PADE_O5, r2.mul_add(PADE_O3, 0.5));
    (even + odd, even - odd)
}

/// Coefficients of the [6/6] Padé approximant of `e^r`: `P(r) = 1 + r/2 + (5/44)r² + r³/66 + r⁴/792 + r⁵/15840 +
/// r⁶/665280`, split into its even (`E`) and odd (`O`) parts.
const PADE_E2: f64 = 5.0 / 44.0;
const PADE_E4: f64 = 1.0 / 792.0;
const PADE_E6: f64 = 1.0 / 665_280.0;
const PADE_O3: f64 = 1.0 / 66.0;
const PADE_O5: f64 = 1.0 / 15_840.0;

/// `e^x` with a relative error of a few ulp, branch-free so that loops over it vectorise.
///
/// Returns `+∞` above `ln(f64::MAX)`, `0` below `-708` (where the true value is below 3.3e-308, about the smallest
/// normal number), and NaN for NaN.
#[inline(always)]
pub fn exp(x: f64) -> f64 {
    // Selects rather than `f64::clamp`/`max`, which carry NaN rules that get in the way of vectorisation; a NaN
    // fails both comparisons and flows through to the result.
    let xc = if x < EXP_LO { EXP_LO } else { x };
    let xc = if xc > EXP_HI { EXP_HI } else { xc };
    let (half_scale, r) = reduce(xc);
    let (p, q) = pade(r);
    let y = p / q * half_scale * 2.0;
    let y = if x > EXP_HI { f64::INFINITY } else { y };
    if x < EXP_LO {
        0.0
    } else {
        y
    }
}

/// The logistic function `1 / (1 + e^-x)`, branch-free, with one division: writing `e^-x = 2^n · P / Q` (see
/// [`exp`]) gives `σ(x) = Q / (Q + 2^n · P)`. Relative error a few ulp; exactly 0 and 1 far out, NaN for NaN.
#[inline(always)]
pub fn sigmoid(x: f64) -> f64 {
    let y = -x;
    // Clamping is enough here: beyond the range σ is 0 or 1 to within 1e-307 (2^n may become +∞, which gives 0).
    let y = if y < EXP_LO { EXP_LO } else { y };
    let y = if y > EXP_HI { EXP_HI } else { y };
    let (half_scale, r) = reduce(y);
    let (p, q) = pade(r);
    q / (2.0 * half_scale).mul_add(p, q)
}

/// `−z` is clamped to `[EXP32_LO, EXP32_HI]` in [`sigmoid32`]: `2^n` stays a normal `f32` for the rounded `n`, and
/// beyond the range `σ` is 0 or 1 to within `f32` precision (or a value below 1e-38).
const EXP32_LO: f32 = -87.0;
const EXP32_HI: f32 = 88.0;
/// `1.5 · 2^23`: adding it rounds to an integer and leaves that integer in the low mantissa bits.
const SHIFTER32: f32 = 12_582_912.0;
const LOG2_E32: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n · LN2_HI32` is exact for the clamped range (the high part has 9 significant bits).
const LN2_HI32: f32 = 0.693_359_4;
const LN2_LO32: f32 = -2.121_944_4e-4;
/// Cephes' `expf` polynomial: `e^r ≈ 1 + r + r²·P(r)` for `|r| ≤ ln 2 / 2`, about 1 ulp; highest degree first.
const EXP32_P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];

/// The logistic sigmoid in `f32`, `1 / (1 + e^−z)`, with a relative error of a few ulp (below 3e-7): the `f32`
/// counterpart of [`sigmoid`], written with the same fixed sequence of operations as [`sigmoid32_avx2`], so both
/// give the same bits (NaN aside). Fused multiply-adds are [`f32::mul_add`], correctly rounded everywhere.
#[inline(always)]
pub(crate) fn sigmoid32(z: f32) -> f32 {
    let t = -z;
    let t = if t < EXP32_LO { EXP32_LO } else { t };
    let t = if t > EXP32_HI { EXP32_HI } else { t };
    let s = t.mul_add(LOG2_E32, SHIFTER32);
    let n = s - SHIFTER32;
    let r = (-n).mul_add(LN2_LO32, (-n).mul_add(LN2_HI32, t));
    let mut p = EXP32_P[0];
    for &c in &EXP32_P[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r) + 1.0;
    // The low mantissa bits of `s` hold n in two's complement; shifted into the exponent field and biased, 2^n
    // (n + 127 lies in [1, 254] for the clamped range).
    let scale = f32::from_bits((s.to_bits() << 23).wrapping_add(127 << 23));
    1.0 / (1.0 + y * scale)
}

/// [`sigmoid32`] with AVX2 and FMA intrinsics on `N` vectors of eight values at once, the same operations lane by
/// lane (the clamps as `min`/`max`, which agree with the selects on everything but NaN). A sigmoid is a chain of
/// about twenty dependent operations ending in a division; a plain loop over values leaves the scheduler too few
/// independent operations to hide it, so the `N` chains are written interleaved, step by step.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn sigmoid32_avx2<const N: usize>(z: [std::arch::x86_64::__m256; N]) -> [std::arch::x86_64::__m256; N] {
    use std::arch::x86_64::*;
    let mut t = z;
    for i in 0..N {
        let neg = _mm256_xor_ps(z[i], _mm256_set1_ps(-0.0));
        t[i] = _mm256_max_ps(_mm256_set1_ps(EXP32_LO), _mm256_min_ps(_mm256_set1_ps(EXP32_HI), neg));
    }
    let mut s = t;
    for i in 0..N {
        s[i] = _mm256_fmadd_ps(t[i], _mm256_set1_ps(LOG2_E32), _mm256_set1_ps(SHIFTER32));
    }
    let mut r = t;
    for i in 0..N {
        let n = _mm256_sub_ps(s[i], _mm256_set1_ps(SHIFTER32));
        let hi = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI32), t[i]);
        r[i] = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO32), hi);
    }
    let mut p = [_mm256_set1_ps(EXP32_P[0]); N];
    for &c in &EXP32_P[1..] {
        for i in 0..N {
            p[i] = _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(c));
        }
    }
    let mut out = t;
    for i in 0..N {
        let y = _mm256_add_ps(_mm256_fmadd_ps(p[i], _mm256_mul_ps(r[i], r[i]), r[i]), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32::<23>(_mm256_castps_si256(s[i]));
        let scale = _mm256_castsi256_ps(_mm256_add_epi32(bits, _mm256_set1_epi32(127 << 23)));
        let e = _mm256_mul_ps(y, scale);
        out[i] = _mm256_div_ps(_mm256_set1_ps(1.0), _mm256_add_ps(_mm256_set1_ps(1.0), e));
    }
    out
}

multiversion! {
    /// Replaces every value by its [`exp`], vectorised.
    pub fn exp_slice(values: &mut [f64]) {
        for v in values.iter_mut() {
            *v = exp(*v);
        }
    }
}

multiversion! {
    /// Replaces every value by its [`sigmoid`], vectorised.
    pub fn sigmoid_slice(values: &mut [f64]) {
        for v in values.iter_mut() {
            *v = sigmoid(*v);
        }
    }
}

multiversion! {
    fn widen_unchecked(src: &[f32], dst: &mut [f64]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f64::from(*s);
        }
    }
}

/// Converts `f32` values to `f64` (exactly), vectorised. `dst` must be as long as `src`.
pub fn widen(src: &[f32], dst: &mut [f64]) -> Result<()> {
    if src.len() != dst.len() {
        return Err(MlError::Shape(format!("cannot widen {} values into {}", src.len(), dst.len())));
    }
    widen_unchecked(src, dst);
    Ok(())
}

/// Dot product with a fixed summation order (four interleaved partial sums, combined pairwise), so it is fast and
/// deterministic. Uses the shorter length if the slices differ.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let mut ca = a.chunks_exact(4);
    let mut cb = b.chunks_exact(4);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    for (k, (x, y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[k] += x * y;
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Euclidean norm, with the summation order of [`dot`].
pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn sigmoid32_is_accurate_to_a_few_ulp_and_the_same_on_both_paths() {
        let mut rng = cohort::rng::Rng::new(3);
        let z: Vec<f32> = (0..100_000)
            .map(|i| if i % 2 == 0 { 200.0 * rng.uniform() - 100.0 } else { 24.0 * rng.uniform() - 12.0 } as f32)
            .chain([0.0, -0.0, 87.0, -87.0, 88.5, -88.5, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY])
            .collect();
        let mut worst = 0.0f64;
        for &x in &z {
            let (got, want) = (f64::from(sigmoid32(x)), sigmoid(f64::from(x)));
            // Below 1e-37 the result is a subnormal f32 or zero, where only the absolute error matters.
            if want > 1e-37 {
                worst = worst.max(rel(got, want));
            } else {
                assert!(got < 1e-37, "σ({x}) = {got}");
            }
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            use std::arch::x86_64::*;
            for chunk in z.chunks_exact(16) {
                // SAFETY: AVX2 and FMA were just detected; each load and store covers eight values of a 16-chunk.
                let got = unsafe {
                    let v = [_mm256_loadu_ps(chunk.as_ptr()), _mm256_loadu_ps(chunk.as_ptr().add(8))];
                    let y = sigmoid32_avx2(v);
                    let mut out = [0.0f32; 16];
                    _mm256_storeu_ps(out.as_mut_ptr(), y[0]);
                    _mm256_storeu_ps(out.as_mut_ptr().add(8), y[1]);
                    out
                };
                for (g, &x) in got.iter().zip(chunk) {
                    assert_eq!(g.to_bits(), sigmoid32(x).to_bits(), "σ({x})");
                }
            }
        }
    }

    #[test]
    fn exp_is_accurate_over_the_whole_range() {
        let mut rng = cohort::rng::Rng::new(1);
        let mut worst = 0.0f64;
        for i in 0..200_000 {
            // Uniform over the normal range plus a dense sweep of small arguments.
            let x = if i % 2 == 0 { -707.9 + 1417.6 * rng.uniform() } else { 20.0 * rng.uniform() - 10.0 };
            worst = worst.max(rel(exp(x), x.exp()));
        }
        for x in [0.0, 1e-300, -1e-300, 0.5 * std::f64::consts::LN_2, 1.0, -1.0, 709.7, -707.99, 709.78] {
            worst = worst.max(rel(exp(x), x.exp()));
        }
        assert!(worst <= 1e-15, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn exp_limits_and_nan() {
        assert_eq!(exp(710.0), f64::INFINITY);
        assert_eq!(exp(f64::INFINITY), f64::INFINITY);
        assert!(exp(709.7827) > 1e308 && exp(709.7827).is_finite());
        assert_eq!(exp(-709.0), 0.0);
        assert_eq!(exp(f64::NEG_INFINITY), 0.0);
        assert!(exp(f64::NAN).is_nan());
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(f64::NAN).is_nan());
    }

    #[test]
    fn slices_match_scalars_bit_for_bit() {
        let mut rng = cohort::rng::Rng::new(2);
        let xs: Vec<f64> = (0..1001).map(|_| 60.0 * rng.uniform() - 30.0).collect();
        let mut e = xs.clone();
        exp_slice(&mut e);
        let mut s = xs.clone();
        sigmoid_slice(&mut s);
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(e[i].to_bits(), exp(x).to_bits());
            assert_eq!(s[i].to_bits(), sigmoid(x).to_bits());
            assert!(rel(s[i], 1.0 / (1.0 + (-x).exp())) < 1e-15);
        }
    }

    #[test]
    fn matmul_checks_shapes_and_multiplies() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2×3
        let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]; // 3×2
        let mut c = [0.0; 4];
        matmul(view_mut(&mut c, 2, 2).unwrap(), Accum::Replace, view(&a, 2, 3).unwrap(), view(&b, 3, 2).unwrap())
            .unwrap();
        assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
        // a · aᵀ through a transposed view, accumulated.
        matmul(
            view_mut(&mut c, 2, 2).unwrap(),
            Accum::Add,
            view(&a, 2, 3).unwrap(),
            view(&a, 2, 3).unwrap().transpose(),
        )
        .unwrap();
        assert_eq!(c, [18.0, 37.0, 42.0, 88.0]);
        let e =
            matmul(view_mut(&mut c, 2, 2).unwrap(), Accum::Replace, view(&a, 2, 3).unwrap(), view(&a, 2, 3).unwrap());
        assert!(matches!(e, Err(MlError::Shape(_))));
        assert!(view(&a, 4, 2).is_err());
        let mut wide = [0.0; 7];
        assert!(view_strided_mut(&mut wide, 2, 3, 4).is_ok());
        assert!(view_strided_mut(&mut wide, 2, 3, 5).is_err());
        assert!(view_strided_mut(&mut wide, 2, 3, 2).is_err());
    }

    #[test]
    fn strided_destination_leaves_other_columns_alone() {
        for (rows, k, cols) in [(3, 4, 2), (40, 64, 25), (300, 64, 25)] {
            let a: Vec<f64> = (0..rows * k).map(|i| (i % 7) as f64).collect();
            let b: Vec<f64> = (0..k * cols).map(|i| (i % 5) as f64 - 2.0).collect();
            let mut wide = vec![-1.0; rows * 2 * cols];
            matmul(
                view_strided_mut(&mut wide, rows, cols, 2 * cols).unwrap(),
                Accum::Replace,
                view(&a, rows, k).unwrap(),
                view(&b, k, cols).unwrap(),
            )
            .unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    let want: f64 = (0..k).map(|t| a[r * k + t] * b[t * cols + c]).sum();
                    assert_eq!(wide[r * 2 * cols + c], want, "{rows}x{k}x{cols} at {r},{c}");
                    assert_eq!(wide[r * 2 * cols + cols + c], -1.0, "{rows}x{k}x{cols} right half at {r},{c}");
                }
            }
        }
    }

    #[test]
    fn dot_and_widen() {
        let a: Vec<f64> = (0..11).map(f64::from).collect();
        assert_eq!(dot(&a, &a), (0..11).map(|i| f64::from(i * i)).sum::<f64>());
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
        let mut d = [0.0; 3];
        widen(&[0.1f32, 2.0, -3.5], &mut d).unwrap();
        assert_eq!(d, [f64::from(0.1f32), 2.0, -3.5]);
        assert!(widen(&[1.0], &mut d).is_err());
    }
}
