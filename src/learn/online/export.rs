//! Online models as standard ONNX (issue 17): what the daemon snapshots and
//! serves ([`to_onnx`]), following [`crate::onnx::builder`]'s contract
//! (`features` `[N, n_features]` f32 → `probabilities` `[N, n_classes]` f32
//! and `label` `[N]` i64).
//!
//! * `online_logistic`: its own export ([`super::OnlineLogistic::to_onnx`]:
//!   running-mean imputation and scaling, `MatMul` + `Add`, `Softmax` or
//!   normalised one-vs-rest sigmoids), equal to the model's probabilities;
//! * `hoeffding_tree`, `hoeffding_adaptive_tree`, `arf`: one `ai.onnx.ml`
//!   `TreeEnsembleClassifier` (opset 3, `post_transform NONE`) summing the
//!   trees' leaf weights, then `ReduceSum` and `Div` normalise each row (as
//!   the learners normalise their votes), `ArgMax` gives `label`.
//!
//! **What an exported leaf predicts.** A Hoeffding-tree leaf predicts, in
//! process, by naive Bayes over its per-class Gaussians when that has been
//! more accurate on the leaf's samples than the majority class ("naive Bayes
//! adaptive", River's `LeafNaiveBayesAdaptive`). A naive-Bayes vote is a
//! function of the sample, which a tree ensemble's constant leaf weights
//! cannot hold, so an exported leaf always predicts its **class
//! distribution**: the leaf's class weights normalised to sum 1 (River's
//! `normalize_values_in_dict` of its statistics, the majority-class branch of
//! the adaptive leaf). On that basis the graph equals the model:
//!
//! * `hoeffding_tree`: the distribution of the leaf the sample reaches;
//! * `hoeffding_adaptive_tree`: the sum over the leaves River's
//!   `_found_leaves` collects (the main path's leaf and, at every branch on
//!   it holding an alternate subtree, that subtree's leaves), each
//!   distribution divided by `Σ dist · error²` of the leaf's running error as
//!   River's `AdaLeafClassifier.prediction` does, normalised. Each alternate
//!   subtree is its own tree in the ensemble, behind a copy of the path that
//!   leads to its branch (the other side of each step a leaf of no weight);
//! * `arf`: each member's leaf distribution weighted by the member's
//!   accuracy so far (or 1 while it is 0), normalised: River's
//!   `ARFClassifier` vote; background trees do not vote.
//!
//! [`leaf_proba`] computes the same in process (f64), the reference of the
//! export's tests. A sample missing a split feature (`NaN`) follows the
//! heavier branch, as in the learners, through
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

/// Prequential accuracy (test then train: each sample predicted before it
/// is learned) over some labelled samples.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prequential {
    /// Samples predicted then learned.
    pub scored: u64,
    /// Share predicted right (`None` before any).
    pub accuracy: Option<f64>,
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
    /// The learner's own prediction record (in process, naive-Bayes-adaptive
    /// leaves for the trees) over the last `window` samples and since the
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

    /// Adds the leaf weights `x` reaches to `votes` (`[n_classes]`).
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
    let (mut tree_ids, mut node_ids, mut feature_ids) = (vec![], vec![], vec![]);
    let (mut modes, mut values, mut true_ids, mut false_ids) = (vec![], vec![], vec![], vec![]);
    let mut missing = vec![];
    let (mut w_tree, mut w_node, mut w_id, mut w_value) = (vec![], vec![], vec![], vec![]);
    for (t, tree) in trees.iter().enumerate() {
        for (i, node) in tree.nodes.iter().enumerate() {
            tree_ids.push(t as i64);
            node_ids.push(i as i64);
            match node {
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
                }
                ExportNode::Leaf { weights } => {
                    feature_ids.push(0);
                    modes.push("LEAF");
                    values.push(0.0);
                    true_ids.push(0);
                    false_ids.push(0);
                    missing.push(0);
                    // Two classes: both weights on every leaf, zeros
                    // included (onnxruntime's binary mode, see
                    // `learn::families::tree_onnx`).
                    let mut per_class = vec![0.0f64; k];
                    for (c, w) in weights {
                        per_class[*c] += w;
                    }
                    for (c, w) in per_class.into_iter().enumerate() {
                        if w == 0.0 && k > 2 {
                            continue;
                        }
                        w_tree.push(t as i64);
                        w_node.push(i as i64);
                        w_id.push(c as i64);
                        w_value.push(w as f32);
                    }
                }
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
        b::attr_ints("classlabels_int64s", (0..k as i64).collect()),
        b::attr_ints("class_treeids", w_tree),
        b::attr_ints("class_nodeids", w_node),
        b::attr_ints("class_ids", w_id),
        b::attr_floats("class_weights", w_value),
    ];
    let nodes = vec![
        b::node_multi(
            "TreeEnsembleClassifier",
            ML_DOMAIN,
            &[b::INPUT],
            &["tree_label", "votes"],
            attrs,
        ),
        b::node(
            "ReduceSum",
            &["votes", "sum_axes"],
            "votes_sum",
            vec![b::attr_int("keepdims", 1)],
        ),
        b::node("Max", &["votes_sum", "tiny"], "votes_total", vec![]),
        b::node(
            "Div",
            &["votes", "votes_total"],
            OUTPUT_PROBABILITIES,
            vec![],
        ),
        b::label_node(),
    ];
    let doc = format!(
        "Online {family} snapshot: {} tree(s) as TreeEnsembleClassifier, each leaf its class distribution (naive-Bayes leaves exported by their class weights), votes normalised per row.",
        trees.len()
    );
    let graph = pb::GraphProto {
        name: format!("edgeloop_{family}"),
        node: nodes,
        initializer: vec![
            b::tensor_i64("sum_axes", &[1], &[1]),
            b::tensor_f32("tiny", &[1], &[1e-30]),
        ],
        input: vec![b::input_info(features.len())],
        output: b::classifier_outputs(k),
        ..Default::default()
    };
    b::model_bytes(graph, &ModelMeta { doc: &doc, ..meta })
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
