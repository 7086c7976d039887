//! The online regression families: River's `preprocessing.StandardScaler()
//! | tree.HoeffdingTreeRegressor()` (`hoeffding_tree`) and `... |
//! forest.ARFRegressor(seed)` (`arf`), the pipelines River's own examples
//! use. The scaler matters: the leaves' linear models are plain SGD on the
//! features as given, which diverges on unscaled sensor values (River's bare
//! tree on the first 2,000 rows of UCI Air Quality: MAE 206 on a target
//! whose mean is 2; behind the scaler: see `tests/online_regression.rs`).
//!
//! The scaler is [`OnlineStandardScaler`] (the logistic family's): it learns
//! a sample before scaling it for the model, and prediction scales with the
//! statistics so far, as River's pipeline does. `NaN` (missing) stays
//! missing.

use super::HoeffdingTreeRegressorConfig;
use super::{check_width, OnlineError, OnlineFamily, OnlineRegressor, OnlineStandardScaler};
use super::{ArfRegressor, ArfRegressorConfig, HoeffdingTreeRegressor};

/// The regressor behind the scaler.
#[derive(Debug, Clone)]
pub enum ScaledModel {
    HoeffdingTree(HoeffdingTreeRegressor),
    Arf(ArfRegressor),
}

/// An online regression family: an online standard scaler, then the model.
#[derive(Debug, Clone)]
pub struct OnlineRegression {
    pub(crate) scaler: OnlineStandardScaler,
    pub(crate) model: ScaledModel,
    n_features: usize,
}

impl OnlineRegression {
    /// A new, empty model of `family` with its defaults, for samples of
    /// `n_features` features; `seed` seeds `arf`. `None` for the families
    /// without a regressor (`online_logistic`, `hoeffding_adaptive_tree`).
    pub fn new(family: OnlineFamily, n_features: usize, seed: u64) -> Option<Self> {
        let model = match family {
            OnlineFamily::HoeffdingTree => ScaledModel::HoeffdingTree(HoeffdingTreeRegressor::new(
                n_features,
                HoeffdingTreeRegressorConfig::default(),
            )),
            OnlineFamily::Arf => ScaledModel::Arf(ArfRegressor::new(
                n_features,
                ArfRegressorConfig {
                    seed,
                    ..ArfRegressorConfig::default()
                },
            )),
            OnlineFamily::Logistic | OnlineFamily::HoeffdingAdaptiveTree => return None,
        };
        Some(Self {
            scaler: OnlineStandardScaler::new(n_features),
            model,
            n_features,
        })
    }

    /// The family (`hoeffding_tree` or `arf`).
    pub fn family(&self) -> OnlineFamily {
        match self.model {
            ScaledModel::HoeffdingTree(_) => OnlineFamily::HoeffdingTree,
            ScaledModel::Arf(_) => OnlineFamily::Arf,
        }
    }

    fn inner(&self) -> &dyn OnlineRegressor {
        match &self.model {
            ScaledModel::HoeffdingTree(m) => m,
            ScaledModel::Arf(m) => m,
        }
    }
}

impl OnlineRegressor for OnlineRegression {
    fn learn_one(&mut self, x: &[f64], y: f64) -> Result<(), OnlineError> {
        check_width(self.n_features, x)?;
        self.scaler.learn_one(x);
        let mut xs = Vec::with_capacity(self.n_features);
        self.scaler.transform_into(x, &mut xs);
        match &mut self.model {
            ScaledModel::HoeffdingTree(m) => m.learn_one(&xs, y),
            ScaledModel::Arf(m) => m.learn_one(&xs, y),
        }
    }

    fn predict_one(&self, x: &[f64]) -> Result<f64, OnlineError> {
        check_width(self.n_features, x)?;
        let mut xs = Vec::with_capacity(self.n_features);
        self.scaler.transform_into(x, &mut xs);
        self.inner().predict_one(&xs)
    }

    fn n_features(&self) -> usize {
        self.n_features
    }
}
