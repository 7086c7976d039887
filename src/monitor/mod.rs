//! Monitoring and the retraining policy: data drift per feature
//! ([`data_drift`]: PSI, Kolmogorov–Smirnov at effective sample sizes, share
//! out of the reference's range), concept drift on the error
//! stream ([`detectors`]: ADWIN, DDM, Page-Hinkley; they live in
//! [`crate::learn::drift`], where the online learners use them too), and the
//! learner that decides when to train ([`retrain`]), and the online learner
//! beside it that learns every label and may serve ([`online`]).

pub mod continual;
pub mod data_drift;
pub mod online;
pub mod prequential;
pub mod prequential_regression;
pub mod retrain;
pub mod series;

pub use crate::learn::anomaly;
pub use crate::learn::drift as detectors;

use serde::{Deserialize, Serialize};

/// What an alarm is about (`[pipelines.drift] retrain_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    /// The concept-drift detector on the serving version's errors
    /// (timeline action `drift_alarm`).
    Error,
    /// Data drift of a window of new samples against the training data
    /// (`data_drift_alarm`).
    Data,
    /// Anomaly scores above the alarm threshold (`anomaly_alarm`).
    Anomaly,
}

/// `[pipelines.drift]`: drift monitoring and the retraining it triggers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Concept-drift detector on the serving model's errors over newly
    /// labelled samples: 0/1 for classification, |y − ŷ| for regression
    /// (so DDM, a 0/1 error-rate test, is refused for regression).
    pub detector: crate::monitor::continual::DetectorKind,
    /// Train when the detector raises an alarm (with `error` in
    /// `retrain_on`; false turns it off as leaving `error` out does, kept
    /// for the configurations that set it).
    pub retrain_on_drift: bool,
    /// The alarms that trigger a training (each outside the cool-down):
    /// `error` (the concept-drift detector on the serving version's errors),
    /// `data` (a window of new samples drifted from the training data by
    /// the data-drift rule), `anomaly` (readings whose anomaly score passed
    /// the alarm threshold). Every alarm is counted and annotates the
    /// timeline whether or not it trains.
    pub retrain_on: Vec<AlarmKind>,
    /// Labelled samples that must arrive after a training before an alarm
    /// may trigger another (one change, one retraining).
    pub cooldown_labels: u64,
    /// Recent samples compared with the reference (data drift).
    pub window: usize,
    /// Reference samples: the newest of the serving model's training data.
    pub reference: usize,
    /// Bins of the population stability index.
    pub psi_bins: usize,
    /// Data drift (the rule of [`data_drift::compare_dependent`], as
    /// `edgeloop drift`): significance of the KS and mean tests at the
    /// effective sample sizes, in (0, 1).
    pub alpha: f64,
    /// A significant change drifts when its PSI is at least this…
    pub psi_floor: f64,
    /// …or its mean moved at least this many reference standard deviations.
    pub shift_floor: f64,
    /// A feature drifts, whatever the tests say, when at least this share of
    /// the window lies outside the reference's range, in (0, 1]; unset (the
    /// default): the share is reported, never a drift by itself.
    pub range_floor: Option<f64>,
    /// How the effective sample sizes count serial dependence:
    /// `autocorrelation_time` (every lag, Geyer's initial positive
    /// sequence) or `lag1` (the lag-1 autocorrelation as an AR(1)'s).
    pub dependence: data_drift::Dependence,
    /// `[pipelines.drift.adwin]`: ADWIN's parameters (River's names and
    /// defaults: `delta` 0.002, `clock` 32, `max_buckets` 5,
    /// `min_window_length` 5, `grace_period` 10).
    pub adwin: detectors::AdwinConfig,
    /// `[pipelines.drift.ddm]`: DDM's (`warm_start` 30,
    /// `warning_threshold` 2, `drift_threshold` 3).
    pub ddm: detectors::DdmConfig,
    /// `[pipelines.drift.page_hinkley]`: Page-Hinkley's (`min_instances`
    /// 30, `delta` 0.005, `threshold` 50, `alpha` 0.9999, `mode` both).
    pub page_hinkley: detectors::PageHinkleyConfig,
    /// Feed the detector z-scores of the errors (each against the mean and
    /// standard deviation of the errors before it) rather than the errors:
    /// Page-Hinkley's `threshold` and `delta` are then in standard
    /// deviations. Not for `ddm`, whose input is 0/1.
    pub standardize: bool,
}

impl DriftConfig {
    /// Whether an alarm of `kind` triggers a training.
    pub fn retrains_on(&self, kind: AlarmKind) -> bool {
        self.retrain_on.contains(&kind) && (kind != AlarmKind::Error || self.retrain_on_drift)
    }

    /// The data-drift settings of [`data_drift::compare_dependent`].
    pub fn data_drift(&self) -> data_drift::DependentDriftConfig {
        data_drift::DependentDriftConfig {
            bins: self.psi_bins,
            alpha: self.alpha,
            psi_floor: self.psi_floor,
            shift_floor: self.shift_floor,
            range_floor: self.range_floor,
            dependence: self.dependence,
        }
    }

    /// Checks the data-drift settings and the detectors' parameters.
    ///
    /// # Errors
    /// The key (below `drift.`) and the reason of the first invalid value.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let (a, d, p) = (&self.adwin, &self.ddm, &self.page_hinkley);
        let fail = |k, r: &str| Err((k, r.to_string()));
        if self.window < 10 || self.reference < 10 {
            return fail("window", "window and reference need at least 10 samples");
        }
        if self.psi_bins < 2 {
            return fail("psi_bins", "must be at least 2");
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return fail("alpha", "must be in (0, 1)");
        }
        if !(self.psi_floor >= 0.0 && self.shift_floor >= 0.0) {
            return fail("psi_floor", "psi_floor and shift_floor must be at least 0");
        }
        if self.range_floor.is_some_and(|f| !(f > 0.0 && f <= 1.0)) {
            return fail("range_floor", "must be in (0, 1]");
        }
        if !(a.delta > 0.0 && a.delta < 1.0) {
            return fail("adwin.delta", "must be in (0, 1)");
        }
        if a.clock == 0 || a.max_buckets == 0 || a.min_window_length == 0 {
            return fail(
                "adwin.clock",
                "clock, max_buckets and min_window_length must be at least 1",
            );
        }
        if !(d.warning_threshold > 0.0 && d.warning_threshold <= d.drift_threshold) {
            return fail(
                "ddm.warning_threshold",
                "must be above 0 and at most drift_threshold",
            );
        }
        if !(p.threshold > 0.0) || !(p.delta >= 0.0) {
            return fail(
                "page_hinkley.threshold",
                "threshold must be above 0 and delta at least 0",
            );
        }
        if !(p.alpha > 0.0 && p.alpha <= 1.0) {
            return fail("page_hinkley.alpha", "must be in (0, 1]");
        }
        if self.standardize && self.detector == continual::DetectorKind::Ddm {
            return fail(
                "standardize",
                "`ddm` watches a 0/1 error stream; z-scores are not 0/1",
            );
        }
        Ok(())
    }

    /// A fresh concept-drift detector with this section's parameters.
    pub fn new_detector(&self) -> Box<dyn detectors::DriftDetector> {
        use continual::DetectorKind;
        let d: Box<dyn detectors::DriftDetector> = match self.detector {
            DetectorKind::Adwin => Box::new(detectors::Adwin::new(self.adwin)),
            DetectorKind::Ddm => Box::new(detectors::Ddm::new(self.ddm)),
            DetectorKind::PageHinkley => Box::new(detectors::PageHinkley::new(self.page_hinkley)),
        };
        if self.standardize {
            Box::new(detectors::Standardized::new(d))
        } else {
            d
        }
    }
}

impl Default for DriftConfig {
    fn default() -> Self {
        let data = data_drift::DependentDriftConfig::default();
        Self {
            detector: crate::monitor::continual::DetectorKind::Adwin,
            retrain_on_drift: true,
            retrain_on: vec![AlarmKind::Error],
            cooldown_labels: 200,
            window: 500,
            reference: 2000,
            psi_bins: 10,
            alpha: data.alpha,
            psi_floor: data.psi_floor,
            shift_floor: data.shift_floor,
            range_floor: data.range_floor,
            dependence: data.dependence,
            adwin: Default::default(),
            ddm: Default::default(),
            page_hinkley: Default::default(),
            standardize: false,
        }
    }
}

/// A pipeline as the monitoring stage sees it: the learning settings and
/// `[pipelines.drift]`. Dereferences to its [`PipelineSettings`](crate::learn::PipelineSettings).
#[derive(Debug, Clone)]
pub struct MonitoredPipeline {
    pub settings: crate::learn::PipelineSettings,
    pub drift: DriftConfig,
    /// `[pipelines.online]`: the online learner beside the batch loop.
    pub online: online::OnlineConfig,
}

impl std::ops::Deref for MonitoredPipeline {
    type Target = crate::learn::PipelineSettings;
    fn deref(&self) -> &Self::Target {
        &self.settings
    }
}
