//! The ml-opset-5 `TreeEnsemble`
//! (<https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsemble.html>), converted to
//! the ml-opset-3 layout and compiled by [`crate::onnx::tree_ensemble`].
//!
//! Interior nodes and leaves live in separate arrays: `nodes_truenodeids[i]` is a leaf
//! index when `nodes_trueleafs[i]` is 1, else an interior index (same for false);
//! `tree_roots` are interior indices. `nodes_modes` (uint8 tensor): 0 LEQ, 1 LT, 2 GTE,
//! 3 GT, 4 EQ, 5 NEQ, 6 MEMBER, whose sets are read in order from `membership_values`
//! (separated by NaN) and become chains of EQ tests. Each leaf adds `leaf_weights[j]`
//! to target `leaf_targetids[j]`; `aggregate_function` 0 AVERAGE, 1 SUM (default),
//! 2 MIN, 3 MAX; `post_transform` 0 NONE … 4 PROBIT. Output `[N, n_targets]` `f32`.
//!
//! As onnxruntime 1.32 (and onnx's reference evaluator), a single-target ensemble
//! ignores `post_transform` except PROBIT (the conformance fixture
//! `tree_ensemble_ml5_lt` shows LOGISTIC left unapplied). `nodes_hitrates` is ignored.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{in_node, ints, tensor};
use crate::onnx::tree_ensemble::{
    into_op, Aggregate, BranchMode, PostTransform, Task, TreeEnsemble, TreeEnsembleAttributes,
};

/// The opset-5 attributes, as read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TreeEnsemble5 {
    pub nodes_featureids: Vec<i64>,
    pub nodes_splits: Vec<f32>,
    pub nodes_modes: Vec<u8>,
    pub nodes_truenodeids: Vec<i64>,
    pub nodes_trueleafs: Vec<i64>,
    pub nodes_falsenodeids: Vec<i64>,
    pub nodes_falseleafs: Vec<i64>,
    pub nodes_missing_value_tracks_true: Vec<i64>,
    pub membership_values: Vec<f32>,
    pub tree_roots: Vec<i64>,
    pub leaf_targetids: Vec<i64>,
    pub leaf_weights: Vec<f32>,
    pub n_targets: i64,
    pub aggregate_function: i64,
    pub post_transform: i64,
}

fn f32s(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Vec<f32>> {
    Ok(match tensor(ctx, node, name)? {
        Some(t) => t
            .cast_to::<f32>()?
            .to_plain_array_view::<f32>()?
            .iter()
            .copied()
            .collect(),
        None => vec![],
    })
}

fn parse(ctx: &ParsingContext, node: &NodeProto) -> TractResult<TreeEnsemble5> {
    let modes = match tensor(ctx, node, "nodes_modes")? {
        Some(t) => t
            .cast_to::<i64>()?
            .to_plain_array_view::<i64>()?
            .iter()
            .map(|&m| m as u8)
            .collect(),
        None => bail!("nodes_modes is missing"),
    };
    Ok(TreeEnsemble5 {
        nodes_featureids: ints(node, "nodes_featureids")?,
        nodes_splits: f32s(ctx, node, "nodes_splits")?,
        nodes_modes: modes,
        nodes_truenodeids: ints(node, "nodes_truenodeids")?,
        nodes_trueleafs: ints(node, "nodes_trueleafs")?,
        nodes_falsenodeids: ints(node, "nodes_falsenodeids")?,
        nodes_falseleafs: ints(node, "nodes_falseleafs")?,
        nodes_missing_value_tracks_true: ints(node, "nodes_missing_value_tracks_true")?,
        membership_values: f32s(ctx, node, "membership_values")?,
        tree_roots: ints(node, "tree_roots")?,
        leaf_targetids: ints(node, "leaf_targetids")?,
        leaf_weights: f32s(ctx, node, "leaf_weights")?,
        n_targets: node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1),
        aggregate_function: node.get_attr_opt::<i64>("aggregate_function")?.unwrap_or(1),
        post_transform: node.get_attr_opt::<i64>("post_transform")?.unwrap_or(0),
    })
}

/// tract op builder.
///
/// # Errors
/// Attribute lengths that disagree, ids out of range, cycles, unknown modes,
/// aggregate functions or post transforms.
pub fn build(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ensemble = in_node(
        "TreeEnsemble",
        node,
        parse(ctx, node).and_then(|a| a.compile()),
    )?;
    Ok(into_op(ensemble))
}

#[derive(Clone, Copy)]
enum Ref {
    Node(usize),
    Leaf(usize),
}

impl TreeEnsemble5 {
    /// Converts to the ml-opset-3 layout and compiles.
    ///
    /// # Errors
    /// As [`build`].
    pub fn compile(&self) -> TractResult<TreeEnsemble> {
        let a = self.to_attributes()?;
        TreeEnsemble::compile(&a).map_err(|e| format_err!("{e}"))
    }

    /// The equivalent ml-opset-3 regressor attributes.
    ///
    /// # Errors
    /// As [`build`].
    pub fn to_attributes(&self) -> TractResult<TreeEnsembleAttributes> {
        let n = self.nodes_featureids.len();
        for (name, len) in [
            ("nodes_splits", self.nodes_splits.len()),
            ("nodes_modes", self.nodes_modes.len()),
            ("nodes_truenodeids", self.nodes_truenodeids.len()),
            ("nodes_trueleafs", self.nodes_trueleafs.len()),
            ("nodes_falsenodeids", self.nodes_falsenodeids.len()),
            ("nodes_falseleafs", self.nodes_falseleafs.len()),
        ] {
            ensure!(len == n, "{name} has {len} entries, nodes_featureids {n}");
        }
        let missing = &self.nodes_missing_value_tracks_true;
        ensure!(
            missing.is_empty() || missing.len() == n,
            "nodes_missing_value_tracks_true has {} entries for {n} nodes",
            missing.len()
        );
        let n_leaves = self.leaf_weights.len();
        ensure!(
            self.leaf_targetids.len() == n_leaves,
            "leaf_targetids has {} entries, leaf_weights {n_leaves}",
            self.leaf_targetids.len()
        );
        ensure!(self.n_targets >= 1, "n_targets is {}", self.n_targets);
        let aggregate = match self.aggregate_function {
            0 => Aggregate::Average,
            1 => Aggregate::Sum,
            2 => Aggregate::Min,
            3 => Aggregate::Max,
            a => bail!("unknown aggregate_function {a}"),
        };
        let post_transform = match self.post_transform {
            0 => PostTransform::None,
            1 => PostTransform::Softmax,
            2 => PostTransform::Logistic,
            3 => PostTransform::SoftmaxZero,
            4 => PostTransform::Probit,
            p => bail!("unknown post_transform {p}"),
        };
        // MEMBER sets, in node order.
        let mut sets: Vec<Option<Vec<f32>>> = vec![None; n];
        let mut values = self.membership_values.split(|v| v.is_nan());
        for (i, &m) in self.nodes_modes.iter().enumerate() {
            if m == 6 {
                let set = values
                    .next()
                    .filter(|_| !self.membership_values.is_empty())
                    .ok_or_else(|| format_err!("membership_values has no set for node {i}"))?;
                sets[i] = Some(set.to_vec());
            }
        }
        let child = |id: i64, leaf: i64, i: usize| -> TractResult<Ref> {
            let bound = if leaf != 0 { n_leaves } else { n };
            ensure!(
                id >= 0 && (id as usize) < bound,
                "node {i}: child {id} out of range ({} {bound})",
                if leaf != 0 { "leaves" } else { "nodes" }
            );
            Ok(if leaf != 0 {
                Ref::Leaf(id as usize)
            } else {
                Ref::Node(id as usize)
            })
        };
        let mut a = TreeEnsembleAttributes {
            task: Task::Regressor {
                n_targets: self.n_targets as usize,
                aggregate,
            },
            nodes_treeids: vec![],
            nodes_nodeids: vec![],
            nodes_featureids: vec![],
            nodes_values: vec![],
            nodes_modes: vec![],
            nodes_truenodeids: vec![],
            nodes_falsenodeids: vec![],
            nodes_missing_value_tracks_true: vec![],
            leaf_treeids: vec![],
            leaf_nodeids: vec![],
            leaf_ids: vec![],
            leaf_weights: vec![],
            base_values: vec![],
            post_transform,
        };
        ensure!(!self.tree_roots.is_empty(), "tree_roots is empty");
        let mut pending: Vec<(Ref, i64)> = vec![];
        for (t, &root) in self.tree_roots.iter().enumerate() {
            let t = t as i64;
            ensure!(
                root >= 0 && (root as usize) < n,
                "tree_roots[{t}] = {root} is no node"
            );
            let mut next_id = 1i64;
            let mut interior = 0usize;
            pending.push((Ref::Node(root as usize), 0));
            while let Some((r, id)) = pending.pop() {
                match r {
                    Ref::Leaf(j) => {
                        push_node(&mut a, t, id, 0, 0.0, BranchMode::Leaf, 0, 0, false);
                        a.leaf_treeids.push(t);
                        a.leaf_nodeids.push(id);
                        a.leaf_ids.push(self.leaf_targetids[j]);
                        a.leaf_weights.push(self.leaf_weights[j]);
                    }
                    Ref::Node(i) => {
                        interior += 1;
                        ensure!(
                            interior <= n,
                            "tree {t}: the nodes form a cycle or share subtrees"
                        );
                        let true_ref =
                            child(self.nodes_truenodeids[i], self.nodes_trueleafs[i], i)?;
                        let false_ref =
                            child(self.nodes_falsenodeids[i], self.nodes_falseleafs[i], i)?;
                        let true_id = next_id;
                        let false_id = next_id + 1;
                        next_id += 2;
                        pending.push((false_ref, false_id));
                        pending.push((true_ref, true_id));
                        let f = self.nodes_featureids[i];
                        let miss = missing.get(i).is_some_and(|&m| m != 0);
                        let mode = match self.nodes_modes[i] {
                            0 => BranchMode::Leq,
                            1 => BranchMode::Lt,
                            2 => BranchMode::Gte,
                            3 => BranchMode::Gt,
                            4 => BranchMode::Eq,
                            5 => BranchMode::Neq,
                            6 => {
                                // x in {m1..mk}: EQ m1 → true, else EQ m2 … else false.
                                let set = sets[i].as_deref().unwrap_or(&[]);
                                let set: &[f32] = if set.is_empty() { &[f32::NAN] } else { set };
                                let mut this = id;
                                for (k, &m) in set.iter().enumerate() {
                                    let next = if k + 1 == set.len() {
                                        false_id
                                    } else {
                                        next_id += 1;
                                        next_id - 1
                                    };
                                    push_node(
                                        &mut a,
                                        t,
                                        this,
                                        f,
                                        m,
                                        BranchMode::Eq,
                                        true_id,
                                        next,
                                        miss,
                                    );
                                    this = next;
                                }
                                continue;
                            }
                            m => bail!("node {i}: unknown mode {m}"),
                        };
                        push_node(
                            &mut a,
                            t,
                            id,
                            f,
                            self.nodes_splits[i],
                            mode,
                            true_id,
                            false_id,
                            miss,
                        );
                    }
                }
            }
        }
        Ok(a)
    }
}

#[allow(clippy::too_many_arguments)]
fn push_node(
    a: &mut TreeEnsembleAttributes,
    tree: i64,
    id: i64,
    feature: i64,
    value: f32,
    mode: BranchMode,
    t: i64,
    f: i64,
    missing: bool,
) {
    a.nodes_treeids.push(tree);
    a.nodes_nodeids.push(id);
    a.nodes_featureids.push(feature);
    a.nodes_values.push(value);
    a.nodes_modes.push(mode);
    a.nodes_truenodeids.push(t);
    a.nodes_falsenodeids.push(f);
    a.nodes_missing_value_tracks_true.push(missing);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's example shape: one tree, root `x0 <= 1` → leaf 0 (weight
    /// 10), else node 1: `x1 in {2, 5}` → leaf 1 (20), else leaf 2 (30).
    fn example() -> TreeEnsemble5 {
        TreeEnsemble5 {
            nodes_featureids: vec![0, 1],
            nodes_splits: vec![1.0, 0.0],
            nodes_modes: vec![0, 6],
            nodes_truenodeids: vec![0, 1],
            nodes_trueleafs: vec![1, 1],
            nodes_falsenodeids: vec![1, 2],
            nodes_falseleafs: vec![0, 1],
            membership_values: vec![2.0, 5.0, f32::NAN],
            tree_roots: vec![0],
            leaf_targetids: vec![0, 0, 0],
            leaf_weights: vec![10.0, 20.0, 30.0],
            n_targets: 1,
            aggregate_function: 1,
            ..Default::default()
        }
    }

    #[test]
    fn leq_and_member_nodes_route_as_specified() {
        let e = example().compile().unwrap();
        let x = [0.5f32, 9.0, 2.0, 5.0, 2.0, 2.0, 2.0, 3.0];
        let mut s = vec![0f32; 4];
        let mut l = vec![0i64; 4];
        e.eval(&x, 2, &mut s, &mut l).unwrap();
        assert_eq!(s, [10.0, 20.0, 20.0, 30.0]);
    }

    #[test]
    fn bad_attributes_are_refused() {
        let mut a = example();
        a.nodes_truenodeids[0] = 7;
        assert!(a.compile().is_err());
        let mut a = example();
        a.nodes_falseleafs[0] = 0;
        a.nodes_falsenodeids[0] = 0; // the root's false child is the root
        assert!(a.compile().unwrap_err().to_string().contains("cycle"));
        let mut a = example();
        a.membership_values.clear();
        assert!(a.compile().is_err());
        let mut a = example();
        a.aggregate_function = 9;
        assert!(a.compile().is_err());
    }
}
