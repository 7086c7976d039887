//! Classification metrics on a holdout: accuracy, per-class precision, recall, F1 and
//! support, their macro averages, and the confusion matrix.
//!
//! Every value equals scikit-learn 1.9.1 (`sklearn.metrics`):
//! [`accuracy_score`], [`precision_recall_fscore_support`] and [`confusion_matrix`],
//! with the labels chosen by `sklearn.utils.multiclass.unique_labels`. The reference
//! values live in `tests/fixtures/metrics/metrics.json`, written by `gen_metrics.py`
//! beside it, and `tests/reference_metrics.rs` checks this module against them.
//!
//! [`accuracy_score`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html
//! [`precision_recall_fscore_support`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.precision_recall_fscore_support.html
//! [`confusion_matrix`]: https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html

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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

/// Scores `y_pred` against `y_true`.
///
/// y_true / y_pred are class indices into `class_names` (the model's classes, sorted).
/// Same length required. The result equals scikit-learn 1.9.1's `accuracy_score`,
/// `precision_recall_fscore_support` (per class with `labels=unique_labels(y_true,
/// y_pred)`, macro with the default `zero_division`) and `confusion_matrix` on the same
/// integer arrays; see the module docs for the fixture that checks it.
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
        per_class,
        confusion,
        undefined,
        n_samples,
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
}
