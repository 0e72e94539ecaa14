//! Mini-batch update rules for the MLP: SGD with (heavy-ball) momentum and Adam, in `f32`.
//!
//! An [`OptimizerSpec`] is the rule and its hyper-parameters (small, serialisable, sent to the workers); an
//! [`Optimizer`] adds the moment buffers, which live wherever the updates are applied: on each worker for model
//! averaging (each worker's moments are its own), on the master for synchronous SGD.

use serde::{Deserialize, Serialize};

use crate::error::{MlError, Result};
use crate::kernels::multiversion;

/// An update rule with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum OptimizerSpec {
    /// `v ← μ v + g; θ ← θ − η v`.
    Sgd {
        /// Learning rate `η`.
        lr: f32,
        /// Momentum `μ` in `[0, 1)`; 0 is plain SGD.
        momentum: f32,
    },
    /// Adam (Kingma and Ba) with bias correction.
    Adam {
        /// Learning rate.
        lr: f32,
        /// Decay of the first moment.
        beta1: f32,
        /// Decay of the second moment.
        beta2: f32,
        /// Added to `√v`.
        eps: f32,
    },
}

impl OptimizerSpec {
    /// Adam with the usual `β₁ = 0.9`, `β₂ = 0.999`, `ε = 1e-8`.
    pub fn adam(lr: f32) -> Self {
        OptimizerSpec::Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    /// The same rule with learning rate `lr`.
    pub fn with_lr(self, lr: f32) -> Self {
        match self {
            OptimizerSpec::Sgd { momentum, .. } => OptimizerSpec::Sgd { lr, momentum },
            OptimizerSpec::Adam { beta1, beta2, eps, .. } => OptimizerSpec::Adam { lr, beta1, beta2, eps },
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match *self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } => lr,
        }
    }

    /// Checks the hyper-parameters.
    pub fn validate(&self) -> Result<()> {
        let (lr, ok) = match *self {
            OptimizerSpec::Sgd { lr, momentum } => (lr, (0.0..1.0).contains(&momentum)),
            OptimizerSpec::Adam { lr, beta1, beta2, eps } => {
                (lr, (0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2) && eps > 0.0)
            }
        };
        if !(lr.is_finite() && lr > 0.0) {
            return Err(MlError::Config { what: "learning rate", detail: format!("{lr} is not a positive number") });
        }
        if !ok {
            return Err(MlError::Config {
                what: "optimizer",
                detail: format!("{self:?}: momentum and betas must lie in [0, 1), ε must be > 0"),
            });
        }
        Ok(())
    }
}

/// An update rule with its state for a parameter vector of fixed length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Optimizer {
    spec: OptimizerSpec,
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Optimizer {
    /// Fresh state (zero moments) for `n` parameters.
    pub fn new(spec: OptimizerSpec, n: usize) -> Self {
        let v = if matches!(spec, OptimizerSpec::Adam { .. }) { vec![0.0; n] } else { Vec::new() };
        Optimizer { spec, m: vec![0.0; n], v, t: 0 }
    }

    /// Changes the hyper-parameters (e.g. a learning-rate schedule). The moments are kept when the rule stays the
    /// same kind and reset otherwise.
    pub fn set_spec(&mut self, spec: OptimizerSpec) {
        if std::mem::discriminant(&spec) != std::mem::discriminant(&self.spec) {
            *self = Optimizer::new(spec, self.m.len());
        }
        self.spec = spec;
    }

    /// The rule.
    pub fn spec(&self) -> OptimizerSpec {
        self.spec
    }

    /// The moments and the step count: everything but the rule that a continued run needs.
    pub fn moments(&self) -> (&[f32], &[f32], i32) {
        (&self.m, &self.v, self.t)
    }

    /// An optimizer continuing from saved [`moments`](Self::moments). Fails if their lengths do not fit the rule
    /// and `n` parameters.
    pub fn from_moments(spec: OptimizerSpec, n: usize, m: Vec<f32>, v: Vec<f32>, t: i32) -> Result<Self> {
        let adam = matches!(spec, OptimizerSpec::Adam { .. });
        if m.len() != n || v.len() != if adam { n } else { 0 } || t < 0 {
            return Err(MlError::Config {
                what: "saved optimizer state",
                detail: format!("{} and {} moments (step {t}) for {n} parameters of {spec:?}", m.len(), v.len()),
            });
        }
        Ok(Optimizer { spec, m, v, t })
    }

    /// Applies one update with gradient `grad` (the mean over the batch) to `theta`.
    pub fn step(&mut self, theta: &mut [f32], grad: &[f32]) {
        self.t = self.t.saturating_add(1);
        match self.spec {
            OptimizerSpec::Sgd { lr, momentum } => sgd_update(theta, &mut self.m, grad, lr, momentum),
            OptimizerSpec::Adam { lr, beta1, beta2, eps } => {
                let c1 = 1.0 - beta1.powi(self.t);
                let c2 = 1.0 - beta2.powi(self.t);
                let step = lr * c2.sqrt() / c1;
                let eps = eps * c2.sqrt();
                adam_update(theta, &mut self.m, &mut self.v, grad, [beta1, beta2, step, eps]);
            }
        }
    }
}

multiversion! {
    /// `v ← μ v + g; θ ← θ − η v`, vectorised (the slices are cut to the shortest length).
    fn sgd_update(theta: &mut [f32], v: &mut [f32], grad: &[f32], lr: f32, momentum: f32) {
        let n = theta.len().min(v.len()).min(grad.len());
        let (theta, v, grad) = (&mut theta[..n], &mut v[..n], &grad[..n]);
        for i in 0..n {
            v[i] = momentum * v[i] + grad[i];
            theta[i] -= lr * v[i];
        }
    }
}

multiversion! {
    /// Adam's moment updates and step with `[β₁, β₂, bias-corrected step, bias-corrected ε]`, vectorised.
    fn adam_update(theta: &mut [f32], m: &mut [f32], v: &mut [f32], grad: &[f32], k: [f32; 4]) {
        let [beta1, beta2, step, eps] = k;
        let n = theta.len().min(m.len()).min(v.len()).min(grad.len());
        let (theta, m, v, grad) = (&mut theta[..n], &mut m[..n], &mut v[..n], &grad[..n]);
        for i in 0..n {
            let g = grad[i];
            m[i] = beta1 * m[i] + (1.0 - beta1) * g;
            v[i] = beta2 * v[i] + (1.0 - beta2) * (g * g);
            theta[i] -= step * m[i] / (v[i].sqrt() + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_rules_minimise_a_quadratic() {
        for spec in [OptimizerSpec::Sgd { lr: 0.1, momentum: 0.9 }, OptimizerSpec::adam(0.05)] {
            spec.validate().unwrap();
            let mut theta = vec![3.0f32, -2.0];
            let mut opt = Optimizer::new(spec, 2);
            for _ in 0..500 {
                let grad = theta.clone();
                opt.step(&mut theta, &grad);
            }
            assert!(theta.iter().all(|v| v.abs() < 1e-2), "{spec:?}: {theta:?}");
        }
    }

    #[test]
    fn bad_hyper_parameters_are_errors() {
        assert!(OptimizerSpec::Sgd { lr: -1.0, momentum: 0.0 }.validate().is_err());
        assert!(OptimizerSpec::Sgd { lr: 0.1, momentum: 1.0 }.validate().is_err());
        assert!(OptimizerSpec::adam(f32::NAN).validate().is_err());
    }
}
