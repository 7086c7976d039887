//! `arf`: the adaptive random forest classifier.
//!
//! H. M. Gomes, A. Bifet, J. Read, J. P. Barddal, F. Enembreck,
//! B. Pfahringer, G. Holmes and T. Abdessalem, "Adaptive random forests for
//! evolving data stream classification", Machine Learning 106 (2017)
//! 1469–1495. Follows River 0.26.1's `forest.ARFClassifier` with its
//! defaults (`river/forest/adaptive_random_forest.py`,
//! `tree/nodes/arf_htc_nodes.py`):
//!
//! * 10 Hoeffding trees ([`super::HoeffdingTreeClassifier`]) with grace
//!   period 50, δ = 0.01, τ = 0.05, naive-Bayes-adaptive leaves, each leaf
//!   watching `round(sqrt(n_features))` features drawn at random when it
//!   learns its first sample;
//! * online bagging (Oza & Russell 2001): each tree learns each sample with
//!   weight `k ~ Poisson(6)` (not at all when `k = 0`), drawn by Knuth's
//!   multiplication method as River does;
//! * per tree, before it learns, its prediction is scored: a running
//!   accuracy (the tree's vote weight) and the 0/1 error fed, when `k > 0`,
//!   to an ADWIN warning detector (δ = 0.01) and an ADWIN drift detector
//!   (δ = 0.001) ([`crate::learn::drift::Adwin`], River's semantics). A
//!   warning starts a background tree (learning the same weighted samples);
//!   a drift replaces the tree by its background tree (or a new tree) and
//!   resets its detectors and accuracy;
//! * the forest's probabilities are the trees' probabilities weighted by
//!   their accuracy (unweighted while it is 0), normalised; the prediction is
//!   the class of largest probability.
//!
//! River draws the Poisson weights and every leaf's features from one
//! `random.Random(seed)`; this forest draws them from the same generator
//! ([`super::py_random::PyRandom`], Python's Mersenne Twister) in the same
//! order, so that with the same seed its predictions are River's row by row
//! (`tests/online.rs`; a leaf's features are drawn from River's sorted
//! feature names, which sort as the indices while there are at most 10).

use super::py_random::PyRandom;
use super::{check_width, first_argmax, OnlineClassifier, OnlineError};
use super::{HoeffdingTreeClassifier, HoeffdingTreeConfig};
use crate::learn::drift::{Adwin, AdwinConfig, DriftDetector};

/// The hyperparameters, River's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ArfConfig {
    /// Trees in the forest.
    pub n_models: usize,
    /// Features each leaf watches; `None`: `round(sqrt(n_features))`.
    pub max_features: Option<usize>,
    /// Rate of the Poisson sample weights.
    pub lambda: f64,
    /// Grace period of the trees (samples' weight between split attempts).
    pub grace_period: f64,
    /// δ of the trees' Hoeffding bound.
    pub delta: f64,
    /// τ of the trees.
    pub tau: f64,
    /// δ of each tree's ADWIN warning detector.
    pub warning_delta: f64,
    /// δ of each tree's ADWIN drift detector.
    pub drift_delta: f64,
    /// Seed of the Poisson weights and the feature draws (Python's
    /// `random.Random(seed)`, River's `seed`).
    pub seed: u64,
}

impl Default for ArfConfig {
    fn default() -> Self {
        Self {
            n_models: 10,
            max_features: None,
            lambda: 6.0,
            grace_period: 50.0,
            delta: 0.01,
            tau: 0.05,
            warning_delta: 0.01,
            drift_delta: 0.001,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    tree: HoeffdingTreeClassifier,
    background: Option<HoeffdingTreeClassifier>,
    warning: Adwin,
    drift: Adwin,
    /// Running accuracy of the tree's predictions (River `metrics.Accuracy`).
    correct: f64,
    scored: f64,
}

impl Member {
    fn accuracy(&self) -> f64 {
        if self.scored > 0.0 {
            self.correct / self.scored
        } else {
            0.0
        }
    }
}

/// `arf`: see the module's documentation.
#[derive(Debug, Clone)]
pub struct AdaptiveRandomForest {
    cfg: ArfConfig,
    n_features: usize,
    max_features: usize,
    members: Vec<Member>,
    rng: PyRandom,
    /// `seen[c]`: class `c` has been learned.
    seen: Vec<bool>,
    /// Drifts that replaced a tree, and warnings that started a background tree.
    drifts: u64,
    warnings: u64,
}

/// River's `utils.random.poisson`: Knuth's multiplication method.
pub(super) fn poisson(rate: f64, rng: &mut PyRandom) -> u32 {
    let l = (-rate).exp();
    let (mut k, mut p) = (0u32, 1.0f64);
    while p > l {
        k += 1;
        p *= rng.random();
    }
    k - 1
}

/// Python's `round`: half to even.
pub(super) fn round_half_even(v: f64) -> usize {
    let r = v.round();
    let r = if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    };
    r.max(0.0) as usize
}

impl AdaptiveRandomForest {
    /// An empty forest for samples of `n_features` features.
    pub fn new(n_features: usize, cfg: ArfConfig) -> Self {
        let max_features = cfg
            .max_features
            .unwrap_or_else(|| round_half_even((n_features as f64).sqrt()))
            .clamp(1, n_features.max(1));
        let mut forest = Self {
            n_features,
            max_features,
            members: Vec::with_capacity(cfg.n_models),
            rng: PyRandom::new(cfg.seed),
            seen: Vec::new(),
            drifts: 0,
            warnings: 0,
            cfg,
        };
        for _ in 0..forest.cfg.n_models {
            let tree = forest.new_tree();
            forest.members.push(Member {
                tree,
                background: None,
                warning: forest.warning_detector(),
                drift: forest.drift_detector(),
                correct: 0.0,
                scored: 0.0,
            });
        }
        forest
    }

    /// Drifts detected so far (each replaced a tree).
    pub fn n_drifts(&self) -> u64 {
        self.drifts
    }

    /// Warnings so far (each started a background tree).
    pub fn n_warnings(&self) -> u64 {
        self.warnings
    }

    fn new_tree(&self) -> HoeffdingTreeClassifier {
        HoeffdingTreeClassifier::new_in_forest(
            self.n_features,
            HoeffdingTreeConfig {
                grace_period: self.cfg.grace_period,
                delta: self.cfg.delta,
                tau: self.cfg.tau,
                max_features: Some(self.max_features),
                ..HoeffdingTreeConfig::default()
            },
        )
    }

    fn warning_detector(&self) -> Adwin {
        Adwin::new(AdwinConfig {
            delta: self.cfg.warning_delta,
            ..AdwinConfig::default()
        })
    }

    fn drift_detector(&self) -> Adwin {
        Adwin::new(AdwinConfig {
            delta: self.cfg.drift_delta,
            ..AdwinConfig::default()
        })
    }

    /// The weighted sum of the trees' probabilities, `[n_classes]`, normalised
    /// (all 0 when every tree answers 0).
    fn votes(&self, x: &[f64]) -> Vec<f64> {
        let mut votes = vec![0.0; self.seen.len()];
        for m in &self.members {
            let w = m.accuracy();
            for (c, p) in m.tree.proba_pairs(x) {
                votes[c] += if w > 0.0 { p * w } else { p };
            }
        }
        let total: f64 = votes.iter().sum();
        if total > 0.0 {
            for v in votes.iter_mut() {
                *v /= total;
            }
        }
        votes
    }
}

impl AdaptiveRandomForest {
    /// The voting trees for ONNX export ([`super::export`]): each member's
    /// leaf distributions weighted by its accuracy (1 while it is 0), as
    /// the vote weighs them; background trees do not vote.
    pub(crate) fn export_trees(&self) -> Vec<super::export::ExportTree> {
        self.members
            .iter()
            .filter_map(|m| {
                let w = m.accuracy();
                m.tree.export_tree(if w > 0.0 { w } else { 1.0 })
            })
            .collect()
    }
}

impl OnlineClassifier for AdaptiveRandomForest {
    fn learn_one(&mut self, x: &[f64], y: usize) -> Result<(), OnlineError> {
        check_width(self.n_features, x)?;
        if self.seen.len() <= y {
            self.seen.resize(y + 1, false);
        }
        self.seen[y] = true;
        for i in 0..self.members.len() {
            let predicted = self.members[i].tree.predict_one(x)?;
            let error = if predicted == Some(y) { 0.0 } else { 1.0 };
            let k = poisson(self.cfg.lambda, &mut self.rng);
            let m = &mut self.members[i];
            m.scored += 1.0;
            m.correct += 1.0 - error;
            if k == 0 {
                continue;
            }
            let w = f64::from(k);
            if let Some(b) = m.background.as_mut() {
                b.learn_weighted_with(x, y, w, Some(&mut self.rng))?;
            }
            m.tree.learn_weighted_with(x, y, w, Some(&mut self.rng))?;
            if m.warning.update(error) {
                self.warnings += 1;
                let tree = self.new_tree();
                let warning = self.warning_detector();
                let m = &mut self.members[i];
                m.background = Some(tree);
                m.warning = warning;
            }
            if self.members[i].drift.update(error) {
                self.drifts += 1;
                let replacement = match self.members[i].background.take() {
                    Some(b) => {
                        self.members[i].warning = self.warning_detector();
                        b
                    }
                    None => self.new_tree(),
                };
                let drift = self.drift_detector();
                let m = &mut self.members[i];
                m.tree = replacement;
                m.drift = drift;
                m.correct = 0.0;
                m.scored = 0.0;
            }
        }
        Ok(())
    }

    fn predict_proba_one(&self, x: &[f64]) -> Result<Vec<f64>, OnlineError> {
        check_width(self.n_features, x)?;
        Ok(self.votes(x))
    }

    fn predict_one(&self, x: &[f64]) -> Result<Option<usize>, OnlineError> {
        check_width(self.n_features, x)?;
        let votes = self.votes(x);
        Ok(first_argmax(
            self.seen
                .iter()
                .enumerate()
                .filter(|(_, s)| **s)
                .map(|(c, _)| (c, votes[c])),
        ))
    }

    fn n_classes(&self) -> usize {
        self.seen.len()
    }

    fn n_features(&self) -> usize {
        self.n_features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_mean_is_its_rate() {
        let mut rng = PyRandom::new(7);
        let n = 200_000;
        let mean = (0..n)
            .map(|_| f64::from(poisson(6.0, &mut rng)))
            .sum::<f64>()
            / n as f64;
        assert!((mean - 6.0).abs() < 0.03, "{mean}");
    }

    #[test]
    fn rounds_as_python() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(11.313), 11);
        assert_eq!(round_half_even(1.732), 2);
    }
}
