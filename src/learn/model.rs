//! What every model family shares: the task, the training target, and the
//! training errors.
//!
//! Each family lives in its own module (`logistic`, `linear`, `mlp`, `tree`,
//! `forest`, `svm`) and offers the same shape of API:
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

/// What a model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// A class out of a fixed set; outputs are class probabilities.
    #[default]
    Classification,
    /// A real number.
    Regression,
}

/// The training target.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Class indices `[n]` into `classes` (every index < `classes.len()`).
    /// Classes absent from `y` are still outputs of the model (probability
    /// columns), as with a label set declared in the pipeline.
    Classes {
        y: &'a [usize],
        classes: &'a [String],
    },
    /// Real-valued targets `[n]`.
    Values(&'a [f64]),
}

impl Target<'_> {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Target::Classes { y, .. } => y.len(),
            Target::Values(v) => v.len(),
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The task this target trains for.
    pub fn task(&self) -> Task {
        match self {
            Target::Classes { .. } => Task::Classification,
            Target::Values(_) => Task::Regression,
        }
    }
}

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
    #[error("family `{family}` does not support {task:?}")]
    Unsupported { family: &'static str, task: Task },
    /// A target value is not finite.
    #[error("target value {value} at sample {index} is not finite")]
    BadTarget { index: usize, value: f64 },
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
