//! Sparse autoencoder (the UFLDL formulation, as in qjam): cost and gradient as one map-reduce round.
//!
//! # The model
//!
//! A patch `x` (`visible` values, 64 for 8×8) goes through `hidden` sigmoid units and back:
//! `a2 = σ(W1·x + b1)`, `a3 = σ(W2·a2 + b2)`. Over `m` patches, with `ρ̂_j = (1/m) Σ_i a2_ij` the average
//! activation of hidden unit `j`,
//!
//! ```text
//! J = (1/2m) Σ_i ‖a3_i − x_i‖²  +  (λ/2)(‖W1‖² + ‖W2‖²)  +  β Σ_j KL(ρ ‖ ρ̂_j)
//! KL(ρ‖ρ̂) = ρ ln(ρ/ρ̂) + (1−ρ) ln((1−ρ)/(1−ρ̂))
//! ```
//!
//! The parameter vector is `θ = [W1 (hidden×visible), W2 (visible×hidden), b1 (hidden), b2 (visible)]`, each
//! matrix **row-major** (UFLDL flattens column-major because MATLAB does; cohort is row-major throughout).
//!
//! # One round per evaluation
//!
//! Backpropagation gives `δ3_i = (a3_i − x_i) ⊙ a3_i(1−a3_i)` and
//! `δ2_i = (W2ᵀ δ3_i + β s) ⊙ d_i` with `d_i = a2_i(1−a2_i)` and `s_j = −ρ/ρ̂_j + (1−ρ)/(1−ρ̂_j)`. The
//! sparsity coefficient `s` depends on *all* patches through `ρ̂`, which seems to force two rounds (first `ρ̂`,
//! then the gradient). It does not: `s` enters `δ2` linearly and is the same for every patch, so with
//! `e_i = (W2ᵀ δ3_i) ⊙ d_i`
//!
//! ```text
//! Σ_i δ2_i x_iᵀ = Σ_i e_i x_iᵀ + β diag(s) · Σ_i d_i x_iᵀ        Σ_i δ2_i = Σ_i e_i + β s ⊙ Σ_i d_i
//! ```
//!
//! Every sum on the right is a plain sum over patches that does not need `ρ̂`. So each chunk returns, in one
//! [`Partial`] (`count` = patches, `sums` laid out as below), the reconstruction error `Σ‖a3−x‖²`, `Σ a2`,
//! `Σ e`, `Σ d`, `Σ δ3`, `Σ e xᵀ`, `Σ d xᵀ` and `Σ a2 δ3ᵀ`; `reduce` adds them; [`SaeConfig::finish`] on the
//! master forms `ρ̂ = Σa2 / m`, then `s`, and assembles the **exact** UFLDL cost and gradient. The price is one
//! extra `hidden×visible` product per patch (`Σ d xᵀ`: six GEMMs of size `m·hidden·visible` instead of five),
//! far cheaper than a second round trip.
//!
//! Sums layout (`h` = hidden, `v` = visible): `[Σ‖a3−x‖² (1), Σa2 (h), Σe (h), Σd (h), Σδ3 (v),
//! Σ e xᵀ (h×v), Σ d xᵀ (h×v), Σ a2 δ3ᵀ (h×v)]`, matrices row-major: 4 940 values (39.5 kB) per chunk for the
//! default 64×25, whatever the chunk's size.
//!
//! # Kernels
//!
//! A chunk is processed in blocks of [`BLOCK_ROWS`] patches. Each block's patches are copied once, rounded to
//! `f32`, into an aligned buffer with rows padded to whole vectors (the first block's copy pulls them from memory;
//! later blocks were prefetched, a row at a time, while the previous block's output sigmoids ran). The five
//! products per block — `X·W1ᵀ`, `A2·W2ᵀ`, `Δ3·W2`, `[E|D]ᵀ·X`, `A2ᵀ·Δ3` — run in **`f32`** (eight lanes, twice
//! the `f64` rate) as register tiles written for these skinny shapes (crate `tiles`: AVX2/FMA intrinsics where the
//! CPU has them, a portable loop with the same bits elsewhere), on `θ` rounded to `f32` once per chunk; the biases
//! are where the product chains start. The sigmoids are `f32` too (a few ulp; several vectors at once, with
//! intrinsics), and so are `d`, `δ3` and `e` (`e` as an exact `f64` product rounded once). Every sum over patches
//! is `f64`: the per-patch sums (`Σ‖a3−x‖²`, `Σa2`, `Σe`, `Σd`, `Σδ3`) add each value widened, patch after patch;
//! the outer products (`Σ e xᵀ`, `Σ d xᵀ`, `Σ a2 δ3ᵀ`) are chains of `f32` fused multiply-adds over one block's
//! patches, widened and added in `f64`, block after block. The cost and gradient agree with the all-`f64`
//! computation to about 1e-7 relative (measured 1e-9 to 7e-8 on the cost, 2e-8 to 5e-8 on the gradient: the
//! `f32` roundings, 2⁻²⁴ ≈ 6e-8, mostly average out over the patches); below that level the cost is not smooth in
//! `θ`, which limits finite-difference checks to steps of about 1e-3.
//!
//! Every value is a fixed sequence of IEEE operations over the chunk's rows in order (blocks counted from the
//! chunk's first patch), so a chunk's partial depends only on the chunk and `θ`, and is the same on both paths.
//! Where the time of an evaluation goes (products, sigmoids, memory), measured: `cohort bench roofline` and the
//! README's performance section.

use cohort::rng::Rng;
use cohort::wire::WireError;
use cohort::{MapReduce, Payload, Shard};

use crate::error::{MlError, Result};
use crate::kernels::{matmul, multiversion, sigmoid, view, view_mut, with_scratch, Accum};
use crate::partial::Partial;
use crate::tiles::{self, Isa, Operands, Start, LANES};

/// Patches per block inside a chunk: the block's patches and activations (about 230 kB) stay in a 512 kB L2 cache.
/// On a Zen 3 core 32 to 128 give the same speed within noise.
pub const BLOCK_ROWS: usize = 128;

/// Shape and hyper-parameters of a sparse autoencoder. `Default` is UFLDL's: 64 visible (8×8 patches), 25 hidden,
/// `λ = 1e-4`, `ρ = 0.01`, `β = 3`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SaeConfig {
    /// Input (and output) units: values per patch.
    pub visible: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Weight decay `λ`.
    pub lambda: f64,
    /// Sparsity target `ρ`, in (0, 1).
    pub rho: f64,
    /// Sparsity weight `β`.
    pub beta: f64,
}

impl Default for SaeConfig {
    fn default() -> Self {
        SaeConfig { visible: 64, hidden: 25, lambda: 1e-4, rho: 0.01, beta: 3.0 }
    }
}

/// The four blocks of a parameter vector, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct SaeWeights<'a> {
    /// `hidden × visible`, row-major: row `j` is the filter of hidden unit `j`.
    pub w1: &'a [f64],
    /// `visible × hidden`, row-major.
    pub w2: &'a [f64],
    /// `hidden`.
    pub b1: &'a [f64],
    /// `visible`.
    pub b2: &'a [f64],
}

impl SaeConfig {
    /// The default configuration with `hidden` hidden units.
    pub fn with_hidden(hidden: usize) -> Self {
        SaeConfig { hidden, ..Self::default() }
    }

    /// Checks that sizes are positive and the hyper-parameters in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what, detail: String| Err(MlError::Config { what, detail });
        if self.visible == 0 || self.hidden == 0 {
            return bad(
                "sparse-autoencoder shape",
                format!("{}×{}: both sizes must be ≥ 1", self.visible, self.hidden),
            );
        }
        if self.visible.checked_mul(self.hidden).is_none_or(|n| n > u32::MAX as usize) {
            return bad("sparse-autoencoder shape", format!("{}×{} is too large", self.visible, self.hidden));
        }
        if !(self.rho > 0.0 && self.rho < 1.0) {
            return bad("sparsity target ρ", format!("{} is not in (0, 1)", self.rho));
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return bad("sparsity weight β", format!("{} is not a finite value ≥ 0", self.beta));
        }
        if !(self.lambda >= 0.0 && self.lambda.is_finite()) {
            return bad("weight decay λ", format!("{} is not a finite value ≥ 0", self.lambda));
        }
        Ok(())
    }

    /// Length of the parameter vector: `2·hidden·visible + hidden + visible`.
    pub fn n_params(&self) -> usize {
        n_params(self.visible, self.hidden)
    }

    /// Floating-point operations of one patch's cost and gradient (multiply-adds count two): the six products of
    /// `hidden × visible` multiply-adds each (see the module docs). The sigmoids and element-wise work are not
    /// counted.
    pub fn flops_per_row(&self) -> f64 {
        12.0 * self.hidden as f64 * self.visible as f64
    }

    /// Length of the sums of a [`Partial`] (see the module docs).
    pub fn n_sums(&self) -> usize {
        n_sums(self.visible, self.hidden)
    }

    /// UFLDL's initialisation: `W1`, `W2` uniform in `[-r, r]` with `r = √6 / √(hidden + visible + 1)`, drawn
    /// row-major, `W1` first, from `Rng::new(seed)`; biases zero.
    pub fn init(&self, seed: u64) -> Result<Vec<f64>> {
        self.validate()?;
        let r = 6f64.sqrt() / ((self.hidden + self.visible + 1) as f64).sqrt();
        let mut rng = Rng::new(seed);
        let n_w = 2 * self.hidden * self.visible;
        let mut theta: Vec<f64> = (0..n_w).map(|_| (2.0 * rng.uniform() - 1.0) * r).collect();
        theta.resize(self.n_params(), 0.0);
        Ok(theta)
    }

    /// Borrows the blocks of `theta`, checking its length.
    pub fn weights<'a>(&self, theta: &'a [f64]) -> Result<SaeWeights<'a>> {
        self.validate()?;
        split(self.visible, self.hidden, theta)
    }

    /// The parameters to send to the workers for one evaluation at `theta`.
    pub fn params(&self, theta: &[f64]) -> Result<SaeParams> {
        self.weights(theta)?;
        Ok(SaeParams { visible: self.visible, hidden: self.hidden, theta: theta.to_vec() })
    }

    /// The partial sums over `patches` (row-major, `visible` values per patch), computed here in one piece: what
    /// one chunk's `map` computes.
    pub fn partial(&self, theta: &[f64], patches: &[f64]) -> Result<Partial> {
        let w = self.weights(theta)?;
        partial_sums(self.visible, self.hidden, w, patches)
    }

    /// Cost and gradient at `theta` from the reduced partial of all chunks (see the module docs).
    ///
    /// If every patch saturates a hidden unit to exactly 0 or 1, `ρ̂` is 0 or 1 and the cost is `+∞` (the
    /// gradient then holds infinities or NaN); optimizers treat such a trial point as too far and step back.
    pub fn finish(&self, theta: &[f64], partial: &Partial) -> Result<(f64, Vec<f64>)> {
        let w = self.weights(theta)?;
        partial.check(self.n_sums())?;
        if partial.count == 0 {
            return Err(MlError::Empty("the sparse autoencoder"));
        }
        let (h, v) = (self.hidden, self.visible);
        let m = partial.count as f64;
        let o = Offsets::new(v, h);
        let s = &partial.sums;
        let (a_sum, e_sum, d_sum) = (&s[o.a_sum..o.e_sum], &s[o.e_sum..o.d_sum], &s[o.d_sum..o.delta3_sum]);
        let delta3_sum = &s[o.delta3_sum..o.ex];
        let (ex, dx, a_delta3) = (&s[o.ex..o.dx], &s[o.dx..o.a_delta3], &s[o.a_delta3..o.end]);

        let decay = w.w1.iter().chain(w.w2).map(|x| x * x).sum::<f64>();
        let (rho, beta, lambda) = (self.rho, self.beta, self.lambda);
        let mut kl = 0.0;
        let mut coef = vec![0.0; h];
        for j in 0..h {
            let rho_hat = a_sum[j] / m;
            kl += rho * (rho / rho_hat).ln() + (1.0 - rho) * ((1.0 - rho) / (1.0 - rho_hat)).ln();
            coef[j] = beta * (-rho / rho_hat + (1.0 - rho) / (1.0 - rho_hat));
        }
        let cost = s[o.rec] / (2.0 * m) + 0.5 * lambda * decay + beta * kl;

        let mut grad = vec![0.0; self.n_params()];
        let (g_w1, rest) = grad.split_at_mut(h * v);
        let (g_w2, rest) = rest.split_at_mut(v * h);
        let (g_b1, g_b2) = rest.split_at_mut(h);
        for j in 0..h {
            for k in 0..v {
                let i = j * v + k;
                g_w1[i] = (ex[i] + coef[j] * dx[i]) / m + lambda * w.w1[i];
                // a_delta3 is Σ a2 δ3ᵀ (hidden × visible); W2 is visible × hidden.
                g_w2[k * h + j] = a_delta3[i] / m + lambda * w.w2[k * h + j];
            }
            g_b1[j] = (e_sum[j] + coef[j] * d_sum[j]) / m;
        }
        for k in 0..v {
            g_b2[k] = delta3_sum[k] / m;
        }
        Ok((cost, grad))
    }

    /// Cost and gradient over all `patches` in one piece: the sequential baseline, equal to the map-reduce
    /// evaluation up to the order of floating-point sums.
    pub fn cost_grad(&self, theta: &[f64], patches: &[f64]) -> Result<(f64, Vec<f64>)> {
        let partial = self.partial(theta, patches)?;
        self.finish(theta, &partial)
    }

    /// Hidden activations `σ(W1·x + b1)` of every patch, row-major (`hidden` values per patch): the learned
    /// features.
    pub fn encode(&self, theta: &[f64], patches: &[f64]) -> Result<Vec<f64>> {
        let w = self.weights(theta)?;
        let rows = rows_of(patches.len(), self.visible)?;
        let mut a2 = vec![0.0; rows * self.hidden];
        if rows == 0 {
            return Ok(a2);
        }
        matmul(
            view_mut(&mut a2, rows, self.hidden)?,
            Accum::Replace,
            view(patches, rows, self.visible)?,
            view(w.w1, self.hidden, self.visible)?.transpose(),
        )?;
        bias_sigmoid(&mut a2, w.b1);
        Ok(a2)
    }
}

fn n_params(visible: usize, hidden: usize) -> usize {
    2 * hidden * visible + hidden + visible
}

fn n_sums(visible: usize, hidden: usize) -> usize {
    Offsets::new(visible, hidden).end
}

fn rows_of(len: usize, visible: usize) -> Result<usize> {
    if !len.is_multiple_of(visible) {
        return Err(MlError::Length {
            what: "patch buffer",
            expected: len.next_multiple_of(visible),
            got: len,
            hint: "its length must be a whole number of patches of `visible` values",
        });
    }
    Ok(len / visible)
}

fn split(visible: usize, hidden: usize, theta: &[f64]) -> Result<SaeWeights<'_>> {
    let expected = n_params(visible, hidden);
    if theta.len() != expected {
        return Err(MlError::Length {
            what: "sparse-autoencoder parameter vector",
            expected,
            got: theta.len(),
            hint: "θ = [W1 (hidden×visible), W2 (visible×hidden), b1 (hidden), b2 (visible)]",
        });
    }
    let (w1, rest) = theta.split_at(hidden * visible);
    let (w2, rest) = rest.split_at(visible * hidden);
    let (b1, b2) = rest.split_at(hidden);
    Ok(SaeWeights { w1, w2, b1, b2 })
}

/// Where each statistic starts in the sums of a [`Partial`].
struct Offsets {
    rec: usize,
    a_sum: usize,
    e_sum: usize,
    d_sum: usize,
    delta3_sum: usize,
    ex: usize,
    dx: usize,
    a_delta3: usize,
    end: usize,
}

impl Offsets {
    fn new(v: usize, h: usize) -> Offsets {
        let rec = 0;
        let a_sum = 1;
        let e_sum = a_sum + h;
        let d_sum = e_sum + h;
        let delta3_sum = d_sum + h;
        let ex = delta3_sum + v;
        let dx = ex + h * v;
        let a_delta3 = dx + h * v;
        Offsets { rec, a_sum, e_sum, d_sum, delta3_sum, ex, dx, a_delta3, end: a_delta3 + h * v }
    }
}

/// Computes the partial sums of `patches` (see the module docs).
fn partial_sums(visible: usize, hidden: usize, w: SaeWeights<'_>, patches: &[f64]) -> Result<Partial> {
    partial_sums_with(visible, hidden, w, patches, Isa::detect())
}

/// Takes the next `n` values of `rest` and skips to the next cache line (64 bytes: 8 `f64` or 16 `f32` values,
/// when `rest` started on one).
fn take<'a, T>(rest: &mut &'a mut [T], n: usize) -> &'a mut [T] {
    let (head, tail) = std::mem::take(rest).split_at_mut(n.next_multiple_of(64 / size_of::<T>()));
    *rest = tail;
    &mut head[..n]
}

/// Row stride for rows of `width` values of `size` bytes: `width`, plus one cache line when the rows would
/// otherwise start a multiple of 128 bytes apart. With such a stride the same column of successive rows falls into
/// a few sets of the L1 cache (512 bytes apart: one set in eight), and a tile walking down a column of a block
/// evicts its own lines.
fn row_stride(width: usize, size: usize) -> usize {
    if (width * size).is_multiple_of(128) {
        width + 64 / size
    } else {
        width
    }
}

/// The layout of the scratch of [`partial_sums_with`]: row widths padded to whole `f32` vectors, and row strides.
#[derive(Clone, Copy)]
struct Layout {
    /// Visible values per row, padded to [`LANES`].
    vp: usize,
    /// Hidden values per row, padded to [`LANES`].
    hp: usize,
    /// Row stride of `f32` rows of `vp` values.
    vs: usize,
    /// Row stride of `f32` rows of `hp` values.
    hs: usize,
}

impl Layout {
    fn new(v: usize, h: usize) -> Layout {
        let (vp, hp) = (v.next_multiple_of(LANES), h.next_multiple_of(LANES));
        Layout { vp, hp, vs: row_stride(vp, 4), hs: row_stride(hp, 4) }
    }

    /// Lengths of the `f64` and `f32` scratch: the regions `take` cuts, each rounded up to a cache line.
    fn scratch_len(&self, v: usize, h: usize, block: usize) -> (usize, usize) {
        let Layout { vp, hp, vs, hs } = *self;
        let wide = [h * vs, h * vs, h * vs, hp, hp, hp, vp, vp];
        let narrow =
            [v * hs, h * vs, v * hs, hp, vp, block * vs, block * hs, block * hs, block * hs, block * vs, h * vs];
        (wide.iter().map(|n| n.next_multiple_of(8)).sum(), narrow.iter().map(|n| n.next_multiple_of(16)).sum())
    }
}

/// [`partial_sums`] with the products run by `isa` (the tests compare both implementations).
fn partial_sums_with(v: usize, h: usize, w: SaeWeights<'_>, patches: &[f64], isa: Isa) -> Result<Partial> {
    let rows = rows_of(patches.len(), v)?;
    let o = Offsets::new(v, h);
    let mut out = Partial::zeros(o.end);
    out.count = rows as u64;
    if rows == 0 {
        return Ok(out);
    }
    let block = rows.min(BLOCK_ROWS);
    // Rows of the block matrices are padded to whole `f32` vectors, `vp` visible and `hp` hidden values, and start
    // `vs` and `hs` values apart.
    let layout = Layout::new(v, h);
    let Layout { vp, hp, vs, hs } = layout;
    let (len, len32) = layout.scratch_len(v, h, block);
    with_scratch(len + 7, |raw: &mut [f64]| -> Result<()> {
        with_scratch(len32 + 15, |raw32: &mut [f32]| -> Result<()> {
            // Start on a cache line, so that no vector load of the regions below straddles two.
            let skip = raw.as_ptr().align_offset(64).min(7);
            let mut rest = &mut raw[skip..skip + len];
            let skip = raw32.as_ptr().align_offset(64).min(15);
            let mut rest32 = &mut raw32[skip..skip + len32];
            // The weights rounded to `f32`, laid out for the products: W1ᵀ (v × hp), W2ᵀ (h × vp), W2 (v × hp), the
            // biases; the padding is zero, so padded columns of the products are zero plus zero.
            let w1t = take(&mut rest32, v * hs);
            let w2t = take(&mut rest32, h * vs);
            let w2p = take(&mut rest32, v * hs);
            let b1 = take(&mut rest32, hp);
            let b2 = take(&mut rest32, vp);
            for buf in [&mut *w1t, &mut *w2t, &mut *w2p, &mut *b1, &mut *b2] {
                buf.fill(0.0);
            }
            for j in 0..h {
                for k in 0..v {
                    w1t[k * hs + j] = w.w1[j * v + k] as f32;
                    w2t[j * vs + k] = w.w2[k * h + j] as f32;
                }
            }
            for (dst, src) in w2p.chunks_exact_mut(hs).zip(w.w2.chunks_exact(h)) {
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s as f32);
            }
            b1.iter_mut().zip(w.b1).for_each(|(d, &s)| *d = s as f32);
            b2.iter_mut().zip(w.b2).for_each(|(d, &s)| *d = s as f32);
            // One block: its patches in `f32`, the hidden activations, d = a2(1−a2), W2ᵀδ3 then e, the output
            // pre-activations then δ3, and one block's `Σ · xᵀ` before it is added to the chunk's sums.
            let xb32 = take(&mut rest32, block * vs);
            xb32.fill(0.0);
            let a2 = take(&mut rest32, block * hs);
            let d = take(&mut rest32, block * hs);
            let e = take(&mut rest32, block * hs);
            let z3 = take(&mut rest32, block * vs);
            let outer = take(&mut rest32, h * vs);

            // The chunk's sums, in `f64` and padded: Σ e xᵀ, Σ d xᵀ, Σ a2 δ3ᵀ (each h × vp), Σa2, Σe, Σd, the
            // squared error per column, Σδ3.
            let g_ex = take(&mut rest, h * vs);
            let g_dx = take(&mut rest, h * vs);
            let g_ad = take(&mut rest, h * vs);
            let a_sum = take(&mut rest, hp);
            let e_sum = take(&mut rest, hp);
            let d_sum = take(&mut rest, hp);
            let rec = take(&mut rest, vp);
            let delta3_sum = take(&mut rest, vp);
            for buf in [&mut *g_ex, &mut *g_dx, &mut *g_ad, &mut *a_sum, &mut *e_sum, &mut *d_sum, &mut *rec] {
                buf.fill(0.0);
            }
            delta3_sum.fill(0.0);

            for start in (0..rows).step_by(block) {
                let nb = block.min(rows - start);
                let x = &patches[start * v..(start + nb) * v];
                let next = &patches[((start + nb) * v).min(patches.len())..((start + 2 * nb) * v).min(patches.len())];
                let (xb32, a2, d, e, z3) = (
                    &mut xb32[..nb * vs],
                    &mut a2[..nb * hs],
                    &mut d[..nb * hs],
                    &mut e[..nb * hs],
                    &mut z3[..nb * vs],
                );
                for (dst, src) in xb32.chunks_exact_mut(vs).zip(x.chunks_exact(v)) {
                    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s as f32);
                }
                let xb32 = &*xb32;

                // Hidden layer: a2 = σ(X·W1ᵀ + b1), d = a2(1−a2).
                let ops = Operands { a: xb32, a_row: vs, a_step: 1, b: w1t, ldb: hs, depth: v };
                tiles::product::<3, 4, f32>(a2, hs, nb, hp / LANES, &ops, Start::Row(b1), isa)?;
                tiles::hidden_layer(a2, d, a_sum, hs, isa)?;

                // Output layer: a3 = σ(A2·W2ᵀ + b2), then δ3 = (a3 − x) ⊙ a3(1−a3) in place.
                let ops = Operands { a: a2, a_row: hs, a_step: 1, b: w2t, ldb: vs, depth: h };
                tiles::product::<3, 4, f32>(z3, vs, nb, vp / LANES, &ops, Start::Row(b2), isa)?;
                tiles::output_layer(z3, xb32, vs, next, v, rec, delta3_sum, isa)?;

                // Backpropagate without the sparsity term: W2ᵀδ3, then e = (W2ᵀδ3) ⊙ d.
                let ops = Operands { a: z3, a_row: vs, a_step: 1, b: w2p, ldb: hs, depth: v };
                tiles::product::<3, 4, f32>(e, hs, nb, hp / LANES, &ops, Start::Zero, isa)?;
                tiles::hidden_delta(e, d, e_sum, d_sum, hs)?;

                // Σ e xᵀ, Σ d xᵀ and Σ a2 δ3ᵀ: the block's chains over its patches in `f32`, widened and added to
                // the chunk's `f64` sums.
                let (a2, d, e, z3) = (&*a2, &*d, &*e, &*z3);
                for (g, left, right) in [(&mut *g_ex, e, xb32), (&mut *g_dx, d, xb32), (&mut *g_ad, a2, z3)] {
                    let ops = Operands { a: left, a_row: 1, a_step: hs, b: right, ldb: vs, depth: nb };
                    tiles::product::<5, 2, f32>(outer, vs, h, vp / LANES, &ops, Start::Zero, isa)?;
                    tiles::widen_add(g, outer, vp, vs)?;
                }
            }

            let s = &mut out.sums;
            s[o.rec] = rec[..v].iter().sum::<f64>();
            s[o.a_sum..o.e_sum].copy_from_slice(&a_sum[..h]);
            s[o.e_sum..o.d_sum].copy_from_slice(&e_sum[..h]);
            s[o.d_sum..o.delta3_sum].copy_from_slice(&d_sum[..h]);
            s[o.delta3_sum..o.ex].copy_from_slice(&delta3_sum[..v]);
            for (at, g) in [(o.ex, &*g_ex), (o.dx, &*g_dx), (o.a_delta3, &*g_ad)] {
                for (dst, src) in s[at..at + h * v].chunks_exact_mut(v).zip(g.chunks_exact(vs)) {
                    dst.copy_from_slice(&src[..v]);
                }
            }
            Ok(())
        })
    })?;
    Ok(out)
}

multiversion! {
    /// `a ← σ(a + b)` for every row of `a` (`b.len()` values per row).
    fn bias_sigmoid(a: &mut [f64], b: &[f64]) {
        for row in a.chunks_exact_mut(b.len()) {
            for (z, &bias) in row.iter_mut().zip(b) {
                *z = sigmoid(*z + bias);
            }
        }
    }
}

/// What the master sends each worker per evaluation: the shape (workers are started once and serve any shape)
/// and `θ`. The hyper-parameters `λ, ρ, β` are not needed by the workers: they enter only in
/// [`SaeConfig::finish`].
#[derive(Debug, Clone, PartialEq)]
pub struct SaeParams {
    /// Values per patch.
    pub visible: usize,
    /// Hidden units.
    pub hidden: usize,
    /// Parameter vector (see the module docs for its layout).
    pub theta: Vec<f64>,
}

impl Payload for SaeParams {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.visible as u64).encode(out);
        (self.hidden as u64).encode(out);
        self.theta.encode(out);
    }

    fn decode(input: &mut &[u8]) -> std::result::Result<Self, WireError> {
        let visible = u64::decode(input)?;
        let hidden = u64::decode(input)?;
        let theta = Vec::decode(input)?;
        let size = |n: u64| usize::try_from(n).map_err(|_| WireError::Malformed(format!("size {n} too large")));
        Ok(SaeParams { visible: size(visible)?, hidden: size(hidden)?, theta })
    }
}

/// The sparse autoencoder's cost-and-gradient round (`"sae.cost_grad"`): `map` returns a chunk's [`Partial`]
/// sums, `reduce` adds them, [`SaeConfig::finish`] turns the total into cost and gradient.
///
/// ```
/// use cohort::{Dataset, MapReduce};
/// use cohort_ml::sae::{SaeConfig, SaeJob};
///
/// let config = SaeConfig { visible: 4, hidden: 2, ..SaeConfig::default() };
/// let theta = config.init(7)?;
/// let data = Dataset::new((0..40).map(|i| 0.1 + 0.02 * f64::from(i)).collect(), 4)?.with_chunks(3)?;
/// // What a cluster does: map every chunk, reduce left to right, finish on the master.
/// let params = config.params(&theta)?;
/// let total = (0..3).map(|c| SaeJob.map(&params, &data.shard(c))).reduce(|a, b| SaeJob.reduce(a, b)).unwrap();
/// let (cost, grad) = config.finish(&theta, &total)?;
/// let (cost_seq, _) = config.cost_grad(&theta, data.values())?;
/// assert!((cost - cost_seq).abs() <= 1e-12 * cost_seq);
/// assert_eq!(grad.len(), config.n_params());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SaeJob;

impl MapReduce for SaeJob {
    const NAME: &'static str = "sae.cost_grad";
    type Elem = f64;
    type Params = SaeParams;
    type Output = Partial;

    fn map(&self, params: &SaeParams, shard: &Shard<'_, f64>) -> Partial {
        let run = || {
            let config = SaeConfig { visible: params.visible, hidden: params.hidden, ..SaeConfig::default() };
            if shard.cols != params.visible {
                return Err(MlError::Columns {
                    model: "the sparse autoencoder",
                    expected: params.visible,
                    got: shard.cols,
                    hint: "the dataset's rows must be patches of `visible` values",
                });
            }
            config.partial(&params.theta, shard.values)
        };
        run().unwrap_or_else(|e| Partial::failed(shard.chunk, &e))
    }

    fn reduce(&self, left: Partial, right: Partial) -> Partial {
        left.merge(right)
    }
}

/// Cuts `n_patches` random `patch × patch` patches out of a stack of images and normalises them as in the UFLDL
/// exercise: subtract each patch's own mean, truncate to ±3 standard deviations of all (centred) values,
/// and map `[-1, 1]` to `[0.1, 0.9]` (the range of the sigmoid output units).
///
/// `images` holds the images one after another, each `image_rows × image_cols` row-major; a patch is
/// returned row-major too, `patch²` values per patch. Each patch picks an image and a top-left corner uniformly
/// from `Rng::new(seed)`. The standard deviation is the sample one (divided by `N − 1`), as MATLAB's `std`.
pub fn sample_patches<T: Copy + Into<f64>>(
    images: &[T],
    image_rows: usize,
    image_cols: usize,
    n_patches: usize,
    patch: usize,
    seed: u64,
) -> Result<Vec<f64>> {
    let pixels = image_rows.checked_mul(image_cols).filter(|&n| n > 0).ok_or_else(|| MlError::Config {
        what: "image size",
        detail: format!("{image_rows}×{image_cols}: both sides must be ≥ 1"),
    })?;
    if patch == 0 || patch > image_rows || patch > image_cols {
        return Err(MlError::Config {
            what: "patch size",
            detail: format!("{patch} does not fit in {image_rows}×{image_cols} images; use 1..={}", {
                image_rows.min(image_cols)
            }),
        });
    }
    if images.is_empty() || !images.len().is_multiple_of(pixels) {
        return Err(MlError::Length {
            what: "image buffer",
            expected: pixels * (images.len() / pixels).max(1),
            got: images.len(),
            hint: "give whole images of image_rows × image_cols pixels, one after another",
        });
    }
    if n_patches == 0 {
        return Err(MlError::Empty("sample_patches"));
    }
    if let Some(i) = images.iter().position(|p| !(*p).into().is_finite()) {
        return Err(MlError::Config {
            what: "image pixel",
            detail: format!("pixel {i} is {}; clean the images first", images[i].into()),
        });
    }
    let n_images = images.len() / pixels;
    let size = patch * patch;
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n_patches * size);
    for _ in 0..n_patches {
        let image = rng.below(n_images as u64) as usize;
        let top = rng.below((image_rows - patch + 1) as u64) as usize;
        let left = rng.below((image_cols - patch + 1) as u64) as usize;
        for r in top..top + patch {
            let row = image * pixels + r * image_cols + left;
            out.extend(images[row..row + patch].iter().map(|&p| p.into()));
        }
    }
    normalize_patches(&mut out, size)?;
    Ok(out)
}

/// Normalises raw patches (`size` values each, one after another) in place as [`sample_patches`] does: subtract
/// each patch's own mean, truncate to ±3 sample standard deviations of all centred values, and map `[-1, 1]` to
/// `[0.1, 0.9]`. For patches cut by other means, e.g. from images of different sizes.
pub fn normalize_patches(out: &mut [f64], size: usize) -> Result<()> {
    if size == 0 || !out.len().is_multiple_of(size) {
        return Err(MlError::Length {
            what: "patch buffer",
            expected: out.len().next_multiple_of(size.max(1)),
            got: out.len(),
            hint: "its length must be a whole number of patches of `size` values",
        });
    }
    if out.is_empty() {
        return Err(MlError::Empty("normalize_patches"));
    }
    for values in out.chunks_exact_mut(size) {
        let mean = values.iter().sum::<f64>() / size as f64;
        values.iter_mut().for_each(|x| *x -= mean);
    }
    // Centred values have mean ~0 overall, but compute the sample deviation around the actual mean, as `std` does.
    let n = out.len() as f64;
    let mean = out.iter().sum::<f64>() / n;
    let var = if out.len() > 1 { out.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    let limit = 3.0 * var.sqrt();
    for x in out.iter_mut() {
        // Constant patches centre to 0, and 0 maps to 0.5; avoid 0/0 when every patch is constant.
        let t = if limit > 0.0 { x.clamp(-limit, limit) / limit } else { 0.0 };
        *x = (t + 1.0) * 0.4 + 0.1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort::Dataset;

    /// UFLDL's cost and gradient written out directly (two passes: ρ̂ first, then backpropagation with the sparsity
    /// term inside δ2), with `f64::exp`. The reference the fast one-round formulation is checked against.
    fn reference(c: &SaeConfig, theta: &[f64], x: &[f64]) -> (f64, Vec<f64>) {
        let (v, h) = (c.visible, c.hidden);
        let w = split(v, h, theta).unwrap();
        let m = x.len() / v;
        let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
        let forward = |p: &[f64]| {
            let a2: Vec<f64> =
                (0..h).map(|j| sig(w.b1[j] + (0..v).map(|k| w.w1[j * v + k] * p[k]).sum::<f64>())).collect();
            let a3: Vec<f64> =
                (0..v).map(|k| sig(w.b2[k] + (0..h).map(|j| w.w2[k * h + j] * a2[j]).sum::<f64>())).collect();
            (a2, a3)
        };
        let mut rho_hat = vec![0.0; h];
        for p in x.chunks(v) {
            let (a2, _) = forward(p);
            for j in 0..h {
                rho_hat[j] += a2[j] / m as f64;
            }
        }
        let mut cost = 0.0;
        let mut g = vec![0.0; theta.len()];
        for p in x.chunks(v) {
            let (a2, a3) = forward(p);
            let d3: Vec<f64> = (0..v).map(|k| (a3[k] - p[k]) * a3[k] * (1.0 - a3[k])).collect();
            cost += (0..v).map(|k| (a3[k] - p[k]).powi(2)).sum::<f64>() / (2.0 * m as f64);
            for j in 0..h {
                let s = -c.rho / rho_hat[j] + (1.0 - c.rho) / (1.0 - rho_hat[j]);
                let back = (0..v).map(|k| w.w2[k * h + j] * d3[k]).sum::<f64>();
                let d2 = (back + c.beta * s) * a2[j] * (1.0 - a2[j]);
                for k in 0..v {
                    g[j * v + k] += d2 * p[k] / m as f64;
                    g[h * v + k * h + j] += d3[k] * a2[j] / m as f64;
                }
                g[2 * h * v + j] += d2 / m as f64;
            }
            for k in 0..v {
                g[2 * h * v + h + k] += d3[k] / m as f64;
            }
        }
        for i in 0..2 * h * v {
            cost += 0.5 * c.lambda * theta[i] * theta[i];
            g[i] += c.lambda * theta[i];
        }
        for &r in &rho_hat {
            cost += c.beta * (c.rho * (c.rho / r).ln() + (1.0 - c.rho) * ((1.0 - c.rho) / (1.0 - r)).ln());
        }
        (cost, g)
    }

    fn patches(n: usize, v: usize, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..n * v).map(|_| 0.1 + 0.8 * rng.uniform()).collect()
    }

    fn rel_err(a: &[f64], b: &[f64]) -> f64 {
        let diff = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
        let sum = a.iter().zip(b).map(|(x, y)| (x + y) * (x + y)).sum::<f64>().sqrt();
        diff / sum
    }

    fn small() -> (SaeConfig, Vec<f64>, Vec<f64>) {
        let c = SaeConfig { visible: 16, hidden: 5, lambda: 1e-3, rho: 0.05, beta: 3.0 };
        // Random non-trivial θ including biases, so that every block of the gradient is exercised.
        let mut rng = Rng::new(11);
        let theta: Vec<f64> = (0..c.n_params()).map(|_| rng.uniform() - 0.5).collect();
        (c, theta, patches(23, 16, 5))
    }

    /// The products and sigmoids run in `f32`, so the cost carries `f32`-level noise (about 1e-8 relative here,
    /// not smooth in `θ`) that a step of 1e-5 would amplify to 1e-4 in the differences (1e-5 at a step of 1e-3).
    /// At a step of 3e-3 the check sees 4e-6: noise and the difference's own truncation error (1e-6); the
    /// gradient's accuracy itself is checked against the all-`f64` reference below, to about 1e-7.
    #[test]
    fn gradient_matches_finite_differences() {
        let (c, theta, x) = small();
        let (_, grad) = c.cost_grad(&theta, &x).unwrap();
        let eps = 3e-3;
        let numeric: Vec<f64> = (0..theta.len())
            .map(|i| {
                let mut t = theta.clone();
                t[i] = theta[i] + eps;
                let up = c.cost_grad(&t, &x).unwrap().0;
                t[i] = theta[i] - eps;
                let down = c.cost_grad(&t, &x).unwrap().0;
                (up - down) / (2.0 * eps)
            })
            .collect();
        let err = rel_err(&numeric, &grad);
        assert!(err <= 1e-5, "relative error {err:e}");
    }

    #[test]
    fn one_round_formulation_equals_the_two_pass_reference() {
        let (c, theta, x) = small();
        let (cost, grad) = c.cost_grad(&theta, &x).unwrap();
        let (cost_ref, grad_ref) = reference(&c, &theta, &x);
        // The products are f32 (θ, the patches and the activations rounded to f32, 2⁻²⁴ ≈ 6e-8), so the cost and
        // gradient agree with the all-f64 reference to about that, not to f64 rounding.
        assert!(((cost - cost_ref) / cost_ref).abs() < 1e-7, "{cost} vs {cost_ref}");
        assert!(rel_err(&grad, &grad_ref) < 2e-7, "{:e}", rel_err(&grad, &grad_ref));
    }

    #[test]
    fn chunked_map_reduce_equals_sequential() {
        // More rows than one block, cut into uneven chunks, with the default shape.
        let c = SaeConfig::default();
        let theta = c.init(3).unwrap();
        let x = patches(700, 64, 9);
        let (cost, grad) = c.cost_grad(&theta, &x).unwrap();
        let data = Dataset::new(x, 64).unwrap().with_chunks(7).unwrap();
        let params = c.params(&theta).unwrap();
        let total = (0..7).map(|i| SaeJob.map(&params, &data.shard(i))).reduce(|a, b| SaeJob.reduce(a, b)).unwrap();
        assert_eq!(total.count, 700);
        let (cost_mr, grad_mr) = c.finish(&theta, &total).unwrap();
        assert!(((cost - cost_mr) / cost).abs() < 1e-12);
        // Chunks restart the f32 chains of the outer products (blocks are counted from a chunk's first patch), so
        // the gradient moves at the f32 level.
        assert!(rel_err(&grad, &grad_mr) < 2e-7, "{:e}", rel_err(&grad, &grad_mr));
        // And the same chunk twice gives the same bits.
        let again = SaeJob.map(&params, &data.shard(3));
        assert_eq!(again, SaeJob.map(&params, &data.shard(3)));
    }

    #[test]
    fn the_intrinsic_and_portable_kernels_give_the_same_bits() {
        // The default shape over several blocks with a short last one, and shapes whose rows are not whole vectors.
        for (v, h, rows) in [(64, 25, 2 * BLOCK_ROWS + 37), (16, 5, 23), (10, 3, 130), (7, 9, 5), (64, 25, 1)] {
            let c = SaeConfig { visible: v, hidden: h, ..SaeConfig::default() };
            let mut rng = Rng::new(v as u64 + 100 * h as u64);
            let theta: Vec<f64> = (0..c.n_params()).map(|_| rng.uniform() - 0.5).collect();
            let x = patches(rows, v, 8);
            let w = c.weights(&theta).unwrap();
            let fast = partial_sums_with(v, h, w, &x, Isa::detect()).unwrap();
            let portable = partial_sums_with(v, h, w, &x, Isa::Portable).unwrap();
            assert_eq!(fast.count, rows as u64);
            let bits = |p: &Partial| p.sums.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&portable), "{v}×{h}, {rows} rows");
            // And both are the two-pass reference's cost and gradient, to f32 rounding (see above).
            let (cost, grad) = c.finish(&theta, &fast).unwrap();
            let (cost_ref, grad_ref) = reference(&c, &theta, &x);
            // (One patch alone: no averaging of roundings over patches, the cost is off by up to about 6e-8.)
            assert!(((cost - cost_ref) / cost_ref).abs() < 2e-7, "{cost} vs {cost_ref}");
            assert!(rel_err(&grad, &grad_ref) < 2e-7, "{:e}", rel_err(&grad, &grad_ref));
        }
    }

    #[test]
    fn encode_gives_the_hidden_activations() {
        let (c, theta, x) = small();
        let features = c.encode(&theta, &x).unwrap();
        assert_eq!(features.len(), 23 * 5);
        let w = c.weights(&theta).unwrap();
        for (p, row) in x.chunks(16).zip(features.chunks(5)) {
            for (j, a) in row.iter().enumerate() {
                let z = w.b1[j] + (0..16).map(|k| w.w1[j * 16 + k] * p[k]).sum::<f64>();
                assert!((a - 1.0 / (1.0 + (-z).exp())).abs() < 1e-14);
            }
        }
        assert!(c.encode(&theta, &x[1..]).is_err());
    }

    #[test]
    fn init_follows_ufldl() {
        let c = SaeConfig::default();
        let theta = c.init(42).unwrap();
        assert_eq!(theta.len(), 2 * 64 * 25 + 25 + 64);
        let r = 6f64.sqrt() / 90f64.sqrt();
        let w = c.weights(&theta).unwrap();
        assert!(w.w1.iter().chain(w.w2).all(|x| x.abs() <= r));
        assert!(w.w1.iter().any(|x| x.abs() > 0.9 * r));
        assert!(w.b1.iter().chain(w.b2).all(|&x| x == 0.0));
        assert_eq!(theta, c.init(42).unwrap());
        assert_ne!(theta, c.init(43).unwrap());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let c = SaeConfig::default();
        let theta = c.init(1).unwrap();
        assert!(matches!(c.cost_grad(&theta[1..], &[0.5; 64]), Err(MlError::Length { .. })));
        assert!(matches!(c.cost_grad(&theta, &[0.5; 65]), Err(MlError::Length { .. })));
        assert!(matches!(c.cost_grad(&theta, &[]), Err(MlError::Empty(_))));
        assert!(SaeConfig { rho: 1.0, ..c }.init(1).is_err());
        assert!(SaeConfig { hidden: 0, ..c }.init(1).is_err());
        // A shard of the wrong width fails inside `map` and surfaces on the master.
        let data = Dataset::new(vec![0.5; 30], 10).unwrap();
        let partial = SaeJob.map(&c.params(&theta).unwrap(), &data.shard(0));
        let err = c.finish(&theta, &partial).unwrap_err();
        assert!(err.to_string().contains("expects rows of 64 values but the data has 10"), "{err}");
        // Params round-trip through the wire encoding.
        let p = c.params(&theta).unwrap();
        assert_eq!(SaeParams::from_bytes(&p.to_bytes()).unwrap(), p);
    }

    #[test]
    fn saturated_hidden_units_give_infinite_cost() {
        let c = SaeConfig { visible: 4, hidden: 2, ..SaeConfig::default() };
        let mut theta = c.init(1).unwrap();
        // b1 huge: every hidden unit is exactly 1, so ρ̂ = 1 and KL is infinite.
        let b1 = 2 * 4 * 2;
        theta[b1] = 1e6;
        theta[b1 + 1] = 1e6;
        let (cost, _) = c.cost_grad(&theta, &[0.5; 8]).unwrap();
        assert_eq!(cost, f64::INFINITY);
    }

    #[test]
    fn patches_are_normalised_like_ufldl() {
        let (rows, cols) = (12, 10);
        let mut rng = Rng::new(4);
        let images: Vec<f32> = (0..3 * rows * cols).map(|_| rng.uniform() as f32).collect();
        let p = sample_patches(&images, rows, cols, 50, 8, 1).unwrap();
        assert_eq!(p.len(), 50 * 64);
        assert!(p.iter().all(|&x| (0.1..=0.9).contains(&x)));
        // Each patch was centred before scaling, so its mean maps to 0.5 exactly unless truncation moved it.
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert_eq!(p, sample_patches(&images, rows, cols, 50, 8, 1).unwrap());
        // A patch is a real window of an image: check one by recomputing it without normalisation.
        let flat: Vec<f64> = vec![0.25; rows * cols];
        assert!(sample_patches(&flat, rows, cols, 3, 8, 1).unwrap().iter().all(|&x| x == 0.5));
        assert!(sample_patches(&images, rows, cols, 1, 11, 1).is_err());
        assert!(sample_patches(&images[1..], rows, cols, 1, 8, 1).is_err());
        assert!(sample_patches(&images, rows, cols, 0, 8, 1).is_err());
        let mut nan = images.clone();
        nan[7] = f32::NAN;
        assert!(sample_patches(&nan, rows, cols, 1, 8, 1).is_err());
    }
}
