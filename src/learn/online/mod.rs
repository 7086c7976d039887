//! Online learners: classifiers and regressors that learn one labelled
//! sample at a time, in stream order, and predict between any two samples
//! (issue 17).
//!
//! Each follows its paper and River's implementation (River 0.26.1,
//! <https://riverml.xyz>), and is tested row by row against River's
//! prequential predictions on the same streams (`tests/online.rs`,
//! `tests/fixtures/online/gen_online.py`):
//!
//! * [`OnlineLogistic`] (`online_logistic`): River's
//!   `preprocessing.StandardScaler() | linear_model.LogisticRegression()`:
//!   an online standard scaler in front of logistic regression by plain SGD
//!   (Robbins & Monro 1951) at River's defaults; one-vs-rest
//!   (`multiclass.OneVsRestClassifier`) beyond two classes;
//! * [`HoeffdingTreeClassifier`] (`hoeffding_tree`): the Very Fast Decision
//!   Tree (Domingos & Hulten, "Mining high-speed data streams", KDD 2000),
//!   as River's `tree.HoeffdingTreeClassifier` with its defaults: Gaussian
//!   split estimators for numeric features, information gain, grace period
//!   200, delta 1e-7, tau 0.05, naive-Bayes-adaptive leaves;
//! * [`HoeffdingAdaptiveTreeClassifier`] (`hoeffding_adaptive_tree`): Bifet &
//!   Gavaldà, "Adaptive learning from evolving data streams", IDA 2009, as
//!   River's `tree.HoeffdingAdaptiveTreeClassifier` with its defaults (ADWIN
//!   per node, alternate subtrees, Poisson(1) bootstrap weights);
//! * [`AdaptiveRandomForest`] (`arf`): Gomes et al., "Adaptive random forests
//!   for evolving data stream classification", Machine Learning 2017, as
//!   River's `forest.ARFClassifier` with its defaults (10 Hoeffding trees on
//!   random feature subsets, Poisson(6) online bagging, ADWIN warning and
//!   drift per tree with background trees).
//!
//! And the regressors (where River has one), the `hoeffding_tree` and `arf`
//! families on a regression label ([`OnlineRegression`]: River's
//! `preprocessing.StandardScaler() | model`, tested row by row against
//! River's predictions in `tests/online_regression.rs`,
//! `tests/fixtures/online/gen_online_regression.py`):
//!
//! * [`HoeffdingTreeRegressor`]: Domingos & Hulten 2000 with FIMT's
//!   regression parts (Ikonomovska, Gama & Džeroski, "Learning model trees
//!   from evolving data streams", DMKD 2011: variance reduction, E-BST
//!   splitters with bad-split pruning, linear models in the leaves), as
//!   River's `tree.HoeffdingTreeRegressor` with its defaults (truncated
//!   E-BST, adaptive mean / linear-model leaves);
//! * [`ArfRegressor`]: Gomes, Barddal, Boiko Ferreira & Bifet, "Adaptive
//!   random forests for data stream regression", ESANN 2018, as River's
//!   `forest.ARFRegressor` with its defaults (10 trees, Poisson(6), ADWIN
//!   warning and drift on the normalised error, median of the trees).
//!
//! The contract for regression ([`OnlineRegressor`]): the same samples, a
//! target `y: f64`; before any sample the prediction is 0 (River's).
//!
//! The randomised ones draw from Python's `random.Random(seed)`
//! ([`py_random::PyRandom`]) as River does, so with River's seed they too
//! give River's predictions row by row.
//!
//! The contract ([`OnlineClassifier`]): a sample is `x: &[f64]` of the
//! model's width, in feature order, `NaN` = missing (River: the key absent
//! from the sample's dict); a label is a class index `y: usize`. Classes are
//! learned when they first appear, with no list of classes given up front;
//! with one class learned so far, that class is predicted (cold start), and
//! before any, nothing is.

pub mod arf;
pub mod arf_regressor;
pub mod export;
pub mod hoeffding_adaptive_tree;
pub mod hoeffding_tree;
pub mod hoeffding_tree_regressor;
pub mod logistic;
pub mod regression;
pub use super::py_random;

use std::str::FromStr;

pub use arf::{AdaptiveRandomForest, ArfConfig};
pub use arf_regressor::{ArfRegressor, ArfRegressorConfig};
pub use hoeffding_adaptive_tree::{HoeffdingAdaptiveTreeClassifier, HoeffdingAdaptiveTreeConfig};
pub use hoeffding_tree::{HoeffdingTreeClassifier, HoeffdingTreeConfig};
pub use hoeffding_tree_regressor::{HoeffdingTreeRegressor, HoeffdingTreeRegressorConfig};
pub use logistic::{OnlineLogistic, OnlineLogisticConfig, OnlineStandardScaler};
pub use regression::{OnlineRegression, ScaledModel};

/// Errors of an online learner: a sample that does not fit the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OnlineError {
    /// The sample has a different number of features than the model.
    #[error("sample has {got} features, the model {expected}")]
    Width { expected: usize, got: usize },
    /// A binary model was given a third class.
    #[error("class {class}: a binary model learns classes 0 and 1 only")]
    Class { class: usize },
}

/// A classifier that learns one sample at a time (test then train).
pub trait OnlineClassifier {
    /// Learns the labelled sample `(x, y)`: `x` is `[n_features]`, `NaN` =
    /// missing; `y` a class index (a new one is learned as it appears).
    ///
    /// # Errors
    /// [`OnlineError::Width`] when `x` is not `n_features` long;
    /// [`OnlineError::Class`] for a class a binary model cannot hold.
    fn learn_one(&mut self, x: &[f64], y: usize) -> Result<(), OnlineError>;

    /// Class probabilities of `x`, `[n_classes]` (index = class; classes not
    /// learned yet have 0). Empty before any sample is learned.
    ///
    /// # Errors
    /// [`OnlineError::Width`] when `x` is not `n_features` long.
    fn predict_proba_one(&self, x: &[f64]) -> Result<Vec<f64>, OnlineError>;

    /// The predicted class of `x`: River's choice among the classes learned
    /// so far (ties as River breaks them); `None` before any is learned.
    ///
    /// # Errors
    /// [`OnlineError::Width`] when `x` is not `n_features` long.
    fn predict_one(&self, x: &[f64]) -> Result<Option<usize>, OnlineError>;

    /// One past the largest class index learned so far.
    fn n_classes(&self) -> usize;

    /// Number of features of a sample.
    fn n_features(&self) -> usize;
}

/// A regressor that learns one sample at a time (test then train).
pub trait OnlineRegressor {
    /// Learns the labelled sample `(x, y)`: `x` is `[n_features]`, `NaN` =
    /// missing; `y` the target.
    ///
    /// # Errors
    /// [`OnlineError::Width`] when `x` is not `n_features` long.
    fn learn_one(&mut self, x: &[f64], y: f64) -> Result<(), OnlineError>;

    /// The predicted target of `x` (River's answer before any sample: 0).
    ///
    /// # Errors
    /// [`OnlineError::Width`] when `x` is not `n_features` long.
    fn predict_one(&self, x: &[f64]) -> Result<f64, OnlineError>;

    /// Number of features of a sample.
    fn n_features(&self) -> usize;
}

/// The online families, as `--family` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlineFamily {
    /// [`OnlineLogistic`].
    Logistic,
    /// [`HoeffdingTreeClassifier`].
    HoeffdingTree,
    /// [`HoeffdingAdaptiveTreeClassifier`].
    HoeffdingAdaptiveTree,
    /// [`AdaptiveRandomForest`].
    Arf,
}

impl OnlineFamily {
    /// Every online family.
    pub const ALL: [OnlineFamily; 4] = [
        Self::Logistic,
        Self::HoeffdingTree,
        Self::HoeffdingAdaptiveTree,
        Self::Arf,
    ];

    /// The family's name (`online_logistic`, `hoeffding_tree`,
    /// `hoeffding_adaptive_tree`, `arf`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Logistic => "online_logistic",
            Self::HoeffdingTree => "hoeffding_tree",
            Self::HoeffdingAdaptiveTree => "hoeffding_adaptive_tree",
            Self::Arf => "arf",
        }
    }

    /// A new, empty model of this family with its defaults, for samples of
    /// `n_features` features and `n_classes` classes when known (`Some(2)`
    /// makes the logistic family River's binary model; otherwise it is
    /// one-vs-rest; the trees take any number). `seed` seeds the randomised
    /// families (`hoeffding_adaptive_tree`, `arf`).
    pub fn new_model(self, n_features: usize, n_classes: Option<usize>, seed: u64) -> OnlineModel {
        match self {
            Self::Logistic => OnlineModel::Logistic(OnlineLogistic::new(
                n_features,
                n_classes,
                OnlineLogisticConfig::default(),
            )),
            Self::HoeffdingTree => OnlineModel::HoeffdingTree(HoeffdingTreeClassifier::new(
                n_features,
                HoeffdingTreeConfig::default(),
            )),
            Self::HoeffdingAdaptiveTree => {
                OnlineModel::HoeffdingAdaptiveTree(HoeffdingAdaptiveTreeClassifier::new(
                    n_features,
                    HoeffdingAdaptiveTreeConfig {
                        seed,
                        ..HoeffdingAdaptiveTreeConfig::default()
                    },
                ))
            }
            Self::Arf => OnlineModel::Arf(AdaptiveRandomForest::new(
                n_features,
                ArfConfig {
                    seed,
                    ..ArfConfig::default()
                },
            )),
        }
    }
}

impl FromStr for OnlineFamily {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online_logistic" => Ok(Self::Logistic),
            "hoeffding_tree" => Ok(Self::HoeffdingTree),
            "hoeffding_adaptive_tree" => Ok(Self::HoeffdingAdaptiveTree),
            "arf" => Ok(Self::Arf),
            other => Err(format!(
                "online family `{other}`: use online_logistic, hoeffding_tree, \
                 hoeffding_adaptive_tree or arf"
            )),
        }
    }
}

impl std::fmt::Display for OnlineFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One enum over the online families.
#[derive(Debug, Clone)]
pub enum OnlineModel {
    Logistic(OnlineLogistic),
    HoeffdingTree(HoeffdingTreeClassifier),
    HoeffdingAdaptiveTree(HoeffdingAdaptiveTreeClassifier),
    Arf(AdaptiveRandomForest),
}

impl OnlineModel {
    fn inner(&self) -> &dyn OnlineClassifier {
        match self {
            Self::Logistic(m) => m,
            Self::HoeffdingTree(m) => m,
            Self::HoeffdingAdaptiveTree(m) => m,
            Self::Arf(m) => m,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn OnlineClassifier {
        match self {
            Self::Logistic(m) => m,
            Self::HoeffdingTree(m) => m,
            Self::HoeffdingAdaptiveTree(m) => m,
            Self::Arf(m) => m,
        }
    }
}

impl OnlineClassifier for OnlineModel {
    fn learn_one(&mut self, x: &[f64], y: usize) -> Result<(), OnlineError> {
        self.inner_mut().learn_one(x, y)
    }

    fn predict_proba_one(&self, x: &[f64]) -> Result<Vec<f64>, OnlineError> {
        self.inner().predict_proba_one(x)
    }

    fn predict_one(&self, x: &[f64]) -> Result<Option<usize>, OnlineError> {
        self.inner().predict_one(x)
    }

    fn n_classes(&self) -> usize {
        self.inner().n_classes()
    }

    fn n_features(&self) -> usize {
        self.inner().n_features()
    }
}

/// River's `max(d, key=d.get)` over `(class, value)` pairs in the dict's
/// order: the first pair with the largest value (a later value replaces the
/// best only when greater, as Python's `max` does).
pub(crate) fn first_argmax(pairs: impl IntoIterator<Item = (usize, f64)>) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (c, v) in pairs {
        match best {
            None => best = Some((c, v)),
            Some((_, b)) if v > b => best = Some((c, v)),
            _ => {}
        }
    }
    best.map(|(c, _)| c)
}

pub(crate) fn check_width(expected: usize, x: &[f64]) -> Result<(), OnlineError> {
    if x.len() == expected {
        Ok(())
    } else {
        Err(OnlineError::Width {
            expected,
            got: x.len(),
        })
    }
}
