//! `hoeffding_tree` regression: the Hoeffding tree regressor, a model tree
//! learned one sample at a time.
//!
//! P. Domingos and G. Hulten, "Mining high-speed data streams", KDD 2000 (the
//! Hoeffding bound deciding when a leaf has seen enough to split), with the
//! regression parts of FIMT (E. Ikonomovska, J. Gama and S. Džeroski,
//! "Learning model trees from evolving data streams", Data Mining and
//! Knowledge Discovery 23 (2011) 128–168): splits by variance reduction,
//! numeric features summarised by an extended binary search tree (E-BST)
//! whose worst split points are pruned after a failed split attempt, and a
//! linear model in each leaf.
//!
//! Follows River 0.26.1's `tree.HoeffdingTreeRegressor` with its defaults
//! (`river/tree/hoeffding_tree_regressor.py`, `nodes/htr_nodes.py`,
//! `nodes/leaf.py`, `splitter/ebst_splitter.py`, `splitter/tebst_splitter.py`,
//! `split_criterion/variance_reduction_split_criterion.py`, `utils.py`,
//! `stats/var.py`, `linear_model/lin_reg.py`), to the order of its
//! floating-point operations, so that its predictions are River's row by row:
//!
//! * grace period 200, δ = 1e-7, τ = 0.05; the merit of a split is the
//!   variance reduction `Var(y) − Σ n_i/n Var(y_i)` (sample variances),
//!   0 unless both branches hold at least `min_samples_split` = 5 samples;
//!   the bound is `ε = sqrt(ln(1/δ) / 2n)` (range 1: the merits are compared
//!   by ratio) and a leaf splits when the best merit is above 0 and
//!   `second / best < 1 − ε` or `ε < τ`;
//! * River's default splitter is the truncated E-BST (`TEBSTSplitter`):
//!   each feature value is rounded to 1 decimal (Python's `round(v, 1)`)
//!   before it enters the leaf's binary search tree, whose every node keeps
//!   the running mean and variance of the targets at or below its value; the
//!   candidate thresholds are the distinct rounded values, `x ≤ t` left;
//! * after a failed attempt whose two best merits are above 0, FIMT's memory
//!   management prunes the E-BST nodes whose whole subtree are bad split
//!   points (merit ratio below `second / best − 2ε`);
//! * `merit_preprune`: the null split is a candidate of merit −∞; when it
//!   wins (no feature to split on), River deactivates the leaf and, in the
//!   same call, reactivates it with no splitters: here, they are cleared;
//! * leaves predict adaptively (River's `leaf_prediction="adaptive"`): the
//!   target mean, or River's `linear_model.LinearRegression()` (squared loss,
//!   plain SGD at learning rate 0.01, intercept learning rate 0.01, gradient
//!   clipped to ±1e12, zero initial weights, no scaling of the features),
//!   whichever has the smaller exponentially decayed squared error
//!   (`model_selector_decay` 0.95) on the leaf's samples, each scored before
//!   the leaf learns it; a new leaf starts from a copy of its parent's linear
//!   model and errors;
//! * a sample missing the split feature (`NaN`, River: the key absent)
//!   follows the heavier branch, and learns without a split attempt; a
//!   missing feature is left out of the E-BSTs and of the linear model's dot
//!   product and update.
//!
//! As in the classifier ([`super::hoeffding_tree`]), River's memory
//! management by measured object size (every `memory_estimate_period` = 1e6
//! samples, above `max_size` = 500 MiB) is left out, and there is no depth
//! limit. Before the first sample the prediction is 0 (River's).

use super::py_random::PyRandom;
use super::{check_width, OnlineError, OnlineRegressor};

/// The hyperparameters, River's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HoeffdingTreeRegressorConfig {
    /// Samples (weight) a leaf sees between split attempts.
    pub grace_period: f64,
    /// Allowed probability of choosing the wrong split (δ).
    pub delta: f64,
    /// Tie threshold on the Hoeffding bound (τ).
    pub tau: f64,
    /// Least number of samples (weight) in each branch of a candidate split.
    pub min_samples_split: f64,
    /// Decay of the leaves' squared errors choosing mean or linear model.
    pub model_selector_decay: f64,
    /// SGD learning rate of the leaves' linear models' weights.
    pub learning_rate: f64,
    /// Learning rate of the leaves' linear models' intercepts.
    pub intercept_learning_rate: f64,
    /// Bound on the absolute value of the linear models' loss gradient.
    pub clip_gradient: f64,
    /// Features a leaf watches: `None`, all; `Some(m)`, `m` drawn at random
    /// when the leaf learns its first sample (River's `BaseRandomLeaf`, the
    /// trees of the adaptive random forest).
    pub max_features: Option<usize>,
}

impl Default for HoeffdingTreeRegressorConfig {
    fn default() -> Self {
        Self {
            grace_period: 200.0,
            delta: 1e-7,
            tau: 0.05,
            min_samples_split: 5.0,
            model_selector_decay: 0.95,
            learning_rate: 0.01,
            intercept_learning_rate: 0.01,
            clip_gradient: 1e12,
            max_features: None,
        }
    }
}

/// River's `stats.Var` (ddof 1) over its `stats.Mean`: Welford updates and
/// Chan et al.'s parallel sum and difference, as River writes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Var {
    pub(crate) n: f64,
    pub(crate) mean: f64,
    s: f64,
}

impl Var {
    pub(crate) const EMPTY: Var = Var {
        n: 0.0,
        mean: 0.0,
        s: 0.0,
    };

    pub(crate) fn update(&mut self, x: f64, w: f64) {
        let old = self.mean;
        self.n += w;
        self.mean += (w / self.n) * (x - self.mean);
        self.s += w * (x - old) * (x - self.mean);
    }

    /// The sample variance (0 with one sample or none).
    pub(crate) fn get(&self) -> f64 {
        if self.n > 1.0 {
            self.s / (self.n - 1.0)
        } else {
            0.0
        }
    }

    /// `self += other` (`Var.__iadd__`).
    fn add(&mut self, o: &Var) {
        let d = self.mean - o.mean;
        let s = self.s + o.s + d * d * self.n * o.n / (self.n + o.n);
        let old_n = self.n;
        self.n += o.n;
        self.mean = (old_n * self.mean + o.n * o.mean) / self.n;
        self.s = s;
    }

    /// `self -= other` (`Var.__isub__`: the mean first, then the second
    /// moment with the new mean and count).
    fn sub(&mut self, o: &Var) {
        let old_n = self.n;
        self.n -= o.n;
        if self.n > 0.0 {
            self.mean = (old_n * self.mean - o.n * o.mean) / self.n;
        } else {
            self.n = 0.0;
            self.mean = 0.0;
        }
        let d = self.mean - o.mean;
        self.s = self.s - o.s - d * d * self.n * o.n / (self.n + o.n);
    }
}

/// Python's `round(v, 1)`: the nearest multiple of 0.1 to the exact value
/// of `v` (ties to even), as the nearest `f64` to that decimal.
pub(crate) fn round_tenth(v: f64) -> f64 {
    if !v.is_finite() || v.abs() >= 1e15 {
        return v;
    }
    let k0 = (v * 10.0).floor();
    // The sign of the exact `10 v − (k0 + ½)` (one rounding: its sign is exact).
    let s = 10.0f64.mul_add(v, -(k0 + 0.5));
    let k = if s < 0.0 {
        k0
    } else if s > 0.0 {
        k0 + 1.0
    } else if k0 % 2.0 == 0.0 {
        k0
    } else {
        k0 + 1.0
    };
    let r = k / 10.0;
    if r == 0.0 {
        0.0f64.copysign(v)
    } else {
        r
    }
}

/// River's `merit_of_split` of `VarianceReductionSplitCriterion`.
fn variance_reduction(pre: &Var, post: &[Var; 2], min_samples: f64) -> f64 {
    if post.iter().any(|p| p.n < min_samples) {
        return 0.0;
    }
    let n = pre.n;
    let mut vr = pre.get();
    for p in post {
        vr -= p.n / n * p.get();
    }
    vr
}

/// `(left, right)`: `left` = `node + aux`, `right` = `pre − left` (River's
/// `combine_stats`).
fn branch_stats(node: &Var, aux: &Var, pre: &Var) -> [Var; 2] {
    let mut left = *node;
    left.add(aux);
    let mut right = *pre;
    right.sub(&left);
    [left, right]
}

#[derive(Debug, Clone, PartialEq)]
struct EbstNode {
    value: f64,
    /// Targets of the samples at or below `value` in this node's subtree.
    stats: Var,
    left: Option<u32>,
    right: Option<u32>,
}

/// River's `EBSTSplitter` (fed rounded values: `TEBSTSplitter`), its nodes
/// in an arena.
#[derive(Debug, Clone, PartialEq, Default)]
struct Ebst {
    nodes: Vec<EbstNode>,
    root: Option<u32>,
}

/// A split candidate of one feature: `(merit, threshold, [left, right])`.
type Suggestion = (f64, f64, [Var; 2]);

/// A split of a leaf: `(feature, threshold, [left, right])`.
type Split = (usize, f64, [Var; 2]);

impl Ebst {
    fn push(&mut self, value: f64, y: f64, w: f64) -> u32 {
        let mut stats = Var::EMPTY;
        stats.update(y, w);
        self.nodes.push(EbstNode {
            value,
            stats,
            left: None,
            right: None,
        });
        (self.nodes.len() - 1) as u32
    }

    fn insert(&mut self, value: f64, y: f64, w: f64) {
        let Some(mut at) = self.root else {
            let r = self.push(value, y, w);
            self.root = Some(r);
            return;
        };
        loop {
            let node = &mut self.nodes[at as usize];
            if value == node.value {
                node.stats.update(y, w);
                return;
            }
            if value < node.value {
                node.stats.update(y, w);
                match node.left {
                    Some(l) => at = l,
                    None => {
                        let l = self.push(value, y, w);
                        self.nodes[at as usize].left = Some(l);
                        return;
                    }
                }
            } else {
                match node.right {
                    Some(r) => at = r,
                    None => {
                        let r = self.push(value, y, w);
                        self.nodes[at as usize].right = Some(r);
                        return;
                    }
                }
            }
        }
    }

    /// River's `_find_best_split`: in order, the first value of largest
    /// merit (a later one replaces it only when strictly greater).
    fn best_split(&self, pre: &Var, min_samples: f64) -> Option<Suggestion> {
        enum Op {
            Descend(u32),
            Process(u32),
            AddAux(u32),
            SubAux(u32),
        }
        let root = self.root?;
        let mut best: Option<Suggestion> = None;
        let mut best_merit = f64::NEG_INFINITY;
        let mut aux = Var::EMPTY;
        let mut ops = vec![Op::Descend(root)];
        while let Some(op) = ops.pop() {
            match op {
                Op::Descend(i) => {
                    let n = &self.nodes[i as usize];
                    if let Some(r) = n.right {
                        ops.push(Op::SubAux(i));
                        ops.push(Op::Descend(r));
                        ops.push(Op::AddAux(i));
                    }
                    ops.push(Op::Process(i));
                    if let Some(l) = n.left {
                        ops.push(Op::Descend(l));
                    }
                }
                Op::AddAux(i) => aux.add(&self.nodes[i as usize].stats),
                Op::SubAux(i) => aux.sub(&self.nodes[i as usize].stats),
                Op::Process(i) => {
                    let n = &self.nodes[i as usize];
                    let post = branch_stats(&n.stats, &aux, pre);
                    let merit = variance_reduction(pre, &post, min_samples);
                    if merit > best_merit {
                        best_merit = merit;
                        best = Some((merit, n.value, post));
                    }
                }
            }
        }
        best
    }

    /// River's `remove_bad_splits`: post order, a node whose subtrees are
    /// all bad (a missing child counts as bad) is evaluated, and cut off with
    /// its subtree when `merit / best < ratio − 2ε`.
    fn remove_bad_splits(&mut self, pre: &Var, min_samples: f64, ratio: f64, best: f64, e: f64) {
        const LEFT: u8 = 0;
        const RIGHT: u8 = 1;
        const EVAL: u8 = 2;
        struct Frame {
            node: u32,
            parent: Option<u32>,
            is_left: bool,
            phase: u8,
            aux_added: bool,
        }
        let Some(root) = self.root else {
            return;
        };
        let mut aux = Var::EMPTY;
        let mut stack = vec![Frame {
            node: root,
            parent: None,
            is_left: true,
            phase: LEFT,
            aux_added: false,
        }];
        let mut child_bad = false;
        let mut pruned = false;
        while let Some(frame) = stack.last_mut() {
            let i = frame.node;
            match frame.phase {
                LEFT => {
                    frame.phase = RIGHT;
                    if let Some(l) = self.nodes[i as usize].left {
                        stack.push(Frame {
                            node: l,
                            parent: Some(i),
                            is_left: true,
                            phase: LEFT,
                            aux_added: false,
                        });
                    } else {
                        child_bad = true;
                    }
                }
                RIGHT => {
                    if !child_bad {
                        stack.pop();
                        child_bad = false;
                        continue;
                    }
                    frame.phase = EVAL;
                    if let Some(r) = self.nodes[i as usize].right {
                        aux.add(&self.nodes[i as usize].stats);
                        frame.aux_added = true;
                        stack.push(Frame {
                            node: r,
                            parent: Some(i),
                            is_left: false,
                            phase: LEFT,
                            aux_added: false,
                        });
                    } else {
                        child_bad = true;
                    }
                }
                _ => {
                    let (parent, is_left, added) = (frame.parent, frame.is_left, frame.aux_added);
                    stack.pop();
                    if added {
                        aux.sub(&self.nodes[i as usize].stats);
                    }
                    if child_bad {
                        let post = branch_stats(&self.nodes[i as usize].stats, &aux, pre);
                        let merit = variance_reduction(pre, &post, min_samples);
                        if merit / best < ratio - 2.0 * e {
                            pruned = true;
                            let n = &mut self.nodes[i as usize];
                            n.left = None;
                            n.right = None;
                            match parent {
                                None => self.root = None,
                                Some(p) if is_left => self.nodes[p as usize].left = None,
                                Some(p) => self.nodes[p as usize].right = None,
                            }
                            child_bad = true;
                            continue;
                        }
                    }
                    child_bad = false;
                }
            }
        }
        if pruned {
            self.compact();
        }
    }

    /// Drops the nodes no longer reachable from the root (after pruning).
    fn compact(&mut self) {
        let Some(root) = self.root else {
            self.nodes.clear();
            return;
        };
        let mut kept: Vec<EbstNode> = Vec::with_capacity(self.nodes.len());
        let mut stack = vec![(root, None::<(usize, bool)>)];
        while let Some((i, link)) = stack.pop() {
            let n = self.nodes[i as usize].clone();
            let at = kept.len();
            if let Some(l) = n.left {
                stack.push((l, Some((at, true))));
            }
            if let Some(r) = n.right {
                stack.push((r, Some((at, false))));
            }
            kept.push(n);
            match link {
                Some((p, true)) => kept[p].left = Some(at as u32),
                Some((p, false)) => kept[p].right = Some(at as u32),
                None => {}
            }
        }
        self.nodes = kept;
        self.root = Some(0);
    }
}

/// River's `linear_model.LinearRegression()`: squared loss, plain SGD.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LinearModel {
    pub(crate) weights: Vec<f64>,
    pub(crate) intercept: f64,
}

impl LinearModel {
    fn new(n_features: usize) -> Self {
        Self {
            weights: vec![0.0; n_features],
            intercept: 0.0,
        }
    }

    pub(crate) fn predict(&self, x: &[f64]) -> f64 {
        let mut dot = 0.0;
        for (w, &xi) in self.weights.iter().zip(x) {
            if !xi.is_nan() {
                dot += w * xi;
            }
        }
        dot + self.intercept
    }

    fn learn(&mut self, x: &[f64], y: f64, w: f64, cfg: &HoeffdingTreeRegressorConfig) {
        let g = (2.0 * (self.predict(x) - y) * w).clamp(-cfg.clip_gradient, cfg.clip_gradient);
        self.intercept -= cfg.intercept_learning_rate * g;
        for (wj, &xi) in self.weights.iter_mut().zip(x) {
            if !xi.is_nan() {
                *wj -= cfg.learning_rate * (xi * g);
            }
        }
    }
}

/// River's `LeafAdaptive` (`RandomLeafAdaptive` with `max_features`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Leaf {
    pub(crate) stats: Var,
    depth: usize,
    /// `(feature, E-BST)` in order of first use at this leaf.
    splitters: Vec<(usize, Ebst)>,
    /// Features drawn at the leaf's first sample (with `max_features`).
    features: Vec<usize>,
    last_split_attempt_at: f64,
    pub(crate) model: LinearModel,
    fmse_mean: f64,
    fmse_model: f64,
}

impl Leaf {
    fn new(stats: Var, depth: usize, model: LinearModel, fmse: (f64, f64)) -> Self {
        Self {
            stats,
            depth,
            splitters: Vec::new(),
            features: Vec::new(),
            last_split_attempt_at: stats.n,
            model,
            fmse_mean: fmse.0,
            fmse_model: fmse.1,
        }
    }

    /// Whether the leaf answers its target mean (else its linear model).
    pub(crate) fn predicts_mean(&self) -> bool {
        self.fmse_mean < self.fmse_model
    }

    fn prediction(&self, x: &[f64]) -> f64 {
        if self.predicts_mean() {
            self.stats.mean
        } else {
            self.model.predict(x)
        }
    }

    fn learn(
        &mut self,
        x: &[f64],
        y: f64,
        w: f64,
        cfg: &HoeffdingTreeRegressorConfig,
        rng: Option<&mut PyRandom>,
    ) {
        let decay = cfg.model_selector_decay;
        let e_mean = y - self.stats.mean;
        let e_model = y - self.model.predict(x);
        self.fmse_mean = decay * self.fmse_mean + e_mean * e_mean;
        self.fmse_model = decay * self.fmse_model + e_model * e_model;
        self.stats.update(y, w);
        match cfg.max_features.zip(rng) {
            None => {
                for (f, &v) in x.iter().enumerate() {
                    self.update_splitter(f, v, y, w);
                }
            }
            Some((m, rng)) => {
                if self.features.is_empty() {
                    // River's `BaseRandomLeaf._sample_features` over the
                    // present features (sorted names sort as the indices).
                    let present: Vec<usize> = (0..x.len()).filter(|f| !x[*f].is_nan()).collect();
                    self.features = if present.len() >= m {
                        rng.sample(&present, m)
                    } else {
                        present
                    };
                }
                for i in 0..self.features.len() {
                    let f = self.features[i];
                    self.update_splitter(f, x[f], y, w);
                }
            }
        }
        self.model.learn(x, y, w, cfg);
    }

    fn update_splitter(&mut self, f: usize, v: f64, y: f64, w: f64) {
        if v.is_nan() {
            return;
        }
        let v = round_tenth(v);
        match self.splitters.iter_mut().find(|(g, _)| *g == f) {
            Some((_, s)) => s.insert(v, y, w),
            None => {
                let mut s = Ebst::default();
                s.insert(v, y, w);
                self.splitters.push((f, s));
            }
        }
    }

    /// River's `HoeffdingTreeRegressor._attempt_to_split` on this leaf: the
    /// split to make, `(feature, threshold, [left, right])`, or `None` (after
    /// pruning the E-BSTs, or clearing them when the null split wins).
    fn attempt_to_split(&mut self, cfg: &HoeffdingTreeRegressorConfig) -> Option<Split> {
        // `(merit, split)`; `None` = the null split.
        let mut candidates: Vec<(f64, Option<Split>)> = vec![(f64::NEG_INFINITY, None)];
        for (f, s) in &self.splitters {
            candidates.push(match s.best_split(&self.stats, cfg.min_samples_split) {
                Some((merit, t, post)) => (merit, Some((*f, t, post))),
                None => (f64::NEG_INFINITY, None),
            });
        }
        // Python's stable sort on `merit <`.
        candidates.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        let len = candidates.len();
        if len < 2 {
            // Only the null split: it wins (nothing to clear).
            return None;
        }
        let bound = ((1.0 * 1.0 * (1.0 / cfg.delta).ln()) / (2.0 * self.stats.n)).sqrt();
        let best = candidates[len - 1].0;
        let second = candidates[len - 2].0;
        if best > 0.0 && (second / best < 1.0 - bound || bound < cfg.tau) {
            let split = candidates.pop().and_then(|c| c.1);
            if split.is_none() {
                self.splitters.clear();
            }
            return split;
        }
        if best > 0.0 && second > 0.0 {
            let ratio = second / best;
            for (_, s) in self.splitters.iter_mut() {
                s.remove_bad_splits(&self.stats, cfg.min_samples_split, ratio, best, bound);
            }
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Leaf(Leaf),
    Branch {
        feature: usize,
        threshold: f64,
        /// `[x ≤ threshold, x > threshold]`, indices into the arena.
        children: [usize; 2],
    },
}

/// `hoeffding_tree` regression: see the module's documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct HoeffdingTreeRegressor {
    cfg: HoeffdingTreeRegressorConfig,
    n_features: usize,
    /// Node 0 is the root once a sample has been learned.
    pub(crate) nodes: Vec<Node>,
}

impl HoeffdingTreeRegressor {
    /// An empty tree for samples of `n_features` features.
    pub fn new(n_features: usize, cfg: HoeffdingTreeRegressorConfig) -> Self {
        Self {
            cfg,
            n_features,
            nodes: Vec::new(),
        }
    }

    /// Number of leaves (0 before the first sample).
    pub fn n_leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf(_)))
            .count()
    }

    fn weight_of(&self, i: usize) -> f64 {
        match &self.nodes[i] {
            Node::Leaf(l) => l.stats.n,
            Node::Branch { children, .. } => {
                self.weight_of(children[0]) + self.weight_of(children[1])
            }
        }
    }

    /// River's `most_common_path`: the heavier child, left on a tie.
    pub(crate) fn heavier(&self, children: [usize; 2]) -> usize {
        if self.weight_of(children[0]) < self.weight_of(children[1]) {
            children[1]
        } else {
            children[0]
        }
    }

    /// The leaf `x` reaches, and whether it got there without a missing split
    /// feature.
    fn leaf_of(&self, x: &[f64]) -> (usize, bool) {
        let mut i = 0;
        let mut direct = true;
        loop {
            match &self.nodes[i] {
                Node::Leaf(_) => return (i, direct),
                Node::Branch {
                    feature,
                    threshold,
                    children,
                } => {
                    let v = x[*feature];
                    i = if v.is_nan() {
                        direct = false;
                        self.heavier(*children)
                    } else if v <= *threshold {
                        children[0]
                    } else {
                        children[1]
                    };
                }
            }
        }
    }

    /// Learns `(x, y)` with weight `w` (River's `learn_one(x, y, w=w)`).
    ///
    /// # Errors
    /// [`OnlineError::Width`] when `x` is not `n_features` long.
    pub fn learn_weighted(&mut self, x: &[f64], y: f64, w: f64) -> Result<(), OnlineError> {
        self.learn_weighted_with(x, y, w, None)
    }

    /// [`Self::learn_weighted`] drawing a new leaf's features from `rng`
    /// (the forest's `random.Random`, with `max_features`).
    pub(crate) fn learn_weighted_with(
        &mut self,
        x: &[f64],
        y: f64,
        w: f64,
        rng: Option<&mut PyRandom>,
    ) -> Result<(), OnlineError> {
        check_width(self.n_features, x)?;
        if self.nodes.is_empty() {
            let model = LinearModel::new(self.n_features);
            self.nodes
                .push(Node::Leaf(Leaf::new(Var::EMPTY, 0, model, (0.0, 0.0))));
        }
        let (i, direct) = self.leaf_of(x);
        let Node::Leaf(leaf) = &mut self.nodes[i] else {
            return Ok(());
        };
        leaf.learn(x, y, w, &self.cfg, rng);
        if !direct {
            return Ok(());
        }
        let seen = leaf.stats.n;
        if seen - leaf.last_split_attempt_at < self.cfg.grace_period {
            return Ok(());
        }
        if let Some((feature, threshold, [left, right])) = leaf.attempt_to_split(&self.cfg) {
            let depth = leaf.depth + 1;
            let fmse = (leaf.fmse_mean, leaf.fmse_model);
            let model = leaf.model.clone();
            let l = self.nodes.len();
            self.nodes
                .push(Node::Leaf(Leaf::new(left, depth, model.clone(), fmse)));
            self.nodes
                .push(Node::Leaf(Leaf::new(right, depth, model, fmse)));
            self.nodes[i] = Node::Branch {
                feature,
                threshold,
                children: [l, l + 1],
            };
        } else if let Node::Leaf(leaf) = &mut self.nodes[i] {
            leaf.last_split_attempt_at = seen;
        }
        Ok(())
    }

    /// The prediction for `x`, `x` of the right width (0 before any sample).
    pub(crate) fn predict(&self, x: &[f64]) -> f64 {
        if self.nodes.is_empty() {
            return 0.0;
        }
        match &self.nodes[self.leaf_of(x).0] {
            Node::Leaf(leaf) => leaf.prediction(x),
            Node::Branch { .. } => 0.0,
        }
    }
}

impl OnlineRegressor for HoeffdingTreeRegressor {
    fn learn_one(&mut self, x: &[f64], y: f64) -> Result<(), OnlineError> {
        self.learn_weighted(x, y, 1.0)
    }

    fn predict_one(&self, x: &[f64]) -> Result<f64, OnlineError> {
        check_width(self.n_features, x)?;
        Ok(self.predict(x))
    }

    fn n_features(&self) -> usize {
        self.n_features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_a_tenth_as_python() {
        // Python: round(0.25, 1) == 0.2, round(0.75, 1) == 0.8 (exact ties,
        // to even); round(0.35, 1) == 0.3 (0.35 is below the tie);
        // round(2.675, 1) == 2.7; round(-0.04, 1) == -0.0.
        assert_eq!(round_tenth(0.25), 0.2);
        assert_eq!(round_tenth(0.75), 0.8);
        assert_eq!(round_tenth(0.35), 0.3);
        assert_eq!(round_tenth(2.675), 2.7);
        assert_eq!(round_tenth(-0.25), -0.2);
        assert!(round_tenth(-0.04).is_sign_negative());
        assert_eq!(round_tenth(1046.0), 1046.0);
    }

    #[test]
    fn var_sum_and_difference_are_the_pooled_moments() {
        // {1, 2, 3} + {10, 20}: mean 7.2, sample variance 63.7.
        let (mut a, mut b) = (Var::EMPTY, Var::EMPTY);
        for v in [1.0, 2.0, 3.0] {
            a.update(v, 1.0);
        }
        for v in [10.0, 20.0] {
            b.update(v, 1.0);
        }
        let mut all = a;
        all.add(&b);
        assert!((all.mean - 7.2).abs() < 1e-12);
        assert!((all.get() - 63.7).abs() < 1e-12);
        all.sub(&b);
        assert!((all.mean - 2.0).abs() < 1e-12);
        assert!((all.get() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn predicts_zero_then_learns_the_mean() {
        let mut t = HoeffdingTreeRegressor::new(1, HoeffdingTreeRegressorConfig::default());
        assert_eq!(t.predict_one(&[0.0]).unwrap(), 0.0);
        t.learn_one(&[1.0], 3.0).unwrap();
        // The mean (3) erred by 3, the linear model (0) by 3: a tie keeps
        // the linear model, which has taken one SGD step.
        let p = t.predict_one(&[1.0]).unwrap();
        assert!((p - (0.06 + 0.06)).abs() < 1e-12, "{p}");
    }
}
