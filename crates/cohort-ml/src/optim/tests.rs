//! Tests of the optimizers on problems with known minima, and of their behaviour on failures and bad input.

use std::convert::Infallible;
use std::ops::ControlFlow;

use super::*;

/// An objective from a closure that also records every point it was asked for.
struct Recorder<F> {
    f: F,
    points: Vec<Vec<f64>>,
}

impl<F: FnMut(&[f64]) -> (f64, Vec<f64>)> Objective for Recorder<F> {
    type Error = Infallible;
    fn eval(&mut self, x: &[f64]) -> Result<(f64, Vec<f64>), Infallible> {
        self.points.push(x.to_vec());
        Ok((self.f)(x))
    }
}

fn recorder<F: FnMut(&[f64]) -> (f64, Vec<f64>)>(f: F) -> Recorder<F> {
    Recorder { f, points: Vec::new() }
}

/// Σ c_i (x_i − i)² with condition number 1000.
fn quadratic(x: &[f64]) -> (f64, Vec<f64>) {
    let n = x.len() as f64;
    let c = |i: usize| 1.0 + 999.0 * i as f64 / (n - 1.0);
    let f = x.iter().enumerate().map(|(i, v)| c(i) * (v - i as f64).powi(2)).sum();
    let g = x.iter().enumerate().map(|(i, v)| 2.0 * c(i) * (v - i as f64)).collect();
    (f, g)
}

fn rosenbrock(x: &[f64]) -> (f64, Vec<f64>) {
    let mut f = 0.0;
    let mut g = vec![0.0; x.len()];
    for i in 0..x.len() - 1 {
        let (a, b) = (x[i], x[i + 1]);
        f += 100.0 * (b - a * a).powi(2) + (1.0 - a).powi(2);
        g[i] += -400.0 * a * (b - a * a) - 2.0 * (1.0 - a);
        g[i + 1] += 200.0 * (b - a * a);
    }
    (f, g)
}

/// L2-regularised logistic regression on a small fixed data set: convex, minimum found by Newton's method below.
fn logistic(w: &[f64]) -> (f64, Vec<f64>) {
    let (xs, ys) = logistic_data();
    let lambda = 0.1;
    let mut f = 0.5 * lambda * w.iter().map(|v| v * v).sum::<f64>();
    let mut g: Vec<f64> = w.iter().map(|v| lambda * v).collect();
    for (x, &y) in xs.iter().zip(&ys) {
        let z: f64 = x.iter().zip(w).map(|(a, b)| a * b).sum();
        // log(1 + e^z) − y z, stably.
        f += z.max(0.0) + (-z.abs()).exp().ln_1p() - y * z;
        let p = 1.0 / (1.0 + (-z).exp());
        for (gi, xi) in g.iter_mut().zip(x) {
            *gi += (p - y) * xi;
        }
    }
    (f, g)
}

fn logistic_data() -> (Vec<[f64; 3]>, Vec<f64>) {
    let mut rng = cohort::rng::Rng::new(5);
    let xs: Vec<[f64; 3]> = (0..60).map(|_| [1.0, rng.normal(), rng.normal()]).collect();
    let ys = xs.iter().map(|x| if 0.5 + 2.0 * x[1] - x[2] + rng.normal() > 0.0 { 1.0 } else { 0.0 }).collect();
    (xs, ys)
}

/// Newton's method on the logistic problem (3×3 system by Cramer's rule): the reference optimum.
fn logistic_newton() -> Vec<f64> {
    let (xs, _) = logistic_data();
    let mut w = vec![0.0; 3];
    for _ in 0..50 {
        let (_, g) = logistic(&w);
        let mut h = [[0.0; 3]; 3];
        for (i, row) in h.iter_mut().enumerate() {
            row[i] = 0.1;
        }
        for x in &xs {
            let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            for i in 0..3 {
                for j in 0..3 {
                    h[i][j] += p * (1.0 - p) * x[i] * x[j];
                }
            }
        }
        let det = |m: [[f64; 3]; 3]| {
            m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
                + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
        };
        let d = det(h);
        for k in 0..3 {
            let mut m = h;
            for i in 0..3 {
                m[i][k] = g[i];
            }
            w[k] -= det(m) / d;
        }
    }
    w
}

fn tight() -> Stop {
    Stop { max_iterations: 500, max_evaluations: 5000, grad_tol: 1e-10, cost_tol: 0.0 }
}

#[test]
fn lbfgs_solves_an_ill_conditioned_quadratic() {
    let r = Lbfgs::new(tight()).minimize(&mut recorder(quadratic), &[0.0; 20]).unwrap();
    assert_eq!(r.stop, StopReason::GradientTolerance);
    for (i, v) in r.x.iter().enumerate() {
        assert!((v - i as f64).abs() < 1e-9, "x[{i}] = {v}");
    }
    assert!(r.iterations < 80, "{} iterations", r.iterations);
}

#[test]
fn lbfgs_solves_rosenbrock() {
    let mut x0 = vec![-1.2, 1.0];
    x0.extend([-1.2, 1.0, -1.2, 1.0, -1.2, 1.0]);
    let r = Lbfgs::new(tight()).minimize(&mut recorder(rosenbrock), &x0).unwrap();
    assert!(matches!(r.stop, StopReason::GradientTolerance), "{:?} after {}", r.stop, r.iterations);
    assert!(r.x.iter().all(|v| (v - 1.0).abs() < 1e-8), "{:?}", r.x);
    // Every line search takes few evaluations: the quasi-Newton step 1 is usually accepted.
    assert!(r.evaluations < 2 * r.iterations + 10, "{} evaluations for {} iterations", r.evaluations, r.iterations);
}

#[test]
fn lbfgs_reaches_the_logistic_regression_optimum() {
    let w_star = logistic_newton();
    assert!(super::norm(&logistic(&w_star).1) < 1e-12);
    let r = Lbfgs::default().minimize(&mut recorder(logistic), &[0.0; 3]).unwrap();
    assert_eq!(r.stop, StopReason::GradientTolerance);
    for (a, b) in r.x.iter().zip(&w_star) {
        assert!((a - b).abs() < 1e-5, "{:?} vs {w_star:?}", r.x);
    }
    assert!((r.cost - logistic(&w_star).0).abs() < 1e-10);
}

#[test]
fn history_counts_and_caching_are_consistent() {
    let mut obj = recorder(rosenbrock);
    let r = Lbfgs::new(tight()).minimize(&mut obj, &[-1.2, 1.0]).unwrap();
    assert_eq!(obj.points.len(), r.evaluations, "every evaluation reached the objective exactly once");
    // The cache means no point is ever evaluated twice.
    for (i, p) in obj.points.iter().enumerate() {
        assert!(!obj.points[..i].contains(p), "point {i} evaluated twice");
    }
    assert_eq!(r.history.len(), r.iterations + 1);
    assert_eq!(r.history[0].iteration, 0);
    assert_eq!(r.history[0].evaluations, 1);
    assert_eq!(r.history.last().unwrap().evaluations, r.evaluations);
    assert!(r.history.windows(2).all(|w| w[1].cost <= w[0].cost && w[1].evaluations > w[0].evaluations));
    assert_eq!(r.history.last().unwrap().cost, r.cost);
    assert_eq!(rosenbrock(&r.x), (r.cost, r.gradient.clone()));
}

#[test]
fn runs_are_deterministic() {
    let run = || Lbfgs::default().minimize(&mut recorder(rosenbrock), &[-1.2, 1.0, 0.5]).unwrap();
    let (a, b) = (run(), run());
    assert_eq!(a, b);
    let bits = |r: &OptimResult| r.x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn objective_errors_propagate_with_their_evaluation_number() {
    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("worker lost")]
    struct Lost;
    let mut calls = 0;
    let mut obj = FnObjective(|x: &[f64]| {
        calls += 1;
        if calls == 3 {
            Err(Lost)
        } else {
            Ok(quadratic(x))
        }
    });
    let err = Lbfgs::default().minimize(&mut obj, &[0.0; 4]).unwrap_err();
    assert!(matches!(err, OptimError::Objective { evaluation: 3, source: Lost }), "{err:?}");
    assert_eq!(err.to_string(), "objective evaluation 3 failed: worker lost");
    let err =
        GradientDescent::new(0.001).minimize(&mut FnObjective(|_: &[f64]| Err::<(f64, Vec<f64>), _>(Lost)), &[1.0]);
    assert!(matches!(err, Err(OptimError::Objective { evaluation: 1, .. })));
}

#[test]
fn non_finite_values_are_errors_not_loops() {
    let nan_start = |_: &[f64]| Ok::<_, Infallible>((f64::NAN, vec![0.0]));
    let err = Lbfgs::default().minimize(&mut FnObjective(nan_start), &[1.0]).unwrap_err();
    assert!(matches!(err, OptimError::NonFinite { what: "cost", place: "the starting point", .. }), "{err}");
    let nan_grad = |_: &[f64]| Ok::<_, Infallible>((1.0, vec![f64::NAN]));
    let err = GradientDescent::new(0.1).minimize(&mut FnObjective(nan_grad), &[1.0]).unwrap_err();
    assert!(matches!(err, OptimError::NonFinite { what: "gradient", .. }), "{err}");
    // Finite only at the start: every trial of the line search is NaN.
    let only_start =
        |x: &[f64]| Ok::<_, Infallible>(if x[0] == 1.0 { (1.0, vec![1.0]) } else { (f64::NAN, vec![0.0]) });
    let err = Lbfgs::default().minimize(&mut FnObjective(only_start), &[1.0]).unwrap_err();
    assert!(matches!(err, OptimError::NonFinite { place: "every line-search trial point", .. }), "{err}");
    // Gradient descent with too large a step overflows: an error, not a run of NaN.
    let err =
        GradientDescent::new(10.0).minimize(&mut FnObjective(|x: &[f64]| Ok::<_, Infallible>(quadratic(x))), &[5.0; 3]);
    assert!(matches!(err, Err(OptimError::NonFinite { .. })), "{err:?}");
}

#[test]
fn a_barrier_is_respected() {
    // −ln(1 − x²) + x: NaN outside (−1, 1). From 0 with an initial step that overshoots, L-BFGS must step back.
    let f = |x: &[f64]| {
        let v = x[0];
        if v.abs() >= 1.0 {
            Ok::<_, Infallible>((f64::NAN, vec![f64::NAN]))
        } else {
            Ok((-(1.0 - v * v).ln() + 3.0 * v, vec![2.0 * v / (1.0 - v * v) + 3.0]))
        }
    };
    let r = Lbfgs::default().minimize(&mut FnObjective(f), &[0.0]).unwrap();
    assert!(r.x[0] > -1.0 && r.x[0] < 0.0 && r.stop == StopReason::GradientTolerance, "{r:?}");
}

#[test]
fn bad_input_is_rejected() {
    let mut q = FnObjective(|x: &[f64]| Ok::<_, Infallible>(quadratic(x)));
    assert!(matches!(Lbfgs::default().minimize(&mut q, &[]), Err(OptimError::EmptyStart)));
    assert!(matches!(Lbfgs::default().minimize(&mut q, &[f64::NAN]), Err(OptimError::Options(_))));
    let bad_ls = Lbfgs { line_search: LineSearch { c1: 0.9, c2: 0.1, ..LineSearch::default() }, ..Lbfgs::default() };
    assert!(matches!(bad_ls.minimize(&mut q, &[1.0]), Err(OptimError::Options(_))));
    assert!(matches!(GradientDescent::new(-1.0).minimize(&mut q, &[1.0]), Err(OptimError::Options(_))));
    let short = |_: &[f64]| Ok::<_, Infallible>((1.0, vec![1.0]));
    let err = Lbfgs::default().minimize(&mut FnObjective(short), &[1.0, 2.0]).unwrap_err();
    assert!(matches!(err, OptimError::GradientLength { expected: 2, got: 1 }));
}

#[test]
fn stop_criteria_and_the_observer() {
    let mut q = FnObjective(|x: &[f64]| Ok::<_, Infallible>(rosenbrock(x)));
    let stop = Stop { max_iterations: 3, ..tight() };
    let r = Lbfgs::new(stop).minimize(&mut q, &[-1.2, 1.0]).unwrap();
    assert_eq!((r.stop, r.iterations, r.history.len()), (StopReason::MaxIterations, 3, 4));
    let stop = Stop { max_evaluations: 7, ..tight() };
    let r = Lbfgs::new(stop).minimize(&mut q, &[-1.2, 1.0]).unwrap();
    assert_eq!(r.stop, StopReason::MaxEvaluations);
    assert!(r.evaluations <= 7);
    let stop = Stop { cost_tol: 1e-3, ..tight() };
    let r = Lbfgs::new(stop).minimize(&mut q, &[-1.2, 1.0]).unwrap();
    assert_eq!(r.stop, StopReason::CostTolerance);
    let mut seen = vec![];
    let r = Lbfgs::new(tight())
        .minimize_with(&mut q, &[-1.2, 1.0], |rec, x| {
            seen.push((rec.iteration, x.to_vec()));
            if rec.iteration == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(r.stop, StopReason::Observer);
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].1, r.x);
    // Already optimal: no iteration at all.
    let r = Lbfgs::default().minimize(&mut q, &[1.0, 1.0]).unwrap();
    assert_eq!((r.stop, r.iterations, r.evaluations), (StopReason::GradientTolerance, 0, 1));
}

#[test]
fn gradient_descent_converges_on_a_quadratic() {
    // L = 2·1000 for the quadratic: a step of 1/L converges (slowly on the flat directions).
    let stop = Stop { max_iterations: 20_000, max_evaluations: 30_000, grad_tol: 1e-6, cost_tol: 0.0 };
    let mut obj = recorder(quadratic);
    let r = GradientDescent { step: 1.0 / 2000.0, stop }.minimize(&mut obj, &[0.0; 5]).unwrap();
    assert_eq!(r.stop, StopReason::GradientTolerance);
    assert!(r.x.iter().enumerate().all(|(i, v)| (v - i as f64).abs() < 1e-5));
    assert_eq!(r.evaluations, r.iterations + 1);
    assert_eq!(obj.points.len(), r.evaluations);
}

#[test]
fn memory_zero_is_steepest_descent_with_line_search() {
    let lbfgs = Lbfgs { memory: 0, stop: Stop { max_iterations: 5000, ..tight() }, ..Lbfgs::default() };
    let r = lbfgs.minimize(&mut recorder(quadratic), &[0.0; 3]).unwrap();
    assert!(r.x.iter().enumerate().all(|(i, v)| (v - i as f64).abs() < 1e-6), "{r:?}");
}

#[test]
fn a_run_saved_between_iterations_continues_bit_identically() {
    let lbfgs = Lbfgs::new(Stop { max_iterations: 30, ..tight() });
    let mut obj = recorder(rosenbrock);
    let straight = lbfgs.minimize(&mut obj, &[-1.2, 1.0, 0.3]).unwrap();
    let mut obj = recorder(rosenbrock);
    let mut state = lbfgs.start(&mut obj, &[-1.2, 1.0, 0.3]).unwrap();
    for _ in 0..7 {
        lbfgs.step(&mut state, &mut obj).unwrap();
    }
    // "Save" through a byte encoding, continue with a fresh objective (a restarted master).
    let bytes = postcard::to_allocvec(&state).unwrap();
    let mut restored: LbfgsState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(restored, state);
    let mut obj = recorder(rosenbrock);
    while restored.stopped().is_none() {
        lbfgs.step(&mut restored, &mut obj).unwrap();
    }
    assert_eq!(restored.result(), straight);
    assert!(matches!(lbfgs.step(&mut restored, &mut obj), Err(OptimError::Options(_))));

    let gd = GradientDescent { step: 1e-3, stop: Stop { max_iterations: 40, ..tight() } };
    let straight = gd.minimize(&mut recorder(quadratic), &[0.0; 4]).unwrap();
    let mut state = gd.start(&mut recorder(quadratic), &[0.0; 4]).unwrap();
    for _ in 0..13 {
        gd.step(&mut state, &mut recorder(quadratic)).unwrap();
    }
    let mut restored: GdState = postcard::from_bytes(&postcard::to_allocvec(&state).unwrap()).unwrap();
    while restored.stopped().is_none() {
        gd.step(&mut restored, &mut recorder(quadratic)).unwrap();
    }
    assert_eq!(restored.result(), straight);
}
