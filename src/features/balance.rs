//! Class balance for skewed labels: random oversampling of minority classes,
//! or class weights.
//!
//! - `oversample`: imbalanced-learn's `RandomOverSampler(sampling_strategy =
//!   ratio)`: every class with fewer than `⌊ratio · n_majority⌋` training
//!   samples gets that many, drawn uniformly with replacement from its own
//!   rows (seeded) and appended after the original rows.
//! - `class_weight`: scikit-learn's `compute_class_weight("balanced")`,
//!   `w_k = n / (k · n_k)`, every class then weighing `n / k` in total. The
//!   logistic loss takes the weights natively (each sample's loss term is
//!   multiplied by its class's weight, as sklearn's `class_weight`); the
//!   other families have no weighted loss here and get **oversampling by
//!   weight** instead: each row of class `k` is repeated so that the class
//!   reaches the majority count (`n_k · w_k / w_min`, deterministic, no
//!   draws), which gives every class the same total weight as well.
//!
//! Balancing applies to a training part only, after every split (see
//! [`crate::learn::prepare`]); regression data is left as it is.

use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use crate::ingest::decode::Task;

/// How class imbalance is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceStrategy {
    /// Train on the classes as they come.
    #[default]
    None,
    /// Random oversampling of minority classes (see the module docs).
    Oversample,
    /// Balanced class weights: native in the logistic loss, oversampling by
    /// weight for the other families.
    ClassWeight,
}

impl BalanceStrategy {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Oversample => "oversample",
            Self::ClassWeight => "class_weight",
        }
    }
}

/// `[pipelines.model.balance]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BalanceConfig {
    pub strategy: BalanceStrategy,
    /// `oversample`: each minority class is raised to `⌊ratio · n_majority⌋`
    /// samples, ratio in (0, 1].
    pub ratio: f64,
    /// Seed of the oversampling draws.
    pub seed: u64,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            strategy: BalanceStrategy::None,
            ratio: 1.0,
            seed: 0,
        }
    }
}

impl BalanceConfig {
    /// Checks the values; the error starts with the key (`ratio: …`).
    ///
    /// # Errors
    /// A message naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.ratio > 0.0 && self.ratio <= 1.0) {
            return Err(format!("ratio: {} must be in (0, 1]", self.ratio));
        }
        Ok(())
    }
}

/// Samples per class index, `[n_classes]`.
pub fn class_counts(y: &[usize], n_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; n_classes];
    y.iter().for_each(|&c| counts[c] += 1);
    counts
}

/// scikit-learn's `compute_class_weight("balanced", classes, y)`:
/// `n / (k · n_k)` for each class index `< n_classes`, `k` the number of
/// classes present in `y`. A class absent from `y` gets 0 (sklearn refuses
/// such a class; here it has no rows to weigh).
pub fn balanced_class_weight(y: &[usize], n_classes: usize) -> Vec<f64> {
    let counts = class_counts(y, n_classes);
    let k = counts.iter().filter(|&&c| c > 0).count() as f64;
    let n = y.len() as f64;
    counts
        .iter()
        .map(|&c| if c > 0 { n / (k * c as f64) } else { 0.0 })
        .collect()
}

/// Random oversampling: appends, for every class with fewer than
/// `⌊ratio · n_majority⌋` rows, uniform draws with replacement from its rows
/// until it has that many (classes in index order, seeded). Regression data
/// is returned unchanged.
pub fn oversample(data: &Dataset, ratio: f64, seed: u64) -> Dataset {
    let mut out = data.clone();
    if data.task != Task::Classification || data.is_empty() {
        return out;
    }
    let counts = class_counts(&data.y, data.classes.len());
    let majority = counts.iter().copied().max().unwrap_or(0);
    let target = (ratio * majority as f64).floor() as usize;
    let mut rng = fastrand::Rng::with_seed(seed);
    for (class, &count) in counts.iter().enumerate() {
        if count == 0 || count >= target {
            continue;
        }
        let rows: Vec<usize> = (0..data.len()).filter(|&i| data.y[i] == class).collect();
        let draws: Vec<usize> = (0..target - count)
            .map(|_| rows[rng.usize(..rows.len())])
            .collect();
        let extra = data.select(&draws);
        out.x.extend(extra.x);
        out.y.extend(extra.y);
        out.timestamps.extend(extra.timestamps);
    }
    out
}

/// Oversampling by weight (`class_weight` for the families without a
/// weighted loss): every present class is brought to the majority count by
/// repeating its rows in order (row `r` of a class of `n_k` rows appears
/// `⌊m / n_k⌋` times, plus once more for the first `m mod n_k`), the copies
/// appended after the original rows. No draws: the same data give the same
/// rows. Regression data is returned unchanged.
pub fn oversample_by_weight(data: &Dataset) -> Dataset {
    let mut out = data.clone();
    if data.task != Task::Classification || data.is_empty() {
        return out;
    }
    let counts = class_counts(&data.y, data.classes.len());
    let majority = counts.iter().copied().max().unwrap_or(0);
    let mut extra = Vec::new();
    for (class, &count) in counts.iter().enumerate() {
        if count == 0 || count == majority {
            continue;
        }
        let rows: Vec<usize> = (0..data.len()).filter(|&i| data.y[i] == class).collect();
        extra.extend(rows.iter().cycle().take(majority - count));
    }
    let extra = data.select(&extra);
    out.x.extend(extra.x);
    out.y.extend(extra.y);
    out.timestamps.extend(extra.timestamps);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skewed(counts: &[usize]) -> Dataset {
        let classes = (0..counts.len()).map(|c| format!("c{c}")).collect();
        let mut d = Dataset::empty(Task::Classification, classes, 1);
        for (c, &n) in counts.iter().enumerate() {
            for i in 0..n {
                d.x.push((c * 100 + i) as f32);
                d.y.push(c);
                d.timestamps.push(d.timestamps.len() as i64);
            }
        }
        d
    }

    #[test]
    fn balanced_weights_by_definition() {
        // n = 6, k = 2: 6 / (2·4) and 6 / (2·2); class 2 is absent.
        let w = balanced_class_weight(&[0, 0, 1, 0, 1, 0], 3);
        assert_eq!(w, vec![0.75, 1.5, 0.0]);
    }

    #[test]
    fn oversampling_reaches_the_ratio_from_the_class_rows() {
        let d = skewed(&[10, 3, 6]);
        let o = oversample(&d, 1.0, 0);
        assert_eq!(class_counts(&o.y, 3), vec![10, 10, 10]);
        assert_eq!(o.slice(0..d.len()), d);
        // Every drawn row is a row of its own class.
        for i in d.len()..o.len() {
            assert_eq!((o.x[i] / 100.0).floor() as usize, o.y[i]);
        }
        let half = oversample(&d, 0.5, 0);
        assert_eq!(class_counts(&half.y, 3), vec![10, 5, 6]);
        assert_eq!(oversample(&d, 1.0, 0), o, "seeded");
        let w = oversample_by_weight(&d);
        assert_eq!(class_counts(&w.y, 3), vec![10, 10, 10]);
        // 3 rows to 10: each 3 times, the first once more.
        let c1: Vec<f32> = (0..w.len())
            .filter(|&i| w.y[i] == 1)
            .map(|i| w.x[i])
            .collect();
        assert_eq!(c1.iter().filter(|&&v| v == 100.0).count(), 4);
        assert_eq!(c1.iter().filter(|&&v| v == 102.0).count(), 3);
    }
}
