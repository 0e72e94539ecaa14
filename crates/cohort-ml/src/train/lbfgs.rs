//! The full-batch steppers: L-BFGS ([`LbfgsTrainer`]) and gradient descent ([`GdTrainer`]) over a [`RoundModel`],
//! one iteration per step. The stop policy is the optimizer's [`Stop`], with [`Stop::iterations`] as the one
//! default for a given iteration budget.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cohort::{Cluster, DatasetHandle, MapReduce};

use super::{ClusterObjective, Result, RoundModel, StepRecord, Stepper, TrainError};
use crate::optim::{
    budget_left, GdState, GradientDescent, IterRecord, Lbfgs, LbfgsState, OptimResult, Stop, StopReason,
};

/// Distributed L-BFGS on a [`RoundModel`]: one iteration per step.
pub struct LbfgsTrainer<M: RoundModel> {
    /// The model (shape and hyper-parameters).
    pub model: M,
    /// The optimizer's settings.
    pub lbfgs: Lbfgs,
    x0: Vec<f64>,
    state: Option<LbfgsState>,
    /// Time spent in evaluations by this process.
    pub evaluating: Duration,
    /// Evaluations made by this process.
    pub evaluations_here: usize,
}

impl<M: RoundModel> LbfgsTrainer<M> {
    /// L-BFGS on `model` from `x0` with the default settings and [`Stop::iterations`]`(iterations)`.
    pub fn from(model: M, x0: Vec<f64>, iterations: usize) -> Self {
        LbfgsTrainer::with(model, x0, Lbfgs::new(Stop::iterations(iterations)))
    }

    /// L-BFGS on `model` from `x0` with the given settings.
    pub fn with(model: M, x0: Vec<f64>, lbfgs: Lbfgs) -> Self {
        LbfgsTrainer { model, lbfgs, x0, state: None, evaluating: Duration::ZERO, evaluations_here: 0 }
    }

    /// The optimizer's state (`None` before the first step).
    pub fn state_ref(&self) -> Option<&LbfgsState> {
        self.state.as_ref()
    }

    /// The outcome so far (`None` before the first step).
    pub fn result(&self) -> Option<OptimResult> {
        self.state.as_ref().map(LbfgsState::result)
    }
}

impl LbfgsTrainer<crate::softmax::SoftmaxConfig> {
    /// Softmax regression from zero.
    pub fn new(model: crate::softmax::SoftmaxConfig, iterations: usize) -> crate::Result<Self> {
        Ok(LbfgsTrainer::from(model, model.init()?, iterations))
    }
}

fn record(r: IterRecord, seconds: f64) -> StepRecord {
    StepRecord {
        grad_norm: Some(r.grad_norm),
        evaluations: Some(r.evaluations),
        ..StepRecord::new("iteration", r.iteration, r.cost, seconds)
    }
}

fn full_batch_settings(model: BTreeMap<String, String>, x0: &[f64], stop: &Stop) -> BTreeMap<String, String> {
    let mut s = model;
    s.insert("start_sha256".into(), cohort::sha256_le(x0));
    s.insert("grad_tol".into(), stop.grad_tol.to_string());
    s.insert("cost_tol".into(), stop.cost_tol.to_string());
    s
}

/// After a restore with another iteration budget: a run stopped only by the old budget may go on.
fn rebudget(stop: &mut Option<StopReason>, policy: &Stop, iteration: usize, evaluations: usize) {
    if matches!(stop, Some(StopReason::MaxIterations | StopReason::MaxEvaluations)) {
        *stop = budget_left(policy, iteration, evaluations);
    }
}

impl<M: RoundModel> Stepper for LbfgsTrainer<M> {
    type Elem = <M::Job as MapReduce>::Elem;
    type State = Option<LbfgsState>;

    fn algorithm(&self) -> &'static str {
        "lbfgs"
    }

    fn unit(&self) -> &'static str {
        "iteration"
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let mut s = full_batch_settings(self.model.settings(), &self.x0, &self.lbfgs.stop);
        s.insert("memory".into(), self.lbfgs.memory.to_string());
        s.insert("line_search".into(), format!("{:?}", self.lbfgs.line_search));
        s
    }

    fn step(&mut self, cluster: &mut Cluster, data: &DatasetHandle<Self::Elem>) -> Result<Option<StepRecord>> {
        let started = Instant::now();
        let mut objective = ClusterObjective::new(cluster, data, &self.model);
        let result = match &mut self.state {
            None => match self.lbfgs.start(&mut objective, &self.x0) {
                Ok(state) => {
                    self.state = Some(state);
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            Some(state) => self.lbfgs.step(state, &mut objective),
        };
        self.evaluating += objective.evaluating;
        self.evaluations_here += objective.evaluations;
        let result = result?;
        Ok(result.map(|r| record(r, started.elapsed().as_secs_f64())))
    }

    fn completed(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.iterate.iteration)
    }

    fn finished(&self) -> Option<String> {
        self.state.as_ref().and_then(|s| s.iterate.stop).map(|s| s.to_string())
    }

    fn state(&self, _cluster: &Cluster) -> Self::State {
        self.state.clone()
    }

    fn restore(&mut self, state: Self::State, _: &mut Cluster, _: &DatasetHandle<Self::Elem>) -> Result<()> {
        if let Some(s) = &state {
            if s.iterate.x.len() != self.x0.len() {
                return Err(TrainError::Config(format!(
                    "the saved L-BFGS state has {} parameters, the model {}",
                    s.iterate.x.len(),
                    self.x0.len()
                )));
            }
        }
        self.state = state;
        if let Some(s) = &mut self.state {
            let it = &mut s.iterate;
            rebudget(&mut it.stop, &self.lbfgs.stop, it.iteration, it.evaluations);
        }
        Ok(())
    }
}

/// Distributed gradient descent with a fixed step on a [`RoundModel`]: one iteration per step.
pub struct GdTrainer<M: RoundModel> {
    /// The model.
    pub model: M,
    /// The optimizer's settings.
    pub gd: GradientDescent,
    x0: Vec<f64>,
    state: Option<GdState>,
    /// Time spent in evaluations by this process.
    pub evaluating: Duration,
}

impl<M: RoundModel> GdTrainer<M> {
    /// Gradient descent on `model` from `x0` with step `step` for exactly `iterations` iterations (its stop
    /// policy: no tolerance test, only an exactly zero gradient ends it earlier).
    pub fn new(model: M, x0: Vec<f64>, step: f64, iterations: usize) -> Self {
        let stop = Stop { max_iterations: iterations, max_evaluations: usize::MAX, grad_tol: 0.0, cost_tol: 0.0 };
        GdTrainer { model, gd: GradientDescent { step, stop }, x0, state: None, evaluating: Duration::ZERO }
    }

    /// The outcome so far (`None` before the first step).
    pub fn result(&self) -> Option<OptimResult> {
        self.state.as_ref().map(GdState::result)
    }
}

impl<M: RoundModel> Stepper for GdTrainer<M> {
    type Elem = <M::Job as MapReduce>::Elem;
    type State = Option<GdState>;

    fn algorithm(&self) -> &'static str {
        "gradient-descent"
    }

    fn unit(&self) -> &'static str {
        "iteration"
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let mut s = full_batch_settings(self.model.settings(), &self.x0, &self.gd.stop);
        s.insert("step".into(), self.gd.step.to_string());
        s
    }

    fn step(&mut self, cluster: &mut Cluster, data: &DatasetHandle<Self::Elem>) -> Result<Option<StepRecord>> {
        let started = Instant::now();
        let mut objective = ClusterObjective::new(cluster, data, &self.model);
        let result = match &mut self.state {
            None => self.gd.start(&mut objective, &self.x0).map(|s| {
                self.state = Some(s);
                None
            }),
            Some(state) => self.gd.step(state, &mut objective),
        };
        self.evaluating += objective.evaluating;
        Ok(result?.map(|r| record(r, started.elapsed().as_secs_f64())))
    }

    fn completed(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.iterate.iteration)
    }

    fn finished(&self) -> Option<String> {
        self.state.as_ref().and_then(|s| s.iterate.stop).map(|s| s.to_string())
    }

    fn state(&self, _cluster: &Cluster) -> Self::State {
        self.state.clone()
    }

    fn restore(&mut self, state: Self::State, _: &mut Cluster, _: &DatasetHandle<Self::Elem>) -> Result<()> {
        self.state = state;
        if let Some(s) = &mut self.state {
            let it = &mut s.iterate;
            rebudget(&mut it.stop, &self.gd.stop, it.iteration, it.evaluations);
        }
        Ok(())
    }
}
