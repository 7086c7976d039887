//! Random forests (Breiman, "Random Forests", Machine Learning 45, 2001) as
//! scikit-learn's `RandomForestClassifier` and `RandomForestRegressor` build
//! them (scikit-learn user guide, section 1.11.2 "Random forests"): each tree
//! is a CART tree ([`super::tree`]) grown on a bootstrap sample (n draws with
//! replacement, as sample weights) choosing each split among `max_features`
//! features drawn at random; the forest predicts the mean of its trees' class
//! probabilities (classifier) or values (regressor).
//!
//! Trees are grown in parallel on `n_jobs` threads. Tree `t` draws all its
//! randomness from its own generator seeded by `(seed, t)`, so the forest, and
//! its ONNX bytes, depend on the seed and the data only, never on the number
//! of threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use fastrand::Rng;
use serde::{Deserialize, Serialize};

use super::tree::{
    grow, predict_ensemble, validate_depth_and_counts, Criterion, DecisionTree, GrowParams,
    TrainingData,
};
use crate::learn::model::{Target, Task, TrainError};
use crate::onnx::builder::ModelMeta;

/// How many features each split considers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaxFeatures {
    /// `"auto"`, `"sqrt"`, `"log2"` or `"all"`.
    Rule(FeatureRule),
    /// A fraction of the features in `(0, 1]`: `max(1, ⌊fraction · n_features⌋)`.
    Fraction(f64),
}

/// A named rule for [`MaxFeatures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureRule {
    /// scikit-learn 1.9's defaults: `sqrt` for a classifier, `all` for a
    /// regressor.
    Auto,
    /// `max(1, ⌊√n_features⌋)`.
    Sqrt,
    /// `max(1, ⌊log₂ n_features⌋)`.
    Log2,
    /// Every feature (bagged trees).
    All,
}

impl Default for MaxFeatures {
    fn default() -> Self {
        Self::Rule(FeatureRule::Auto)
    }
}

impl MaxFeatures {
    /// Features per split for `n_features` inputs and `task`.
    pub fn resolve(&self, n_features: usize, task: Task) -> usize {
        let nf = n_features as f64;
        let k = match (self, task) {
            (Self::Rule(FeatureRule::Auto), Task::Classification)
            | (Self::Rule(FeatureRule::Sqrt), _) => nf.sqrt().floor() as usize,
            (Self::Rule(FeatureRule::Auto), Task::Regression)
            | (Self::Rule(FeatureRule::All), _) => n_features,
            (Self::Rule(FeatureRule::Log2), _) => nf.log2().floor() as usize,
            (Self::Fraction(f), _) => (f * nf).floor() as usize,
        };
        k.clamp(1, n_features.max(1))
    }
}

/// Hyperparameters of a random forest (the `forest` family section). Counts
/// are signed so that a negative value reaches [`ForestConfig::validate`] and
/// is refused there by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForestConfig {
    /// Number of trees (≥ 1). Default 50: half of scikit-learn's 100, for
    /// the size of the ONNX file and the training time on an edge board.
    pub n_trees: i64,
    /// Features drawn per split: `auto` (default: `sqrt` for a classifier,
    /// `all` for a regressor), `sqrt`, `log2`, `all`, or a fraction in (0, 1].
    pub max_features: MaxFeatures,
    /// Grow each tree on a bootstrap sample (`true`) or on every sample.
    pub bootstrap: bool,
    /// Deepest level a node may sit at (root: 0); `0` = unlimited. Default
    /// 12 (scikit-learn: unlimited), to bound the model size.
    pub max_depth: i64,
    /// Fewest samples a node needs to be split (≥ 2).
    pub min_samples_split: i64,
    /// Fewest samples each child of a split keeps (≥ 1); with `bootstrap`,
    /// distinct samples of the tree's bootstrap sample count (as
    /// scikit-learn), not draws.
    pub min_samples_leaf: i64,
    /// Split criterion of a classifier (`gini` or `entropy`); a regressor
    /// always uses the mean squared error.
    pub criterion: Criterion,
    /// Seed of the bootstrap samples and feature draws.
    pub seed: u64,
    /// Training threads; `0` = the available cores. The result does not
    /// depend on it.
    pub n_jobs: i64,
}

impl Default for ForestConfig {
    fn default() -> Self {
        Self {
            n_trees: 50,
            max_features: MaxFeatures::default(),
            bootstrap: true,
            max_depth: 12,
            min_samples_split: 2,
            min_samples_leaf: 1,
            criterion: Criterion::Gini,
            seed: 0,
            n_jobs: 0,
        }
    }
}

impl ForestConfig {
    /// Checks every key; the message names the first bad one.
    ///
    /// # Errors
    /// A message such as `"n_trees: 0 must be at least 1"`.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_trees < 1 {
            return Err(format!("n_trees: {} must be at least 1", self.n_trees));
        }
        if let MaxFeatures::Fraction(f) = self.max_features {
            if !(f > 0.0 && f <= 1.0) {
                return Err(format!(
                    "max_features: {f} must be a fraction in (0, 1] or one of auto, sqrt, log2, all"
                ));
            }
        }
        if self.n_jobs < 0 {
            return Err(format!(
                "n_jobs: {} must be at least 0 (0 = available cores)",
                self.n_jobs
            ));
        }
        validate_depth_and_counts(
            self.max_depth,
            self.min_samples_split,
            self.min_samples_leaf,
        )
    }
}

/// A fitted random forest with its imputation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForestModel {
    pub task: Task,
    /// Class names; index k is output column k (empty for a regressor).
    pub classes: Vec<String>,
    /// Feature names, in input order.
    pub feature_names: Vec<String>,
    /// Training mean of each feature, `[n_features]`: the value a missing
    /// one takes.
    pub mean: Vec<f32>,
    pub trees: Vec<DecisionTree>,
    pub config: ForestConfig,
    /// `max_features` resolved for this data.
    pub max_features: usize,
}

impl ForestModel {
    /// Grows `cfg.n_trees` trees on `x` (`[n, n_features]` row-major, `NaN` =
    /// missing). `init` is ignored: a forest is always retrained from
    /// scratch. `cancelled` is polled by the calling thread every 10 ms at
    /// most while worker threads grow the trees; they stop at their next
    /// node. Values of `cfg` outside [`ForestConfig::validate`]'s ranges are
    /// clamped into them.
    ///
    /// # Errors
    /// [`TrainError`] for empty or mis-shaped data, fewer than 2 classes, a
    /// class index out of range, a non-finite target, or cancellation.
    pub fn fit(
        x: &[f32],
        target: &Target<'_>,
        feature_names: &[String],
        cfg: &ForestConfig,
        init: Option<&ForestModel>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let _ = init;
        let data = TrainingData::new(x, target, feature_names.len())?;
        let task = target.task();
        let max_features = cfg.max_features.resolve(data.nf, task);
        let params = GrowParams::new(
            cfg.criterion,
            cfg.max_depth,
            cfg.min_samples_split,
            cfg.min_samples_leaf,
            max_features,
        );
        let n_trees = cfg.n_trees.max(1) as usize;
        let n_threads = match cfg.n_jobs {
            j if j > 0 => j as usize,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
        .min(n_trees);
        let next = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let stopped = || stop.load(Ordering::Relaxed);
        let grow_one = |t: usize| {
            let mut rng = Rng::with_seed(tree_seed(cfg.seed, t));
            let mut weights = vec![0u32; data.n];
            if cfg.bootstrap {
                for _ in 0..data.n {
                    weights[rng.usize(0..data.n)] += 1;
                }
            } else {
                weights.iter_mut().for_each(|w| *w = 1);
            }
            grow(&data, &weights, &params, &mut rng, &stopped)
        };
        let mut trees: Vec<Option<DecisionTree>> = vec![None; n_trees];
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            for _ in 0..n_threads {
                let tx = tx.clone();
                let (next, grow_one, stopped) = (&next, &grow_one, &stopped);
                s.spawn(move || loop {
                    let t = next.fetch_add(1, Ordering::Relaxed);
                    if t >= n_trees || stopped() {
                        break;
                    }
                    let Some(tree) = grow_one(t) else { break };
                    if tx.send((t, tree)).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            let mut received = 0;
            while received < n_trees {
                if cancelled() {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                match rx.recv_timeout(Duration::from_millis(10)) {
                    Ok((t, tree)) => {
                        trees[t] = Some(tree);
                        received += 1;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        let trees: Option<Vec<DecisionTree>> = trees.into_iter().collect();
        let trees = trees.ok_or(TrainError::Cancelled)?;
        Ok(Self {
            task,
            classes: data.classes,
            feature_names: feature_names.to_vec(),
            mean: data.mean,
            trees,
            config: cfg.clone(),
            max_features,
        })
    }

    /// What the model predicts.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Class names (empty for a regressor).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Feature names, in input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// For `x` (`[n, n_features]` row-major, `NaN` = missing): mean class
    /// probabilities `[n, n_classes]` row-major (classifier) or mean
    /// predictions `[n]` (regressor), in `f32` exactly as the exported ONNX
    /// graph computes them.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        predict_ensemble(&self.trees, &self.mean, self.task, self.classes.len(), x)
    }

    /// ONNX bytes: imputation then one `ai.onnx.ml` tree-ensemble node
    /// ([`super::tree_onnx`]).
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        super::tree_onnx::tree_ensemble_to_onnx(
            &self.trees,
            &self.mean,
            &ModelMeta {
                family: "forest",
                task: self.task,
                classes: &self.classes,
                features: &self.feature_names,
                version,
                doc: "Random forest with mean imputation (ai.onnx.ml tree ensemble).",
            },
        )
    }

    /// The configuration plus what the fit produced (resolved
    /// `max_features`, total `n_nodes`, mean `n_leaves` per tree, deepest
    /// `depth`), for the model card.
    pub fn hyperparameters(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        let n_nodes: usize = self.trees.iter().map(|t| t.nodes.len()).sum();
        let n_leaves: usize = self.trees.iter().map(DecisionTree::n_leaves).sum();
        let depth = self
            .trees
            .iter()
            .map(DecisionTree::depth)
            .max()
            .unwrap_or(0);
        if let Some(map) = v.as_object_mut() {
            if self.task == Task::Regression {
                map.insert("criterion".into(), "squared_error".into());
            }
            map.insert("max_features_resolved".into(), self.max_features.into());
            map.insert("n_nodes".into(), n_nodes.into());
            map.insert(
                "mean_leaves_per_tree".into(),
                (n_leaves as f64 / self.trees.len().max(1) as f64).into(),
            );
            map.insert("depth".into(), depth.into());
        }
        v
    }
}

/// The seed of tree `t`: SplitMix64 of the forest seed and the tree index.
fn tree_seed(seed: u64, t: usize) -> u64 {
    let mut z = seed.wrapping_add((t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_features_follows_sklearn() {
        let auto = MaxFeatures::default();
        assert_eq!(auto.resolve(128, Task::Classification), 11);
        assert_eq!(auto.resolve(8, Task::Regression), 8);
        assert_eq!(
            MaxFeatures::Rule(FeatureRule::Log2).resolve(5, Task::Regression),
            2
        );
        assert_eq!(MaxFeatures::Fraction(0.3).resolve(5, Task::Regression), 1);
        assert_eq!(MaxFeatures::Fraction(0.01).resolve(5, Task::Regression), 1);
        let cfg: ForestConfig =
            serde_json::from_str(r#"{"max_features": 0.5, "n_trees": 3}"#).unwrap();
        assert_eq!(cfg.max_features, MaxFeatures::Fraction(0.5));
        let cfg: ForestConfig = serde_json::from_str(r#"{"max_features": "log2"}"#).unwrap();
        assert_eq!(cfg.max_features, MaxFeatures::Rule(FeatureRule::Log2));
    }

    #[test]
    fn cancelled_forest_stops() {
        let x: Vec<f32> = (0..200).map(|i| i as f32).collect();
        let v: Vec<f64> = (0..200).map(|i| f64::from(i % 7)).collect();
        let names = vec!["a".to_string()];
        let r = ForestModel::fit(
            &x,
            &Target::Values(&v),
            &names,
            &ForestConfig::default(),
            None,
            &|| true,
        );
        assert!(matches!(r, Err(TrainError::Cancelled)));
    }
}
