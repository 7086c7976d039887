//! Ensembles of trained models: soft voting and stacking, served as one
//! ONNX graph.
//!
//! * **Soft voting** (scikit-learn's `VotingClassifier(voting="soft")`,
//!   `VotingRegressor`): the unweighted mean of the members' class
//!   probabilities (classification) or predictions (regression).
//! * **Stacking** (Wolpert 1992, "Stacked generalization"; scikit-learn's
//!   `StackingClassifier(stack_method="predict_proba", cv=k,
//!   passthrough=False)` and `StackingRegressor`): a meta-model is trained on
//!   the members' out-of-fold outputs over `k` folds (stratified for
//!   classification, [`super::split`]), then every member is refit on all
//!   the training data. The meta-model is the `logistic` family (with its
//!   own mean imputation and standard scaling, and the pipeline's
//!   `max_iter`) for classification, its L2 strength chosen from
//!   [`META_L2_GRID`] by cross-validation over the out-of-fold outputs
//!   (scikit-learn's `LogisticRegressionCV`); the `ridge` family
//!   (`ridge.alpha`) for regression.
//!
//! What the meta-model sees, `[n, k·C]` (classification) or `[n, k]`
//! (regression): member `i`'s probabilities of every class, in the
//! ensemble's class order, at columns `i·C .. (i+1)·C`. Unlike scikit-learn,
//! **both** columns of a binary task are kept (sklearn drops the first,
//! `p₀ = 1 − p₁`): the graph is the same for every number of classes (one
//! `Concat`, no `Slice`), and the L2 penalty of the standardised logistic
//! meta-model makes the collinear pair harmless (its weight is shared
//! between the two copies).
//!
//! Members must learn the same task on the same features in the same order;
//! a classifier member's classes must be the ensemble's set, in any order
//! (columns are mapped by class name).
//!
//! The ONNX export ([`EnsembleModel::to_onnx`]) is one graph following
//! [`crate::onnx::builder`]'s contract (family `ensemble`):
//!
//! ```text
//! features [N, F] f32 ─┬→ member 0's graph (names prefixed m0_) → m0_probabilities [N, C]
//!                      ├→ ...                                    (Gather axis 1 if the
//!                      └→ member k−1's graph (prefix mk−1_)       class order differs)
//! voting:   Sum(m0_…, …) → Mul(1/k)                               → probabilities [N, C]
//! stacking: Concat(axis 1) → [N, k·C] → the meta-model's graph
//!           (prefix meta_: impute, scale, MatMul, Add, Softmax)   → probabilities [N, C]
//! → ArgMax(axis 1, keepdims 0)                                    → label [N] i64
//! ```
//!
//! (regression: `prediction [N, 1]` instead, no label). The members' own
//! `label` outputs are dropped; `ai.onnx.ml` is imported when a tree member
//! is present.

use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use super::model::{Family, Model, Task, TrainError};
use super::select::Metric;
use super::{fit_model, split, Dataset};
use crate::learn::preprocess::CATEGORIES_INPUT;
use crate::learn::settings::ModelConfig;
use crate::onnx::builder::{
    self as b, ModelMeta, INPUT, OUTPUT_LABEL, OUTPUT_PREDICTION, OUTPUT_PROBABILITIES,
};

/// `model.ensemble` in config: whether `auto` also builds an ensemble of
/// its best candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnsembleMethod {
    /// No ensemble (default).
    #[default]
    None,
    /// Soft voting: the mean of the members' outputs.
    Voting,
    /// Stacking: a meta-model on the members' out-of-fold outputs.
    Stacking,
}

impl EnsembleMethod {
    /// The ensemble kind built, `None` for [`EnsembleMethod::None`].
    pub fn kind(self) -> Option<EnsembleKind> {
        match self {
            EnsembleMethod::None => None,
            EnsembleMethod::Voting => Some(EnsembleKind::Voting),
            EnsembleMethod::Stacking => Some(EnsembleKind::Stacking),
        }
    }
}

/// How an ensemble combines its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnsembleKind {
    /// Mean of the members' probabilities (or predictions).
    Voting,
    /// A meta-model on the members' probabilities (or predictions).
    Stacking,
}

impl EnsembleKind {
    /// The name used in config and cards.
    pub fn name(self) -> &'static str {
        match self {
            EnsembleKind::Voting => "voting",
            EnsembleKind::Stacking => "stacking",
        }
    }
}

/// Why members cannot form an ensemble.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnsembleError {
    /// Fewer than two members.
    #[error("an ensemble needs at least 2 members; got {0}")]
    TooFewMembers(usize),
    /// A member is itself an ensemble.
    #[error("member {index} is itself an ensemble")]
    Nested { index: usize },
    /// A member learns another task than the first.
    #[error("member {index} (`{family}`) learns {found}, not {expected}")]
    Task {
        index: usize,
        family: &'static str,
        found: Task,
        expected: Task,
    },
    /// A member reads other features, or in another order.
    #[error("member {index} (`{family}`) reads features {found:?}, not {expected:?}")]
    Features {
        index: usize,
        family: &'static str,
        found: Vec<String>,
        expected: Vec<String>,
    },
    /// A member predicts another set of classes.
    #[error(
        "member {index} (`{family}`) predicts classes {found:?}, not {expected:?} (in any order)"
    )]
    Classes {
        index: usize,
        family: &'static str,
        found: Vec<String>,
        expected: Vec<String>,
    },
    /// The folds of stacking's out-of-fold outputs cannot be made.
    #[error("stacking's out-of-fold outputs: {0}")]
    Folds(#[from] split::CvError),
    /// `ensemble` with `evaluation = "kfold"`: candidates are compared by
    /// cross-validation means, which an ensemble does not have.
    #[error("an ensemble is compared on the holdout; it needs evaluation = \"holdout\"")]
    NeedsHoldout,
}

/// A trained ensemble of models of other families.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleModel {
    pub kind: EnsembleKind,
    pub task: Task,
    /// The members, fit on all the training data, in order of their
    /// candidate rank (best first).
    pub members: Vec<Model>,
    /// Stacking's meta-model: logistic (classification) or ridge
    /// (regression) on `[n, k·C]` member outputs (module docs); `None` for
    /// voting.
    pub meta: Option<Model>,
    /// Class names, output column order (empty for a regressor).
    pub classes: Vec<String>,
    /// Feature names, input order.
    pub feature_names: Vec<String>,
    /// Stacking: folds of the out-of-fold outputs the meta-model was fit on
    /// (0 for voting).
    pub folds: usize,
    /// Stacking (classification): each L2 strength of [`META_L2_GRID`] and
    /// its cross-validation mean over the out-of-fold outputs; the
    /// meta-model uses the best (module docs). Empty otherwise.
    #[serde(default)]
    pub meta_l2_cv: Vec<(f64, f64)>,
}

/// L2 strengths per sample tried for stacking's logistic meta-model,
/// strongest first (the first wins ties).
pub const META_L2_GRID: [f64; 4] = [1.0, 0.1, 0.01, 0.001];

/// The L2 strength of stacking's logistic meta-model: the best of
/// [`META_L2_GRID`] by the pipeline's metric, cross-validated (`cfg.folds`
/// stratified folds) over the out-of-fold outputs `stacked`, the first
/// (strongest) on ties; as scikit-learn's `LogisticRegressionCV`. Returns it
/// and every strength's mean score.
fn choose_meta_l2(
    cfg: &ModelConfig,
    stacked: &Dataset,
    names: &[String],
    cancelled: &dyn Fn() -> bool,
) -> Result<(f64, Vec<(f64, f64)>), TrainError> {
    let metric = cfg.metric.unwrap_or(Metric::default_for(stacked.task));
    let mut scores = Vec::with_capacity(META_L2_GRID.len());
    let mut best: Option<(f64, f64)> = None;
    for l2 in META_L2_GRID {
        let trial = ModelConfig { l2, ..cfg.clone() };
        let cv =
            super::cross_validate(Family::Logistic, &trial, stacked, names, metric, cancelled)?;
        if best.is_none_or(|(_, b)| metric.better(cv.mean, b)) {
            best = Some((l2, cv.mean));
        }
        scores.push((l2, cv.mean));
    }
    Ok((best.map_or(META_L2_GRID[0], |(l2, _)| l2), scores))
}

impl EnsembleModel {
    /// Fits one member per family in `families` on `data` (the pipeline's
    /// settings for each), then combines them as [`EnsembleModel::from_members`].
    ///
    /// # Errors
    /// As [`fit_model`] and [`EnsembleModel::from_members`].
    pub fn fit(
        kind: EnsembleKind,
        families: &[Family],
        cfg: &ModelConfig,
        data: &Dataset,
        features: &[String],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let members = families
            .iter()
            .map(|&f| fit_model(f, cfg, data, features, None, cancelled))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_members(kind, members, cfg, data, features, cancelled)
    }

    /// Combines `members`, already fit on `data`. Voting needs nothing more;
    /// stacking refits each member's family on `cfg.folds` folds of `data`
    /// (stratified for classification), fits the meta-model on the
    /// out-of-fold outputs and keeps `members` as the final members. The
    /// ensemble's classes are `data.classes`.
    ///
    /// # Errors
    /// [`TrainError::Ensemble`] when the members do not fit together
    /// ([`EnsembleError`]) or the folds cannot be made; else as
    /// [`fit_model`].
    pub fn from_members(
        kind: EnsembleKind,
        members: Vec<Model>,
        cfg: &ModelConfig,
        data: &Dataset,
        features: &[String],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        check_members(&members, data.task, &data.classes, features)?;
        let mut model = Self {
            kind,
            task: data.task,
            members,
            meta: None,
            classes: data.classes.clone(),
            feature_names: features.to_vec(),
            folds: 0,
            meta_l2_cv: vec![],
        };
        if kind == EnsembleKind::Stacking {
            let stacked = model.out_of_fold(cfg, data, cancelled)?;
            let meta_family = match data.task {
                Task::Classification => Family::Logistic,
                Task::Regression => Family::Ridge,
            };
            let names = model.meta_feature_names();
            let mut meta_cfg = cfg.clone();
            // The members carry `[pipelines.preprocess]`'s steps; the
            // meta-model reads their probabilities as they are.
            meta_cfg.preprocess = cfg.preprocess.without_steps();
            if data.task == Task::Classification {
                let (l2, scores) = choose_meta_l2(&meta_cfg, &stacked, &names, cancelled)?;
                meta_cfg.l2 = l2;
                model.meta_l2_cv = scores;
            }
            model.meta = Some(fit_model(
                meta_family,
                &meta_cfg,
                &stacked,
                &names,
                None,
                cancelled,
            )?);
            model.folds = cfg.folds;
        }
        Ok(model)
    }

    /// The same ensemble (kind, member families) fit again on `data`.
    ///
    /// # Errors
    /// As [`EnsembleModel::fit`].
    pub fn refit(
        &self,
        cfg: &ModelConfig,
        data: &Dataset,
        features: &[String],
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let families: Vec<Family> = self.members.iter().map(Model::family).collect();
        Self::fit(self.kind, &families, cfg, data, features, cancelled)
    }

    /// Stacking's training set for the meta-model: `data`'s targets, and as
    /// features the out-of-fold outputs of every member's family.
    fn out_of_fold(
        &self,
        cfg: &ModelConfig,
        data: &Dataset,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Dataset, TrainError> {
        let folds = match data.task {
            Task::Classification => split::stratified_kfold(&data.y, cfg.folds),
            Task::Regression => split::kfold(data.len(), cfg.folds),
        }
        .map_err(EnsembleError::from)?;
        let (w, k) = (self.width(), self.members.len());
        let mut stacked = data.clone();
        stacked.n_features = k * w;
        stacked.x = vec![0.0; data.len() * k * w];
        for (train_idx, test_idx) in &folds {
            let (train, test) = (data.select(train_idx), data.select(test_idx));
            for (i, member) in self.members.iter().enumerate() {
                let fold_model = fit_model(
                    member.family(),
                    cfg,
                    &train,
                    &self.feature_names,
                    None,
                    cancelled,
                )?;
                let out = self.in_ensemble_order(&fold_model, &test.x);
                for (r, &row) in test_idx.iter().enumerate() {
                    let dst = row * k * w + i * w;
                    stacked.x[dst..dst + w].copy_from_slice(&out[r * w..(r + 1) * w]);
                }
            }
        }
        Ok(stacked)
    }

    /// Names of the meta-model's inputs: `m{i}_{family}_{class}`, or
    /// `m{i}_{family}` for a regressor.
    pub fn meta_feature_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (i, m) in self.members.iter().enumerate() {
            match self.task {
                Task::Classification => names.extend(
                    self.classes
                        .iter()
                        .map(|c| format!("m{i}_{}_{c}", m.family())),
                ),
                Task::Regression => names.push(format!("m{i}_{}", m.family())),
            }
        }
        names
    }

    /// Output columns per member: the number of classes, or 1.
    fn width(&self) -> usize {
        match self.task {
            Task::Classification => self.classes.len(),
            Task::Regression => 1,
        }
    }

    /// For each ensemble class, the member's column of it; `None` when the
    /// member's order is the ensemble's.
    fn column_map(&self, member: &Model) -> Option<Vec<usize>> {
        if self.task == Task::Regression || member.classes() == self.classes.as_slice() {
            return None;
        }
        Some(
            self.classes
                .iter()
                .map(|c| {
                    member
                        .classes()
                        .iter()
                        .position(|m| m == c)
                        .unwrap_or_default()
                })
                .collect(),
        )
    }

    /// `member`'s outputs for `x`, `[n, width]`, columns in the ensemble's
    /// class order.
    fn in_ensemble_order(&self, member: &Model, x: &[f32]) -> Vec<f32> {
        let out = member.predict(x);
        match self.column_map(member) {
            None => out,
            Some(map) => out
                .chunks_exact(member.classes().len().max(1))
                .flat_map(|row| map.iter().map(move |&j| row[j]))
                .collect(),
        }
    }

    /// What the ensemble predicts.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Class names, output column order (empty for a regressor).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Feature names, input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Probabilities `[n, n_classes]` (or predictions `[n]`) for `x`
    /// (`[n, n_features]`, `NaN` = missing), in `f32` in the order of the
    /// exported graph: voting sums the members' outputs in member order and
    /// multiplies by `1/k`; stacking runs the meta-model on the concatenated
    /// member outputs.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        let outs: Vec<Vec<f32>> = self
            .members
            .iter()
            .map(|m| self.in_ensemble_order(m, x))
            .collect();
        let (w, k) = (self.width(), outs.len());
        match (&self.meta, self.kind) {
            (Some(meta), EnsembleKind::Stacking) => {
                let n = x.len() / self.feature_names.len().max(1);
                let mut z = Vec::with_capacity(n * k * w);
                for r in 0..n {
                    for out in &outs {
                        z.extend_from_slice(&out[r * w..(r + 1) * w]);
                    }
                }
                meta.predict(&z)
            }
            _ => {
                let mut sum = outs.first().cloned().unwrap_or_default();
                for out in outs.iter().skip(1) {
                    sum.iter_mut().zip(out).for_each(|(s, v)| *s += v);
                }
                let inv = 1.0 / k as f32;
                sum.iter_mut().for_each(|s| *s *= inv);
                sum
            }
        }
    }

    /// ONNX bytes: one graph holding every member (module docs),
    /// [`crate::onnx::builder`]'s contract with family `ensemble`.
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        let out_name = match self.task {
            Task::Classification => OUTPUT_PROBABILITIES,
            Task::Regression => OUTPUT_PREDICTION,
        };
        let mut graph = pb::GraphProto {
            name: format!("edgeloop_ensemble_{}", self.kind.name()),
            input: vec![b::input_info(self.feature_names.len())],
            output: match self.task {
                Task::Classification => b::classifier_outputs(self.classes.len()),
                Task::Regression => b::regressor_outputs(),
            },
            ..Default::default()
        };
        let mut outs: Vec<String> = Vec::new();
        // Members with categorical features share the input of strings
        // (`crate::learn::preprocess::CATEGORIES_INPUT`) and its metadata.
        let mut categorical: Option<pb::StringStringEntryProto> = None;
        for (i, member) in self.members.iter().enumerate() {
            let prefix = format!("m{i}_");
            let onnx = member.to_onnx(version);
            if let Ok(m) = pb::ModelProto::decode(&onnx[..]) {
                let strings = m
                    .graph
                    .iter()
                    .flat_map(|g| &g.input)
                    .find(|v| v.name == CATEGORIES_INPUT);
                if let Some(v) = strings {
                    if !graph.input.iter().any(|i| i.name == CATEGORIES_INPUT) {
                        graph.input.push(v.clone());
                    }
                }
                // The longest book (the members' are prefixes of one).
                if let Some(p) = m.metadata_props.iter().find(|p| p.key == "categorical") {
                    if categorical
                        .as_ref()
                        .is_none_or(|c| c.value.len() < p.value.len())
                    {
                        categorical = Some(p.clone());
                    }
                }
            }
            embed(&mut graph, &onnx, &prefix, INPUT, &[]);
            let mut out = format!("{prefix}{out_name}");
            if let Some(map) = self.column_map(member) {
                let (idx, reordered) = (format!("{prefix}columns"), format!("{prefix}reordered"));
                let map: Vec<i64> = map.iter().map(|&j| j as i64).collect();
                graph
                    .initializer
                    .push(b::tensor_i64(&idx, &[map.len() as i64], &map));
                graph.node.push(b::node(
                    "Gather",
                    &[&out, &idx],
                    &reordered,
                    vec![b::attr_int("axis", 1)],
                ));
                out = reordered;
            }
            outs.push(out);
        }
        let outs: Vec<&str> = outs.iter().map(String::as_str).collect();
        match (&self.meta, self.kind) {
            (Some(meta), EnsembleKind::Stacking) => {
                graph.node.push(b::node(
                    "Concat",
                    &outs,
                    "stacked",
                    vec![b::attr_int("axis", 1)],
                ));
                embed(
                    &mut graph,
                    &meta.to_onnx(version),
                    "meta_",
                    "stacked",
                    &[out_name],
                );
            }
            _ => {
                let inv = 1.0 / self.members.len() as f32;
                graph
                    .initializer
                    .push(b::tensor_f32("inv_members", &[1], &[inv]));
                graph.node.push(b::node("Sum", &outs, "member_sum", vec![]));
                graph.node.push(b::node(
                    "Mul",
                    &["member_sum", "inv_members"],
                    out_name,
                    vec![],
                ));
            }
        }
        if self.task == Task::Classification {
            graph.node.push(b::label_node());
        }
        let doc = match self.kind {
            EnsembleKind::Voting => "Soft-voting ensemble: the mean of the members' outputs.",
            EnsembleKind::Stacking => {
                "Stacking ensemble: a meta-model on the members' concatenated outputs."
            }
        };
        let bytes = b::model_bytes(
            graph,
            &ModelMeta {
                family: "ensemble",
                task: self.task,
                classes: &self.classes,
                features: &self.feature_names,
                version,
                doc,
            },
        );
        match (categorical, pb::ModelProto::decode(&bytes[..])) {
            (Some(c), Ok(mut m)) => {
                m.metadata_props.push(c);
                m.encode_to_vec()
            }
            _ => bytes,
        }
    }

    /// Kind, members (family and their card hyperparameters), and for
    /// stacking the meta-model, its inputs and the folds, for the card.
    pub fn hyperparameters(&self, cfg: &ModelConfig) -> serde_json::Value {
        let members: Vec<serde_json::Value> = self
            .members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "family": m.family().name(),
                    "hyperparameters": super::hyperparameters(m, cfg),
                })
            })
            .collect();
        let mut out = serde_json::json!({
            "kind": self.kind.name(),
            "members": members,
        });
        if let Some(meta) = &self.meta {
            out["meta"] = serde_json::json!({
                "family": meta.family().name(),
                "hyperparameters": super::hyperparameters(meta, cfg),
                "inputs": self.meta_feature_names(),
                "folds": self.folds,
                "l2_cv": self.meta_l2_cv,
            });
        }
        out
    }
}

/// The ensemble candidate of a training ([`super::train_dataset`]):
/// `members` (the best candidates, fit on `train`) combined by `kind`.
///
/// # Errors
/// [`EnsembleError::NeedsHoldout`] with `evaluation = "kfold"`;
/// [`EnsembleError::TooFewMembers`] when fewer than two candidates were
/// trained; else as [`EnsembleModel::from_members`].
pub fn candidate(
    kind: EnsembleKind,
    members: Vec<Model>,
    cfg: &ModelConfig,
    train: &Dataset,
    features: &[String],
    cancelled: &dyn Fn() -> bool,
) -> Result<Model, TrainError> {
    if cfg.evaluation != super::select::Evaluation::Holdout {
        return Err(EnsembleError::NeedsHoldout.into());
    }
    let e = EnsembleModel::from_members(kind, members, cfg, train, features, cancelled)?;
    Ok(Model::Ensemble(Box::new(e)))
}

/// The best `k` of `candidates` (model, selection score) by `better`, best
/// first; ties and unscored candidates keep candidate order.
pub fn best_members<'a>(
    candidates: impl IntoIterator<Item = (&'a Model, Option<f64>)>,
    k: usize,
    better: impl Fn(f64, f64) -> bool,
) -> Vec<Model> {
    let mut ranked: Vec<(&Model, Option<f64>)> = candidates.into_iter().collect();
    // A stable insertion sort: `better` is a strict order on scores.
    let mut sorted: Vec<(&Model, Option<f64>)> = Vec::with_capacity(ranked.len());
    for c in ranked.drain(..) {
        let at = sorted
            .iter()
            .position(|s| match (c.1, s.1) {
                (Some(a), Some(b)) => better(a, b),
                (Some(_), None) => true,
                _ => false,
            })
            .unwrap_or(sorted.len());
        sorted.insert(at, c);
    }
    sorted.into_iter().take(k).map(|(m, _)| m.clone()).collect()
}

fn check_members(
    members: &[Model],
    task: Task,
    classes: &[String],
    features: &[String],
) -> Result<(), EnsembleError> {
    if members.len() < 2 {
        return Err(EnsembleError::TooFewMembers(members.len()));
    }
    let mut want_classes = classes.to_vec();
    want_classes.sort();
    for (index, m) in members.iter().enumerate() {
        let family = m.family().name();
        if matches!(m, Model::Ensemble(_)) {
            return Err(EnsembleError::Nested { index });
        }
        if m.task() != task {
            return Err(EnsembleError::Task {
                index,
                family,
                found: m.task(),
                expected: task,
            });
        }
        if m.feature_names() != features {
            return Err(EnsembleError::Features {
                index,
                family,
                found: m.feature_names().to_vec(),
                expected: features.to_vec(),
            });
        }
        let mut found = m.classes().to_vec();
        found.sort();
        if found != want_classes {
            return Err(EnsembleError::Classes {
                index,
                family,
                found: m.classes().to_vec(),
                expected: classes.to_vec(),
            });
        }
    }
    Ok(())
}

/// Appends the graph of `onnx` (an edgeloop model) to `graph`: every node,
/// initializer and value name gets `prefix`, except the shared input
/// [`INPUT`] (renamed `input`), the shared strings of categorical features
/// ([`CATEGORIES_INPUT`]) and the names in `keep`; the node producing
/// [`OUTPUT_LABEL`] is dropped. Nodes keep their domain.
fn embed(graph: &mut pb::GraphProto, onnx: &[u8], prefix: &str, input: &str, keep: &[&str]) {
    // The bytes come from a family's `to_onnx` in this process: they decode.
    let Some(part) = pb::ModelProto::decode(onnx).ok().and_then(|m| m.graph) else {
        return;
    };
    let rename = |name: &str| -> String {
        if name.is_empty() || keep.contains(&name) || name == CATEGORIES_INPUT {
            name.to_string()
        } else if name == INPUT {
            input.to_string()
        } else {
            format!("{prefix}{name}")
        }
    };
    for mut node in part.node {
        if node.output.iter().any(|o| o == OUTPUT_LABEL) {
            continue;
        }
        node.name = format!("{prefix}{}", node.name);
        node.input.iter_mut().for_each(|n| *n = rename(n));
        node.output.iter_mut().for_each(|n| *n = rename(n));
        graph.node.push(node);
    }
    for mut t in part.initializer {
        t.name = rename(&t.name);
        graph.initializer.push(t);
    }
    for mut v in part.value_info {
        v.name = rename(&v.name);
        graph.value_info.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::Dataset;

    /// Two features, three classes by the sign pattern, some missing values.
    fn data() -> Dataset {
        let mut d = Dataset::empty(
            Task::Classification,
            vec!["a".into(), "b".into(), "c".into()],
            2,
        );
        for i in 0..150 {
            let (u, v) = ((i % 13) as f32 - 6.0, (i % 7) as f32 - 3.0);
            d.x.extend([if i % 17 == 0 { f32::NAN } else { u }, v]);
            d.y.push(usize::from(u > 0.0) + usize::from(v > 1.0));
            d.timestamps.push(i);
        }
        d
    }

    fn names() -> Vec<String> {
        vec!["u".into(), "v".into()]
    }

    #[test]
    fn voting_is_the_mean_of_the_members_and_maps_classes_by_name() {
        let d = data();
        let cfg = ModelConfig::default();
        let families = [Family::Logistic, Family::Tree];
        let e = EnsembleModel::fit(EnsembleKind::Voting, &families, &cfg, &d, &names(), &|| {
            false
        })
        .unwrap();
        let (p0, p1) = (e.members[0].predict(&d.x), e.members[1].predict(&d.x));
        let got = e.predict(&d.x);
        for ((g, a), b) in got.iter().zip(&p0).zip(&p1) {
            assert!((g - (a + b) / 2.0).abs() < 1e-6);
        }
        // A member whose classes come in another order is mapped by name.
        let mut shuffled = e.clone();
        if let Model::Logistic(m) = &mut shuffled.members[0] {
            m.classes.swap(0, 2);
            let nc = 3;
            for row in m.weights.chunks_exact_mut(nc) {
                row.swap(0, 2);
            }
            m.bias.swap(0, 2);
        }
        let again = shuffled.predict(&d.x);
        for (a, b) in got.iter().zip(&again) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!(shuffled.column_map(&shuffled.members[0]).is_some());
    }

    #[test]
    fn stacking_fits_the_meta_model_on_every_member_column() {
        let d = data();
        let cfg = ModelConfig {
            folds: 3,
            ..ModelConfig::default()
        };
        let e = EnsembleModel::fit(
            EnsembleKind::Stacking,
            &[Family::Logistic, Family::Tree],
            &cfg,
            &d,
            &names(),
            &|| false,
        )
        .unwrap();
        let meta = e.meta.as_ref().unwrap();
        assert_eq!(meta.feature_names().len(), 6);
        assert_eq!(meta.feature_names()[3], "m1_tree_a");
        assert_eq!(e.folds, 3);
        let p = e.predict(&d.x);
        assert_eq!(p.len(), d.len() * 3);
        for row in p.chunks_exact(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn members_that_do_not_fit_together_are_refused() {
        let d = data();
        let cfg = ModelConfig::default();
        let fit = |f| fit_model(f, &cfg, &d, &names(), None, &|| false).unwrap();
        let one = vec![fit(Family::Logistic)];
        let err =
            EnsembleModel::from_members(EnsembleKind::Stacking, one, &cfg, &d, &names(), &|| false);
        assert!(matches!(
            err,
            Err(TrainError::Ensemble(EnsembleError::TooFewMembers(1)))
        ));
        let other = vec!["v".to_string(), "u".to_string()];
        let err = EnsembleModel::from_members(
            EnsembleKind::Voting,
            vec![fit(Family::Logistic), fit(Family::Tree)],
            &cfg,
            &d,
            &other,
            &|| false,
        );
        assert!(matches!(
            err,
            Err(TrainError::Ensemble(EnsembleError::Features {
                index: 0,
                ..
            }))
        ));
    }

    #[test]
    fn best_members_rank_by_score_and_keep_order_on_ties() {
        let d = data();
        let cfg = ModelConfig::default();
        let fit = |f| fit_model(f, &cfg, &d, &names(), None, &|| false).unwrap();
        let (l, t, f) = (fit(Family::Logistic), fit(Family::Tree), fit(Family::Mlp));
        let best = best_members(
            [(&l, Some(0.5)), (&t, Some(0.9)), (&f, Some(0.9))],
            2,
            |a, b| a > b,
        );
        let fams: Vec<Family> = best.iter().map(Model::family).collect();
        assert_eq!(fams, [Family::Tree, Family::Mlp]);
    }
}
