//! Online models as standard ONNX (issue 17): what the daemon snapshots and
//! serves ([`to_onnx`]), following [`crate::onnx::builder`]'s contract
//! (`features` `[N, n_features]` f32 → `probabilities` `[N, n_classes]` f32
//! and `label` `[N]` i64).
//!
//! * `online_logistic`: its own export ([`super::OnlineLogistic::to_onnx`]:
//!   running-mean imputation and scaling, `MatMul` + `Add`, `Softmax` or
//!   normalised one-vs-rest sigmoids), equal to the model's probabilities;
//! * `hoeffding_tree`, `hoeffding_adaptive_tree`, `arf`: one `ai.onnx.ml`
//!   `TreeEnsembleRegressor` (opset 3, `SUM`, `post_transform NONE`) over
//!   all the trees, then Gaussian naive Bayes in double, `ReduceSum` and
//!   `Div` normalise each row (as the learners normalise their votes),
//!   `ArgMax` gives `label`.
//!
//! **Every leaf predicts as in process.** A Hoeffding-tree leaf predicts by
//! naive Bayes over its per-class Gaussians when that has been at least as
//! accurate on the leaf's samples as the majority class, else by its class
//! distribution ("naive Bayes adaptive", River 0.26.1's
//! `LeafNaiveBayesAdaptive`, `river/tree/nodes/htc_nodes.py`); the choice is
//! the one the leaf holds at snapshot time.
//!
//! * A class-distribution leaf adds its normalised class weights (River's
//!   `normalize_values_in_dict`), times its scale (below), to regressor
//!   targets `0..k`.
//! * A naive-Bayes leaf writes its number `m` (from 1) to target `k + j`,
//!   `j` its tree's rank among the trees holding such leaves. The graph
//!   gathers the leaf's tables by `m` and computes River's
//!   `do_naive_bayes_prediction` (`river/tree/utils.py`) as the learner
//!   does, in f64: per class of the leaf, `ln(w_c / w)` plus, per feature
//!   present in the row (`NaN`: skipped) whose Gaussian at the leaf has two
//!   samples or more and a variance above 0, `proba.Gaussian`'s log density
//!   `−(x − μ)² / 2σ² − ½ ln 2π − ½ ln σ²`; a class of weight 0 a log vote of
//!   0; normalised by log-sum-exp (a class the leaf has not seen gets 0).
//!   See `naive_bayes_nodes` for the operators (`Slice`, `Cast`, `IsNaN`,
//!   `Where`, `Reshape`, `Gather`, `Sub`, `Mul`, `Div`, `ReduceSum`,
//!   `ReduceMax`, `Exp`, `Log`, `Add`; all run on tract and onnxruntime).
//!
//! The trees and scales:
//!
//! * `hoeffding_tree`: the leaf the sample reaches, scale 1;
//! * `hoeffding_adaptive_tree`: the sum over the leaves River's
//!   `_found_leaves` collects (the main path's leaf and, at every branch on
//!   it holding an alternate subtree, that subtree's leaves), each leaf's
//!   prediction divided by `Σ prediction · error²` of the leaf's running
//!   error as River's `AdaLeafClassifier.prediction` does, normalised. Each
//!   alternate subtree is its own tree in the ensemble, behind a copy of the
//!   path that leads to its branch (the other side of each step a leaf of no
//!   weight);
//! * `arf`: each member's prediction weighted by the member's accuracy so
//!   far (or 1 while it is 0), normalised: River's `ARFClassifier` vote;
//!   background trees do not vote.
//!
//! So the graph's probabilities are the learner's `predict_proba_one`
//! within f32 rounding (tests: 1e-5 on SEA, RandomRBFDrift and gas, missing
//! values included, tract and onnxruntime). [`leaf_proba`] computes the
//! graph's function in process (f64). A sample missing a split feature
//! (`NaN`) follows the heavier branch, as in the learners, through
//! `nodes_missing_value_tracks_true`; thresholds are the largest `f32` not
//! above the learner's `f64` threshold, so `f32` inputs take the same branch
//! as in the learner. With at most one class (`n_classes() <= 1`: the
//! daemon numbers classes in order of appearance), the graph answers that
//! class (probability 1) whatever the input, for every family: the cold
//! start a daemon flags as `constant`.

use tract_onnx::pb;

use super::{OnlineClassifier, OnlineModel};
use crate::ingest::decode::Task;
use crate::onnx::builder::{self as b, ModelMeta, ML_DOMAIN, OUTPUT_PROBABILITIES};
use tract_onnx::pb::tensor_proto::DataType;

/// Prequential record (test then train: each sample predicted before it
/// is learned) over some labelled samples: accuracy for a classifier, mean
/// absolute error for a regressor.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prequential {
    /// Samples predicted then learned.
    pub scored: u64,
    /// Share predicted right (`None` before any, and for a regressor).
    pub accuracy: Option<f64>,
    /// A regressor's mean absolute error `mean |y − ŷ|`, in the label's
    /// units (absent for a classifier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mae: Option<f64>,
}

/// What the card of an online snapshot says ([`crate::learn::card::ModelCard::online`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotCard {
    /// The online family (`online_logistic`, `hoeffding_tree`,
    /// `hoeffding_adaptive_tree`, `arf`).
    pub family: String,
    /// Labelled samples the learner has learned.
    pub labels_learned: u64,
    /// With one class learned so far, the snapshot answers it whatever the
    /// input (cold start); predictions say `constant: true`.
    pub constant: bool,
    /// The learner's own prediction record (in process; the snapshot's graph
    /// predicts the same, naive-Bayes-adaptive leaves included) over the last `window` samples and since the
    /// start (since the daemon started learning: a restart relearns the
    /// stored samples and recounts).
    pub window: usize,
    pub recent: Prequential,
    pub since_start: Prequential,
    /// The batch champion's record over the same recent samples, when one
    /// predicted them.
    #[serde(default)]
    pub batch_recent: Option<Prequential>,
    /// Why this snapshot was taken (`first label`, `new class`, `every N
    /// labels`, `every N s`, `serves now`).
    pub reason: String,
}

/// Whether `card` is an online snapshot with one class learned
/// (`hyperparameters.online.constant`, [`SnapshotCard::constant`]).
pub fn is_constant(card: &crate::learn::card::ModelCard) -> bool {
    card.hyperparameters
        .get("online")
        .and_then(|o| o.get("constant"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false)
}

/// What the export needs of a learner's leaf
/// (`hoeffding_tree::Leaf::export_parts`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeafParts {
    /// Class weights, classes in order of appearance.
    pub(crate) stats: Vec<(usize, f64)>,
    /// The leaf predicts by naive Bayes (its naive-Bayes hits so far at least
    /// its majority-class hits), else by its class distribution.
    pub(crate) naive_bayes: bool,
    /// `(feature, class, mean, variance)` of every Gaussian whose log
    /// density naive Bayes adds (two samples or more, variance above 0), in
    /// the order the learner adds them.
    pub(crate) gaussians: Vec<(usize, usize, f64, f64)>,
}

/// A naive-Bayes leaf: River's `do_naive_bayes_prediction` over the leaf's
/// statistics, times `scale`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NaiveBayesLeaf {
    /// Class weights (not empty, sum above 0).
    pub(crate) stats: Vec<(usize, f64)>,
    /// See [`LeafParts::gaussians`].
    pub(crate) gaussians: Vec<(usize, usize, f64, f64)>,
    /// What the leaf's probabilities are multiplied by in the vote.
    pub(crate) scale: f64,
}

/// `0.5 ln(2π)`, as `proba.Gaussian` computes it.
fn half_log_tau() -> f64 {
    0.5 * std::f64::consts::TAU.ln()
}

impl NaiveBayesLeaf {
    /// The leaf's vote for `x`: the learner's naive Bayes (log prior plus
    /// each present feature's Gaussian log density, normalised by
    /// log-sum-exp; a class of zero weight a log vote of 0) times `scale`.
    fn add_votes(&self, x: &[f64], votes: &mut [f64]) {
        let mut total = 0.0;
        for (_, w) in &self.stats {
            total += w;
        }
        let mut lj: Vec<f64> = Vec::with_capacity(self.stats.len());
        for (c, cw) in &self.stats {
            if *cw <= 0.0 {
                lj.push(0.0);
                continue;
            }
            let mut v = (cw / total).ln();
            for (f, gc, mean, variance) in &self.gaussians {
                let xf = x[*f];
                if gc != c || xf.is_nan() {
                    continue;
                }
                let d = xf - mean;
                let lp = d * d / (-2.0 * variance) - half_log_tau() - 0.5 * variance.ln();
                if lp > f64::NEG_INFINITY {
                    v += lp;
                }
            }
            lj.push(v);
        }
        let max_ll = lj.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut s = 0.0;
        for v in &lj {
            s += (v - max_ll).exp();
        }
        let lse = max_ll + s.ln();
        for ((c, _), v) in self.stats.iter().zip(lj) {
            votes[*c] += (v - lse).exp() * self.scale;
        }
    }
}

/// One node of an exported tree; children index the tree's `nodes`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExportNode {
    /// `x[feature] <= threshold` goes to `children[0]`; a missing value to
    /// `children[0]` when `nan_left`, else `children[1]`.
    Split {
        feature: usize,
        threshold: f64,
        nan_left: bool,
        children: [usize; 2],
    },
    /// Class weights the leaf adds to the vote (none: a leaf of no weight).
    Leaf { weights: Vec<(usize, f64)> },
    /// A leaf predicting by naive Bayes.
    NaiveBayes(Box<NaiveBayesLeaf>),
}

/// A tree of the exported ensemble; node 0 is the root.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ExportTree {
    pub(crate) nodes: Vec<ExportNode>,
}

impl ExportTree {
    /// Adds a leaf; returns its index.
    pub(crate) fn leaf(&mut self, weights: Vec<(usize, f64)>) -> usize {
        self.nodes.push(ExportNode::Leaf { weights });
        self.nodes.len() - 1
    }

    /// Adds a learner's leaf predicting as it does in process, its
    /// probabilities times `weight`; `hat_error`: the running error of a
    /// Hoeffding adaptive tree's leaf, which divides them by
    /// `Σ probabilities · error²` (River's `AdaLeafClassifier.prediction`;
    /// unscaled when that is 0). A leaf without statistics adds nothing.
    /// Returns its index.
    pub(crate) fn learner_leaf(
        &mut self,
        parts: LeafParts,
        hat_error: Option<f64>,
        weight: f64,
    ) -> usize {
        let total: f64 = parts.stats.iter().map(|(_, w)| w).sum();
        let scaled = |sum: f64| match hat_error {
            Some(e) => {
                let factor = sum * e * e;
                if factor == 0.0 || factor.is_nan() {
                    weight
                } else {
                    weight * (1.0 / factor)
                }
            }
            None => weight,
        };
        if parts.stats.is_empty() {
            return self.leaf(Vec::new());
        }
        if !parts.naive_bayes {
            // River's `normalize_values_in_dict` (unchanged when the sum is
            // 0 or NaN).
            let dist: Vec<(usize, f64)> = if total == 0.0 || total.is_nan() {
                parts.stats
            } else {
                let inv = 1.0 / total;
                parts.stats.iter().map(|(c, v)| (*c, v * inv)).collect()
            };
            let scale = scaled(dist.iter().map(|(_, p)| p).sum());
            return self.leaf(dist.into_iter().map(|(c, p)| (c, p * scale)).collect());
        }
        if total == 0.0 {
            return self.leaf(Vec::new());
        }
        self.nodes
            .push(ExportNode::NaiveBayes(Box::new(NaiveBayesLeaf {
                stats: parts.stats,
                gaussians: parts.gaussians,
                scale: scaled(1.0),
            })));
        self.nodes.len() - 1
    }

    /// Adds a split whose children are set later ([`ExportTree::children`]).
    pub(crate) fn split(&mut self, feature: usize, threshold: f64, nan_left: bool) -> usize {
        self.nodes.push(ExportNode::Split {
            feature,
            threshold,
            nan_left,
            children: [0, 0],
        });
        self.nodes.len() - 1
    }

    /// Sets the children of split `at`.
    pub(crate) fn children(&mut self, at: usize, kids: [usize; 2]) {
        if let ExportNode::Split { children, .. } = &mut self.nodes[at] {
            *children = kids;
        }
    }

    /// Adds the vote of the leaf `x` reaches to `votes` (`[n_classes]`).
    fn add_votes(&self, x: &[f64], votes: &mut [f64]) {
        let mut i = 0;
        while i < self.nodes.len() {
            match &self.nodes[i] {
                ExportNode::Split {
                    feature,
                    threshold,
                    nan_left,
                    children,
                } => {
                    let v = x[*feature];
                    let left = if v.is_nan() {
                        *nan_left
                    } else {
                        v <= *threshold
                    };
                    i = children[usize::from(!left)];
                }
                ExportNode::Leaf { weights } => {
                    for (c, w) in weights {
                        votes[*c] += w;
                    }
                    return;
                }
                ExportNode::NaiveBayes(nb) => {
                    nb.add_votes(x, votes);
                    return;
                }
            }
        }
    }
}

/// A path step towards an alternate subtree: a split and the side taken.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathStep {
    pub(crate) feature: usize,
    pub(crate) threshold: f64,
    pub(crate) nan_left: bool,
    /// 0: `x <= threshold`; 1: above.
    pub(crate) side: usize,
}

/// A tree holding `path` (each step's other side a leaf of no weight) whose
/// last step leads to the node `build` adds; `build` returns that node's
/// index.
pub(crate) fn behind_path(
    path: &[PathStep],
    build: impl FnOnce(&mut ExportTree) -> usize,
) -> ExportTree {
    let mut t = ExportTree::default();
    let mut parent: Option<(usize, usize)> = None;
    let mut splits = Vec::with_capacity(path.len());
    for s in path {
        let at = t.split(s.feature, s.threshold, s.nan_left);
        let empty = t.leaf(Vec::new());
        splits.push((at, s.side, empty));
        if let Some((p, side)) = parent {
            link(&mut t, p, side, at);
        }
        parent = Some((at, s.side));
    }
    let root = build(&mut t);
    match parent {
        Some((p, side)) => link(&mut t, p, side, root),
        None => debug_assert_eq!(root, 0),
    }
    for (at, side, empty) in splits {
        if let ExportNode::Split { children, .. } = &mut t.nodes[at] {
            children[1 - side] = empty;
        }
    }
    t
}

fn link(t: &mut ExportTree, parent: usize, side: usize, child: usize) {
    if let ExportNode::Split { children, .. } = &mut t.nodes[parent] {
        children[side] = child;
    }
}

/// The trees of a tree-based online model (empty for `online_logistic` and
/// before any sample).
fn trees(model: &OnlineModel) -> Vec<ExportTree> {
    match model {
        OnlineModel::Logistic(_) => Vec::new(),
        OnlineModel::HoeffdingTree(m) => m.export_tree(1.0).into_iter().collect(),
        OnlineModel::HoeffdingAdaptiveTree(m) => m.export_trees(),
        OnlineModel::Arf(m) => m.export_trees(),
    }
}

/// What the exported graph computes for `x` (`[n_features]`, `NaN` =
/// missing), in f64: class probabilities `[n_classes]`, see the module's
/// documentation. `online_logistic`: its own probabilities.
///
/// # Errors
/// [`super::OnlineError::Width`] when `x` is not `n_features` long.
pub fn leaf_proba(model: &OnlineModel, x: &[f64]) -> Result<Vec<f64>, super::OnlineError> {
    super::check_width(model.n_features(), x)?;
    let k = model.n_classes();
    if k <= 1 {
        return Ok(vec![1.0; k]);
    }
    if matches!(model, OnlineModel::Logistic(_)) {
        return model.predict_proba_one(x);
    }
    let mut votes = vec![0.0; k];
    for t in trees(model) {
        t.add_votes(x, &mut votes);
    }
    let total: f64 = votes.iter().sum();
    if total > 0.0 {
        for v in votes.iter_mut() {
            *v /= total;
        }
    }
    Ok(votes)
}

/// The largest `f32` not above `t`: `x <= t` ⇔ `x <= below(t)` for every
/// `f32` `x`.
fn f32_at_most(t: f64) -> f32 {
    let f = t as f32;
    if f64::from(f) > t {
        f.next_down()
    } else {
        f
    }
}

/// `model` as an ONNX model (see the module's documentation): `features`
/// names its `[n_features]` inputs, `classes` its class indices (at least
/// [`OnlineClassifier::n_classes`] of them; the graph's width), `version` is
/// the ONNX `model_version`.
pub fn to_onnx(
    model: &OnlineModel,
    features: &[String],
    classes: &[String],
    version: u32,
) -> Vec<u8> {
    let family = match model {
        OnlineModel::Logistic(m) if model.n_classes() > 1 => {
            return m.to_onnx(features, classes, version)
        }
        OnlineModel::Logistic(_) => "online_logistic",
        OnlineModel::HoeffdingTree(_) => "hoeffding_tree",
        OnlineModel::HoeffdingAdaptiveTree(_) => "hoeffding_adaptive_tree",
        OnlineModel::Arf(_) => "arf",
    };
    let k = classes.len().max(model.n_classes());
    let meta = ModelMeta {
        family,
        task: Task::Classification,
        classes,
        features,
        version,
        doc: "",
    };
    if model.n_classes() <= 1 {
        return constant_onnx(features.len(), k, model.n_classes().checked_sub(1), &meta);
    }
    let trees = trees(model);
    let nf = features.len();
    // Naive-Bayes leaves: numbered from 1 over the whole ensemble (row 0 of
    // their tables is a leaf of no weight); each tree holding one gets a
    // regressor target `k + j` its leaves write their number to.
    let mut nb_leaves: Vec<&NaiveBayesLeaf> = Vec::new();
    let mut nb_target: Vec<Option<usize>> = Vec::with_capacity(trees.len());
    let mut n_nb_trees = 0;
    for tree in &trees {
        if tree
            .nodes
            .iter()
            .any(|n| matches!(n, ExportNode::NaiveBayes(_)))
        {
            nb_target.push(Some(k + n_nb_trees));
            n_nb_trees += 1;
        } else {
            nb_target.push(None);
        }
    }
    let (mut tree_ids, mut node_ids, mut feature_ids) = (vec![], vec![], vec![]);
    let (mut modes, mut values, mut true_ids, mut false_ids) = (vec![], vec![], vec![], vec![]);
    let mut missing = vec![];
    let (mut w_tree, mut w_node, mut w_id, mut w_value) = (vec![], vec![], vec![], vec![]);
    for (t, tree) in trees.iter().enumerate() {
        for (i, node) in tree.nodes.iter().enumerate() {
            tree_ids.push(t as i64);
            node_ids.push(i as i64);
            let leaf_weights: Vec<(usize, f32)> = match node {
                ExportNode::Split {
                    feature,
                    threshold,
                    nan_left,
                    children,
                } => {
                    feature_ids.push(*feature as i64);
                    modes.push("BRANCH_LEQ");
                    values.push(f32_at_most(*threshold));
                    true_ids.push(children[0] as i64);
                    false_ids.push(children[1] as i64);
                    missing.push(i64::from(*nan_left));
                    continue;
                }
                ExportNode::Leaf { weights } => {
                    let mut per_class = vec![0.0f64; k];
                    for (c, w) in weights {
                        per_class[*c] += w;
                    }
                    per_class
                        .into_iter()
                        .enumerate()
                        .filter(|(_, w)| *w != 0.0)
                        .map(|(c, w)| (c, w as f32))
                        .collect()
                }
                ExportNode::NaiveBayes(nb) => {
                    nb_leaves.push(nb);
                    let target = nb_target[t].unwrap_or(k);
                    vec![(target, nb_leaves.len() as f32)]
                }
            };
            feature_ids.push(0);
            modes.push("LEAF");
            values.push(0.0);
            true_ids.push(0);
            false_ids.push(0);
            missing.push(0);
            for (target, w) in leaf_weights {
                w_tree.push(t as i64);
                w_node.push(i as i64);
                w_id.push(target as i64);
                w_value.push(w);
            }
        }
    }
    let attrs = vec![
        b::attr_ints("nodes_treeids", tree_ids),
        b::attr_ints("nodes_nodeids", node_ids),
        b::attr_ints("nodes_featureids", feature_ids),
        b::attr_strings("nodes_modes", &modes),
        b::attr_floats("nodes_values", values),
        b::attr_ints("nodes_truenodeids", true_ids),
        b::attr_ints("nodes_falsenodeids", false_ids),
        b::attr_ints("nodes_missing_value_tracks_true", missing),
        b::attr_string("post_transform", "NONE"),
        b::attr_string("aggregate_function", "SUM"),
        b::attr_int("n_targets", (k + n_nb_trees) as i64),
        b::attr_ints("target_treeids", w_tree),
        b::attr_ints("target_nodeids", w_node),
        b::attr_ints("target_ids", w_id),
        b::attr_floats("target_weights", w_value),
    ];
    let mut nodes = vec![b::node_multi(
        "TreeEnsembleRegressor",
        ML_DOMAIN,
        &[b::INPUT],
        &["tree_out"],
        attrs,
    )];
    let mut initializer = vec![
        b::tensor_i64("sum_axes", &[1], &[1]),
        tensor_f64("tiny", &[1], &[1e-300]),
    ];
    if n_nb_trees == 0 {
        nodes.push(cast("tree_out", "votes", DataType::Double));
    } else {
        naive_bayes_nodes(&nb_leaves, k, nf, n_nb_trees, &mut nodes, &mut initializer);
    }
    nodes.extend([
        b::node(
            "ReduceSum",
            &["votes", "sum_axes"],
            "votes_sum",
            vec![b::attr_int("keepdims", 1)],
        ),
        b::node("Max", &["votes_sum", "tiny"], "votes_total", vec![]),
        b::node("Div", &["votes", "votes_total"], "proba64", vec![]),
        cast("proba64", OUTPUT_PROBABILITIES, DataType::Float),
        b::label_node(),
    ]);
    let doc = format!(
        "Online {family} snapshot: {} tree(s) as TreeEnsembleRegressor (class-distribution leaves add their weights; {} naive-Bayes leaves, Gaussian naive Bayes in double), votes normalised per row.",
        trees.len(),
        nb_leaves.len(),
    );
    let graph = pb::GraphProto {
        name: format!("edgeloop_{family}"),
        node: nodes,
        initializer,
        input: vec![b::input_info(nf)],
        output: b::classifier_outputs(k),
        ..Default::default()
    };
    b::model_bytes(graph, &ModelMeta { doc: &doc, ..meta })
}

/// A `Cast` of `input` to `to`.
fn cast(input: &str, output: &str, to: DataType) -> pb::NodeProto {
    b::node("Cast", &[input], output, vec![b::attr_int("to", to as i64)])
}

/// An f64 initializer of shape `dims`.
fn tensor_f64(name: &str, dims: &[i64], data: &[f64]) -> pb::TensorProto {
    debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Double as i32,
        double_data: data.to_vec(),
        ..Default::default()
    }
}

/// What the export writes for a class absent from a naive-Bayes leaf: a
/// log vote whose `exp` (after subtracting the row's log-sum-exp) is 0.
const ABSENT: f64 = -1e300;

/// The graph's naive-Bayes part, in double, from `tree_out` (`[N, k + J]`:
/// the class-distribution votes, then per tree `j` the number of the
/// naive-Bayes leaf `x` reaches, 0 for none) to `votes` (`[N, k]` f64):
///
/// * `leaf = Cast(Slice(tree_out, k..k+J), int64)`, `[N, J]`;
/// * per (leaf, class, feature) tables `[M+1, k, F]` gathered by `leaf`:
///   `mean`, `neg2var` (−2σ²), `half_log_var` (½ ln σ²), `valid` (1 where the
///   learner adds that Gaussian's log density); per (leaf, class) `prior`
///   (`ln(w_c / w)`, 0 for a class of weight 0, [`ABSENT`] for a class the
///   leaf has not seen); per leaf `scale`;
/// * `lp = ((x − mean)² / neg2var − ½ ln 2π − half_log_var) · valid ·
///   present` (`x` with missing values set to 0, `present` 0 where missing),
///   summed over features, plus `prior`: the log joint `[N, J, k]`;
/// * `exp(lj − (max + ln Σ exp(lj − max)))` · `scale`, summed over `J`,
///   plus the class-distribution votes.
fn naive_bayes_nodes(
    leaves: &[&NaiveBayesLeaf],
    k: usize,
    nf: usize,
    n_trees: usize,
    nodes: &mut Vec<pb::NodeProto>,
    init: &mut Vec<pb::TensorProto>,
) {
    let m = leaves.len() + 1;
    let (mut mean, mut neg2var) = (vec![0.0; m * k * nf], vec![-1.0; m * k * nf]);
    let (mut half_log_var, mut valid) = (vec![0.0; m * k * nf], vec![0.0; m * k * nf]);
    let (mut prior, mut scale) = (vec![ABSENT; m * k], vec![0.0; m]);
    for (i, leaf) in leaves.iter().enumerate() {
        let row = i + 1;
        scale[row] = leaf.scale;
        let total: f64 = leaf.stats.iter().map(|(_, w)| w).sum();
        for (c, cw) in &leaf.stats {
            prior[row * k + c] = if *cw <= 0.0 { 0.0 } else { (cw / total).ln() };
            if *cw <= 0.0 {
                continue;
            }
            for (f, gc, mu, var) in &leaf.gaussians {
                if gc != c {
                    continue;
                }
                let at = (row * k + c) * nf + f;
                mean[at] = *mu;
                neg2var[at] = -2.0 * var;
                half_log_var[at] = 0.5 * var.ln();
                valid[at] = 1.0;
            }
        }
    }
    let (m, k64, nf64, j64) = (m as i64, k as i64, nf as i64, n_trees as i64);
    init.extend([
        b::tensor_i64("cls_start", &[1], &[0]),
        b::tensor_i64("cls_end", &[1], &[k64]),
        b::tensor_i64("nb_end", &[1], &[k64 + j64]),
        b::tensor_i64("axis1", &[1], &[1]),
        b::tensor_i64("axis3", &[1], &[3]),
        b::tensor_i64("x_shape", &[4], &[-1, 1, 1, nf64]),
        tensor_f64("zero64", &[1], &[0.0]),
        tensor_f64("one64", &[1], &[1.0]),
        tensor_f64("half_log_tau", &[1], &[half_log_tau()]),
        tensor_f64("nb_mean", &[m, k64, nf64], &mean),
        tensor_f64("nb_neg2var", &[m, k64, nf64], &neg2var),
        tensor_f64("nb_half_log_var", &[m, k64, nf64], &half_log_var),
        tensor_f64("nb_valid", &[m, k64, nf64], &valid),
        tensor_f64("nb_prior", &[m, k64], &prior),
        tensor_f64("nb_scale", &[m, 1], &scale),
    ]);
    let n = |op: &str, inputs: &[&str], out: &str| b::node(op, inputs, out, vec![]);
    let keep = |v: i64| vec![b::attr_int("keepdims", v)];
    nodes.extend([
        n(
            "Slice",
            &["tree_out", "cls_start", "cls_end", "axis1"],
            "cls_votes",
        ),
        n(
            "Slice",
            &["tree_out", "cls_end", "nb_end", "axis1"],
            "nb_leaf_f",
        ),
        cast("nb_leaf_f", "nb_leaf", DataType::Int64),
        n("IsNaN", &[b::INPUT], "x_missing"),
        cast(b::INPUT, "x64", DataType::Double),
        n("Where", &["x_missing", "zero64", "x64"], "x_filled"),
        n("Where", &["x_missing", "zero64", "one64"], "x_present"),
        n("Reshape", &["x_filled", "x_shape"], "x4"),
        n("Reshape", &["x_present", "x_shape"], "present4"),
        n("Gather", &["nb_mean", "nb_leaf"], "g_mean"),
        n("Gather", &["nb_neg2var", "nb_leaf"], "g_neg2var"),
        n("Gather", &["nb_half_log_var", "nb_leaf"], "g_half_log_var"),
        n("Gather", &["nb_valid", "nb_leaf"], "g_valid"),
        n("Gather", &["nb_prior", "nb_leaf"], "g_prior"),
        n("Gather", &["nb_scale", "nb_leaf"], "g_scale"),
        n("Sub", &["x4", "g_mean"], "nb_d"),
        n("Mul", &["nb_d", "nb_d"], "nb_d2"),
        n("Div", &["nb_d2", "g_neg2var"], "nb_q"),
        n("Sub", &["nb_q", "half_log_tau"], "nb_q1"),
        n("Sub", &["nb_q1", "g_half_log_var"], "nb_lp"),
        n("Mul", &["nb_lp", "g_valid"], "nb_lp_valid"),
        n("Mul", &["nb_lp_valid", "present4"], "nb_lp_present"),
        b::node("ReduceSum", &["nb_lp_present", "axis3"], "nb_ll", keep(0)),
        n("Add", &["nb_ll", "g_prior"], "nb_lj"),
        b::node(
            "ReduceMax",
            &["nb_lj"],
            "nb_max",
            vec![b::attr_ints("axes", vec![2]), b::attr_int("keepdims", 1)],
        ),
        n("Sub", &["nb_lj", "nb_max"], "nb_shift"),
        n("Exp", &["nb_shift"], "nb_e"),
        b::node("ReduceSum", &["nb_e", "axis2"], "nb_s", keep(1)),
        n("Log", &["nb_s"], "nb_log_s"),
        n("Add", &["nb_max", "nb_log_s"], "nb_lse"),
        n("Sub", &["nb_lj", "nb_lse"], "nb_log_p"),
        n("Exp", &["nb_log_p"], "nb_p"),
        n("Mul", &["nb_p", "g_scale"], "nb_vote"),
        b::node("ReduceSum", &["nb_vote", "axis1"], "nb_votes", keep(0)),
        cast("cls_votes", "cls_votes64", DataType::Double),
        n("Add", &["cls_votes64", "nb_votes"], "votes"),
    ]);
    init.push(b::tensor_i64("axis2", &[1], &[2]));
}

/// A graph answering `class` with probability 1 for every row (`None`:
/// every class alike): missing values set to 0, `MatMul` by zeros, `Add` of
/// the one-hot row.
fn constant_onnx(nf: usize, k: usize, class: Option<usize>, meta: &ModelMeta<'_>) -> Vec<u8> {
    let k = k.max(1);
    let row: Vec<f32> = (0..k)
        .map(|c| match class {
            Some(only) => f32::from(u8::from(c == only)),
            None => 1.0 / k as f32,
        })
        .collect();
    let nodes = vec![
        b::node("IsNaN", &[b::INPUT], "is_missing", vec![]),
        b::node("Where", &["is_missing", "zero", b::INPUT], "filled", vec![]),
        b::node("MatMul", &["filled", "weights"], "matmul", vec![]),
        b::node("Add", &["matmul", "constant"], OUTPUT_PROBABILITIES, vec![]),
        b::label_node(),
    ];
    let graph = pb::GraphProto {
        name: format!("edgeloop_{}_constant", meta.family),
        node: nodes,
        initializer: vec![
            b::tensor_f32("zero", &[1], &[0.0]),
            b::tensor_f32("weights", &[nf as i64, k as i64], &vec![0.0; nf * k]),
            b::tensor_f32("constant", &[k as i64], &row),
        ],
        input: vec![b::input_info(nf)],
        output: b::classifier_outputs(k),
        ..Default::default()
    };
    b::model_bytes(
        graph,
        &ModelMeta {
            doc: "Online model with one class learned so far: that class, whatever the input.",
            ..meta.clone()
        },
    )
}

/// One leaf of an exported regression tree: `prediction = w·x + b` over the
/// scaled features (`w` = 0 and `b` = the target mean for a leaf answering
/// its mean).
struct RegressionLeaf {
    weights: Vec<f64>,
    intercept: f64,
}

/// Appends `tree` (nodes from 0, children indexed within the tree) to the
/// ensemble's attribute lists; its leaves get targets from `leaves.len()`.
fn regression_tree(
    tree: &super::HoeffdingTreeRegressor,
    t: usize,
    attrs: &mut TreeAttrs,
    leaves: &mut Vec<RegressionLeaf>,
) {
    use super::hoeffding_tree_regressor::Node;
    let nf = super::OnlineRegressor::n_features(tree);
    if tree.nodes.is_empty() {
        // River's empty tree answers 0.
        attrs.leaf(t, 0, leaves.len());
        leaves.push(RegressionLeaf {
            weights: vec![0.0; nf],
            intercept: 0.0,
        });
        return;
    }
    // The learner's arena in preorder, renumbered from 0.
    let mut order = Vec::with_capacity(tree.nodes.len());
    let mut stack = vec![0usize];
    while let Some(i) = stack.pop() {
        order.push(i);
        if let Node::Branch { children, .. } = &tree.nodes[i] {
            stack.push(children[1]);
            stack.push(children[0]);
        }
    }
    let mut id = vec![0usize; tree.nodes.len()];
    for (k, &i) in order.iter().enumerate() {
        id[i] = k;
    }
    for &i in &order {
        match &tree.nodes[i] {
            Node::Branch {
                feature,
                threshold,
                children,
            } => {
                let nan_left = tree.heavier(*children) == children[0];
                attrs.split(
                    t,
                    id[i],
                    *feature,
                    *threshold,
                    [id[children[0]], id[children[1]]],
                    nan_left,
                );
            }
            Node::Leaf(l) => {
                attrs.leaf(t, id[i], leaves.len());
                leaves.push(if l.predicts_mean() {
                    RegressionLeaf {
                        weights: vec![0.0; nf],
                        intercept: l.stats.mean,
                    }
                } else {
                    RegressionLeaf {
                        weights: l.model.weights.clone(),
                        intercept: l.model.intercept,
                    }
                });
            }
        }
    }
}

/// The attributes of a `TreeEnsembleRegressor` whose every leaf writes 1 to
/// its own target (leaf membership).
#[derive(Default)]
struct TreeAttrs {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    feature_ids: Vec<i64>,
    modes: Vec<&'static str>,
    values: Vec<f32>,
    true_ids: Vec<i64>,
    false_ids: Vec<i64>,
    missing: Vec<i64>,
    w_tree: Vec<i64>,
    w_node: Vec<i64>,
    w_id: Vec<i64>,
}

impl TreeAttrs {
    fn split(
        &mut self,
        t: usize,
        node: usize,
        feature: usize,
        threshold: f64,
        children: [usize; 2],
        nan_left: bool,
    ) {
        self.tree_ids.push(t as i64);
        self.node_ids.push(node as i64);
        self.feature_ids.push(feature as i64);
        self.modes.push("BRANCH_LEQ");
        self.values.push(f32_at_most(threshold));
        self.true_ids.push(children[0] as i64);
        self.false_ids.push(children[1] as i64);
        self.missing.push(i64::from(nan_left));
    }

    fn leaf(&mut self, t: usize, node: usize, target: usize) {
        self.tree_ids.push(t as i64);
        self.node_ids.push(node as i64);
        self.feature_ids.push(0);
        self.modes.push("LEAF");
        self.values.push(0.0);
        self.true_ids.push(0);
        self.false_ids.push(0);
        self.missing.push(0);
        self.w_tree.push(t as i64);
        self.w_node.push(node as i64);
        self.w_id.push(target as i64);
    }
}

/// An online regression model ([`super::OnlineRegression`]) as an ONNX
/// regressor: `features` `[N, n_features]` f32 → `prediction` `[N, 1]` f32.
///
/// In double: the online standard scaler (`(x − mean) / sqrt(var)`, 0 where
/// the variance is 0, `NaN` kept); then one `ai.onnx.ml`
/// `TreeEnsembleRegressor` (on the scaled features cast to f32; thresholds
/// the largest `f32` not above the learner's; a missing value follows the
/// heavier branch through `nodes_missing_value_tracks_true`) whose every
/// leaf writes 1 to its own target: the leaf membership `[N, L]`; each
/// leaf's linear prediction `X·W + b` (`MatMul`, `Add`; missing values as 0,
/// which leaves them out of the dot product as the learner does; a leaf
/// answering its target mean has `W` = 0, `b` = the mean); `Mul` by the
/// membership. `hoeffding_tree`: `ReduceSum` over the leaves. `arf`: a
/// `MatMul` by the leaf-to-tree assignment gives each tree's prediction
/// `[N, T]`, and `TopK` the median (the mean of the two middle ones for an
/// even `T`), as River's `ARFRegressor` aggregates. The leaf choice (mean or
/// linear model) is the one each leaf holds at snapshot time. Equal to
/// [`super::OnlineRegressor::predict_one`] up to the cast of the scaled
/// features to f32 for routing (a value within f32 rounding of a threshold
/// may take the other branch) and summation order.
pub fn regressor_to_onnx(
    model: &super::OnlineRegression,
    features: &[String],
    version: u32,
) -> Vec<u8> {
    use super::ScaledModel;
    let nf = features.len();
    let trees: Vec<&super::HoeffdingTreeRegressor> = match &model.model {
        ScaledModel::HoeffdingTree(t) => vec![t],
        ScaledModel::Arf(f) => f.members.iter().map(|m| &m.tree).collect(),
    };
    let mut attrs = TreeAttrs::default();
    let mut leaves = Vec::new();
    let mut leaf_tree = Vec::new();
    for (t, tree) in trees.iter().enumerate() {
        let before = leaves.len();
        regression_tree(tree, t, &mut attrs, &mut leaves);
        leaf_tree.extend(std::iter::repeat_n(t, leaves.len() - before));
    }
    let l = leaves.len();
    let mut w = vec![0.0; nf * l];
    let mut bias = vec![0.0; l];
    for (j, leaf) in leaves.iter().enumerate() {
        for (f, wf) in leaf.weights.iter().enumerate() {
            w[f * l + j] = *wf;
        }
        bias[j] = leaf.intercept;
    }
    let means = model.scaler.means();
    let variances = model.scaler.variances();
    // `v ** 0.5` as the scaler computes it; 1 (then times 0) where v = 0.
    let std: Vec<f64> = variances
        .iter()
        .map(|v| if *v != 0.0 { v.powf(0.5) } else { 1.0 })
        .collect();
    let live: Vec<f64> = variances
        .iter()
        .map(|v| if *v != 0.0 { 1.0 } else { 0.0 })
        .collect();
    let ones = vec![1.0f32; l];
    let TreeAttrs {
        tree_ids,
        node_ids,
        feature_ids,
        modes,
        values,
        true_ids,
        false_ids,
        missing,
        w_tree,
        w_node,
        w_id,
    } = attrs;
    let ensemble = vec![
        b::attr_ints("nodes_treeids", tree_ids),
        b::attr_ints("nodes_nodeids", node_ids),
        b::attr_ints("nodes_featureids", feature_ids),
        b::attr_strings("nodes_modes", &modes),
        b::attr_floats("nodes_values", values),
        b::attr_ints("nodes_truenodeids", true_ids),
        b::attr_ints("nodes_falsenodeids", false_ids),
        b::attr_ints("nodes_missing_value_tracks_true", missing),
        b::attr_string("post_transform", "NONE"),
        b::attr_string("aggregate_function", "SUM"),
        b::attr_int("n_targets", l as i64),
        b::attr_ints("target_treeids", w_tree),
        b::attr_ints("target_nodeids", w_node),
        b::attr_ints("target_ids", w_id),
        b::attr_floats("target_weights", ones),
    ];
    let (nf64, l64) = (nf as i64, l as i64);
    let mut initializer = vec![
        tensor_f64("scale_mean", &[nf64], means),
        tensor_f64("scale_std", &[nf64], &std),
        tensor_f64("scale_live", &[nf64], &live),
        tensor_f64("zero64", &[1], &[0.0]),
        tensor_f64("leaf_w", &[nf64, l64], &w),
        tensor_f64("leaf_b", &[l64], &bias),
        b::tensor_i64("axis1", &[1], &[1]),
    ];
    let n = |op: &str, inputs: &[&str], out: &str| b::node(op, inputs, out, vec![]);
    let mut nodes = vec![
        cast(b::INPUT, "x64", DataType::Double),
        n("IsNaN", &[b::INPUT], "x_missing"),
        n("Sub", &["x64", "scale_mean"], "x_centred"),
        n("Div", &["x_centred", "scale_std"], "x_divided"),
        n("Mul", &["x_divided", "scale_live"], "x_scaled"),
        cast("x_scaled", "x_route", DataType::Float),
        b::node_multi(
            "TreeEnsembleRegressor",
            ML_DOMAIN,
            &["x_route"],
            &["membership"],
            ensemble,
        ),
        cast("membership", "membership64", DataType::Double),
        n("Where", &["x_missing", "zero64", "x_scaled"], "x_filled"),
        n("MatMul", &["x_filled", "leaf_w"], "leaf_dot"),
        n("Add", &["leaf_dot", "leaf_b"], "leaf_pred"),
        n("Mul", &["leaf_pred", "membership64"], "leaf_votes"),
    ];
    let family = model.family().name();
    match &model.model {
        ScaledModel::HoeffdingTree(_) => nodes.push(b::node(
            "ReduceSum",
            &["leaf_votes", "axis1"],
            "prediction64",
            vec![b::attr_int("keepdims", 1)],
        )),
        ScaledModel::Arf(_) => {
            let t = trees.len();
            let mut assign = vec![0.0; l * t];
            for (j, tree) in leaf_tree.iter().enumerate() {
                assign[j * t + tree] = 1.0;
            }
            let k = t / 2 + 1;
            // The last one or two of the k largest: the median's operands.
            let first = if t.is_multiple_of(2) { k - 2 } else { k - 1 };
            let weight = if t.is_multiple_of(2) { 0.5 } else { 1.0 };
            initializer.extend([
                tensor_f64("leaf_tree", &[l64, t as i64], &assign),
                b::tensor_i64("top_k", &[1], &[k as i64]),
                b::tensor_i64("mid_start", &[1], &[first as i64]),
                b::tensor_i64("mid_end", &[1], &[k as i64]),
                tensor_f64("mid_weight", &[1], &[weight]),
            ]);
            nodes.extend([
                n("MatMul", &["leaf_votes", "leaf_tree"], "tree_pred"),
                b::node_multi(
                    "TopK",
                    "",
                    &["tree_pred", "top_k"],
                    &["top_values", "top_indices"],
                    vec![b::attr_int("axis", 1), b::attr_int("largest", 1)],
                ),
                n(
                    "Slice",
                    &["top_values", "mid_start", "mid_end", "axis1"],
                    "middle",
                ),
                b::node(
                    "ReduceSum",
                    &["middle", "axis1"],
                    "middle_sum",
                    vec![b::attr_int("keepdims", 1)],
                ),
                n("Mul", &["middle_sum", "mid_weight"], "prediction64"),
            ]);
        }
    }
    nodes.push(cast("prediction64", b::OUTPUT_PREDICTION, DataType::Float));
    let doc = format!(
        "Online {family} regression snapshot: standard scaling, {} tree(s) as TreeEnsembleRegressor leaf membership, {l} leaf linear models (MatMul), {}.",
        trees.len(),
        if trees.len() > 1 { "median over the trees (TopK)" } else { "summed" },
    );
    let graph = pb::GraphProto {
        name: format!("edgeloop_{family}_regression"),
        node: nodes,
        initializer,
        input: vec![b::input_info(nf)],
        output: b::regressor_outputs(),
        ..Default::default()
    };
    b::model_bytes(
        graph,
        &ModelMeta {
            family,
            task: Task::Regression,
            classes: &[],
            features,
            version,
            doc: &doc,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_round_down_to_f32() {
        let t = 0.1f64; // 0.1f32 is above 0.1
        let f = f32_at_most(t);
        assert!(f64::from(f) <= t);
        assert!(f64::from(f.next_up()) > t);
        assert_eq!(f32_at_most(0.5), 0.5);
    }

    #[test]
    fn a_path_leads_to_the_subtree_and_elsewhere_to_nothing() {
        let path = [
            PathStep {
                feature: 0,
                threshold: 1.0,
                nan_left: true,
                side: 1,
            },
            PathStep {
                feature: 1,
                threshold: 5.0,
                nan_left: false,
                side: 0,
            },
        ];
        let t = behind_path(&path, |t| t.leaf(vec![(1, 2.0)]));
        let mut v = [0.0; 2];
        t.add_votes(&[2.0, 4.0], &mut v);
        assert_eq!(v, [0.0, 2.0]);
        let mut v = [0.0; 2];
        t.add_votes(&[0.0, 4.0], &mut v);
        t.add_votes(&[2.0, 6.0], &mut v);
        t.add_votes(&[f64::NAN, 4.0], &mut v);
        assert_eq!(v, [0.0, 0.0]);
    }
}
