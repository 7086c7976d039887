//! What the learning stages know of a pipeline ([`PipelineSettings`]: its
//! features, label, task and model section, composed by `crate::config`
//! from a `[[pipelines]]` entry), `[pipelines.model]` ([`ModelConfig`]:
//! what is trained and when) and its checks ([`validate_model`]), also
//! `edgeloop train`'s settings.

use serde::{Deserialize, Serialize};

use super::model::{Family, Task};
use super::select::{Evaluation, Metric};
use crate::config_error::ConfigError;
use crate::features::windows::WindowsConfig;
use crate::onnx::engine::EngineKind;

/// A pipeline as training, serving and monitoring see it: the part of a
/// `[[pipelines]]` entry that is not about receiving messages.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSettings {
    pub name: String,
    /// The raw features (channels of a windowed pipeline), in order.
    pub features: Vec<String>,
    pub label: String,
    /// The classes a label may take; empty: any.
    pub classes: Vec<String>,
    pub task: Task,
    /// `[pipelines.windows]`: windowed features.
    pub windows: WindowsConfig,
    /// `[pipelines.temporal]`: lags, deltas, rolling statistics and the last
    /// label beside each reading ([`crate::features::temporal`]).
    pub temporal: crate::features::temporal::TemporalConfig,
    pub model: ModelConfig,
    /// The engine serving the pipeline's models.
    pub engine: EngineKind,
    /// Where predictions are published (`{pipeline}`, `{device}`).
    pub prediction_topic: String,
    /// `[pipelines.anomaly]`: anomaly scores of predicted readings.
    pub anomaly: crate::learn::anomaly::AnomalyConfig,
}

impl PipelineSettings {
    /// The model's input features: `features` itself, for a windowed
    /// pipeline the window statistics `{channel}_{stat}`
    /// ([`WindowsConfig::feature_names`]), for a temporal one each reading
    /// with its past ([`crate::features::temporal::TemporalConfig::feature_names`]).
    pub fn model_features(&self) -> Vec<String> {
        if self.windows.enabled {
            self.windows.feature_names(&self.features)
        } else if self.temporal.is_enabled() {
            self.temporal.feature_names(&self.features, &self.classes)
        } else {
            self.features.clone()
        }
    }
}

/// `[pipelines.model]`: what is trained and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// `[pipelines.preprocess]` (cleaning rules and fitted steps,
    /// [`crate::learn::preprocess`]), copied here by the pipeline (not a key
    /// of `[pipelines.model]`).
    #[serde(skip)]
    pub preprocess: crate::learn::preprocess::PreprocessConfig,
    /// The family trained (`auto`: every candidate, the best serves).
    pub family: Family,
    /// `auto`'s candidates; empty: every family that supports the task.
    pub candidates: Vec<Family>,
    /// How candidates are compared (`auto`) and what the card headlines;
    /// default: accuracy for classification, R² for regression.
    pub metric: Option<Metric>,
    /// Temporal holdout only, or k-fold cross-validation as well.
    pub evaluation: Evaluation,
    /// Folds of `evaluation = "kfold"` (stratified for classification);
    /// also stacking's out-of-fold folds.
    pub folds: usize,
    /// With `family = "auto"`: also build an ensemble (`voting` or
    /// `stacking`) of the best `ensemble_size` candidates, compared on the
    /// holdout as one more candidate; `none` (default): no ensemble.
    pub ensemble: super::ensemble::EnsembleMethod,
    /// Members of the ensemble: the best this many candidates (≥ 2; fewer
    /// when fewer candidates can learn the task).
    pub ensemble_size: usize,
    /// `ridge`'s settings (`linear` is the same with `alpha = 0`).
    pub ridge: super::linear::LinearConfig,
    /// `svm`'s settings.
    pub svm: super::svm::SvmConfig,
    /// `mlp`'s settings.
    pub mlp: super::mlp::MlpConfig,
    /// `tree`'s settings.
    pub tree: super::tree::TreeConfig,
    /// `forest`'s settings.
    pub forest: super::forest::ForestConfig,
    /// Logistic: L2 penalty strength per sample.
    pub l2: f64,
    /// Logistic: most L-BFGS iterations.
    pub max_iter: usize,
    pub min_labels: u64,
    pub retrain_every: u64,
    pub holdout_fraction: f64,
    /// Start a challenger from the champion's weights (fine-tuning).
    pub warm_start: bool,
    /// Training set: the newest `window` labelled samples (0: all stored;
    /// default 200,000, which bounds a training's memory) plus the
    /// reservoir (a windowed pipeline: the windows of the newest `window`
    /// labelled readings, no reservoir).
    pub window: usize,
    /// ...plus a uniform sample of this many older ones (reservoir), so
    /// that older regimes are not forgotten.
    pub reservoir: usize,
    /// Train on the reservoir as well as the window (true). False: a
    /// challenger is fit on the window only and the reservoir is the older
    /// slice it is judged on by `margin_old` (held out, never trained on);
    /// needs `window > 0` and `reservoir > 0`.
    pub reservoir_in_training: bool,
    /// Also train every this many seconds when new labels arrived (0: off).
    pub schedule_s: u64,
    /// Accuracy a challenger must gain over the champion on the recent
    /// holdout to be promoted (automatic trainings).
    pub margin_recent: f64,
    /// Accuracy a challenger may lose to the champion on the older slice.
    pub margin_old: f64,
    /// After a challenger is promoted over a champion by an automatic
    /// training (not one asked for over the API), both predict each of the
    /// next this many labelled samples newer than its training data, before
    /// its label is known (their prequential record); when the
    /// champion was right more often by more than
    /// [`PROBATION_MARGIN`] (a regressor: a mean absolute error lower by
    /// more than that share), it serves again (a `rollback` event with both
    /// records). 0: off. Not for a pipeline with an online learner (which
    /// chooses by the same record, `[pipelines.online]`).
    pub probation_labels: u64,
    /// Augmentation of the training rows (off by default).
    pub augment: crate::features::augment::AugmentConfig,
    /// Class balance of the training rows (`none` by default).
    pub balance: crate::features::balance::BalanceConfig,
    /// Hyperparameter search before training (`[pipelines.model.search]`).
    pub search: super::tune::SearchConfig,
}

/// How much better the former champion's prequential record must be for a
/// probation to end in a rollback ([`ModelConfig::probation_labels`]): 2
/// points of accuracy, or a 2 % lower mean absolute error; the margin of the
/// online learner's serving choice.
pub const PROBATION_MARGIN: f64 = 0.02;

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            preprocess: Default::default(),
            family: Family::Logistic,
            candidates: vec![],
            metric: None,
            evaluation: Evaluation::Holdout,
            folds: 5,
            ensemble: Default::default(),
            ensemble_size: 3,
            ridge: Default::default(),
            svm: Default::default(),
            mlp: Default::default(),
            tree: Default::default(),
            forest: Default::default(),
            l2: 1e-3,
            max_iter: 300,
            min_labels: 500,
            retrain_every: 2000,
            holdout_fraction: 0.2,
            warm_start: true,
            window: 200_000,
            reservoir: 2000,
            reservoir_in_training: true,
            schedule_s: 0,
            margin_recent: 0.0,
            margin_old: 0.05,
            probation_labels: 200,
            augment: Default::default(),
            balance: Default::default(),
            search: Default::default(),
        }
    }
}

/// Checks a `[pipelines.model]` section (also `edgeloop train`'s settings);
/// `prefix` is prepended to the key named in the error (e.g.
/// `pipelines[0].model.`), `task` is the pipeline's when known.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the first bad key.
pub fn validate_model(
    m: &ModelConfig,
    task: Option<Task>,
    prefix: &str,
) -> Result<(), ConfigError> {
    let bad = |k: &str, reason: String| {
        Err(ConfigError::Invalid {
            key: format!("{prefix}{k}"),
            reason,
        })
    };
    if !(m.l2.is_finite() && m.l2 > 0.0) {
        return bad("l2", format!("{} must be a positive number", m.l2));
    }
    if m.max_iter == 0 {
        return bad("max_iter", "must be at least 1".into());
    }
    if m.min_labels < 10 {
        return bad("min_labels", "must be at least 10".into());
    }
    if m.retrain_every == 0 {
        return bad("retrain_every", "must be at least 1".into());
    }
    if !(m.holdout_fraction > 0.0 && m.holdout_fraction <= 0.5) {
        return bad(
            "holdout_fraction",
            format!("{} must be in (0, 0.5]", m.holdout_fraction),
        );
    }
    if !m.reservoir_in_training && (m.window == 0 || m.reservoir == 0) {
        return bad(
            "reservoir_in_training",
            format!(
                "false needs window > 0 and reservoir > 0 (the reservoir is the older-regime \
                 holdout); window = {}, reservoir = {}",
                m.window, m.reservoir
            ),
        );
    }
    if m.folds < 2 {
        return bad("folds", format!("{} must be at least 2", m.folds));
    }
    let sections = [
        ("ridge", m.ridge.validate()),
        ("svm", m.svm.validate()),
        ("mlp", m.mlp.validate()),
        ("tree", m.tree.validate()),
        ("forest", m.forest.validate()),
        ("augment", m.augment.validate()),
        ("balance", m.balance.validate()),
    ];
    for (section, result) in sections {
        if let Err(reason) = result {
            let (k, reason) = reason.split_once(": ").unwrap_or(("", &reason));
            return bad(&format!("{section}.{k}"), reason.to_string());
        }
    }
    if let Err(reason) = m.search.validate() {
        let (k, reason) = reason.split_once(": ").unwrap_or(("", &reason));
        return bad(&format!("search.{k}"), reason.to_string());
    }
    if m.ridge.alpha == 0.0 {
        return bad(
            "ridge.alpha",
            "must be positive (family `linear` is alpha = 0)".into(),
        );
    }
    if m.candidates.contains(&Family::Auto) {
        return bad("candidates", "`auto` is not a candidate family".into());
    }
    if m.ensemble != super::ensemble::EnsembleMethod::None {
        if m.family != Family::Auto {
            return bad(
                "ensemble",
                "an ensemble is built from `auto`'s candidates: set family = \"auto\"".into(),
            );
        }
        if m.evaluation != crate::learn::select::Evaluation::Holdout {
            return bad(
                "ensemble",
                "an ensemble is compared on the holdout: set evaluation = \"holdout\"".into(),
            );
        }
        if m.ensemble_size < 2 {
            return bad(
                "ensemble_size",
                format!(
                    "{} must be at least 2 (an ensemble has 2 members or more)",
                    m.ensemble_size
                ),
            );
        }
        let able = m
            .candidates
            .iter()
            .filter(|f| task.is_none_or(|t| f.supports(t)))
            .count();
        if !m.candidates.is_empty() && able < 2 {
            return bad(
                "candidates",
                format!(
                    "an ensemble needs at least 2 candidates that can learn the task; got {able}"
                ),
            );
        }
    }
    if let Some(task) = task {
        if !m.family.supports(task) {
            return bad("family", format!("`{}` cannot learn {task}", m.family));
        }
        if task == Task::Regression
            && m.balance.strategy != crate::features::balance::BalanceStrategy::None
        {
            return bad(
                "balance.strategy",
                format!(
                    "`{}` balances classes; regression has none",
                    m.balance.strategy.name()
                ),
            );
        }
        if let Some(metric) = m.metric {
            if metric.task() != task {
                return bad(
                    "metric",
                    format!("`{}` does not score {task}", metric.name()),
                );
            }
        }
    }
    Ok(())
}
