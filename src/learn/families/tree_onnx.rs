//! Export of tree ensembles (a decision tree is an ensemble of one) to the
//! standard `ai.onnx.ml` operators `TreeEnsembleClassifier` and
//! `TreeEnsembleRegressor` (ONNX operator specification, `ai.onnx.ml` opset 3:
//! <https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsembleClassifier.html>).
//!
//! ```text
//! features [N, F] f32
//!   → IsNaN → Where(isnan, mean, features)          mean imputation
//!   → TreeEnsembleClassifier (post_transform NONE)  → probabilities [N, C] f32
//!     → ArgMax(axis = 1, keepdims = 0)              → label [N] i64
//!   or TreeEnsembleRegressor (aggregate AVERAGE)    → prediction [N, 1] f32
//! ```
//!
//! Every node of tree `t` is listed with `nodes_treeids = t` and its index in
//! the tree as `nodes_nodeids`; splits are `BRANCH_LEQ` (`x <= value` goes to
//! the true branch, the left child). A classifier's leaf carries a weight
//! `p_k / n_trees` (in `f32`) per class k; summed with `post_transform = NONE`
//! they give the forest's mean probability. With three or more classes, zero
//! weights are left out (smaller files). With two classes every leaf carries
//! both weights, zeros included: onnxruntime (1.32,
//! `tree_ensemble_aggregator.h`) switches to a binary mode reporting
//! `[1 − s, s]` when only one class has weights anywhere, and reports
//! `[s, −s]` for a row where the second class received no weight.
//! `classlabels_int64s` are the class indices `0..C`; the class names are in
//! the metadata.
//!
//! The operator's own label output (`tree_label`) is left unused: for two
//! classes onnxruntime does not take the most probable class (it thresholds
//! the second class's score), so `label` is an `ArgMax` of the probabilities
//! (first maximum on ties, as [`crate::learn::model::argmax_rows`]).
//!
//! A regressor's leaf carries its value, and `AVERAGE` divides the sum by the
//! number of trees.

use tract_onnx::pb;

use super::tree::{DecisionTree, Node};
use crate::ingest::decode::Task;
use crate::onnx::builder::{
    self as b, ModelMeta, ML_DOMAIN, OUTPUT_PREDICTION, OUTPUT_PROBABILITIES,
};

/// Serialises `trees` (imputing `NaN` by `mean`, `[n_features]`) as an ONNX
/// model following [`crate::onnx::builder`]'s contract; `meta.classes` gives the
/// number of classes of a classifier.
pub fn tree_ensemble_to_onnx(
    trees: &[DecisionTree],
    mean: &[f32],
    meta: &ModelMeta<'_>,
) -> Vec<u8> {
    let n_trees = trees.len() as f32;
    let n_classes = meta.classes.len();
    let (mut tree_ids, mut node_ids, mut feature_ids) = (vec![], vec![], vec![]);
    let (mut modes, mut values, mut true_ids, mut false_ids) = (vec![], vec![], vec![], vec![]);
    // Leaf weights: tree id, node id, class (or target) id, weight.
    let (mut w_tree, mut w_node, mut w_id, mut w_value) = (vec![], vec![], vec![], vec![]);
    for (t, tree) in trees.iter().enumerate() {
        for (i, node) in tree.nodes.iter().enumerate() {
            tree_ids.push(t as i64);
            node_ids.push(i as i64);
            match node {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    feature_ids.push(i64::from(*feature));
                    modes.push("BRANCH_LEQ");
                    values.push(*threshold);
                    true_ids.push(i64::from(*left));
                    false_ids.push(i64::from(*right));
                }
                Node::Leaf { value } => {
                    feature_ids.push(0);
                    modes.push("LEAF");
                    values.push(0.0);
                    true_ids.push(0);
                    false_ids.push(0);
                    let weights: Vec<f32> = match meta.task {
                        Task::Classification => value.iter().map(|p| p / n_trees).collect(),
                        Task::Regression => value.clone(),
                    };
                    for (k, w) in weights.into_iter().enumerate() {
                        if w == 0.0 && n_classes > 2 {
                            continue;
                        }
                        w_tree.push(t as i64);
                        w_node.push(i as i64);
                        w_id.push(k as i64);
                        w_value.push(w);
                    }
                }
            }
        }
    }
    let mut attrs = vec![
        b::attr_ints("nodes_treeids", tree_ids),
        b::attr_ints("nodes_nodeids", node_ids),
        b::attr_ints("nodes_featureids", feature_ids),
        b::attr_strings("nodes_modes", &modes),
        b::attr_floats("nodes_values", values),
        b::attr_ints("nodes_truenodeids", true_ids),
        b::attr_ints("nodes_falsenodeids", false_ids),
        b::attr_string("post_transform", "NONE"),
    ];
    let (mut nodes, imputed) = b::impute_and_scale_nodes("mean", None);
    let (op, outputs, graph_outputs) = match meta.task {
        Task::Classification => {
            attrs.extend([
                b::attr_ints("classlabels_int64s", (0..n_classes as i64).collect()),
                b::attr_ints("class_treeids", w_tree),
                b::attr_ints("class_nodeids", w_node),
                b::attr_ints("class_ids", w_id),
                b::attr_floats("class_weights", w_value),
            ]);
            (
                "TreeEnsembleClassifier",
                vec!["tree_label", OUTPUT_PROBABILITIES],
                b::classifier_outputs(n_classes),
            )
        }
        Task::Regression => {
            attrs.extend([
                b::attr_int("n_targets", 1),
                b::attr_string("aggregate_function", "AVERAGE"),
                b::attr_ints("target_treeids", w_tree),
                b::attr_ints("target_nodeids", w_node),
                b::attr_ints("target_ids", w_id),
                b::attr_floats("target_weights", w_value),
            ]);
            (
                "TreeEnsembleRegressor",
                vec![OUTPUT_PREDICTION],
                b::regressor_outputs(),
            )
        }
    };
    nodes.push(b::node_multi(op, ML_DOMAIN, &[imputed], &outputs, attrs));
    if meta.task == Task::Classification {
        nodes.push(b::label_node());
    }
    let graph = pb::GraphProto {
        name: format!("edgeloop_{}", meta.family),
        node: nodes,
        initializer: vec![b::tensor_f32("mean", &[mean.len() as i64], mean)],
        input: vec![b::input_info(mean.len())],
        output: graph_outputs,
        ..Default::default()
    };
    b::model_bytes(graph, meta)
}
