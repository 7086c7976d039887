//! `arf` regression: the adaptive random forest regressor.
//!
//! H. M. Gomes, J. P. Barddal, L. E. Boiko Ferreira and A. Bifet, "Adaptive
//! random forests for data stream regression", ESANN 2018 (after Gomes et
//! al., "Adaptive random forests for evolving data stream classification",
//! Machine Learning 2017). Follows River 0.26.1's `forest.ARFRegressor` with
//! its defaults (`river/forest/adaptive_random_forest.py`,
//! `tree/nodes/arf_htr_nodes.py`):
//!
//! * 10 Hoeffding tree regressors ([`super::HoeffdingTreeRegressor`]) with
//!   grace period 50, δ = 0.01, τ = 0.05, adaptive leaves (mean or linear
//!   model), each leaf watching `round(sqrt(n_features))` features drawn at
//!   random when it learns its first sample (its linear model sees all);
//! * online bagging (Oza & Russell 2001): each tree learns each sample with
//!   weight `k ~ Poisson(6)` (not at all when `k = 0`);
//! * per tree, when `k > 0`, its error `y − ŷ` (ŷ predicted before it
//!   learned) is normalised by the running mean and standard deviation of its
//!   errors so far (`(e + 3σ) / 6σ`, 0.5 for the first error or σ = 0; the
//!   running statistics survive a replacement) and fed to an ADWIN warning
//!   detector (δ = 0.01) and an ADWIN drift detector (δ = 0.001). A warning
//!   starts a background tree (learning the same weighted samples); a drift
//!   replaces the tree by its background tree (or a new tree);
//! * the forest predicts the median of its trees' predictions (River's
//!   default `aggregation_method="median"`, unweighted); background trees do
//!   not vote.
//!
//! The Poisson weights and the leaves' feature draws come from one Python
//! `random.Random(seed)` ([`super::py_random::PyRandom`]) drawn in River's
//! order, so with River's seed the predictions are River's row by row
//! (`tests/online_regression.rs`).

use super::arf::{poisson, round_half_even};
use super::hoeffding_tree_regressor::Var;
use super::py_random::PyRandom;
use super::{check_width, OnlineError, OnlineRegressor};
use super::{HoeffdingTreeRegressor, HoeffdingTreeRegressorConfig};
use crate::learn::drift::{Adwin, AdwinConfig, DriftDetector};

/// The hyperparameters, River's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ArfRegressorConfig {
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

impl Default for ArfRegressorConfig {
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
pub(crate) struct Member {
    pub(crate) tree: HoeffdingTreeRegressor,
    background: Option<HoeffdingTreeRegressor>,
    warning: Adwin,
    drift: Adwin,
    /// Running mean and variance of the tree's errors (River's
    /// `_drift_norm`).
    errors: Var,
}

/// `arf` regression: see the module's documentation.
#[derive(Debug, Clone)]
pub struct ArfRegressor {
    cfg: ArfRegressorConfig,
    n_features: usize,
    max_features: usize,
    pub(crate) members: Vec<Member>,
    rng: PyRandom,
    drifts: u64,
    warnings: u64,
}

impl ArfRegressor {
    /// An empty forest for samples of `n_features` features.
    pub fn new(n_features: usize, cfg: ArfRegressorConfig) -> Self {
        let max_features = cfg
            .max_features
            .unwrap_or_else(|| round_half_even((n_features as f64).sqrt()))
            .clamp(1, n_features.max(1));
        let mut forest = Self {
            n_features,
            max_features,
            members: Vec::with_capacity(cfg.n_models),
            rng: PyRandom::new(cfg.seed),
            drifts: 0,
            warnings: 0,
            cfg,
        };
        for _ in 0..forest.cfg.n_models {
            forest.members.push(Member {
                tree: forest.new_tree(),
                background: None,
                warning: forest.detector(forest.cfg.warning_delta),
                drift: forest.detector(forest.cfg.drift_delta),
                errors: Var::EMPTY,
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

    fn new_tree(&self) -> HoeffdingTreeRegressor {
        HoeffdingTreeRegressor::new(
            self.n_features,
            HoeffdingTreeRegressorConfig {
                grace_period: self.cfg.grace_period,
                delta: self.cfg.delta,
                tau: self.cfg.tau,
                max_features: Some(self.max_features),
                ..HoeffdingTreeRegressorConfig::default()
            },
        )
    }

    fn detector(&self, delta: f64) -> Adwin {
        Adwin::new(AdwinConfig {
            delta,
            ..AdwinConfig::default()
        })
    }

    /// The median of the trees' predictions (numpy's: the mean of the two
    /// middle ones for an even count).
    fn median(&self, x: &[f64]) -> f64 {
        let mut p: Vec<f64> = self.members.iter().map(|m| m.tree.predict(x)).collect();
        if p.is_empty() {
            return 0.0;
        }
        p.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let h = p.len() / 2;
        if p.len() % 2 == 1 {
            p[h]
        } else {
            (p[h - 1] + p[h]) / 2.0
        }
    }
}

/// River's `ARFRegressor._drift_detector_input`: the error normalised to
/// about [0, 1] by the running mean and standard deviation of the errors.
fn normalised_error(errors: &mut Var, error: f64) -> f64 {
    errors.update(error, 1.0);
    if errors.n == 1.0 {
        return 0.5;
    }
    let sd = errors.get().sqrt();
    if sd > 0.0 {
        (error + 3.0 * sd) / (6.0 * sd)
    } else {
        0.5
    }
}

impl OnlineRegressor for ArfRegressor {
    fn learn_one(&mut self, x: &[f64], y: f64) -> Result<(), OnlineError> {
        check_width(self.n_features, x)?;
        for i in 0..self.members.len() {
            let predicted = self.members[i].tree.predict(x);
            let k = poisson(self.cfg.lambda, &mut self.rng);
            if k == 0 {
                continue;
            }
            let w = f64::from(k);
            let m = &mut self.members[i];
            if let Some(b) = m.background.as_mut() {
                b.learn_weighted_with(x, y, w, Some(&mut self.rng))?;
            }
            m.tree.learn_weighted_with(x, y, w, Some(&mut self.rng))?;
            let input = normalised_error(&mut m.errors, y - predicted);
            if m.warning.update(input) {
                self.warnings += 1;
                let tree = self.new_tree();
                let warning = self.detector(self.cfg.warning_delta);
                let m = &mut self.members[i];
                m.background = Some(tree);
                m.warning = warning;
            }
            if self.members[i].drift.update(input) {
                self.drifts += 1;
                let replacement = match self.members[i].background.take() {
                    Some(b) => {
                        self.members[i].warning = self.detector(self.cfg.warning_delta);
                        b
                    }
                    None => self.new_tree(),
                };
                let drift = self.detector(self.cfg.drift_delta);
                let m = &mut self.members[i];
                m.tree = replacement;
                m.drift = drift;
            }
        }
        Ok(())
    }

    fn predict_one(&self, x: &[f64]) -> Result<f64, OnlineError> {
        check_width(self.n_features, x)?;
        Ok(self.median(x))
    }

    fn n_features(&self) -> usize {
        self.n_features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_and_constant_errors_normalise_to_a_half() {
        let mut v = Var::EMPTY;
        assert_eq!(normalised_error(&mut v, 3.0), 0.5);
        assert_eq!(normalised_error(&mut v, 3.0), 0.5);
        // Errors {3, 3, 6}: mean 4, sd sqrt(3); (6 + 3 sd) / (6 sd).
        let sd = 3.0f64.sqrt();
        assert!((normalised_error(&mut v, 6.0) - (6.0 + 3.0 * sd) / (6.0 * sd)).abs() < 1e-15);
    }

    #[test]
    fn predicts_zero_before_learning() {
        let f = ArfRegressor::new(3, ArfRegressorConfig::default());
        assert_eq!(f.predict_one(&[1.0, 2.0, 3.0]).unwrap(), 0.0);
        assert!(f.predict_one(&[1.0]).is_err());
    }
}
