//! Plain gradient descent with a fixed step: `x ← x − η ∇f(x)`, one evaluation per iteration.
//!
//! The baseline against which L-BFGS is measured, and the update rule of the synchronous data-parallel SGD family
//! when every round uses all the data. With a fixed step there is no way back from a point where the objective is
//! NaN or infinite, so that is an error ([`OptimError::NonFinite`]) naming the evaluation.

use std::ops::ControlFlow;

use super::{converged, Evaluator, IterRecord, Objective, OptimError, OptimResult, Progress, Stop, StopReason};
use crate::kernels::norm;

/// Gradient-descent settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientDescent {
    /// The step `η` (learning rate), > 0.
    pub step: f64,
    /// Stopping criteria.
    pub stop: Stop,
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
        self.stop.validate()?;
        if !(self.step > 0.0 && self.step.is_finite()) {
            return Err(OptimError::Options(format!("the step must be a finite value > 0, not {}", self.step)));
        }
        let mut eval = Evaluator::new(objective, x0.len());
        let mut progress = Progress::new(observer);
        let mut current = eval.start(x0)?;
        if let Some(stop) = progress.record(0, &current, eval.evaluations(), 0.0) {
            return Ok(progress.finish(current, 0, eval.evaluations(), stop));
        }
        if norm(&current.g) <= self.stop.grad_tol {
            return Ok(progress.finish(current, 0, eval.evaluations(), StopReason::GradientTolerance));
        }
        let mut iteration = 0;
        let stop = loop {
            if iteration >= self.stop.max_iterations {
                break StopReason::MaxIterations;
            }
            if eval.evaluations() >= self.stop.max_evaluations {
                break StopReason::MaxEvaluations;
            }
            let x: Vec<f64> = current.x.iter().zip(&current.g).map(|(x, g)| x - self.step * g).collect();
            let next = eval.eval(&x)?;
            if let Some(what) = next.finite() {
                return Err(OptimError::NonFinite {
                    what,
                    place: "a gradient-descent step (try a smaller step)",
                    evaluation: eval.evaluations(),
                });
            }
            iteration += 1;
            let step_len = self.step * norm(&current.g);
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
}
