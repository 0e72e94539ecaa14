//! Optimizers for objectives that are expensive, remote and fallible: L-BFGS with a Moré–Thuente line search,
//! and plain gradient descent.
//!
//! One evaluation of an [`Objective`] returns the cost *and* the gradient together, because in cohort one
//! evaluation is one distributed map-reduce round and the gradient comes for free with the cost. Evaluations are
//! cached by point, so the line search never pays twice for the same `x`; an error from `eval` (a lost worker, a
//! bad chunk) stops the optimizer and comes back as [`OptimError::Objective`], never as a panic. A NaN or infinite
//! cost at the starting point is an error; at a line-search trial point it means "too far" and the search steps
//! back.
//!
//! Stopping: [`Stop`] bounds iterations and evaluations and sets the gradient-norm and relative-cost-change
//! tolerances. The result carries the final point, cost and gradient, the counts, the [`StopReason`] and one
//! [`IterRecord`] per iteration (iteration 0 is the starting point). An observer closure sees every record as it
//! is made (for progress bars and JSON lines) and may stop the run by returning `ControlFlow::Break(())`.
//!
//! ```
//! use std::ops::ControlFlow;
//! use cohort_ml::optim::{FnObjective, Lbfgs, StopReason};
//!
//! // f(x) = Σ (i+1)(x_i − 1)², minimum 0 at x = 1.
//! let mut objective = FnObjective(|x: &[f64]| {
//!     let cost = x.iter().enumerate().map(|(i, v)| (i as f64 + 1.0) * (v - 1.0).powi(2)).sum();
//!     let grad = x.iter().enumerate().map(|(i, v)| 2.0 * (i as f64 + 1.0) * (v - 1.0)).collect();
//!     Ok::<_, std::convert::Infallible>((cost, grad))
//! });
//! let mut seen = 0;
//! let result = Lbfgs::default().minimize_with(&mut objective, &[0.0; 5], |_record, _x| {
//!     seen += 1;
//!     ControlFlow::Continue(())
//! })?;
//! assert_eq!(result.stop, StopReason::GradientTolerance);
//! assert!(result.x.iter().all(|v| (v - 1.0).abs() < 1e-6));
//! assert_eq!(seen, result.history.len());
//! # Ok::<(), cohort_ml::optim::OptimError<std::convert::Infallible>>(())
//! ```

mod gd;
mod lbfgs;
mod line_search;

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use gd::{GdState, GradientDescent};
pub use lbfgs::{Lbfgs, LbfgsState};
pub use line_search::LineSearch;

use crate::kernels::norm;

/// A differentiable function to minimise. One call evaluates the cost and its gradient at `x` (in cohort: one
/// map-reduce round) and may fail.
pub trait Objective {
    /// Why an evaluation can fail.
    type Error;

    /// Cost and gradient at `x`; the gradient must have `x.len()` values.
    fn eval(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>), Self::Error>;
}

/// An [`Objective`] from a closure `FnMut(&[f64]) -> Result<(f64, Vec<f64>), E>`.
pub struct FnObjective<F>(pub F);

impl<F, E> Objective for FnObjective<F>
where
    F: FnMut(&[f64]) -> Result<(f64, Vec<f64>), E>,
{
    type Error = E;

    fn eval(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>), E> {
        (self.0)(x)
    }
}

impl<O: Objective + ?Sized> Objective for &mut O {
    type Error = O::Error;

    fn eval(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>), O::Error> {
        (**self).eval(x)
    }
}

/// When to stop. The run stops at the first criterion met.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// Iterations (accepted steps) at most.
    pub max_iterations: usize,
    /// Objective evaluations at most (the starting point counts as one).
    pub max_evaluations: usize,
    /// Stop when the Euclidean norm of the gradient is at most this.
    pub grad_tol: f64,
    /// Stop when an iteration changes the cost by at most `cost_tol · max(|f_old|, |f_new|, 1)` (0 turns this test
    /// off).
    pub cost_tol: f64,
}

impl Default for Stop {
    /// 100 iterations, 1000 evaluations, gradient norm 1e-5, relative cost change 1e-10.
    fn default() -> Self {
        Stop { max_iterations: 100, max_evaluations: 1000, grad_tol: 1e-5, cost_tol: 1e-10 }
    }
}

impl Stop {
    /// The one stop policy of the training commands for an iteration budget: at most `iterations` iterations and
    /// `20 × iterations` evaluations, with the default tolerances.
    pub fn iterations(iterations: usize) -> Stop {
        Stop { max_iterations: iterations, max_evaluations: iterations.saturating_mul(20).max(20), ..Stop::default() }
    }

    pub(crate) fn validate<E>(&self) -> Result<(), OptimError<E>> {
        if !(self.grad_tol >= 0.0 && self.cost_tol >= 0.0) {
            return Err(OptimError::Options(format!(
                "tolerances must be ≥ 0 (grad_tol = {}, cost_tol = {})",
                self.grad_tol, self.cost_tol
            )));
        }
        if self.max_evaluations == 0 {
            return Err(OptimError::Options("max_evaluations must be ≥ 1".into()));
        }
        Ok(())
    }
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopReason {
    /// [`Stop::max_iterations`] reached.
    MaxIterations,
    /// [`Stop::max_evaluations`] reached.
    MaxEvaluations,
    /// Gradient norm at most [`Stop::grad_tol`].
    GradientTolerance,
    /// Relative cost change at most [`Stop::cost_tol`].
    CostTolerance,
    /// The line search found no lower cost along the steepest-descent direction (typically: converged to
    /// rounding level). The result holds the best point found.
    LineSearchFailed,
    /// The observer asked to stop.
    Observer,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::MaxIterations => "maximum number of iterations reached",
            StopReason::MaxEvaluations => "maximum number of evaluations reached",
            StopReason::GradientTolerance => "gradient norm below tolerance",
            StopReason::CostTolerance => "relative cost change below tolerance",
            StopReason::LineSearchFailed => "line search found no decrease",
            StopReason::Observer => "stopped by the observer",
        })
    }
}

/// The state after one iteration (iteration 0: the starting point).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IterRecord {
    /// Iteration number.
    pub iteration: usize,
    /// Cost at the accepted point.
    pub cost: f64,
    /// Euclidean norm of the gradient there.
    pub grad_norm: f64,
    /// Objective evaluations so far, including this iteration's.
    pub evaluations: usize,
    /// Length of the step taken, `‖x_new − x_old‖` (0 for iteration 0).
    pub step: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimResult {
    /// The final point.
    pub x: Vec<f64>,
    /// Cost at `x`.
    pub cost: f64,
    /// Gradient at `x`.
    pub gradient: Vec<f64>,
    /// Iterations performed.
    pub iterations: usize,
    /// Objective evaluations performed.
    pub evaluations: usize,
    /// Why the run stopped.
    pub stop: StopReason,
    /// One record per iteration, iteration 0 first.
    pub history: Vec<IterRecord>,
}

/// Why a run could not continue.
#[derive(Debug, thiserror::Error)]
pub enum OptimError<E> {
    /// The objective failed.
    #[error("objective evaluation {evaluation} failed: {source}")]
    Objective {
        /// Which evaluation (1-based).
        evaluation: usize,
        /// The objective's error.
        #[source]
        source: E,
    },
    /// The objective returned NaN or an infinity where it must not.
    #[error(
        "the objective returned a non-finite {what} at {place} (evaluation {evaluation}); \
         check the data and the starting point for NaN or overflow"
    )]
    NonFinite {
        /// "cost" or "gradient".
        what: &'static str,
        /// "the starting point", "every line-search trial point", ...
        place: &'static str,
        /// Which evaluation (1-based).
        evaluation: usize,
    },
    /// A gradient of the wrong length.
    #[error("the objective returned a gradient of {got} values for a point of {expected}")]
    GradientLength {
        /// Length of `x`.
        expected: usize,
        /// Length of the gradient.
        got: usize,
    },
    /// An empty starting point.
    #[error("the starting point is empty; give at least one parameter")]
    EmptyStart,
    /// Options out of range.
    #[error("invalid optimizer options: {0}")]
    Options(String),
}

/// Wraps an objective: counts evaluations, checks gradient lengths and keeps the last few points so that asking
/// again for one of them costs nothing.
pub(crate) struct Evaluator<'o, O: Objective + ?Sized> {
    objective: &'o mut O,
    dim: usize,
    evaluations: usize,
    cache: VecDeque<Point>,
}

/// An evaluated point.
#[derive(Debug, Clone)]
pub(crate) struct Point {
    pub x: Vec<f64>,
    pub f: f64,
    pub g: Vec<f64>,
}

impl Point {
    fn finite(&self) -> Option<&'static str> {
        if !self.f.is_finite() {
            Some("cost")
        } else if !self.g.iter().all(|v| v.is_finite()) {
            Some("gradient")
        } else {
            None
        }
    }
}

const CACHE_POINTS: usize = 4;

impl<'o, O: Objective + ?Sized> Evaluator<'o, O> {
    pub(crate) fn new(objective: &'o mut O, dim: usize) -> Self {
        Evaluator { objective, dim, evaluations: 0, cache: VecDeque::with_capacity(CACHE_POINTS) }
    }

    /// An evaluator continuing a run at an iteration boundary: `evaluations` done so far, and the current point
    /// known (so asking for it again costs nothing). The cache holds nothing else, so an iteration depends only on
    /// the optimizer's saved state, never on what an earlier iteration happened to leave in the cache.
    pub(crate) fn resume(objective: &'o mut O, evaluations: usize, current: Point) -> Self {
        let mut cache = VecDeque::with_capacity(CACHE_POINTS);
        let dim = current.x.len();
        cache.push_back(current);
        Evaluator { objective, dim, evaluations, cache }
    }

    pub(crate) fn evaluations(&self) -> usize {
        self.evaluations
    }

    /// Cost and gradient at `x`, from the cache when `x` was evaluated recently (bitwise the same point).
    pub(crate) fn eval(&mut self, x: &[f64]) -> Result<Point, OptimError<O::Error>> {
        let same = |p: &Point| p.x.len() == x.len() && p.x.iter().zip(x).all(|(a, b)| a.to_bits() == b.to_bits());
        if let Some(p) = self.cache.iter().find(|p| same(p)) {
            return Ok(p.clone());
        }
        self.evaluations += 1;
        let evaluation = self.evaluations;
        let (f, g) = self.objective.eval(x).map_err(|source| OptimError::Objective { evaluation, source })?;
        if g.len() != self.dim {
            return Err(OptimError::GradientLength { expected: self.dim, got: g.len() });
        }
        let point = Point { x: x.to_vec(), f, g };
        if self.cache.len() == CACHE_POINTS {
            self.cache.pop_front();
        }
        self.cache.push_back(point.clone());
        Ok(point)
    }

    /// Evaluates the starting point, which must be finite.
    pub(crate) fn start(&mut self, x0: &[f64]) -> Result<Point, OptimError<O::Error>> {
        if x0.is_empty() {
            return Err(OptimError::EmptyStart);
        }
        if x0.iter().any(|v| !v.is_finite()) {
            return Err(OptimError::Options("the starting point contains NaN or an infinity".into()));
        }
        let p = self.eval(x0)?;
        if let Some(what) = p.finite() {
            return Err(OptimError::NonFinite { what, place: "the starting point", evaluation: self.evaluations });
        }
        Ok(p)
    }
}

/// The convergence tests shared by the optimizers, after an accepted step from `f_old` to `new`.
pub(crate) fn converged(stop: &Stop, f_old: f64, new: &Point) -> Option<StopReason> {
    if norm(&new.g) <= stop.grad_tol {
        return Some(StopReason::GradientTolerance);
    }
    if stop.cost_tol > 0.0 && (f_old - new.f).abs() <= stop.cost_tol * f_old.abs().max(new.f.abs()).max(1.0) {
        return Some(StopReason::CostTolerance);
    }
    None
}

/// The budget tests made before every iteration: whether another one may start.
pub(crate) fn budget_left(stop: &Stop, iteration: usize, evaluations: usize) -> Option<StopReason> {
    if iteration >= stop.max_iterations {
        Some(StopReason::MaxIterations)
    } else if evaluations >= stop.max_evaluations {
        Some(StopReason::MaxEvaluations)
    } else {
        None
    }
}

/// The iterate an optimizer state is at, with the bookkeeping every optimizer keeps: serialisable, so a run can
/// be checkpointed between iterations and continued bit-identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iterate {
    /// The current point.
    pub x: Vec<f64>,
    /// Cost at `x`.
    pub cost: f64,
    /// Gradient at `x`.
    pub gradient: Vec<f64>,
    /// Iterations done.
    pub iteration: usize,
    /// Objective evaluations done.
    pub evaluations: usize,
    /// One record per iteration, iteration 0 (the starting point) first.
    pub history: Vec<IterRecord>,
    /// Why the run stopped, once it has.
    pub stop: Option<StopReason>,
}

impl Iterate {
    /// The iterate at the evaluated starting point: iteration 0 recorded, stopped at once if the gradient is
    /// already below tolerance or no iteration is allowed.
    pub(crate) fn start(p: Point, evaluations: usize, stop: &Stop) -> Iterate {
        let record = IterRecord { iteration: 0, cost: p.f, grad_norm: norm(&p.g), evaluations, step: 0.0 };
        let mut it =
            Iterate { x: p.x, cost: p.f, gradient: p.g, iteration: 0, evaluations, history: vec![record], stop: None };
        it.stop = if record.grad_norm <= stop.grad_tol {
            Some(StopReason::GradientTolerance)
        } else {
            budget_left(stop, 0, evaluations)
        };
        it
    }

    /// The current point as the evaluator caches it.
    pub(crate) fn point(&self) -> Point {
        Point { x: self.x.clone(), f: self.cost, g: self.gradient.clone() }
    }

    /// Accepts `next` as iteration `iteration + 1`, records it and decides whether the run stops there.
    pub(crate) fn accept(&mut self, next: Point, evaluations: usize, step_len: f64, stop: &Stop) -> IterRecord {
        let f_old = self.cost;
        self.iteration += 1;
        self.evaluations = evaluations;
        let record = IterRecord {
            iteration: self.iteration,
            cost: next.f,
            grad_norm: norm(&next.g),
            evaluations,
            step: step_len,
        };
        self.history.push(record);
        self.stop = converged(stop, f_old, &next).or_else(|| budget_left(stop, self.iteration, evaluations));
        self.x = next.x;
        self.cost = next.f;
        self.gradient = next.g;
        record
    }

    /// The last record.
    pub fn last(&self) -> IterRecord {
        *self.history.last().expect("iteration 0 is always recorded")
    }

    /// The outcome so far (`stop` is [`StopReason::MaxIterations`] if the run has not stopped yet).
    pub fn result(&self) -> OptimResult {
        OptimResult {
            x: self.x.clone(),
            cost: self.cost,
            gradient: self.gradient.clone(),
            iterations: self.iteration,
            evaluations: self.evaluations,
            stop: self.stop.unwrap_or(StopReason::MaxIterations),
            history: self.history.clone(),
        }
    }
}

/// Runs `step` until the state stops, calling `observer` with every record (iteration 0 first); the observer may
/// stop the run with `ControlFlow::Break(())`.
pub(crate) fn drive<E>(
    it: &mut Iterate,
    mut step: impl FnMut(&mut Iterate) -> Result<Option<IterRecord>, OptimError<E>>,
    mut observer: impl FnMut(&IterRecord, &[f64]) -> std::ops::ControlFlow<()>,
) -> Result<(), OptimError<E>> {
    if observer(&it.last(), &it.x).is_break() {
        it.stop = Some(StopReason::Observer);
    }
    while it.stop.is_none() {
        if let Some(record) = step(it)? {
            if observer(&record, &it.x).is_break() {
                it.stop = Some(StopReason::Observer);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
