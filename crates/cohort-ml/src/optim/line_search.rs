//! The Moré–Thuente line search: a step satisfying the strong Wolfe conditions, found with safeguarded cubic and
//! quadratic interpolation (J. J. Moré and D. J. Thuente, "Line search algorithms with guaranteed sufficient
//! decrease", ACM TOMS 20(3), 1994).
//!
//! Along a direction `d` from `x` with `φ(α) = f(x + α d)`, `φ'(0) < 0`, it looks for `α` with
//! `φ(α) ≤ φ(0) + c1 α φ'(0)` (sufficient decrease) and `|φ'(α)| ≤ c2 |φ'(0)|` (curvature). It keeps an interval
//! `[stx, sty]` around a minimiser: `stx` is the best step so far, and the next trial comes from
//! [`Interval::update`], which picks between the minimiser of a cubic through both ends and of a quadratic, with
//! safeguards that force the interval to shrink. While no step has both sufficient decrease and a non-negative
//! slope (the "first stage"), it works on the auxiliary `ψ(α) = φ(α) − φ(0) − c1 α φ'(0)` as the paper
//! prescribes. A trial where the objective is NaN or infinite is treated as "too far": the step moves back
//! towards the best point and never goes that far again.

/// Parameters of the line search.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LineSearch {
    /// Sufficient-decrease constant `c1` (Armijo), in (0, c2).
    pub c1: f64,
    /// Curvature constant `c2`, in (c1, 1); 0.9 suits quasi-Newton directions.
    pub c2: f64,
    /// Relative width of the bracketing interval below which the search stops.
    pub xtol: f64,
    /// Evaluations per search at most.
    pub max_evaluations: usize,
    /// Largest step allowed.
    pub max_step: f64,
}

impl Default for LineSearch {
    /// `c1 = 1e-4`, `c2 = 0.9`, `xtol = 1e-12`, 20 evaluations, steps up to 1e10.
    fn default() -> Self {
        LineSearch { c1: 1e-4, c2: 0.9, xtol: 1e-12, max_evaluations: 20, max_step: 1e10 }
    }
}

impl LineSearch {
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(0.0 < self.c1 && self.c1 < self.c2 && self.c2 < 1.0) {
            return Err(format!("line search needs 0 < c1 < c2 < 1 (c1 = {}, c2 = {})", self.c1, self.c2));
        }
        if !(self.xtol >= 0.0 && self.max_step > 0.0 && self.max_evaluations > 0) {
            return Err("line search needs xtol ≥ 0, max_step > 0 and max_evaluations ≥ 1".into());
        }
        Ok(())
    }
}

/// The value of `φ` and `φ'` at a trial step, or `None` if the objective was not finite there.
pub(crate) type Trial = Option<(f64, f64)>;

/// How a search ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Found {
    /// The step satisfies the strong Wolfe conditions.
    Wolfe(f64),
    /// The search stopped (evaluation budget, interval too small, rounding) without a Wolfe step; this is the
    /// trial step with the lowest cost, which is below `φ(0)`.
    Decrease(f64),
    /// No trial had a cost below `φ(0)`. `all_non_finite` if the objective was NaN/∞ at every trial.
    Nothing {
        /// Every trial was non-finite.
        all_non_finite: bool,
    },
}

/// Runs the search from step `step0` with at most `budget` evaluations. `phi(α)` evaluates a trial (and may
/// fail); `f0 = φ(0)`, `g0 = φ'(0) < 0`.
pub(crate) fn search<E>(
    params: &LineSearch,
    f0: f64,
    g0: f64,
    step0: f64,
    budget: usize,
    mut phi: impl FnMut(f64) -> Result<Trial, E>,
) -> Result<Found, E> {
    let (c1, c2) = (params.c1, params.c2);
    let (min_step, max_step) = (0.0, params.max_step);
    let mut iv = Interval { stx: 0.0, fx: f0, gx: g0, sty: 0.0, fy: f0, gy: g0, bracketed: false };
    let mut first_stage = true;
    let mut width = max_step - min_step;
    let mut width_before = 2.0 * width;
    let mut step = step0.clamp(min_step, max_step);
    let (mut lo, mut hi) = (0.0, step + 4.0 * step);
    // Smallest step at which the objective was not finite: never go that far again.
    let mut cap = f64::INFINITY;
    let mut best: Option<(f64, f64)> = None;
    let mut finite_trials = 0;

    for _ in 0..budget.min(params.max_evaluations) {
        let Some((f, g)) = phi(step)? else {
            cap = cap.min(step);
            step = iv.stx + 0.5 * (step - iv.stx);
            if step <= iv.stx || !step.is_finite() {
                break;
            }
            continue;
        };
        finite_trials += 1;
        if best.is_none_or(|(_, fb)| f < fb) {
            best = Some((step, f));
        }
        let f_test = f0 + step * c1 * g0;
        if first_stage && f <= f_test && g >= c1.min(c2) * g0 {
            first_stage = false;
        }
        if f <= f_test && g.abs() <= -c2 * g0 {
            return Ok(Found::Wolfe(step));
        }
        // No further progress possible: rounding errors, interval below tolerance, or pinned at a bound.
        if (iv.bracketed && (step <= lo || step >= hi || hi - lo <= params.xtol * hi))
            || (step == max_step && f <= f_test && g <= c1 * g0)
            || (step == min_step && (f > f_test || g >= c1 * g0))
        {
            break;
        }

        if first_stage && f <= iv.fx && f > f_test {
            // Work on ψ(α) = φ(α) − α c1 φ'(0), whose values and slopes are shifted by α·c1·g0 and c1·g0.
            let shift = c1 * g0;
            let mut m = Interval {
                stx: iv.stx,
                fx: iv.fx - iv.stx * shift,
                gx: iv.gx - shift,
                sty: iv.sty,
                fy: iv.fy - iv.sty * shift,
                gy: iv.gy - shift,
                bracketed: iv.bracketed,
            };
            step = m.update(step, f - step * shift, g - shift, lo, hi);
            iv = Interval {
                stx: m.stx,
                fx: m.fx + m.stx * shift,
                gx: m.gx + shift,
                sty: m.sty,
                fy: m.fy + m.sty * shift,
                gy: m.gy + shift,
                bracketed: m.bracketed,
            };
        } else {
            step = iv.update(step, f, g, lo, hi);
        }

        if iv.bracketed {
            // Force the interval to shrink by at least a third every two steps; bisect otherwise.
            if (iv.sty - iv.stx).abs() >= 0.66 * width_before {
                step = iv.stx + 0.5 * (iv.sty - iv.stx);
            }
            width_before = width;
            width = (iv.sty - iv.stx).abs();
            lo = iv.stx.min(iv.sty);
            hi = iv.stx.max(iv.sty);
        } else {
            lo = step + 1.1 * (step - iv.stx);
            hi = step + 4.0 * (step - iv.stx);
        }
        step = step.clamp(min_step, max_step);
        if step >= cap {
            step = iv.stx + 0.5 * (cap - iv.stx);
        }
        if iv.bracketed && (step <= lo || step >= hi || hi - lo <= params.xtol * hi) {
            // Further progress is impossible: the best step so far is the answer.
            break;
        }
        if !step.is_finite() {
            break;
        }
    }
    Ok(match best {
        Some((step, f)) if f < f0 => Found::Decrease(step),
        _ => Found::Nothing { all_non_finite: finite_trials == 0 },
    })
}

/// The interval of uncertainty: `stx` is the step with the lowest value so far, `sty` the other end; values and
/// derivatives at both.
#[derive(Debug, Clone, Copy)]
struct Interval {
    stx: f64,
    fx: f64,
    gx: f64,
    sty: f64,
    fy: f64,
    gy: f64,
    bracketed: bool,
}

/// `max(|a|, |b|, |c|)`: the scale used to keep the cubic's discriminant from overflowing.
fn scale3(a: f64, b: f64, c: f64) -> f64 {
    a.abs().max(b.abs()).max(c.abs())
}

/// Square root of a quantity that is mathematically ≥ 0 but may round below.
fn sqrt0(v: f64) -> f64 {
    v.max(0.0).sqrt()
}

impl Interval {
    /// Takes the trial `(stp, fp, dp)`, returns the next trial step within `[lo, hi]`, and updates the interval
    /// (the four cases of Moré–Thuente, section 4).
    fn update(&mut self, stp: f64, fp: f64, dp: f64, lo: f64, hi: f64) -> f64 {
        let Interval { stx, fx, gx: dx, sty, fy, gy: dy, .. } = *self;
        let sign_change = dp * dx.signum() < 0.0;
        let next = if fp > fx {
            // Case 1: a higher value. The minimiser is bracketed; take the cubic step if it is closer to stx than
            // the quadratic one, else the average of the two.
            let theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp;
            let s = scale3(theta, dx, dp);
            let mut gamma = s * sqrt0((theta / s) * (theta / s) - (dx / s) * (dp / s));
            if stp < stx {
                gamma = -gamma;
            }
            let p = (gamma - dx) + theta;
            let q = ((gamma - dx) + gamma) + dp;
            let cubic = stx + (p / q) * (stp - stx);
            let quadratic = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx);
            self.bracketed = true;
            if (cubic - stx).abs() < (quadratic - stx).abs() {
                cubic
            } else {
                cubic + (quadratic - cubic) / 2.0
            }
        } else if sign_change {
            // Case 2: a lower value and a derivative of the opposite sign. Bracketed; take the step (cubic or
            // secant) farther from stp.
            let theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp;
            let s = scale3(theta, dx, dp);
            let mut gamma = s * sqrt0((theta / s) * (theta / s) - (dx / s) * (dp / s));
            if stp > stx {
                gamma = -gamma;
            }
            let p = (gamma - dp) + theta;
            let q = ((gamma - dp) + gamma) + dx;
            let cubic = stp + (p / q) * (stx - stp);
            let secant = stp + (dp / (dp - dx)) * (stx - stp);
            self.bracketed = true;
            if (cubic - stp).abs() > (secant - stp).abs() {
                cubic
            } else {
                secant
            }
        } else if dp.abs() < dx.abs() {
            // Case 3: a lower value, same-sign derivative whose magnitude decreases. The cubic step is used only
            // if it heads towards stx (or the cubic has no minimiser in that direction: then the bound).
            let theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp;
            let s = scale3(theta, dx, dp);
            let mut gamma = s * sqrt0((theta / s) * (theta / s) - (dx / s) * (dp / s));
            if stp > stx {
                gamma = -gamma;
            }
            let p = (gamma - dp) + theta;
            let q = (gamma + (dx - dp)) + gamma;
            let r = p / q;
            let cubic = if r < 0.0 && gamma != 0.0 {
                stp + r * (stx - stp)
            } else if stp > stx {
                hi
            } else {
                lo
            };
            let secant = stp + (dp / (dp - dx)) * (stx - stp);
            if self.bracketed {
                // Stay within 66% of the way to the far end of the interval.
                let pick = if (cubic - stp).abs() < (secant - stp).abs() { cubic } else { secant };
                let limit = stp + 0.66 * (sty - stp);
                if stp > stx {
                    pick.min(limit)
                } else {
                    pick.max(limit)
                }
            } else {
                let pick = if (cubic - stp).abs() > (secant - stp).abs() { cubic } else { secant };
                pick.min(hi).max(lo)
            }
        } else if self.bracketed {
            // Case 4: a lower value, same-sign derivative that does not decrease in magnitude, bracketed: the
            // minimiser of the cubic through stp and sty.
            let theta = 3.0 * (fp - fy) / (sty - stp) + dy + dp;
            let s = scale3(theta, dy, dp);
            let mut gamma = s * sqrt0((theta / s) * (theta / s) - (dy / s) * (dp / s));
            if stp > sty {
                gamma = -gamma;
            }
            let p = (gamma - dp) + theta;
            let q = ((gamma - dp) + gamma) + dy;
            stp + (p / q) * (sty - stp)
        } else if stp > stx {
            // Case 4, not bracketed: extrapolate to the bound.
            hi
        } else {
            lo
        };

        // The new interval: a higher value becomes the far end; a lower one the best point (and if the slope
        // changed sign, the old best point becomes the far end).
        if fp > fx {
            self.sty = stp;
            self.fy = fp;
            self.gy = dp;
        } else {
            if sign_change {
                self.sty = stx;
                self.fy = fx;
                self.gy = dx;
            }
            self.stx = stp;
            self.fx = fp;
            self.gx = dp;
        }
        if next.is_finite() {
            next
        } else if self.bracketed {
            0.5 * (self.stx + self.sty)
        } else {
            hi
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(phi: impl Fn(f64) -> (f64, f64), step0: f64) -> (Found, usize) {
        let (f0, g0) = phi(0.0);
        let mut n = 0;
        let found = search::<()>(&LineSearch::default(), f0, g0, step0, 100, |a| {
            n += 1;
            Ok(Some(phi(a)))
        })
        .unwrap();
        (found, n)
    }

    fn assert_wolfe(phi: impl Fn(f64) -> (f64, f64), step: f64) {
        let p = LineSearch::default();
        let (f0, g0) = phi(0.0);
        let (f, g) = phi(step);
        assert!(f <= f0 + p.c1 * step * g0, "no sufficient decrease at {step}");
        assert!(g.abs() <= -p.c2 * g0, "curvature fails at {step}: {g}");
    }

    #[test]
    fn quadratic_is_solved_at_once_from_the_right_step() {
        let phi = |a: f64| ((a - 2.0) * (a - 2.0), 2.0 * (a - 2.0));
        let (found, n) = run(phi, 2.0);
        assert_eq!(found, Found::Wolfe(2.0));
        assert_eq!(n, 1);
    }

    #[test]
    fn extrapolates_from_a_tiny_step_and_interpolates_from_a_huge_one() {
        let phi = |a: f64| ((a - 3.0).powi(4) + a, 4.0 * (a - 3.0).powi(3) + 1.0);
        for step0 in [1e-3, 1.0, 1e3] {
            let (found, n) = run(phi, step0);
            let Found::Wolfe(step) = found else { panic!("{found:?} from {step0}") };
            assert_wolfe(phi, step);
            assert!(n <= 12, "{n} evaluations from {step0}");
        }
    }

    #[test]
    fn the_papers_test_functions_converge() {
        // Moré–Thuente's first two test functions, with β = 2 and β = 0.004.
        let f1 = |a: f64| (-a / (a * a + 2.0), (a * a - 2.0) / ((a * a + 2.0) * (a * a + 2.0)));
        let f2 = |a: f64| {
            ((a + 0.004).powi(5) - 2.0 * (a + 0.004).powi(4), {
                let b = a + 0.004;
                5.0 * b.powi(4) - 8.0 * b.powi(3)
            })
        };
        for step0 in [1e-3, 1e-1, 10.0, 1e3] {
            for (k, phi) in [&f1 as &dyn Fn(f64) -> (f64, f64), &f2].into_iter().enumerate() {
                let (found, _) = run(phi, step0);
                let Found::Wolfe(step) = found else { panic!("function {k} from {step0}: {found:?}") };
                assert_wolfe(phi, step);
            }
        }
    }

    #[test]
    fn non_finite_trials_step_back() {
        // Defined only below 1, minimum at 0.8: from a step of 10 the search halves back, then converges.
        let phi = |a: f64| if a < 1.0 { Some(((a - 0.8) * (a - 0.8), 2.0 * (a - 0.8))) } else { None };
        let mut calls = vec![];
        let found = search::<()>(&LineSearch::default(), 0.64, -1.6, 10.0, 100, |a| {
            calls.push(a);
            Ok(phi(a))
        })
        .unwrap();
        let Found::Wolfe(step) = found else { panic!("{found:?} after {calls:?}") };
        assert!(step < 1.0 && calls.iter().filter(|&&a| a >= 1.0).count() <= 4, "{calls:?}");
        // NaN everywhere but at 0.
        let found = search::<()>(&LineSearch::default(), 1.0, -1.0, 1.0, 100, |_| Ok(None)).unwrap();
        assert_eq!(found, Found::Nothing { all_non_finite: true });
        // NaN from 0.3 on, decreasing before: the search ends below 0.3.
        let found = search::<()>(&LineSearch::default(), 0.0, -1.0, 1.0, 100, |a| {
            Ok(if a >= 0.3 { None } else { Some((-a, -1.0)) })
        })
        .unwrap();
        match found {
            Found::Decrease(a) | Found::Wolfe(a) => assert!(a < 0.3 && a > 0.0, "{a}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_propagate() {
        let r = search(&LineSearch::default(), 1.0, -1.0, 1.0, 10, |_| Err("boom"));
        assert_eq!(r, Err("boom"));
    }
}
