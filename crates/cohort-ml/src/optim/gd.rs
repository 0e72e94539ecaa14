//! Plain gradient descent with a fixed step: `x ← x − η ∇f(x)`, one evaluation per iteration.
//!
//! The baseline against which L-BFGS is measured, and the update rule of the synchronous data-parallel SGD family
//! when every round uses all the data. With a fixed step there is no way back from a point where the objective is
//! NaN or infinite, so that is an error ([`OptimError::NonFinite`]) naming the evaluation. Like L-BFGS it runs one
//! iteration at a time ([`GradientDescent::start`], [`GradientDescent::step`]) on a serialisable [`GdState`].

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};

use super::{drive, Evaluator, IterRecord, Iterate, Objective, OptimError, OptimResult, Stop, StopReason};
use crate::kernels::norm;

/// Gradient-descent settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GradientDescent {
    /// The step `η` (learning rate), > 0.
    pub step: f64,
    /// Stopping criteria.
    pub stop: Stop,
}

/// A gradient-descent run between two iterations (serialisable, see [`super::LbfgsState`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GdState {
    /// The point, cost, gradient, counters and history.
    pub iterate: Iterate,
}

impl GdState {
    /// Why the run stopped, once it has.
    pub fn stopped(&self) -> Option<StopReason> {
        self.iterate.stop
    }

    /// The outcome so far.
    pub fn result(&self) -> OptimResult {
        self.iterate.result()
    }
}

impl GradientDescent {
    /// Gradient descent with step `step` and [`Stop::default`].
    pub fn new(step: f64) -> Self {
        GradientDescent { step, stop: Stop::default() }
    }

    /// Minimises `objective` from `x0`.
    pub fn minimize<O: Objective + ?Sized>(
        &self,
        objective: &mut O,
        x0: &[f64],
    ) -> Result<OptimResult, OptimError<O::Error>> {
        self.minimize_with(objective, x0, |_, _| ControlFlow::Continue(()))
    }

    /// Minimises `objective` from `x0`, calling `observer` after every iteration (see
    /// [`super::Lbfgs::minimize_with`]).
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
        drive(&mut state.iterate, |it| self.iterate(it, objective), observer)?;
        Ok(state.result())
    }

    fn check<E>(&self) -> Result<(), OptimError<E>> {
        self.stop.validate()?;
        if !(self.step > 0.0 && self.step.is_finite()) {
            return Err(OptimError::Options(format!("the step must be a finite value > 0, not {}", self.step)));
        }
        Ok(())
    }

    /// Evaluates the starting point `x0` and returns the state before the first iteration.
    pub fn start<O: Objective + ?Sized>(&self, objective: &mut O, x0: &[f64]) -> Result<GdState, OptimError<O::Error>> {
        self.check()?;
        let mut eval = Evaluator::new(objective, x0.len());
        let p = eval.start(x0)?;
        Ok(GdState { iterate: Iterate::start(p, eval.evaluations(), &self.stop) })
    }

    /// One iteration (one evaluation). The state changes only if it succeeds.
    pub fn step<O: Objective + ?Sized>(
        &self,
        state: &mut GdState,
        objective: &mut O,
    ) -> Result<Option<IterRecord>, OptimError<O::Error>> {
        if let Some(stop) = state.iterate.stop {
            return Err(OptimError::Options(format!("the run has already stopped ({stop}); start a new one")));
        }
        self.check()?;
        self.iterate(&mut state.iterate, objective)
    }

    fn iterate<O: Objective + ?Sized>(
        &self,
        it: &mut Iterate,
        objective: &mut O,
    ) -> Result<Option<IterRecord>, OptimError<O::Error>> {
        let mut eval = Evaluator::resume(objective, it.evaluations, it.point());
        let x: Vec<f64> = it.x.iter().zip(&it.gradient).map(|(x, g)| x - self.step * g).collect();
        let next = eval.eval(&x)?;
        if let Some(what) = next.finite() {
            return Err(OptimError::NonFinite {
                what,
                place: "a gradient-descent step (the loss diverged: try a smaller step)",
                evaluation: eval.evaluations(),
            });
        }
        let step_len = self.step * norm(&it.gradient);
        Ok(Some(it.accept(next, eval.evaluations(), step_len, &self.stop)))
    }
}
