//! `hoeffding_adaptive_tree`: the Hoeffding adaptive tree classifier.
//!
//! A. Bifet and R. Gavaldà, "Adaptive learning from evolving data streams",
//! IDA 2009 (HAT-ADWIN): a Hoeffding tree ([`super::HoeffdingTreeClassifier`]'s
//! leaves, splits and naive-Bayes-adaptive predictions) whose every node
//! watches its own error with ADWIN. When a branch's error rises (ADWIN
//! alarms with the error going up), it grows an alternate subtree from a new
//! leaf; once both have seen more than 300 samples, the alternate replaces
//! the branch if its error is lower by more than
//! `sqrt(2 e (1 − e) ln(2 / 0.05) (1/n_alt + 1/n))`, or is dropped if higher by
//! as much.
//!
//! Follows River 0.26.1's `tree.HoeffdingAdaptiveTreeClassifier` with its
//! defaults (`river/tree/hoeffding_adaptive_tree_classifier.py`,
//! `tree/nodes/hatc_nodes.py`), including what it does differently from the
//! paper:
//!
//! * bootstrap sampling: each leaf learns a sample with weight `k` drawn from
//!   Poisson(1), or 1 when `k` is 0;
//! * each leaf and branch keeps its running error (a mean of 0/1 errors of
//!   the prediction made from that node before learning), restarted when
//!   ADWIN alarms with the error going down;
//! * a leaf's probabilities are divided by `sum · error²`, and the tree's
//!   probabilities are the sum over the leaf the sample reaches and the
//!   alternate leaves met on the way, normalised;
//! * an alternate leaf that splits takes the place of the branch that grew
//!   it at once (River hands it the branch's parent).
//!
//! The Poisson draws come from Python's `random.Random(seed)`
//! ([`super::py_random::PyRandom`], seeded by
//! [`HoeffdingAdaptiveTreeConfig::seed`]) in River's order.

use super::hoeffding_tree::{dist_add, dist_sum, Dist, Leaf};
use super::py_random::PyRandom;
use super::{check_width, first_argmax, HoeffdingTreeConfig, OnlineClassifier, OnlineError};
use crate::learn::drift::{Adwin, AdwinConfig, DriftDetector};

/// The hyperparameters, River's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HoeffdingAdaptiveTreeConfig {
    /// The Hoeffding tree's (grace period 200, δ = 1e-7, τ = 0.05, …).
    pub tree: HoeffdingTreeConfig,
    /// Leaves learn with Poisson(1) weights.
    pub bootstrap_sampling: bool,
    /// Samples both a branch and its alternate must have been scored on
    /// before they are compared.
    pub drift_window_threshold: f64,
    /// Significance of the switch test.
    pub switch_significance: f64,
    /// ADWIN of every node (River's `drift.ADWIN()`).
    pub adwin: AdwinConfig,
    /// Seed of the Poisson weights.
    pub seed: u64,
}

impl Default for HoeffdingAdaptiveTreeConfig {
    fn default() -> Self {
        Self {
            tree: HoeffdingTreeConfig::default(),
            bootstrap_sampling: true,
            drift_window_threshold: 300.0,
            switch_significance: 0.05,
            adwin: AdwinConfig::default(),
            seed: 42,
        }
    }
}

/// River's `stats.Mean`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Mean {
    n: f64,
    mean: f64,
}

impl Mean {
    fn update(&mut self, x: f64) {
        self.n += 1.0;
        self.mean += (1.0 / self.n) * (x - self.mean);
    }
}

#[derive(Debug, Clone)]
struct AdaLeaf {
    leaf: Leaf,
    detector: Adwin,
    error: Mean,
}

#[derive(Debug, Clone)]
struct AdaBranch {
    feature: usize,
    threshold: f64,
    depth: usize,
    /// `[x ≤ threshold, x > threshold]`.
    children: [Node; 2],
    stats: Dist,
    detector: Adwin,
    error: Mean,
    alternate: Option<Node>,
}

#[derive(Debug, Clone)]
enum Node {
    Leaf(Box<AdaLeaf>),
    Branch(Box<AdaBranch>),
}

/// What a node's learning asks of the slot holding it.
type Replace = Option<Node>;

struct Ctx<'a> {
    cfg: &'a HoeffdingAdaptiveTreeConfig,
    rng: &'a mut PyRandom,
}

fn poisson(rate: f64, rng: &mut PyRandom) -> u32 {
    let l = (-rate).exp();
    let (mut k, mut p) = (0u32, 1.0f64);
    while p > l {
        k += 1;
        p *= rng.random();
    }
    k - 1
}

fn error_of(prediction: Option<Dist>, y: usize) -> f64 {
    match prediction.and_then(first_argmax) {
        Some(c) if c == y => 0.0,
        _ => 1.0,
    }
}

impl Node {
    fn new_leaf(stats: Dist, depth: usize, cfg: &HoeffdingAdaptiveTreeConfig) -> Self {
        Node::Leaf(Box::new(AdaLeaf {
            leaf: Leaf::new(stats, depth),
            detector: Adwin::new(cfg.adwin),
            error: Mean::default(),
        }))
    }

    fn error(&self) -> &Mean {
        match self {
            Node::Leaf(l) => &l.error,
            Node::Branch(b) => &b.error,
        }
    }

    fn weight(&self) -> f64 {
        match self {
            Node::Leaf(l) => l.leaf.total_weight(),
            Node::Branch(b) => b.children[0].weight() + b.children[1].weight(),
        }
    }

    /// The child `x` goes to (the heavier one when the feature is missing),
    /// and its index.
    fn route(b: &AdaBranch, x: &[f64]) -> usize {
        let v = x[b.feature];
        if v.is_nan() {
            usize::from(b.children[0].weight() < b.children[1].weight())
        } else if v <= b.threshold {
            0
        } else {
            1
        }
    }

    /// The leaf of the main path from this node (River's `DTBranch.traverse`).
    fn main_leaf(&self, x: &[f64]) -> &AdaLeaf {
        match self {
            Node::Leaf(l) => l,
            Node::Branch(b) => b.children[Self::route(b, x)].main_leaf(x),
        }
    }

    /// The leaves whose predictions add up: the alternates met along the
    /// main path, then its leaf (River's `AdaBranchClassifier.traverse`).
    fn found_leaves<'a>(&'a self, x: &[f64], out: &mut Vec<&'a AdaLeaf>) {
        match self {
            Node::Leaf(l) => out.push(l),
            Node::Branch(b) => {
                if let Some(alt) = &b.alternate {
                    match alt {
                        Node::Leaf(l) => out.push(l),
                        Node::Branch(_) => alt.found_leaves(x, out),
                    }
                }
                b.children[Self::route(b, x)].found_leaves(x, out);
            }
        }
    }

    /// Learns `(x, y)` with weight `w`; `has_parent`: whether the slot that
    /// River names as this node's parent exists (false: the root's). Returns
    /// the node that must take that slot, if any.
    fn learn(&mut self, x: &[f64], y: usize, w: f64, has_parent: bool, ctx: &mut Ctx) -> Replace {
        match self {
            Node::Leaf(l) => l.learn(x, y, w, ctx),
            Node::Branch(b) => b.learn(x, y, w, has_parent, ctx),
        }
    }
}

impl AdaLeaf {
    /// River's `AdaLeafClassifier.prediction`: `None` without statistics.
    fn prediction(&self, x: &[f64]) -> Option<Dist> {
        if self.leaf.stats.is_empty() {
            return None;
        }
        let dist = self.leaf.prediction(x);
        let factor = dist_sum(&dist) * self.error.mean * self.error.mean;
        if factor == 0.0 || factor.is_nan() {
            return Some(dist);
        }
        let inv = 1.0 / factor;
        Some(dist.into_iter().map(|(c, v)| (c, v * inv)).collect())
    }

    fn learn(&mut self, x: &[f64], y: usize, mut w: f64, ctx: &mut Ctx) -> Replace {
        if ctx.cfg.bootstrap_sampling {
            let k = poisson(1.0, ctx.rng);
            if k > 0 {
                w *= f64::from(k);
            }
        }
        let err = error_of(self.prediction(x), y);
        let old = self.error.mean;
        let alarm = self.detector.update(err);
        self.error.update(err);
        if alarm && old > self.error.mean {
            self.error = Mean::default();
        }
        self.leaf.learn(x, y, w, None);
        let seen = self.leaf.total_weight();
        let mut replace = None;
        if seen - self.leaf.last_split_attempt_at >= ctx.cfg.tree.grace_period {
            if let Some((feature, threshold, [left, right])) =
                self.leaf.attempt_to_split(&ctx.cfg.tree)
            {
                let depth = self.leaf.depth;
                replace = Some(Node::Branch(Box::new(AdaBranch {
                    feature,
                    threshold,
                    depth,
                    children: [
                        Node::new_leaf(left, depth + 1, ctx.cfg),
                        Node::new_leaf(right, depth + 1, ctx.cfg),
                    ],
                    stats: self.leaf.stats.clone(),
                    detector: Adwin::new(ctx.cfg.adwin),
                    error: Mean::default(),
                    alternate: None,
                })));
            }
            self.leaf.last_split_attempt_at = seen;
        }
        replace
    }
}

impl AdaBranch {
    fn learn(&mut self, x: &[f64], y: usize, w: f64, has_parent: bool, ctx: &mut Ctx) -> Replace {
        let b = Node::route(self, x);
        let err = error_of(self.children[b].main_leaf(x).prediction(x), y);
        dist_add(&mut self.stats, y, w);
        let old = self.error.mean;
        let mut change = self.detector.update(err);
        self.error.update(err);
        if change && old > self.error.mean {
            self.error = Mean::default();
            change = false;
        }
        let mut replace: Replace = None;
        let mut alternate_learns = true;
        if change {
            self.error = Mean::default();
            self.alternate = Some(Node::new_leaf(Dist::new(), self.depth, ctx.cfg));
        } else if let Some(alt) = &self.alternate {
            let (alt_n, n) = (alt.error().n, self.error.n);
            let threshold = ctx.cfg.drift_window_threshold;
            if alt_n > threshold && n > threshold {
                let old_rate = self.error.mean;
                let alt_rate = alt.error().mean;
                let inv = 1.0 / alt_n + 1.0 / n;
                let bound = (2.0
                    * old_rate
                    * (1.0 - old_rate)
                    * (2.0 / ctx.cfg.switch_significance).ln()
                    * inv)
                    .sqrt();
                if bound < old_rate - alt_rate {
                    // The alternate takes this branch's place. River lets the
                    // root's alternate learn this sample too, not another's.
                    let mut alt = self.alternate.take();
                    if !has_parent {
                        if let Some(a) = alt.as_mut() {
                            if let Some(r) = a.learn(x, y, w, false, ctx) {
                                alt = Some(r);
                            }
                        }
                    }
                    replace = alt;
                    alternate_learns = false;
                } else if bound < alt_rate - old_rate {
                    self.alternate = None;
                }
            }
        }
        if alternate_learns {
            if let Some(alt) = self.alternate.as_mut() {
                if let Some(r) = alt.learn(x, y, w, has_parent, ctx) {
                    replace = Some(r);
                }
            }
        }
        if let Some(r) = self.children[b].learn(x, y, w, true, ctx) {
            self.children[b] = r;
        }
        replace
    }
}

/// `hoeffding_adaptive_tree`: see the module's documentation.
#[derive(Debug, Clone)]
pub struct HoeffdingAdaptiveTreeClassifier {
    cfg: HoeffdingAdaptiveTreeConfig,
    n_features: usize,
    root: Option<Node>,
    rng: PyRandom,
    /// `seen[c]`: class `c` has been learned.
    seen: Vec<bool>,
}

impl HoeffdingAdaptiveTreeClassifier {
    /// An empty tree for samples of `n_features` features.
    pub fn new(n_features: usize, cfg: HoeffdingAdaptiveTreeConfig) -> Self {
        let rng = PyRandom::new(cfg.seed);
        Self {
            cfg,
            n_features,
            root: None,
            rng,
            seen: Vec::new(),
        }
    }

    fn proba_pairs(&self, x: &[f64]) -> Dist {
        let mut proba: Dist = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(c, _)| (c, 0.0))
            .collect();
        let Some(root) = &self.root else {
            return proba;
        };
        let mut found = Vec::new();
        root.found_leaves(x, &mut found);
        for leaf in found {
            for (c, v) in leaf.prediction(x).unwrap_or_default() {
                dist_add(&mut proba, c, v);
            }
        }
        let total = dist_sum(&proba);
        if total != 0.0 && !total.is_nan() {
            let inv = 1.0 / total;
            for (_, v) in proba.iter_mut() {
                *v *= inv;
            }
        }
        proba
    }
}

impl HoeffdingAdaptiveTreeClassifier {
    /// The trees for ONNX export ([`super::export`]): the main tree, then
    /// each alternate subtree behind the path to its branch (River's
    /// `_found_leaves`), every leaf its prediction (naive Bayes or class
    /// distribution) scaled as `AdaLeafClassifier.prediction` scales it.
    pub(crate) fn export_trees(&self) -> Vec<super::export::ExportTree> {
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            root.export_all(&[], &mut out);
        }
        out
    }
}

impl Node {
    fn export_all(
        &self,
        path: &[super::export::PathStep],
        out: &mut Vec<super::export::ExportTree>,
    ) {
        out.push(super::export::behind_path(path, |t| self.export_main(t)));
        self.export_alternates(path, out);
    }

    fn export_alternates(
        &self,
        path: &[super::export::PathStep],
        out: &mut Vec<super::export::ExportTree>,
    ) {
        if let Node::Branch(b) = self {
            if let Some(alt) = &b.alternate {
                alt.export_all(path, out);
            }
            let nan_left = !(b.children[0].weight() < b.children[1].weight());
            for side in 0..2 {
                let mut p = path.to_vec();
                p.push(super::export::PathStep {
                    feature: b.feature,
                    threshold: b.threshold,
                    nan_left,
                    side,
                });
                b.children[side].export_alternates(&p, out);
            }
        }
    }

    fn export_main(&self, t: &mut super::export::ExportTree) -> usize {
        match self {
            Node::Leaf(l) => t.learner_leaf(l.leaf.export_parts(), Some(l.error.mean), 1.0),
            Node::Branch(b) => {
                let nan_left = !(b.children[0].weight() < b.children[1].weight());
                let at = t.split(b.feature, b.threshold, nan_left);
                let l = b.children[0].export_main(t);
                let r = b.children[1].export_main(t);
                t.children(at, [l, r]);
                at
            }
        }
    }
}

impl OnlineClassifier for HoeffdingAdaptiveTreeClassifier {
    fn learn_one(&mut self, x: &[f64], y: usize) -> Result<(), OnlineError> {
        check_width(self.n_features, x)?;
        if self.seen.len() <= y {
            self.seen.resize(y + 1, false);
        }
        self.seen[y] = true;
        let cfg = &self.cfg;
        let root = self
            .root
            .get_or_insert_with(|| Node::new_leaf(Dist::new(), 0, cfg));
        let mut ctx = Ctx {
            cfg,
            rng: &mut self.rng,
        };
        if let Some(r) = root.learn(x, y, 1.0, false, &mut ctx) {
            *root = r;
        }
        Ok(())
    }

    fn predict_proba_one(&self, x: &[f64]) -> Result<Vec<f64>, OnlineError> {
        check_width(self.n_features, x)?;
        let mut out = vec![0.0; self.n_classes()];
        for (c, p) in self.proba_pairs(x) {
            out[c] = p;
        }
        Ok(out)
    }

    fn predict_one(&self, x: &[f64]) -> Result<Option<usize>, OnlineError> {
        check_width(self.n_features, x)?;
        Ok(first_argmax(self.proba_pairs(x)))
    }

    fn n_classes(&self) -> usize {
        self.seen.len()
    }

    fn n_features(&self) -> usize {
        self.n_features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_error_is_the_mean() {
        let mut m = Mean::default();
        for e in [1.0, 0.0, 0.0, 1.0, 1.0] {
            m.update(e);
        }
        assert!((m.mean - 0.6).abs() < 1e-15);
        assert_eq!(m.n, 5.0);
    }

    #[test]
    fn one_class_is_predicted_from_the_first_sample() {
        let mut t = HoeffdingAdaptiveTreeClassifier::new(2, HoeffdingAdaptiveTreeConfig::default());
        assert_eq!(t.predict_one(&[0.0, 1.0]).unwrap(), None);
        t.learn_one(&[0.0, 1.0], 1).unwrap();
        assert_eq!(t.predict_one(&[9.0, -1.0]).unwrap(), Some(1));
    }
}
