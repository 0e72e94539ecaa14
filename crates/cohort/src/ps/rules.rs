//! Server update rules: how a pushed update changes the stored parameters.
//!
//! A rule is an [`UpdateRule`]: it declares how many `f32` state slots it keeps per key and applies one step to a
//! run of consecutive keys, given each key's slots and each key's own step count. The server owns the storage (so a
//! snapshot of any rule, built-in or user-supplied, is just arrays), and calls the rule only for keys an update
//! touches: under sparse pushes untouched keys keep their parameters *and* their state.
//!
//! Built-ins ([`Sgd`], [`Momentum`], [`AdaGrad`], [`Adam`]) treat the pushed values as gradients and descend. They
//! are the *lazy* sparse variants: a key's momentum or moments decay only when the key is updated, and Adam's bias
//! correction uses the key's own step count `t` (the number of updates that key has received), so a key touched
//! for the first time at global step 1000 takes exactly Adam's first step. For dense updates every key is touched
//! every time and the rules are the textbook ones.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{PsError, Result};

/// A server-side update rule.
///
/// # Contract
/// [`apply`](UpdateRule::apply) receives a run of consecutive keys: `params`, `grads` and `steps` have the same
/// length `n`; `state` has `n * slots()` values, key-major (key `i`'s slots are `state[i * slots..(i + 1) * slots]`,
/// zero before the key's first update); `steps[i] >= 1` counts the updates key `i` has received, this one included.
/// It must be deterministic (same inputs, same bits): replicas and BSP's bit-identical results depend on it.
pub trait UpdateRule: Send {
    /// A short name, recorded in snapshots (a snapshot restores only into a rule of the same name).
    fn name(&self) -> &str;

    /// State values kept per key.
    fn slots(&self) -> usize {
        0
    }

    /// Checks the hyperparameters; a server refuses to start with a rule that fails.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Applies one update step to a run of keys (see the trait's contract).
    fn apply(&self, params: &mut [f32], grads: &[f32], state: &mut [f32], steps: &[u64]);
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(PsError::config(what.to_string()))
    }
}

/// Plain gradient descent: `p -= lr * g`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
}

impl UpdateRule for Sgd {
    fn name(&self) -> &str {
        "sgd"
    }

    fn validate(&self) -> Result<()> {
        check(self.lr.is_finite() && self.lr > 0.0, "sgd: the learning rate must be a positive number")
    }

    fn apply(&self, params: &mut [f32], grads: &[f32], _: &mut [f32], _: &[u64]) {
        for (p, g) in params.iter_mut().zip(grads) {
            *p -= self.lr * g;
        }
    }
}

/// Gradient descent with momentum (PyTorch's form): `v = momentum * v + g; p -= lr * v`. One slot: `v`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Momentum {
    /// Learning rate.
    pub lr: f32,
    /// Momentum coefficient, in `[0, 1)`.
    pub momentum: f32,
}

impl UpdateRule for Momentum {
    fn name(&self) -> &str {
        "momentum"
    }

    fn slots(&self) -> usize {
        1
    }

    fn validate(&self) -> Result<()> {
        check(self.lr.is_finite() && self.lr > 0.0, "momentum: the learning rate must be a positive number")?;
        check((0.0..1.0).contains(&self.momentum), "momentum: the momentum must be in [0, 1)")
    }

    fn apply(&self, params: &mut [f32], grads: &[f32], state: &mut [f32], _: &[u64]) {
        for ((p, g), v) in params.iter_mut().zip(grads).zip(state.iter_mut()) {
            *v = self.momentum * *v + g;
            *p -= self.lr * *v;
        }
    }
}

/// AdaGrad: `G += g²; p -= lr * g / (sqrt(G) + eps)`. One slot: `G`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaGrad {
    /// Learning rate.
    pub lr: f32,
    /// Added to the denominator; positive.
    pub eps: f32,
}

impl UpdateRule for AdaGrad {
    fn name(&self) -> &str {
        "adagrad"
    }

    fn slots(&self) -> usize {
        1
    }

    fn validate(&self) -> Result<()> {
        check(self.lr.is_finite() && self.lr > 0.0, "adagrad: the learning rate must be a positive number")?;
        check(self.eps.is_finite() && self.eps > 0.0, "adagrad: eps must be positive and finite")
    }

    fn apply(&self, params: &mut [f32], grads: &[f32], state: &mut [f32], _: &[u64]) {
        for ((p, g), acc) in params.iter_mut().zip(grads).zip(state.iter_mut()) {
            *acc += g * g;
            *p -= self.lr * g / (acc.sqrt() + self.eps);
        }
    }
}

/// Adam (Kingma & Ba), lazy for sparse updates: `m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
/// p -= lr * m̂ / (sqrt(v̂) + eps)` with `m̂ = m / (1 - b1^t)`, `v̂ = v / (1 - b2^t)` and `t` the key's own step
/// count. Two slots: `m`, `v`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay, in `[0, 1)`.
    pub beta1: f32,
    /// Second-moment decay, in `[0, 1)`.
    pub beta2: f32,
    /// Added to the denominator; positive.
    pub eps: f32,
}

impl Adam {
    /// Adam with the usual defaults (`beta1` 0.9, `beta2` 0.999, `eps` 1e-8).
    pub fn new(lr: f32) -> Adam {
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

impl UpdateRule for Adam {
    fn name(&self) -> &str {
        "adam"
    }

    fn slots(&self) -> usize {
        2
    }

    fn validate(&self) -> Result<()> {
        check(self.lr.is_finite() && self.lr > 0.0, "adam: the learning rate must be a positive number")?;
        check((0.0..1.0).contains(&self.beta1), "adam: beta1 must be in [0, 1)")?;
        check((0.0..1.0).contains(&self.beta2), "adam: beta2 must be in [0, 1)")?;
        check(self.eps.is_finite() && self.eps > 0.0, "adam: eps must be positive and finite")
    }

    fn apply(&self, params: &mut [f32], grads: &[f32], state: &mut [f32], steps: &[u64]) {
        let (b1, b2) = (self.beta1, self.beta2);
        // Bias corrections in f64: b^t for large t underflows gracefully to 0 and the correction to 1. Neighbouring
        // keys almost always share their step count, so the powers are computed again only when it changes.
        let corrections = |t: u64| {
            let t = t.max(1) as f64;
            ((1.0 - (b1 as f64).powf(t)) as f32, (1.0 - (b2 as f64).powf(t)) as f32)
        };
        let mut cached = (u64::MAX, (1.0f32, 1.0f32));
        for (((p, g), mv), &t) in params.iter_mut().zip(grads).zip(state.chunks_exact_mut(2)).zip(steps) {
            mv[0] = b1 * mv[0] + (1.0 - b1) * g;
            mv[1] = b2 * mv[1] + (1.0 - b2) * g * g;
            if cached.0 != t {
                cached = (t, corrections(t));
            }
            let (c1, c2) = cached.1;
            let m_hat = mv[0] / c1;
            let v_hat = mv[1] / c2;
            *p -= self.lr * m_hat / (v_hat.sqrt() + self.eps);
        }
    }
}

/// A built-in rule by name and hyperparameters: what a job configuration or a command line names
/// (`sgd:LR`, `momentum:LR[,MU]`, `adagrad:LR[,EPS]`, `adam:LR[,B1,B2,EPS]`), serde-serialisable so it can be
/// sent to server processes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum RuleSpec {
    /// [`Sgd`].
    Sgd(Sgd),
    /// [`Momentum`].
    Momentum(Momentum),
    /// [`AdaGrad`].
    AdaGrad(AdaGrad),
    /// [`Adam`].
    Adam(Adam),
}

impl RuleSpec {
    /// The rule, after checking its hyperparameters.
    pub fn build(&self) -> Result<Box<dyn UpdateRule>> {
        let rule: Box<dyn UpdateRule> = match *self {
            RuleSpec::Sgd(r) => Box::new(r),
            RuleSpec::Momentum(r) => Box::new(r),
            RuleSpec::AdaGrad(r) => Box::new(r),
            RuleSpec::Adam(r) => Box::new(r),
        };
        rule.validate()?;
        Ok(rule)
    }
}

impl fmt::Display for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSpec::Sgd(r) => write!(f, "sgd:{}", r.lr),
            RuleSpec::Momentum(r) => write!(f, "momentum:{},{}", r.lr, r.momentum),
            RuleSpec::AdaGrad(r) => write!(f, "adagrad:{},{}", r.lr, r.eps),
            RuleSpec::Adam(r) => write!(f, "adam:{},{},{},{}", r.lr, r.beta1, r.beta2, r.eps),
        }
    }
}

/// A rule text that does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid update rule {text:?}: {reason}; expected sgd:LR, momentum:LR[,MU], adagrad:LR[,EPS] or adam:LR[,B1,B2,EPS]")]
pub struct ParseRuleError {
    /// The text given.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

impl FromStr for RuleSpec {
    type Err = ParseRuleError;

    fn from_str(text: &str) -> std::result::Result<RuleSpec, ParseRuleError> {
        let err = |reason: String| ParseRuleError { text: text.to_string(), reason };
        let (name, args) = text.trim().split_once(':').ok_or_else(|| err("no hyperparameters".into()))?;
        let nums = args
            .split(',')
            .map(|a| a.trim().parse::<f32>().map_err(|_| err(format!("{:?} is not a number", a.trim()))))
            .collect::<std::result::Result<Vec<f32>, _>>()?;
        let arity = |min: usize, max: usize| {
            if (min..=max).contains(&nums.len()) {
                Ok(())
            } else {
                Err(err(format!("{name} takes {min} to {max} numbers, got {}", nums.len())))
            }
        };
        let spec = match name.trim().to_ascii_lowercase().as_str() {
            "sgd" => {
                arity(1, 1)?;
                RuleSpec::Sgd(Sgd { lr: nums[0] })
            }
            "momentum" => {
                arity(1, 2)?;
                RuleSpec::Momentum(Momentum { lr: nums[0], momentum: nums.get(1).copied().unwrap_or(0.9) })
            }
            "adagrad" => {
                arity(1, 2)?;
                RuleSpec::AdaGrad(AdaGrad { lr: nums[0], eps: nums.get(1).copied().unwrap_or(1e-10) })
            }
            "adam" => {
                if nums.len() != 1 && nums.len() != 4 {
                    return Err(err(format!("adam takes 1 or 4 numbers, got {}", nums.len())));
                }
                let d = Adam::new(nums[0]);
                RuleSpec::Adam(Adam {
                    beta1: nums.get(1).copied().unwrap_or(d.beta1),
                    beta2: nums.get(2).copied().unwrap_or(d.beta2),
                    eps: nums.get(3).copied().unwrap_or(d.eps),
                    ..d
                })
            }
            other => return Err(err(format!("unknown rule {other:?}"))),
        };
        spec.build().map_err(|e| err(e.to_string()))?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key, updated with each gradient in turn through the rule's `apply`, as the server does.
    fn run(rule: &dyn UpdateRule, p0: f32, grads: &[f32]) -> Vec<f32> {
        let mut p = [p0];
        let mut state = vec![0.0; rule.slots()];
        let mut out = Vec::new();
        for (t, g) in grads.iter().enumerate() {
            rule.apply(&mut p, &[*g], &mut state, &[t as u64 + 1]);
            out.push(p[0]);
        }
        out
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "{a:?} != {b:?}");
        }
    }

    #[test]
    fn sgd_steps_against_the_gradient() {
        close(&run(&Sgd { lr: 0.1 }, 1.0, &[2.0, -1.0]), &[0.8, 0.9]);
    }

    #[test]
    fn momentum_accumulates_velocity() {
        // v1 = 1, p = 1 - 0.1; v2 = 0.9 + 1 = 1.9, p = 0.9 - 0.19; v3 = 1.71 - 2 = -0.29, p = 0.71 + 0.029.
        close(&run(&Momentum { lr: 0.1, momentum: 0.9 }, 1.0, &[1.0, 1.0, -2.0]), &[0.9, 0.71, 0.739]);
    }

    #[test]
    fn adagrad_divides_by_the_root_of_the_squared_sum() {
        // G = 4, p = 1 - 0.1·2/2 = 0.9; G = 8, p = 0.9 - 0.1·2/√8 = 0.82928932.
        close(&run(&AdaGrad { lr: 0.1, eps: 1e-10 }, 1.0, &[2.0, 2.0]), &[0.9, 0.829_289_3]);
    }

    #[test]
    fn adam_matches_a_hand_computed_pair_of_steps() {
        // Step 1 (g = 2): m = 0.2, v = 0.004, m̂ = 2, v̂ = 4, p = 1 - 0.01·2/2 = 0.99.
        // Step 2 (g = -1): m = 0.08, v = 0.004996, m̂ = 0.08/0.19 = 0.42105263, v̂ = 0.004996/0.001999 = 2.4992496,
        // p = 0.99 - 0.01·0.42105263/1.5809016 = 0.98733660.
        close(&run(&Adam::new(0.01), 1.0, &[2.0, -1.0]), &[0.99, 0.987_336_6]);
    }

    #[test]
    fn lazy_adam_uses_each_keys_own_step_count() {
        // Key 0 gets its 3rd update while key 1 gets its 1st: key 1 takes exactly Adam's first step (lr·sign(g)).
        let adam = Adam::new(0.01);
        let mut p = [0.0, 0.0];
        let mut state = [0.3, 0.2, 0.0, 0.0];
        adam.apply(&mut p, &[1.0, -5.0], &mut state, &[3, 1]);
        assert!((p[1] - 0.01).abs() < 1e-7, "{p:?}");
        assert!((state[2] + 0.5).abs() < 1e-6, "m = (1 - b1)·g: {state:?}");
    }

    #[test]
    fn runs_of_keys_equal_one_key_at_a_time() {
        let rules: [Box<dyn UpdateRule>; 4] = [
            Box::new(Sgd { lr: 0.5 }),
            Box::new(Momentum { lr: 0.1, momentum: 0.5 }),
            Box::new(AdaGrad { lr: 0.1, eps: 1e-8 }),
            Box::new(Adam::new(0.1)),
        ];
        for rule in &rules {
            let k = rule.slots();
            let grads = [0.5, -1.5, 2.0];
            let steps = [1, 4, 2];
            let mut p = [1.0, 2.0, 3.0];
            let mut state: Vec<f32> = (0..3 * k).map(|i| i as f32 * 0.125).collect();
            let (mut p1, mut state1) = (p, state.clone());
            rule.apply(&mut p, &grads, &mut state, &steps);
            for i in 0..3 {
                rule.apply(&mut p1[i..i + 1], &grads[i..i + 1], &mut state1[i * k..(i + 1) * k], &steps[i..i + 1]);
            }
            assert_eq!(p, p1, "{}", rule.name());
            assert_eq!(state, state1, "{}", rule.name());
        }
    }

    #[test]
    fn rule_specs_parse_with_defaults_and_round_trip() {
        assert_eq!("sgd:0.5".parse::<RuleSpec>().unwrap(), RuleSpec::Sgd(Sgd { lr: 0.5 }));
        assert_eq!(
            "momentum:0.1".parse::<RuleSpec>().unwrap(),
            RuleSpec::Momentum(Momentum { lr: 0.1, momentum: 0.9 })
        );
        assert_eq!("Adam:0.001".parse::<RuleSpec>().unwrap(), RuleSpec::Adam(Adam::new(0.001)));
        for text in ["sgd:0.5", "momentum:0.1,0.5", "adagrad:0.1,0.001", "adam:0.001,0.8,0.99,0.0001"] {
            let spec: RuleSpec = text.parse().unwrap();
            assert_eq!(spec.to_string().parse::<RuleSpec>().unwrap(), spec);
            assert_eq!(spec.build().unwrap().name(), text.split(':').next().unwrap());
        }
    }

    #[test]
    fn bad_rule_specs_say_why() {
        for (text, why) in [
            ("sgd", "no hyperparameters"),
            ("sgd:x", "\"x\" is not a number"),
            ("sgd:0.1,2", "takes 1 to 1 numbers"),
            ("adam:0.1,0.9", "adam takes 1 or 4"),
            ("nesterov:0.1", "unknown rule"),
            ("momentum:0.1,1.5", "momentum must be in [0, 1)"),
            ("adagrad:0.1,0", "eps must be positive"),
            ("sgd:NaN", "must be a positive number"),
            ("adam:-0.001", "must be a positive number"),
            ("momentum:0,0.9", "must be a positive number"),
        ] {
            let e = text.parse::<RuleSpec>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("expected sgd:LR"), "{text}: {e}");
        }
    }
}
