//! What every model family shares: the task, the training target, and the
//! training errors.
//!
//! Each family lives in its own module under [`super::families`] (`logistic`,
//! `linear`, `mlp`, `tree`, `forest`, `svm`) and offers the same shape of API:
//!
//! * `XConfig`: hyperparameters, `serde` with defaults, `validate()` naming
//!   the bad key;
//! * `XModel::fit(x, &Target, feature_names, &cfg, init, cancelled)`: `x` is
//!   `[n, n_features]` row-major f32 with `NaN` = missing, `init` an optional
//!   model of the same family to start from (warm start), `cancelled` polled
//!   between iterations;
//! * `XModel::predict(x)`: class probabilities `[n, n_classes]` row-major for
//!   a classifier, predictions `[n]` for a regressor;
//! * `XModel::to_onnx(version)`: ONNX bytes following
//!   [`crate::onnx::builder`]'s contract.

use serde::{Deserialize, Serialize};

pub use crate::ingest::decode::Task;

/// A model family, by its name in config and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Multinomial logistic regression (softmax) with L2; classification.
    Logistic,
    /// Ordinary least squares; regression.
    Linear,
    /// Least squares with an L2 penalty; regression.
    Ridge,
    /// Multi-layer perceptron (ReLU, Adam); both tasks.
    Mlp,
    /// CART decision tree; both tasks.
    Tree,
    /// Random forest of CART trees; both tasks.
    Forest,
    /// Linear support vector machine (hinge loss) with Platt-calibrated
    /// probabilities; classification.
    Svm,
    /// Trains the configured candidate families on the same split and keeps
    /// the best by the pipeline's metric.
    Auto,
    /// Soft voting or stacking of `auto`'s best candidates
    /// ([`super::ensemble`]); built by `model.ensemble`, never named as a
    /// family in config.
    #[serde(skip_deserializing)]
    Ensemble,
}

impl Family {
    /// Every concrete family (not `auto`), in name order of the docs.
    pub const ALL: [Family; 7] = [
        Family::Logistic,
        Family::Linear,
        Family::Ridge,
        Family::Mlp,
        Family::Tree,
        Family::Forest,
        Family::Svm,
    ];

    /// The name used in config, on the command line and in model cards.
    pub fn name(self) -> &'static str {
        match self {
            Family::Logistic => "logistic",
            Family::Linear => "linear",
            Family::Ridge => "ridge",
            Family::Mlp => "mlp",
            Family::Tree => "tree",
            Family::Forest => "forest",
            Family::Svm => "svm",
            Family::Auto => "auto",
            Family::Ensemble => "ensemble",
        }
    }

    /// Whether the family can learn `task` (`auto` can learn both).
    pub fn supports(self, task: Task) -> bool {
        match self {
            Family::Logistic | Family::Svm => task == Task::Classification,
            Family::Linear | Family::Ridge => task == Task::Regression,
            Family::Mlp | Family::Tree | Family::Forest | Family::Auto | Family::Ensemble => true,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Family {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Family::ALL
            .into_iter()
            .chain([Family::Auto])
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!("unknown family `{s}`; one of logistic, linear, ridge, mlp, tree, forest, svm, auto")
            })
    }
}

pub use crate::features::dataset::Target;

/// Errors from training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training needs labelled samples of at least 2 classes; got {0}")]
    TooFewClasses(usize),
    #[error("training data is empty")]
    Empty,
    #[error("x has {len} values, not a multiple of {n_features} features")]
    Shape { len: usize, n_features: usize },
    #[error("training was cancelled")]
    Cancelled,
    /// The family cannot learn this task (e.g. `svm` for regression).
    #[error("family `{family}` does not support {task}")]
    Unsupported { family: &'static str, task: Task },
    /// The training settings do not fit the data (e.g. an augmentation
    /// window naming a feature the data lacks).
    #[error("training settings: {0}")]
    Settings(String),
    /// A target value is not finite.
    #[error("target value {value} at sample {index} is not finite")]
    BadTarget { index: usize, value: f64 },
    /// Members that cannot form an ensemble.
    #[error("ensemble: {0}")]
    Ensemble(#[from] super::ensemble::EnsembleError),
}

/// Checks `x` against `target` and `n_features`; the checks every `fit`
/// starts with.
///
/// # Errors
/// [`TrainError::Empty`], [`TrainError::Shape`], [`TrainError::BadTarget`].
pub fn check_shapes(x: &[f32], target: &Target<'_>, n_features: usize) -> Result<(), TrainError> {
    if target.is_empty() {
        return Err(TrainError::Empty);
    }
    if n_features == 0 || x.len() != target.len() * n_features {
        return Err(TrainError::Shape {
            len: x.len(),
            n_features,
        });
    }
    if let Target::Values(v) = target {
        if let Some((index, &value)) = v.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(TrainError::BadTarget { index, value });
        }
    }
    Ok(())
}

/// Index of the largest value of each row of `[n, n_classes]` (first on ties,
/// as numpy's `argmax`).
pub fn argmax_rows(proba: &[f32], n_classes: usize) -> Vec<usize> {
    proba
        .chunks_exact(n_classes.max(1))
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        })
        .collect()
}

/// A trained model of any family: what the loop trains, stores (as JSON, for
/// warm starts), scores and exports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", content = "params", rename_all = "snake_case")]
pub enum Model {
    Logistic(super::logistic::LogisticModel),
    /// `linear` and `ridge` (the same model; `alpha` tells them apart).
    Linear(super::linear::LinearModel),
    Svm(super::svm::SvmModel),
    Mlp(super::mlp::MlpModel),
    Tree(super::tree::TreeModel),
    Forest(super::forest::ForestModel),
    /// Soft voting or stacking of models of the families above.
    Ensemble(Box<super::ensemble::EnsembleModel>),
    /// A model of the families above behind fitted preprocessing steps
    /// (`[pipelines.preprocess]`, [`super::preprocess`]).
    Preprocessed(Box<super::preprocess::PreprocessedModel>),
}

/// Calls the same method on whichever family's model `$model` holds.
macro_rules! dispatch {
    ($model:expr, $m:ident => $body:expr) => {
        match $model {
            Model::Logistic($m) => $body,
            Model::Linear($m) => $body,
            Model::Svm($m) => $body,
            Model::Mlp($m) => $body,
            Model::Tree($m) => $body,
            Model::Forest($m) => $body,
            Model::Ensemble($m) => $body,
            Model::Preprocessed($m) => $body,
        }
    };
}

impl Model {
    /// The family's name.
    pub fn family(&self) -> Family {
        match self {
            Model::Logistic(_) => Family::Logistic,
            Model::Linear(m) if m.config.alpha == 0.0 => Family::Linear,
            Model::Linear(_) => Family::Ridge,
            Model::Svm(_) => Family::Svm,
            Model::Mlp(_) => Family::Mlp,
            Model::Tree(_) => Family::Tree,
            Model::Forest(_) => Family::Forest,
            Model::Ensemble(_) => Family::Ensemble,
            Model::Preprocessed(m) => m.model.family(),
        }
    }

    /// What the model predicts.
    pub fn task(&self) -> Task {
        dispatch!(self, m => m.task())
    }

    /// Class names, output column order (empty for a regressor).
    pub fn classes(&self) -> &[String] {
        dispatch!(self, m => m.classes())
    }

    /// Feature names, input order.
    pub fn feature_names(&self) -> &[String] {
        dispatch!(self, m => m.feature_names())
    }

    /// A classifier's probabilities `[n, n_classes]` row-major, or a
    /// regressor's predictions `[n]`, for `x` (`[n, n_features]`, `NaN` =
    /// missing); equal to the exported ONNX graph's first output within 1e-5.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        dispatch!(self, m => m.predict(x))
    }

    /// ONNX bytes following [`crate::onnx::builder`]'s contract.
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        dispatch!(self, m => m.to_onnx(version))
    }

    /// Decodes a stored model's parameters: this enum's JSON, or the bare
    /// logistic model edgeloop 0.1 stored.
    pub fn from_json(json: &str) -> Option<Self> {
        serde_json::from_str(json)
            .ok()
            .or_else(|| serde_json::from_str(json).ok().map(Model::Logistic))
    }
}
