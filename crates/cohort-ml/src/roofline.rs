//! The machine's limits, measured: how fast one core (and all cores) can multiply matrices in `f32` and `f64`, and
//! how fast memory can be streamed. `cohort bench roofline` sets every model's map against these figures, so that
//! "how far from the limit" is a number anyone can rerun.
//!
//! Each probe repeats its work for a time budget and keeps the **fastest** repetition: on a shared machine other
//! work can only make a run slower, so the minimum is the estimate of what the hardware does. All cores run the
//! same single-threaded work at once (one thread each, as one worker process per core does) and the rate is their
//! total over the slowest thread's time.
//!
//! The GEMMs go through [`crate::kernels`] (faer, one thread): what the library the maps use reaches on square
//! products (the size that reaches it is reported too). [`fma_peak`] measures the processor's own limit, fused
//! multiply-adds from registers with no memory traffic; a well-blocked kernel can beat faer's square-GEMM rate on a
//! favourable shape, never the FMA rate.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::kernels::{matmul, matmul_f32, multiversion, view, view_mut, Accum};

/// Element type of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Single precision.
    F32,
    /// Double precision.
    F64,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
        })
    }
}

/// The best rate a GEMM probe reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmPeak {
    /// Element type.
    pub precision: Precision,
    /// Threads that multiplied at once (one product each).
    pub threads: usize,
    /// Side of the square product that reached the rate.
    pub size: usize,
    /// Floating-point operations per second, summed over the threads (a multiply-add counts two).
    pub flops: f64,
}

/// The best rate a memory probe reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Threads that read at once (each its own buffer).
    pub threads: usize,
    /// Bytes each thread's buffer holds (well beyond the last-level cache).
    pub bytes_per_thread: usize,
    /// Bytes read per second, summed over the threads.
    pub bytes_per_second: f64,
}

/// Runs `work` on `threads` threads at once, `reps` times in lock step, and returns the fastest wall time of one
/// repetition (start of the earliest thread to end of the latest). `work(thread)` is called once per repetition.
fn fastest_parallel<S: Send>(
    threads: usize,
    budget: Duration,
    min_reps: usize,
    states: Vec<S>,
    work: impl Fn(&mut S) + Sync,
) -> Duration {
    let threads = threads.max(1);
    assert_eq!(states.len(), threads, "one state per thread");
    let started = Instant::now();
    let barrier = Barrier::new(threads);
    let mut best = Duration::MAX;
    // Repetitions are decided by thread 0 and shared through the barrier: every thread runs the same count.
    let go = std::sync::atomic::AtomicBool::new(true);
    let times: Vec<Vec<(Instant, Instant)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(t, mut state)| {
                let (barrier, go, work) = (&barrier, &go, &work);
                scope.spawn(move || {
                    let mut spans = Vec::new();
                    let mut rep = 0;
                    loop {
                        barrier.wait();
                        if !go.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                        let t0 = Instant::now();
                        work(&mut state);
                        spans.push((t0, Instant::now()));
                        rep += 1;
                        barrier.wait();
                        if t == 0 && rep >= min_reps && started.elapsed() >= budget {
                            go.store(false, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    spans
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread panicked")).collect()
    });
    let reps = times.iter().map(Vec::len).min().unwrap_or(0);
    for r in 0..reps {
        let start = times.iter().map(|t| t[r].0).min().expect("at least one thread");
        let end = times.iter().map(|t| t[r].1).max().expect("at least one thread");
        best = best.min(end - start);
    }
    best
}

/// Square matrices of one precision for a probe thread.
enum Operands {
    F32(Vec<f32>, Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>, Vec<f64>),
}

impl Operands {
    fn new(precision: Precision, n: usize) -> Operands {
        // Values in [-1, 1] that neither overflow nor turn denormal over repeated accumulation-free products.
        let fill = |i: usize| ((i * 7919) % 2001) as f64 / 1000.0 - 1.0;
        match precision {
            Precision::F32 => Operands::F32(
                (0..n * n).map(|i| fill(i) as f32).collect(),
                (0..n * n).map(|i| fill(i + 1) as f32).collect(),
                vec![0.0; n * n],
            ),
            Precision::F64 => Operands::F64(
                (0..n * n).map(fill).collect(),
                (0..n * n).map(|i| fill(i + 1)).collect(),
                vec![0.0; n * n],
            ),
        }
    }

    fn multiply(&mut self, n: usize) -> Result<()> {
        match self {
            Operands::F32(a, b, c) => {
                matmul_f32(view_mut(c, n, n)?, Accum::Replace, view(a, n, n)?, view(b, n, n)?, 1.0)?;
                black_box(&c[0]);
            }
            Operands::F64(a, b, c) => {
                matmul(view_mut(c, n, n)?, Accum::Replace, view(a, n, n)?, view(b, n, n)?)?;
                black_box(&c[0]);
            }
        }
        Ok(())
    }
}

/// The fastest rate of an `n×n` by `n×n` product, `threads` products at once, over `budget`.
pub fn gemm_rate(precision: Precision, n: usize, threads: usize, budget: Duration) -> Result<GemmPeak> {
    let threads = threads.max(1);
    // Check the shapes once, outside the timed loop.
    Operands::new(precision, n.min(2)).multiply(n.min(2))?;
    let states: Vec<Operands> = (0..threads).map(|_| Operands::new(precision, n)).collect();
    let best = fastest_parallel(threads, budget, 2, states, |ops| {
        ops.multiply(n).expect("shapes checked above");
    });
    let flops = 2.0 * (n as f64).powi(3) * threads as f64 / best.as_secs_f64();
    Ok(GemmPeak { precision, threads, size: n, flops })
}

/// The best [`gemm_rate`] over a few square sizes (each probed for `budget`).
pub fn gemm_peak(precision: Precision, sizes: &[usize], threads: usize, budget: Duration) -> Result<GemmPeak> {
    let mut best: Option<GemmPeak> = None;
    for &n in sizes {
        let rate = gemm_rate(precision, n, threads, budget)?;
        if best.is_none_or(|b| rate.flops > b.flops) {
            best = Some(rate);
        }
    }
    best.ok_or(crate::MlError::Empty("gemm_peak: no sizes"))
}

/// The rate of fused multiply-adds from registers alone — ten independent 256-bit accumulators, no memory traffic
/// — on `threads` threads at once: the processor's arithmetic limit, which no kernel can beat. `None` where the
/// CPU has no AVX2 and FMA (the probe is written for them).
pub fn fma_peak(precision: Precision, threads: usize, budget: Duration) -> Option<GemmPeak> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return None;
        }
        const STEPS: usize = 1 << 16;
        let threads = threads.max(1);
        let best = fastest_parallel(threads, budget, 2, vec![(); threads], |_| {
            // SAFETY: AVX2 and FMA were detected above.
            black_box(unsafe { fma_loop(precision, STEPS) });
        });
        // Ten accumulators of four f64 or eight f32 lanes, two operations per lane per step.
        let lanes = if precision == Precision::F64 { 4.0 } else { 8.0 };
        let flops = 2.0 * 10.0 * lanes * STEPS as f64 * threads as f64 / best.as_secs_f64();
        Some(GemmPeak { precision, threads, size: 0, flops })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (precision, threads, budget);
        None
    }
}

/// `steps` rounds of ten independent fused multiply-adds on 256-bit registers; returns a value that depends on all
/// of them.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop(precision: Precision, steps: usize) -> f64 {
    use std::arch::x86_64::*;
    match precision {
        Precision::F64 => {
            let (m, a) = (_mm256_set1_pd(0.999_999), _mm256_set1_pd(1e-9));
            let mut acc = [_mm256_set1_pd(1.0); 10];
            for _ in 0..steps {
                for v in &mut acc {
                    *v = _mm256_fmadd_pd(*v, m, a);
                }
            }
            let mut out = [0.0f64; 4];
            let sum = acc.iter().fold(_mm256_setzero_pd(), |s, v| _mm256_add_pd(s, *v));
            // SAFETY: four f64 are 32 writable bytes.
            unsafe { _mm256_storeu_pd(out.as_mut_ptr(), sum) };
            out.iter().sum()
        }
        Precision::F32 => {
            let (m, a) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-6));
            let mut acc = [_mm256_set1_ps(1.0); 10];
            for _ in 0..steps {
                for v in &mut acc {
                    *v = _mm256_fmadd_ps(*v, m, a);
                }
            }
            let mut out = [0.0f32; 8];
            let sum = acc.iter().fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
            // SAFETY: eight f32 are 32 writable bytes.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
            out.iter().map(|&v| f64::from(v)).sum()
        }
    }
}

multiversion! {
    /// Sums a buffer with eight independent accumulators (one load stream, vectorised).
    fn stream_sum(values: &[f64]) -> f64 {
        let mut acc = [0.0f64; 8];
        let mut chunks = values.chunks_exact(8);
        for c in &mut chunks {
            for k in 0..8 {
                acc[k] += c[k];
            }
        }
        for (k, v) in chunks.remainder().iter().enumerate() {
            acc[k] += v;
        }
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
    }
}

/// Read bandwidth from memory: `threads` threads each summing its own buffer of `bytes_per_thread` bytes (choose
/// several times the last-level cache), fastest repetition over `budget`.
pub fn memory_bandwidth(threads: usize, bytes_per_thread: usize, budget: Duration) -> Bandwidth {
    let threads = threads.max(1);
    let len = (bytes_per_thread / 8).max(8);
    // Touch every page up front (a fresh allocation is mapped lazily) so the probe measures reads only.
    let states: Vec<Vec<f64>> = (0..threads).map(|t| (0..len).map(|i| (i + t) as f64 * 1e-9).collect()).collect();
    let best = fastest_parallel(threads, budget, 2, states, |buf| {
        black_box(stream_sum(buf));
    });
    Bandwidth { threads, bytes_per_thread: len * 8, bytes_per_second: (len * 8 * threads) as f64 / best.as_secs_f64() }
}

/// The fastest of repeated runs of `work` on this thread over `budget` (at least `min_reps` runs).
pub fn fastest(budget: Duration, min_reps: usize, mut work: impl FnMut()) -> Duration {
    let started = Instant::now();
    let mut best = Duration::MAX;
    let mut reps = 0;
    while reps < min_reps.max(1) || started.elapsed() < budget {
        let t = Instant::now();
        work();
        best = best.min(t.elapsed());
        reps += 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_report_positive_rates() {
        let budget = Duration::from_millis(5);
        for p in [Precision::F32, Precision::F64] {
            let g = gemm_peak(p, &[16, 32], 2, budget).unwrap();
            assert!(g.flops.is_finite() && g.flops > 0.0, "{g:?}");
            assert!(g.size == 16 || g.size == 32);
            assert_eq!(g.threads, 2);
        }
        if let Some(f) = fma_peak(Precision::F64, 1, budget) {
            assert!(f.flops > 0.0 && f.flops.is_finite(), "{f:?}");
        }
        let b = memory_bandwidth(1, 1 << 16, budget);
        assert!(b.bytes_per_second > 0.0 && b.bytes_per_thread == 1 << 16, "{b:?}");
        assert!(fastest(Duration::ZERO, 3, || {}) < Duration::from_secs(1));
    }

    #[test]
    fn stream_sum_adds_everything() {
        let v: Vec<f64> = (0..1003).map(f64::from).collect();
        assert_eq!(stream_sum(&v), 1002.0 * 1003.0 / 2.0);
    }
}
