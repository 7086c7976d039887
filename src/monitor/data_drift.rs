//! Data drift of one feature: a reference window (the champion's training
//! data) against a window of recent samples.
//!
//! - [`psi`]: population stability index over reference-quantile bins
//!   (Siddiqi, *Credit Risk Scorecards*, 2006: 0.1 some shift, 0.25 a major one).
//! - [`ks_2samp`]: two-sample Kolmogorov–Smirnov statistic (as
//!   `scipy.stats.ks_2samp`) with the asymptotic p-value of the Kolmogorov
//!   distribution (`scipy.special.kolmogorov(sqrt(en)·D)`, en = n·m/(n+m)).
//!
//! Missing values (NaN) are dropped from both windows first. Identical windows
//! give PSI 0 and D 0 (p = 1), so they never raise an alarm.

use serde::Serialize;

fn present(x: &[f32]) -> Vec<f64> {
    let mut v: Vec<f64> = x
        .iter()
        .filter(|v| !v.is_nan())
        .map(|&v| f64::from(v))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// numpy's `quantile(a, q)` (method "linear") of sorted `a`.
fn quantile_sorted(a: &[f64], q: f64) -> f64 {
    let n = a.len() as f64;
    // numpy's virtual index for the linear method: (n − 1)·q.
    let h = ((n - 1.0) * q).clamp(0.0, n - 1.0);
    let lo = h.floor();
    let t = h - lo;
    let lo = lo as usize;
    let hi = (lo + 1).min(a.len() - 1);
    let (x0, x1) = (a[lo], a[hi]);
    let diff = x1 - x0;
    // numpy's `_lerp`: from the nearer end.
    if t >= 0.5 {
        x1 - diff * (1.0 - t)
    } else {
        x0 + diff * t
    }
}

/// Population stability index of `current` against `reference` over `bins`
/// bins whose edges are the reference's interior quantiles k/bins; each
/// proportion is floored at 1e-4. `PSI = Σ (p_cur − p_ref) · ln(p_cur / p_ref)`.
///
/// `None` when either window is empty after dropping NaN, or `bins < 2`.
pub fn psi(reference: &[f32], current: &[f32], bins: usize) -> Option<f64> {
    let (r, c) = (present(reference), present(current));
    if r.is_empty() || c.is_empty() || bins < 2 {
        return None;
    }
    let edges: Vec<f64> = (1..bins)
        .map(|k| quantile_sorted(&r, k as f64 / bins as f64))
        .collect();
    let proportions = |x: &[f64]| {
        let mut counts = vec![0u64; bins];
        for v in x {
            counts[edges.partition_point(|e| e <= v)] += 1;
        }
        counts
            .iter()
            .map(|&k| (k as f64 / x.len() as f64).max(1e-4))
            .collect::<Vec<f64>>()
    };
    let (pr, pc) = (proportions(&r), proportions(&c));
    Some(
        pr.iter()
            .zip(&pc)
            .map(|(r, c)| (c - r) * (c / r).ln())
            .sum(),
    )
}

/// Result of [`ks_2samp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KsResult {
    /// D = sup |F_a − F_b|.
    pub statistic: f64,
    /// Asymptotic two-sided p-value.
    pub p_value: f64,
}

/// Two-sample Kolmogorov–Smirnov test (two-sided). `None` when either sample
/// is empty after dropping NaN.
pub fn ks_2samp(a: &[f32], b: &[f32]) -> Option<KsResult> {
    let (a, b) = (present(a), present(b));
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() || j < b.len() {
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => x.min(y),
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => break,
        };
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / na - j as f64 / nb).abs());
    }
    let (m, n) = if na >= nb { (na, nb) } else { (nb, na) };
    let en = m * n / (m + n);
    Some(KsResult {
        statistic: d,
        p_value: kolmogorov_sf(en.sqrt() * d),
    })
}

/// Survival function of the Kolmogorov distribution, P(K > y).
fn kolmogorov_sf(y: f64) -> f64 {
    if y <= 0.0 {
        return 1.0;
    }
    if y < 1.0 {
        // CDF = √(2π)/y · Σ exp(−(2k−1)²π²/(8y²)), converges fast for small y.
        let c = -std::f64::consts::PI.powi(2) / (8.0 * y * y);
        let s: f64 = (1..=20)
            .map(|k| (c * f64::from(2 * k - 1).powi(2)).exp())
            .sum();
        return (1.0 - (2.0 * std::f64::consts::PI).sqrt() / y * s).clamp(0.0, 1.0);
    }
    let s: f64 = (1..=100)
        .map(|k| {
            let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
            sign * (-2.0 * f64::from(k * k) * y * y).exp()
        })
        .sum();
    (2.0 * s).clamp(0.0, 1.0)
}

/// Data drift of one feature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureDrift {
    pub feature: String,
    pub psi: Option<f64>,
    pub ks_statistic: Option<f64>,
    pub ks_p_value: Option<f64>,
    /// PSI above `psi_threshold` or KS p-value below `ks_alpha`.
    pub drifted: bool,
}

/// Compares `current` with `reference` feature by feature (rows of
/// `features.len()` values, NaN = missing).
pub fn compare(
    features: &[String],
    reference: &[Vec<f32>],
    current: &[Vec<f32>],
    bins: usize,
    psi_threshold: f64,
    ks_alpha: f64,
) -> Vec<FeatureDrift> {
    features
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let column = |rows: &[Vec<f32>]| {
                rows.iter()
                    .filter_map(|r| r.get(j).copied())
                    .collect::<Vec<f32>>()
            };
            let (r, c) = (column(reference), column(current));
            let p = psi(&r, &c, bins);
            let ks = ks_2samp(&r, &c);
            FeatureDrift {
                feature: name.clone(),
                psi: p,
                ks_statistic: ks.map(|k| k.statistic),
                ks_p_value: ks.map(|k| k.p_value),
                drifted: p.is_some_and(|v| v > psi_threshold)
                    || ks.is_some_and(|k| k.p_value < ks_alpha),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_windows_show_no_drift() {
        let x: Vec<f32> = (0..500).map(|i| ((i * 7919) % 997) as f32 / 10.0).collect();
        assert_eq!(psi(&x, &x, 10), Some(0.0));
        let ks = ks_2samp(&x, &x).unwrap();
        assert_eq!((ks.statistic, ks.p_value), (0.0, 1.0));
        assert_eq!(psi(&[f32::NAN], &x, 10), None);
    }

    #[test]
    fn kolmogorov_tail_values() {
        // scipy.special.kolmogorov(1.0), (0.5), (0.2) (scipy 1.17.1).
        assert!((kolmogorov_sf(1.0) - 0.269_999_671_677_354_56).abs() < 1e-12);
        assert!((kolmogorov_sf(0.5) - 0.963_945_243_664_875_1).abs() < 1e-12);
        assert!((kolmogorov_sf(0.2) - 1.0).abs() < 1e-12);
    }
}
