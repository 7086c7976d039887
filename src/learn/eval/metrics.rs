//! Evaluation metrics on a holdout or a fold.
//!
//! * From class predictions, [`classification_metrics`]: accuracy, per-class precision,
//!   recall, F1 and support, their macro and support-weighted averages, and the confusion
//!   matrix.
//! * From class probabilities, [`probabilistic_metrics`]: log loss, and ROC AUC for a
//!   binary task. A separate function and struct, since it needs the probabilities, not
//!   only the argmax; a card holds both.
//! * From real-valued predictions, [`regression_metrics`]: MSE, RMSE, MAE and R².
//!
//! Every value equals scikit-learn 1.9.1 (`sklearn.metrics`):
//! [`accuracy_score`], [`precision_recall_fscore_support`] and [`confusion_matrix`],
//! with the labels chosen by `sklearn.utils.multiclass.unique_labels`; [`log_loss`],
//! [`roc_auc_score`]; [`mean_squared_error`], [`root_mean_squared_error`],
//! [`mean_absolute_error`], [`r2_score`]. Each function says where it departs. The
//! reference values live in `tests/fixtures/metrics/metrics.json`, written by
//! `gen_metrics.py` beside it, and `tests/reference_metrics.rs` checks this module
//! against them.
//!
//! [`accuracy_score`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html
//! [`precision_recall_fscore_support`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_recall_fscore_support.html
//! [`confusion_matrix`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html
//! [`log_loss`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.log_loss.html
//! [`roc_auc_score`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html
//! [`mean_squared_error`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.mean_squared_error.html
//! [`root_mean_squared_error`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.root_mean_squared_error.html
//! [`mean_absolute_error`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.mean_absolute_error.html
//! [`r2_score`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.r2_score.html

use serde::{Deserialize, Serialize};

/// Scores of one class of [`ClassificationMetrics::labels`].
///
/// Follows `precision_recall_fscore_support(average=None, labels=labels)` of
/// scikit-learn 1.9.1. `None` marks a value sklearn calls ill-defined (its
/// `zero_division` case): precision when the class is never predicted (tp + fp = 0),
/// recall when it never occurs in y_true (tp + fn = 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    /// Class name, from the caller's `class_names`.
    pub label: String,
    /// tp / (tp + fp); `None` when the class is never predicted.
    pub precision: Option<f64>,
    /// tp / (tp + fn); `None` when the class never occurs in y_true.
    pub recall: Option<f64>,
    /// 2tp / (2tp + fp + fn), as sklearn computes it ((1 + β²)tp / (β²(tp + fn) + tp + fp),
    /// β = 1), not from precision and recall. Always defined, since a
    /// class in the union occurs in y_true or y_pred, so the denominator is > 0.
    pub f1: f64,
    /// Samples of this class in y_true (tp + fn).
    pub support: u64,
}

/// Metrics of one set of predictions against the true labels (a holdout, a fold).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Labels the scores and the confusion matrix are over: sorted union of the labels
    /// present in y_true and y_pred (sklearn `unique_labels`), as class names.
    /// A class of the model that occurs in neither is left out.
    pub labels: Vec<String>,
    /// Fraction of samples whose prediction equals the true label (`accuracy_score`).
    pub accuracy: f64,
    /// Macro averages over `labels`; an undefined per-class value counts as 0, as
    /// sklearn's default `zero_division="warn"` does (it also warns; we list the
    /// undefined values in [`Self::undefined`]).
    pub precision_macro: f64,
    /// Macro-averaged recall over `labels`; undefined values count as 0.
    pub recall_macro: f64,
    /// Macro-averaged F1 over `labels` (mean of the per-class F1, not the F1 of the
    /// macro precision and recall, as in sklearn).
    pub f1_macro: f64,
    /// Support-weighted average of the per-class precision over `labels`
    /// (`average="weighted"`): Σ support·precision / n_samples, an undefined precision
    /// counting as 0 as in sklearn. [`classification_metrics`] always fills it; `None`
    /// only in cards stored before edgeloop computed it.
    #[serde(default)]
    pub precision_weighted: Option<f64>,
    /// Support-weighted recall; equals [`Self::accuracy`] (Σ tp / n). `None` only in
    /// older cards.
    #[serde(default)]
    pub recall_weighted: Option<f64>,
    /// Support-weighted mean of the per-class F1. `None` only in older cards.
    #[serde(default)]
    pub f1_weighted: Option<f64>,
    /// One entry per label, in the order of `labels`.
    pub per_class: Vec<ClassScores>,
    /// `confusion[i][j]` = samples with true label `labels[i]` predicted as `labels[j]`
    /// (sklearn `confusion_matrix` orientation). Shape `[labels.len(), labels.len()]`.
    pub confusion: Vec<Vec<u64>>,
    /// Human-readable notes of undefined values, e.g.
    /// `precision of class "1" undefined: never predicted`. Empty when everything is
    /// defined.
    pub undefined: Vec<String>,
    /// Number of samples scored.
    pub n_samples: u64,
}

/// Why metrics could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// y_true and y_pred differ in length.
    #[error("y_true has {y_true} samples but y_pred has {y_pred}")]
    LengthMismatch {
        /// Length of y_true.
        y_true: usize,
        /// Length of y_pred.
        y_pred: usize,
    },
    /// No samples to score.
    #[error("no samples to score")]
    Empty,
    /// A label is not an index into `class_names`.
    #[error("{which}[{position}] = {class} is out of range for {n_classes} classes")]
    ClassOutOfRange {
        /// `"y_true"` or `"y_pred"`.
        which: &'static str,
        /// Sample position of the bad label.
        position: usize,
        /// The bad class index.
        class: usize,
        /// Number of classes (`class_names.len()`).
        n_classes: usize,
    },
    /// Probabilities need at least two classes (sklearn's `log_loss` raises too).
    #[error("probabilistic metrics need at least 2 classes; got {n_classes}")]
    TooFewClasses {
        /// Number of classes (`class_names.len()`).
        n_classes: usize,
    },
    /// `proba` is not `[y_true.len(), n_classes]`.
    #[error("proba has {len} values, not {n_samples} samples × {n_classes} classes")]
    ProbaShape {
        /// `proba.len()`.
        len: usize,
        /// `y_true.len()`.
        n_samples: usize,
        /// Number of classes.
        n_classes: usize,
    },
    /// A probability is NaN or outside [0, 1] (sklearn raises a `ValueError`).
    #[error("proba[{sample}, {class}] = {value} is not a probability in [0, 1]")]
    NotAProbability {
        /// Sample (row) of the bad value.
        sample: usize,
        /// Class (column) of the bad value.
        class: usize,
        /// The bad value.
        value: f32,
    },
    /// A regression target or prediction is NaN or infinite (sklearn raises a
    /// `ValueError`).
    #[error("{which}[{position}] = {value} is not finite")]
    NonFinite {
        /// `"y_true"` or `"y_pred"`.
        which: &'static str,
        /// Sample position of the bad value.
        position: usize,
        /// The bad value.
        value: f64,
    },
}

/// Scores `y_pred` against `y_true`.
///
/// y_true / y_pred are class indices into `class_names` (the model's classes, sorted).
/// Same length required. The result equals scikit-learn 1.9.1's `accuracy_score`,
/// `precision_recall_fscore_support` (per class with `labels=unique_labels(y_true,
/// y_pred)`, macro with the default `zero_division`) and `confusion_matrix` on the same
/// integer arrays; see the module docs for the fixture that checks it. The weighted
/// averages equal `average="weighted"` with the default `zero_division`.
///
/// # Errors
/// [`MetricsError::LengthMismatch`] when the lengths differ, [`MetricsError::Empty`] when
/// there are no samples, [`MetricsError::ClassOutOfRange`] when an index is
/// `>= class_names.len()` (checked in that order; y_true before y_pred).
pub fn classification_metrics(
    y_true: &[usize],
    y_pred: &[usize],
    class_names: &[String],
) -> Result<ClassificationMetrics, MetricsError> {
    if y_true.len() != y_pred.len() {
        return Err(MetricsError::LengthMismatch {
            y_true: y_true.len(),
            y_pred: y_pred.len(),
        });
    }
    if y_true.is_empty() {
        return Err(MetricsError::Empty);
    }
    let n_classes = class_names.len();
    for (which, ys) in [("y_true", y_true), ("y_pred", y_pred)] {
        if let Some((position, &class)) = ys.iter().enumerate().find(|(_, &c)| c >= n_classes) {
            return Err(MetricsError::ClassOutOfRange {
                which,
                position,
                class,
                n_classes,
            });
        }
    }

    // Full matrix over the model's classes, then restricted to the union.
    let mut full = vec![vec![0u64; n_classes]; n_classes];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        full[t][p] += 1;
    }
    let true_count: Vec<u64> = full.iter().map(|row| row.iter().sum()).collect();
    let pred_count: Vec<u64> = (0..n_classes)
        .map(|j| full.iter().map(|row| row[j]).sum())
        .collect();
    let union: Vec<usize> = (0..n_classes)
        .filter(|&k| true_count[k] > 0 || pred_count[k] > 0)
        .collect();

    let n_samples = y_true.len() as u64;
    let correct: u64 = (0..n_classes).map(|k| full[k][k]).sum();

    let mut per_class = Vec::with_capacity(union.len());
    let mut undefined = Vec::new();
    for &k in &union {
        let name = &class_names[k];
        let tp = full[k][k];
        let fp = pred_count[k] - tp;
        let fn_ = true_count[k] - tp;
        let precision = if pred_count[k] == 0 {
            undefined.push(format!(
                "precision of class {name:?} undefined: never predicted"
            ));
            None
        } else {
            Some(tp as f64 / pred_count[k] as f64)
        };
        let recall = if true_count[k] == 0 {
            undefined.push(format!(
                "recall of class {name:?} undefined: absent from y_true"
            ));
            None
        } else {
            Some(tp as f64 / true_count[k] as f64)
        };
        // 2tp + fp + fn > 0 because k is in the union.
        let f1 = (2 * tp) as f64 / (2 * tp + fp + fn_) as f64;
        per_class.push(ClassScores {
            label: name.clone(),
            precision,
            recall,
            f1,
            support: true_count[k],
        });
    }

    let n_labels = per_class.len() as f64;
    let macro_of =
        |f: &dyn Fn(&ClassScores) -> f64| per_class.iter().map(f).sum::<f64>() / n_labels;
    let precision_macro = macro_of(&|c| c.precision.unwrap_or(0.0));
    let recall_macro = macro_of(&|c| c.recall.unwrap_or(0.0));
    let f1_macro = macro_of(&|c| c.f1);
    // The weights are the supports, which sum to n_samples > 0.
    let weighted_of = |f: &dyn Fn(&ClassScores) -> f64| {
        per_class
            .iter()
            .map(|c| c.support as f64 * f(c))
            .sum::<f64>()
            / n_samples as f64
    };
    let precision_weighted = weighted_of(&|c| c.precision.unwrap_or(0.0));
    let recall_weighted = weighted_of(&|c| c.recall.unwrap_or(0.0));
    let f1_weighted = weighted_of(&|c| c.f1);

    let confusion = union
        .iter()
        .map(|&i| union.iter().map(|&j| full[i][j]).collect())
        .collect();

    Ok(ClassificationMetrics {
        labels: union.iter().map(|&k| class_names[k].clone()).collect(),
        accuracy: correct as f64 / n_samples as f64,
        precision_macro,
        recall_macro,
        f1_macro,
        precision_weighted: Some(precision_weighted),
        recall_weighted: Some(recall_weighted),
        f1_weighted: Some(f1_weighted),
        per_class,
        confusion,
        undefined,
        n_samples,
    })
}

/// Metrics of predicted class probabilities against the true labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbabilisticMetrics {
    /// Mean negative log-likelihood of the true class, natural log (`log_loss`).
    /// Always defined for valid input.
    pub log_loss: f64,
    /// Area under the ROC curve of the class-1 probability (`roc_auc_score(y_true,
    /// proba[:, 1])`). `None` for more than two classes (not computed) and when y_true
    /// holds one class only (sklearn returns NaN and warns); [`Self::undefined`] says
    /// which.
    pub roc_auc: Option<f64>,
    /// Human-readable notes of undefined or not computed values, e.g.
    /// `ROC AUC undefined: only class "1" in y_true`. Empty when everything is defined.
    pub undefined: Vec<String>,
    /// Number of samples scored.
    pub n_samples: u64,
}

/// Scores predicted probabilities `proba` against `y_true`.
///
/// `proba` is `[y_true.len(), class_names.len()]` row-major `f32`, column `k` the
/// probability of `class_names[k]` (the model's classes, sorted; a model's
/// `predict_proba` output); `y_true` holds class indices into `class_names`.
///
/// * Log loss equals scikit-learn 1.9.1's `log_loss(y_true, proba,
///   labels=range(n_classes))`: each probability is clipped to `[eps, 1 - eps]` with
///   `eps = f32::EPSILON` (sklearn's `np.finfo(proba.dtype).eps` for float32 input);
///   rows are not renormalised (sklearn only warns when a row does not sum to 1).
///   The sum runs in `f64`, where sklearn, given float32, runs in float32: the
///   fixture's reference is sklearn on the clipped values widened to float64, and
///   sklearn's own float32 result is within 1e-6 relative of it.
/// * ROC AUC, for two classes, equals `roc_auc_score(y_true, proba[:, 1])`: the
///   trapezoid under the ROC curve with one point per distinct score, so tied scores
///   of a positive and a negative count one half. Computed from integer counts as
///   Σ Δfp·(tp + tp_prev) / (2·P·N); sklearn's dropping of collinear points does not
///   change the area.
///
/// # Errors
/// Checked in this order: [`MetricsError::TooFewClasses`] when `class_names` has fewer
/// than 2 classes, [`MetricsError::Empty`], [`MetricsError::ProbaShape`],
/// [`MetricsError::ClassOutOfRange`] (y_true), [`MetricsError::NotAProbability`] (first
/// in row-major order) — sklearn raises a `ValueError` in each case.
pub fn probabilistic_metrics(
    y_true: &[usize],
    proba: &[f32],
    class_names: &[String],
) -> Result<ProbabilisticMetrics, MetricsError> {
    let n_classes = class_names.len();
    if n_classes < 2 {
        return Err(MetricsError::TooFewClasses { n_classes });
    }
    if y_true.is_empty() {
        return Err(MetricsError::Empty);
    }
    let n = y_true.len();
    if proba.len() != n * n_classes {
        return Err(MetricsError::ProbaShape {
            len: proba.len(),
            n_samples: n,
            n_classes,
        });
    }
    if let Some((position, &class)) = y_true.iter().enumerate().find(|(_, &c)| c >= n_classes) {
        return Err(MetricsError::ClassOutOfRange {
            which: "y_true",
            position,
            class,
            n_classes,
        });
    }
    if let Some((i, &value)) = proba
        .iter()
        .enumerate()
        .find(|(_, &p)| !(0.0..=1.0).contains(&p))
    {
        return Err(MetricsError::NotAProbability {
            sample: i / n_classes,
            class: i % n_classes,
            value,
        });
    }

    let eps = f64::from(f32::EPSILON);
    let log_loss = y_true
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            -f64::from(proba[i * n_classes + y])
                .clamp(eps, 1.0 - eps)
                .ln()
        })
        .sum::<f64>()
        / n as f64;

    let mut undefined = Vec::new();
    let roc_auc = if n_classes != 2 {
        undefined.push(format!(
            "ROC AUC not computed: {n_classes} classes, binary tasks only"
        ));
        None
    } else {
        let scores: Vec<f32> = proba.chunks_exact(2).map(|row| row[1]).collect();
        let auc = binary_roc_auc(y_true, &scores);
        if auc.is_none() {
            let only = &class_names[y_true[0]];
            undefined.push(format!("ROC AUC undefined: only class {only:?} in y_true"));
        }
        auc
    };

    Ok(ProbabilisticMetrics {
        log_loss,
        roc_auc,
        undefined,
        n_samples: n as u64,
    })
}

/// ROC AUC of `scores` for `y_true` (1 = positive, else negative); `None` when one
/// of the two classes is absent. Scores are finite (checked by the caller).
fn binary_roc_auc(y_true: &[usize], scores: &[f32]) -> Option<f64> {
    let positives = y_true.iter().filter(|&&y| y == 1).count() as u64;
    let negatives = y_true.len() as u64 - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // Twice the area in units of one positive × one negative: exact in integers.
    let (mut tp, mut fp, mut twice_area) = (0u64, 0u64, 0u128);
    let mut start = 0;
    while start < order.len() {
        let (tp_prev, fp_prev) = (tp, fp);
        let mut end = start;
        // -0.0 and 0.0 compare equal, as in numpy; they sort next to each other.
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            if y_true[order[end]] == 1 {
                tp += 1;
            } else {
                fp += 1;
            }
            end += 1;
        }
        twice_area += u128::from(fp - fp_prev) * u128::from(tp + tp_prev);
        start = end;
    }
    Some(twice_area as f64 / (2.0 * positives as f64 * negatives as f64))
}

/// Metrics of real-valued predictions against the true values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionMetrics {
    /// Mean squared error (`mean_squared_error`), in the target's unit squared.
    pub mse: f64,
    /// Root mean squared error (`root_mean_squared_error`, √mse), in the target's unit.
    pub rmse: f64,
    /// Mean absolute error (`mean_absolute_error`), in the target's unit.
    pub mae: f64,
    /// Coefficient of determination (`r2_score`, `force_finite=True`):
    /// 1 − Σ(y − ŷ)² / Σ(y − ȳ)². When y_true is constant: 1.0 if every prediction is
    /// exact, else 0.0. `None` with fewer than 2 samples (sklearn returns NaN and
    /// warns).
    pub r2: Option<f64>,
    /// Number of samples scored.
    pub n_samples: u64,
}

/// Scores real-valued predictions `y_pred` against `y_true` (same length, `[n]`).
///
/// Equals scikit-learn 1.9.1's `mean_squared_error`, `root_mean_squared_error`,
/// `mean_absolute_error` and `r2_score` (defaults, single output). One departure, on
/// R² with a constant y_true: sklearn's `force_finite` rule (1.0 if perfect, else 0.0)
/// applies when its denominator Σ(y − ȳ)² is exactly 0, which depends on numpy
/// computing the mean ȳ without rounding: `r2_score([0.1]*3, [0.2]*3)` gives
/// -5.2e31, since 0.1 + 0.1 + 0.1 ≠ 0.3. Here the rule applies whenever every y_true
/// is equal (or the denominator is 0), so that case gives 0.0.
///
/// # Errors
/// [`MetricsError::LengthMismatch`] when the lengths differ, [`MetricsError::Empty`]
/// when there are no samples, [`MetricsError::NonFinite`] on a NaN or infinite value
/// (y_true before y_pred), in that order.
pub fn regression_metrics(
    y_true: &[f64],
    y_pred: &[f64],
) -> Result<RegressionMetrics, MetricsError> {
    if y_true.len() != y_pred.len() {
        return Err(MetricsError::LengthMismatch {
            y_true: y_true.len(),
            y_pred: y_pred.len(),
        });
    }
    if y_true.is_empty() {
        return Err(MetricsError::Empty);
    }
    for (which, ys) in [("y_true", y_true), ("y_pred", y_pred)] {
        if let Some((position, &value)) = ys.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(MetricsError::NonFinite {
                which,
                position,
                value,
            });
        }
    }
    let n = y_true.len() as f64;
    let ss_res: f64 = y_true
        .iter()
        .zip(y_pred)
        .map(|(t, p)| (t - p) * (t - p))
        .sum();
    let mae = y_true
        .iter()
        .zip(y_pred)
        .map(|(t, p)| (t - p).abs())
        .sum::<f64>()
        / n;
    let mse = ss_res / n;
    let r2 = (y_true.len() >= 2).then(|| {
        let mean = y_true.iter().sum::<f64>() / n;
        let ss_tot: f64 = y_true.iter().map(|t| (t - mean) * (t - mean)).sum();
        let constant = y_true.iter().all(|&t| t == y_true[0]);
        if ss_res == 0.0 {
            1.0
        } else if constant || ss_tot == 0.0 {
            0.0
        } else {
            1.0 - ss_res / ss_tot
        }
    });
    Ok(RegressionMetrics {
        mse,
        rmse: mse.sqrt(),
        mae,
        r2,
        n_samples: y_true.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn errors_are_checked_in_order() {
        let c = names(&["0", "1"]);
        assert_eq!(
            classification_metrics(&[0, 1], &[0], &c),
            Err(MetricsError::LengthMismatch {
                y_true: 2,
                y_pred: 1
            })
        );
        assert_eq!(
            classification_metrics(&[], &[], &c),
            Err(MetricsError::Empty)
        );
        assert_eq!(
            classification_metrics(&[0, 2], &[5, 0], &c),
            Err(MetricsError::ClassOutOfRange {
                which: "y_true",
                position: 1,
                class: 2,
                n_classes: 2
            })
        );
        assert_eq!(
            classification_metrics(&[0, 1], &[1, 2], &c),
            Err(MetricsError::ClassOutOfRange {
                which: "y_pred",
                position: 1,
                class: 2,
                n_classes: 2
            })
        );
        assert_eq!(
            classification_metrics(&[0], &[0], &[]),
            Err(MetricsError::ClassOutOfRange {
                which: "y_true",
                position: 0,
                class: 0,
                n_classes: 0
            })
        );
    }

    /// Hand derivation: every sample is class 0 and predicted 0, so the union is {0},
    /// tp = n = 3, fp = fn = 0: precision = recall = F1 = accuracy = 1, matrix [[3]].
    #[test]
    fn single_label_union_drops_the_other_class() {
        let m = classification_metrics(&[0, 0, 0], &[0, 0, 0], &names(&["0", "1"])).unwrap();
        assert_eq!(m.labels, names(&["0"]));
        assert_eq!(m.confusion, vec![vec![3]]);
        assert_eq!(m.accuracy, 1.0);
        assert_eq!(
            (m.precision_macro, m.recall_macro, m.f1_macro),
            (1.0, 1.0, 1.0)
        );
        assert_eq!(
            m.per_class,
            vec![ClassScores {
                label: "0".into(),
                precision: Some(1.0),
                recall: Some(1.0),
                f1: 1.0,
                support: 3
            }]
        );
        assert!(m.undefined.is_empty());
        assert_eq!(m.n_samples, 3);
    }

    /// Hand derivation: y_true all "1" (4 samples), y_pred all "0".
    /// Class "0": tp 0, fp 4, fn 0 → precision 0/4 = 0, recall 0/0 undefined, F1 0/4 = 0.
    /// Class "1": tp 0, fp 0, fn 4 → precision 0/0 undefined, recall 0/4 = 0, F1 0.
    /// Undefined counts as 0 in the macro: all macros 0; accuracy 0/4.
    #[test]
    fn all_wrong_single_true_class_has_both_undefined() {
        let m = classification_metrics(&[1; 4], &[0; 4], &names(&["0", "1"])).unwrap();
        assert_eq!(m.labels, names(&["0", "1"]));
        assert_eq!(m.confusion, vec![vec![0, 0], vec![4, 0]]);
        assert_eq!(m.per_class[0].precision, Some(0.0));
        assert_eq!(m.per_class[0].recall, None);
        assert_eq!(m.per_class[1].precision, None);
        assert_eq!(m.per_class[1].recall, Some(0.0));
        assert_eq!((m.per_class[0].f1, m.per_class[1].f1), (0.0, 0.0));
        assert_eq!((m.per_class[0].support, m.per_class[1].support), (0, 4));
        assert_eq!(
            (m.accuracy, m.precision_macro, m.recall_macro, m.f1_macro),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert_eq!(
            m.undefined,
            vec![
                "recall of class \"0\" undefined: absent from y_true".to_string(),
                "precision of class \"1\" undefined: never predicted".to_string(),
            ]
        );
    }

    /// Hand derivation, the occupancy night: 8 samples all true "0", 2 predicted "1".
    /// Class "0": tp 6, fp 0, fn 2 → precision 6/6 = 1, recall 6/8 = 0.75,
    /// F1 = 12/(12+0+2) = 6/7. Class "1": tp 0, fp 2, fn 0 → precision 0/2 = 0,
    /// recall undefined, F1 0/2 = 0. Macro: precision (1+0)/2 = 0.5, recall
    /// (0.75+0)/2 = 0.375, F1 (6/7)/2 = 3/7. Accuracy 6/8.
    #[test]
    fn false_positives_on_an_all_negative_holdout() {
        let y_pred = [0, 1, 0, 0, 0, 1, 0, 0];
        let m = classification_metrics(&[0; 8], &y_pred, &names(&["0", "1"])).unwrap();
        assert_eq!(m.confusion, vec![vec![6, 2], vec![0, 0]]);
        assert_eq!(m.accuracy, 0.75);
        assert_eq!(m.per_class[0].precision, Some(1.0));
        assert_eq!(m.per_class[0].recall, Some(0.75));
        assert!((m.per_class[0].f1 - 6.0 / 7.0).abs() < 1e-15);
        assert_eq!(
            (
                m.per_class[1].precision,
                m.per_class[1].recall,
                m.per_class[1].f1
            ),
            (Some(0.0), None, 0.0)
        );
        assert_eq!((m.precision_macro, m.recall_macro), (0.5, 0.375));
        assert!((m.f1_macro - 3.0 / 7.0).abs() < 1e-15);
        // Weighted by support (8 and 0): class "0"'s values alone.
        assert_eq!(m.precision_weighted, Some(1.0));
        assert_eq!(m.recall_weighted, Some(0.75));
        assert!((m.f1_weighted.unwrap() - 6.0 / 7.0).abs() < 1e-15);
        assert_eq!(
            m.undefined,
            vec!["recall of class \"1\" undefined: absent from y_true".to_string()]
        );
    }

    /// Hand derivation: 4 classes a..d; "b" occurs in neither array, so labels are
    /// [a, c, d] and the 3×3 matrix skips it. Pairs (true→pred): a→a, a→c, c→c, d→a,
    /// d→d, d→d. Row a = [1,1,0], row c = [0,1,0], row d = [1,0,2]. Accuracy 4/6.
    /// Class "c": tp 1, fp 1 (a→c), fn 0 → precision 1/2, recall 1, F1 2/3.
    #[test]
    fn class_absent_from_both_is_not_a_label() {
        let m = classification_metrics(
            &[0, 0, 2, 3, 3, 3],
            &[0, 2, 2, 0, 3, 3],
            &names(&["a", "b", "c", "d"]),
        )
        .unwrap();
        assert_eq!(m.labels, names(&["a", "c", "d"]));
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 2]]
        );
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-15);
        let c = &m.per_class[1];
        assert_eq!(
            (c.label.as_str(), c.precision, c.recall, c.support),
            ("c", Some(0.5), Some(1.0), 1)
        );
        assert!((c.f1 - 2.0 / 3.0).abs() < 1e-15);
        assert!(m.undefined.is_empty());
    }

    #[test]
    fn undefined_serialises_as_null() {
        let m = classification_metrics(&[1; 2], &[0; 2], &names(&["0", "1"])).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        assert!(v["per_class"][1]["precision"].is_null());
        let back: ClassificationMetrics = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }

    /// Hand derivation: supports 2 ("a") and 1 ("c"), 1 ("d") → pairs as in
    /// `class_absent_from_both_is_not_a_label` but weighted: precision a = 1/2, c = 1/2,
    /// d = 1, weighted (2·1/2 + 1·1/2 + 3·1)/6 = 4.5/6 = 0.75; recall weighted = accuracy.
    #[test]
    fn weighted_averages_weigh_by_support() {
        let m = classification_metrics(
            &[0, 0, 2, 3, 3, 3],
            &[0, 2, 2, 0, 3, 3],
            &names(&["a", "b", "c", "d"]),
        )
        .unwrap();
        assert!((m.precision_weighted.unwrap() - 0.75).abs() < 1e-15);
        assert!((m.recall_weighted.unwrap() - m.accuracy).abs() < 1e-15);
        // F1: a = 2/(2+1+1) = 1/2, c = 2/3, d = 4/5 → (2·1/2 + 2/3 + 3·4/5)/6.
        let f1 = (1.0 + 2.0 / 3.0 + 12.0 / 5.0) / 6.0;
        assert!((m.f1_weighted.unwrap() - f1).abs() < 1e-15);
    }

    #[test]
    fn cards_without_weighted_averages_still_deserialize() {
        let m = classification_metrics(&[0, 1], &[0, 0], &names(&["0", "1"])).unwrap();
        let mut v = serde_json::to_value(&m).unwrap();
        for key in ["precision_weighted", "recall_weighted", "f1_weighted"] {
            v.as_object_mut().unwrap().remove(key);
        }
        let back: ClassificationMetrics = serde_json::from_value(v).unwrap();
        assert_eq!(
            (
                back.precision_weighted,
                back.recall_weighted,
                back.f1_weighted
            ),
            (None, None, None)
        );
        assert_eq!(back.accuracy, m.accuracy);
    }

    /// Hand derivation: y = [0, 1, 0, 1], p1 = [0.5, 0.5, 0.2, 0.8]. Pairs (positive,
    /// negative): (0.5, 0.5) tie = 1/2, (0.5, 0.2) = 1, (0.8, 0.5) = 1, (0.8, 0.2) = 1:
    /// AUC 3.5/4 = 0.875. Log loss: true-class probabilities 0.5, 0.5, 0.8, 0.8 →
    /// (2 ln 2 + 2 ln 1.25)/4.
    #[test]
    fn roc_auc_counts_ties_as_half() {
        let proba = [0.5, 0.5, 0.5, 0.5, 0.8, 0.2, 0.2, 0.8];
        let m = probabilistic_metrics(&[0, 1, 0, 1], &proba, &names(&["0", "1"])).unwrap();
        assert_eq!(m.roc_auc, Some(0.875));
        let want = (2.0 * 2f64.ln() + 2.0 * 1.25f64.ln()) / 4.0;
        assert!((m.log_loss - want).abs() < 1e-7, "{}", m.log_loss);
        assert!(m.undefined.is_empty());
        assert_eq!(m.n_samples, 4);
    }

    /// Hand derivation: probability 0 of the true class is clipped to f32::EPSILON =
    /// 2⁻²³, so the loss is 23 ln 2; probability 1 is clipped to 1 − 2⁻²³.
    #[test]
    fn log_loss_clips_to_f32_epsilon() {
        let c = names(&["0", "1"]);
        let m = probabilistic_metrics(&[0], &[0.0, 1.0], &c).unwrap();
        assert!((m.log_loss - 23.0 * 2f64.ln()).abs() < 1e-12);
        let m = probabilistic_metrics(&[1], &[0.0, 1.0], &c).unwrap();
        assert!((m.log_loss + (1.0 - 2f64.powi(-23)).ln()).abs() < 1e-20);
        // One class in y_true: ROC AUC undefined, named in the note.
        assert_eq!(m.roc_auc, None);
        assert_eq!(
            m.undefined,
            vec!["ROC AUC undefined: only class \"1\" in y_true".to_string()]
        );
    }

    #[test]
    fn roc_auc_is_binary_only() {
        let proba = [0.2, 0.3, 0.5, 0.6, 0.3, 0.1];
        let m = probabilistic_metrics(&[2, 1], &proba, &names(&["a", "b", "c"])).unwrap();
        assert_eq!(m.roc_auc, None);
        assert_eq!(
            m.undefined,
            vec!["ROC AUC not computed: 3 classes, binary tasks only".to_string()]
        );
        assert!((m.log_loss - (-(0.5f32 as f64).ln() - (0.3f32 as f64).ln()) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn probabilistic_errors_are_checked_in_order() {
        let c = names(&["0", "1"]);
        assert_eq!(
            probabilistic_metrics(&[0], &[1.0], &names(&["0"])),
            Err(MetricsError::TooFewClasses { n_classes: 1 })
        );
        assert_eq!(
            probabilistic_metrics(&[], &[], &c),
            Err(MetricsError::Empty)
        );
        assert_eq!(
            probabilistic_metrics(&[0, 1], &[0.5, 0.5, 0.5], &c),
            Err(MetricsError::ProbaShape {
                len: 3,
                n_samples: 2,
                n_classes: 2
            })
        );
        assert_eq!(
            probabilistic_metrics(&[0, 2], &[f32::NAN, 0.5, 0.5, 0.5], &c),
            Err(MetricsError::ClassOutOfRange {
                which: "y_true",
                position: 1,
                class: 2,
                n_classes: 2
            })
        );
        assert_eq!(
            probabilistic_metrics(&[0, 1], &[0.5, 0.5, 1.5, -0.5], &c),
            Err(MetricsError::NotAProbability {
                sample: 1,
                class: 0,
                value: 1.5
            })
        );
        assert!(matches!(
            probabilistic_metrics(&[0], &[f32::NAN, 0.5], &c),
            Err(MetricsError::NotAProbability {
                sample: 0,
                class: 0,
                ..
            })
        ));
    }

    /// Hand derivation: y = [1, 2, 3], ŷ = [1, 2, 4]: one error of 1, so MSE = MAE =
    /// 1/3, RMSE = √(1/3); ȳ = 2, Σ(y − ȳ)² = 2, R² = 1 − 1/2.
    #[test]
    fn regression_by_hand() {
        let m = regression_metrics(&[1.0, 2.0, 3.0], &[1.0, 2.0, 4.0]).unwrap();
        assert_eq!(
            (m.mse, m.mae, m.r2, m.n_samples),
            (1.0 / 3.0, 1.0 / 3.0, Some(0.5), 3)
        );
        assert_eq!(m.rmse, (1.0f64 / 3.0).sqrt());
        assert_eq!(regression_metrics(&[3.0], &[1.0]).unwrap().r2, None);
    }

    /// The documented departure from sklearn: [0.1; 3] is constant, so R² is 0.0
    /// (sklearn: -5.2e31 from a rounding-error denominator), and 1.0 when exact.
    #[test]
    fn r2_of_constant_y_true_is_finite() {
        let m = regression_metrics(&[0.1; 3], &[0.2; 3]).unwrap();
        assert_eq!(m.r2, Some(0.0));
        let m = regression_metrics(&[0.1; 3], &[0.1; 3]).unwrap();
        assert_eq!(m.r2, Some(1.0));
    }

    #[test]
    fn regression_errors_are_checked_in_order() {
        assert_eq!(
            regression_metrics(&[1.0], &[]),
            Err(MetricsError::LengthMismatch {
                y_true: 1,
                y_pred: 0
            })
        );
        assert_eq!(regression_metrics(&[], &[]), Err(MetricsError::Empty));
        assert_eq!(
            regression_metrics(&[1.0, 2.0], &[f64::INFINITY, 0.0]),
            Err(MetricsError::NonFinite {
                which: "y_pred",
                position: 0,
                value: f64::INFINITY
            })
        );
        assert!(matches!(
            regression_metrics(&[1.0, f64::NAN], &[f64::INFINITY, 0.0]),
            Err(MetricsError::NonFinite {
                which: "y_true",
                position: 1,
                ..
            })
        ));
    }
}
