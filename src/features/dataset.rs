//! Labelled samples as a design matrix ([`Dataset`]): what preprocessing
//! (augmentation, class balance, windows) and every learner work on.

use std::collections::BTreeMap;

use crate::ingest::decode::Task;
use crate::store::Sample;

/// Labelled samples as a design matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `[n, n_features]` row-major, `NaN` = missing.
    pub x: Vec<f32>,
    /// Class indices into `classes`, `[n]` (classification; empty for
    /// regression).
    pub y: Vec<usize>,
    /// Target values, `[n]` (regression; empty for classification).
    pub values: Vec<f64>,
    /// Timestamps (ms), `[n]`.
    pub timestamps: Vec<i64>,
    /// Sorted class names (empty for regression).
    pub classes: Vec<String>,
    pub n_features: usize,
    pub task: Task,
}

impl Dataset {
    /// Builds a dataset from labelled samples (unlabelled ones are skipped),
    /// ordered by timestamp (ties kept in input order). Classes are sorted
    /// numerically when every label is a number, else lexicographically
    /// (numpy's `unique` on the label column). For [`Task::Regression`] the
    /// labels are parsed as numbers; a sample whose label is not a finite
    /// number is skipped.
    pub fn from_samples(samples: &[Sample], n_features: usize, task: Task) -> Self {
        let mut rows: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.label.is_some() && s.features.len() == n_features)
            .collect();
        if task == Task::Regression {
            rows.retain(|s| label_value(s).is_some());
        }
        rows.sort_by_key(|s| s.timestamp_ms);
        let classes = match task {
            Task::Classification => sort_classes(rows.iter().filter_map(|s| s.label.clone())),
            Task::Regression => vec![],
        };
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut data = Self::empty(task, classes.clone(), n_features);
        for s in rows {
            data.x.extend_from_slice(&s.features);
            match task {
                Task::Classification => data.y.push(index[s.label.as_deref().unwrap_or_default()]),
                Task::Regression => data.values.push(label_value(s).unwrap_or_default()),
            }
            data.timestamps.push(s.timestamp_ms);
        }
        data
    }

    /// No samples, with these classes and features.
    pub fn empty(task: Task, classes: Vec<String>, n_features: usize) -> Self {
        Self {
            task,
            x: vec![],
            y: vec![],
            values: vec![],
            timestamps: vec![],
            classes,
            n_features,
        }
    }

    /// The training target.
    pub fn target(&self) -> Target<'_> {
        match self.task {
            Task::Classification => Target::Classes {
                y: &self.y,
                classes: &self.classes,
            },
            Task::Regression => Target::Values(&self.values),
        }
    }

    /// The rows `indices`, in that order, as a new dataset (same classes).
    pub fn select(&self, indices: &[usize]) -> Self {
        let mut out = Self::empty(self.task, self.classes.clone(), self.n_features);
        for &i in indices {
            out.push_row(self, i);
        }
        out
    }

    fn push_row(&mut self, from: &Self, i: usize) {
        let nf = self.n_features;
        self.x.extend_from_slice(&from.x[i * nf..(i + 1) * nf]);
        if let Some(&y) = from.y.get(i) {
            self.y.push(y);
        }
        if let Some(&v) = from.values.get(i) {
            self.values.push(v);
        }
        self.timestamps.push(from.timestamps[i]);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// Rows `range` as a new dataset (same classes).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        self.select(&range.collect::<Vec<_>>())
    }

    /// Splits off every `k`-th sample (the second part).
    pub fn split_every(&self, k: usize) -> (Self, Self) {
        let (keep, out): (Vec<usize>, Vec<usize>) = (0..self.len()).partition(|i| i % k != k - 1);
        (self.select(&keep), self.select(&out))
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

fn label_value(s: &Sample) -> Option<f64> {
    s.label
        .as_deref()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
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
        let d = Dataset::from_samples(&samples, 1, Task::Classification);
        let (train, holdout) = d.temporal_split(0.2);
        assert_eq!(train.timestamps, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(holdout.timestamps, vec![9, 10]);
        assert_eq!(holdout.class_composition().get("x"), Some(&1));
    }
}
