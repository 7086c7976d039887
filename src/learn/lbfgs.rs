//! Limited-memory BFGS for smooth, unconstrained objectives.
//!
//! Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), Algorithm 7.4
//! (two-loop recursion) and 7.5, with a backtracking line search on the
//! Armijo condition (Algorithm 3.1, c1 = 1e-4). A curvature pair is kept only
//! when `sᵀy > 1e-12·‖s‖·‖y‖`, which holds for strictly convex objectives
//! such as L2-penalised logistic regression. The stopping rules are scipy's
//! L-BFGS-B ones with scikit-learn's settings for `LogisticRegression`
//! (`gtol = tol` on ‖∇f‖∞, `ftol = 64·ε` on the relative decrease). The
//! history is a ring of preallocated vectors: an iteration allocates nothing.

/// Why the optimiser stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// ‖∇f‖∞ fell below the tolerance.
    Converged,
    /// The last step decreased f by at most [`FTOL`]` · max(|f_old|, |f|, 1)`
    /// (scipy's L-BFGS-B `ftol` test, as scikit-learn's `LogisticRegression`
    /// sets it).
    FunctionTolerance,
    /// The line search could not decrease f any more (at machine precision).
    NoProgress,
    /// The iteration budget ran out.
    MaxIter,
    /// The cancellation check asked to stop.
    Cancelled,
}

/// The relative decrease under which [`minimize`] stops: `64·ε`, the `ftol`
/// scikit-learn passes to scipy's L-BFGS-B for `LogisticRegression`
/// (`sklearn/linear_model/_logistic.py`), so both stop at the same test.
pub const FTOL: f64 = 64.0 * f64::EPSILON;

/// Result of [`minimize`].
#[derive(Debug, Clone)]
pub struct Outcome {
    pub x: Vec<f64>,
    pub f: f64,
    pub iterations: usize,
    pub grad_inf_norm: f64,
    pub stop: Stop,
}

/// Minimises `f` from `x0`. `fg(x, grad)` returns f(x) and writes ∇f(x) into
/// `grad`. Stops when ‖∇f‖∞ ≤ `gtol`, when a step decreases f by at most
/// `FTOL · max(|f_old|, |f|, 1)`, after `max_iter` iterations, when no step
/// decreases f, or when `cancelled()` returns true (checked each iteration).
pub fn minimize(
    x0: Vec<f64>,
    mut fg: impl FnMut(&[f64], &mut [f64]) -> f64,
    max_iter: usize,
    gtol: f64,
    cancelled: impl Fn() -> bool,
) -> Outcome {
    const M: usize = 10;
    let n = x0.len();
    let mut x = x0;
    let mut g = vec![0.0; n];
    let mut f = fg(&x, &mut g);
    // The last `len` curvature pairs, oldest first from slot `(next + M − len) % M`.
    let mut s_hist = vec![vec![0.0; n]; M];
    let mut y_hist = vec![vec![0.0; n]; M];
    let mut rho_hist = [0.0; M];
    let mut alpha = [0.0; M];
    let (mut len, mut next) = (0, 0);
    let mut d = vec![0.0; n];
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    let inf_norm = |v: &[f64]| v.iter().fold(0.0f64, |a, b| a.max(b.abs()));
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).sum::<f64>();
    let mut iterations = 0;
    let stop = loop {
        if inf_norm(&g) <= gtol {
            break Stop::Converged;
        }
        if iterations >= max_iter {
            break Stop::MaxIter;
        }
        if cancelled() {
            break Stop::Cancelled;
        }
        // Two-loop recursion: d = -H g.
        d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
        let slot = |i: usize| (next + M - len + i) % M;
        for i in (0..len).rev() {
            let j = slot(i);
            alpha[j] = rho_hist[j] * dot(&s_hist[j], &d);
            d.iter_mut()
                .zip(&y_hist[j])
                .for_each(|(di, yi)| *di -= alpha[j] * yi);
        }
        let gamma = if len > 0 {
            let j = slot(len - 1);
            dot(&s_hist[j], &y_hist[j]) / dot(&y_hist[j], &y_hist[j])
        } else {
            1.0 / inf_norm(&g).max(1.0)
        };
        d.iter_mut().for_each(|di| *di *= gamma);
        for i in 0..len {
            let j = slot(i);
            let beta = rho_hist[j] * dot(&y_hist[j], &d);
            d.iter_mut()
                .zip(&s_hist[j])
                .for_each(|(di, si)| *di += (alpha[j] - beta) * si);
        }
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            len = 0;
            d.iter_mut().zip(&g).for_each(|(di, gi)| *di = -gi);
            slope = dot(&g, &d);
        }
        // Backtracking line search on the Armijo condition.
        let mut step = 1.0;
        let mut f_new;
        let mut accepted = false;
        let mut small_decrease = false;
        for _ in 0..60 {
            x_new
                .iter_mut()
                .zip(&x)
                .zip(&d)
                .for_each(|((xn, xi), di)| *xn = xi + step * di);
            f_new = fg(&x_new, &mut g_new);
            if f_new.is_finite() && f_new <= f + 1e-4 * step * slope {
                accepted = true;
                small_decrease = f - f_new <= FTOL * f.abs().max(f_new.abs()).max(1.0);
                // s = x_new − x, y = g_new − g: kept when the curvature
                // condition holds, in the next slot (the oldest once full).
                let (mut sy, mut ss, mut yy) = (0.0, 0.0, 0.0);
                let pairs = || x_new.iter().zip(&x).zip(g_new.iter().zip(&g));
                for ((xn, xo), (gn, go)) in pairs() {
                    let (si, yi) = (xn - xo, gn - go);
                    sy += si * yi;
                    ss += si * si;
                    yy += yi * yi;
                }
                if sy > 1e-12 * ss.sqrt() * yy.sqrt() {
                    let slots = s_hist[next].iter_mut().zip(y_hist[next].iter_mut());
                    for ((si, yi), ((xn, xo), (gn, go))) in slots.zip(pairs()) {
                        (*si, *yi) = (xn - xo, gn - go);
                    }
                    rho_hist[next] = 1.0 / sy;
                    next = (next + 1) % M;
                    len = (len + 1).min(M);
                }
                std::mem::swap(&mut x, &mut x_new);
                std::mem::swap(&mut g, &mut g_new);
                f = f_new;
                break;
            }
            step *= 0.5;
        }
        iterations += 1;
        if !accepted {
            break Stop::NoProgress;
        }
        if small_decrease && inf_norm(&g) > gtol {
            break Stop::FunctionTolerance;
        }
    };
    Outcome {
        grad_inf_norm: inf_norm(&g),
        x,
        f,
        iterations,
        stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosenbrock_minimum_is_one_one() {
        // f(a, b) = (1 − a)² + 100 (b − a²)², minimum 0 at (1, 1).
        let out = minimize(
            vec![-1.2, 1.0],
            |x, g| {
                let (a, b) = (x[0], x[1]);
                g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
                g[1] = 200.0 * (b - a * a);
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
            },
            1000,
            1e-10,
            || false,
        );
        assert!(
            matches!(out.stop, Stop::Converged | Stop::FunctionTolerance),
            "{:?}",
            out.stop
        );
        assert!(
            (out.x[0] - 1.0).abs() < 1e-6 && (out.x[1] - 1.0).abs() < 1e-6,
            "{:?}",
            out.x
        );
        assert!(out.f < 1e-12, "{}", out.f);
    }
}
