//! Limited-memory BFGS (Nocedal's two-loop recursion) with the Moré–Thuente line search.
//!
//! Each iteration computes a quasi-Newton direction from the last `memory` pairs `(s, y)` of steps and gradient
//! changes, scaled by `γ = sᵀy / yᵀy` of the newest pair, and searches along it for a strong-Wolfe step (first
//! trial step 1; `min(1, 1/‖g‖)` when the memory is empty, so that the first step has at most unit length). A pair
//! is kept only if `sᵀy > ε‖s‖‖y‖`, which keeps the implicit Hessian positive definite. If the direction is not a
//! descent direction, or the line search finds no decrease, the memory is dropped and the iteration retried along
//! the steepest descent; if that fails too the run stops with [`StopReason::LineSearchFailed`] at the best point.
//!
//! [`Lbfgs::start`] and [`Lbfgs::step`] run it one iteration at a time on an [`LbfgsState`] (the iterate, the
//! curvature pairs and the counters), which is serialisable: a run saved between two iterations and continued later
//! — in another process — takes exactly the steps the uninterrupted run takes. Checkpoints are taken only at
//! iteration boundaries, so the line search's progress is never saved: an iteration interrupted half-way is
//! simply done again from its start, and since the search is a deterministic function of the state it tries the
//! same points, at the price of the one or two rounds it had done.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::line_search::{self, Found, LineSearch};
use super::{drive, Evaluator, IterRecord, Iterate, Objective, OptimError, OptimResult, Point, Stop, StopReason};
use crate::kernels::{dot, norm};

/// L-BFGS settings. `Default`: memory 10, [`Stop::default`], [`LineSearch::default`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
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

/// A run of L-BFGS between two iterations: the iterate, the curvature memory and the counters. Everything the
/// next iteration depends on is here, so it can be saved (serde) and the run continued bit-identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LbfgsState {
    /// The point, cost, gradient, counters and history.
    pub iterate: Iterate,
    /// The curvature pairs, oldest first.
    pairs: VecDeque<Pair>,
}

impl LbfgsState {
    /// Number of curvature pairs held.
    pub fn memory_len(&self) -> usize {
        self.pairs.len()
    }

    /// Why the run stopped, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.iterate.stop
    }

    /// The outcome so far.
    pub fn result(&self) -> OptimResult {
        self.iterate.result()
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
        let mut state = self.start(objective, x0)?;
        let LbfgsState { iterate, pairs } = &mut state;
        drive(iterate, |it| self.iterate(it, pairs, objective), observer)?;
        Ok(state.result())
    }

    /// Evaluates the starting point `x0` (one evaluation) and returns the state before the first iteration
    /// (stopped at once if `x0` is already optimal).
    pub fn start<O: Objective + ?Sized>(
        &self,
        objective: &mut O,
        x0: &[f64],
    ) -> Result<LbfgsState, OptimError<O::Error>> {
        self.stop.validate()?;
        self.line_search.check().map_err(OptimError::Options)?;
        let mut eval = Evaluator::new(objective, x0.len());
        let p = eval.start(x0)?;
        Ok(LbfgsState { iterate: Iterate::start(p, eval.evaluations(), &self.stop), pairs: VecDeque::new() })
    }

    /// One iteration: a direction, a line search along it, and the curvature pair of the step. Returns the new
    /// record, or `None` if no step could be taken (the state then says why it stopped). The state changes only
    /// when the iteration completes, so after an error it is still the state before this iteration.
    pub fn step<O: Objective + ?Sized>(
        &self,
        state: &mut LbfgsState,
        objective: &mut O,
    ) -> Result<Option<IterRecord>, OptimError<O::Error>> {
        if let Some(stop) = state.iterate.stop {
            return Err(OptimError::Options(format!("the run has already stopped ({stop}); start a new one")));
        }
        self.stop.validate()?;
        self.line_search.check().map_err(OptimError::Options)?;
        if state.iterate.x.len() != state.iterate.gradient.len()
            || state.pairs.iter().any(|p| p.s.len() != state.iterate.x.len() || p.y.len() != state.iterate.x.len())
        {
            return Err(OptimError::Options(
                "the saved L-BFGS state is inconsistent (vectors of different lengths)".into(),
            ));
        }
        let LbfgsState { iterate, pairs } = state;
        self.iterate(iterate, pairs, objective)
    }

    fn iterate<O: Objective + ?Sized>(
        &self,
        it: &mut Iterate,
        pairs: &mut VecDeque<Pair>,
        objective: &mut O,
    ) -> Result<Option<IterRecord>, OptimError<O::Error>> {
        let current = it.point();
        let mut eval = Evaluator::resume(objective, it.evaluations, current.clone());
        let Some((next, step_len, keep_pairs)) = self.search(&mut eval, &current, pairs)? else {
            it.evaluations = eval.evaluations();
            it.stop = Some(if eval.evaluations() >= self.stop.max_evaluations {
                StopReason::MaxEvaluations
            } else {
                StopReason::LineSearchFailed
            });
            return Ok(None);
        };
        if !keep_pairs {
            pairs.clear();
        }
        // Remember the curvature pair (s, y) if it keeps the Hessian approximation positive definite.
        let s: Vec<f64> = next.x.iter().zip(&current.x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = next.g.iter().zip(&current.g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if self.memory > 0 && sy > f64::EPSILON * norm(&s) * norm(&y) {
            while pairs.len() >= self.memory {
                pairs.pop_front();
            }
            pairs.push_back(Pair { rho: 1.0 / sy, s, y });
        }
        Ok(Some(it.accept(next, eval.evaluations(), step_len, &self.stop)))
    }

    /// Direction, line search, and the retry along the steepest descent (`false` in the result: the memory must
    /// be dropped). `None` if no decrease could be found (or the evaluation budget ran out first). Does not change
    /// `pairs`.
    fn search<O: Objective + ?Sized>(
        &self,
        eval: &mut Evaluator<'_, O>,
        current: &Point,
        pairs: &VecDeque<Pair>,
    ) -> Result<Option<Accepted>, OptimError<O::Error>> {
        let empty = VecDeque::new();
        let mut memory = pairs;
        loop {
            let mut d = direction(&current.g, memory);
            let mut slope = dot(&current.g, &d);
            if !(slope.is_finite() && slope < 0.0) {
                // Not a descent direction (rounding, or a pair that went stale): start over from the gradient.
                memory = &empty;
                d = current.g.iter().map(|v| -v).collect();
                slope = -dot(&current.g, &current.g);
            }
            let step0 = if memory.is_empty() { (1.0 / norm(&current.g)).min(1.0) } else { 1.0 };
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
                    if memory.is_empty() || eval.evaluations() >= self.stop.max_evaluations {
                        return Ok(None);
                    }
                    memory = &empty;
                    continue;
                }
            };
            let Some(index) = trials.iter().rposition(|(s, _)| *s == step) else {
                return Ok(None);
            };
            let point = trials.swap_remove(index).1;
            let len = step * norm(&d);
            return Ok(Some((point, len, !memory.is_empty() || pairs.is_empty())));
        }
    }
}

/// A point the line search accepted, the step's length, and whether the memory survives.
type Accepted = (Point, f64, bool);

/// One curvature pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
