//! `ai.onnx.ml` TreeEnsembleClassifier and TreeEnsembleRegressor (ml opsets 1 and 3),
//! registered in tract's ONNX register in place of tract-onnx's own (which refuses the
//! regressor and walks every leaf's votes linearly, thousands of times slower).
//!
//! Follows the ONNX operator specification
//! (<https://onnx.ai/onnx/operators/onnx_aionnxml_TreeEnsembleClassifier.html>,
//! `..._TreeEnsembleRegressor.html`) and, where the specification is vague,
//! onnxruntime's CPU kernel (`tree_ensemble_common.h`, `tree_ensemble_aggregator.h`,
//! `ml_common.h`), whose outputs the tests compare against:
//!
//! * trees in the order of their first node in `nodes_treeids`; a tree's root is its first
//!   listed node; scores accumulate in `f32`, tree after tree, each leaf's weights in
//!   attribute order;
//! * a regressor with one target uses each leaf's first weight only (a leaf without one
//!   contributes its `nodes_values` entry), adds `base_values[0]`, and applies no post
//!   transform but PROBIT;
//! * a classifier sums (whatever `aggregate_function` says); with more than two classes
//!   the label is the first class with the highest score among the classes that got
//!   one; with two classes, onnxruntime's special cases: weights for one class only
//!   (skl2onnx's binary models) give scores `[logistic(-s), logistic(s)]` under
//!   LOGISTIC, else `[1 - p, p]` (all weights positive) or `[-s, s]`; when both classes
//!   have weights the label is the literal `1` if class 1's score is positive, else `0`
//!   (an index for string labels);
//! * a score that no leaf weight reached is written as 0 before the post transform,
//!   even where a base value was added to it (except a multiclass classifier's base
//!   values, which count as a score);
//! * `nodes_hitrates` is ignored; NaN goes to the false branch unless the node's
//!   `nodes_missing_value_tracks_true` is set.
//!
//! `*_as_tensor` attributes may be float or double tensors; the evaluation is in `f32`
//! either way, as onnxruntime's kernel for float input (which refuses double tensors).
//!
//! A batch is evaluated tree by tree over blocks of 64 rows. Blocks of 6 rows and more
//! walk a second, packed layout of the same trees (`Packed`: each test rewritten as one
//! exact `<` comparison, siblings side by side), 16 rows a level at a time without a
//! branch, in the manner of the branch-free, interleaved traversal of Asadi, Lin and de
//! Vries, "Runtime Optimizations for Tree-Based Machine Learning Models" (IEEE TKDE
//! 2014); smaller blocks walk node by node. Both give the same outputs, bit for bit.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Why an ensemble's attributes were refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TreeEnsembleError {
    /// An attribute is absent, of the wrong length or holds an invalid value.
    #[error("attribute {attr}: {reason}")]
    Attribute { attr: &'static str, reason: String },
    /// The nodes do not form trees (unknown child, duplicate node, cycle).
    #[error("tree {tree}, node {node}: {reason}")]
    Structure {
        tree: i64,
        node: i64,
        reason: String,
    },
    /// Valid per the specification, but onnxruntime's output is undefined.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

fn attr_err(attr: &'static str, reason: impl Into<String>) -> TreeEnsembleError {
    TreeEnsembleError::Attribute {
        attr,
        reason: reason.into(),
    }
}

/// `nodes_modes`: how a node compares `x[feature]` with its value; `true` takes the
/// true branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchMode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl BranchMode {
    /// Parses `BRANCH_LEQ` … `LEAF`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BRANCH_LEQ" => Self::Leq,
            "BRANCH_LT" => Self::Lt,
            "BRANCH_GTE" => Self::Gte,
            "BRANCH_GT" => Self::Gt,
            "BRANCH_EQ" => Self::Eq,
            "BRANCH_NEQ" => Self::Neq,
            "LEAF" => Self::Leaf,
            _ => return None,
        })
    }
}

/// `post_transform`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostTransform {
    #[default]
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    /// Parses `NONE`, `SOFTMAX`, `LOGISTIC`, `SOFTMAX_ZERO`, `PROBIT`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NONE" => Self::None,
            "SOFTMAX" => Self::Softmax,
            "LOGISTIC" => Self::Logistic,
            "SOFTMAX_ZERO" => Self::SoftmaxZero,
            "PROBIT" => Self::Probit,
            _ => return None,
        })
    }
}

/// The regressor's `aggregate_function` (a classifier always sums).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregate {
    #[default]
    Sum,
    Average,
    Min,
    Max,
}

impl Aggregate {
    /// Parses `SUM`, `AVERAGE`, `MIN`, `MAX`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "SUM" => Self::Sum,
            "AVERAGE" => Self::Average,
            "MIN" => Self::Min,
            "MAX" => Self::Max,
            _ => return None,
        })
    }
}

/// A classifier's `classlabels_int64s` or `classlabels_strings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassLabels {
    Int64(Vec<i64>),
    Strings(Vec<String>),
}

impl ClassLabels {
    pub fn len(&self) -> usize {
        match self {
            Self::Int64(v) => v.len(),
            Self::Strings(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the ensemble predicts.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// TreeEnsembleClassifier: outputs label `[N]` and scores `[N, n_classes]`.
    Classifier(ClassLabels),
    /// TreeEnsembleRegressor: outputs Y `[N, n_targets]`.
    Regressor {
        n_targets: usize,
        aggregate: Aggregate,
    },
}

/// The operator's attributes, as parsed (the `class_*` / `target_*` leaf tuples under
/// `leaf_*`; `*_as_tensor` already folded into their plain counterparts).
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsembleAttributes {
    pub task: Task,
    pub nodes_treeids: Vec<i64>,
    pub nodes_nodeids: Vec<i64>,
    pub nodes_featureids: Vec<i64>,
    pub nodes_values: Vec<f32>,
    pub nodes_modes: Vec<BranchMode>,
    pub nodes_truenodeids: Vec<i64>,
    pub nodes_falsenodeids: Vec<i64>,
    /// Empty, or one flag per node.
    pub nodes_missing_value_tracks_true: Vec<bool>,
    pub leaf_treeids: Vec<i64>,
    pub leaf_nodeids: Vec<i64>,
    /// Class index (classifier) or target index (regressor) of each weight.
    pub leaf_ids: Vec<i64>,
    pub leaf_weights: Vec<f32>,
    pub base_values: Vec<f32>,
    pub post_transform: PostTransform,
}

const LEAF: u8 = 6;
/// Rows walked together, tree by tree, in [`TreeEnsemble::eval`].
const BLOCK: usize = 64;
const MISSING_TRUE: u8 = 0x10;

/// One node of the compiled layout. A leaf's `true_child..true_child + false_child`
/// is its slice of `TreeEnsemble::weights`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    value: f32,
    feature: u32,
    true_child: u32,
    false_child: u32,
    /// BranchMode as 0..=6 (LEAF = 6), | MISSING_TRUE.
    flags: u8,
}

/// A compiled ensemble: every tree's nodes in one flat array, children as absolute
/// indices, each leaf's weights contiguous. Immutable; [`TreeEnsemble::eval`] walks it.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    /// (output index, weight).
    weights: Vec<(u32, f32)>,
    n_outputs: usize,
    n_features: usize,
    base_values: Vec<f32>,
    post_transform: PostTransform,
    task: Task,
    binary_case: bool,
    weights_all_positive: bool,
    /// The layout batches walk, when the ensemble fits it.
    packed: Option<Packed>,
}

impl TreeEnsemble {
    /// Validates the attributes and compiles them.
    ///
    /// # Errors
    /// [`TreeEnsembleError`] naming the attribute or node at fault: length mismatches,
    /// unknown or negative ids, duplicate nodes, cycles, class or target ids out of
    /// range, base values of the wrong length, and PROBIT on a two-class classifier with
    /// fewer than two base values (onnxruntime leaves the second score unwritten).
    pub fn compile(a: &TreeEnsembleAttributes) -> Result<Self, TreeEnsembleError> {
        let n = a.nodes_treeids.len();
        if n == 0 {
            return Err(attr_err("nodes_treeids", "no nodes"));
        }
        let lens: [(&'static str, usize); 6] = [
            ("nodes_nodeids", a.nodes_nodeids.len()),
            ("nodes_featureids", a.nodes_featureids.len()),
            ("nodes_values", a.nodes_values.len()),
            ("nodes_modes", a.nodes_modes.len()),
            ("nodes_truenodeids", a.nodes_truenodeids.len()),
            ("nodes_falsenodeids", a.nodes_falsenodeids.len()),
        ];
        for (attr, len) in lens {
            if len != n {
                return Err(attr_err(attr, format!("{len} values for {n} nodes")));
            }
        }
        let missing = &a.nodes_missing_value_tracks_true;
        if !missing.is_empty() && missing.len() != n {
            return Err(attr_err(
                "nodes_missing_value_tracks_true",
                format!("{} values for {n} nodes", missing.len()),
            ));
        }
        let nw = a.leaf_ids.len();
        for (attr, len) in [
            ("class_treeids/target_treeids", a.leaf_treeids.len()),
            ("class_nodeids/target_nodeids", a.leaf_nodeids.len()),
            ("class_weights/target_weights", a.leaf_weights.len()),
        ] {
            if len != nw {
                return Err(attr_err(attr, format!("{len} values for {nw} ids")));
            }
        }
        let n_outputs = match &a.task {
            Task::Classifier(labels) => {
                if labels.len() < 2 {
                    return Err(attr_err("classlabels", "fewer than 2 classes"));
                }
                labels.len()
            }
            Task::Regressor { n_targets, .. } => {
                if *n_targets == 0 {
                    return Err(attr_err("n_targets", "must be at least 1"));
                }
                *n_targets
            }
        };

        let mut index: HashMap<(i64, i64), u32> = HashMap::with_capacity(n);
        let mut n_features = 0usize;
        for i in 0..n {
            let key = (a.nodes_treeids[i], a.nodes_nodeids[i]);
            if index.insert(key, i as u32).is_some() {
                return Err(TreeEnsembleError::Structure {
                    tree: key.0,
                    node: key.1,
                    reason: "listed twice".into(),
                });
            }
            if a.nodes_modes[i] != BranchMode::Leaf {
                let f = a.nodes_featureids[i];
                if !(0..u32::MAX as i64).contains(&f) {
                    return Err(attr_err("nodes_featureids", format!("invalid feature {f}")));
                }
                n_features = n_features.max(f as usize + 1);
            }
        }
        let child = |i: usize, id: i64, which: &str| -> Result<u32, TreeEnsembleError> {
            let tree = a.nodes_treeids[i];
            index
                .get(&(tree, id))
                .copied()
                .ok_or_else(|| TreeEnsembleError::Structure {
                    tree,
                    node: a.nodes_nodeids[i],
                    reason: format!("{which} node {id} is not in the tree"),
                })
        };
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mode = a.nodes_modes[i];
            let mut flags = mode as u8;
            if missing.get(i).copied().unwrap_or(false) {
                flags |= MISSING_TRUE;
            }
            let (true_child, false_child) = if mode == BranchMode::Leaf {
                (0, 0)
            } else {
                (
                    child(i, a.nodes_truenodeids[i], "true")?,
                    child(i, a.nodes_falsenodeids[i], "false")?,
                )
            };
            nodes.push(Node {
                value: a.nodes_values[i],
                feature: if mode == BranchMode::Leaf {
                    0
                } else {
                    a.nodes_featureids[i] as u32
                },
                true_child,
                false_child,
                flags,
            });
        }

        // Weights sorted by (tree, node, position), as onnxruntime does.
        let mut order: Vec<usize> = (0..nw).collect();
        order.sort_by_key(|&k| (a.leaf_treeids[k], a.leaf_nodeids[k], k));
        let mut weights = Vec::with_capacity(nw);
        let mut weighted = vec![false; n];
        let mut first_weight = vec![u32::MAX; n];
        let mut weight_count = vec![0u32; n];
        for k in order {
            let key = (a.leaf_treeids[k], a.leaf_nodeids[k]);
            let Some(&i) = index.get(&key) else {
                return Err(TreeEnsembleError::Structure {
                    tree: key.0,
                    node: key.1,
                    reason: "a leaf weight names a node that does not exist".into(),
                });
            };
            let id = a.leaf_ids[k];
            if !(0..n_outputs as i64).contains(&id) {
                return Err(attr_err(
                    "class_ids/target_ids",
                    format!("id {id} out of range for {n_outputs} outputs"),
                ));
            }
            let i = i as usize;
            if nodes[i].flags & 0xF != LEAF {
                continue; // onnxruntime ignores weights on branch nodes (old onnxmltools).
            }
            if !weighted[i] {
                weighted[i] = true;
                first_weight[i] = weights.len() as u32;
            }
            weight_count[i] += 1;
            weights.push((id as u32, a.leaf_weights[k]));
        }
        for i in 0..n {
            if nodes[i].flags & 0xF == LEAF {
                nodes[i].true_child = if weighted[i] { first_weight[i] } else { 0 };
                nodes[i].false_child = weight_count[i];
                if weighted[i] {
                    // For one-target regressors the leaf's value is its first weight.
                    nodes[i].value = weights[first_weight[i] as usize].1;
                }
            }
        }

        // Roots: the first node of each run of equal tree ids.
        let mut roots = vec![];
        for i in 0..n {
            if i == 0 || a.nodes_treeids[i] != a.nodes_treeids[i - 1] {
                roots.push(i as u32);
            }
        }
        check_acyclic(&nodes, &roots, a)?;

        let base_ok = match &a.task {
            Task::Classifier(_) if n_outputs == 2 => a.base_values.len() <= 2,
            _ => a.base_values.is_empty() || a.base_values.len() == n_outputs,
        };
        if !base_ok {
            return Err(attr_err(
                "base_values",
                format!("{} values for {n_outputs} outputs", a.base_values.len()),
            ));
        }
        let classes: std::collections::HashSet<i64> = a.leaf_ids.iter().copied().collect();
        let binary_case =
            matches!(a.task, Task::Classifier(_)) && n_outputs == 2 && classes.len() == 1;
        if matches!(a.task, Task::Classifier(_))
            && n_outputs == 2
            && a.post_transform == PostTransform::Probit
            && a.base_values.len() < 2
        {
            return Err(TreeEnsembleError::Unsupported(
                "PROBIT on a two-class classifier without two base values: onnxruntime writes \
                 one score of two"
                    .into(),
            ));
        }
        let packed = Packed::build(&nodes, &roots, &weights, n_outputs, n_features);
        Ok(Self {
            nodes,
            roots,
            weights,
            n_outputs,
            n_features,
            base_values: a.base_values.clone(),
            post_transform: a.post_transform,
            task: a.task.clone(),
            binary_case,
            weights_all_positive: a.leaf_weights.iter().all(|w| *w >= 0.0),
            packed,
        })
    }

    /// Classes (classifier) or targets (regressor): the width of the scores output.
    pub fn n_outputs(&self) -> usize {
        self.n_outputs
    }

    /// The number of input features the trees read (highest feature id + 1).
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// What the ensemble predicts.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The leaf `row` reaches from `root`, node by node (the layout of
    /// `self.nodes`, every comparison mode).
    #[inline]
    fn leaf(&self, root: u32, row: &[f32]) -> &Node {
        let mut node = &self.nodes[root as usize];
        loop {
            let mode = node.flags & 0xF;
            if mode == LEAF {
                return node;
            }
            let x = row[node.feature as usize];
            let t = node.value;
            let go = match mode {
                0 => x <= t,
                1 => x < t,
                2 => x >= t,
                3 => x > t,
                4 => x == t,
                _ => x != t,
            } || (node.flags & MISSING_TRUE != 0 && x.is_nan());
            node = &self.nodes[if go {
                node.true_child
            } else {
                node.false_child
            } as usize];
        }
    }

    /// Evaluates `x` (`[n_rows, n_features]` row-major, `n_features` ≥
    /// [`Self::n_features`], `NaN` = missing) into `scores` (`[n_rows, n_outputs]`) and,
    /// for a classifier, `labels` (`[n_rows]`: the int64 label, or the index into the
    /// string labels). No allocation per row.
    ///
    /// # Errors
    /// When the slices' lengths do not fit `n_rows`.
    pub fn eval(
        &self,
        x: &[f32],
        n_features: usize,
        scores: &mut [f32],
        labels: &mut [i64],
    ) -> Result<(), String> {
        if n_features < self.n_features || (n_features == 0 && !x.is_empty()) {
            return Err(format!(
                "the trees read feature {} but rows have {n_features} features",
                self.n_features.saturating_sub(1)
            ));
        }
        let n_rows = if n_features == 0 {
            0
        } else {
            x.len() / n_features
        };
        let c = self.n_outputs;
        if x.len() != n_rows * n_features || scores.len() != n_rows * c {
            return Err(format!(
                "{} inputs, {} scores for {n_rows} rows",
                x.len(),
                scores.len()
            ));
        }
        let classifier = matches!(self.task, Task::Classifier(_));
        if classifier && labels.len() != n_rows {
            return Err(format!("{} labels for {n_rows} rows", labels.len()));
        }
        // Tree by tree over a block of rows: one tree's nodes stay in cache
        // while every row of the block walks it. Each row still adds its
        // trees' weights in tree order, so the sums equal a row-by-row walk.
        let block = BLOCK.min(n_rows);
        let mut has = vec![false; block * c];
        // Blocks of PACKED_MIN_ROWS rows and more walk the packed layout,
        // reading the block transposed (`[width, BLOCK]`).
        let packed = self.packed.as_ref().filter(|_| n_rows >= PACKED_MIN_ROWS);
        let mut xt = packed.map_or_else(Vec::new, |p| vec![0f32; p.width * BLOCK]);
        let mut start = 0;
        while start < n_rows {
            let nb = BLOCK.min(n_rows - start);
            let xs = &x[start * n_features..(start + nb) * n_features];
            let packed = packed.filter(|_| nb >= PACKED_MIN_ROWS);
            if let Some(p) = packed {
                p.transpose(xs, n_features, &mut xt);
            }
            let rows = Rows {
                xs,
                n_features,
                walked: &xt,
                packed,
            };
            let out = &mut scores[start * c..(start + nb) * c];
            let has = &mut has[..nb * c];
            match self.task {
                Task::Regressor {
                    n_targets: 1,
                    aggregate,
                } => self.one_target_block(&rows, aggregate, out),
                Task::Regressor { aggregate, .. } => {
                    self.accumulate_block(&rows, aggregate, out, has);
                    for (o, h) in out.chunks_exact_mut(c).zip(has.chunks_exact(c)) {
                        self.finish_targets(aggregate, o, h);
                    }
                }
                Task::Classifier(_) => {
                    self.accumulate_block(&rows, Aggregate::Sum, out, has);
                    for (r, (o, h)) in out
                        .chunks_exact_mut(c)
                        .zip(has.chunks_exact_mut(c))
                        .enumerate()
                    {
                        labels[start + r] = self.finish_classes(o, h);
                    }
                }
            }
            start += nb;
        }
        Ok(())
    }

    /// Each row of `rows`: its leaves' weights combined by `aggregate` per
    /// output into `acc`, `has` marking the outputs a leaf scored
    /// (`[nb, n_outputs]`); tree by tree over the rows.
    fn accumulate_block(
        &self,
        rows: &Rows,
        aggregate: Aggregate,
        acc: &mut [f32],
        has: &mut [bool],
    ) {
        let c = self.n_outputs;
        let nb = acc.len() / c;
        acc.fill(0.0);
        has.fill(false);
        let mut leaves = [0u32; BLOCK];
        let leaves = &mut leaves[..nb];
        if let (Some(p), Some(d), Aggregate::Sum | Aggregate::Average) = (
            rows.packed,
            rows.packed.and_then(|p| p.dense.as_ref()),
            aggregate,
        ) {
            for (t, &(from, to)) in d.tree_outputs.iter().enumerate() {
                p.walk(t, rows.walked, leaves);
                let outputs = &d.outputs[from as usize..to as usize];
                let m = outputs.len();
                if m == c {
                    // Every output, in order.
                    match c {
                        2 => d.add_all::<2>(leaves, acc),
                        3 => d.add_all::<3>(leaves, acc),
                        4 => d.add_all::<4>(leaves, acc),
                        5 => d.add_all::<5>(leaves, acc),
                        6 => d.add_all::<6>(leaves, acc),
                        7 => d.add_all::<7>(leaves, acc),
                        8 => d.add_all::<8>(leaves, acc),
                        _ => {
                            for (acc, &l) in acc.chunks_exact_mut(c).zip(leaves.iter()) {
                                let o = d.offset[l as usize] as usize;
                                for (a, w) in acc.iter_mut().zip(&d.weights[o..o + c]) {
                                    *a += w;
                                }
                            }
                        }
                    }
                } else if m == 1 {
                    let i = outputs[0] as usize;
                    for (acc, &l) in acc.chunks_exact_mut(c).zip(leaves.iter()) {
                        acc[i] += d.weights[d.offset[l as usize] as usize];
                    }
                } else {
                    for (acc, &l) in acc.chunks_exact_mut(c).zip(leaves.iter()) {
                        let o = d.offset[l as usize] as usize;
                        for (&i, w) in outputs.iter().zip(&d.weights[o..o + m]) {
                            acc[i as usize] += w;
                        }
                    }
                }
            }
            for h in has.chunks_exact_mut(c) {
                h.copy_from_slice(&d.scored);
            }
            return;
        }
        let Some(p) = rows.packed else {
            return self.accumulate_by_node(rows.xs, rows.n_features, aggregate, acc, has);
        };
        for t in 0..self.roots.len() {
            p.walk(t, rows.walked, leaves);
            for (r, &l) in leaves.iter().enumerate() {
                let leaf = &self.nodes[p.node_of[l as usize] as usize];
                let (acc, has) = (&mut acc[r * c..(r + 1) * c], &mut has[r * c..(r + 1) * c]);
                self.add_leaf(leaf, aggregate, acc, has);
            }
        }
    }

    /// [`Self::accumulate_block`] node by node: each row of `xs`
    /// (`[nb, n_features]`) walks each tree in turn.
    fn accumulate_by_node(
        &self,
        xs: &[f32],
        n_features: usize,
        aggregate: Aggregate,
        acc: &mut [f32],
        has: &mut [bool],
    ) {
        let c = self.n_outputs;
        for &root in &self.roots {
            for (r, row) in xs.chunks_exact(n_features).enumerate() {
                let leaf = self.leaf(root, row);
                let (acc, has) = (&mut acc[r * c..(r + 1) * c], &mut has[r * c..(r + 1) * c]);
                self.add_leaf(leaf, aggregate, acc, has);
            }
        }
    }

    /// Combines `leaf`'s weights by `aggregate` into one row's scores
    /// (`acc`, `has`: `[n_outputs]`).
    #[inline(always)]
    fn add_leaf(&self, leaf: &Node, aggregate: Aggregate, acc: &mut [f32], has: &mut [bool]) {
        let start = leaf.true_child as usize;
        for &(i, w) in &self.weights[start..start + leaf.false_child as usize] {
            let i = i as usize;
            match aggregate {
                Aggregate::Sum | Aggregate::Average => acc[i] += w,
                Aggregate::Min => {
                    if !has[i] || w < acc[i] {
                        acc[i] = w
                    }
                }
                Aggregate::Max => {
                    if !has[i] || w > acc[i] {
                        acc[i] = w
                    }
                }
            }
            has[i] = true;
        }
    }

    /// onnxruntime's one-output path, each row of `rows` into `out` (`[nb]`):
    /// each leaf's first weight, `base_values[0]`, only PROBIT; tree by tree
    /// over the rows.
    fn one_target_block(&self, rows: &Rows, aggregate: Aggregate, out: &mut [f32]) {
        out.fill(0.0);
        let combine = |s: &mut f32, w: f32, has: bool| match aggregate {
            Aggregate::Sum | Aggregate::Average => *s += w,
            Aggregate::Min => *s = if !has || w < *s { w } else { *s },
            Aggregate::Max => *s = if !has || w > *s { w } else { *s },
        };
        match rows.packed {
            None => {
                for (t, &root) in self.roots.iter().enumerate() {
                    for (s, row) in out.iter_mut().zip(rows.xs.chunks_exact(rows.n_features)) {
                        combine(s, self.leaf(root, row).value, t > 0);
                    }
                }
            }
            Some(p) => {
                let mut leaves = [0u32; BLOCK];
                let leaves = &mut leaves[..out.len()];
                for t in 0..self.roots.len() {
                    p.walk(t, rows.walked, leaves);
                    for (s, &l) in out.iter_mut().zip(leaves.iter()) {
                        combine(s, self.nodes[p.node_of[l as usize] as usize].value, t > 0);
                    }
                }
            }
        }
        let origin = self.base_values.first().copied().unwrap_or(0.0);
        for s in out.iter_mut() {
            let v = match aggregate {
                Aggregate::Average => *s / self.roots.len() as f32 + origin,
                _ => *s + origin,
            };
            *s = if self.post_transform == PostTransform::Probit {
                probit(v)
            } else {
                v
            };
        }
    }

    fn finish_targets(&self, aggregate: Aggregate, out: &mut [f32], has: &[bool]) {
        let use_base = self.base_values.len() == out.len();
        for (i, s) in out.iter_mut().enumerate() {
            let b = if use_base { self.base_values[i] } else { 0.0 };
            *s = match aggregate {
                Aggregate::Average => *s / self.roots.len() as f32 + b,
                Aggregate::Sum => *s + b,
                Aggregate::Min | Aggregate::Max => b + if has[i] { *s } else { 0.0 },
            };
        }
        unscored_to_zero(out, has);
        transform(self.post_transform, out);
    }

    /// onnxruntime's `TreeAggregatorClassifier::FinalizeScores`; returns the label.
    fn finish_classes(&self, out: &mut [f32], has: &mut [bool]) -> i64 {
        let Task::Classifier(labels) = &self.task else {
            return 0;
        };
        let label_at = |k: usize| match labels {
            ClassLabels::Int64(v) => v[k],
            ClassLabels::Strings(_) => k as i64,
        };
        if out.len() > 2 {
            for (k, b) in self.base_values.iter().enumerate() {
                out[k] += b;
                has[k] = true;
            }
            let mut best: Option<usize> = None;
            for k in 0..out.len() {
                if has[k] && best.is_none_or(|b| out[k] > out[b]) {
                    best = Some(k);
                }
            }
            unscored_to_zero(out, has);
            transform(self.post_transform, out);
            return label_at(best.unwrap_or(0));
        }
        // Two classes.
        let mut second = None; // onnxruntime's write_additional_scores
        let mut one_score = false; // scores shrunk to one value
        match self.base_values.len() {
            2 => {
                if has[1] {
                    out[1] = self.base_values[1] + out[0];
                    out[0] = -out[1];
                } else {
                    out[1] += self.base_values[1];
                    out[0] += self.base_values[0];
                }
            }
            1 => {
                out[0] += self.base_values[0];
                one_score = !has[1];
            }
            _ => {
                second = Some(3);
                one_score = !has[1];
            }
        }
        let pos = if !one_score && has[1] {
            out[1]
        } else if has[0] {
            out[0]
        } else {
            0.0
        };
        let label = if self.binary_case {
            let (w, k) = if self.weights_all_positive {
                if pos > 0.5 {
                    (0, 1)
                } else {
                    (1, 0)
                }
            } else if pos > 0.0 {
                (2, 1)
            } else {
                (3, 0)
            };
            second = Some(w);
            label_at(k)
        } else {
            i64::from(pos > 0.0)
        };
        if !one_score {
            unscored_to_zero(out, has);
            transform(self.post_transform, out);
            return label;
        }
        let s = if has[0] { out[0] } else { 0.0 };
        match second {
            // onnxruntime 1.32 applies LOGISTIC this way whatever the weights' signs.
            Some(_) if self.post_transform == PostTransform::Logistic => {
                out[0] = logistic(-s);
                out[1] = logistic(s);
            }
            Some(0) | Some(1) => {
                out[0] = 1.0 - s;
                out[1] = s;
            }
            Some(_) => {
                out[0] = -s;
                out[1] = s;
            }
            // onnxruntime writes only the first score; the second is left at 0 here.
            None => out[1] = 0.0,
        }
        label
    }
}

/// A block of rows as the walks read them: `xs` (`[nb, n_features]`) for the
/// node-by-node walk; with `packed`, `walked` for [`Packed::walk`]: the block
/// transposed by [`Packed::transpose`] (`[width, BLOCK]`).
struct Rows<'a> {
    xs: &'a [f32],
    n_features: usize,
    walked: &'a [f32],
    packed: Option<&'a Packed>,
}

/// The fewest rows a block walks in the packed layout: below, the
/// node-by-node walk is faster (a packed walk takes every tree to its deepest
/// level, in groups of at least 4 rows).
const PACKED_MIN_ROWS: usize = 6;

/// One node of [`Packed`]: the walk goes on to `next + 1` when
/// `x' < value`, to `next` otherwise (NaN included); `x'` is the row's value
/// at `feature` (a position in a column of the transposed block). A leaf has
/// a NaN `value` and its own index as `next`, so a walk that reached it stays.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    value: f32,
    feature: u32,
    next: u32,
}

/// The batch layout: every node's test rewritten as one strict comparison,
/// `x' < value`, where `x'` is the feature or its negation (the transposed
/// block holds `-x[f]` at row `n_features + f`), and the two children side by
/// side, the one NaN goes to first. Exact in `f32` for every input:
///
/// * `x <= t` is `x < next_up(t)`, `x > t` is `-x < -t`, `x >= t` is
///   `-x < next_up(-t)` (no float lies strictly between `t` and `next_up(t)`);
///   a NaN `x` fails each, as it fails the original test;
/// * a node whose missing values go to the true branch (NaN true) tests the
///   complement (`x <= t` becomes `x > t`) with its children swapped, so NaN,
///   failing every comparison, again takes the first.
///
/// A walk then takes one comparison and one addition per level, with no
/// branch, so [`Packed::walk`] steps all the rows of a block one level at a
/// time and their loads overlap (the node-by-node walk waits on a mispredicted
/// branch at about every other level). Not built for `BRANCH_EQ`/`BRANCH_NEQ`,
/// a `BRANCH_LEQ` threshold of `+inf` (or `BRANCH_GTE` of `-inf`), or trees
/// sharing subtrees that would more than double in size.
#[derive(Debug, Clone, PartialEq)]
struct Packed {
    steps: Vec<Step>,
    /// Per tree: its root's step and its depth (levels from the root to its
    /// deepest leaf).
    trees: Vec<(u32, u32)>,
    /// Per step: the node of `TreeEnsemble::nodes` it stands for.
    node_of: Vec<u32>,
    /// Whether some step reads a negated feature.
    negated: bool,
    /// Rows of the transposed block: the features the trees read, twice
    /// that when `negated`.
    width: usize,
    /// The leaves' weights laid out per tree, when each tree's leaves all score
    /// the same outputs, each once.
    dense: Option<Dense>,
}

/// Leaf weights for summing without indirection: tree `t` scores
/// `outputs[tree_outputs[t].0..tree_outputs[t].1]`, a leaf step `s` the
/// weights `weights[offset[s]..]` in that order.
#[derive(Debug, Clone, PartialEq)]
struct Dense {
    tree_outputs: Vec<(u32, u32)>,
    outputs: Vec<u32>,
    offset: Vec<u32>,
    weights: Vec<f32>,
    /// The outputs some tree scores: every row's `has` (each row reaches a
    /// leaf in every tree).
    scored: Vec<bool>,
}

impl Packed {
    /// Lays out `nodes` (the compiled ensemble) for [`Packed::walk`], or `None`
    /// when a node's test does not fit it (see [`Packed`]).
    fn build(
        nodes: &[Node],
        roots: &[u32],
        weights: &[(u32, f32)],
        n_outputs: usize,
        n_features: usize,
    ) -> Option<Self> {
        if n_features == 0 || 2 * n_features * BLOCK > u32::MAX as usize {
            return None;
        }
        let limit = 2 * nodes.len();
        let mut steps: Vec<Step> = Vec::with_capacity(nodes.len());
        let mut node_of: Vec<u32> = Vec::with_capacity(nodes.len());
        let mut trees = Vec::with_capacity(roots.len());
        let mut negated = false;
        let mut queue = std::collections::VecDeque::new();
        for &root in roots {
            let first = steps.len() as u32;
            steps.push(Step {
                value: f32::NAN,
                feature: 0,
                next: first,
            });
            node_of.push(root);
            queue.push_back((first, 0u32));
            let mut depth = 0;
            while let Some((at, level)) = queue.pop_front() {
                let node = nodes[node_of[at as usize] as usize];
                let mode = node.flags & 0xF;
                if mode == LEAF {
                    depth = depth.max(level);
                    continue;
                }
                let missing_true = node.flags & MISSING_TRUE != 0;
                // The test whose success leads to the second child (modes
                // 0..=3: <=, <, >=, >; with NaN to the true branch, the
                // complement for the other values: >, >=, <, <=).
                let test = if missing_true {
                    [3, 2, 1, 0].get(mode as usize)?
                } else {
                    &mode
                };
                let t = node.value;
                let (minus, value) = match test {
                    0 if t != f32::INFINITY => (false, t.next_up()),
                    1 => (false, t),
                    2 if t != f32::NEG_INFINITY => (true, (-t).next_up()),
                    3 => (true, -t),
                    _ => return None,
                };
                let (first_child, second_child) = if missing_true {
                    (node.true_child, node.false_child)
                } else {
                    (node.false_child, node.true_child)
                };
                if steps.len() + 2 > limit || steps.len() + 2 > u32::MAX as usize {
                    return None;
                }
                let next = steps.len() as u32;
                for (k, child) in [first_child, second_child].into_iter().enumerate() {
                    let s = next + k as u32;
                    steps.push(Step {
                        value: f32::NAN,
                        feature: 0,
                        next: s,
                    });
                    node_of.push(child);
                    queue.push_back((s, level + 1));
                }
                negated |= minus;
                steps[at as usize] = Step {
                    value,
                    feature: (node.feature + if minus { n_features as u32 } else { 0 })
                        * BLOCK as u32,
                    next,
                };
            }
            trees.push((first, depth));
        }
        steps.shrink_to_fit();
        node_of.shrink_to_fit();
        let dense = Dense::build(nodes, &steps, &trees, &node_of, weights, n_outputs);
        Some(Self {
            width: if negated { 2 * n_features } else { n_features },
            steps,
            trees,
            node_of,
            negated,
            dense,
        })
    }

    /// `xs` (`[nb, n_features]`) into `xt` (`[width, BLOCK]`): row `r`'s
    /// feature `f` at `f BLOCK + r`, its negation (when read) at
    /// `(n + f) BLOCK + r`, `n` the features the trees read.
    fn transpose(&self, xs: &[f32], n_features: usize, xt: &mut [f32]) {
        let n = if self.negated {
            self.width / 2
        } else {
            self.width
        };
        let (plain, minus) = xt.split_at_mut(n * BLOCK);
        for (r, row) in xs.chunks_exact(n_features).enumerate() {
            for (f, &v) in row[..n].iter().enumerate() {
                plain[f * BLOCK + r] = v;
            }
            if self.negated {
                for (f, &v) in row[..n].iter().enumerate() {
                    minus[f * BLOCK + r] = -v;
                }
            }
        }
    }

    /// Walks tree `t` for the rows of `xt` (`[width, BLOCK]`, as
    /// [`Rows::walked`]): `at` (`[n]`) ends at each row's leaf step. Rows go
    /// in groups of 16 (8 or 4 for the last few), each group one level at a
    /// time; a group's rows past `n` walk what `xt` holds there.
    fn walk(&self, t: usize, xt: &[f32], at: &mut [u32]) {
        let (root, depth) = self.trees[t];
        assert!(xt.len() == self.width * BLOCK && at.len() <= BLOCK);
        let n = at.len();
        let mut all = [0u32; BLOCK];
        let mut g = 0;
        while g < n {
            // g is a multiple of 16 before the last group, so the group ends
            // within BLOCK.
            let lanes = match n - g {
                1..=4 => self.walk_group::<4>(root, depth, &xt[g..], &mut all[g..]),
                5..=8 => self.walk_group::<8>(root, depth, &xt[g..], &mut all[g..]),
                _ => self.walk_group::<16>(root, depth, &xt[g..], &mut all[g..]),
            };
            g += lanes;
        }
        at.copy_from_slice(&all[..n]);
    }

    /// One group of `L` rows: columns `0..L` of `xt` (`[width, BLOCK]` from
    /// the group's first row on) into `at[..L]`; returns `L`.
    #[inline(always)]
    fn walk_group<const L: usize>(
        &self,
        root: u32,
        depth: u32,
        xt: &[f32],
        at: &mut [u32],
    ) -> usize {
        let mut idx = [root; L];
        let xt = &xt[..(self.width - 1) * BLOCK + L];
        for _ in 0..depth {
            for (r, i) in idx.iter_mut().enumerate() {
                // SAFETY: every `next` is a step (checked in `build`), and
                // every `feature` + r < (width - 1) BLOCK + L = xt's length.
                let s = unsafe { *self.steps.get_unchecked(*i as usize) };
                let x = unsafe { *xt.get_unchecked(s.feature as usize + r) };
                *i = s.next + u32::from(x < s.value);
            }
        }
        at[..L].copy_from_slice(&idx);
        L
    }
}

impl Dense {
    /// Adds the weights of each row's leaf step (`leaves`) to its `N` scores
    /// (`acc`: `[rows, N]`), for a tree scoring every output.
    #[inline]
    fn add_all<const N: usize>(&self, leaves: &[u32], acc: &mut [f32]) {
        for (acc, &l) in acc.chunks_exact_mut(N).zip(leaves) {
            let o = self.offset[l as usize] as usize;
            let w: &[f32; N] = self.weights[o..o + N].try_into().expect("N weights");
            let acc: &mut [f32; N] = acc.try_into().expect("N scores");
            for k in 0..N {
                acc[k] += w[k];
            }
        }
    }

    fn build(
        nodes: &[Node],
        steps: &[Step],
        trees: &[(u32, u32)],
        node_of: &[u32],
        weights: &[(u32, f32)],
        n_outputs: usize,
    ) -> Option<Self> {
        let mut tree_outputs = Vec::with_capacity(trees.len());
        let mut outputs: Vec<u32> = vec![];
        let mut offset = vec![0u32; steps.len()];
        let mut dense = vec![];
        let mut scored = vec![false; n_outputs];
        for (t, &(first, _)) in trees.iter().enumerate() {
            let end = trees.get(t + 1).map_or(steps.len(), |&(f, _)| f as usize);
            let from = outputs.len();
            let mut known = false;
            for s in first as usize..end {
                let node = &nodes[node_of[s] as usize];
                if node.flags & 0xF != LEAF {
                    continue;
                }
                let start = node.true_child as usize;
                let ws = &weights[start..start + node.false_child as usize];
                let mut ids: Vec<u32> = ws.iter().map(|&(i, _)| i).collect();
                ids.sort_unstable();
                if ids.windows(2).any(|w| w[0] == w[1]) {
                    return None; // one output twice: its weights add in list order
                }
                if !known {
                    outputs.extend_from_slice(&ids);
                    known = true;
                } else if outputs[from..] != ids[..] {
                    return None;
                }
                offset[s] = u32::try_from(dense.len()).ok()?;
                for &i in &ids {
                    dense.extend(ws.iter().filter(|&&(j, _)| j == i).map(|&(_, w)| w));
                }
            }
            for &i in &outputs[from..] {
                scored[i as usize] = true;
            }
            tree_outputs.push((from as u32, outputs.len() as u32));
        }
        // Grown by pushes: give back the spare capacity (it stays for the
        // session's life; about 215 KB on a 300-tree forest).
        outputs.shrink_to_fit();
        dense.shrink_to_fit();
        Some(Self {
            tree_outputs,
            outputs,
            offset,
            weights: dense,
            scored,
        })
    }
}

/// Every walk from a root ends at a leaf: no node is its own ancestor.
fn check_acyclic(
    nodes: &[Node],
    roots: &[u32],
    a: &TreeEnsembleAttributes,
) -> Result<(), TreeEnsembleError> {
    // 0 = unseen, 1 = on the current path, 2 = done.
    let mut state = vec![0u8; nodes.len()];
    let mut stack: Vec<(u32, u8)> = vec![];
    for &root in roots {
        if state[root as usize] != 0 {
            continue;
        }
        stack.push((root, 0));
        state[root as usize] = 1;
        while let Some(&mut (i, ref mut next)) = stack.last_mut() {
            let node = nodes[i as usize];
            let child = if node.flags & 0xF == LEAF {
                None
            } else {
                match *next {
                    0 => Some(node.true_child),
                    1 => Some(node.false_child),
                    _ => None,
                }
            };
            *next += 1;
            match child {
                None => {
                    state[i as usize] = 2;
                    stack.pop();
                }
                Some(c) => match state[c as usize] {
                    0 => {
                        state[c as usize] = 1;
                        stack.push((c, 0));
                    }
                    1 => {
                        return Err(TreeEnsembleError::Structure {
                            tree: a.nodes_treeids[i as usize],
                            node: a.nodes_nodeids[i as usize],
                            reason: format!("cycle through node {}", a.nodes_nodeids[c as usize]),
                        })
                    }
                    _ => {}
                },
            }
        }
    }
    Ok(())
}

/// onnxruntime writes a score no tree (or base value of a multiclass classifier) gave a
/// value to as 0, whatever was added to it (`ScoreValue`'s conversion to float).
fn unscored_to_zero(out: &mut [f32], has: &[bool]) {
    for (s, h) in out.iter_mut().zip(has) {
        if !h {
            *s = 0.0;
        }
    }
}

/// onnxruntime's `ComputeLogistic`.
fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

/// onnxruntime's `ComputeProbit`: `sqrt(2) * erfinv(2x - 1)` with its approximation of
/// erfinv (Winitzki, a = 0.147).
fn probit(x: f32) -> f32 {
    let y = 2.0 * x - 1.0;
    let sgn = if y < 0.0 { -1.0f32 } else { 1.0 };
    let l = ((1.0 - y) * (1.0 + y)).ln();
    let v = 2.0 / (std::f32::consts::PI * 0.147) + 0.5 * l;
    let v2 = 1.0 / 0.147 * l;
    let v3 = -v + (v * v - v2).sqrt();
    std::f32::consts::SQRT_2 * sgn * v3.sqrt()
}

/// onnxruntime's `write_scores` for two or more scores.
fn transform(post: PostTransform, s: &mut [f32]) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => s.iter_mut().for_each(|v| *v = logistic(*v)),
        PostTransform::Probit => s.iter_mut().for_each(|v| *v = probit(*v)),
        PostTransform::Softmax => {
            let max = s.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
            let mut sum = 0f32;
            for v in s.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            s.iter_mut().for_each(|v| *v /= sum);
        }
        PostTransform::SoftmaxZero => {
            let max = s.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
            let exp_neg_max = (-max).exp();
            let mut sum = 0f32;
            for v in s.iter_mut() {
                if *v > 0.0000001 || *v < -0.0000001 {
                    *v = (*v - max).exp();
                    sum += *v;
                } else {
                    *v *= exp_neg_max;
                }
            }
            s.iter_mut().for_each(|v| *v /= sum);
        }
    }
}

// ---- ONNX parsing --------------------------------------------------------------------

fn ints(node: &NodeProto, name: &str) -> TractResult<Vec<i64>> {
    Ok(node
        .get_attr_opt_slice::<i64>(name)?
        .map(<[i64]>::to_vec)
        .unwrap_or_default())
}

/// A FLOATS attribute, or its `*_as_tensor` variant (float or double), or empty.
fn floats(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Vec<f32>> {
    let plain = node.get_attr_opt_slice::<f32>(name)?;
    let tensor_name = format!("{name}_as_tensor");
    let tensor = node.get_attr_opt::<&tract_onnx::pb::TensorProto>(&tensor_name)?;
    match (plain, tensor) {
        (Some(_), Some(_)) => bail!("both {name} and {tensor_name} are set"),
        (Some(v), None) => Ok(v.to_vec()),
        (None, Some(t)) => {
            let t = ctx
                .load_tensor(t)
                .with_context(|| format!("attribute {tensor_name}"))?;
            let t = t.cast_to::<f32>()?;
            Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        }
        (None, None) => Ok(vec![]),
    }
}

/// Reads a TreeEnsembleClassifier (`classifier`) or TreeEnsembleRegressor node's
/// attributes.
///
/// # Errors
/// An attribute of the wrong type, or an unknown mode, post transform or aggregate.
pub fn parse_attributes(
    ctx: &ParsingContext,
    node: &NodeProto,
    classifier: bool,
) -> TractResult<TreeEnsembleAttributes> {
    let prefix = if classifier { "class" } else { "target" };
    let task = if classifier {
        let ints = node.get_attr_opt_slice::<i64>("classlabels_int64s")?;
        let strs = node.get_attr_opt_tvec::<String>("classlabels_strings")?;
        Task::Classifier(match (ints, strs) {
            (Some(v), None) => ClassLabels::Int64(v.to_vec()),
            (None, Some(v)) => ClassLabels::Strings(v.into_vec()),
            _ => bail!("exactly one of classlabels_int64s and classlabels_strings must be set"),
        })
    } else {
        let n: i64 = node.get_attr_opt("n_targets")?.unwrap_or(0);
        let agg = node
            .get_attr_opt::<&str>("aggregate_function")?
            .unwrap_or("SUM");
        Task::Regressor {
            n_targets: usize::try_from(n).map_err(|_| format_err!("n_targets {n} is negative"))?,
            aggregate: Aggregate::parse(agg)
                .ok_or_else(|| format_err!("unknown aggregate_function {agg:?}"))?,
        }
    };
    let modes = node
        .get_attr_opt_tvec::<&str>("nodes_modes")?
        .unwrap_or_default()
        .iter()
        .map(|m| BranchMode::parse(m).ok_or_else(|| format_err!("unknown node mode {m:?}")))
        .collect::<TractResult<Vec<_>>>()?;
    let post = node
        .get_attr_opt::<&str>("post_transform")?
        .unwrap_or("NONE");
    Ok(TreeEnsembleAttributes {
        task,
        nodes_treeids: ints(node, "nodes_treeids")?,
        nodes_nodeids: ints(node, "nodes_nodeids")?,
        nodes_featureids: ints(node, "nodes_featureids")?,
        nodes_values: floats(ctx, node, "nodes_values")?,
        nodes_modes: modes,
        nodes_truenodeids: ints(node, "nodes_truenodeids")?,
        nodes_falsenodeids: ints(node, "nodes_falsenodeids")?,
        nodes_missing_value_tracks_true: ints(node, "nodes_missing_value_tracks_true")?
            .iter()
            .map(|&v| v == 1)
            .collect(),
        leaf_treeids: ints(node, &format!("{prefix}_treeids"))?,
        leaf_nodeids: ints(node, &format!("{prefix}_nodeids"))?,
        leaf_ids: ints(node, &format!("{prefix}_ids"))?,
        leaf_weights: floats(ctx, node, &format!("{prefix}_weights"))?,
        base_values: floats(ctx, node, "base_values")?,
        post_transform: PostTransform::parse(post)
            .ok_or_else(|| format_err!("unknown post_transform {post:?}"))?,
    })
}

fn build(
    ctx: &ParsingContext,
    node: &NodeProto,
    classifier: bool,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = if classifier {
        "TreeEnsembleClassifier"
    } else {
        "TreeEnsembleRegressor"
    };
    let attrs = parse_attributes(ctx, node, classifier)
        .with_context(|| format!("{op} node {:?}", node.name))?;
    let ensemble =
        TreeEnsemble::compile(&attrs).map_err(|e| format_err!("{op} node {:?}: {e}", node.name))?;
    Ok((expand(TreeEnsembleExpansion(Arc::new(ensemble))), vec![]))
}

/// The tract op evaluating a compiled `ensemble` (used by the ml-opset-5
/// `TreeEnsemble` parser, [`crate::onnx::ml::tree_ensemble5`]).
pub fn into_op(ensemble: TreeEnsemble) -> (Box<dyn InferenceOp>, Vec<String>) {
    (expand(TreeEnsembleExpansion(Arc::new(ensemble))), vec![])
}

/// tract op builder for TreeEnsembleClassifier.
pub fn classifier_op(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, true)
}

/// tract op builder for TreeEnsembleRegressor.
pub fn regressor_op(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    build(ctx, node, false)
}

/// Registers both operators in `register`, replacing tract-onnx's.
pub fn register(register: &mut OnnxOpRegister) {
    register.insert("TreeEnsembleClassifier", classifier_op);
    register.insert("TreeEnsembleRegressor", regressor_op);
}

// ---- tract operators -----------------------------------------------------------------

/// The inference-time op: type rules, then wires [`TreeEnsembleOp`].
#[derive(Debug, Clone)]
struct TreeEnsembleExpansion(Arc<TreeEnsemble>);

impl Expansion for TreeEnsembleExpansion {
    fn name(&self) -> StaticName {
        "TreeEnsemble".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(match self.0.task {
            Task::Classifier(_) => 2,
            Task::Regressor { .. } => 1,
        })
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, self.nboutputs()?)?;
        s.equals(&inputs[0].rank, 2)?;
        let scores = &outputs[outputs.len() - 1];
        s.equals(&scores.datum_type, f32::datum_type())?;
        s.equals(&scores.rank, 2)?;
        s.equals(&scores.shape[0], &inputs[0].shape[0])?;
        s.equals(&scores.shape[1], self.0.n_outputs.to_dim())?;
        if let Task::Classifier(labels) = &self.0.task {
            let dt = match labels {
                ClassLabels::Int64(_) => i64::datum_type(),
                ClassLabels::Strings(_) => String::datum_type(),
            };
            s.equals(&outputs[0].datum_type, dt)?;
            s.equals(&outputs[0].rank, 1)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, TreeEnsembleOp(self.0.clone()), inputs)
    }
}

/// The typed op: evaluates a [`TreeEnsemble`] on `[N, F]` input.
#[derive(Debug, Clone)]
pub struct TreeEnsembleOp(pub Arc<TreeEnsemble>);

impl PartialEq for TreeEnsembleOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for TreeEnsembleOp {}

impl Op for TreeEnsembleOp {
    fn name(&self) -> StaticName {
        match self.0.task {
            Task::Classifier(_) => "TreeEnsembleClassifier".into(),
            Task::Regressor { .. } => "TreeEnsembleRegressor".into(),
        }
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} trees, {} nodes, {} outputs",
            self.0.n_trees(),
            self.0.nodes.len(),
            self.0.n_outputs
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for TreeEnsembleOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        crate::onnx::ml::clear_upper_vector_state();
        let input = input.cast_to::<f32>()?;
        let shape = input.shape();
        ensure!(
            shape.len() == 2,
            "input of rank {}, expected [N, F]",
            shape.len()
        );
        let (n, f) = (shape[0], shape[1]);
        let x = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let e = &self.0;
        let mut scores = vec![0f32; n * e.n_outputs];
        let mut labels = vec![0i64; n];
        e.eval(x, f, &mut scores, &mut labels)
            .map_err(|m| format_err!("{m}"))?;
        let scores = Tensor::from_shape(&[n, e.n_outputs], &scores)?.into_tvalue();
        Ok(match &e.task {
            Task::Regressor { .. } => tvec!(scores),
            Task::Classifier(ClassLabels::Int64(_)) => {
                tvec!(Tensor::from_shape(&[n], &labels)?.into_tvalue(), scores)
            }
            Task::Classifier(ClassLabels::Strings(names)) => {
                let strings: Vec<String> = labels
                    .iter()
                    .map(|&k| names.get(k as usize).cloned().unwrap_or_default())
                    .collect();
                tvec!(
                    tract_ndarray::Array1::from(strings)
                        .into_tensor()
                        .into_tvalue(),
                    scores
                )
            }
        })
    }
}

impl TypedOp for TreeEnsembleOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(
            shape.rank() == 2,
            "input of rank {}, expected [N, F]",
            shape.rank()
        );
        if let Ok(f) = shape[1].to_usize() {
            ensure!(
                f >= self.0.n_features,
                "the trees read feature {} but the input has {f} features",
                self.0.n_features - 1
            );
        }
        let n = shape[0].clone();
        let scores = f32::fact([n.clone(), self.0.n_outputs.to_dim()]);
        Ok(match &self.0.task {
            Task::Regressor { .. } => tvec!(scores),
            Task::Classifier(ClassLabels::Int64(_)) => tvec!(i64::fact([n]), scores),
            Task::Classifier(ClassLabels::Strings(_)) => tvec!(String::fact([n]), scores),
        })
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3-node tree: node 0 compares feature 0 with 1.0 under `mode`; true → node 1
    /// (weight 10), false → node 2 (weight 20); plus `extra` trees of the same shape
    /// with weights scaled by their index + 1.
    fn stump(mode: BranchMode, trees: usize, task: Task) -> TreeEnsembleAttributes {
        let mut a = TreeEnsembleAttributes {
            task,
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
            post_transform: PostTransform::None,
        };
        for t in 0..trees as i64 {
            for (n, m) in [mode, BranchMode::Leaf, BranchMode::Leaf]
                .into_iter()
                .enumerate()
            {
                a.nodes_treeids.push(t);
                a.nodes_nodeids.push(n as i64);
                a.nodes_featureids.push(0);
                a.nodes_values.push(1.0);
                a.nodes_modes.push(m);
                a.nodes_truenodeids.push(1);
                a.nodes_falsenodeids.push(2);
            }
            for (n, w) in [(1, 10.0), (2, 20.0)] {
                a.leaf_treeids.push(t);
                a.leaf_nodeids.push(n);
                a.leaf_ids.push(0);
                a.leaf_weights.push(w * (t + 1) as f32);
            }
        }
        a
    }

    fn regressor(aggregate: Aggregate) -> Task {
        Task::Regressor {
            n_targets: 1,
            aggregate,
        }
    }

    fn run(e: &TreeEnsemble, x: &[f32]) -> Vec<f32> {
        let mut s = vec![0.0; x.len() * e.n_outputs()];
        let mut l = vec![0; x.len()];
        e.eval(x, 1, &mut s, &mut l).unwrap();
        s
    }

    #[test]
    fn each_branch_mode_compares_as_specified() {
        let x = [0.5, 1.0, 1.5, f32::NAN];
        let cases = [
            (BranchMode::Leq, [10.0, 10.0, 20.0, 20.0]),
            (BranchMode::Lt, [10.0, 20.0, 20.0, 20.0]),
            (BranchMode::Gte, [20.0, 10.0, 10.0, 20.0]),
            (BranchMode::Gt, [20.0, 20.0, 10.0, 20.0]),
            (BranchMode::Eq, [20.0, 10.0, 20.0, 20.0]),
            (BranchMode::Neq, [10.0, 20.0, 10.0, 10.0]),
        ];
        for (mode, want) in cases {
            let e = TreeEnsemble::compile(&stump(mode, 1, regressor(Aggregate::Sum))).unwrap();
            assert_eq!(run(&e, &x), want, "{mode:?}");
        }
    }

    #[test]
    fn missing_value_tracks_true_sends_nan_to_the_true_branch() {
        let mut a = stump(BranchMode::Leq, 1, regressor(Aggregate::Sum));
        a.nodes_missing_value_tracks_true = vec![true, false, false];
        let e = TreeEnsemble::compile(&a).unwrap();
        assert_eq!(run(&e, &[f32::NAN, 2.0]), [10.0, 20.0]);
    }

    #[test]
    fn each_aggregate_combines_trees() {
        // Three trees: x = 0.5 reaches weights 10, 20, 30; x = 2 reaches 20, 40, 60.
        let cases = [
            (Aggregate::Sum, [60.0, 120.0]),
            (Aggregate::Average, [20.0, 40.0]),
            (Aggregate::Min, [10.0, 20.0]),
            (Aggregate::Max, [30.0, 60.0]),
        ];
        for (agg, want) in cases {
            let mut a = stump(BranchMode::Leq, 3, regressor(agg));
            let e = TreeEnsemble::compile(&a).unwrap();
            assert_eq!(run(&e, &[0.5, 2.0]), want, "{agg:?}");
            // The same through the several-targets path (2 targets, target 1 unused).
            a.task = Task::Regressor {
                n_targets: 2,
                aggregate: agg,
            };
            let e = TreeEnsemble::compile(&a).unwrap();
            assert_eq!(
                run(&e, &[0.5, 2.0]),
                [want[0], 0.0, want[1], 0.0],
                "{agg:?} x2"
            );
        }
    }

    #[test]
    fn base_values_add_after_averaging() {
        let mut a = stump(BranchMode::Leq, 2, regressor(Aggregate::Average));
        a.base_values = vec![1.0];
        let e = TreeEnsemble::compile(&a).unwrap();
        assert_eq!(run(&e, &[0.5]), [16.0]);
    }

    #[test]
    fn malformed_attributes_are_refused() {
        let base = stump(BranchMode::Leq, 1, regressor(Aggregate::Sum));
        let mut a = base.clone();
        a.nodes_truenodeids[0] = 7;
        assert!(matches!(
            TreeEnsemble::compile(&a),
            Err(TreeEnsembleError::Structure { .. })
        ));
        let mut a = base.clone();
        a.nodes_values.pop();
        assert!(matches!(
            TreeEnsemble::compile(&a),
            Err(TreeEnsembleError::Attribute { .. })
        ));
        let mut a = base.clone();
        a.nodes_modes[1] = BranchMode::Leq;
        a.nodes_truenodeids[1] = 0; // node 1 points back at the root
        let err = TreeEnsemble::compile(&a).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
        let mut a = base.clone();
        a.leaf_ids[0] = 1; // one target only
        assert!(TreeEnsemble::compile(&a).is_err());
        let mut a = base;
        a.nodes_nodeids[2] = 1; // duplicate
        assert!(TreeEnsemble::compile(&a).is_err());
    }

    /// Adds to `a` a random tree `tree` over 4 features: internal nodes of a
    /// mode drawn from `modes`, NaN sent to the true branch at random,
    /// thresholds drawn from `values`, at most `depth` levels; each leaf gets
    /// weights for the output ids `ids` draws.
    fn random_tree(
        rng: &mut fastrand::Rng,
        a: &mut TreeEnsembleAttributes,
        tree: i64,
        modes: &[BranchMode],
        values: &[f32],
        depth: usize,
        ids: &dyn Fn(&mut fastrand::Rng) -> Vec<i64>,
    ) {
        // (node id, level) to fill; ids in order of creation, the root first.
        let mut todo = vec![(0i64, 0usize)];
        let mut next_id = 1;
        while let Some((id, level)) = todo.pop() {
            a.nodes_treeids.push(tree);
            a.nodes_nodeids.push(id);
            a.nodes_featureids.push(rng.i64(0..4));
            a.nodes_values.push(values[rng.usize(..values.len())]);
            a.nodes_missing_value_tracks_true.push(rng.bool());
            if level == depth || (level > 0 && rng.u8(..4) == 0) {
                a.nodes_modes.push(BranchMode::Leaf);
                a.nodes_truenodeids.push(0);
                a.nodes_falsenodeids.push(0);
                for k in ids(rng) {
                    a.leaf_treeids.push(tree);
                    a.leaf_nodeids.push(id);
                    a.leaf_ids.push(k);
                    a.leaf_weights.push(rng.f32() * 4.0 - 1.0);
                }
                continue;
            }
            a.nodes_modes.push(modes[rng.usize(..modes.len())]);
            a.nodes_truenodeids.push(next_id);
            a.nodes_falsenodeids.push(next_id + 1);
            todo.push((next_id, level + 1));
            todo.push((next_id + 1, level + 1));
            next_id += 2;
        }
    }

    /// Scores and labels of `e` on `x` (`[n, 4]`), as bits.
    fn outputs(e: &TreeEnsemble, x: &[f32]) -> (Vec<u32>, Vec<i64>) {
        let n = x.len() / 4;
        let mut s = vec![0.0; n * e.n_outputs()];
        let mut l = vec![0; n];
        e.eval(x, 4, &mut s, &mut l).unwrap();
        (s.iter().map(|v| v.to_bits()).collect(), l)
    }

    #[test]
    fn packed_walk_equals_the_node_walk() {
        // Thresholds and inputs at the edges of f32's order: zeros of both
        // signs, a subnormal, the largest finite values; inputs also one ulp
        // either side of each, NaN and the infinities.
        let values = [
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            -1.0,
            2.5,
            f32::MAX,
            -f32::MAX,
        ];
        let mut inputs: Vec<f32> = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for v in values {
            inputs.extend([v, v.next_up(), v.next_down()]);
        }
        let three = |_: &mut fastrand::Rng| vec![2, 0, 1];
        let some = |rng: &mut fastrand::Rng| {
            let mut v: Vec<i64> = (0..3).filter(|_| rng.bool()).collect();
            rng.shuffle(&mut v);
            v
        };
        let one = |_: &mut fastrand::Rng| vec![0];
        let two = |_: &mut fastrand::Rng| vec![1, 0];
        let classes = Task::Classifier(ClassLabels::Int64(vec![3, 5, 7]));
        type Ids<'a> = &'a dyn Fn(&mut fastrand::Rng) -> Vec<i64>;
        // (task, each leaf's output ids, dense layout expected, the ids
        // replaced by tree number mod 3: LightGBM's one class per tree)
        let tasks: Vec<(Task, Ids, bool, bool)> = vec![
            (classes.clone(), &three, true, false),
            (classes.clone(), &one, true, true),
            (classes.clone(), &some, false, false),
            (regressor(Aggregate::Sum), &one, true, false),
            (regressor(Aggregate::Min), &one, true, false),
            (regressor(Aggregate::Max), &one, true, false),
            (
                Task::Regressor {
                    n_targets: 2,
                    aggregate: Aggregate::Average,
                },
                &two,
                true,
                false,
            ),
            (
                Task::Regressor {
                    n_targets: 2,
                    aggregate: Aggregate::Max,
                },
                &two,
                true,
                false,
            ),
        ];
        let mode_sets: [&[BranchMode]; 5] = [
            &[BranchMode::Leq],
            &[BranchMode::Lt],
            &[BranchMode::Gte],
            &[BranchMode::Gt],
            &[
                BranchMode::Leq,
                BranchMode::Lt,
                BranchMode::Gte,
                BranchMode::Gt,
            ],
        ];
        let mut rng = fastrand::Rng::with_seed(19);
        for modes in mode_sets {
            for (task, ids, dense, per_tree) in &tasks {
                let mut a = stump(BranchMode::Leq, 0, task.clone());
                for t in 0..12 {
                    random_tree(&mut rng, &mut a, t, modes, &values, t as usize % 9, *ids);
                }
                if *per_tree {
                    for (id, tree) in a.leaf_ids.iter_mut().zip(&a.leaf_treeids) {
                        *id = tree % 3;
                    }
                }
                let packed = TreeEnsemble::compile(&a).unwrap();
                let p = packed.packed.as_ref().expect("packed layout");
                assert_eq!(p.dense.is_some(), *dense, "{modes:?} {task:?}");
                let mut by_node = packed.clone();
                by_node.packed = None;
                for n in [1, 5, 6, 7, 16, 17, 64, 65, 150] {
                    let x: Vec<f32> = (0..n * 4)
                        .map(|_| inputs[rng.usize(..inputs.len())])
                        .collect();
                    assert_eq!(
                        outputs(&packed, &x),
                        outputs(&by_node, &x),
                        "{modes:?} {task:?}, {n} rows"
                    );
                }
            }
        }
    }

    #[test]
    fn ensembles_outside_the_packed_layout_walk_node_by_node() {
        for (mode, value) in [
            (BranchMode::Eq, 1.0),
            (BranchMode::Neq, 1.0),
            (BranchMode::Leq, f32::INFINITY),
            (BranchMode::Gte, f32::NEG_INFINITY),
        ] {
            let mut a = stump(mode, 2, regressor(Aggregate::Sum));
            a.nodes_values[0] = value;
            let e = TreeEnsemble::compile(&a).unwrap();
            assert!(e.packed.is_none(), "{mode:?} {value}");
            let x = [0.5, 1.0, 2.0, f32::INFINITY, f32::NAN, 3.0, -1.0];
            assert_eq!(run(&e, &x).len(), x.len());
        }
    }

    #[test]
    fn probit_matches_onnxruntime_approximation() {
        // Values of onnxruntime's ComputeProbit (float) at 0.5, 0.975.
        assert!(probit(0.5).abs() < 1e-6);
        assert!((probit(0.975) - 1.959_9).abs() < 2e-3);
    }
}
