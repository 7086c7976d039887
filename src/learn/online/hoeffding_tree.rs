//! `hoeffding_tree`: the Very Fast Decision Tree (VFDT) classifier.
//!
//! P. Domingos and G. Hulten, "Mining high-speed data streams", KDD 2000:
//! a leaf splits once the Hoeffding bound
//! `ε = sqrt(R² ln(1/δ) / (2n))` says the best split's merit exceeds the
//! second best's with probability `1 − δ` (or `ε < τ`, a tie), checked
//! every `grace_period` samples. Numeric features are summarised per leaf
//! and class by a Gaussian (Pfahringer, Holmes & Kirkby, "Handling numeric
//! attributes in Hoeffding trees", PAKDD 2008), and leaves predict by
//! naive Bayes when it has been more accurate on their samples than the
//! majority class ("naive Bayes adaptive", Holmes, Kirkby & Pfahringer 2005).
//!
//! Follows River 0.26.1's `tree.HoeffdingTreeClassifier` with its defaults
//! (`river/tree/hoeffding_tree_classifier.py`, `hoeffding_tree.py`,
//! `nodes/htc_nodes.py`, `nodes/leaf.py`, `splitter/gaussian_splitter.py`,
//! `split_criterion/info_gain_split_criterion.py`, `utils.py`,
//! `proba/gaussian.py`), to the order of its floating-point operations and
//! its tie-breaking, so that its predictions are River's row by row:
//!
//! * grace period 200, δ = 1e-7, τ = 0.05, information gain with
//!   `R = log2(max(classes in the leaf, 2))`, a split needing two branches of
//!   more than 1% of the leaf's weight, binary splits `x ≤ t` at the 10
//!   equally spaced points between the smallest and largest value seen at
//!   the leaf, the branches' class weights estimated from each class's
//!   Gaussian CDF (and kept as the new leaves' initial counts);
//! * `merit_preprune`: the null split is a candidate of merit −∞; a leaf
//!   where one class holds more than 99% of the weight (River's
//!   `max_share_to_split`) or where no feature splits wins the null split,
//!   which River implements as deactivating the leaf and, in the same call,
//!   reactivating it with no statistics (its memory management, below):
//!   here, its Gaussian estimators are cleared;
//! * naive Bayes at a leaf: the log prior `ln(w_c / w)` plus each feature's
//!   Gaussian log density (skipped where the class has fewer than two
//!   samples or zero variance), normalised by log-sum-exp; a class of zero
//!   weight at the leaf gets a log vote of 0, as in River;
//! * a sample missing the split feature (`NaN`) follows the heavier branch.
//!
//! One part of River is left out: the memory management (Kirkby 2007) that
//! every `memory_estimate_period` = 1,000,000 samples measures the Python
//! objects and deactivates the least promising leaves beyond `max_size` =
//! 100 MiB. Below a million samples it does nothing in River either; beyond,
//! this tree keeps growing. There is no depth limit (River's is the Python
//! recursion limit).

use super::py_random::PyRandom;
use super::{check_width, first_argmax, OnlineClassifier, OnlineError};

/// The hyperparameters, River's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct HoeffdingTreeConfig {
    /// Samples (weight) a leaf sees between split attempts.
    pub grace_period: f64,
    /// Allowed probability of choosing the wrong split (δ).
    pub delta: f64,
    /// Tie threshold on the Hoeffding bound (τ).
    pub tau: f64,
    /// Least fraction of a leaf's weight each of two branches must get.
    pub min_branch_fraction: f64,
    /// A leaf whose majority class holds more than this fraction is not split.
    pub max_share_to_split: f64,
    /// Split points considered per numeric feature.
    pub n_splits: usize,
    /// Features a leaf watches: `None`, all of them; `Some(m)`, `m` drawn at
    /// random (without replacement) when the leaf learns its first sample
    /// (River's `BaseRandomLeaf`, the trees of the adaptive random forest).
    pub max_features: Option<usize>,
    /// Seed of the feature draws (used only with `max_features`): Python's
    /// `random.Random(seed)`, drawn as River's `rng.sample` draws.
    pub seed: u64,
}

impl Default for HoeffdingTreeConfig {
    fn default() -> Self {
        Self {
            grace_period: 200.0,
            delta: 1e-7,
            tau: 0.05,
            min_branch_fraction: 0.01,
            max_share_to_split: 0.99,
            n_splits: 10,
            max_features: None,
            seed: 0,
        }
    }
}

/// Class weights in the order the classes were first seen (River's dict).
pub(crate) type Dist = Vec<(usize, f64)>;

pub(super) fn dist_add(d: &mut Dist, class: usize, w: f64) {
    match d.iter_mut().find(|(c, _)| *c == class) {
        Some((_, v)) => *v += w,
        None => d.push((class, w)),
    }
}

pub(super) fn dist_sum(d: &Dist) -> f64 {
    let mut s = 0.0;
    for (_, v) in d {
        s += v;
    }
    s
}

/// The C library's `erf`, the function CPython's `math.erf` calls (River's
/// normal CDF), so both compute the same bits.
fn erf(x: f64) -> f64 {
    extern "C" {
        #[link_name = "erf"]
        fn c_erf(x: f64) -> f64;
    }
    // SAFETY: `erf` from the C math library (linked by std) is a pure
    // function of its argument, defined for every f64.
    unsafe { c_erf(x) }
}

/// River's `proba.Gaussian` over `stats.Var(ddof=1)` (Welford).
#[derive(Debug, Clone, PartialEq)]
struct Gaussian {
    n: f64,
    mean: f64,
    s: f64,
}

impl Gaussian {
    fn new() -> Self {
        Self {
            n: 0.0,
            mean: 0.0,
            s: 0.0,
        }
    }

    fn update(&mut self, x: f64, w: f64) {
        let old = self.mean;
        self.n += w;
        self.mean += (w / self.n) * (x - self.mean);
        self.s += w * (x - old) * (x - self.mean);
    }

    fn variance(&self) -> f64 {
        if self.n > 1.0 {
            self.s / (self.n - 1.0)
        } else {
            0.0
        }
    }

    fn log_pdf(&self, x: f64) -> f64 {
        if self.n > 1.0 {
            let variance = self.s / (self.n - 1.0);
            if variance > 0.0 {
                let half_log_tau = 0.5 * std::f64::consts::TAU.ln();
                let d = x - self.mean;
                return d * d / (-2.0 * variance) - half_log_tau - 0.5 * variance.ln();
            }
        }
        f64::NEG_INFINITY
    }

    fn cdf(&self, x: f64) -> f64 {
        // `** 0.5` in River: the C library's pow, as powf calls it.
        let sigma = self.variance().powf(0.5);
        if sigma == 0.0 {
            // Python raises ZeroDivisionError; River answers 0.
            return 0.0;
        }
        0.5 * (1.0 + erf(((x - self.mean) / sigma) / std::f64::consts::SQRT_2))
    }
}

/// River's `GaussianSplitter`: per class, a Gaussian and the range seen.
#[derive(Debug, Clone, PartialEq)]
struct Splitter {
    /// `(class, estimator, min, max)`, classes in order of appearance.
    per_class: Vec<(usize, Gaussian, f64, f64)>,
}

impl Splitter {
    fn update(&mut self, v: f64, class: usize, w: f64) {
        match self.per_class.iter_mut().find(|(c, ..)| *c == class) {
            Some((_, g, lo, hi)) => {
                if v < *lo {
                    *lo = v;
                }
                if v > *hi {
                    *hi = v;
                }
                g.update(v, w);
            }
            None => {
                let mut g = Gaussian::new();
                g.update(v, w);
                self.per_class.push((class, g, v, v));
            }
        }
    }

    fn log_proba(&self, v: f64, class: usize) -> f64 {
        self.per_class
            .iter()
            .find(|(c, ..)| *c == class)
            .map_or(f64::NEG_INFINITY, |(_, g, ..)| g.log_pdf(v))
    }

    /// The best binary split of this feature: `(merit, threshold, [left, right])`.
    fn best_split(&self, pre: &Dist, cfg: &HoeffdingTreeConfig) -> Option<(f64, f64, [Dist; 2])> {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (_, _, mn, mx) in &self.per_class {
            if *mn < lo {
                lo = *mn;
            }
            if *mx > hi {
                hi = *mx;
            }
        }
        if lo >= f64::INFINITY {
            return None;
        }
        let bin = (hi - lo) / (cfg.n_splits as f64 + 1.0);
        let mut best: Option<(f64, f64, [Dist; 2])> = None;
        let mut best_merit = f64::NEG_INFINITY;
        for i in 0..cfg.n_splits {
            let t = lo + bin * (i + 1) as f64;
            if !(lo < t && t < hi) {
                continue;
            }
            let post = self.dists_at(t);
            let merit = merit_of_split(pre, &post, cfg.min_branch_fraction);
            if merit > best_merit {
                best_merit = merit;
                best = Some((merit, t, post));
            }
        }
        best
    }

    fn dists_at(&self, t: f64) -> [Dist; 2] {
        let (mut left, mut right) = (Dist::new(), Dist::new());
        for (c, g, mn, mx) in &self.per_class {
            if t < *mn {
                right.push((*c, g.n));
            } else if t >= *mx {
                left.push((*c, g.n));
            } else {
                let l = g.cdf(t) * g.n;
                left.push((*c, l));
                right.push((*c, g.n - l));
            }
        }
        [left, right]
    }
}

/// River's `InfoGainSplitCriterion._compute_entropy_dict`.
fn entropy(d: &Dist) -> f64 {
    let (mut e, mut sum) = (0.0, 0.0);
    for (_, v) in d {
        if *v > 0.0 {
            e -= v * v.log2();
            sum += v;
        }
    }
    if sum > 0.0 {
        (e + sum * sum.log2()) / sum
    } else {
        0.0
    }
}

/// River's `InfoGainSplitCriterion.merit_of_split`.
fn merit_of_split(pre: &Dist, post: &[Dist; 2], min_frac: f64) -> f64 {
    let sums = [dist_sum(&post[0]), dist_sum(&post[1])];
    let mut total = 0.0;
    for s in sums {
        total += s;
    }
    let mut greater = 0;
    if total > 0.0 {
        for s in sums {
            if s / total > min_frac {
                greater += 1;
            }
        }
    }
    if greater < 2 {
        return f64::NEG_INFINITY;
    }
    let mut post_entropy = 0.0;
    for (s, d) in sums.iter().zip(post) {
        post_entropy += s * entropy(d);
    }
    entropy(pre) - post_entropy / total
}

/// River's `normalize_values_in_dict` (multiplies by `1 / sum`; unchanged
/// when the sum is 0 or `NaN`).
pub(super) fn normalized(d: &Dist) -> Dist {
    let f = dist_sum(d);
    if f == 0.0 || f.is_nan() {
        return d.clone();
    }
    let inv = 1.0 / f;
    d.iter().map(|(c, v)| (*c, v * inv)).collect()
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Leaf {
    pub(super) stats: Dist,
    pub(super) depth: usize,
    /// `(feature, splitter)` in order of first use at this leaf.
    splitters: Vec<(usize, Splitter)>,
    /// The features this leaf watches, drawn at its first sample when the
    /// tree has `max_features` (empty until then, or when it has not).
    features: Vec<usize>,
    pub(super) last_split_attempt_at: f64,
    mc_correct: f64,
    nb_correct: f64,
}

impl Leaf {
    pub(super) fn new(stats: Dist, depth: usize) -> Self {
        let last = dist_sum(&stats);
        Self {
            stats,
            depth,
            splitters: Vec::new(),
            features: Vec::new(),
            last_split_attempt_at: last,
            mc_correct: 0.0,
            nb_correct: 0.0,
        }
    }

    pub(super) fn total_weight(&self) -> f64 {
        dist_sum(&self.stats)
    }

    /// River's `do_naive_bayes_prediction`.
    fn naive_bayes(&self, x: &[f64]) -> Dist {
        let total = dist_sum(&self.stats);
        if self.stats.is_empty() || total == 0.0 {
            return Dist::new();
        }
        let mut votes = Dist::with_capacity(self.stats.len());
        for (c, cw) in &self.stats {
            if *cw <= 0.0 {
                votes.push((*c, 0.0));
                continue;
            }
            let mut v = (cw / total).ln();
            for (f, s) in &self.splitters {
                let xf = x[*f];
                if xf.is_nan() {
                    continue;
                }
                let lp = s.log_proba(xf, *c);
                if lp > f64::NEG_INFINITY {
                    v += lp;
                }
            }
            votes.push((*c, v));
        }
        let mut max_ll = votes[0].1;
        for (_, v) in &votes[1..] {
            if *v > max_ll {
                max_ll = *v;
            }
        }
        let mut s = 0.0;
        for (_, v) in &votes {
            s += (v - max_ll).exp();
        }
        let lse = max_ll + s.ln();
        for (_, v) in votes.iter_mut() {
            *v = (*v - lse).exp();
        }
        votes
    }

    pub(super) fn prediction(&self, x: &[f64]) -> Dist {
        if self.nb_correct >= self.mc_correct {
            self.naive_bayes(x)
        } else {
            normalized(&self.stats)
        }
    }

    /// Learns `(x, y)` with weight `w`; `subset`: the tree's `max_features`
    /// and its random source, when it has one.
    pub(super) fn learn(
        &mut self,
        x: &[f64],
        y: usize,
        w: f64,
        subset: Option<(usize, &mut PyRandom)>,
    ) {
        let mc = normalized(&self.stats);
        if self.stats.is_empty() || first_argmax(mc) == Some(y) {
            self.mc_correct += w;
        }
        let nb = self.naive_bayes(x);
        if !nb.is_empty() && first_argmax(nb) == Some(y) {
            self.nb_correct += w;
        }
        dist_add(&mut self.stats, y, w);
        match subset {
            None => {
                for (f, &v) in x.iter().enumerate() {
                    self.update_splitter(f, v, y, w);
                }
            }
            Some((m, rng)) => {
                if self.features.is_empty() {
                    // River's `BaseRandomLeaf._sample_features`:
                    // `rng.sample(sorted(x.keys()), k=m)` over the sample's
                    // present features, or all when fewer (feature order
                    // is the order of River's sorted keys while the names
                    // sort as the indices do, `f0`..`f9`).
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
    }

    /// River's `HoeffdingTreeClassifier._attempt_to_split` on this leaf: the
    /// split to make, `(feature, threshold, [left, right] class weights)`,
    /// or `None`. A pre-pruning (the null split wins) clears the leaf's
    /// estimators here: River deactivates the leaf and its size management
    /// reactivates it at once, with none.
    pub(super) fn attempt_to_split(
        &mut self,
        cfg: &HoeffdingTreeConfig,
    ) -> Option<(usize, f64, [Dist; 2])> {
        let nonzero = self.stats.iter().filter(|(_, v)| *v != 0.0).count();
        if nonzero < 2 {
            return None;
        }
        let total = self.total_weight();
        let mut candidates = vec![Candidate {
            merit: f64::NEG_INFINITY,
            split: None,
        }];
        let mut majority = f64::NEG_INFINITY;
        for (_, v) in &self.stats {
            if *v > majority {
                majority = *v;
            }
        }
        let dominated = majority != 0.0 && majority / total > cfg.max_share_to_split;
        if !dominated {
            for (f, s) in &self.splitters {
                candidates.push(match s.best_split(&self.stats, cfg) {
                    Some((merit, t, post)) => Candidate {
                        merit,
                        split: Some((*f, t, post)),
                    },
                    None => Candidate {
                        merit: f64::NEG_INFINITY,
                        split: None,
                    },
                });
            }
        }
        // Python's stable sort on `merit <`.
        candidates.sort_by(|a, b| {
            a.merit
                .partial_cmp(&b.merit)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let should_split = if candidates.len() < 2 {
            !candidates.is_empty()
        } else {
            let classes = self.stats.len().max(2) as f64;
            let range = classes.log2();
            let bound = ((range * range * (1.0 / cfg.delta).ln()) / (2.0 * total)).sqrt();
            let best = candidates[candidates.len() - 1].merit;
            let second = candidates[candidates.len() - 2].merit;
            best - second > bound || bound < cfg.tau
        };
        if !should_split {
            return None;
        }
        let split = candidates.pop().and_then(|c| c.split);
        if split.is_none() {
            self.splitters.clear();
        }
        split
    }

    fn update_splitter(&mut self, f: usize, v: f64, y: usize, w: f64) {
        if v.is_nan() {
            return;
        }
        match self.splitters.iter_mut().find(|(g, _)| *g == f) {
            Some((_, s)) => s.update(v, y, w),
            None => {
                let mut s = Splitter {
                    per_class: Vec::new(),
                };
                s.update(v, y, w);
                self.splitters.push((f, s));
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf(Leaf),
    Branch {
        feature: usize,
        threshold: f64,
        /// `[x ≤ threshold, x > threshold]`, indices into the arena.
        children: [usize; 2],
    },
}

/// A split candidate: `None` feature = the null split.
struct Candidate {
    merit: f64,
    split: Option<(usize, f64, [Dist; 2])>,
}

/// `hoeffding_tree`: see the module's documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct HoeffdingTreeClassifier {
    cfg: HoeffdingTreeConfig,
    n_features: usize,
    /// Node 0 is the root once a sample has been learned.
    nodes: Vec<Node>,
    /// `seen[c]`: class `c` has been learned.
    seen: Vec<bool>,
    /// Source of the leaves' feature draws (`max_features`) when the tree
    /// draws its own (an adaptive random forest passes its own instead).
    rng: Option<PyRandom>,
}

impl HoeffdingTreeClassifier {
    /// An empty tree for samples of `n_features` features.
    pub fn new(n_features: usize, cfg: HoeffdingTreeConfig) -> Self {
        let rng = cfg.max_features.map(|_| PyRandom::new(cfg.seed));
        Self {
            cfg,
            n_features,
            nodes: Vec::new(),
            seen: Vec::new(),
            rng,
        }
    }

    /// A tree of a forest: it draws its leaves' features from the random
    /// source the forest passes to [`Self::learn_weighted_with`].
    pub(crate) fn new_in_forest(n_features: usize, cfg: HoeffdingTreeConfig) -> Self {
        Self {
            cfg,
            n_features,
            nodes: Vec::new(),
            seen: Vec::new(),
            rng: None,
        }
    }

    /// Number of leaves (0 before the first sample).
    pub fn n_leaves(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| matches!(n, Node::Leaf(_)))
            .count()
    }

    /// Depth of the deepest leaf (0: the root is a leaf).
    pub fn depth(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| match n {
                Node::Leaf(l) => Some(l.depth),
                Node::Branch { .. } => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn weight_of(&self, i: usize) -> f64 {
        match &self.nodes[i] {
            Node::Leaf(l) => l.total_weight(),
            Node::Branch { children, .. } => {
                self.weight_of(children[0]) + self.weight_of(children[1])
            }
        }
    }

    /// River's `most_common_path`: the heavier child, left on a tie.
    fn heavier(&self, children: [usize; 2]) -> usize {
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

    fn attempt_to_split(&mut self, at: usize) {
        let Node::Leaf(leaf) = &mut self.nodes[at] else {
            return;
        };
        if let Some((feature, threshold, [left, right])) = leaf.attempt_to_split(&self.cfg) {
            let depth = leaf.depth;
            let l = self.nodes.len();
            self.nodes.push(Node::Leaf(Leaf::new(left, depth + 1)));
            self.nodes.push(Node::Leaf(Leaf::new(right, depth + 1)));
            self.nodes[at] = Node::Branch {
                feature,
                threshold,
                children: [l, l + 1],
            };
        }
    }

    /// Learns `(x, y)` with weight `w` (River's `learn_one(x, y, w=w)`: the
    /// counts, the Gaussians and the grace period are in weight).
    ///
    /// # Errors
    /// [`OnlineError::Width`] when `x` is not `n_features` long.
    pub fn learn_weighted(&mut self, x: &[f64], y: usize, w: f64) -> Result<(), OnlineError> {
        let mut rng = self.rng.take();
        let learned = self.learn_weighted_with(x, y, w, rng.as_mut());
        self.rng = rng;
        learned
    }

    /// [`Self::learn_weighted`] drawing a new leaf's features from `rng`
    /// (River's trees of a forest share the forest's `random.Random`).
    pub(crate) fn learn_weighted_with(
        &mut self,
        x: &[f64],
        y: usize,
        w: f64,
        rng: Option<&mut PyRandom>,
    ) -> Result<(), OnlineError> {
        check_width(self.n_features, x)?;
        if self.seen.len() <= y {
            self.seen.resize(y + 1, false);
        }
        self.seen[y] = true;
        if self.nodes.is_empty() {
            self.nodes.push(Node::Leaf(Leaf::new(Dist::new(), 0)));
        }
        let (i, direct) = self.leaf_of(x);
        let grace = self.cfg.grace_period;
        let Node::Leaf(leaf) = &mut self.nodes[i] else {
            return Ok(());
        };
        let subset = self.cfg.max_features.zip(rng);
        leaf.learn(x, y, w, subset);
        // River attempts a split only when the sample reached its leaf
        // without a missing split feature.
        if direct {
            let seen = leaf.total_weight();
            if seen - leaf.last_split_attempt_at >= grace {
                self.attempt_to_split(i);
                if let Node::Leaf(leaf) = &mut self.nodes[i] {
                    leaf.last_split_attempt_at = seen;
                }
            }
        }
        Ok(())
    }

    /// Class probabilities as River's dict: `(class, p)` over the classes
    /// learned, ascending.
    pub(crate) fn proba_pairs(&self, x: &[f64]) -> Dist {
        let mut proba: Dist = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(c, _)| (c, 0.0))
            .collect();
        if self.nodes.is_empty() {
            return proba;
        }
        let (i, _) = self.leaf_of(x);
        if let Node::Leaf(leaf) = &self.nodes[i] {
            for (c, p) in leaf.prediction(x) {
                dist_set(&mut proba, c, p);
            }
        }
        proba
    }
}

impl HoeffdingTreeClassifier {
    /// The tree for ONNX export ([`super::export`]): each leaf's class
    /// distribution (its weights normalised) times `scale`; `None` before
    /// the first sample.
    pub(crate) fn export_tree(&self, scale: f64) -> Option<super::export::ExportTree> {
        if self.nodes.is_empty() {
            return None;
        }
        let mut t = super::export::ExportTree::default();
        self.export_node(0, scale, &mut t);
        Some(t)
    }

    fn export_node(&self, i: usize, scale: f64, t: &mut super::export::ExportTree) -> usize {
        match &self.nodes[i] {
            Node::Leaf(l) => t.learner_leaf(l.export_parts(), None, scale),
            Node::Branch {
                feature,
                threshold,
                children,
            } => {
                let nan_left = self.heavier(*children) == children[0];
                let at = t.split(*feature, *threshold, nan_left);
                let l = self.export_node(children[0], scale, t);
                let r = self.export_node(children[1], scale, t);
                t.children(at, [l, r]);
                at
            }
        }
    }
}

impl Leaf {
    /// What the ONNX export needs of this leaf ([`super::export::LeafParts`]):
    /// its class weights, whether it predicts by naive Bayes, and the
    /// Gaussians whose log density [`Leaf::naive_bayes`] adds (two samples
    /// or more, variance above 0), in the order it adds them.
    pub(super) fn export_parts(&self) -> super::export::LeafParts {
        let mut gaussians = Vec::new();
        for (f, s) in &self.splitters {
            for (c, g, ..) in &s.per_class {
                if g.n > 1.0 {
                    let variance = g.s / (g.n - 1.0);
                    if variance > 0.0 {
                        gaussians.push((*f, *c, g.mean, variance));
                    }
                }
            }
        }
        super::export::LeafParts {
            stats: self.stats.clone(),
            naive_bayes: self.nb_correct >= self.mc_correct,
            gaussians,
        }
    }
}

fn dist_set(d: &mut Dist, class: usize, v: f64) {
    match d.iter_mut().find(|(c, _)| *c == class) {
        Some((_, p)) => *p = v,
        None => d.push((class, v)),
    }
}

impl OnlineClassifier for HoeffdingTreeClassifier {
    fn learn_one(&mut self, x: &[f64], y: usize) -> Result<(), OnlineError> {
        self.learn_weighted(x, y, 1.0)
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
    fn gaussian_moments_and_cdf_at_the_mean() {
        // {5, 8}: mean 6.5, sample variance 4.5; the CDF at the mean is 1/2.
        let mut g = Gaussian::new();
        g.update(5.0, 1.0);
        g.update(8.0, 1.0);
        assert!((g.mean - 6.5).abs() < 1e-15);
        assert!((g.variance() - 4.5).abs() < 1e-15);
        assert!((g.cdf(6.5) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn entropy_of_a_balanced_pair_is_one_bit() {
        assert!((entropy(&vec![(0, 3.0), (1, 3.0)]) - 1.0).abs() < 1e-15);
        assert_eq!(entropy(&vec![(0, 3.0)]), 0.0);
    }

    #[test]
    fn one_class_is_predicted_from_the_first_sample() {
        let mut t = HoeffdingTreeClassifier::new(1, HoeffdingTreeConfig::default());
        assert_eq!(t.predict_one(&[0.0]).unwrap(), None);
        t.learn_one(&[1.0], 2).unwrap();
        assert_eq!(t.predict_one(&[50.0]).unwrap(), Some(2));
        assert_eq!(t.predict_proba_one(&[1.0]).unwrap().len(), 3);
    }
}
