//! Linear support vector machine (hinge loss, L2 penalty) with calibrated
//! probabilities, on standardised features.
//!
//! # Model
//! Features are mean-imputed and standard-scaled ([`StandardScaler`]); each
//! binary classifier `f(z) = w·z + b` minimises the primal SVM objective
//!
//! ```text
//! (λ/2) ‖w‖²  +  (1/n) Σᵢ max(0, 1 − sᵢ (w·zᵢ + b)),    sᵢ ∈ {−1, +1},   λ = 1 / (n·c)
//! ```
//!
//! with the intercept `b` unpenalised. Multiplied by `n·c` this is
//! scikit-learn's `LinearSVC(C=c, loss="hinge")` objective
//! `½‖w‖² + C Σᵢ hingeᵢ`, so `c` means what sklearn's `C` means; the one
//! difference is that liblinear penalises the intercept as an extra feature
//! of value `intercept_scaling` (see `tests/fixtures/svm_linear/gen_svm_linear.py`).
//! Two classes: one classifier for class 1 against class 0. Three or more:
//! one-vs-rest, one classifier per class (a class absent from the training
//! labels gets a classifier with no positive sample).
//!
//! # Optimiser
//! Stochastic sub-gradient descent in the form of Pegasos (Shalev-Shwartz,
//! Singer, Srebro & Cotter, "Pegasos: primal estimated sub-gradient solver
//! for SVM", Math. Program. 127 (2011) 3–30, Fig. 1 with the optional
//! projection onto the ball of radius `1/√λ`), one sample per step, a fresh
//! seeded permutation of the samples each epoch. Two changes, both standard:
//!
//! * the step is `η_t = 1 / (λ (t + t₀))` with Bottou's offset
//!   `t₀ = 1 / (λ η₀)`, `η₀ = λ^(−1/4)` (L. Bottou, "Stochastic gradient
//!   descent tricks", 2012; scikit-learn's `SGDClassifier(learning_rate=
//!   "optimal")`), instead of Pegasos' `t₀ = 0`, whose first steps of size
//!   `1/λ = n·c` throw the unpenalised intercept far off;
//! * the returned weights are the polynomial-decay average of the iterates,
//!   `w̄ ← (1 − 4/(t+3)) w̄ + 4/(t+3) w` (Shamir & Zhang, "Stochastic gradient
//!   descent for non-smooth optimization", ICML 2013, η = 3), which converges
//!   at the `O(1/(λT))` rate the last iterate lacks.
//!
//! There is no tolerance: the hinge objective is not smooth, so neither the
//! sub-gradient nor the step tells how close the optimum is; `epochs` sets the
//! work (and the final objective is reported by
//! [`SvmModel::hyperparameters`]).
//!
//! # Probabilities
//! Platt scaling per classifier, `p = 1 / (1 + exp(A f + B))` (J. Platt,
//! "Probabilistic outputs for support vector machines", 1999), fitted by
//! Newton's method with backtracking and Platt's smoothed targets
//! `(N₊+1)/(N₊+2)` and `1/(N₋+2)` (H.-T. Lin, C.-J. Lin & R. C. Weng, "A note
//! on Platt's probabilistic outputs for support vector machines", Machine
//! Learning 68 (2007) 267–276, Algorithm 1): see [`platt_scaling`]. The
//! decision values it is fitted on are out-of-fold: the training set is split
//! into `calibration_folds` stratified folds (scikit-learn's
//! `StratifiedKFold(shuffle=False)` assignment), a classifier is trained on
//! the other folds and scores the held-out one; the served classifier is then
//! trained on every sample. This is scikit-learn's
//! `CalibratedClassifierCV(cv=k, method="sigmoid", ensemble=False)`. Decision
//! values of the training samples themselves would be over-confident (the
//! classifier was fitted to push them past the margin). Three or more
//! classes: the per-class probabilities are normalised to sum to 1 (as
//! `CalibratedClassifierCV` does for one-vs-rest); two classes: `[1 − p, p]`.

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::features::scaler::StandardScaler;
use crate::learn::model::{check_shapes, Target, Task, TrainError};
use crate::onnx::builder::{self as b, ModelMeta, OUTPUT_PROBABILITIES};

/// Hyperparameters of the `svm` family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SvmConfig {
    /// Inverse regularisation strength (> 0), scikit-learn's `C`: the
    /// objective is `½‖w‖² + c Σᵢ hingeᵢ`, i.e. `λ = 1/(n·c)` per sample.
    pub c: f64,
    /// Passes over the training samples (≥ 1), per classifier fit.
    pub epochs: usize,
    /// Stratified folds whose out-of-fold decision values calibrate the
    /// probabilities (≥ 2). Training costs `calibration_folds + 1` fits.
    pub calibration_folds: usize,
    /// Seed of the sample order; same seed and data give the same model.
    pub seed: u64,
}

impl Default for SvmConfig {
    fn default() -> Self {
        Self {
            c: 1.0,
            epochs: 100,
            calibration_folds: 5,
            seed: 0,
        }
    }
}

impl SvmConfig {
    /// Checks every hyperparameter.
    ///
    /// # Errors
    /// A message naming the key (relative to the family section) and why.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.c.is_finite() && self.c > 0.0) {
            return Err(format!("c: {} must be positive", self.c));
        }
        if self.epochs == 0 {
            return Err("epochs: 0 must be at least 1".into());
        }
        if self.calibration_folds < 2 {
            return Err(format!(
                "calibration_folds: {} must be at least 2",
                self.calibration_folds
            ));
        }
        Ok(())
    }
}

/// A trained linear SVM with Platt-calibrated probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SvmModel {
    /// Class names; index k is probability column k.
    pub classes: Vec<String>,
    /// Feature names, in input order.
    pub feature_names: Vec<String>,
    pub scaler: StandardScaler,
    /// Weights `[n_features, m]` row-major (the ONNX MatMul layout), `m` = 1
    /// for two classes (class 1 against class 0), else `n_classes`.
    pub weights: Vec<f32>,
    /// Intercepts `[m]`.
    pub bias: Vec<f32>,
    /// Platt's `A` per classifier, `[m]`: `p = 1/(1 + exp(A f + B))`.
    pub platt_a: Vec<f32>,
    /// Platt's `B` per classifier, `[m]`.
    pub platt_b: Vec<f32>,
    /// SGD steps behind the served weights, counting those of the warm-start
    /// model; a warm start continues the step-size schedule from here.
    pub steps: u64,
    /// Per-sample `λ = 1/(n·c)` of the last fit.
    pub lambda: f64,
    /// Primal objective of each classifier on its training samples, `[m]`.
    pub objective: Vec<f64>,
    /// Whether the fit started from a previous model.
    pub warm_started: bool,
    pub config: SvmConfig,
}

impl SvmModel {
    /// Trains on `x` (`[n, n_features]` row-major, `NaN` = missing). `init`,
    /// when it has the same classes and features, is where SGD starts (warm
    /// start: its weights are mapped into the new scaling and its step count
    /// continues), for the served classifier and the calibration folds
    /// alike, so the calibrated decision values come from classifiers that
    /// took the same path as the served one (folds started from zero with
    /// only `epochs` of work would be less converged and miscalibrate it).
    /// The price: `init` may have seen a held-out fold's samples, which makes
    /// the calibration slightly over-confident. An incompatible `init` is
    /// ignored. `cancelled` is polled once per epoch.
    ///
    /// # Errors
    /// [`TrainError::Unsupported`] for a [`Target::Values`] target;
    /// [`TrainError::Empty`], [`TrainError::Shape`],
    /// [`TrainError::TooFewClasses`] (fewer than 2 classes present in the
    /// labels); [`TrainError::Cancelled`].
    pub fn fit(
        x: &[f32],
        target: &Target<'_>,
        feature_names: &[String],
        cfg: &SvmConfig,
        init: Option<&SvmModel>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let Target::Classes { y, classes } = *target else {
            return Err(TrainError::Unsupported {
                family: "svm",
                task: Task::Regression,
            });
        };
        let nf = feature_names.len();
        check_shapes(x, target, nf)?;
        let nc = classes.len();
        let mut counts = vec![0usize; nc];
        y.iter().for_each(|&k| counts[k] += 1);
        let present = counts.iter().filter(|&&c| c > 0).count();
        if present < 2 {
            return Err(TrainError::TooFewClasses(present));
        }
        let scaler = StandardScaler::fit(x, nf);
        let mut z32 = x.to_vec();
        scaler.transform_in_place(&mut z32);
        let z: Vec<f64> = z32.iter().map(|&v| f64::from(v)).collect();
        let n = y.len();
        // Classifier k's positive class.
        let positive: Vec<usize> = if nc == 2 { vec![1] } else { (0..nc).collect() };
        let m = positive.len();
        let sgd = Sgd {
            z: &z,
            nf,
            y,
            positive: &positive,
            c: cfg.c,
            epochs: cfg.epochs,
            cancelled,
        };

        let warm = init.filter(|i| i.classes == classes && i.feature_names == feature_names);
        let start = || match warm {
            Some(init) => Start::mapped(init, &scaler),
            None => Start::zero(m, nf),
        };

        // Out-of-fold decision values, [n, m].
        let folds = stratified_folds(y, nc, cfg.calibration_folds);
        let mut oof = vec![0f64; n * m];
        for fold in 0..cfg.calibration_folds {
            let (held, rest): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| folds[i] == fold);
            if held.is_empty() || rest.is_empty() {
                continue;
            }
            let mut rng = fastrand::Rng::with_seed(mix_seed(cfg.seed, fold as u64 + 1));
            let fit = sgd.run(&rest, start(), &mut rng)?;
            for &i in &held {
                for k in 0..m {
                    oof[i * m + k] = fit.decision(k, &z[i * nf..(i + 1) * nf]);
                }
            }
        }
        let mut platt_a = Vec::with_capacity(m);
        let mut platt_b = Vec::with_capacity(m);
        for (k, &pos) in positive.iter().enumerate() {
            let f: Vec<f64> = (0..n).map(|i| oof[i * m + k]).collect();
            let is_pos: Vec<bool> = y.iter().map(|&c| c == pos).collect();
            let fit = platt_scaling(&f, &is_pos);
            platt_a.push(fit.a as f32);
            platt_b.push(fit.b as f32);
        }

        // The served classifier, on every sample.
        let all: Vec<usize> = (0..n).collect();
        let mut rng = fastrand::Rng::with_seed(mix_seed(cfg.seed, 0));
        let fit = sgd.run(&all, start(), &mut rng)?;
        let objective = (0..m).map(|k| fit.objective(&sgd, k)).collect();
        let mut weights = vec![0f32; nf * m];
        for k in 0..m {
            for j in 0..nf {
                weights[j * m + k] = fit.w[k * nf + j] as f32;
            }
        }
        Ok(Self {
            classes: classes.to_vec(),
            feature_names: feature_names.to_vec(),
            scaler,
            weights,
            bias: fit.b.iter().map(|&v| v as f32).collect(),
            platt_a,
            platt_b,
            steps: fit.steps,
            lambda: fit.lambda,
            objective,
            warm_started: warm.is_some(),
            config: cfg.clone(),
        })
    }

    /// Always [`Task::Classification`].
    pub fn task(&self) -> Task {
        Task::Classification
    }

    /// Class names, in probability column order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Feature names, in input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Number of classifiers: 1 for two classes, else the number of classes.
    fn n_outputs(&self) -> usize {
        self.bias.len()
    }

    /// Decision values `[n_rows, m]` (see [`SvmModel::weights`]) for `x`
    /// (`[n_rows, n_features]`, `NaN` = missing), in `f32` in the order of
    /// the exported graph: impute, scale, MatMul, Add.
    pub fn decision_function(&self, x: &[f32]) -> Vec<f32> {
        let nf = self.feature_names.len();
        let m = self.n_outputs();
        let mut z = x.to_vec();
        self.scaler.transform_in_place(&mut z);
        let mut out = Vec::with_capacity(z.len() / nf * m);
        for row in z.chunks_exact(nf) {
            for k in 0..m {
                let dot: f32 = row
                    .iter()
                    .enumerate()
                    .map(|(j, v)| v * self.weights[j * m + k])
                    .sum();
                out.push(dot + self.bias[k]);
            }
        }
        out
    }

    /// Class probabilities `[n_rows, n_classes]` row-major for `x`
    /// (`[n_rows, n_features]`, `NaN` = missing), in `f32` in the order of
    /// the exported graph: decision values, `Mul(−A)`, `Add(−B)`, `Sigmoid`,
    /// then `[1 − p, p]` (two classes) or division by the row sum.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        let m = self.n_outputs();
        let decision = self.decision_function(x);
        let mut out = Vec::with_capacity(decision.len() / m * self.classes.len());
        for row in decision.chunks_exact(m) {
            let p: Vec<f32> = row
                .iter()
                .enumerate()
                .map(|(k, &f)| {
                    let u = f * -self.platt_a[k] + -self.platt_b[k];
                    1.0 / (1.0 + (-u).exp())
                })
                .collect();
            if m == 1 {
                out.extend([1.0 - p[0], p[0]]);
            } else {
                let sum: f32 = p.iter().sum();
                out.extend(p.iter().map(|v| v / sum));
            }
        }
        out
    }

    /// ONNX bytes (opset 13, standard operators), following
    /// [`crate::onnx::builder`]'s contract:
    ///
    /// ```text
    /// features → IsNaN → Where(mean) → Sub(mean) → Div(scale)
    ///   → MatMul(W [F, m]) → Add(b [m])                   decision values
    ///   → Mul(−A [m]) → Add(−B [m]) → Sigmoid              Platt, per classifier
    ///   two classes:  Sub(1, p) → Concat([1 − p, p], axis 1)
    ///   more:         Div(p, ReduceSum(p, axes [1], keepdims))
    ///   → probabilities [N, C];  ArgMax(axis 1) → label [N]
    /// ```
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        let nf = self.feature_names.len() as i64;
        let m = self.n_outputs();
        let mi = m as i64;
        let neg = |v: &[f32]| v.iter().map(|a| -a).collect::<Vec<f32>>();
        let (mut nodes, scaled) = b::impute_and_scale_nodes("mean", Some("scale"));
        nodes.extend([
            b::node("MatMul", &[scaled, "weights"], "matmul", vec![]),
            b::node("Add", &["matmul", "bias"], "decision", vec![]),
            b::node("Mul", &["decision", "neg_platt_a"], "platt_mul", vec![]),
            b::node("Add", &["platt_mul", "neg_platt_b"], "platt_logit", vec![]),
            b::node("Sigmoid", &["platt_logit"], "platt_p", vec![]),
        ]);
        let mut initializer = vec![
            b::tensor_f32("mean", &[nf], &self.scaler.mean),
            b::tensor_f32("scale", &[nf], &self.scaler.scale),
            b::tensor_f32("weights", &[nf, mi], &self.weights),
            b::tensor_f32("bias", &[mi], &self.bias),
            b::tensor_f32("neg_platt_a", &[mi], &neg(&self.platt_a)),
            b::tensor_f32("neg_platt_b", &[mi], &neg(&self.platt_b)),
        ];
        if m == 1 {
            initializer.push(b::tensor_f32("one", &[1], &[1.0]));
            nodes.extend([
                b::node("Sub", &["one", "platt_p"], "platt_q", vec![]),
                b::node(
                    "Concat",
                    &["platt_q", "platt_p"],
                    OUTPUT_PROBABILITIES,
                    vec![b::attr_int("axis", 1)],
                ),
            ]);
        } else {
            initializer.push(b::tensor_i64("sum_axes", &[1], &[1]));
            nodes.extend([
                b::node(
                    "ReduceSum",
                    &["platt_p", "sum_axes"],
                    "platt_sum",
                    vec![b::attr_int("keepdims", 1)],
                ),
                b::node(
                    "Div",
                    &["platt_p", "platt_sum"],
                    OUTPUT_PROBABILITIES,
                    vec![],
                ),
            ]);
        }
        nodes.push(b::label_node());
        let graph = pb::GraphProto {
            name: "edgeloop_svm".into(),
            node: nodes,
            initializer,
            input: vec![b::input_info(self.feature_names.len())],
            output: b::classifier_outputs(self.classes.len()),
            ..Default::default()
        };
        b::model_bytes(
            graph,
            &ModelMeta {
                family: "svm",
                task: Task::Classification,
                classes: &self.classes,
                features: &self.feature_names,
                version,
                doc: "Linear SVM (hinge loss, L2), Platt-calibrated, with mean imputation and standard scaling.",
            },
        )
    }

    /// The configuration and the optimiser's outcome, for the model card.
    pub fn hyperparameters(&self) -> serde_json::Value {
        serde_json::json!({
            "c": self.config.c,
            "epochs": self.config.epochs,
            "calibration_folds": self.config.calibration_folds,
            "seed": self.config.seed,
            "optimizer": "pegasos",
            "lambda": self.lambda,
            "steps": self.steps,
            "objective": self.objective,
            "warm_started": self.warm_started,
            "platt_a": self.platt_a,
            "platt_b": self.platt_b,
        })
    }
}

/// Fitted Platt parameters: `p = 1 / (1 + exp(a·f + b))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlattFit {
    pub a: f64,
    pub b: f64,
    /// Newton iterations used.
    pub iterations: usize,
}

/// Fits Platt's sigmoid `p = 1/(1 + exp(a·f + b))` to decision values `f`
/// (`[n]`) and labels `positive` (`[n]`) by maximum likelihood on the
/// smoothed targets `(N₊+1)/(N₊+2)` (positives) and `1/(N₋+2)` (negatives).
/// Lin, Lin & Weng (2007), Algorithm 1: Newton's method with a backtracking
/// line search (sufficient decrease 1e-4, smallest step 1e-10) on the
/// Hessian plus `1e-12·I`, from `a = 0`, `b = ln((N₋+1)/(N₊+1))`; stops when
/// the gradient's largest component is below `1e-10·n` (tighter than
/// LIBSVM's 1e-5, so the result is the optimum to ~1e-12) or after 100
/// iterations. The same objective and start as scikit-learn's
/// `_sigmoid_calibration`, which minimises it with L-BFGS-B instead.
pub fn platt_scaling(f: &[f64], positive: &[bool]) -> PlattFit {
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    let hi = (n_pos + 1.0) / (n_pos + 2.0);
    let lo = 1.0 / (n_neg + 2.0);
    let t: Vec<f64> = positive.iter().map(|&p| if p { hi } else { lo }).collect();
    let objective = |a: f64, b: f64| -> f64 {
        f.iter()
            .zip(&t)
            .map(|(&fi, &ti)| {
                let u = fi * a + b;
                if u >= 0.0 {
                    ti * u + (-u).exp().ln_1p()
                } else {
                    (ti - 1.0) * u + u.exp().ln_1p()
                }
            })
            .sum()
    };
    let (mut a, mut b) = (0.0, ((n_neg + 1.0) / (n_pos + 1.0)).ln());
    let mut fval = objective(a, b);
    let gtol = 1e-10 * (f.len() as f64).max(1.0);
    let mut iterations = 0;
    while iterations < 100 {
        // Gradient and Hessian (+ σ I), with p = 1/(1 + exp(f a + b)).
        let (mut h11, mut h22, mut h21, mut g1, mut g2) = (1e-12, 1e-12, 0.0, 0.0, 0.0);
        for (&fi, &ti) in f.iter().zip(&t) {
            let u = fi * a + b;
            let (p, q) = if u >= 0.0 {
                let e = (-u).exp();
                (e / (1.0 + e), 1.0 / (1.0 + e))
            } else {
                let e = u.exp();
                (1.0 / (1.0 + e), e / (1.0 + e))
            };
            let d2 = p * q;
            h11 += fi * fi * d2;
            h22 += d2;
            h21 += fi * d2;
            let d1 = ti - p;
            g1 += fi * d1;
            g2 += d1;
        }
        if g1.abs() < gtol && g2.abs() < gtol {
            break;
        }
        iterations += 1;
        let det = h11 * h22 - h21 * h21;
        let da = -(h22 * g1 - h21 * g2) / det;
        let db = -(-h21 * g1 + h11 * g2) / det;
        let gd = g1 * da + g2 * db;
        let mut step = 1.0;
        let mut moved = false;
        while step >= 1e-10 {
            let (na, nb) = (a + step * da, b + step * db);
            let nf = objective(na, nb);
            if nf < fval + 1e-4 * step * gd {
                (a, b, fval) = (na, nb, nf);
                moved = true;
                break;
            }
            step /= 2.0;
        }
        if !moved {
            break;
        }
    }
    PlattFit { a, b, iterations }
}

/// Fold index `[n]` of each sample: scikit-learn's
/// `StratifiedKFold(n_splits, shuffle=False)` assignment. The samples of
/// each class, in order, fill the folds in consecutive blocks whose sizes are
/// the counts of that class in every `n_splits`-th entry of the sorted
/// labels, so each fold gets each class's share (±1).
fn stratified_folds(y: &[usize], n_classes: usize, n_splits: usize) -> Vec<usize> {
    let mut counts = vec![0usize; n_classes];
    y.iter().for_each(|&k| counts[k] += 1);
    // allocation[fold][class]
    let mut allocation = vec![vec![0usize; n_classes]; n_splits];
    let mut start = 0;
    for (k, &count) in counts.iter().enumerate() {
        for p in start..start + count {
            allocation[p % n_splits][k] += 1;
        }
        start += count;
    }
    let mut next_fold = vec![0usize; n_classes];
    let mut used = vec![0usize; n_classes];
    y.iter()
        .map(|&k| {
            while allocation[next_fold[k]][k] == used[k] {
                next_fold[k] += 1;
                used[k] = 0;
            }
            used[k] += 1;
            next_fold[k]
        })
        .collect()
}

/// A seed for fit `index` (0 = the served fit) derived from the user's.
fn mix_seed(seed: u64, index: u64) -> u64 {
    seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The training problem shared by the calibration folds and the served fit.
struct Sgd<'a> {
    /// Scaled features `[n, nf]`.
    z: &'a [f64],
    nf: usize,
    y: &'a [usize],
    /// Positive class of each classifier.
    positive: &'a [usize],
    c: f64,
    epochs: usize,
    cancelled: &'a dyn Fn() -> bool,
}

/// Where SGD starts: weights `[m, nf]`, intercepts `[m]`, steps taken.
struct Start {
    w: Vec<f64>,
    b: Vec<f64>,
    steps: u64,
}

impl Start {
    fn zero(m: usize, nf: usize) -> Self {
        Self {
            w: vec![0.0; m * nf],
            b: vec![0.0; m],
            steps: 0,
        }
    }

    /// `init`'s classifiers, giving the same decision values for the same
    /// raw input under `scaler`: `w' = w·s'/s`, `b' = b + Σ w·(m' − m)/s`.
    fn mapped(init: &SvmModel, scaler: &StandardScaler) -> Self {
        let nf = init.feature_names.len();
        let m = init.n_outputs();
        let mut start = Self::zero(m, nf);
        for k in 0..m {
            let mut bias = f64::from(init.bias[k]);
            for j in 0..nf {
                let w = f64::from(init.weights[j * m + k]);
                let s_old = f64::from(init.scaler.scale[j]);
                let shift = f64::from(scaler.mean[j]) - f64::from(init.scaler.mean[j]);
                start.w[k * nf + j] = w * f64::from(scaler.scale[j]) / s_old;
                bias += w * shift / s_old;
            }
            start.b[k] = bias;
        }
        start.steps = init.steps;
        start
    }
}

/// Averaged weights after SGD.
struct Fitted {
    w: Vec<f64>,
    b: Vec<f64>,
    steps: u64,
    lambda: f64,
}

impl Fitted {
    fn decision(&self, k: usize, row: &[f64]) -> f64 {
        let nf = row.len();
        row.iter()
            .zip(&self.w[k * nf..(k + 1) * nf])
            .map(|(a, b)| a * b)
            .sum::<f64>()
            + self.b[k]
    }

    /// `(λ/2)‖w‖² + mean hinge` of classifier `k` on every sample of `sgd`.
    fn objective(&self, sgd: &Sgd<'_>, k: usize) -> f64 {
        let nf = sgd.nf;
        let n = sgd.y.len();
        let hinge: f64 = sgd
            .z
            .chunks_exact(nf)
            .zip(sgd.y)
            .map(|(row, &c)| {
                let s = if c == sgd.positive[k] { 1.0 } else { -1.0 };
                (1.0 - s * self.decision(k, row)).max(0.0)
            })
            .sum();
        let norm2: f64 = self.w[k * nf..(k + 1) * nf].iter().map(|v| v * v).sum();
        0.5 * self.lambda * norm2 + hinge / n as f64
    }
}

impl Sgd<'_> {
    /// Pegasos on the samples `rows` for every classifier at once (one
    /// permutation per epoch, shared), from `start`.
    fn run(
        &self,
        rows: &[usize],
        start: Start,
        rng: &mut fastrand::Rng,
    ) -> Result<Fitted, TrainError> {
        let nf = self.nf;
        let m = self.positive.len();
        let lambda = 1.0 / (rows.len() as f64 * self.c);
        let eta0 = lambda.powf(-0.25);
        let t0 = 1.0 / (lambda * eta0);
        let radius = 1.0 / lambda.sqrt();
        let Start {
            mut w,
            mut b,
            steps,
        } = start;
        let (mut w_avg, mut b_avg) = (w.clone(), b.clone());
        let mut order = rows.to_vec();
        let mut t = 0u64;
        for _ in 0..self.epochs {
            if (self.cancelled)() {
                return Err(TrainError::Cancelled);
            }
            rng.shuffle(&mut order);
            for &i in &order {
                let eta = 1.0 / (lambda * ((steps + t) as f64 + t0));
                let row = &self.z[i * nf..(i + 1) * nf];
                t += 1;
                let r = 4.0 / (t as f64 + 3.0);
                for k in 0..m {
                    let wk = &mut w[k * nf..(k + 1) * nf];
                    let s = if self.y[i] == self.positive[k] {
                        1.0
                    } else {
                        -1.0
                    };
                    let margin = s * (wk.iter().zip(row).map(|(a, c)| a * c).sum::<f64>() + b[k]);
                    let shrink = 1.0 - eta * lambda;
                    if margin < 1.0 {
                        wk.iter_mut()
                            .zip(row)
                            .for_each(|(a, c)| *a = *a * shrink + eta * s * c);
                        b[k] += eta * s;
                    } else {
                        wk.iter_mut().for_each(|a| *a *= shrink);
                    }
                    let norm = wk.iter().map(|a| a * a).sum::<f64>().sqrt();
                    if norm > radius {
                        let f = radius / norm;
                        wk.iter_mut().for_each(|a| *a *= f);
                    }
                    w_avg[k * nf..(k + 1) * nf]
                        .iter_mut()
                        .zip(wk.iter())
                        .for_each(|(a, v)| *a += r * (v - *a));
                    b_avg[k] += r * (b[k] - b_avg[k]);
                }
            }
        }
        Ok(Fitted {
            w: w_avg,
            b: b_avg,
            steps: steps + t,
            lambda,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_follow_sklearn_stratified_kfold() {
        // test_folds of sklearn 1.9.1's StratifiedKFold(k).split(zeros, y).
        let y = [0, 1, 0, 1, 0, 1, 0, 0, 1, 0];
        assert_eq!(
            stratified_folds(&y, 2, 3),
            vec![0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
        );
        let y = [2, 0, 1, 1, 0, 2, 2, 2, 1, 0, 0, 2, 1];
        assert_eq!(
            stratified_folds(&y, 3, 4),
            vec![0, 0, 0, 1, 1, 0, 1, 2, 2, 2, 3, 3, 3]
        );
    }

    #[test]
    fn binary_and_multiclass_fit_separable_data() {
        // Three blobs at the corners of a triangle.
        let corners = [(0.0, 0.0), (4.0, 0.0), (2.0, 4.0)];
        let x: Vec<f32> = (0..90)
            .flat_map(|i| {
                let (cx, cy) = corners[i / 30];
                let jitter = (i % 30) as f32 * 0.03;
                [cx + jitter, cy - jitter]
            })
            .collect();
        let y: Vec<usize> = (0..90).map(|i| i / 30).collect();
        let names = vec!["a".to_string(), "b".to_string()];
        let classes: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        let target = Target::Classes {
            y: &y,
            classes: &classes,
        };
        let model =
            SvmModel::fit(&x, &target, &names, &SvmConfig::default(), None, &|| false).unwrap();
        let p = model.predict(&x);
        let labels = crate::learn::model::argmax_rows(&p, 3);
        let correct = labels.iter().zip(&y).filter(|(a, b)| a == b).count();
        assert!(correct >= 85, "{correct} of 90");
        for row in p.chunks_exact(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}
