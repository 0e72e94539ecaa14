//! Limited-memory BFGS (Nocedal's two-loop recursion) with the Moré–Thuente line search.
//!
//! Each iteration computes a quasi-Newton direction from the last `memory` pairs `(s, y)` of steps and gradient
//! changes, scaled by `γ = sᵀy / yᵀy` of the newest pair, and searches along it for a strong-Wolfe step (first
//! trial step 1; `min(1, 1/‖g‖)` when the memory is empty, so that the first step has at most unit length). A pair
//! is kept only if `sᵀy > ε‖s‖‖y‖`, which keeps the implicit Hessian positive definite. If the direction is not a
//! descent direction, or the line search finds no decrease, the memory is dropped and the iteration retried along
//! the steepest descent; if that fails too the run stops with [`StopReason::LineSearchFailed`] at the best point.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use super::line_search::{self, Found, LineSearch};
use super::{converged, Evaluator, IterRecord, Objective, OptimError, OptimResult, Point, Progress, Stop, StopReason};
use crate::kernels::{dot, norm};

/// L-BFGS settings. `Default`: memory 10, [`Stop::default`], [`LineSearch::default`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lbfgs {
    /// Number of `(s, y)` pairs kept; 0 gives steepest descent with the line search.
    pub memory: usize,
    /// Stopping criteria.
    pub stop: Stop,
    /// Line-search parameters.
    pub line_search: LineSearch,
}

impl Default for Lbfgs {
    fn default() -> Self {
        Lbfgs { memory: 10, stop: Stop::default(), line_search: LineSearch::default() }
    }
}

impl Lbfgs {
    /// L-BFGS with the given stopping criteria and default memory and line search.
    pub fn new(stop: Stop) -> Self {
        Lbfgs { stop, ..Self::default() }
    }

    /// Minimises `objective` from `x0`.
    pub fn minimize<O: Objective + ?Sized>(
        &self,
        objective: &mut O,
        x0: &[f64],
    ) -> Result<OptimResult, OptimError<O::Error>> {
        self.minimize_with(objective, x0, |_, _| ControlFlow::Continue(()))
    }

    /// Minimises `objective` from `x0`, calling `observer` with every [`IterRecord`] and the current point;
    /// returning `ControlFlow::Break(())` stops the run with [`StopReason::Observer`].
    pub fn minimize_with<O, F>(
        &self,
        objective: &mut O,
        x0: &[f64],
        observer: F,
    ) -> Result<OptimResult, OptimError<O::Error>>
    where
        O: Objective + ?Sized,
        F: FnMut(&IterRecord, &[f64]) -> ControlFlow<()>,
    {
        self.stop.validate()?;
        self.line_search.check().map_err(OptimError::Options)?;
        let memory = self.memory;
        let n = x0.len();
        let mut eval = Evaluator::new(objective, n);
        let mut progress = Progress::new(observer);
        let mut current = eval.start(x0)?;
        if let Some(stop) = progress.record(0, &current, eval.evaluations(), 0.0) {
            return Ok(progress.finish(current, 0, eval.evaluations(), stop));
        }
        if norm(&current.g) <= self.stop.grad_tol {
            return Ok(progress.finish(current, 0, eval.evaluations(), StopReason::GradientTolerance));
        }

        let mut pairs: VecDeque<Pair> = VecDeque::with_capacity(memory);
        let mut iteration = 0;
        let stop = loop {
            if iteration >= self.stop.max_iterations {
                break StopReason::MaxIterations;
            }
            if eval.evaluations() >= self.stop.max_evaluations {
                break StopReason::MaxEvaluations;
            }
            let Some((next, step_len)) = self.step(&mut eval, &current, &mut pairs)? else {
                break if eval.evaluations() >= self.stop.max_evaluations {
                    StopReason::MaxEvaluations
                } else {
                    StopReason::LineSearchFailed
                };
            };
            iteration += 1;
            // Remember the curvature pair (s, y) if it keeps the Hessian approximation positive definite.
            let s: Vec<f64> = next.x.iter().zip(&current.x).map(|(a, b)| a - b).collect();
            let y: Vec<f64> = next.g.iter().zip(&current.g).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &y);
            if memory > 0 && sy > f64::EPSILON * norm(&s) * norm(&y) {
                if pairs.len() == memory {
                    pairs.pop_front();
                }
                pairs.push_back(Pair { rho: 1.0 / sy, s, y });
            }
            let f_old = current.f;
            current = next;
            if let Some(stop) = progress.record(iteration, &current, eval.evaluations(), step_len) {
                break stop;
            }
            if let Some(stop) = converged(&self.stop, f_old, &current) {
                break stop;
            }
        };
        Ok(progress.finish(current, iteration, eval.evaluations(), stop))
    }

    /// One iteration: direction, line search, and the retry along the steepest descent. `None` if no decrease
    /// could be found (or the evaluation budget ran out first).
    fn step<O: Objective + ?Sized>(
        &self,
        eval: &mut Evaluator<'_, O>,
        current: &Point,
        pairs: &mut VecDeque<Pair>,
    ) -> Result<Option<(Point, f64)>, OptimError<O::Error>> {
        loop {
            let mut d = direction(&current.g, pairs);
            let mut slope = dot(&current.g, &d);
            if !(slope.is_finite() && slope < 0.0) {
                // Not a descent direction (rounding, or a pair that went stale): start over from the gradient.
                pairs.clear();
                d = current.g.iter().map(|v| -v).collect();
                slope = -dot(&current.g, &current.g);
            }
            let step0 = if pairs.is_empty() { (1.0 / norm(&current.g)).min(1.0) } else { 1.0 };
            let budget = self.stop.max_evaluations.saturating_sub(eval.evaluations());
            let mut trials: Vec<(f64, Point)> = Vec::new();
            let found = line_search::search(&self.line_search, current.f, slope, step0, budget, |step| {
                let x: Vec<f64> = current.x.iter().zip(&d).map(|(x, d)| x + step * d).collect();
                let p = eval.eval(&x)?;
                let trial = if p.finite().is_none() { Some((p.f, dot(&p.g, &d))) } else { None };
                trials.push((step, p));
                Ok(trial)
            })?;
            let step = match found {
                Found::Wolfe(step) | Found::Decrease(step) => step,
                Found::Nothing { all_non_finite } => {
                    if all_non_finite && !trials.is_empty() {
                        let what = trials.last().and_then(|(_, p)| p.finite()).unwrap_or("cost");
                        return Err(OptimError::NonFinite {
                            what,
                            place: "every line-search trial point",
                            evaluation: eval.evaluations(),
                        });
                    }
                    if pairs.is_empty() || eval.evaluations() >= self.stop.max_evaluations {
                        return Ok(None);
                    }
                    pairs.clear();
                    continue;
                }
            };
            let Some(index) = trials.iter().rposition(|(s, _)| *s == step) else {
                return Ok(None);
            };
            let point = trials.swap_remove(index).1;
            let len = step * norm(&d);
            return Ok(Some((point, len)));
        }
    }
}

/// One curvature pair.
struct Pair {
    s: Vec<f64>,
    y: Vec<f64>,
    rho: f64,
}

/// The two-loop recursion: `−H·g` for the L-BFGS inverse-Hessian approximation `H` (steepest descent when there
/// are no pairs).
fn direction(g: &[f64], pairs: &VecDeque<Pair>) -> Vec<f64> {
    let mut q = g.to_vec();
    let mut alpha = vec![0.0; pairs.len()];
    for (i, p) in pairs.iter().enumerate().rev() {
        alpha[i] = p.rho * dot(&p.s, &q);
        for (q, y) in q.iter_mut().zip(&p.y) {
            *q -= alpha[i] * y;
        }
    }
    if let Some(last) = pairs.back() {
        let gamma = 1.0 / (last.rho * dot(&last.y, &last.y));
        q.iter_mut().for_each(|v| *v *= gamma);
    }
    for (i, p) in pairs.iter().enumerate() {
        let beta = p.rho * dot(&p.y, &q);
        for (q, s) in q.iter_mut().zip(&p.s) {
            *q += (alpha[i] - beta) * s;
        }
    }
    q.iter_mut().for_each(|v| *v = -*v);
    q
}
