//! The model card: what each trained version is, what it was trained on, and
//! how well it did. Stored with the version; served by
//! `GET /v1/pipelines/{name}/models`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::{ClassificationMetrics, ProbabilisticMetrics, RegressionMetrics};
use crate::learn::model::Task;
use crate::learn::Trigger;

/// A model version's card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub pipeline: String,
    pub version: u32,
    /// Model family (`logistic`, `linear`, `ridge`, `mlp`, `tree`,
    /// `forest`, `svm`).
    pub family: String,
    #[serde(default)]
    pub task: Task,
    /// Training settings and the training's outcome (iterations, why it
    /// stopped, nodes...), as the family reports them.
    pub hyperparameters: serde_json::Value,
    /// Optimiser outcome of edgeloop 0.1 cards (now in `hyperparameters`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
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
    /// Training part before and after class balancing and augmentation
    /// (samples per class): what the evaluated fit's trainer was given.
    /// Empty when neither is configured.
    #[serde(default)]
    pub class_composition_before: BTreeMap<String, u64>,
    #[serde(default)]
    pub class_composition_after: BTreeMap<String, u64>,
    /// Augmentation and class balance of the training rows (`None`: neither
    /// configured). Applied to training parts only: never to the holdout,
    /// the older slice, a validation fold or the MLP's early-stopping rows.
    #[serde(default)]
    pub augmentation: Option<Augmentation>,
    /// First and last sample timestamp (ms) of each set.
    pub train_time_range_ms: Option<[i64; 2]>,
    pub holdout_time_range_ms: Option<[i64; 2]>,
    /// Metrics on the temporal holdout (scikit-learn semantics; undefined
    /// precision or recall is `null` per class and listed in `undefined`).
    pub holdout: Option<ClassificationMetrics>,
    /// Log loss and (binary tasks) ROC AUC of the predicted probabilities on
    /// the temporal holdout (scikit-learn semantics).
    #[serde(default)]
    pub holdout_probabilistic: Option<ProbabilisticMetrics>,
    /// Regression metrics on the temporal holdout (MSE, RMSE, MAE, R²).
    #[serde(default)]
    pub holdout_regression: Option<RegressionMetrics>,
    /// The pipeline's selection metric (`accuracy`, `f1_macro`, `r2`,
    /// `rmse`, `mae`) and this model's value of it on the holdout.
    #[serde(default)]
    pub metric: String,
    #[serde(default)]
    pub holdout_score: Option<f64>,
    /// k-fold cross-validation over the training part (`evaluation =
    /// "kfold"`).
    #[serde(default)]
    pub cv: Option<CrossValidation>,
    /// With `family = "auto"`: every candidate's score, this one included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateScore>,
    /// Wall-clock training time, milliseconds: evaluated fit, scoring,
    /// cross-validation and the refit on all samples.
    pub training_ms: f64,
    /// CPU time of the process during the training (user + system, all
    /// threads), milliseconds. In the daemon it includes the ingest work
    /// that ran meanwhile.
    #[serde(default)]
    pub training_cpu_ms: Option<f64>,
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
    /// microseconds.
    pub predict_p50_us: Option<f64>,
    /// Median latency per row of a 64-row batch through the serving engine,
    /// microseconds.
    #[serde(default)]
    pub predict_batch_p50_us_per_row: Option<f64>,
    /// Peak resident memory of the process while this candidate trained
    /// (fit, cross-validation, card; the chosen one also its refit on every
    /// sample and export), bytes: `VmRSS` sampled every millisecond, after
    /// the memory freed before it was handed back (`edgeloop train`, where
    /// the process does nothing else; see `TrainSettings::peak_rss`). It
    /// counts what the process held already (the data, the earlier
    /// candidates' models) plus what this candidate took. `edgeloop tune`
    /// measures the training of its best configuration the same way (and
    /// each trial, `Trial::peak_rss_bytes`). `None` in the daemon.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// Accuracy on live labelled data after deployment: predictions this
    /// version served, scored when their labels arrived; never the samples
    /// it was trained on (seqs up to `last_seq` labelled since the
    /// learner's previous step).
    #[serde(default)]
    pub live: Option<LiveScore>,
    /// The hyperparameter search that chose this version's settings
    /// (`edgeloop tune`, or `[pipelines.model.search]` enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<crate::learn::tune::SearchSummary>,
    /// A version brought from elsewhere rather than trained here (upload or
    /// models directory; [`crate::serve::intake`]): source, SHA-256, size,
    /// engine. `None` for a version edgeloop trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<Imported>,
    /// The cleaning rules applied before training and in the exported
    /// graph (`[pipelines.preprocess]`), and what they did to this
    /// training's data. `None` without rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaning: Option<CleaningReport>,
    /// The fitted preprocessing steps this version carries in its graph
    /// (`[pipelines.preprocess]`: fill values and indicator columns,
    /// clipping bounds or fences and rows dropped, constant columns
    /// removed, scaling centers and scales, principal components with their
    /// explained variance), fitted on the training part (the refit's: on
    /// every sample). `None` without steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<crate::learn::preprocess::Preprocessor>,
    /// Trivial baselines on the same holdout, and the margin over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
}

impl ModelCard {
    /// A card with what every version has (pipeline, version, family, task,
    /// trigger, features, classes, created now) and nothing measured: no
    /// holdout, composition, timings or decision. Versions not trained by
    /// [`crate::learn::train_dataset`] (imported models, online snapshots)
    /// start from it and fill in what they know.
    pub fn bare(
        pipeline: String,
        version: u32,
        family: String,
        task: Task,
        trigger: Trigger,
        features: Vec<String>,
        classes: Vec<String>,
    ) -> Self {
        Self {
            pipeline,
            version,
            family,
            task,
            hyperparameters: serde_json::Value::Null,
            optimizer: serde_json::Value::Null,
            trigger,
            created_at_ms: crate::stats::now_ms(),
            features,
            classes,
            n_samples: 0,
            n_train: 0,
            n_holdout: 0,
            class_composition_train: BTreeMap::new(),
            class_composition_holdout: BTreeMap::new(),
            class_composition_before: BTreeMap::new(),
            class_composition_after: BTreeMap::new(),
            augmentation: None,
            train_time_range_ms: None,
            holdout_time_range_ms: None,
            holdout: None,
            holdout_probabilistic: None,
            holdout_regression: None,
            metric: String::new(),
            holdout_score: None,
            cv: None,
            candidates: vec![],
            training_ms: 0.0,
            training_cpu_ms: None,
            onnx_bytes: 0,
            decision: None,
            last_seq: None,
            predict_p50_us: None,
            predict_batch_p50_us_per_row: None,
            peak_rss_bytes: None,
            live: None,
            search: None,
            imported: None,
            cleaning: None,
            preprocessing: None,
            baseline: None,
        }
    }
}

/// Trivial predictors scored on a card's holdout with the decision's
/// metric (accuracy for classification, R² for regression), as
/// scikit-learn's `DummyClassifier(strategy="most_frequent")` and
/// `DummyRegressor(strategy="mean")` fitted on the training part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// `majority` (the training part's most frequent class, the first on
    /// ties) or `mean` (the training part's mean label).
    pub kind: String,
    /// Its holdout score.
    pub score: f64,
    /// "The previous label": each holdout sample predicted by the one
    /// before it in time order (the first by the training part's last).
    /// Shown, not gating: it needs the previous label at prediction time,
    /// which a model without autoregressive features does not have.
    pub previous: Option<f64>,
    /// The model's holdout score minus `score` (negative: worse than the
    /// baseline).
    pub margin: Option<f64>,
}

/// [`ModelCard::cleaning`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleaningReport {
    pub rules: crate::learn::clean::Cleaning,
    /// Readings set missing by the rules.
    pub readings_missing: u64,
    /// Samples left out because their label was a missing-value marker.
    pub labels_missing: u64,
}

/// What was added to the evaluated fit's training part (see
/// [`crate::learn::prepare`]); the refit on all samples and each k-fold
/// training fold are prepared the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    /// Enabled transforms with their strengths, in the order applied
    /// (e.g. `jitter=0.05`); empty: no augmentation.
    #[serde(default)]
    pub transforms: Vec<String>,
    /// Augmented copies per training row.
    #[serde(default)]
    pub copies: usize,
    #[serde(default)]
    pub seed: u64,
    /// Rows the augmentation added.
    #[serde(default)]
    pub rows_added: u64,
    /// Balance strategy: `none`, `oversample` or `class_weight`.
    #[serde(default)]
    pub balance: String,
    /// Rows added by oversampling (`oversample`, or `class_weight` as
    /// oversampling by weight for families without a weighted loss).
    #[serde(default)]
    pub rows_oversampled: u64,
    /// Class weights the loss used (`class_weight` with `logistic`); empty
    /// otherwise.
    #[serde(default)]
    pub class_weight: BTreeMap<String, f64>,
}

/// k-fold cross-validation scores of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrossValidation {
    pub metric: String,
    pub folds: usize,
    /// Mean and population standard deviation over folds.
    pub mean: f64,
    pub std: f64,
    pub per_fold: Vec<f64>,
}

impl CrossValidation {
    /// From the per-fold scores (mean and population standard deviation,
    /// numpy's defaults).
    pub fn new(metric: &str, per_fold: Vec<f64>) -> Self {
        let n = per_fold.len().max(1) as f64;
        let mean = per_fold.iter().sum::<f64>() / n;
        let std = (per_fold.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n).sqrt();
        Self {
            metric: metric.into(),
            folds: per_fold.len(),
            mean,
            std,
            per_fold,
        }
    }
}

/// One candidate of an `auto` training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    pub family: String,
    pub metric: String,
    /// Score on the holdout.
    pub holdout: Option<f64>,
    /// Cross-validation mean, with `evaluation = "kfold"`.
    pub cv_mean: Option<f64>,
    /// The value candidates were compared by.
    pub selected_by: Option<f64>,
}

/// The live score of a served version: its predictions, scored as their
/// labels arrived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveScore {
    /// Predictions scored against labels that arrived.
    pub scored: u64,
    /// Predictions exactly right (a classifier's correct class).
    pub correct: u64,
    /// `correct / scored` (classification).
    pub accuracy: Option<f64>,
    /// Mean |y − ŷ| in the label's unit (regression).
    pub mean_abs_error: Option<f64>,
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

/// Slack for a comparison against a positive margin: a score difference
/// computed in floating point (0.9 − 0.8 is 0.09999999999999998) that equals
/// the margin to within it counts as reaching it.
const MARGIN_SLACK: f64 = 1e-9;

/// Whether `challenger` beats `champion` (accuracy or R², higher is better):
/// strictly when `margin` is 0 (a tie does not beat), otherwise by at least
/// `margin`.
pub fn beats(challenger: f64, champion: f64, margin: f64) -> bool {
    if margin > 0.0 {
        challenger - champion >= margin - MARGIN_SLACK
    } else {
        challenger > champion
    }
}

/// The champion/challenger rule: promote only when the challenger beats the
/// champion on the recent holdout ([`beats`]: strictly better when
/// `margin_recent` is 0, a tie keeps the champion; else better by at least
/// `margin_recent`) and loses at most `margin_old` on the older regimes (an
/// equal score there loses nothing). Returns (promoted, reason); a refusal
/// names every rule the challenger failed, `; `-separated.
pub fn judge(
    champion_recent: Option<f64>,
    challenger_recent: Option<f64>,
    champion_old: Option<f64>,
    challenger_old: Option<f64>,
    margin_recent: f64,
    margin_old: f64,
) -> (bool, String) {
    let mut failed = Vec::new();
    if let (Some(h), Some(c)) = (champion_recent, challenger_recent) {
        if !beats(c, h, margin_recent) {
            failed.push(if margin_recent > 0.0 {
                format!("recent holdout: challenger {c:.4} does not beat champion {h:.4} by {margin_recent}")
            } else {
                format!("recent holdout: challenger {c:.4} does not beat champion {h:.4}")
            });
        }
    }
    if let (Some(h), Some(c)) = (champion_old, challenger_old) {
        if c < h - margin_old - MARGIN_SLACK {
            failed.push(format!(
                "older regimes: challenger {c:.4} loses more than {margin_old} to champion {h:.4}"
            ));
        }
    }
    if failed.is_empty() {
        (
            true,
            "challenger wins on recent data and keeps the older regimes".to_string(),
        )
    } else {
        (false, failed.join("; "))
    }
}

/// Model cards side by side: one column per card, one row per measure
/// (`edgeloop models list --wide` and `edgeloop train --wide` print this),
/// every cell whole. `serving` marks the version that serves. A measure no
/// card has is left out.
pub fn render_table(cards: &[ModelCard], serving: Option<u32>) -> String {
    let table = table_cells(cards, serving);
    let columns: Vec<usize> = (0..cards.len()).collect();
    layout(&table, &columns, None)
}

/// [`render_table_within`]'s cells, characters: cut to at most
/// `CELL_MAX` and at least `CELL_MIN` to keep every card, else to
/// `CELL_FEW` when cards are left out.
const CELL_MAX: usize = 32;
const CELL_MIN: usize = 12;
const CELL_FEW: usize = 24;

/// [`render_table`] within `width` characters a line (what `edgeloop models
/// list` and `edgeloop train` print without `--wide`): long cells are cut
/// (ending in `…`), down to 12 characters, to keep every card; if that is
/// not enough, cells are cut to 24 and cards are left out: the serving one
/// is kept first, then the newest. A last line says what was cut or left
/// out.
pub fn render_table_within(cards: &[ModelCard], serving: Option<u32>, width: usize) -> String {
    let table = table_cells(cards, serving);
    let all: Vec<usize> = (0..cards.len()).collect();
    if line_width(&table, &all, None) <= width {
        return layout(&table, &all, None);
    }
    let (columns, cap) = match (CELL_MIN..=CELL_MAX)
        .rev()
        .find(|&cap| line_width(&table, &all, Some(cap)) <= width)
    {
        Some(cap) => (all, cap),
        None => {
            // Priority: the serving card, then the newest (the last) first.
            let mut order: Vec<usize> = all.iter().rev().copied().collect();
            if let Some(i) = cards.iter().position(|c| Some(c.version) == serving) {
                order.retain(|&j| j != i);
                order.insert(0, i);
            }
            let mut kept: Vec<usize> = Vec::new();
            for j in order {
                let mut with = kept.clone();
                with.push(j);
                with.sort_unstable();
                if kept.is_empty() || line_width(&table, &with, Some(CELL_FEW)) <= width {
                    kept = with;
                }
            }
            (kept, CELL_FEW)
        }
    };
    let mut out = layout(&table, &columns, Some(cap));
    let left_out = cards.len() - columns.len();
    let cut = table
        .iter()
        .any(|row| columns.iter().any(|&j| row[j + 1].chars().count() > cap));
    let note = match (left_out, cut) {
        (0, _) => format!("(cells cut to {cap} characters; --wide shows them whole)"),
        (n, false) => format!(
            "({n} of {} columns left out; --wide shows all)",
            cards.len()
        ),
        (n, true) => format!(
            "({n} of {} columns left out, cells cut to {cap} characters; --wide shows all)",
            cards.len()
        ),
    };
    out.push_str(&note);
    out.push('\n');
    out
}

/// Cells of the card table: the header row (an empty corner, then
/// `v{version} {family}`), then one row per measure, its name first.
fn table_cells(cards: &[ModelCard], serving: Option<u32>) -> Vec<Vec<String>> {
    let f4 = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    let f1 = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    type Row<'a> = (&'a str, Box<dyn Fn(&ModelCard) -> String + 'a>);
    let rows: Vec<Row> = vec![
        ("family", Box::new(|c| c.family.clone())),
        ("task", Box::new(|c| c.task.to_string())),
        ("trigger", Box::new(|c| c.trigger.to_string())),
        (
            "serving",
            Box::new(|c| {
                if Some(c.version) == serving {
                    "*".into()
                } else {
                    String::new()
                }
            }),
        ),
        ("samples (fit)", Box::new(|c| c.n_samples.to_string())),
        (
            "train / holdout",
            Box::new(|c| format!("{} / {}", c.n_train, c.n_holdout)),
        ),
        (
            "classes (train)",
            Box::new(|c| {
                c.class_composition_train
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        ),
        (
            "classes before / after",
            Box::new(|c| {
                let show = |m: &BTreeMap<String, u64>| {
                    m.iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                if c.class_composition_before.is_empty() && c.class_composition_after.is_empty() {
                    return "-".into();
                }
                format!(
                    "{} / {}",
                    show(&c.class_composition_before),
                    show(&c.class_composition_after)
                )
            }),
        ),
        (
            "augmentation",
            Box::new(|c| {
                c.augmentation.as_ref().map_or("-".into(), |a| {
                    let mut parts = vec![];
                    if !a.transforms.is_empty() {
                        parts.push(format!(
                            "{} ×{} (+{} rows)",
                            a.transforms.join(" "),
                            a.copies,
                            a.rows_added
                        ));
                    }
                    if a.balance != "none" {
                        parts.push(format!("{} (+{} rows)", a.balance, a.rows_oversampled));
                    }
                    parts.join("; ")
                })
            }),
        ),
        ("features", Box::new(|c| c.features.len().to_string())),
        ("metric", Box::new(|c| c.metric.clone())),
        ("holdout score", Box::new(move |c| f4(c.holdout_score))),
        (
            "baseline",
            Box::new(move |c| {
                c.baseline.as_ref().map_or("-".into(), |b| {
                    format!(
                        "{} {:.4} (margin {})",
                        b.kind,
                        b.score,
                        b.margin.map_or("-".into(), |m| format!("{m:+.4}"))
                    )
                })
            }),
        ),
        (
            "previous label",
            Box::new(move |c| f4(c.baseline.as_ref().and_then(|b| b.previous))),
        ),
        (
            "cv mean ± std",
            Box::new(|c| {
                c.cv.as_ref().map_or("-".into(), |cv| {
                    format!("{:.4} ± {:.4} ({} folds)", cv.mean, cv.std, cv.folds)
                })
            }),
        ),
        (
            "accuracy",
            Box::new(move |c| f4(c.holdout.as_ref().map(|h| h.accuracy))),
        ),
        (
            "precision (macro)",
            Box::new(move |c| f4(c.holdout.as_ref().map(|h| h.precision_macro))),
        ),
        (
            "recall (macro)",
            Box::new(move |c| f4(c.holdout.as_ref().map(|h| h.recall_macro))),
        ),
        (
            "F1 (macro)",
            Box::new(move |c| f4(c.holdout.as_ref().map(|h| h.f1_macro))),
        ),
        (
            "F1 (weighted)",
            Box::new(move |c| f4(c.holdout.as_ref().and_then(|h| h.f1_weighted))),
        ),
        (
            "log loss",
            Box::new(move |c| f4(c.holdout_probabilistic.as_ref().map(|h| h.log_loss))),
        ),
        (
            "ROC AUC",
            Box::new(move |c| f4(c.holdout_probabilistic.as_ref().and_then(|h| h.roc_auc))),
        ),
        (
            "R²",
            Box::new(move |c| f4(c.holdout_regression.as_ref().and_then(|h| h.r2))),
        ),
        (
            "RMSE",
            Box::new(move |c| f4(c.holdout_regression.as_ref().map(|h| h.rmse))),
        ),
        (
            "MAE",
            Box::new(move |c| f4(c.holdout_regression.as_ref().map(|h| h.mae))),
        ),
        ("train wall ms", Box::new(move |c| f1(Some(c.training_ms)))),
        ("train CPU ms", Box::new(move |c| f1(c.training_cpu_ms))),
        (
            "peak RSS MiB",
            Box::new(move |c| f1(c.peak_rss_bytes.map(|b| b as f64 / 1048576.0))),
        ),
        ("ONNX bytes", Box::new(|c| c.onnx_bytes.to_string())),
        ("predict 1 row µs", Box::new(move |c| f1(c.predict_p50_us))),
        (
            "predict µs/row (64)",
            Box::new(move |c| f1(c.predict_batch_p50_us_per_row)),
        ),
        (
            "live accuracy / MAE",
            Box::new(|c| {
                c.live.as_ref().map_or("-".into(), |l| {
                    let value = l.accuracy.or(l.mean_abs_error).unwrap_or(f64::NAN);
                    format!("{value:.4} ({} scored)", l.scored)
                })
            }),
        ),
        (
            "search",
            Box::new(|c| {
                c.search.as_ref().map_or("-".into(), |s| {
                    let best = s.best.as_ref().map_or("-".into(), |b| {
                        format!(
                            "trial {} {}",
                            b.id,
                            b.score.map_or("-".into(), |v| format!("{v:.4}"))
                        )
                    });
                    format!(
                        "{}: {} trials in {:.1} s, best {best}",
                        s.strategy.name(),
                        s.trials,
                        s.elapsed_ms / 1e3
                    )
                })
            }),
        ),
        (
            "imported",
            Box::new(|c| {
                c.imported.as_ref().map_or("-".into(), |i| {
                    let from = i.fleet.as_ref().map_or(String::new(), |f| {
                        format!(" from {} v{}", f.instance, f.version)
                    });
                    let source = format!("{:?}", i.source).to_lowercase();
                    format!("{source}{from} sha256 {:.12}…", i.sha256.to_lowercase())
                })
            }),
        ),
        (
            "decision",
            Box::new(|c| match &c.decision {
                Some(d) if d.promoted => format!("promoted: {}", d.reason),
                Some(d) => format!("refused: {}", d.reason),
                None => "-".into(),
            }),
        ),
    ];
    let header: Vec<String> = cards
        .iter()
        .map(|c| format!("v{} {}", c.version, c.family))
        .collect();
    let mut table: Vec<Vec<String>> = vec![std::iter::once("".to_string()).chain(header).collect()];
    for (name, value) in &rows {
        let cells: Vec<String> = cards.iter().map(|c| value(c)).collect();
        let serving_row = *name == "serving" && serving.is_some();
        if cells.iter().all(|v| v == "-" || v.is_empty()) && !serving_row {
            continue;
        }
        table.push(std::iter::once(name.to_string()).chain(cells).collect());
    }
    table
}

/// A cell cut to `cap` characters, its last one `…` when cut.
fn cut(cell: &str, cap: Option<usize>) -> String {
    match cap {
        Some(cap) if cell.chars().count() > cap => {
            let mut s: String = cell.chars().take(cap.saturating_sub(1)).collect();
            s.push('…');
            s
        }
        _ => cell.to_string(),
    }
}

/// Width of each shown column: the names, then the cards `columns`.
fn column_widths(table: &[Vec<String>], columns: &[usize], cap: Option<usize>) -> Vec<usize> {
    std::iter::once(0)
        .chain(columns.iter().map(|&j| j + 1))
        .map(|j| {
            table
                .iter()
                .map(|r| cut(&r[j], if j == 0 { None } else { cap }).chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// The longest line [`layout`] would print.
fn line_width(table: &[Vec<String>], columns: &[usize], cap: Option<usize>) -> usize {
    let widths = column_widths(table, columns, cap);
    widths.iter().sum::<usize>() + 2 * (widths.len() - 1)
}

/// The table with the names and the cards `columns`, cells cut to `cap`.
fn layout(table: &[Vec<String>], columns: &[usize], cap: Option<usize>) -> String {
    let widths = column_widths(table, columns, cap);
    let mut out = String::new();
    for row in table {
        let line: Vec<String> = std::iter::once(row[0].clone())
            .chain(columns.iter().map(|&j| cut(&row[j + 1], cap)))
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
/// Where an imported model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `PUT /v1/pipelines/{name}/models`.
    Upload,
    /// A file dropped into the pipeline's models directory.
    ModelsDir,
    /// A model another daemon published (`[fleet] adopt`,
    /// `crate::serve::fleet`).
    Fleet,
}

/// Where a model adopted from the fleet came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetOrigin {
    /// The publishing daemon's instance id.
    pub instance: String,
    /// Its version there.
    pub version: u32,
    /// When it was published, ms since the Unix epoch.
    pub published_ms: i64,
    /// The topic it came on.
    pub topic: String,
}

/// What a model card of an imported version records about its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imported {
    pub source: Source,
    /// File name in the models directory (`None` for an upload).
    pub file_name: Option<String>,
    /// SHA-256 of the ONNX bytes, lowercase hex.
    pub sha256: String,
    /// Size of the ONNX file, bytes.
    pub bytes: u64,
    /// The engine that checked and serves it.
    pub engine: String,
    /// ONNX producer (`producer_name producer_version`) as the file says.
    pub producer: String,
    /// A fleet model's origin (`source = "fleet"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetOrigin>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tie_keeps_the_champion_a_margin_is_reached_at_exactly_it() {
        // margin_recent 0: strictly better promotes, equal does not.
        let (promoted, reason) = judge(Some(0.8), Some(0.8), None, None, 0.0, 0.05);
        assert!(!promoted);
        assert_eq!(
            reason,
            "recent holdout: challenger 0.8000 does not beat champion 0.8000"
        );
        assert!(judge(Some(0.8), Some(0.8 + 1e-12), None, None, 0.0, 0.05).0);
        assert!(!judge(Some(1.0), Some(1.0), None, None, 0.0, 0.05).0);
        // A positive margin is reached at exactly it (0.9 − 0.8 is
        // 0.09999999999999998 in f64), not below.
        assert!(judge(Some(0.8), Some(0.9), None, None, 0.1, 0.05).0);
        let (promoted, reason) = judge(Some(0.8), Some(0.89), None, None, 0.1, 0.05);
        assert!(!promoted);
        assert_eq!(
            reason,
            "recent holdout: challenger 0.8900 does not beat champion 0.8000 by 0.1"
        );
        // Older regimes: an equal score loses nothing, exactly `margin_old`
        // is allowed, more is not.
        assert!(judge(Some(0.8), Some(0.9), Some(0.7), Some(0.7), 0.0, 0.0).0);
        assert!(judge(Some(0.8), Some(0.9), Some(0.75), Some(0.7), 0.0, 0.05).0);
        assert!(!judge(Some(0.8), Some(0.9), Some(0.76), Some(0.7), 0.0, 0.05).0);
        // Both rules failed: both named.
        assert_eq!(
            judge(Some(0.8), Some(0.8), Some(0.9), Some(0.5), 0.0, 0.05).1,
            "recent holdout: challenger 0.8000 does not beat champion 0.8000; \
             older regimes: challenger 0.5000 loses more than 0.05 to champion 0.9000"
        );
    }
}
