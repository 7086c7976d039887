//! Data drift of one feature: a reference window (the champion's training
//! data) against a window of recent samples.
//!
//! - [`psi`]: population stability index over reference-quantile bins
//!   (Siddiqi, *Credit Risk Scorecards*, 2006: 0.1 some shift, 0.25 a major one).
//! - [`ks_2samp`]: two-sample Kolmogorov–Smirnov statistic (as
//!   `scipy.stats.ks_2samp`) with the asymptotic p-value of the Kolmogorov
//!   distribution (`scipy.special.kolmogorov(sqrt(en)·D)`, en = n·m/(n+m)).
//!
//! - [`compare_dependent`]: the drift decision per feature, the one rule of
//!   `edgeloop drift` and of the daemon's `GET /v1/pipelines/{name}/drift`:
//!   KS and a test of means at effective sample sizes (serial dependence)
//!   with an effect-size floor, or a share of the window outside the
//!   reference's range.
//!
//! Missing values (NaN) are dropped from both windows first. Identical windows
//! give PSI 0 and D 0 (p = 1), so they never raise an alarm.

use serde::Serialize;

fn present(x: &[f32]) -> Vec<f64> {
    let mut v = in_order(x);
    v.sort_by(f64::total_cmp);
    v
}

/// The values of `x` but NaN, in time order, as f64.
fn in_order(x: &[f32]) -> Vec<f64> {
    x.iter()
        .filter(|v| !v.is_nan())
        .map(|&v| f64::from(v))
        .collect()
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

/// Lag-1 autocorrelation of `x` in time order (NaN dropped first): the
/// Pearson correlation of the pairs `(x[t], x[t+1])`, as
/// `numpy.corrcoef(x[:-1], x[1:])[0, 1]`. 0 for fewer than 3 values or a
/// constant series.
pub fn lag1_autocorrelation(x: &[f32]) -> f64 {
    let v = in_order(x);
    if v.len() < 3 {
        return 0.0;
    }
    let (a, b) = (&v[..v.len() - 1], &v[1..]);
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa <= 0.0 || sbb <= 0.0 {
        return 0.0;
    }
    (sab / (saa * sbb).sqrt()).clamp(-1.0, 1.0)
}

/// Lags [`autocorrelation_time`] sums at most (its cost is `n` times
/// this per series).
pub const MAX_LAG: usize = 1000;

/// Integrated autocorrelation time `τ = 1 + 2 Σ_k ρ_k` of `x` in time order
/// (NaN dropped first), by Geyer's initial monotone positive sequence
/// (Geyer, "Practical Markov chain Monte Carlo", *Statistical Science* 7,
/// 1992, §3.3): with the autocorrelations `ρ_k = c_k / c_0`, `c_k = Σ_t
/// (x_t − x̄)(x_{t+k} − x̄) / n` (numpy's biased estimator, as Stan and
/// ArviZ use), the pair sums `Γ_m = ρ_{2m} + ρ_{2m+1}` are added while
/// positive, each capped by the one before (the sequence of a reversible
/// chain is positive and decreasing), up to lag [`MAX_LAG`]: `τ = −1 + 2
/// Σ Γ_m`. The effective sample size of a mean is `n / τ`. For an AR(1)
/// series it estimates `(1 + ρ) / (1 − ρ)` ([`ar1_time`], from the lag-1
/// autocorrelation alone),
/// and unlike it, it also counts the slow wander of a series whose lag-1
/// autocorrelation is small (noise over a drifting level). At least 1;
/// 1 for fewer than 3 values or a constant series.
pub fn autocorrelation_time(x: &[f32]) -> f64 {
    let v = in_order(x);
    let n = v.len();
    if n < 3 {
        return 1.0;
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let d: Vec<f64> = v.iter().map(|x| x - mean).collect();
    let c0 = d.iter().map(|x| x * x).sum::<f64>();
    if c0 <= 0.0 {
        return 1.0;
    }
    let rho = |k: usize| {
        d[..n - k]
            .iter()
            .zip(&d[k..])
            .map(|(a, b)| a * b)
            .sum::<f64>()
            / c0
    };
    let (mut sum, mut previous) = (0.0, f64::INFINITY);
    let mut m = 0;
    while 2 * m + 1 < n && 2 * m + 1 <= MAX_LAG {
        let gamma = if m == 0 { 1.0 } else { rho(2 * m) } + rho(2 * m + 1);
        if gamma <= 0.0 {
            break;
        }
        let gamma = gamma.min(previous);
        sum += gamma;
        previous = gamma;
        m += 1;
    }
    (2.0 * sum - 1.0).max(1.0)
}

/// How [`compare_dependent`] sizes the serial dependence of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dependence {
    /// [`autocorrelation_time`]: every lag up to where the
    /// autocorrelations stop being positive.
    InitialPositive,
    /// The lag-1 autocorrelation as an AR(1) process's,
    /// `τ = (1 + ρ) / (1 − ρ)` ([`ar1_time`]).
    Lag1,
    /// The larger of the two (the default): the initial positive sequence
    /// of a short window of a nearly non-stationary series stops early
    /// (its estimated autocorrelations must sum to −1/2 around the window's
    /// own mean), which the lag-1 time does not; the lag-1 time misses a
    /// slow wander under fast noise, which the sum does not.
    Larger,
}

/// Autocorrelation time of an AR(1) series with lag-1 autocorrelation
/// `rho`: `(1 + ρ) / (1 − ρ)` (the variance inflation of a mean under AR(1)
/// dependence; e.g. Wilks, *Statistical Methods in the Atmospheric
/// Sciences*, 3rd ed., eq. 5.12), for 0 < ρ < 1; 1 for ρ ≤ 0, infinite at
/// ρ = 1.
pub fn ar1_time(rho: f64) -> f64 {
    if rho <= 0.0 {
        1.0
    } else if rho >= 1.0 {
        f64::INFINITY
    } else {
        (1.0 + rho) / (1.0 - rho)
    }
}

/// Effective sample size of `n` readings `tau` readings apart per
/// independent one: `n / τ`, at least 2 (or `n` when fewer), at most `n`.
pub fn effective_sample_size(n: usize, tau: f64) -> f64 {
    let n = n as f64;
    (n / tau).clamp(2.0_f64.min(n), n)
}

/// Settings of [`compare_dependent`] (`edgeloop drift` and the daemon's
/// `GET /v1/pipelines/{name}/drift`, `[pipelines.drift]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DependentDriftConfig {
    /// PSI bins.
    pub bins: usize,
    /// Significance of each test (KS, means) at the effective sample sizes.
    pub alpha: f64,
    /// Effect-size floor of a significant change: PSI at least this, or …
    pub psi_floor: f64,
    /// … the mean moved by at least this many reference standard
    /// deviations.
    pub shift_floor: f64,
    /// A window with at least this share of its readings outside the
    /// reference's range [min, max] drifts whatever the tests say (the
    /// model would extrapolate on that share); `None` (the default): the
    /// share is reported, never a drift by itself.
    pub range_floor: Option<f64>,
    /// How the effective sample sizes count serial dependence.
    pub dependence: Dependence,
}

/// The defaults were chosen on the stationary stretches of the shipped data
/// and on seeded AR(1) streams (`benches/drift_false_alarms.py`, its output
/// beside it; BENCHMARKS.md "Data drift"): with a reference of 2,000
/// readings and windows of 500 every 250, 6 of 117 windows flagged on the
/// anomaly-free NAB stretches (5 of them the ambient temperature's seasonal
/// change, shifts of 0.9–1.5 sd significant at their effective sizes),
/// 1 of 38 on the machine-temperature run, at most 1 of 31 on AR(1) streams
/// without change (φ ≤ 0.98), and a mean shift of one standard deviation
/// flagged in 19, 19 and 17 of 19 windows at φ = 0, 0.5, 0.9.
impl Default for DependentDriftConfig {
    fn default() -> Self {
        Self {
            bins: 10,
            alpha: 1e-4,
            psi_floor: 1.2,
            shift_floor: 0.75,
            range_floor: None,
            dependence: Dependence::Larger,
        }
    }
}

/// How readings are grouped into seasons for a seasonal reference
/// ([`seasonal_reference`]). Times are the readings' timestamps in ms since
/// the Unix epoch, read as the sensor wrote them (a naive local time is
/// taken as UTC, so its hour is the hour written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Season {
    /// No seasonal reference: every reference reading.
    None,
    /// Hour of day (24 buckets).
    HourOfDay,
    /// Hour of day on weekdays and on weekends (48 buckets): nights with
    /// nights, Saturdays and Sundays with weekend days.
    HourAndWeekend,
    /// Hour of the week (168 buckets, Monday 00:00 first).
    HourOfWeek,
}

/// The season bucket of a timestamp (ms since the Unix epoch): for
/// [`Season::HourOfDay`] the hour 0..24, [`Season::HourAndWeekend`] the
/// hour plus 24 on Saturday and Sunday, [`Season::HourOfWeek`] 24 · weekday
/// (Monday 0) + hour; 0 for [`Season::None`].
pub fn season_bucket(timestamp_ms: i64, season: Season) -> u16 {
    let hours = timestamp_ms.div_euclid(3_600_000);
    let hour = hours.rem_euclid(24) as u16;
    // 1970-01-01 was a Thursday (weekday 3 counting Monday as 0).
    let weekday = (hours.div_euclid(24) + 3).rem_euclid(7) as u16;
    match season {
        Season::None => 0,
        Season::HourOfDay => hour,
        Season::HourAndWeekend => hour + if weekday >= 5 { 24 } else { 0 },
        Season::HourOfWeek => weekday * 24 + hour,
    }
}

/// The reference readings a window of `current` timestamps is compared
/// with under `season`, as indices into `reference` (timestamps, ms):
/// for each bucket that occurs in the window, the reference readings of the
/// same bucket; a bucket with fewer than `min_count` reference readings
/// takes those of its hour of day instead, and if those are fewer than
/// `min_count` too, every reference reading (the whole reference, the
/// non-seasonal comparison). Each reference reading is taken at most once,
/// in time order. [`Season::None`] or an empty window: every reading.
pub fn seasonal_reference(
    reference: &[i64],
    current: &[i64],
    season: Season,
    min_count: usize,
) -> Vec<usize> {
    let all: Vec<usize> = (0..reference.len()).collect();
    if season == Season::None || current.is_empty() {
        return all;
    }
    let count = |season: Season| {
        let mut counts = vec![0usize; 168];
        for &t in reference {
            counts[usize::from(season_bucket(t, season))] += 1;
        }
        counts
    };
    let (by_season, by_hour) = (count(season), count(Season::HourOfDay));
    let mut want = vec![false; 168];
    let mut want_hour = vec![false; 24];
    for &t in current {
        let b = usize::from(season_bucket(t, season));
        if by_season[b] >= min_count {
            want[b] = true;
        } else {
            let h = usize::from(season_bucket(t, Season::HourOfDay));
            if by_hour[h] < min_count {
                return all;
            }
            want_hour[h] = true;
        }
    }
    all.into_iter()
        .filter(|&i| {
            let t = reference[i];
            want[usize::from(season_bucket(t, season))]
                || want_hour[usize::from(season_bucket(t, Season::HourOfDay))]
        })
        .collect()
}

/// Data drift of one feature under serial dependence
/// ([`compare_dependent`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DependentDrift {
    pub feature: String,
    pub psi: Option<f64>,
    /// |mean(current) − mean(reference)| / sd(reference) (NaN dropped;
    /// `None` for a constant or empty reference).
    pub shift: Option<f64>,
    pub ks_statistic: Option<f64>,
    /// KS p-value at the readings' counts (as [`ks_2samp`]).
    pub ks_p_value: Option<f64>,
    /// Lag-1 autocorrelations of the reference and the current window.
    pub rho_reference: f64,
    pub rho_current: f64,
    /// Integrated autocorrelation times of the reference and the current
    /// window under the rule's [`Dependence`] (readings per independent
    /// one); the effective sizes are the counts divided by the larger.
    pub tau_reference: f64,
    pub tau_current: f64,
    /// KS p-value at the effective sample sizes.
    pub ks_p_value_effective: Option<f64>,
    /// Two-sided p-value of the difference of means at the effective
    /// sample sizes (a z test with each window's own variance).
    pub mean_p_value_effective: Option<f64>,
    /// Share of the current window's readings outside the reference's
    /// range [min, max], in [0, 1] (`None` when either is empty).
    pub outside_range: Option<f64>,
    /// Significant at the effective sizes (KS or means) and above an
    /// effect-size floor, or `outside_range` at least the range floor.
    pub drifted: bool,
}

/// `erfc(x)` for x ≥ 0, fractional error below 1.2e-7 (Numerical Recipes,
/// 2nd ed., §6.2, `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Compares `current` with `reference` feature by feature, holding the
/// false-alarm rate on autocorrelated sensor data. Two ways to drift:
///
/// - **A significant change that matters.** The KS statistic's p-value and
///   a z test of the difference of means are taken at effective sample
///   sizes, the counts divided by an integrated autocorrelation time
///   ([`Dependence`]; by default the larger of [`autocorrelation_time`]
///   and the lag-1 autocorrelation's AR(1) time), instead of the counts (a
///   window of 500 readings of a slow temperature carries the information
///   of a few dozen independent ones). Both windows use the larger of the
///   two windows' times: under no change they are one process, and the
///   shorter window's estimate is biased low (the lag-1 autocorrelation by
///   about (1 + 4ρ)/n, Kendall 1954). Either p-value below `alpha` is
///   significant, and the change must also be large enough to matter: PSI
///   ≥ `psi_floor` or a mean shift ≥ `shift_floor` reference standard
///   deviations.
/// - **Out of the reference's range**, only with a `range_floor`: at least
///   that share of the window's readings lie outside the reference's [min,
///   max], whatever the tests say. The tests have no power at ρ ≈ 0.998
///   (n_eff ≈ 1 for 1,000 one-minute room readings), but a model trained
///   on the reference would extrapolate on that share of the window
///   (Evidently's `TestShareOfOutRangeValues` is the same share against
///   the reference's range). Off by default: slow sensors leave a
///   reference's range as part of normal operation (UCI occupancy's
///   weekdays: 28 of 50 windows at a floor of 0.25, 9 of 50 even at 1.0,
///   a whole window out of range; `benches/drift_false_alarms.txt`).
///
/// Identical windows give D = 0, PSI = 0, shift 0 and no reading out of
/// range: never drift.
pub fn compare_dependent(
    features: &[String],
    reference: &[Vec<f32>],
    current: &[Vec<f32>],
    cfg: &DependentDriftConfig,
) -> Vec<DependentDrift> {
    features
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let column = |rows: &[Vec<f32>]| {
                rows.iter()
                    .map(|r| r.get(j).copied().unwrap_or(f32::NAN))
                    .collect::<Vec<f32>>()
            };
            let (r, c) = (column(reference), column(current));
            let p = psi(&r, &c, cfg.bins);
            let ks = ks_2samp(&r, &c);
            let (rp, cp) = (present(&r), present(&c));
            let (rho_r, rho_c) = (lag1_autocorrelation(&r), lag1_autocorrelation(&c));
            let shift = (!rp.is_empty() && !cp.is_empty())
                .then(|| {
                    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
                    let (mr, mc) = (mean(&rp), mean(&cp));
                    let var = rp.iter().map(|x| (x - mr) * (x - mr)).sum::<f64>()
                        / (rp.len().max(2) - 1) as f64;
                    (var > 0.0).then(|| (mc - mr).abs() / var.sqrt())
                })
                .flatten();
            let tau = |rho: f64, x: &[f32]| match cfg.dependence {
                Dependence::Lag1 => ar1_time(rho),
                Dependence::InitialPositive => autocorrelation_time(x),
                Dependence::Larger => autocorrelation_time(x).max(ar1_time(rho)),
            };
            let (tau_r, tau_c) = (tau(rho_r, &r), tau(rho_c, &c));
            let size = |n: usize| effective_sample_size(n, tau_r.max(tau_c));
            let (n_eff, m_eff) = (size(rp.len()), size(cp.len()));
            let p_eff =
                ks.map(|k| kolmogorov_sf((n_eff * m_eff / (n_eff + m_eff)).sqrt() * k.statistic));
            let p_mean = (rp.len() >= 2 && cp.len() >= 2)
                .then(|| {
                    let stats = |v: &[f64]| {
                        let m = v.iter().sum::<f64>() / v.len() as f64;
                        let var =
                            v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64;
                        (m, var)
                    };
                    let ((mr, vr), (mc, vc)) = (stats(&rp), stats(&cp));
                    let se = (vr / n_eff + vc / m_eff).sqrt();
                    if se > 0.0 {
                        let z = (mc - mr).abs() / se;
                        Some(if z == 0.0 {
                            1.0
                        } else {
                            erfc(z / std::f64::consts::SQRT_2).clamp(0.0, 1.0)
                        })
                    } else {
                        Some(if mc == mr { 1.0 } else { 0.0 })
                    }
                })
                .flatten();
            // A reference without spread (a sensor stuck at one value, a
            // switch that stayed off) has no standard deviation to measure a
            // shift in, and its quantile bins all collapse onto that value
            // (PSI puts a higher window in the same last bin): any change of
            // the mean is then as large as a change can be.
            let constant_moved = match (rp.first(), rp.last()) {
                (Some(&lo), Some(&hi)) if lo == hi && !cp.is_empty() => {
                    cp.iter().sum::<f64>() / cp.len() as f64 != lo
                }
                _ => false,
            };
            let large = p.is_some_and(|v| v >= cfg.psi_floor)
                || shift.is_some_and(|v| v >= cfg.shift_floor)
                || constant_moved;
            // `present` sorts: the reference's range is its ends.
            let outside = match (rp.first(), rp.last()) {
                (Some(&lo), Some(&hi)) if !cp.is_empty() => {
                    Some(cp.iter().filter(|&&v| v < lo || v > hi).count() as f64 / cp.len() as f64)
                }
                _ => None,
            };
            DependentDrift {
                feature: name.clone(),
                psi: p,
                shift,
                ks_statistic: ks.map(|k| k.statistic),
                ks_p_value: ks.map(|k| k.p_value),
                rho_reference: rho_r,
                rho_current: rho_c,
                tau_reference: tau_r,
                tau_current: tau_c,
                ks_p_value_effective: p_eff,
                mean_p_value_effective: p_mean,
                outside_range: outside,
                drifted: (large
                    && (p_eff.is_some_and(|v| v < cfg.alpha)
                        || p_mean.is_some_and(|v| v < cfg.alpha)))
                    || outside.is_some_and(|v| cfg.range_floor.is_some_and(|f| v >= f)),
            }
        })
        .collect()
}

/// The daemon's data drift of a pipeline ([`against_training`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataDriftReport {
    pub reference_samples: usize,
    pub current_samples: usize,
    /// Sequence numbers of the compared window (the newest samples).
    pub current_seqs: std::ops::Range<u64>,
    /// The settings the features were judged by.
    pub rule: DependentDriftConfig,
    pub features: Vec<DependentDrift>,
}

impl DataDriftReport {
    /// Names of the features that drifted.
    pub fn drifted(&self) -> Vec<&str> {
        self.features
            .iter()
            .filter(|f| f.drifted)
            .map(|f| f.feature.as_str())
            .collect()
    }
}

/// The newest `window` samples of `pipeline` (labelled or not) against the
/// newest `reference` labelled samples up to `last_seq` (the serving
/// version's training data), by [`compare_dependent`]: the daemon's
/// `GET /v1/pipelines/{name}/drift` and the learner's data-drift alarms.
///
/// # Errors
/// The store's.
pub fn against_training(
    store: &crate::store::Store,
    pipeline: &str,
    features: &[String],
    last_seq: u64,
    window: usize,
    reference: usize,
    rule: &DependentDriftConfig,
) -> Result<DataDriftReport, crate::store::StoreError> {
    let reference: Vec<Vec<f32>> = store
        .labelled_before(pipeline, last_seq, reference)?
        .into_iter()
        .map(|(_, s)| s.features)
        .collect();
    let next = store.counts(pipeline)?.next_seq;
    let rows = store.scan(pipeline, next.saturating_sub(window as u64)..next, window)?;
    let first = rows.first().map_or(next, |(seq, _)| *seq);
    let current: Vec<Vec<f32>> = rows.into_iter().map(|(_, r)| r.sample.features).collect();
    Ok(DataDriftReport {
        reference_samples: reference.len(),
        current_samples: current.len(),
        current_seqs: first..next,
        rule: *rule,
        features: compare_dependent(features, &reference, &current, rule),
    })
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
    fn out_of_range_share_flags_whatever_the_tests_say() {
        // A slow ramp (lag-1 autocorrelation ≈ 1, effective size 2): the
        // tests cannot be significant; 300 of the window's 500 readings lie
        // above the reference's maximum 49.9.
        let reference: Vec<Vec<f32>> = (0..500).map(|i| vec![i as f32 / 10.0]).collect();
        let current: Vec<Vec<f32>> = (0..500).map(|i| vec![30.0 + i as f32 / 10.0]).collect();
        let names = ["x".to_string()];
        let cfg = DependentDriftConfig {
            range_floor: Some(0.25),
            ..DependentDriftConfig::default()
        };
        let d = &compare_dependent(&names, &reference, &current, &cfg)[0];
        assert_eq!(d.outside_range, Some(300.0 / 500.0));
        assert!(d.mean_p_value_effective.unwrap() > cfg.alpha, "{d:?}");
        assert!(d.ks_p_value_effective.unwrap() > cfg.alpha, "{d:?}");
        assert!(d.drifted);
        // The default has no range rule: the share is reported, no drift.
        let never = DependentDriftConfig::default();
        assert_eq!(never.range_floor, None);
        let d = &compare_dependent(&names, &reference, &current, &never)[0];
        assert_eq!((d.outside_range, d.drifted), (Some(300.0 / 500.0), false));
        // At the floor: drifts; one reading less: not.
        let at = DependentDriftConfig {
            range_floor: Some(0.6),
            ..cfg
        };
        assert!(compare_dependent(&names, &reference, &current, &at)[0].drifted);
        let above = DependentDriftConfig {
            range_floor: Some(0.602),
            ..cfg
        };
        assert!(!compare_dependent(&names, &reference, &current, &above)[0].drifted);
        // Identical windows: nothing out of range, no drift; NaN dropped;
        // an empty window has no share.
        let d = &compare_dependent(&names, &reference, &reference, &cfg)[0];
        assert_eq!((d.outside_range, d.drifted), (Some(0.0), false));
        let nan = vec![vec![f32::NAN]; 10];
        let d = &compare_dependent(&names, &reference, &nan, &cfg)[0];
        assert_eq!((d.outside_range, d.drifted), (None, false));
    }

    #[test]
    fn erfc_within_its_documented_error() {
        // Python's math.erfc (C99 erfc).
        for (x, want) in [
            (0.5, 0.4795001221869535),
            (1.0, 0.15729920705028513),
            (2.0, 0.004677734981047266),
            (3.0, 2.209049699858544e-05),
        ] {
            assert!(
                ((erfc(x) - want) / want).abs() < 1.2e-7,
                "erfc({x}) = {}",
                erfc(x)
            );
        }
    }

    #[test]
    fn kolmogorov_tail_values() {
        // scipy.special.kolmogorov(1.0), (0.5), (0.2) (scipy 1.17.1).
        assert!((kolmogorov_sf(1.0) - 0.269_999_671_677_354_56).abs() < 1e-12);
        assert!((kolmogorov_sf(0.5) - 0.963_945_243_664_875_1).abs() < 1e-12);
        assert!((kolmogorov_sf(0.2) - 1.0).abs() < 1e-12);
    }
}
