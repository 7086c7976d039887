//! Multi-layer perceptron (a feed-forward neural network) for classification
//! and regression, trained with Adam on mini-batches.
//!
//! Follows scikit-learn's `MLPClassifier` / `MLPRegressor` with
//! `solver="adam"` and `activation="relu"` (scikit-learn user guide, section
//! 1.17 "Neural network models (supervised)", and
//! `sklearn/neural_network/_multilayer_perceptron.py`):
//!
//! * inputs: mean imputation and standard scaling fitted on the training rows
//!   ([`StandardScaler`]), as the logistic family;
//! * hidden layers: `h = relu(a W + b)`, `W` `[n_in, n_out]`;
//! * classifier: softmax output over all classes and cross-entropy loss.
//!   For two classes too, where scikit-learn uses a single logistic unit:
//!   a softmax over two logits is the same function family (`σ(l₁ − l₀)`),
//!   but the output layer has two columns and the initialisation differs, so
//!   the fits are not bitwise comparable, only statistically;
//! * regressor: identity output and squared loss `½ (ŷ − y)²`;
//! * objective per batch of `B` samples: mean loss `+ (l2 / 2B) Σ ‖W‖²`
//!   (weights only, intercepts unpenalised; sklearn's `alpha`);
//! * initialisation: Glorot & Bengio (2010), "Understanding the difficulty of
//!   training deep feedforward neural networks", AISTATS, uniform in
//!   `±sqrt(6 / (n_in + n_out))` for weights and intercepts, as sklearn's
//!   `_init_coef`;
//! * optimiser: Adam, Kingma & Ba (2015), "Adam: A Method for Stochastic
//!   Optimization", ICLR, with sklearn's defaults `β₁ = 0.9`, `β₂ = 0.999`,
//!   `ε = 1e-8` and its bias-corrected step
//!   `lr · sqrt(1 − β₂ᵗ) / (1 − β₁ᵗ) · m / (sqrt(v) + ε)`;
//! * epochs: the training rows are shuffled each epoch with the seeded RNG
//!   and cut into batches of `batch_size` (the last one smaller);
//! * stopping, as sklearn's `_update_no_improvement_count`: without early
//!   stopping, an epoch whose mean training loss is not below the best by
//!   `tol` counts as no improvement; with early stopping, a seeded
//!   `validation_fraction` of the rows is held out (not stratified) and an
//!   epoch whose validation score (accuracy, or R² for a regressor) is not
//!   above the best by `tol` counts; more than `patience` such epochs in a
//!   row stop training, and early stopping restores the best-scoring weights.
//!
//! Training computes in `f64`; the model stores `f32` weights and
//! [`MlpModel::predict`] computes in `f32` in the order of the exported ONNX
//! graph (impute, scale, then per layer MatMul, Add, Relu; Softmax last).

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::features::scaler::StandardScaler;
use crate::learn::model::{check_shapes, Target, Task, TrainError};
use crate::onnx::builder::{self as b, ModelMeta, OUTPUT_PREDICTION, OUTPUT_PROBABILITIES};

/// Adam's first-moment decay (Kingma & Ba 2015; sklearn's `beta_1`).
const BETA_1: f64 = 0.9;
/// Adam's second-moment decay (sklearn's `beta_2`).
const BETA_2: f64 = 0.999;
/// Adam's denominator guard (sklearn's `epsilon`).
const EPSILON: f64 = 1e-8;

/// Training settings of the `mlp` family. Every key is optional; the
/// defaults are sized for small edge boards (two small hidden layers, a few
/// seconds of training on thousands of samples).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Units of each hidden layer, input side first (sklearn's
    /// `hidden_layer_sizes`). Default `[32, 16]`.
    pub hidden_layers: Vec<usize>,
    /// Adam's step size (sklearn's `learning_rate_init`), > 0. Default `1e-3`.
    pub learning_rate: f64,
    /// L2 penalty on the weights (sklearn's `alpha`), ≥ 0. Default `1e-4`.
    pub l2: f64,
    /// Samples per mini-batch, ≥ 1; clipped to the number of training
    /// samples (sklearn's `"auto"` is `min(200, n)`). Default `200`.
    pub batch_size: usize,
    /// Most passes over the training samples (sklearn's `max_iter`). `0`
    /// trains nothing: the model keeps its initial weights (those of `init`
    /// when warm-starting). Default `200`.
    pub max_epochs: usize,
    /// Hold out `validation_fraction` of the samples and stop on its score;
    /// the best-scoring weights are kept. Default `true`.
    pub early_stopping: bool,
    /// Fraction of the samples held out for early stopping, in (0, 1).
    /// When it would hold fewer than 2 samples (or leave none to train on),
    /// that fit runs without early stopping. Default `0.1`.
    pub validation_fraction: f64,
    /// Epochs without improvement tolerated before stopping, ≥ 1 (sklearn's
    /// `n_iter_no_change`). Default `10`.
    pub patience: usize,
    /// Least improvement that counts: of the training loss, or of the
    /// validation score with early stopping, ≥ 0. Default `1e-4`.
    pub tol: f64,
    /// Seed of the initialisation, the validation split and the shuffles.
    /// Default `0`.
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self {
            hidden_layers: vec![32, 16],
            learning_rate: 1e-3,
            l2: 1e-4,
            batch_size: 200,
            max_epochs: 200,
            early_stopping: true,
            validation_fraction: 0.1,
            patience: 10,
            tol: 1e-4,
            seed: 0,
        }
    }
}

impl MlpConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// A message that starts with the offending key (relative to the
    /// family's config section), e.g. `hidden_layers[1]: 0 units`.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_layers.is_empty() {
            return Err("hidden_layers: must not be empty".into());
        }
        if let Some(i) = self.hidden_layers.iter().position(|&u| u == 0) {
            return Err(format!("hidden_layers[{i}]: 0 units"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!(
                "learning_rate: must be a positive number, got {}",
                self.learning_rate
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(format!("l2: must be 0 or more, got {}", self.l2));
        }
        if self.batch_size == 0 {
            return Err("batch_size: must be at least 1".into());
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            return Err(format!(
                "validation_fraction: must be in (0, 1), got {}",
                self.validation_fraction
            ));
        }
        if self.patience == 0 {
            return Err("patience: must be at least 1".into());
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(format!("tol: must be 0 or more, got {}", self.tol));
        }
        Ok(())
    }
}

/// Why training stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlpStop {
    /// `max_epochs` epochs ran.
    MaxEpochs,
    /// More than `patience` epochs in a row did not improve by `tol`.
    NoImprovement,
}

/// One dense layer, in the layout of the ONNX `MatMul` + `Add`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Layer {
    /// `[n_in, n_out]` row-major.
    weights: Vec<f32>,
    /// `[n_out]`.
    bias: Vec<f32>,
}

impl Layer {
    fn n_out(&self) -> usize {
        self.bias.len()
    }

    fn n_in(&self) -> usize {
        self.weights.len() / self.bias.len().max(1)
    }
}

/// A trained network: everything needed to predict and to export to ONNX.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpModel {
    task: Task,
    /// Class names; index k is output column k (empty for a regressor).
    classes: Vec<String>,
    feature_names: Vec<String>,
    scaler: StandardScaler,
    /// Hidden layers then the output layer.
    layers: Vec<Layer>,
    config: MlpConfig,
    epochs: usize,
    stop: MlpStop,
    /// Mean training loss (data loss plus penalty) of the last epoch run.
    final_loss: Option<f64>,
    /// Best validation score (accuracy or R²) with early stopping.
    best_validation_score: Option<f64>,
    /// Whether training continued from `init`'s weights.
    warm_started: bool,
}

/// Geometry of a network: units per layer (input first, output last) and
/// where each layer's weights and intercepts sit in the flat parameter
/// vector (`W₀, b₀, W₁, b₁, …`).
struct Geometry {
    units: Vec<usize>,
    offsets: Vec<usize>,
    n_params: usize,
}

impl Geometry {
    fn new(units: Vec<usize>) -> Self {
        let mut offsets = Vec::with_capacity(units.len());
        let mut at = 0;
        for w in units.windows(2) {
            offsets.push(at);
            at += w[0] * w[1] + w[1];
        }
        Self {
            units,
            offsets,
            n_params: at,
        }
    }

    fn n_layers(&self) -> usize {
        self.units.len() - 1
    }

    fn weights(&self, l: usize) -> std::ops::Range<usize> {
        let start = self.offsets[l];
        start..start + self.units[l] * self.units[l + 1]
    }

    fn bias(&self, l: usize) -> std::ops::Range<usize> {
        let end = self.weights(l).end;
        end..end + self.units[l + 1]
    }
}

/// Buffers of one batch, allocated once per fit: activations per layer
/// (`acts[0]` is the input batch) and the loss gradients with respect to
/// each layer's pre-activation (`deltas[l]` pairs with `acts[l]`;
/// `deltas[0]` is unused), plus the batch's targets.
struct Workspace {
    acts: Vec<Vec<f64>>,
    deltas: Vec<Vec<f64>>,
    classes: Vec<usize>,
    values: Vec<f64>,
}

impl Workspace {
    fn new(geometry: &Geometry, rows: usize) -> Self {
        Self {
            acts: geometry
                .units
                .iter()
                .map(|&u| vec![0.0; rows * u])
                .collect(),
            deltas: geometry
                .units
                .iter()
                .enumerate()
                .map(|(l, &u)| vec![0.0; if l == 0 { 0 } else { rows * u }])
                .collect(),
            classes: Vec::with_capacity(rows),
            values: Vec::with_capacity(rows),
        }
    }

    /// Copies samples `idx` and their targets in.
    fn load(&mut self, samples: &Samples<'_>, idx: &[usize]) {
        let Samples { z, labels } = samples;
        let nf = z.len() / labels.len().max(1);
        for (dst, &i) in self.acts[0].chunks_exact_mut(nf).zip(idx) {
            dst.copy_from_slice(&z[i * nf..(i + 1) * nf]);
        }
        self.classes.clear();
        self.values.clear();
        match labels {
            Labels::Classes(y) => self.classes.extend(idx.iter().map(|&i| y[i])),
            Labels::Values(y) => self.values.extend(idx.iter().map(|&i| y[i])),
        }
    }
}

/// Scaled inputs `[n, n_features]` and their targets.
struct Samples<'a> {
    z: &'a [f64],
    labels: Labels<'a>,
}

/// Training targets: class indices or values.
enum Labels<'a> {
    Classes(&'a [usize]),
    Values(&'a [f64]),
}

impl Labels<'_> {
    fn len(&self) -> usize {
        match self {
            Labels::Classes(y) => y.len(),
            Labels::Values(y) => y.len(),
        }
    }
}

/// Forward pass over the first `rows` rows of `ws.acts[0]`: ReLU hidden
/// layers, softmax (classification) or identity (regression) output.
fn forward(geometry: &Geometry, params: &[f64], task: Task, ws: &mut Workspace, rows: usize) {
    let n_layers = geometry.n_layers();
    for l in 0..n_layers {
        let (n_in, n_out) = (geometry.units[l], geometry.units[l + 1]);
        let w = &params[geometry.weights(l)];
        let bias = &params[geometry.bias(l)];
        let (before, after) = ws.acts.split_at_mut(l + 1);
        let input = &before[l][..rows * n_in];
        let output = &mut after[0][..rows * n_out];
        for (x, o) in input.chunks_exact(n_in).zip(output.chunks_exact_mut(n_out)) {
            o.copy_from_slice(bias);
            for (&xi, wi) in x.iter().zip(w.chunks_exact(n_out)) {
                o.iter_mut().zip(wi).for_each(|(oj, &wij)| *oj += xi * wij);
            }
        }
        if l + 1 < n_layers {
            output.iter_mut().for_each(|v| *v = v.max(0.0));
        } else if task == Task::Classification {
            for o in output.chunks_exact_mut(n_out) {
                let max = o.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                o.iter_mut().for_each(|v| {
                    *v = (*v - max).exp();
                    sum += *v;
                });
                o.iter_mut().for_each(|v| *v /= sum);
            }
        }
    }
}

/// After [`forward`]: sets the output deltas (`p − onehot(y)` or `ŷ − y`)
/// and returns the summed data loss of the batch (cross-entropy with
/// probabilities clipped to `[ε, 1 − ε]` as sklearn's `log_loss`, or
/// `½ (ŷ − y)²`).
fn output_deltas(geometry: &Geometry, ws: &mut Workspace, rows: usize) -> f64 {
    let last = geometry.n_layers();
    let n_out = geometry.units[last];
    let out = &ws.acts[last][..rows * n_out];
    let delta = &mut ws.deltas[last][..rows * n_out];
    delta.copy_from_slice(out);
    let mut loss = 0.0;
    if ws.classes.is_empty() {
        for (d, &y) in delta.iter_mut().zip(&ws.values) {
            *d -= y;
            loss += 0.5 * *d * *d;
        }
    } else {
        for (d, &y) in delta.chunks_exact_mut(n_out).zip(&ws.classes) {
            loss -= d[y].clamp(f64::EPSILON, 1.0 - f64::EPSILON).ln();
            d[y] -= 1.0;
        }
    }
    loss
}

/// Back-propagates the output deltas of `rows` samples into `grad` (the
/// gradient of the batch objective: mean loss plus `(l2 / 2·rows) Σ ‖W‖²`).
fn backward(
    geometry: &Geometry,
    params: &[f64],
    ws: &mut Workspace,
    rows: usize,
    l2: f64,
    grad: &mut [f64],
) {
    let inv = 1.0 / rows as f64;
    for l in (0..geometry.n_layers()).rev() {
        let (n_in, n_out) = (geometry.units[l], geometry.units[l + 1]);
        let w = &params[geometry.weights(l)];
        let (gw, gb) = grad[geometry.offsets[l]..geometry.bias(l).end].split_at_mut(n_in * n_out);
        gw.iter_mut().for_each(|g| *g = 0.0);
        gb.iter_mut().for_each(|g| *g = 0.0);
        let input = &ws.acts[l][..rows * n_in];
        let (d_before, d_after) = ws.deltas.split_at_mut(l + 1);
        let delta = &d_after[0][..rows * n_out];
        for (x, d) in input.chunks_exact(n_in).zip(delta.chunks_exact(n_out)) {
            for (&xi, gwi) in x.iter().zip(gw.chunks_exact_mut(n_out)) {
                gwi.iter_mut().zip(d).for_each(|(g, &dj)| *g += xi * dj);
            }
            gb.iter_mut().zip(d).for_each(|(g, &dj)| *g += dj);
        }
        gw.iter_mut()
            .zip(w)
            .for_each(|(g, &wi)| *g = (*g + l2 * wi) * inv);
        gb.iter_mut().for_each(|g| *g *= inv);
        if l > 0 {
            // δ_{l} = (δ_{l+1} Wᵀ) ⊙ relu'(a_l); relu' is 0 where the unit is 0.
            let prev = &mut d_before[l][..rows * n_in];
            for ((p, d), a) in prev
                .chunks_exact_mut(n_in)
                .zip(delta.chunks_exact(n_out))
                .zip(input.chunks_exact(n_in))
            {
                for ((pi, wi), &ai) in p.iter_mut().zip(w.chunks_exact(n_out)).zip(a) {
                    *pi = if ai > 0.0 {
                        wi.iter().zip(d).map(|(wij, dj)| wij * dj).sum()
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Objective and gradient of one batch already in `ws`: mean data loss plus
/// `(l2 / 2·rows) Σ ‖W‖²`.
fn loss_and_gradient(
    geometry: &Geometry,
    params: &[f64],
    task: Task,
    ws: &mut Workspace,
    rows: usize,
    l2: f64,
    grad: &mut [f64],
) -> f64 {
    forward(geometry, params, task, ws, rows);
    let data = output_deltas(geometry, ws, rows);
    backward(geometry, params, ws, rows, l2, grad);
    let penalty: f64 = (0..geometry.n_layers())
        .map(|l| {
            params[geometry.weights(l)]
                .iter()
                .map(|w| w * w)
                .sum::<f64>()
        })
        .sum();
    (data + 0.5 * l2 * penalty) / rows as f64
}

/// Validation score of `params` on samples `idx`: accuracy for a classifier,
/// R² for a regressor (sklearn's `r2_score`: 1 for a perfect fit of a
/// constant target, else 0 when the target is constant). Runs in batches
/// of the workspace's size.
fn score(
    geometry: &Geometry,
    params: &[f64],
    task: Task,
    ws: &mut Workspace,
    samples: &Samples<'_>,
    idx: &[usize],
    batch: usize,
) -> f64 {
    let last = geometry.n_layers();
    let n_out = geometry.units[last];
    let (mut correct, mut ss_res) = (0usize, 0.0);
    for chunk in idx.chunks(batch) {
        ws.load(samples, chunk);
        forward(geometry, params, task, ws, chunk.len());
        let out = &ws.acts[last][..chunk.len() * n_out];
        match samples.labels {
            Labels::Classes(_) => {
                for (row, &y) in out.chunks_exact(n_out).zip(&ws.classes) {
                    let best = row
                        .iter()
                        .enumerate()
                        .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                            if v > bv {
                                (i, v)
                            } else {
                                (bi, bv)
                            }
                        })
                        .0;
                    correct += usize::from(best == y);
                }
            }
            Labels::Values(_) => {
                ss_res += out
                    .iter()
                    .zip(&ws.values)
                    .map(|(p, y)| (p - y) * (p - y))
                    .sum::<f64>();
            }
        }
    }
    match samples.labels {
        Labels::Classes(_) => correct as f64 / idx.len() as f64,
        Labels::Values(y) => {
            let mean = idx.iter().map(|&i| y[i]).sum::<f64>() / idx.len() as f64;
            let ss_tot: f64 = idx.iter().map(|&i| (y[i] - mean).powi(2)).sum();
            if ss_tot > 0.0 {
                1.0 - ss_res / ss_tot
            } else if ss_res == 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

/// Adam's state (Kingma & Ba 2015, Algorithm 1), as sklearn's
/// `AdamOptimizer`.
struct Adam {
    lr: f64,
    m: Vec<f64>,
    v: Vec<f64>,
    /// `β₁ᵗ` and `β₂ᵗ` after `t` steps.
    beta_1_t: f64,
    beta_2_t: f64,
}

impl Adam {
    fn new(lr: f64, n: usize) -> Self {
        Self {
            lr,
            m: vec![0.0; n],
            v: vec![0.0; n],
            beta_1_t: 1.0,
            beta_2_t: 1.0,
        }
    }

    fn step(&mut self, params: &mut [f64], grad: &[f64]) {
        self.beta_1_t *= BETA_1;
        self.beta_2_t *= BETA_2;
        let lr = self.lr * (1.0 - self.beta_2_t).sqrt() / (1.0 - self.beta_1_t);
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            *m = BETA_1 * *m + (1.0 - BETA_1) * g;
            *v = BETA_2 * *v + (1.0 - BETA_2) * g * g;
            *p -= lr * *m / (v.sqrt() + EPSILON);
        }
    }
}

impl MlpModel {
    /// Trains a network on `x` (`[n, n_features]` row-major `f32`, `NaN` =
    /// missing) for `target` (class indices, every one < `classes.len()`,
    /// or real values), with `cfg` (validated beforehand; an invalid one
    /// does not panic: the batch size is clipped to `[1, n]`).
    ///
    /// Warm start: when `init` has the same task, classes (same order),
    /// feature names and hidden layers, training continues from its
    /// weights, with its scaler kept as it is (not refitted on `x`), so
    /// that zero epochs give back `init`'s predictions exactly; Adam's
    /// moments start from zero, as sklearn's `warm_start`. Any other `init`
    /// is ignored and training starts from a fresh initialisation
    /// ([`MlpModel::hyperparameters`] says which happened).
    ///
    /// Deterministic: the same data, config and `init` give a bitwise-equal
    /// model. `cancelled` is polled before each epoch.
    ///
    /// # Errors
    /// [`TrainError::Empty`], [`TrainError::Shape`], [`TrainError::BadTarget`]
    /// for bad input; [`TrainError::TooFewClasses`] for fewer than 2 classes;
    /// [`TrainError::Cancelled`].
    pub fn fit(
        x: &[f32],
        target: &Target<'_>,
        feature_names: &[String],
        cfg: &MlpConfig,
        init: Option<&MlpModel>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        Self::fit_with_validation(x, target, feature_names, cfg, init, None, cancelled)
    }

    /// As [`MlpModel::fit`], with the early-stopping rows given: with
    /// `validation = Some(range)` and `early_stopping` set, the rows in
    /// `range` are the validation set (instead of a seeded
    /// `validation_fraction` of all rows) and every other row trains. Used
    /// when the training rows were augmented or oversampled: the validation
    /// rows are then split off before, and never augmented.
    ///
    /// # Errors
    /// As [`MlpModel::fit`].
    pub fn fit_with_validation(
        x: &[f32],
        target: &Target<'_>,
        feature_names: &[String],
        cfg: &MlpConfig,
        init: Option<&MlpModel>,
        validation: Option<std::ops::Range<usize>>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let given = validation;
        let nf = feature_names.len();
        check_shapes(x, target, nf)?;
        let (task, classes, labels, n_out) = match *target {
            Target::Classes { y, classes } => {
                if classes.len() < 2 {
                    return Err(TrainError::TooFewClasses(classes.len()));
                }
                (
                    Task::Classification,
                    classes.to_vec(),
                    Labels::Classes(y),
                    classes.len(),
                )
            }
            Target::Values(v) => (Task::Regression, Vec::new(), Labels::Values(v), 1),
        };
        let n = target.len();
        let init = init.filter(|m| {
            m.task == task
                && m.classes == classes
                && m.feature_names == feature_names
                && m.hidden_layers() == cfg.hidden_layers
        });
        let scaler = match init {
            Some(m) => m.scaler.clone(),
            None => StandardScaler::fit(x, nf),
        };
        let mut scaled = x.to_vec();
        scaler.transform_in_place(&mut scaled);
        let z: Vec<f64> = scaled.iter().map(|&v| f64::from(v)).collect();
        drop(scaled);
        let samples = Samples { z: &z, labels };

        let units: Vec<usize> = std::iter::once(nf)
            .chain(cfg.hidden_layers.iter().copied())
            .chain(std::iter::once(n_out))
            .collect();
        let geometry = Geometry::new(units);
        let mut rng = fastrand::Rng::with_seed(cfg.seed);
        let mut params = vec![0.0; geometry.n_params];
        match init {
            Some(m) => {
                for (l, layer) in m.layers.iter().enumerate() {
                    let at = geometry.offsets[l];
                    let (w, bias) =
                        params[at..geometry.bias(l).end].split_at_mut(layer.weights.len());
                    w.iter_mut()
                        .zip(&layer.weights)
                        .for_each(|(p, &v)| *p = f64::from(v));
                    bias.iter_mut()
                        .zip(&layer.bias)
                        .for_each(|(p, &v)| *p = f64::from(v));
                }
            }
            None => {
                for l in 0..geometry.n_layers() {
                    let (n_in, n_out) = (geometry.units[l], geometry.units[l + 1]);
                    let bound = (6.0 / (n_in + n_out) as f64).sqrt();
                    let range = geometry.offsets[l]..geometry.bias(l).end;
                    params[range]
                        .iter_mut()
                        .for_each(|p| *p = (2.0 * rng.f64() - 1.0) * bound);
                }
            }
        }

        // Validation split (seeded, not stratified), as sklearn's
        // `train_test_split(test_size=validation_fraction)`.
        let mut order: Vec<usize> = (0..n).collect();
        let mut validation: Vec<usize> = Vec::new();
        if let Some(range) = given.filter(|r| cfg.early_stopping && r.end <= n && r.len() < n) {
            order.retain(|i| !range.contains(i));
            validation = range.collect();
        } else if cfg.early_stopping {
            let n_val = (cfg.validation_fraction * n as f64).ceil() as usize;
            if n_val >= 2 && n_val < n {
                rng.shuffle(&mut order);
                validation = order.split_off(n - n_val);
            }
        }
        let mut train = order;
        let early_stopping = !validation.is_empty();
        let batch = cfg.batch_size.clamp(1, train.len());

        let mut ws = Workspace::new(&geometry, batch);
        let mut grad = vec![0.0; geometry.n_params];
        let mut adam = Adam::new(cfg.learning_rate, geometry.n_params);
        let mut best_params = params.clone();
        let mut best_loss = f64::INFINITY;
        let mut best_score = f64::NEG_INFINITY;
        let mut no_improvement = 0;
        let mut final_loss = None;
        let mut epochs = 0;
        let mut stop = MlpStop::MaxEpochs;
        while epochs < cfg.max_epochs {
            if cancelled() {
                return Err(TrainError::Cancelled);
            }
            rng.shuffle(&mut train);
            let mut accumulated = 0.0;
            for chunk in train.chunks(batch) {
                ws.load(&samples, chunk);
                let loss = loss_and_gradient(
                    &geometry,
                    &params,
                    task,
                    &mut ws,
                    chunk.len(),
                    cfg.l2,
                    &mut grad,
                );
                accumulated += loss * chunk.len() as f64;
                adam.step(&mut params, &grad);
            }
            epochs += 1;
            let loss = accumulated / train.len() as f64;
            final_loss = Some(loss);
            if early_stopping {
                let s = score(
                    &geometry,
                    &params,
                    task,
                    &mut ws,
                    &samples,
                    &validation,
                    batch,
                );
                if s < best_score + cfg.tol {
                    no_improvement += 1;
                } else {
                    no_improvement = 0;
                }
                if s > best_score {
                    best_score = s;
                    best_params.copy_from_slice(&params);
                }
            } else {
                if loss > best_loss - cfg.tol {
                    no_improvement += 1;
                } else {
                    no_improvement = 0;
                }
                best_loss = best_loss.min(loss);
            }
            if no_improvement > cfg.patience {
                stop = MlpStop::NoImprovement;
                break;
            }
        }
        if early_stopping {
            params = best_params;
        }

        let layers = (0..geometry.n_layers())
            .map(|l| Layer {
                weights: params[geometry.weights(l)]
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
                bias: params[geometry.bias(l)].iter().map(|&v| v as f32).collect(),
            })
            .collect();
        Ok(Self {
            task,
            classes,
            feature_names: feature_names.to_vec(),
            scaler,
            layers,
            config: cfg.clone(),
            epochs,
            stop,
            final_loss,
            best_validation_score: (early_stopping && best_score.is_finite()).then_some(best_score),
            warm_started: init.is_some(),
        })
    }

    /// What the model predicts.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Class names in output column order; empty for a regressor.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Feature names, in input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Units of each hidden layer.
    pub fn hidden_layers(&self) -> Vec<usize> {
        let n = self.layers.len().saturating_sub(1);
        self.layers[..n].iter().map(Layer::n_out).collect()
    }

    /// Epochs run, and why training stopped.
    pub fn epochs(&self) -> (usize, MlpStop) {
        (self.epochs, self.stop)
    }

    /// Best validation score (accuracy, or R² for a regressor) when early
    /// stopping ran.
    pub fn best_validation_score(&self) -> Option<f64> {
        self.best_validation_score
    }

    /// A classifier's probabilities `[n_rows, n_classes]` row-major, or a
    /// regressor's predictions `[n_rows]`, for `x` (`[n_rows, n_features]`
    /// row-major, `NaN` = missing; trailing values short of a row are
    /// ignored). Computed in `f32` in the order of the ONNX graph: impute,
    /// scale, then per layer MatMul (sum over inputs in order), Add, Relu,
    /// and Softmax last.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        let nf = self.feature_names.len();
        let n_out = self.layers.last().map_or(0, Layer::n_out);
        let n_rows = x.len() / nf.max(1);
        let mut z = x[..n_rows * nf].to_vec();
        self.scaler.transform_in_place(&mut z);
        let widest = self
            .layers
            .iter()
            .map(Layer::n_out)
            .max()
            .unwrap_or(0)
            .max(nf);
        let (mut a, mut h) = (vec![0f32; widest], vec![0f32; widest]);
        let mut out = Vec::with_capacity(n_rows * n_out);
        for row in z.chunks_exact(nf.max(1)) {
            a[..nf].copy_from_slice(row);
            for (l, layer) in self.layers.iter().enumerate() {
                let (n_in, n_out) = (layer.n_in(), layer.n_out());
                let o = &mut h[..n_out];
                o.iter_mut().for_each(|v| *v = 0.0);
                for (&ai, wi) in a[..n_in].iter().zip(layer.weights.chunks_exact(n_out)) {
                    o.iter_mut().zip(wi).for_each(|(oj, &wij)| *oj += ai * wij);
                }
                o.iter_mut()
                    .zip(&layer.bias)
                    .for_each(|(oj, &bj)| *oj += bj);
                if l + 1 < self.layers.len() {
                    o.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                std::mem::swap(&mut a, &mut h);
            }
            let o = &mut a[..n_out];
            if self.task == Task::Classification {
                let max = o.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                o.iter_mut().for_each(|v| *v = (*v - max).exp());
                let sum: f32 = o.iter().sum();
                o.iter_mut().for_each(|v| *v /= sum);
            }
            out.extend_from_slice(o);
        }
        out
    }

    /// The model as ONNX bytes ([`crate::onnx::builder`]'s contract; opset
    /// 13, standard operators only):
    ///
    /// ```text
    /// features [N, F] f32
    ///   → IsNaN → Where(isnan, mean, features) → Sub(mean) → Div(scale)
    ///   → per hidden layer l: MatMul(W_l) → Add(b_l) → Relu
    ///   → MatMul(W_out) → Add(b_out)
    ///   classifier: → Softmax(axis 1) → probabilities [N, C] f32
    ///               → ArgMax(axis 1, keepdims 0) → label [N] i64
    ///   regressor:  → prediction [N, 1] f32
    /// ```
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        let nf = self.feature_names.len() as i64;
        let (mut nodes, scaled) = b::impute_and_scale_nodes("mean", Some("scale"));
        let mut initializer = vec![
            b::tensor_f32("mean", &[nf], &self.scaler.mean),
            b::tensor_f32("scale", &[nf], &self.scaler.scale),
        ];
        let mut input = scaled.to_string();
        let n_layers = self.layers.len();
        for (l, layer) in self.layers.iter().enumerate() {
            let (w, bias) = (format!("layer{l}_weights"), format!("layer{l}_bias"));
            let matmul = format!("layer{l}_matmul");
            let last = l + 1 == n_layers;
            let added = match (last, self.task) {
                (false, _) => format!("layer{l}_add"),
                (true, Task::Classification) => "logits".to_string(),
                (true, Task::Regression) => OUTPUT_PREDICTION.to_string(),
            };
            initializer.push(b::tensor_f32(
                &w,
                &[layer.n_in() as i64, layer.n_out() as i64],
                &layer.weights,
            ));
            initializer.push(b::tensor_f32(&bias, &[layer.n_out() as i64], &layer.bias));
            nodes.push(b::node("MatMul", &[&input, &w], &matmul, vec![]));
            nodes.push(b::node("Add", &[&matmul, &bias], &added, vec![]));
            input = if last {
                added
            } else {
                let relu = format!("layer{l}_relu");
                nodes.push(b::node("Relu", &[&added], &relu, vec![]));
                relu
            };
        }
        let output = match self.task {
            Task::Classification => {
                nodes.push(b::node(
                    "Softmax",
                    &[&input],
                    OUTPUT_PROBABILITIES,
                    vec![b::attr_int("axis", 1)],
                ));
                nodes.push(b::label_node());
                b::classifier_outputs(self.classes.len())
            }
            Task::Regression => b::regressor_outputs(),
        };
        let graph = pb::GraphProto {
            name: "edgeloop_mlp".into(),
            node: nodes,
            initializer,
            input: vec![b::input_info(self.feature_names.len())],
            output,
            ..Default::default()
        };
        b::model_bytes(
            graph,
            &ModelMeta {
                family: "mlp",
                task: self.task,
                classes: &self.classes,
                features: &self.feature_names,
                version,
                doc: "Multi-layer perceptron (ReLU) with mean imputation and standard scaling.",
            },
        )
    }

    /// For the model card: the config, the epochs run, why training
    /// stopped, the last epoch's training loss, the best validation score
    /// (`null` without early stopping) and whether it was warm-started.
    pub fn hyperparameters(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.insert("epochs".into(), self.epochs.into());
            map.insert(
                "stop".into(),
                serde_json::to_value(self.stop).unwrap_or_default(),
            );
            map.insert("final_loss".into(), self.final_loss.into());
            map.insert(
                "best_validation_score".into(),
                self.best_validation_score.into(),
            );
            map.insert("warm_started".into(), self.warm_started.into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny network's analytic gradient against central finite
    /// differences of the batch objective.
    fn check_gradient(task: Task, labels: Labels<'_>, n_out: usize) {
        let (rows, nf) = (5, 3);
        let geometry = Geometry::new(vec![nf, 4, 3, n_out]);
        let mut rng = fastrand::Rng::with_seed(7);
        let z: Vec<f64> = (0..rows * nf).map(|_| rng.f64() * 4.0 - 2.0).collect();
        let params: Vec<f64> = (0..geometry.n_params).map(|_| rng.f64() - 0.5).collect();
        let idx: Vec<usize> = (0..rows).collect();
        let l2 = 0.3;
        let mut ws = Workspace::new(&geometry, rows);
        ws.load(&Samples { z: &z, labels }, &idx);
        let mut grad = vec![0.0; geometry.n_params];
        loss_and_gradient(&geometry, &params, task, &mut ws, rows, l2, &mut grad);
        let mut scratch = vec![0.0; geometry.n_params];
        let h = 1e-6;
        for i in 0..geometry.n_params {
            let mut p = params.clone();
            p[i] += h;
            let up = loss_and_gradient(&geometry, &p, task, &mut ws, rows, l2, &mut scratch);
            p[i] -= 2.0 * h;
            let down = loss_and_gradient(&geometry, &p, task, &mut ws, rows, l2, &mut scratch);
            let numeric = (up - down) / (2.0 * h);
            assert!(
                (numeric - grad[i]).abs() <= 1e-6 * (1.0 + numeric.abs()),
                "{task:?} parameter {i}: analytic {} vs numeric {numeric}",
                grad[i]
            );
        }
        assert!(grad.iter().any(|g| g.abs() > 1e-3), "gradient not trivial");
    }

    #[test]
    fn gradient_matches_finite_differences_for_softmax_cross_entropy() {
        check_gradient(Task::Classification, Labels::Classes(&[0, 2, 1, 2, 0]), 3);
    }

    #[test]
    fn gradient_matches_finite_differences_for_squared_loss() {
        check_gradient(
            Task::Regression,
            Labels::Values(&[0.5, -1.0, 2.0, 0.0, 1.5]),
            1,
        );
    }

    #[test]
    fn glorot_bounds_and_validation_keys() {
        let x: Vec<f32> = (0..40).map(|i| (i % 7) as f32).collect();
        let y: Vec<usize> = (0..20).map(|i| i % 2).collect();
        let classes = vec!["a".to_string(), "b".to_string()];
        let names = vec!["u".to_string(), "v".to_string()];
        let cfg = MlpConfig {
            max_epochs: 0,
            ..MlpConfig::default()
        };
        let target = Target::Classes {
            y: &y,
            classes: &classes,
        };
        let m = MlpModel::fit(&x, &target, &names, &cfg, None, &|| false).unwrap();
        assert_eq!(m.hidden_layers(), vec![32, 16]);
        for layer in &m.layers {
            let bound = (6.0 / (layer.n_in() + layer.n_out()) as f32).sqrt();
            assert!(layer
                .weights
                .iter()
                .chain(&layer.bias)
                .all(|w| w.abs() <= bound));
        }
        assert_eq!(MlpConfig::default().validate(), Ok(()));
        let bad = MlpConfig {
            validation_fraction: 1.0,
            ..MlpConfig::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("validation_fraction:"));
    }
}
