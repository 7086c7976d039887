//! Model selection: the metric a pipeline compares models by, how they are
//! evaluated (temporal holdout, k-fold cross-validation), and the scoring
//! of a model on a dataset.

use serde::{Deserialize, Serialize};

use crate::learn::model::{argmax_rows, Model, Task};
use crate::learn::Dataset;

/// A score to compare models by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Fraction of correct predictions (classification).
    Accuracy,
    /// Unweighted mean of the per-class F1 (classification).
    F1Macro,
    /// Coefficient of determination (regression).
    R2,
    /// Root mean squared error, target units (regression; lower is better).
    Rmse,
    /// Mean absolute error, target units (regression; lower is better).
    Mae,
}

impl Metric {
    /// The default for a task: accuracy, or R².
    pub fn default_for(task: Task) -> Self {
        match task {
            Task::Classification => Metric::Accuracy,
            Task::Regression => Metric::R2,
        }
    }

    /// The task the metric scores.
    pub fn task(self) -> Task {
        match self {
            Metric::Accuracy | Metric::F1Macro => Task::Classification,
            Metric::R2 | Metric::Rmse | Metric::Mae => Task::Regression,
        }
    }

    /// Whether a larger value is better.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::Rmse | Metric::Mae)
    }

    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        if self.higher_is_better() {
            a > b
        } else {
            a < b
        }
    }

    /// The name used in config and cards.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1Macro => "f1_macro",
            Metric::R2 => "r2",
            Metric::Rmse => "rmse",
            Metric::Mae => "mae",
        }
    }
}

/// How a pipeline evaluates what it trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evaluation {
    /// The newest `holdout_fraction` of samples (time order kept).
    #[default]
    Holdout,
    /// The holdout, plus k-fold cross-validation over the training part
    /// (stratified for classification, folds in time order, no shuffle):
    /// candidates are compared by the mean over folds.
    Kfold,
}

/// What scoring needs of a model: one edgeloop trained ([`Model`]) or one
/// served by an engine without parameters edgeloop can read (an imported
/// champion, [`crate::onnx::engine::OnnxModel`]).
pub trait Predictor {
    /// What the model predicts.
    fn task(&self) -> Task;
    /// Class names in output column order (empty for a regressor).
    fn classes(&self) -> &[String];
    /// Probabilities `[n_rows, n_classes]` or values `[n_rows]`, row-major,
    /// for `x` (`[n_rows, n_features]`); `None` when the model cannot
    /// predict `x` (the engine failed).
    fn predict_rows(&self, x: &[f32]) -> Option<Vec<f32>>;
}

impl Predictor for Model {
    fn task(&self) -> Task {
        Model::task(self)
    }
    fn classes(&self) -> &[String] {
        Model::classes(self)
    }
    fn predict_rows(&self, x: &[f32]) -> Option<Vec<f32>> {
        Some(self.predict(x))
    }
}

impl Predictor for crate::onnx::engine::OnnxModel {
    fn task(&self) -> Task {
        crate::onnx::engine::OnnxModel::task(self)
    }
    fn classes(&self) -> &[String] {
        crate::onnx::engine::OnnxModel::classes(self)
    }
    fn predict_rows(&self, x: &[f32]) -> Option<Vec<f32>> {
        self.predict_proba(x).ok()
    }
}

/// Predicted class indices of `model` for `data`'s rows, or predicted values.
pub enum Predictions {
    Classes(Vec<usize>),
    Values(Vec<f64>),
}

/// `model`'s predictions on `data`. Classes are mapped by name to `data`'s
/// class indices (a champion may know classes the data lacks: those map to
/// `usize::MAX`, never equal to a true label). `None` when the model cannot
/// predict the rows or gives the wrong number of values.
pub fn predictions(model: &dyn Predictor, data: &Dataset) -> Option<Predictions> {
    let out = model.predict_rows(&data.x)?;
    let per_row = match model.task() {
        Task::Classification => model.classes().len(),
        Task::Regression => 1,
    };
    if out.len() != data.len() * per_row {
        return None;
    }
    Some(match model.task() {
        Task::Classification => {
            let classes = model.classes();
            let map: Vec<usize> = classes
                .iter()
                .map(|c| {
                    data.classes
                        .iter()
                        .position(|d| d == c)
                        .unwrap_or(usize::MAX)
                })
                .collect();
            Predictions::Classes(
                argmax_rows(&out, classes.len())
                    .into_iter()
                    .map(|k| map[k])
                    .collect(),
            )
        }
        Task::Regression => Predictions::Values(out.iter().map(|&v| f64::from(v)).collect()),
    })
}

/// `metric` of `model` on `data`; `None` when `data` is empty, the metric
/// does not fit the task or the model cannot predict the rows.
pub fn score(model: &dyn Predictor, data: &Dataset, metric: Metric) -> Option<f64> {
    if data.is_empty() || metric.task() != model.task() {
        return None;
    }
    match predictions(model, data)? {
        Predictions::Classes(pred) => score_classes(&data.y, &pred, data.classes.len(), metric),
        Predictions::Values(pred) => score_values(&data.values, &pred, metric),
    }
}

fn score_classes(y: &[usize], pred: &[usize], n_classes: usize, metric: Metric) -> Option<f64> {
    match metric {
        Metric::Accuracy => {
            let correct = y.iter().zip(pred).filter(|(a, b)| a == b).count();
            Some(correct as f64 / y.len() as f64)
        }
        Metric::F1Macro => {
            // Predictions of classes the data lacks count as wrong.
            let names: Vec<String> = (0..=n_classes).map(|i| i.to_string()).collect();
            let pred: Vec<usize> = pred.iter().map(|&p| p.min(n_classes)).collect();
            super::metrics::classification_metrics(y, &pred, &names)
                .ok()
                .map(|m| m.f1_macro)
        }
        _ => None,
    }
}

fn score_values(y: &[f64], pred: &[f64], metric: Metric) -> Option<f64> {
    let m = super::metrics::regression_metrics(y, pred).ok()?;
    match metric {
        Metric::R2 => m.r2,
        Metric::Rmse => Some(m.rmse),
        Metric::Mae => Some(m.mae),
        _ => None,
    }
}
