//! Concept-drift detectors on a stream of values (prediction errors, 0/1, or
//! any real-valued stream). Used by the monitoring stage (re-exported as
//! `monitor::detectors`) and by the online learners of [`super::online`].
//!
//! - [`Adwin`]: ADWIN2, Bifet & Gavaldà, "Learning from time-changing data with
//!   adaptive windowing", SDM 2007, with exponential-histogram buckets
//!   (Datar et al. 2002) and the streaming variance of Babcock et al. (2003).
//! - [`Ddm`]: Gama et al., "Learning with drift detection", SBIA 2004.
//! - [`PageHinkley`]: Page (1954), Hinkley (1971); the forgetting-factor
//!   variant.
//!
//! Parameters, defaults and the alarm semantics follow River 0.26
//! (`river.drift.ADWIN`, `river.drift.binary.DDM`, `river.drift.PageHinkley`):
//! [`DriftDetector::update`] returns true on the value that raises the alarm,
//! and the next update starts the detector afresh. On the same streams they
//! alarm at the same indices as River (`tests/reference_drift.rs`).

use serde::{Deserialize, Serialize};

/// A drift detector fed one value at a time.
pub trait DriftDetector: Send {
    /// Feeds one value; true when this value raises a drift alarm.
    fn update(&mut self, x: f64) -> bool;
    /// A snapshot of the detector's state, for the drift endpoint.
    fn state(&self) -> serde_json::Value;
}

/// ADWIN settings (River's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdwinConfig {
    /// Confidence δ of the cut test.
    pub delta: f64,
    /// Check for a cut every `clock` values.
    pub clock: u32,
    /// Buckets of each size kept before two are merged (M in the paper).
    pub max_buckets: usize,
    /// Smallest sub-window considered by the cut test.
    pub min_window_length: u32,
    /// No check before the window holds more than this many values.
    pub grace_period: u32,
}

impl Default for AdwinConfig {
    fn default() -> Self {
        Self {
            delta: 0.002,
            clock: 32,
            max_buckets: 5,
            min_window_length: 5,
            grace_period: 10,
        }
    }
}

/// One row of the exponential histogram: buckets summarising `2^row` values
/// each, oldest first, as (sum, variance·count) pairs.
#[derive(Debug, Clone, Default)]
struct Row {
    totals: Vec<f64>,
    variances: Vec<f64>,
}

/// ADWIN2 over an exponential histogram of buckets.
#[derive(Debug, Clone)]
pub struct Adwin {
    cfg: AdwinConfig,
    rows: Vec<Row>,
    total: f64,
    /// Sum of squared deviations from the window mean.
    variance: f64,
    width: f64,
    tick: u64,
    alarmed: bool,
    detections: u64,
}

impl Adwin {
    pub fn new(cfg: AdwinConfig) -> Self {
        Self {
            cfg,
            rows: vec![Row::default()],
            total: 0.0,
            variance: 0.0,
            width: 0.0,
            tick: 0,
            alarmed: false,
            detections: 0,
        }
    }

    /// Values in the current window.
    pub fn width(&self) -> f64 {
        self.width
    }

    /// Mean of the current window.
    pub fn mean(&self) -> f64 {
        if self.width > 0.0 {
            self.total / self.width
        } else {
            0.0
        }
    }

    fn reset(&mut self) {
        let detections = self.detections;
        *self = Self::new(self.cfg);
        self.detections = detections;
    }

    fn insert(&mut self, value: f64) {
        self.rows[0].totals.push(value);
        self.rows[0].variances.push(0.0);
        self.width += 1.0;
        if self.width > 1.0 {
            let d = value - self.total / (self.width - 1.0);
            self.variance += (self.width - 1.0) * d * d / self.width;
        }
        self.total += value;
        // Merge the two oldest buckets of a full row into one of the next row.
        let mut row = 0;
        while self.rows[row].totals.len() == self.cfg.max_buckets + 1 {
            let n = (1u64 << row) as f64;
            let (t0, t1) = (self.rows[row].totals[0], self.rows[row].totals[1]);
            let (v0, v1) = (self.rows[row].variances[0], self.rows[row].variances[1]);
            let (m0, m1) = (t0 / n, t1 / n);
            let merged_var = v0 + v1 + n * 0.5 * (m0 - m1) * (m0 - m1);
            if row + 1 == self.rows.len() {
                self.rows.push(Row::default());
            }
            self.rows[row + 1].totals.push(t0 + t1);
            self.rows[row + 1].variances.push(merged_var);
            self.rows[row].totals.drain(..2);
            self.rows[row].variances.drain(..2);
            if self.rows[row + 1].totals.len() <= self.cfg.max_buckets {
                break;
            }
            row += 1;
        }
    }

    /// Drops the oldest bucket.
    fn drop_oldest(&mut self) {
        let last = self.rows.len() - 1;
        let n = (1u64 << last) as f64;
        let (u, v) = (self.rows[last].totals[0], self.rows[last].variances[0]);
        let mu = u / n;
        self.width -= n;
        self.total -= u;
        let mu_window = self.total / self.width;
        self.variance -=
            v + n * self.width * (mu - mu_window) * (mu - mu_window) / (n + self.width);
        self.rows[last].totals.remove(0);
        self.rows[last].variances.remove(0);
        if self.rows[last].totals.is_empty() {
            self.rows.pop();
        }
    }

    fn cut(&self, n0: f64, n1: f64, delta_mean: f64) -> bool {
        let mwl = f64::from(self.cfg.min_window_length);
        let delta_prime = (2.0 * self.width.ln() / self.cfg.delta).ln();
        let m_recip = 1.0 / (n0 - mwl + 1.0) + 1.0 / (n1 - mwl + 1.0);
        let epsilon = (2.0 * m_recip * (self.variance / self.width) * delta_prime).sqrt()
            + 2.0 / 3.0 * delta_prime * m_recip;
        delta_mean.abs() > epsilon
    }

    /// Checks every split of the window (oldest buckets first) and drops the
    /// oldest bucket while some split's means differ by more than ε_cut.
    fn detect(&mut self) -> bool {
        self.tick += 1;
        let mwl = f64::from(self.cfg.min_window_length);
        if self.tick % u64::from(self.cfg.clock.max(1)) != 0
            || self.width <= f64::from(self.cfg.grace_period)
        {
            return false;
        }
        let mut change = false;
        'scan: loop {
            let (mut n0, mut n1, mut u0, mut u1) = (0.0, self.width, 0.0, self.total);
            for row in (0..self.rows.len()).rev() {
                let size = (1u64 << row) as f64;
                let len = self.rows[row].totals.len();
                for k in 0..len {
                    let t = self.rows[row].totals[k];
                    n0 += size;
                    n1 -= size;
                    u0 += t;
                    u1 -= t;
                    if row == 0 && k == len - 1 {
                        break 'scan;
                    }
                    if n1 >= mwl && n0 >= mwl && self.cut(n0, n1, u0 / n0 - u1 / n1) {
                        change = true;
                        if self.width > 0.0 {
                            self.drop_oldest();
                            continue 'scan;
                        }
                    }
                }
            }
            break;
        }
        change
    }
}

impl DriftDetector for Adwin {
    fn update(&mut self, x: f64) -> bool {
        if self.alarmed {
            self.reset();
        }
        self.insert(x);
        self.alarmed = self.detect();
        self.detections += u64::from(self.alarmed);
        self.alarmed
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "detector": "adwin", "width": self.width, "mean": self.mean(), "detections": self.detections })
    }
}

/// DDM settings (River's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DdmConfig {
    /// Values seen before any alarm can be raised.
    pub warm_start: u32,
    /// Warning level in standard deviations.
    pub warning_threshold: f64,
    /// Drift level in standard deviations.
    pub drift_threshold: f64,
}

impl Default for DdmConfig {
    fn default() -> Self {
        Self {
            warm_start: 30,
            warning_threshold: 2.0,
            drift_threshold: 3.0,
        }
    }
}

/// DDM on a stream of errors (1 = wrong prediction, 0 = right).
#[derive(Debug, Clone)]
pub struct Ddm {
    cfg: DdmConfig,
    n: f64,
    p: f64,
    p_min: f64,
    s_min: f64,
    ps_min: f64,
    warning: bool,
    alarmed: bool,
    detections: u64,
}

impl Ddm {
    pub fn new(cfg: DdmConfig) -> Self {
        Self {
            cfg,
            n: 0.0,
            p: 0.0,
            p_min: 0.0,
            s_min: 0.0,
            ps_min: f64::INFINITY,
            warning: false,
            alarmed: false,
            detections: 0,
        }
    }

    /// Whether the last value raised a warning.
    pub fn warning(&self) -> bool {
        self.warning
    }
}

impl DriftDetector for Ddm {
    fn update(&mut self, x: f64) -> bool {
        if self.alarmed {
            *self = Self {
                detections: self.detections,
                ..Self::new(self.cfg)
            };
        }
        self.n += 1.0;
        self.p += (1.0 / self.n) * (x - self.p);
        let s = (self.p * (1.0 - self.p) / self.n).sqrt();
        if self.n > f64::from(self.cfg.warm_start) {
            if self.p + s <= self.ps_min {
                self.p_min = self.p;
                self.s_min = s;
                self.ps_min = self.p_min + self.s_min;
            }
            self.warning = self.p + s > self.p_min + self.cfg.warning_threshold * self.s_min;
            if self.p + s > self.p_min + self.cfg.drift_threshold * self.s_min {
                self.alarmed = true;
                self.warning = false;
            }
        }
        self.detections += u64::from(self.alarmed);
        self.alarmed
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "detector": "ddm", "n": self.n, "error_rate": self.p, "p_min": self.p_min, "s_min": self.s_min,
            "warning": self.warning, "detections": self.detections
        })
    }
}

/// Which direction of change Page-Hinkley watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PageHinkleyMode {
    Up,
    Down,
    Both,
}

/// Page-Hinkley settings (River's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageHinkleyConfig {
    /// Values seen before any alarm can be raised.
    pub min_instances: u32,
    /// Magnitude of change tolerated.
    pub delta: f64,
    /// Alarm threshold λ.
    pub threshold: f64,
    /// Forgetting factor of the cumulative sums.
    pub alpha: f64,
    pub mode: PageHinkleyMode,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        Self {
            min_instances: 30,
            delta: 0.005,
            threshold: 50.0,
            alpha: 1.0 - 0.0001,
            mode: PageHinkleyMode::Both,
        }
    }
}

/// Page-Hinkley test with forgetting factor.
#[derive(Debug, Clone)]
pub struct PageHinkley {
    cfg: PageHinkleyConfig,
    n: f64,
    mean: f64,
    sum_increase: f64,
    sum_decrease: f64,
    min_increase: f64,
    max_decrease: f64,
    alarmed: bool,
    detections: u64,
}

impl PageHinkley {
    pub fn new(cfg: PageHinkleyConfig) -> Self {
        Self {
            cfg,
            n: 0.0,
            mean: 0.0,
            sum_increase: 0.0,
            sum_decrease: 0.0,
            min_increase: f64::INFINITY,
            max_decrease: -1.0,
            alarmed: false,
            detections: 0,
        }
    }
}

impl DriftDetector for PageHinkley {
    fn update(&mut self, x: f64) -> bool {
        if self.alarmed {
            *self = Self {
                detections: self.detections,
                ..Self::new(self.cfg)
            };
        }
        self.n += 1.0;
        self.mean += (1.0 / self.n) * (x - self.mean);
        let dev = x - self.mean;
        self.sum_increase = self.cfg.alpha * self.sum_increase + dev - self.cfg.delta;
        self.sum_decrease = self.cfg.alpha * self.sum_decrease + dev + self.cfg.delta;
        self.min_increase = self.min_increase.min(self.sum_increase);
        self.max_decrease = self.max_decrease.max(self.sum_decrease);
        if self.n >= f64::from(self.cfg.min_instances) {
            let up = self.sum_increase - self.min_increase > self.cfg.threshold;
            let down = self.max_decrease - self.sum_decrease > self.cfg.threshold;
            self.alarmed = match self.cfg.mode {
                PageHinkleyMode::Up => up,
                PageHinkleyMode::Down => down,
                PageHinkleyMode::Both => up || down,
            };
        }
        self.detections += u64::from(self.alarmed);
        self.alarmed
    }

    fn state(&self) -> serde_json::Value {
        serde_json::json!({
            "detector": "page_hinkley", "n": self.n, "mean": self.mean,
            "test_increase": self.sum_increase - self.min_increase,
            "test_decrease": self.max_decrease - self.sum_decrease, "detections": self.detections
        })
    }
}

/// A detector fed z-scores instead of raw values: each value becomes
/// `(x − mean) / sd` of the values before it (Welford's running mean and
/// sample standard deviation), 0 while fewer than two came before or they
/// are all equal. Page-Hinkley's `threshold` and `delta` are then in
/// standard deviations of the series rather than its raw units. The running
/// statistics continue across the inner detector's restarts.
pub struct Standardized {
    inner: Box<dyn DriftDetector>,
    n: f64,
    mean: f64,
    m2: f64,
}

impl Standardized {
    pub fn new(inner: Box<dyn DriftDetector>) -> Self {
        Self {
            inner,
            n: 0.0,
            mean: 0.0,
            m2: 0.0,
        }
    }

    /// The z-score of `x` against the values before it, then learns `x`.
    pub fn standardize(&mut self, x: f64) -> f64 {
        let sd = if self.n >= 2.0 {
            (self.m2 / (self.n - 1.0)).sqrt()
        } else {
            0.0
        };
        let z = if sd > 0.0 { (x - self.mean) / sd } else { 0.0 };
        self.n += 1.0;
        let d = x - self.mean;
        self.mean += d / self.n;
        self.m2 += d * (x - self.mean);
        z
    }
}

impl DriftDetector for Standardized {
    fn update(&mut self, x: f64) -> bool {
        let z = self.standardize(x);
        self.inner.update(z)
    }

    fn state(&self) -> serde_json::Value {
        let mut s = self.inner.state();
        if let Some(o) = s.as_object_mut() {
            o.insert("standardized".into(), serde_json::json!(true));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_streams_never_alarm() {
        for x in [0.0, 1.0, 5.0] {
            let mut detectors: Vec<Box<dyn DriftDetector>> = vec![
                Box::new(Adwin::new(AdwinConfig::default())),
                Box::new(Ddm::new(DdmConfig::default())),
                Box::new(PageHinkley::new(PageHinkleyConfig::default())),
            ];
            for d in &mut detectors {
                assert!((0..5000).all(|_| !d.update(x)), "{}", d.state());
            }
        }
    }

    #[test]
    fn standardized_values_use_only_earlier_values() {
        let xs = [3.0, 5.0, 4.0, 10.0, 2.0];
        let mut s = Standardized::new(Box::new(PageHinkley::new(Default::default())));
        let z: Vec<f64> = xs.iter().map(|&x| s.standardize(x)).collect();
        assert_eq!(&z[..2], &[0.0, 0.0]);
        for t in 2..xs.len() {
            let before = &xs[..t];
            let m = before.iter().sum::<f64>() / t as f64;
            let sd =
                (before.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (t as f64 - 1.0)).sqrt();
            assert!((z[t] - (xs[t] - m) / sd).abs() < 1e-12, "{t}");
        }
    }

    #[test]
    fn adwin_window_statistics_match_a_batch_recomputation() {
        // Without a cut, ADWIN's total and variance are those of all values.
        let mut a = Adwin::new(AdwinConfig {
            clock: u32::MAX,
            ..Default::default()
        });
        let xs: Vec<f64> = (0..1000).map(|i| ((i * 37) % 11) as f64).collect();
        xs.iter().for_each(|&x| {
            a.update(x);
        });
        let mean = xs.iter().sum::<f64>() / 1000.0;
        let ss: f64 = xs.iter().map(|x| (x - mean).powi(2)).sum();
        assert_eq!(a.width(), 1000.0);
        assert!((a.mean() - mean).abs() < 1e-12);
        assert!(
            (a.variance - ss).abs() / ss < 1e-9,
            "{} vs {ss}",
            a.variance
        );
    }
}
