//! K-fold cross-validation: the splitters that cut samples into folds, and the summary
//! of a score over the folds.
//!
//! [`kfold`] and [`stratified_kfold`] return the same (train, test) index sets, in the
//! same order, as scikit-learn 1.9.1's [`KFold`] and [`StratifiedKFold`] with
//! `shuffle=False`, and fail where those raise a `ValueError`. [`CvSummary`] holds what
//! `numpy.mean` and `numpy.std` give over the per-fold scores. The reference values are
//! in `tests/fixtures/metrics/metrics.json` (sections `kfold`, `stratified_kfold`,
//! `cv_summary`), written by `gen_metrics.py` beside it and checked by
//! `tests/reference_metrics.rs`.
//!
//! Neither splitter shuffles: on a temporal stream, fold `i`'s test set is (per class,
//! for the stratified one) the `i`-th block in sample order.
//!
//! [`KFold`]: https://scikit-learn.org/stable/modules/generated/sklearn.model_selection.KFold.html
//! [`StratifiedKFold`]: https://scikit-learn.org/stable/modules/generated/sklearn.model_selection.StratifiedKFold.html

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// One fold: `(train, test)` sample indices, each ascending, together every index
/// `0..n` exactly once (sklearn's `split` yields the same pair).
pub type Fold = (Vec<usize>, Vec<usize>);

/// Why folds or their summary could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CvError {
    /// Fewer than 2 folds (sklearn: "k-fold cross-validation requires at least one
    /// train/test split").
    #[error("k-fold cross-validation needs at least 2 folds; got {k}")]
    TooFewFolds {
        /// The requested number of folds.
        k: usize,
    },
    /// No samples (sklearn's `StratifiedKFold` rejects an empty y; `KFold` reports
    /// [`CvError::MoreFoldsThanSamples`]).
    #[error("no samples to split")]
    NoSamples,
    /// More folds than samples.
    #[error("{k} folds but only {n} samples")]
    MoreFoldsThanSamples {
        /// The requested number of folds.
        k: usize,
        /// Number of samples.
        n: usize,
    },
    /// Stratified: more folds than members of every class (sklearn raises only when
    /// `k` exceeds every class count; above the smallest count it only warns).
    #[error("{k} folds but the largest class has only {largest} samples")]
    MoreFoldsThanMembers {
        /// The requested number of folds.
        k: usize,
        /// Samples of the most populated class.
        largest: usize,
    },
    /// A summary of no scores.
    #[error("no fold scores to summarise")]
    NoScores,
    /// A fold's score is NaN or infinite (a failed fold).
    #[error("the score of fold {fold} is not finite")]
    NonFiniteScore {
        /// Index of the fold.
        fold: usize,
    },
}

fn check_folds(n: usize, k: usize) -> Result<(), CvError> {
    if k < 2 {
        return Err(CvError::TooFewFolds { k });
    }
    if k > n {
        return Err(CvError::MoreFoldsThanSamples { k, n });
    }
    Ok(())
}

/// Folds from the fold of each sample (`test_fold[i]` < `k`).
fn folds_from_assignment(test_fold: &[usize], k: usize) -> Vec<Fold> {
    (0..k)
        .map(|f| {
            let (test, train): (Vec<usize>, Vec<usize>) =
                (0..test_fold.len()).partition(|&i| test_fold[i] == f);
            (train, test)
        })
        .collect()
}

/// `k` folds of `n` samples in order, as scikit-learn 1.9.1's
/// `KFold(n_splits=k, shuffle=False).split`: fold `i`'s test set is the `i`-th
/// contiguous block; the first `n % k` blocks hold `n / k + 1` samples, the others
/// `n / k`.
///
/// # Errors
/// [`CvError::TooFewFolds`] when `k < 2`, then [`CvError::MoreFoldsThanSamples`] when
/// `k > n` (also for `n = 0`, as sklearn).
pub fn kfold(n: usize, k: usize) -> Result<Vec<Fold>, CvError> {
    check_folds(n, k)?;
    let mut test_fold = Vec::with_capacity(n);
    for f in 0..k {
        let size = n / k + usize::from(f < n % k);
        test_fold.extend(std::iter::repeat_n(f, size));
    }
    Ok(folds_from_assignment(&test_fold, k))
}

/// `k` folds of the samples with class labels `y`, each fold keeping the class
/// proportions, as scikit-learn 1.9.1's `StratifiedKFold(n_splits=k,
/// shuffle=False).split(X, y)` (`_make_test_folds`):
///
/// 1. classes are numbered by first appearance in `y` (not by value);
/// 2. the numbers, sorted, are dealt round-robin to the folds: fold `i` gets positions
///    `i, i + k, i + 2k, …`, and `allocation[i][c]` counts class `c` among them;
/// 3. class `c`'s samples, in order, go to fold 0 for the first `allocation[0][c]`,
///    then fold 1, and so on (blocks, not interleaved).
///
/// `y` holds any class values (indices need not be contiguous). A class with fewer
/// than `k` samples is allowed (sklearn warns): some test sets then lack it.
///
/// # Errors
/// In sklearn's order: [`CvError::TooFewFolds`] when `k < 2`, [`CvError::NoSamples`]
/// when `y` is empty, [`CvError::MoreFoldsThanSamples`] when `k > y.len()`,
/// [`CvError::MoreFoldsThanMembers`] when `k` exceeds the count of every class.
pub fn stratified_kfold(y: &[usize], k: usize) -> Result<Vec<Fold>, CvError> {
    if k < 2 {
        return Err(CvError::TooFewFolds { k });
    }
    if y.is_empty() {
        return Err(CvError::NoSamples);
    }
    check_folds(y.len(), k)?;

    let mut number: HashMap<usize, usize> = HashMap::new();
    let encoded: Vec<usize> = y
        .iter()
        .map(|label| {
            let next = number.len();
            *number.entry(*label).or_insert(next)
        })
        .collect();
    let n_classes = number.len();
    let mut counts = vec![0usize; n_classes];
    for &c in &encoded {
        counts[c] += 1;
    }
    let largest = counts.iter().copied().max().unwrap_or(0);
    if k > largest {
        return Err(CvError::MoreFoldsThanMembers { k, largest });
    }

    // Round-robin over the sorted class numbers: class c occupies a block of positions.
    let mut allocation = vec![vec![0usize; n_classes]; k];
    let mut position = 0;
    for (c, &count) in counts.iter().enumerate() {
        for p in position..position + count {
            allocation[p % k][c] += 1;
        }
        position += count;
    }

    // Per class, the folds its samples go to, in sample order: blocks by fold. Class
    // c's allocations sum to counts[c], so every sample finds its fold.
    let folds_for_class: Vec<Vec<usize>> = (0..n_classes)
        .map(|c| {
            (0..k)
                .flat_map(|f| std::iter::repeat_n(f, allocation[f][c]))
                .collect()
        })
        .collect();
    let mut taken = vec![0usize; n_classes];
    let test_fold: Vec<usize> = encoded
        .iter()
        .map(|&c| {
            taken[c] += 1;
            folds_for_class[c][taken[c] - 1]
        })
        .collect();
    Ok(folds_from_assignment(&test_fold, k))
}

/// A score summarised over the folds of a cross-validation (as in a model card).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvSummary {
    /// Number of folds (`per_fold.len()`).
    pub folds: usize,
    /// Mean of the per-fold scores (`numpy.mean`).
    pub mean: f64,
    /// Population standard deviation (`numpy.std`, `ddof=0`): √(Σ(s − mean)² / folds).
    pub std: f64,
    /// The score of each fold, in fold order.
    pub per_fold: Vec<f64>,
}

impl CvSummary {
    /// Summarises the per-fold scores `per_fold` (any score: accuracy, F1, R², …).
    ///
    /// # Errors
    /// [`CvError::NoScores`] when empty, [`CvError::NonFiniteScore`] for the first NaN
    /// or infinite score (numpy would return NaN, which a card cannot store).
    pub fn from_scores(per_fold: Vec<f64>) -> Result<Self, CvError> {
        if per_fold.is_empty() {
            return Err(CvError::NoScores);
        }
        if let Some(fold) = per_fold.iter().position(|s| !s.is_finite()) {
            return Err(CvError::NonFiniteScore { fold });
        }
        let n = per_fold.len() as f64;
        let mean = per_fold.iter().sum::<f64>() / n;
        let var = per_fold
            .iter()
            .map(|s| (s - mean) * (s - mean))
            .sum::<f64>()
            / n;
        Ok(Self {
            folds: per_fold.len(),
            mean,
            std: var.sqrt(),
            per_fold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand derivation: n = 7, k = 3 → sizes 3, 2, 2: tests [0..3), [3..5), [5..7).
    #[test]
    fn kfold_blocks_put_the_remainder_first() {
        let folds = kfold(7, 3).unwrap();
        let tests: Vec<Vec<usize>> = folds.iter().map(|f| f.1.clone()).collect();
        assert_eq!(tests, vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
        assert_eq!(folds[1].0, vec![0, 1, 2, 5, 6]);
    }

    #[test]
    fn kfold_errors() {
        assert_eq!(kfold(5, 1), Err(CvError::TooFewFolds { k: 1 }));
        assert_eq!(
            kfold(3, 4),
            Err(CvError::MoreFoldsThanSamples { k: 4, n: 3 })
        );
        assert_eq!(
            kfold(0, 2),
            Err(CvError::MoreFoldsThanSamples { k: 2, n: 0 })
        );
    }

    /// Hand derivation: y = [1, 0, 1, 1, 0, 1], k = 2. First appearance numbers
    /// 1 → 0, 0 → 1; counts [4, 2]; sorted [0,0,0,0,1,1] dealt to folds 0,1,0,1,0,1:
    /// allocation fold 0 = [2, 1], fold 1 = [2, 1]. Class "1" (samples 0, 2, 3, 5) →
    /// folds 0, 0, 1, 1; class "0" (samples 1, 4) → folds 0, 1.
    #[test]
    fn stratified_allocates_by_first_appearance_in_blocks() {
        let folds = stratified_kfold(&[1, 0, 1, 1, 0, 1], 2).unwrap();
        assert_eq!(folds[0], (vec![3, 4, 5], vec![0, 1, 2]));
        assert_eq!(folds[1], (vec![0, 1, 2], vec![3, 4, 5]));
    }

    #[test]
    fn stratified_errors_in_sklearn_order() {
        assert_eq!(stratified_kfold(&[], 1), Err(CvError::TooFewFolds { k: 1 }));
        assert_eq!(stratified_kfold(&[], 2), Err(CvError::NoSamples));
        assert_eq!(
            stratified_kfold(&[0, 1, 0], 4),
            Err(CvError::MoreFoldsThanSamples { k: 4, n: 3 })
        );
        assert_eq!(
            stratified_kfold(&[0, 0, 1, 0, 1], 4),
            Err(CvError::MoreFoldsThanMembers { k: 4, largest: 3 })
        );
        // Above the smallest class only: allowed.
        assert_eq!(stratified_kfold(&[0, 1, 0, 0], 3).unwrap().len(), 3);
    }

    /// Hand derivation: scores 1, 2, 3, 4 → mean 2.5, squared deviations 2.25, 0.25,
    /// 0.25, 2.25 → population variance 5/4.
    #[test]
    fn cv_summary_uses_population_std() {
        let s = CvSummary::from_scores(vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!((s.folds, s.mean, s.std), (4, 2.5, 1.25f64.sqrt()));
        assert_eq!(CvSummary::from_scores(vec![]), Err(CvError::NoScores));
        assert_eq!(
            CvSummary::from_scores(vec![0.5, f64::NAN]),
            Err(CvError::NonFiniteScore { fold: 1 })
        );
    }
}
