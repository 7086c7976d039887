//! Monitoring and the retraining policy: data drift per feature
//! ([`data_drift`]: PSI, Kolmogorov–Smirnov), concept drift on the error
//! stream ([`detectors`]: ADWIN, DDM, Page-Hinkley; they live in
//! [`crate::learn::drift`], where the online learners use them too), and the
//! learner that decides when to train ([`retrain`]), and the online learner
//! beside it that learns every label and may serve ([`online`]).

pub mod continual;
pub mod data_drift;
pub mod online;
pub mod prequential;
pub mod retrain;
pub mod series;

pub use crate::learn::anomaly;
pub use crate::learn::drift as detectors;

use serde::{Deserialize, Serialize};

/// `[pipelines.drift]`: drift monitoring and the retraining it triggers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Concept-drift detector on the serving model's errors over newly
    /// labelled samples: 0/1 for classification, |y − ŷ| for regression
    /// (so DDM, a 0/1 error-rate test, is refused for regression).
    pub detector: crate::monitor::continual::DetectorKind,
    /// Train when the detector raises an alarm.
    pub retrain_on_drift: bool,
    /// Labelled samples that must arrive after a training before an alarm
    /// may trigger another (one change, one retraining).
    pub cooldown_labels: u64,
    /// Recent samples compared with the reference (data drift).
    pub window: usize,
    /// Reference samples: the newest of the serving model's training data.
    pub reference: usize,
    /// Bins of the population stability index.
    pub psi_bins: usize,
    /// A feature drifts when its PSI exceeds this.
    pub psi_threshold: f64,
    /// ...or when the Kolmogorov–Smirnov p-value falls below this.
    pub ks_alpha: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            detector: crate::monitor::continual::DetectorKind::Adwin,
            retrain_on_drift: true,
            cooldown_labels: 200,
            window: 500,
            reference: 2000,
            psi_bins: 10,
            psi_threshold: 0.25,
            ks_alpha: 0.001,
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
