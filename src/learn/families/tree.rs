//! Decision trees: CART (Breiman, Friedman, Olshen & Stone, *Classification
//! and Regression Trees*, 1984) as scikit-learn's `DecisionTreeClassifier` and
//! `DecisionTreeRegressor` build them (scikit-learn user guide, section 1.10
//! "Decision Trees", "Mathematical formulation").
//!
//! * Missing values (`NaN`) are replaced by the feature's training mean
//!   (scikit-learn's `SimpleImputer(strategy="mean")`) before anything else,
//!   in training, in [`TreeModel::predict`] and in the exported ONNX graph.
//! * Each node takes the split, over every feature (a random subset of
//!   `max_features` of them in a forest) and every threshold, with the largest
//!   impurity decrease: Gini `1 − Σ p_k²` or entropy `−Σ p_k log₂ p_k` for a
//!   classifier, the mean squared error for a regressor. Features are visited
//!   in a random order drawn from the seed; the first best split found wins
//!   ties, as in scikit-learn.
//! * Thresholds are the midpoints between consecutive distinct sorted values
//!   of the node's samples, computed in `f32`; a sample goes left when
//!   `x <= threshold` (ONNX `BRANCH_LEQ`), so the in-process model and the
//!   ONNX model take the same path for every input.
//! * A node is a leaf when it is pure, has fewer than `min_samples_split`
//!   samples, sits at `max_depth`, or has no split leaving `min_samples_leaf`
//!   samples on each side. Leaves hold the class probabilities (classifier) or
//!   the mean target (regressor).
//!
//! The tree is grown depth first with one index buffer partitioned in place
//! (each node owns a contiguous range of it, as scikit-learn's splitter); per
//! node and candidate feature the node's samples are sorted once as packed
//! `u64` keys (order-preserving bits of the value, sample index).

use fastrand::Rng;
use serde::{Deserialize, Serialize};

use crate::features::scaler::StandardScaler;
use crate::learn::model::{check_shapes, Target, Task, TrainError};
use crate::onnx::builder::ModelMeta;

/// Split quality measure of a classification tree. A regression tree always
/// uses the mean squared error (scikit-learn's `"squared_error"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Gini impurity `1 − Σ_k p_k²`.
    #[default]
    Gini,
    /// Shannon entropy `−Σ_k p_k log₂ p_k`.
    Entropy,
}

/// Hyperparameters of a single decision tree (the `tree` family section).
/// Counts are signed so that a negative value reaches [`TreeConfig::validate`]
/// and is refused there by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TreeConfig {
    /// Split criterion of a classifier (`gini` or `entropy`); ignored by a
    /// regressor (mean squared error).
    pub criterion: Criterion,
    /// Deepest level a node may sit at (the root is level 0); `0` means
    /// unlimited (scikit-learn's `max_depth=None`). Default 10: at most 1024
    /// leaves, a small model for an edge board.
    pub max_depth: i64,
    /// Fewest samples a node needs to be split (≥ 2).
    pub min_samples_split: i64,
    /// Fewest samples each child of a split keeps (≥ 1).
    pub min_samples_leaf: i64,
    /// Seed of the feature order (it only breaks ties between equally good
    /// splits).
    pub seed: u64,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            criterion: Criterion::Gini,
            max_depth: 10,
            min_samples_split: 2,
            min_samples_leaf: 1,
            seed: 0,
        }
    }
}

impl TreeConfig {
    /// Checks every key; the message names the first bad one.
    ///
    /// # Errors
    /// A message such as `"max_depth: -1 must be at least 0 (0 = unlimited)"`.
    pub fn validate(&self) -> Result<(), String> {
        validate_depth_and_counts(
            self.max_depth,
            self.min_samples_split,
            self.min_samples_leaf,
        )
    }

    pub(crate) fn grow_params(&self, n_features: usize) -> GrowParams {
        GrowParams::new(
            self.criterion,
            self.max_depth,
            self.min_samples_split,
            self.min_samples_leaf,
            n_features,
        )
    }
}

/// The checks a tree and a forest share.
pub(crate) fn validate_depth_and_counts(
    max_depth: i64,
    min_samples_split: i64,
    min_samples_leaf: i64,
) -> Result<(), String> {
    if max_depth < 0 {
        return Err(format!(
            "max_depth: {max_depth} must be at least 0 (0 = unlimited)"
        ));
    }
    if min_samples_split < 2 {
        return Err(format!(
            "min_samples_split: {min_samples_split} must be at least 2"
        ));
    }
    if min_samples_leaf < 1 {
        return Err(format!(
            "min_samples_leaf: {min_samples_leaf} must be at least 1"
        ));
    }
    Ok(())
}

/// One node of a [`DecisionTree`]; children are indices into its `nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Node {
    /// `x[feature] <= threshold` goes to `left`, otherwise to `right`.
    Split {
        feature: u32,
        threshold: f32,
        left: u32,
        right: u32,
    },
    /// Class probabilities `[n_classes]` (classifier) or `[mean]` (regressor).
    Leaf { value: Vec<f32> },
}

/// A fitted tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionTree {
    pub nodes: Vec<Node>,
}

impl DecisionTree {
    /// The leaf values for one imputed row (`[n_features]`, no `NaN`).
    pub fn leaf_value(&self, row: &[f32]) -> &[f32] {
        let mut i = 0;
        loop {
            match &self.nodes[i] {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    i = if row[*feature as usize] <= *threshold {
                        *left as usize
                    } else {
                        *right as usize
                    };
                }
                Node::Leaf { value } => return value,
            }
        }
    }

    /// Number of leaves.
    pub fn n_leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf { .. }))
            .count()
    }

    /// Depth of the deepest leaf (a lone root leaf: 0).
    pub fn depth(&self) -> usize {
        let mut depth = vec![0usize; self.nodes.len()];
        let mut deepest = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            if let Node::Split { left, right, .. } = node {
                depth[*left as usize] = depth[i] + 1;
                depth[*right as usize] = depth[i] + 1;
                deepest = deepest.max(depth[i] + 1);
            }
        }
        deepest
    }
}

/// A fitted decision tree with its imputation: everything needed to predict
/// and to export to ONNX.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TreeModel {
    pub task: Task,
    /// Class names; index k is output column k (empty for a regressor).
    pub classes: Vec<String>,
    /// Feature names, in input order.
    pub feature_names: Vec<String>,
    /// Training mean of each feature, `[n_features]`: the value a missing
    /// one takes.
    pub mean: Vec<f32>,
    pub tree: DecisionTree,
    pub config: TreeConfig,
}

impl TreeModel {
    /// Grows a tree on `x` (`[n, n_features]` row-major, `NaN` = missing).
    /// `init` is ignored: a tree is always retrained from scratch (there is
    /// no warm start for a greedy tree). `cancelled` is polled before each
    /// node. Values of `cfg` outside [`TreeConfig::validate`]'s ranges are
    /// clamped into them.
    ///
    /// # Errors
    /// [`TrainError`] for empty or mis-shaped data, fewer than 2 classes, a
    /// class index out of range, a non-finite target, or cancellation.
    pub fn fit(
        x: &[f32],
        target: &Target<'_>,
        feature_names: &[String],
        cfg: &TreeConfig,
        init: Option<&TreeModel>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let _ = init;
        let data = TrainingData::new(x, target, feature_names.len())?;
        let weights = vec![1u32; data.n];
        let mut rng = Rng::with_seed(cfg.seed);
        let tree = grow(
            &data,
            &weights,
            &cfg.grow_params(data.nf),
            &mut rng,
            cancelled,
        )
        .ok_or(TrainError::Cancelled)?;
        Ok(Self {
            task: target.task(),
            classes: data.classes,
            feature_names: feature_names.to_vec(),
            mean: data.mean,
            tree,
            config: cfg.clone(),
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

    /// For `x` (`[n, n_features]` row-major, `NaN` = missing): class
    /// probabilities `[n, n_classes]` row-major (classifier) or predictions
    /// `[n]` (regressor), in `f32` exactly as the exported ONNX graph computes
    /// them.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        predict_ensemble(
            std::slice::from_ref(&self.tree),
            &self.mean,
            self.task,
            self.classes.len(),
            x,
        )
    }

    /// ONNX bytes: imputation then one `ai.onnx.ml` tree-ensemble node
    /// ([`super::tree_onnx`]).
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        super::tree_onnx::tree_ensemble_to_onnx(
            std::slice::from_ref(&self.tree),
            &self.mean,
            &ModelMeta {
                family: "tree",
                task: self.task,
                classes: &self.classes,
                features: &self.feature_names,
                version,
                doc: "CART decision tree with mean imputation (ai.onnx.ml tree ensemble).",
            },
        )
    }

    /// The configuration plus what the fit produced (`n_nodes`, `n_leaves`,
    /// `depth`), for the model card.
    pub fn hyperparameters(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            if self.task == Task::Regression {
                map.insert("criterion".into(), "squared_error".into());
            }
            map.insert("n_nodes".into(), self.tree.nodes.len().into());
            map.insert("n_leaves".into(), self.tree.n_leaves().into());
            map.insert("depth".into(), self.tree.depth().into());
        }
        v
    }
}

/// Sums the trees' leaf values for each row of `x` after imputing `NaN` by
/// `mean`, in the order and precision of the ONNX tree-ensemble operators
/// with `f32` attributes: a classifier adds `p / n_trees` (each weight
/// rounded to `f32`) per class, tree by tree; a regressor adds the leaf
/// values and divides the sum by `n_trees` (`AVERAGE`). Output: `[n,
/// n_classes]` or `[n]`.
pub fn predict_ensemble(
    trees: &[DecisionTree],
    mean: &[f32],
    task: Task,
    n_classes: usize,
    x: &[f32],
) -> Vec<f32> {
    let nf = mean.len();
    let n_trees = trees.len() as f32;
    let mut row = vec![0f32; nf];
    let mut out = Vec::new();
    for raw in x.chunks_exact(nf) {
        for ((r, &v), &m) in row.iter_mut().zip(raw).zip(mean) {
            *r = if v.is_nan() { m } else { v };
        }
        match task {
            Task::Classification => {
                let start = out.len();
                out.resize(start + n_classes, 0f32);
                for tree in trees {
                    for (o, &p) in out[start..].iter_mut().zip(tree.leaf_value(&row)) {
                        *o += p / n_trees;
                    }
                }
            }
            Task::Regression => {
                let sum = trees
                    .iter()
                    .fold(0f32, |acc, t| acc + t.leaf_value(&row)[0]);
                out.push(sum / n_trees);
            }
        }
    }
    out
}

/// The training target as the grower reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Labels<'a> {
    Classes { y: &'a [usize], n_classes: usize },
    Values(&'a [f64]),
}

/// Checked, imputed training data shared by every tree of a fit.
pub(crate) struct TrainingData<'a> {
    pub n: usize,
    pub nf: usize,
    /// Imputed features, column-major `[n_features][n]`.
    pub cols: Vec<f32>,
    pub mean: Vec<f32>,
    pub labels: Labels<'a>,
    pub classes: Vec<String>,
}

impl<'a> TrainingData<'a> {
    /// Checks shapes and labels, fits the imputation mean and transposes.
    pub fn new(x: &[f32], target: &Target<'a>, nf: usize) -> Result<Self, TrainError> {
        check_shapes(x, target, nf)?;
        let n = target.len();
        let (labels, classes) = match *target {
            Target::Classes { y, classes } => {
                if classes.len() < 2 {
                    return Err(TrainError::TooFewClasses(classes.len()));
                }
                if let Some(index) = y.iter().position(|&c| c >= classes.len()) {
                    return Err(TrainError::BadTarget {
                        index,
                        value: y[index] as f64,
                    });
                }
                (
                    Labels::Classes {
                        y,
                        n_classes: classes.len(),
                    },
                    classes.to_vec(),
                )
            }
            Target::Values(v) => (Labels::Values(v), vec![]),
        };
        let mean = StandardScaler::fit(x, nf).mean;
        let mut cols = vec![0f32; n * nf];
        for (i, row) in x.chunks_exact(nf).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                // `+ 0.0` turns -0.0 into +0.0: equal values get equal keys.
                cols[j * n + i] = if v.is_nan() { mean[j] } else { v } + 0.0;
            }
        }
        Ok(Self {
            n,
            nf,
            cols,
            mean,
            labels,
            classes,
        })
    }
}

/// Stopping rules and the per-node feature budget, resolved to counts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrowParams {
    pub criterion: Criterion,
    pub max_depth: usize,
    pub min_samples_split: usize,
    pub min_samples_leaf: usize,
    /// Features drawn per node (all of them for a single tree).
    pub max_features: usize,
}

impl GrowParams {
    pub fn new(
        criterion: Criterion,
        max_depth: i64,
        min_samples_split: i64,
        min_samples_leaf: i64,
        max_features: usize,
    ) -> Self {
        Self {
            criterion,
            max_depth: if max_depth <= 0 {
                usize::MAX
            } else {
                max_depth as usize
            },
            min_samples_split: min_samples_split.max(2) as usize,
            min_samples_leaf: min_samples_leaf.max(1) as usize,
            max_features: max_features.max(1),
        }
    }
}

/// Grows one tree on the samples with a non-zero `weights` entry (bootstrap
/// counts in a forest, all 1 for a single tree); `None` when `stop` said so.
pub(crate) fn grow(
    data: &TrainingData<'_>,
    weights: &[u32],
    params: &GrowParams,
    rng: &mut Rng,
    stop: &dyn Fn() -> bool,
) -> Option<DecisionTree> {
    let n_classes = match data.labels {
        Labels::Classes { n_classes, .. } => n_classes,
        Labels::Values(_) => 0,
    };
    let mut g = Grower {
        data,
        weights,
        params,
        keys: Vec::with_capacity(data.n),
        features: (0..data.nf).collect(),
        total: vec![0.0; n_classes],
        left: vec![0.0; n_classes],
    };
    let mut samples: Vec<u32> = (0..data.n as u32)
        .filter(|&i| weights[i as usize] > 0)
        .collect();
    let mut nodes = vec![Node::Leaf { value: vec![] }];
    // (start, end, depth, node id)
    let mut stack = vec![(0usize, samples.len(), 0usize, 0usize)];
    while let Some((start, end, depth, id)) = stack.pop() {
        if stop() {
            return None;
        }
        let node = &mut samples[start..end];
        let (impurity, value) = g.node_stats(node);
        let m = node.len();
        let p = g.params;
        let leaf = depth >= p.max_depth
            || m < p.min_samples_split
            || m < 2 * p.min_samples_leaf
            || impurity <= f64::EPSILON;
        let split = if leaf { None } else { g.best_split(node, rng) };
        match split {
            None => nodes[id] = Node::Leaf { value },
            Some((feature, threshold)) => {
                let col = &data.cols[feature * data.n..(feature + 1) * data.n];
                let mut n_left = 0;
                for i in 0..m {
                    if col[node[i] as usize] <= threshold {
                        node.swap(i, n_left);
                        n_left += 1;
                    }
                }
                let (left, right) = (nodes.len(), nodes.len() + 1);
                nodes.push(Node::Leaf { value: vec![] });
                nodes.push(Node::Leaf { value: vec![] });
                nodes[id] = Node::Split {
                    feature: feature as u32,
                    threshold,
                    left: left as u32,
                    right: right as u32,
                };
                // Left first: pushed last.
                stack.push((start + n_left, end, depth + 1, right));
                stack.push((start, start + n_left, depth + 1, left));
            }
        }
    }
    Some(DecisionTree { nodes })
}

struct Grower<'g, 'a> {
    data: &'g TrainingData<'a>,
    weights: &'g [u32],
    params: &'g GrowParams,
    /// Sort buffer: order-preserving value bits << 32 | sample index.
    keys: Vec<u64>,
    /// Feature order, reshuffled (partially) at each node.
    features: Vec<usize>,
    /// Class weight sums of the node and of the left part of a split.
    total: Vec<f64>,
    left: Vec<f64>,
}

/// An order-preserving `u32` image of a finite `f32` (larger value, larger key).
fn order_key(v: f32) -> u32 {
    let bits = v.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

fn key_value(key: u64) -> f32 {
    let k = (key >> 32) as u32;
    f32::from_bits(if k & 0x8000_0000 != 0 {
        k & 0x7fff_ffff
    } else {
        !k
    })
}

/// `w·H` of a class-weight vector `c` with total `w`, in nats:
/// `w ln w − Σ c_k ln c_k`.
fn weighted_entropy(c: impl Iterator<Item = f64>, w: f64) -> f64 {
    let s: f64 = c.filter(|&v| v > 0.0).map(|v| v * v.ln()).sum();
    w * w.ln() - s
}

impl Grower<'_, '_> {
    /// Node impurity and leaf value; fills `self.total` (classifier).
    fn node_stats(&mut self, node: &[u32]) -> (f64, Vec<f32>) {
        match self.data.labels {
            Labels::Classes { y, .. } => {
                self.total.iter_mut().for_each(|t| *t = 0.0);
                for &s in node {
                    self.total[y[s as usize]] += f64::from(self.weights[s as usize]);
                }
                let w: f64 = self.total.iter().sum();
                let impurity = match self.params.criterion {
                    Criterion::Gini => {
                        1.0 - self.total.iter().map(|c| (c / w).powi(2)).sum::<f64>()
                    }
                    Criterion::Entropy => -self
                        .total
                        .iter()
                        .filter(|&&c| c > 0.0)
                        .map(|c| (c / w) * (c / w).log2())
                        .sum::<f64>(),
                };
                let value = self.total.iter().map(|c| (c / w) as f32).collect();
                (impurity, value)
            }
            Labels::Values(v) => {
                let (mut w, mut sum, mut sq) = (0.0, 0.0, 0.0);
                for &s in node {
                    let (wi, yi) = (f64::from(self.weights[s as usize]), v[s as usize]);
                    w += wi;
                    sum += wi * yi;
                    sq += wi * yi * yi;
                }
                let mean = sum / w;
                (sq / w - mean * mean, vec![mean as f32])
            }
        }
    }

    /// The best `(feature, threshold)` over up to `max_features` randomly
    /// ordered features (more when those drawn are constant in the node), or
    /// `None` when no split keeps `min_samples_leaf` samples on both sides.
    fn best_split(&mut self, node: &[u32], rng: &mut Rng) -> Option<(usize, f32)> {
        let nf = self.data.nf;
        let n = self.data.n;
        let min_leaf = self.params.min_samples_leaf;
        let m = node.len();
        let (mut visited, mut constant) = (0, 0);
        let mut best: Option<(f64, usize, f32, f32)> = None;
        // Regression totals (classification totals are in `self.total`).
        let (mut w_all, mut s_all) = (0.0, 0.0);
        if let Labels::Values(v) = self.data.labels {
            for &s in node {
                let wi = f64::from(self.weights[s as usize]);
                w_all += wi;
                s_all += wi * v[s as usize];
            }
        }
        let w_total: f64 = match self.data.labels {
            Labels::Classes { .. } => self.total.iter().sum(),
            Labels::Values(_) => w_all,
        };
        for i in 0..nf {
            if visited >= self.params.max_features && visited > constant {
                break;
            }
            let j = rng.usize(i..nf);
            self.features.swap(i, j);
            let f = self.features[i];
            visited += 1;
            let col = &self.data.cols[f * n..(f + 1) * n];
            self.keys.clear();
            self.keys.extend(
                node.iter()
                    .map(|&s| (u64::from(order_key(col[s as usize])) << 32) | u64::from(s)),
            );
            self.keys.sort_unstable();
            if self.keys[0] >> 32 == self.keys[m - 1] >> 32 {
                constant += 1;
                continue;
            }
            self.left.iter_mut().for_each(|l| *l = 0.0);
            let (mut w_left, mut s_left) = (0.0, 0.0);
            for p in 0..m - 1 {
                let s = self.keys[p] as u32 as usize;
                let wi = f64::from(self.weights[s]);
                w_left += wi;
                match self.data.labels {
                    Labels::Classes { y, .. } => self.left[y[s]] += wi,
                    Labels::Values(v) => s_left += wi * v[s],
                }
                if self.keys[p] >> 32 == self.keys[p + 1] >> 32 {
                    continue;
                }
                let (n_left, n_right) = (p + 1, m - p - 1);
                if n_left < min_leaf {
                    continue;
                }
                if n_right < min_leaf {
                    break;
                }
                let w_right = w_total - w_left;
                // Proxy of the impurity decrease (larger is better): minus the
                // weighted impurity of the children, up to terms constant in
                // the node.
                let proxy = match (self.data.labels, self.params.criterion) {
                    (Labels::Values(_), _) => {
                        let s_right = s_all - s_left;
                        s_left * s_left / w_left + s_right * s_right / w_right
                    }
                    (Labels::Classes { .. }, Criterion::Gini) => {
                        let (mut l2, mut r2) = (0.0, 0.0);
                        for (l, t) in self.left.iter().zip(&self.total) {
                            l2 += l * l;
                            r2 += (t - l) * (t - l);
                        }
                        l2 / w_left + r2 / w_right
                    }
                    (Labels::Classes { .. }, Criterion::Entropy) => {
                        -weighted_entropy(self.left.iter().copied(), w_left)
                            - weighted_entropy(
                                self.left.iter().zip(&self.total).map(|(l, t)| t - l),
                                w_right,
                            )
                    }
                };
                if best.is_none_or(|b| proxy > b.0) {
                    let (a, b) = (key_value(self.keys[p]), key_value(self.keys[p + 1]));
                    best = Some((proxy, f, a, b));
                }
            }
        }
        best.map(|(_, f, a, b)| (f, midpoint(a, b)))
    }
}

/// A threshold `t` with `a <= t < b` for `a < b`: the midpoint in `f32`, or
/// `a` when the midpoint rounds up to `b` (adjacent floats), as scikit-learn.
fn midpoint(a: f32, b: f32) -> f32 {
    let t = a / 2.0 + b / 2.0;
    if t >= b || t < a || !t.is_finite() {
        a
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn gini_split_by_hand() {
        // One feature, x = 1 2 3 4 5 6, classes a a a b a b.
        // Candidate thresholds (midpoints): 1.5 2.5 3.5 4.5 5.5. Weighted
        // child Gini n_L·g_L + n_R·g_R (g = 1 − Σp²):
        //   1.5: 0 + 5·(1 − (3/5)² − (2/5)²) = 5·0.48 = 2.4
        //   2.5: 0 + 4·(1 − 1/4 − 1/4)        = 2.0
        //   3.5: 0 + 3·(1 − 1/9 − 4/9)        = 4/3 ≈ 1.333
        //   4.5: 4·(1 − 9/16 − 1/16) + 2·(1 − 1/4 − 1/4) = 1.5 + 1.0 = 2.5
        //   5.5: 5·(1 − 16/25 − 1/25) + 0                 = 1.6
        // Best: 3.5. Left leaf: all a → [1, 0]. Right (4 5 6 = b a b) at
        // max_depth 1 is a leaf: [1/3, 2/3].
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let y = [0, 0, 0, 1, 0, 1];
        let classes = vec!["a".to_string(), "b".to_string()];
        let cfg = TreeConfig {
            max_depth: 1,
            ..TreeConfig::default()
        };
        let target = Target::Classes {
            y: &y,
            classes: &classes,
        };
        let m = TreeModel::fit(&x, &target, &names(1), &cfg, None, &|| false).unwrap();
        assert_eq!(
            m.tree.nodes,
            vec![
                Node::Split {
                    feature: 0,
                    threshold: 3.5,
                    left: 1,
                    right: 2
                },
                Node::Leaf {
                    value: vec![1.0, 0.0]
                },
                Node::Leaf {
                    value: vec![1.0 / 3.0, 2.0 / 3.0]
                },
            ]
        );
        // A missing value is imputed by the mean 3.5: 3.5 <= 3.5 goes left.
        assert_eq!(
            m.predict(&[f32::NAN, 6.0]),
            vec![1.0, 0.0, 1.0 / 3.0, 2.0 / 3.0]
        );
        // Entropy (bits), n_L·H_L + n_R·H_R: 1.5: 5·H(3/5) = 4.855; 2.5: 4·1 = 4;
        // 3.5: 3·H(1/3) = 2.755; 4.5: 4·H(1/4) + 2·1 = 5.245; 5.5: 5·H(1/5) =
        // 3.610. The same split, 3.5.
        let cfg = TreeConfig {
            criterion: Criterion::Entropy,
            ..cfg
        };
        let e = TreeModel::fit(&x, &target, &names(1), &cfg, None, &|| false).unwrap();
        assert_eq!(e.tree, m.tree);
    }

    #[test]
    fn mse_split_by_hand() {
        // Two features; feature 0 is constant (never split on), feature 1 is
        // x = 0 1 2 3 with targets 1 1 3 5. For each threshold the weighted
        // child sum of squared errors SSE_L + SSE_R:
        //   0.5: {1} | {1 3 5}: 0 + (4 + 0 + 4)   = 8
        //   1.5: {1 1} | {3 5}: 0 + (1 + 1)       = 2
        //   2.5: {1 1 3} | {5}: (4/9+4/9+16/9) + 0 = 8/3
        // Best: 1.5 → left mean 1. The right node {3, 5} splits again at 2.5
        // into leaves 3 and 5 (unlimited depth, min_samples_leaf 1).
        let x = [7.0, 0.0, 7.0, 1.0, 7.0, 2.0, 7.0, 3.0];
        let v = [1.0, 1.0, 3.0, 5.0];
        let cfg = TreeConfig {
            max_depth: 0,
            ..TreeConfig::default()
        };
        let m = TreeModel::fit(&x, &Target::Values(&v), &names(2), &cfg, None, &|| false).unwrap();
        let leaf = |v: f32| Node::Leaf { value: vec![v] };
        let split = |threshold, left, right| Node::Split {
            feature: 1,
            threshold,
            left,
            right,
        };
        assert_eq!(
            m.tree.nodes,
            vec![
                split(1.5, 1, 2),
                leaf(1.0),
                split(2.5, 3, 4),
                leaf(3.0),
                leaf(5.0)
            ]
        );
        // The missing value takes the mean 1.5: 1.5 <= 1.5 goes left.
        assert_eq!(m.predict(&[0.0, 2.2, 0.0, f32::NAN]), vec![3.0, 1.0]);
        assert_eq!(m.tree.depth(), 2);
    }

    #[test]
    fn thresholds_between_adjacent_floats_and_key_order() {
        // Adjacent floats a < b: the midpoint rounds to b, so the threshold is a.
        let a = 1.0f32;
        let b = f32::from_bits(a.to_bits() + 1);
        assert_eq!(midpoint(a, b), a);
        assert_eq!(midpoint(-1.0, 3.0), 1.0);
        let mut keys: Vec<u32> = [-2.5f32, -0.0, 0.0, 1e-30, 7.0, -1e30]
            .iter()
            .map(|&v| order_key(v + 0.0))
            .collect();
        keys.sort_unstable();
        let back: Vec<f32> = keys
            .iter()
            .map(|&k| key_value(u64::from(k) << 32))
            .collect();
        assert_eq!(back, vec![-1e30, -2.5, 0.0, 0.0, 1e-30, 7.0]);
    }

    #[test]
    fn validate_names_the_key() {
        let bad = |f: fn(&mut TreeConfig)| {
            let mut c = TreeConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.max_depth = -1).starts_with("max_depth: -1"));
        assert!(bad(|c| c.min_samples_leaf = 0).starts_with("min_samples_leaf: 0"));
        assert!(bad(|c| c.min_samples_split = 1).starts_with("min_samples_split: 1"));
        assert!(TreeConfig::default().validate().is_ok());
    }
}
