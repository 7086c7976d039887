//! Learning: datasets from stored samples, the temporal holdout, trainers and
//! their evaluation, and the model card each trained version carries.
//!
//! [`train_version`] is the one entry point the loop uses: labelled samples in,
//! a trained model, its ONNX bytes and its card out. It is CPU work: call it
//! from a blocking thread, never from an async worker.

pub mod card;
pub mod forest;
pub mod lbfgs;
pub mod logistic;
pub mod metrics;
pub mod model;
pub mod tree;

use std::collections::BTreeMap;
use std::time::Instant;

use crate::config::{Family, PipelineConfig};
use crate::ingest::decode::Sample;
use card::ModelCard;
use logistic::{LogisticConfig, LogisticModel, TrainError};

/// Labelled samples as a design matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `[n, n_features]` row-major, `NaN` = missing.
    pub x: Vec<f32>,
    /// Class indices into `classes`, `[n]`.
    pub y: Vec<usize>,
    /// Timestamps (ms), `[n]`.
    pub timestamps: Vec<i64>,
    /// Sorted class names.
    pub classes: Vec<String>,
    pub n_features: usize,
}

impl Dataset {
    /// Builds a dataset from labelled samples (unlabelled ones are skipped),
    /// ordered by timestamp (ties kept in input order). Classes are sorted
    /// numerically when every label is a number, else lexicographically
    /// (numpy's `unique` on the label column).
    pub fn from_samples(samples: &[Sample], n_features: usize) -> Self {
        let mut rows: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.label.is_some() && s.features.len() == n_features)
            .collect();
        rows.sort_by_key(|s| s.timestamp_ms);
        let classes = sort_classes(rows.iter().filter_map(|s| s.label.clone()));
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut x = Vec::with_capacity(rows.len() * n_features);
        let mut y = Vec::with_capacity(rows.len());
        let mut timestamps = Vec::with_capacity(rows.len());
        for s in rows {
            x.extend_from_slice(&s.features);
            y.push(index[s.label.as_deref().unwrap_or_default()]);
            timestamps.push(s.timestamp_ms);
        }
        Self {
            x,
            y,
            timestamps,
            classes,
            n_features,
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Rows `range` as a new dataset (same classes).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        let nf = self.n_features;
        Self {
            x: self.x[range.start * nf..range.end * nf].to_vec(),
            y: self.y[range.clone()].to_vec(),
            timestamps: self.timestamps[range].to_vec(),
            classes: self.classes.clone(),
            n_features: nf,
        }
    }

    /// Splits off every `k`-th sample (the second part).
    pub fn split_every(&self, k: usize) -> (Self, Self) {
        let nf = self.n_features;
        let empty = || Self {
            x: vec![],
            y: vec![],
            timestamps: vec![],
            classes: self.classes.clone(),
            n_features: nf,
        };
        let (mut keep, mut out) = (empty(), empty());
        for i in 0..self.len() {
            let d = if i % k == k - 1 { &mut out } else { &mut keep };
            d.x.extend_from_slice(&self.x[i * nf..(i + 1) * nf]);
            d.y.push(self.y[i]);
            d.timestamps.push(self.timestamps[i]);
        }
        (keep, out)
    }

    /// Temporal holdout: the newest `fraction` of samples (at least one)
    /// become the holdout, the rest the training set.
    pub fn temporal_split(&self, fraction: f64) -> (Self, Self) {
        let n = self.len();
        let n_holdout =
            ((n as f64 * fraction).round() as usize).clamp(1, n.saturating_sub(1).max(1));
        let cut = n - n_holdout;
        (self.slice(0..cut), self.slice(cut..n))
    }

    /// Samples per class name.
    pub fn class_composition(&self) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for &y in &self.y {
            *out.entry(self.classes[y].clone()).or_default() += 1;
        }
        out
    }
}

/// Sorts distinct labels: numerically when all parse as numbers, else as strings.
pub fn sort_classes(labels: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut set: Vec<String> = labels
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if set.iter().all(|l| l.parse::<f64>().is_ok()) {
        set.sort_by(|a, b| {
            let (x, y) = (
                a.parse::<f64>().unwrap_or(0.0),
                b.parse::<f64>().unwrap_or(0.0),
            );
            x.total_cmp(&y)
        });
    }
    set
}

/// Why a training ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The pipeline reached `min_labels` labelled samples.
    MinLabels,
    /// `retrain_every` new labelled samples arrived.
    NewLabels,
    /// The concept-drift detector raised an alarm.
    Drift,
    /// `schedule_s` elapsed with new labels.
    Schedule,
    /// Asked for over the API.
    Manual,
}

/// A trained version, ready to store and serve.
#[derive(Debug, Clone)]
pub struct TrainedVersion {
    pub model: LogisticModel,
    pub onnx: Vec<u8>,
    pub card: ModelCard,
}

/// Trains `version` of `pipeline` on `samples`: temporal holdout of the
/// newest `holdout_fraction`, fit on the rest and metrics on the holdout; then
/// the served model is refit on all samples with the same settings and
/// exported to ONNX. The card's holdout metrics are those of the evaluated
/// fit (`n_train` samples); the served fit used `n_samples`.
///
/// # Errors
/// [`TrainError`] when the training set lacks two classes, is empty, or
/// training was cancelled.
pub fn train_version(
    pipeline: &PipelineConfig,
    samples: &[Sample],
    version: u32,
    trigger: Trigger,
    champion: Option<(u32, &LogisticModel)>,
    cancelled: impl Fn() -> bool,
) -> Result<TrainedVersion, TrainError> {
    let started = Instant::now();
    let data = Dataset::from_samples(samples, pipeline.features.len());
    if data.len() < 2 {
        return Err(TrainError::Empty);
    }
    let (older, holdout) = data.temporal_split(pipeline.model.holdout_fraction);
    // With a champion, every 10th older sample is held out too: the older
    // regimes a challenger must not forget.
    let (train, old_slice) = match champion {
        Some(_) => older.split_every(10),
        None => (
            older,
            Dataset {
                x: vec![],
                y: vec![],
                timestamps: vec![],
                classes: data.classes.clone(),
                n_features: data.n_features,
            },
        ),
    };
    let present: Vec<usize> = {
        let mut seen = vec![false; data.classes.len()];
        train.y.iter().for_each(|&y| seen[y] = true);
        (0..seen.len()).filter(|&i| seen[i]).collect()
    };
    if present.len() < 2 {
        return Err(TrainError::TooFewClasses(present.len()));
    }
    let cfg = LogisticConfig {
        l2: pipeline.model.l2,
        max_iter: pipeline.model.max_iter,
        gtol: 1e-9,
    };
    let init = champion
        .filter(|_| pipeline.model.warm_start)
        .map(|(_, m)| m);
    let fit = |set: &Dataset| match pipeline.model.family {
        Family::Logistic => LogisticModel::fit_from(
            &set.x,
            &set.y,
            data.classes.clone(),
            pipeline.features.clone(),
            &cfg,
            init,
            &cancelled,
        ),
    };
    let evaluated = fit(&train)?;
    let decision = decide(
        pipeline, trigger, champion, &evaluated, &holdout, &old_slice,
    );
    let proba = evaluated.predict_proba(&holdout.x);
    let predicted = logistic::argmax_rows(&proba, evaluated.classes.len());
    let holdout_metrics =
        metrics::classification_metrics(&holdout.y, &predicted, &evaluated.classes).ok();
    // The served model is refit on every labelled sample with the same
    // settings (scikit-learn's `refit=True` practice): on a temporal stream
    // the newest samples, the holdout, matter most for what comes next.
    let model = if decision.promoted {
        fit(&data)?
    } else {
        evaluated
    };
    let training_ms = started.elapsed().as_secs_f64() * 1e3;
    let onnx = crate::onnx::export::logistic_to_onnx(&model, version);
    let card = ModelCard {
        pipeline: pipeline.name.clone(),
        version,
        family: "logistic".into(),
        hyperparameters: serde_json::json!({ "l2": cfg.l2, "max_iter": cfg.max_iter, "gtol": cfg.gtol }),
        optimizer: serde_json::json!({ "iterations": model.iterations, "stop": model.stop, "objective": model.objective }),
        trigger,
        created_at_ms: now_ms(),
        features: model.feature_names.clone(),
        classes: model.classes.clone(),
        n_samples: data.len() as u64,
        n_train: train.len() as u64,
        n_holdout: holdout.len() as u64,
        class_composition_train: train.class_composition(),
        class_composition_holdout: holdout.class_composition(),
        train_time_range_ms: time_range(&train.timestamps),
        holdout_time_range_ms: time_range(&holdout.timestamps),
        holdout: holdout_metrics,
        training_ms,
        onnx_bytes: onnx.len() as u64,
        predict_p50_us: None,
        last_seq: None,
        decision: Some(decision),
    };
    Ok(TrainedVersion { model, onnx, card })
}

/// Champion/challenger: both scored on the recent holdout and the older
/// slice; see `model.margin_recent` and `model.margin_old`.
fn decide(
    pipeline: &PipelineConfig,
    trigger: Trigger,
    champion: Option<(u32, &LogisticModel)>,
    challenger: &LogisticModel,
    recent: &Dataset,
    old: &Dataset,
) -> card::Decision {
    let score = |m: &LogisticModel, d: &Dataset| accuracy(m, d);
    let (challenger_recent, challenger_old) = (score(challenger, recent), score(challenger, old));
    let Some((champion_version, champ)) = champion else {
        return card::Decision {
            promoted: true,
            reason: "first model".into(),
            champion_version: None,
            champion_recent: None,
            challenger_recent,
            champion_old: None,
            challenger_old,
        };
    };
    let (champion_recent, champion_old) = (score(champ, recent), score(champ, old));
    let m = &pipeline.model;
    let (promoted, reason) = if trigger == Trigger::Manual {
        (true, "asked for over the API".to_string())
    } else {
        card::judge(
            champion_recent,
            challenger_recent,
            champion_old,
            challenger_old,
            m.margin_recent,
            m.margin_old,
        )
    };
    card::Decision {
        promoted,
        reason,
        champion_version: Some(champion_version),
        champion_recent,
        challenger_recent,
        champion_old,
        challenger_old,
    }
}

fn accuracy(m: &LogisticModel, d: &Dataset) -> Option<f64> {
    if d.is_empty() {
        return None;
    }
    // The champion may know other classes than the dataset's: compare names.
    let pred = logistic::argmax_rows(&m.predict_proba(&d.x), m.classes.len());
    let correct = pred
        .iter()
        .zip(&d.y)
        .filter(|(p, y)| m.classes[**p] == d.classes[**y])
        .count();
    Some(correct as f64 / d.len() as f64)
}

fn time_range(ts: &[i64]) -> Option<[i64; 2]> {
    Some([*ts.first()?, *ts.last()?])
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: i64, label: &str) -> Sample {
        Sample {
            timestamp_ms: ts,
            device: String::new(),
            features: vec![ts as f32],
            label: Some(label.into()),
        }
    }

    #[test]
    fn classes_sort_numerically_and_split_is_temporal() {
        assert_eq!(
            sort_classes(["10", "2", "1"].map(String::from)),
            vec!["1", "2", "10"]
        );
        assert_eq!(
            sort_classes(["b", "a", "10"].map(String::from)),
            vec!["10", "a", "b"]
        );
        // Out of order on arrival; the holdout is the newest by timestamp.
        let samples: Vec<Sample> = [5, 1, 4, 2, 3, 9, 8, 7, 6, 10]
            .iter()
            .map(|&t| s(t, if t % 2 == 0 { "x" } else { "y" }))
            .collect();
        let d = Dataset::from_samples(&samples, 1);
        let (train, holdout) = d.temporal_split(0.2);
        assert_eq!(train.timestamps, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(holdout.timestamps, vec![9, 10]);
        assert_eq!(holdout.class_composition().get("x"), Some(&1));
    }
}
