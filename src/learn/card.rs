//! The model card: what each trained version is, what it was trained on, and
//! how well it did. Stored with the version; served by
//! `GET /v1/pipelines/{name}/models`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::ClassificationMetrics;
use super::Trigger;

/// A model version's card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub pipeline: String,
    pub version: u32,
    /// Model family (`logistic`).
    pub family: String,
    /// Training settings.
    pub hyperparameters: serde_json::Value,
    /// Optimiser outcome (iterations, why it stopped, final objective).
    pub optimizer: serde_json::Value,
    pub trigger: Trigger,
    /// When training finished, ms since the Unix epoch.
    pub created_at_ms: i64,
    pub features: Vec<String>,
    pub classes: Vec<String>,
    /// Labelled samples the served model was fit on (training + holdout:
    /// after evaluation it is refit on everything).
    pub n_samples: u64,
    /// Samples of the evaluated fit, scored on the `n_holdout` newest.
    pub n_train: u64,
    pub n_holdout: u64,
    /// Samples per class in the training set.
    pub class_composition_train: BTreeMap<String, u64>,
    /// Samples per class in the holdout.
    pub class_composition_holdout: BTreeMap<String, u64>,
    /// First and last sample timestamp (ms) of each set.
    pub train_time_range_ms: Option<[i64; 2]>,
    pub holdout_time_range_ms: Option<[i64; 2]>,
    /// Metrics on the temporal holdout (scikit-learn semantics; undefined
    /// precision or recall is `null` per class and listed in `undefined`).
    pub holdout: Option<ClassificationMetrics>,
    /// Wall-clock training time, milliseconds: evaluated fit, scoring and
    /// the refit on all samples.
    pub training_ms: f64,
    /// Size of the exported ONNX model, bytes.
    pub onnx_bytes: u64,
    /// The champion/challenger decision that made this version serve, or not.
    #[serde(default)]
    pub decision: Option<Decision>,
    /// Sequence number of the newest stored sample the model was trained on
    /// (the end of the data-drift reference).
    #[serde(default)]
    pub last_seq: Option<u64>,
    /// Median single-row inference latency through the serving engine,
    /// microseconds, measured at load.
    pub predict_p50_us: Option<f64>,
}

/// Champion/challenger decision for a trained version (the challenger).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub promoted: bool,
    pub reason: String,
    /// The version serving when it was trained.
    pub champion_version: Option<u32>,
    /// Accuracy on the recent holdout (the newest samples).
    pub champion_recent: Option<f64>,
    pub challenger_recent: Option<f64>,
    /// Accuracy on the older slice (every 10th older sample).
    pub champion_old: Option<f64>,
    pub challenger_old: Option<f64>,
}

/// The champion/challenger rule: promote unless the challenger fails to gain
/// `margin_recent` accuracy on the recent holdout, or loses more than
/// `margin_old` on the older regimes. Returns (promoted, reason).
pub fn judge(
    champion_recent: Option<f64>,
    challenger_recent: Option<f64>,
    champion_old: Option<f64>,
    challenger_old: Option<f64>,
    margin_recent: f64,
    margin_old: f64,
) -> (bool, String) {
    match (champion_recent, challenger_recent, champion_old, challenger_old) {
        (Some(h), Some(c), _, _) if c < h + margin_recent => (
            false,
            format!("recent holdout: challenger {c:.4} does not beat champion {h:.4} by {margin_recent}"),
        ),
        (_, _, Some(h), Some(c)) if c < h - margin_old => (
            false,
            format!("older regimes: challenger {c:.4} loses more than {margin_old} to champion {h:.4}"),
        ),
        _ => (true, "challenger wins on recent data and keeps the older regimes".to_string()),
    }
}
