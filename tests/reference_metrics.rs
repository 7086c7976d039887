//! `learn::metrics` and `learn::split` against scikit-learn.
//!
//! Expected values come from `tests/fixtures/metrics/metrics.json`, written by
//! `tests/fixtures/metrics/gen_metrics.py` (scikit-learn `accuracy_score`,
//! `precision_recall_fscore_support`, `confusion_matrix`, `unique_labels`, `log_loss`,
//! `roc_auc_score`, `mean_squared_error`, `root_mean_squared_error`,
//! `mean_absolute_error`, `r2_score`, `KFold`, `StratifiedKFold`; numpy `mean`/`std`;
//! the versions are in the file). Rerun the script to regenerate them; never edit the
//! JSON by hand.

use edgeloop::learn::metrics::{classification_metrics, probabilistic_metrics, regression_metrics};
use edgeloop::learn::split::{kfold, stratified_kfold, CvError, CvSummary, Fold};
use serde::Deserialize;

/// Classification from counts: ratios of small integers, near exact.
const TOL: f64 = 1e-12;
/// Sums over samples (log loss, ROC AUC, regression, CV summaries): absolute for
/// values up to 1, relative above (summation order differs from numpy's pairwise sum).
const SUM_TOL: f64 = 1e-9;
/// Our f64 log loss against sklearn's float32 computation of the same clipped values.
const F32_REL_TOL: f64 = 1e-6;

/// Cases the fixture must hold, so a truncated or emptied file fails the test.
const REQUIRED_CASES: &[&str] = &[
    "binary_balanced",
    "binary_holdout_single_class_predicted_only",
    "single_class_true_some_wrong",
    "single_class_true_all_wrong",
    "class_never_predicted",
    "multiclass4_random",
    "multiclass6_absent_class",
    "occupancy_like_all_zero_3_fp",
];

const REQUIRED_PROBABILISTIC: &[&str] = &[
    "binary_random",
    "binary_ties",
    "binary_all_tied",
    "binary_class_never_predicted",
    "binary_confident_wrong",
    "binary_single_class_true",
    "binary_perfect",
    "multiclass3_random",
    "multiclass4_zero_on_true_class",
];

const REQUIRED_REGRESSION: &[&str] = &[
    "random",
    "perfect",
    "worse_than_mean",
    "constant_true_wrong",
    "constant_true_perfect",
    "single_sample",
];

const REQUIRED_STRATIFIED: &[&str] = &[
    "binary_balanced_k5",
    "binary_alternating_k3",
    "imbalanced_shuffled_k5",
    "first_appearance_2_0_1_k4",
    "gapped_labels_k6",
    "single_class_k3",
    "smallest_class_1_k3",
    "multiclass5_random_k10",
    "error_k_above_every_class",
    "error_k_above_n",
    "error_k1",
    "error_empty",
];

#[derive(Deserialize)]
struct Fixture {
    sklearn_version: String,
    cases: Vec<Case>,
    probabilistic: Vec<ProbaCase>,
    regression: Vec<RegressionCase>,
    kfold: Vec<KFoldCase>,
    stratified_kfold: Vec<StratifiedCase>,
    cv_summary: Vec<CvSummaryCase>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    n_classes: usize,
    class_names: Vec<String>,
    y_true: Vec<usize>,
    y_pred: Vec<usize>,
    expected: Expected,
}

/// sklearn's values; per-class vectors are over `labels`, `null` = NaN = undefined.
#[derive(Deserialize)]
struct Expected {
    labels: Vec<usize>,
    accuracy: f64,
    precision_macro: f64,
    recall_macro: f64,
    f1_macro: f64,
    precision_weighted: f64,
    recall_weighted: f64,
    f1_weighted: f64,
    precision: Vec<Option<f64>>,
    recall: Vec<Option<f64>>,
    f1: Vec<f64>,
    support: Vec<u64>,
    confusion: Vec<Vec<u64>>,
}

#[derive(Deserialize)]
struct ProbaCase {
    name: String,
    class_names: Vec<String>,
    y_true: Vec<usize>,
    /// `[n][n_classes]`, float32 values written exactly.
    proba: Vec<Vec<f64>>,
    expected: ProbaExpected,
}

#[derive(Deserialize)]
struct ProbaExpected {
    log_loss: f64,
    log_loss_sklearn_f32: f64,
    roc_auc: Option<f64>,
}

#[derive(Deserialize)]
struct RegressionCase {
    name: String,
    y_true: Vec<f64>,
    y_pred: Vec<f64>,
    expected: RegressionExpected,
}

#[derive(Deserialize)]
struct RegressionExpected {
    mse: f64,
    rmse: f64,
    mae: f64,
    r2: Option<f64>,
}

/// sklearn's `split` output: `folds` as (train, test) pairs, or the kind of its error.
#[derive(Deserialize)]
struct Splits {
    folds: Option<Vec<Fold>>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct KFoldCase {
    name: String,
    n: usize,
    k: usize,
    #[serde(flatten)]
    splits: Splits,
}

#[derive(Deserialize)]
struct StratifiedCase {
    name: String,
    y: Vec<usize>,
    k: usize,
    #[serde(flatten)]
    splits: Splits,
}

#[derive(Deserialize)]
struct CvSummaryCase {
    name: String,
    scores: Vec<f64>,
    expected: CvSummaryExpected,
}

#[derive(Deserialize)]
struct CvSummaryExpected {
    mean: f64,
    std: f64,
}

fn load() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/metrics/metrics.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn close(case: &str, what: &str, got: f64, want: f64) {
    assert!(
        got.is_finite() && (got - want).abs() <= TOL,
        "{case}: {what} = {got:?}, sklearn {want:?}"
    );
}

fn close_opt(case: &str, what: &str, got: Option<f64>, want: Option<f64>) {
    match (got, want) {
        (Some(g), Some(w)) => close(case, what, g, w),
        (None, None) => {}
        _ => panic!("{case}: {what} = {got:?}, sklearn {want:?} (None ⇔ null)"),
    }
}

fn close_sum(case: &str, what: &str, got: f64, want: f64) {
    assert!(
        got.is_finite() && (got - want).abs() <= SUM_TOL * want.abs().max(1.0),
        "{case}: {what} = {got:?}, sklearn {want:?}"
    );
}

fn close_sum_opt(case: &str, what: &str, got: Option<f64>, want: Option<f64>) {
    match (got, want) {
        (Some(g), Some(w)) => close_sum(case, what, g, w),
        (None, None) => {}
        _ => panic!("{case}: {what} = {got:?}, sklearn {want:?} (None ⇔ null)"),
    }
}

fn require<'a>(section: &str, names: impl Iterator<Item = &'a str> + Clone, required: &[&str]) {
    for r in required {
        assert!(
            names.clone().any(|n| n == *r),
            "fixture section {section} lacks case {r}"
        );
    }
}

#[test]
fn classification_metrics_equal_sklearn() {
    let fixture = load();
    assert!(!fixture.sklearn_version.is_empty());
    for required in REQUIRED_CASES {
        assert!(
            fixture.cases.iter().any(|c| c.name == *required),
            "fixture lacks case {required}"
        );
    }

    for case in &fixture.cases {
        let name = case.name.as_str();
        let want = &case.expected;
        assert_eq!(
            case.class_names.len(),
            case.n_classes,
            "{name}: fixture n_classes"
        );
        let got = classification_metrics(&case.y_true, &case.y_pred, &case.class_names)
            .unwrap_or_else(|e| panic!("{name}: {e}"));

        let want_labels: Vec<&str> = want
            .labels
            .iter()
            .map(|&k| case.class_names[k].as_str())
            .collect();
        assert_eq!(got.labels, want_labels, "{name}: labels");
        assert_eq!(got.n_samples, case.y_true.len() as u64, "{name}: n_samples");
        close(name, "accuracy", got.accuracy, want.accuracy);
        close(
            name,
            "precision_macro",
            got.precision_macro,
            want.precision_macro,
        );
        close(name, "recall_macro", got.recall_macro, want.recall_macro);
        close(name, "f1_macro", got.f1_macro, want.f1_macro);
        close_opt(
            name,
            "precision_weighted",
            got.precision_weighted,
            Some(want.precision_weighted),
        );
        close_opt(
            name,
            "recall_weighted",
            got.recall_weighted,
            Some(want.recall_weighted),
        );
        close_opt(name, "f1_weighted", got.f1_weighted, Some(want.f1_weighted));
        assert_eq!(got.confusion, want.confusion, "{name}: confusion");

        let n = want.labels.len();
        for (what, len) in [
            ("precision", want.precision.len()),
            ("recall", want.recall.len()),
            ("f1", want.f1.len()),
            ("support", want.support.len()),
        ] {
            assert_eq!(len, n, "{name}: fixture {what} length");
        }
        assert_eq!(got.per_class.len(), n, "{name}: per_class length");
        for (i, scores) in got.per_class.iter().enumerate() {
            let label = want_labels[i];
            assert_eq!(scores.label, label, "{name}: per_class[{i}].label");
            close_opt(
                name,
                &format!("precision[{label}]"),
                scores.precision,
                want.precision[i],
            );
            close_opt(
                name,
                &format!("recall[{label}]"),
                scores.recall,
                want.recall[i],
            );
            close(name, &format!("f1[{label}]"), scores.f1, want.f1[i]);
            assert_eq!(scores.support, want.support[i], "{name}: support[{label}]");
        }

        // One note per undefined value (a `null` in sklearn's output), none otherwise.
        let n_null = want
            .precision
            .iter()
            .chain(&want.recall)
            .filter(|v| v.is_none())
            .count();
        assert_eq!(
            got.undefined.len(),
            n_null,
            "{name}: undefined = {:?}",
            got.undefined
        );
    }
}

#[test]
fn probabilistic_metrics_equal_sklearn() {
    let fixture = load();
    let names = fixture.probabilistic.iter().map(|c| c.name.as_str());
    require("probabilistic", names, REQUIRED_PROBABILISTIC);
    for case in &fixture.probabilistic {
        let name = case.name.as_str();
        let want = &case.expected;
        let n_classes = case.class_names.len();
        assert!(
            case.proba.iter().all(|row| row.len() == n_classes),
            "{name}: fixture proba shape"
        );
        let proba: Vec<f32> = case.proba.iter().flatten().map(|&p| p as f32).collect();
        // serde_json's default float parsing may miss the written float64 by an ulp;
        // the nearest float32 is still the one sklearn saw.
        assert!(
            case.proba
                .iter()
                .flatten()
                .zip(&proba)
                .all(|(&w, &p)| (f64::from(p) - w).abs() <= 1e-15 * w.abs()),
            "{name}: fixture proba values are not float32"
        );
        let got = probabilistic_metrics(&case.y_true, &proba, &case.class_names)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.n_samples, case.y_true.len() as u64, "{name}: n_samples");
        close_sum(name, "log_loss", got.log_loss, want.log_loss);
        let f32_gap = (got.log_loss - want.log_loss_sklearn_f32).abs();
        assert!(
            f32_gap <= F32_REL_TOL * want.log_loss_sklearn_f32.abs(),
            "{name}: log_loss {} vs sklearn float32 {}",
            got.log_loss,
            want.log_loss_sklearn_f32
        );
        close_sum_opt(name, "roc_auc", got.roc_auc, want.roc_auc);
        // One note exactly when ROC AUC is missing (undefined, or more than 2 classes).
        assert_eq!(
            got.undefined.len(),
            usize::from(want.roc_auc.is_none()),
            "{name}: undefined = {:?}",
            got.undefined
        );
    }
}

#[test]
fn regression_metrics_equal_sklearn() {
    let fixture = load();
    let names = fixture.regression.iter().map(|c| c.name.as_str());
    require("regression", names, REQUIRED_REGRESSION);
    for case in &fixture.regression {
        let name = case.name.as_str();
        let want = &case.expected;
        let got = regression_metrics(&case.y_true, &case.y_pred)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.n_samples, case.y_true.len() as u64, "{name}: n_samples");
        close_sum(name, "mse", got.mse, want.mse);
        close_sum(name, "rmse", got.rmse, want.rmse);
        close_sum(name, "mae", got.mae, want.mae);
        close_sum_opt(name, "r2", got.r2, want.r2);
    }
}

/// The kind the fixture writes for sklearn's `ValueError`.
fn error_kind(e: &CvError) -> &'static str {
    match e {
        CvError::TooFewFolds { .. } => "too_few_folds",
        CvError::NoSamples => "no_samples",
        CvError::MoreFoldsThanSamples { .. } => "more_folds_than_samples",
        CvError::MoreFoldsThanMembers { .. } => "more_folds_than_members",
        CvError::NoScores | CvError::NonFiniteScore { .. } => "not a splitter error",
    }
}

fn check_splits(name: &str, got: Result<Vec<Fold>, CvError>, want: &Splits) {
    match (got, &want.folds, &want.error) {
        (Ok(got), Some(folds), None) => {
            assert_eq!(got.len(), folds.len(), "{name}: number of folds");
            for (i, (g, w)) in got.iter().zip(folds).enumerate() {
                assert_eq!(g.1, w.1, "{name}: test indices of fold {i}");
                assert_eq!(g.0, w.0, "{name}: train indices of fold {i}");
            }
        }
        (Err(e), None, Some(kind)) => assert_eq!(error_kind(&e), kind, "{name}: {e}"),
        (got, folds, error) => panic!(
            "{name}: got {got:?}, sklearn folds {} / error {error:?}",
            folds.is_some()
        ),
    }
}

#[test]
fn kfold_equals_sklearn() {
    let fixture = load();
    assert!(fixture.kfold.len() >= 10, "fixture kfold cases");
    for kind in ["too_few_folds", "more_folds_than_samples"] {
        assert!(
            fixture
                .kfold
                .iter()
                .any(|c| c.splits.error.as_deref() == Some(kind)),
            "fixture kfold lacks an error case {kind}"
        );
    }
    for case in &fixture.kfold {
        check_splits(&case.name, kfold(case.n, case.k), &case.splits);
    }
}

#[test]
fn stratified_kfold_equals_sklearn() {
    let fixture = load();
    let names = fixture.stratified_kfold.iter().map(|c| c.name.as_str());
    require("stratified_kfold", names, REQUIRED_STRATIFIED);
    for case in &fixture.stratified_kfold {
        check_splits(&case.name, stratified_kfold(&case.y, case.k), &case.splits);
    }
}

#[test]
fn cv_summary_equals_numpy() {
    let fixture = load();
    assert!(fixture.cv_summary.len() >= 4, "fixture cv_summary cases");
    for case in &fixture.cv_summary {
        let name = case.name.as_str();
        let got =
            CvSummary::from_scores(case.scores.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.folds, case.scores.len(), "{name}: folds");
        assert_eq!(got.per_fold, case.scores, "{name}: per_fold");
        close_sum(name, "mean", got.mean, case.expected.mean);
        close_sum(name, "std", got.std, case.expected.std);
    }
}
