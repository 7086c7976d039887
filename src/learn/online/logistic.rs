//! `online_logistic`: logistic regression learned by SGD one sample at a
//! time, behind an online standard scaler.
//!
//! Follows River 0.26.1's pipeline `preprocessing.StandardScaler() |
//! linear_model.LogisticRegression()` with its defaults (River's
//! `river/linear_model/log_reg.py`, `linear_model/base.py` (`GLM`),
//! `optim/sgd.py`, `optim/losses.py` (`Log`), `preprocessing/scale.py`):
//!
//! * the scaler keeps a running mean and population variance per feature
//!   (Welford, as River writes it) and learns a sample *before* scaling it
//!   for the model; prediction scales with the statistics so far, without
//!   learning (River's pipeline outside `learn_during_predict`). A feature
//!   whose variance is 0 scales to 0;
//! * the model is `p = σ(w·x + b)`, σ clamped to 0 and 1 beyond ±30; the
//!   gradient of the log loss at the raw score `z` is `-y / (e^{y z} + 1)`
//!   with `y ∈ {-1, 1}` (River's thresholds at |y z| = 18), clipped to
//!   ±1e12; plain SGD (Robbins & Monro 1951) with a constant learning rate of
//!   0.01 on the weights and 0.01 on the intercept, no penalty, zero initial
//!   weights;
//! * with two classes (`n_classes = Some(2)`), one model whose positive class
//!   is class 1, as River's `LogisticRegression` on 0/1 labels; otherwise
//!   one-vs-rest (River's `multiclass.OneVsRestClassifier`): a binary model
//!   per class, added when the class first appears and trained from then on
//!   on `y == class`; probabilities are the positive probabilities
//!   normalised to sum to 1 (uniform when all are 0); the prediction is the
//!   first class, in order of appearance, of largest probability.
//!
//! Cold start: before any sample, nothing is predicted (River's binary model
//! would answer class 0); with one class learned so far, that class (River's
//! one-vs-rest does the same; its binary model almost always does).

use super::{check_width, first_argmax, OnlineClassifier, OnlineError};

/// The hyperparameters, River's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineLogisticConfig {
    /// SGD learning rate of the weights (River `optim.SGD(0.01)`).
    pub learning_rate: f64,
    /// Learning rate of the intercept (River `intercept_lr=0.01`).
    pub intercept_learning_rate: f64,
    /// Bound on the absolute value of the loss gradient (River
    /// `clip_gradient=1e12`).
    pub clip_gradient: f64,
}

impl Default for OnlineLogisticConfig {
    fn default() -> Self {
        Self {
            learning_rate: 0.01,
            intercept_learning_rate: 0.01,
            clip_gradient: 1e12,
        }
    }
}

/// River's `preprocessing.StandardScaler()`: running mean and population
/// variance per feature, `NaN` (missing) skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineStandardScaler {
    counts: Vec<u64>,
    means: Vec<f64>,
    vars: Vec<f64>,
}

impl OnlineStandardScaler {
    /// An empty scaler for `n_features` features.
    pub fn new(n_features: usize) -> Self {
        Self {
            counts: vec![0; n_features],
            means: vec![0.0; n_features],
            vars: vec![0.0; n_features],
        }
    }

    /// Updates the statistics with `x` (`[n_features]`; `NaN` skipped).
    pub fn learn_one(&mut self, x: &[f64]) {
        for (i, &xi) in x.iter().enumerate() {
            if xi.is_nan() {
                continue;
            }
            self.counts[i] += 1;
            let n = self.counts[i] as f64;
            let old = self.means[i];
            self.means[i] += (xi - old) / n;
            self.vars[i] += ((xi - old) * (xi - self.means[i]) - self.vars[i]) / n;
        }
    }

    /// The running means, `[n_features]`.
    pub(crate) fn means(&self) -> &[f64] {
        &self.means
    }

    /// The running population variances, `[n_features]`.
    pub(crate) fn variances(&self) -> &[f64] {
        &self.vars
    }

    /// `(x - mean) / std` into `out` (`[n_features]`): 0 where the variance
    /// is 0, `NaN` stays `NaN`.
    pub fn transform_into(&self, x: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend(x.iter().enumerate().map(|(i, &xi)| {
            let v = self.vars[i];
            if xi.is_nan() {
                f64::NAN
            } else if v != 0.0 {
                // `v ** 0.5` in River: the C library's pow, as powf calls it.
                (xi - self.means[i]) / v.powf(0.5)
            } else {
                0.0
            }
        }));
    }
}

/// River's `LogisticRegression`: one binary model over scaled features.
#[derive(Debug, Clone, PartialEq)]
struct Binary {
    weights: Vec<f64>,
    intercept: f64,
}

impl Binary {
    fn new(n_features: usize) -> Self {
        Self {
            weights: vec![0.0; n_features],
            intercept: 0.0,
        }
    }

    fn raw(&self, x: &[f64]) -> f64 {
        let mut dot = 0.0;
        for (w, &xi) in self.weights.iter().zip(x) {
            if !xi.is_nan() {
                dot += w * xi;
            }
        }
        dot + self.intercept
    }

    /// River's `utils.math.sigmoid`.
    fn proba(&self, x: &[f64]) -> f64 {
        let z = self.raw(x);
        if z < -30.0 {
            0.0
        } else if z > 30.0 {
            1.0
        } else {
            1.0 / (1.0 + (-z).exp())
        }
    }

    fn learn(&mut self, x: &[f64], positive: bool, cfg: &OnlineLogisticConfig) {
        let y = if positive { 1.0 } else { -1.0 };
        let z = self.raw(x) * y;
        // River's `optim.losses.Log.gradient`.
        let g = if z > 18.0 {
            (-z).exp() * -y
        } else if z < -18.0 {
            -y
        } else {
            -y / (z.exp() + 1.0)
        };
        let g = g.clamp(-cfg.clip_gradient, cfg.clip_gradient);
        self.intercept -= cfg.intercept_learning_rate * g;
        for (w, &xi) in self.weights.iter_mut().zip(x) {
            if !xi.is_nan() {
                *w -= cfg.learning_rate * (xi * g);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Head {
    /// Two classes: positive = class 1.
    Binary(Binary),
    /// One model per class, in order of appearance.
    OneVsRest(Vec<(usize, Binary)>),
}

/// `online_logistic`: an online standard scaler, then logistic regression by
/// SGD (binary, or one-vs-rest); see the module's documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineLogistic {
    cfg: OnlineLogisticConfig,
    n_features: usize,
    scaler: OnlineStandardScaler,
    head: Head,
    /// Classes learned, in order of appearance.
    seen: Vec<usize>,
}

impl OnlineLogistic {
    /// An empty model for `n_features` features: River's binary logistic
    /// regression when `n_classes` is `Some(2)`, one-vs-rest otherwise.
    pub fn new(n_features: usize, n_classes: Option<usize>, cfg: OnlineLogisticConfig) -> Self {
        let head = if n_classes == Some(2) {
            Head::Binary(Binary::new(n_features))
        } else {
            Head::OneVsRest(Vec::new())
        };
        Self {
            cfg,
            n_features,
            scaler: OnlineStandardScaler::new(n_features),
            head,
            seen: Vec::new(),
        }
    }

    /// Whether the model is River's binary one (else one-vs-rest).
    pub fn is_binary(&self) -> bool {
        matches!(self.head, Head::Binary(_))
    }

    /// Probabilities in River's dict order: `(class, probability)`.
    fn proba_pairs(&self, x: &[f64]) -> Vec<(usize, f64)> {
        if self.seen.is_empty() {
            return Vec::new();
        }
        if self.seen.len() == 1 {
            return vec![(self.seen[0], 1.0)];
        }
        let mut xs = Vec::with_capacity(self.n_features);
        self.scaler.transform_into(x, &mut xs);
        match &self.head {
            Head::Binary(m) => {
                let p = m.proba(&xs);
                vec![(0, 1.0 - p), (1, p)]
            }
            Head::OneVsRest(models) => {
                let raw: Vec<(usize, f64)> =
                    models.iter().map(|(c, m)| (*c, m.proba(&xs))).collect();
                let total: f64 = raw.iter().map(|(_, p)| p).sum();
                if total != 0.0 {
                    raw.into_iter().map(|(c, p)| (c, p / total)).collect()
                } else {
                    let u = 1.0 / raw.len() as f64;
                    raw.into_iter().map(|(c, _)| (c, u)).collect()
                }
            }
        }
    }
}

impl OnlineLogistic {
    /// The model as a standard ONNX graph (edgeloop's output contract,
    /// [`crate::onnx::builder`]): `features` `[N, n_features]` f32, `NaN` =
    /// missing → imputed with the running mean, scaled by the running
    /// standard deviation → `MatMul` + `Add` → `Softmax` (the binary model:
    /// logits `[0, w·z + b]`, whose softmax is `[1 − σ, σ]`) or `Sigmoid` and
    /// division by the row's sum (one-vs-rest) → `probabilities`
    /// `[N, classes.len()]`, and `label` (`ArgMax`). `classes` names the
    /// class indices (at least [`OnlineClassifier::n_classes`] of them);
    /// classes not learned yet get probability 0. A feature of zero variance
    /// gets weight 0 (the model scales it to 0). With one class learned the
    /// graph answers that class; with none, every class alike. Computed in
    /// `f32`, so probabilities agree with [`OnlineClassifier::predict_proba_one`]
    /// to about 1e-6.
    pub fn to_onnx(&self, feature_names: &[String], classes: &[String], version: u32) -> Vec<u8> {
        use crate::onnx::builder as b;
        const NEVER: f32 = -1e30;
        let nf = self.n_features;
        let k = classes.len().max(self.n_classes());
        let mean: Vec<f32> = self.scaler.means.iter().map(|m| *m as f32).collect();
        let live: Vec<bool> = self.scaler.vars.iter().map(|v| *v != 0.0).collect();
        let std: Vec<f32> = self
            .scaler
            .vars
            .iter()
            .map(|v| if *v != 0.0 { v.powf(0.5) as f32 } else { 1.0 })
            .collect();
        let mut weights = vec![0.0f32; nf * k];
        let mut bias = vec![NEVER; k];
        let column = |c: usize, m: &Binary, weights: &mut [f32], bias: &mut [f32]| {
            for j in 0..nf {
                weights[j * k + c] = if live[j] { m.weights[j] as f32 } else { 0.0 };
            }
            bias[c] = m.intercept as f32;
        };
        match (&self.head, self.seen.as_slice()) {
            (_, []) => bias.iter_mut().for_each(|b| *b = 0.0),
            (_, [only]) => bias[*only] = 0.0,
            (Head::Binary(m), _) => {
                bias[0] = 0.0;
                column(1, m, &mut weights, &mut bias);
            }
            (Head::OneVsRest(models), _) => {
                for (c, m) in models {
                    column(*c, m, &mut weights, &mut bias);
                }
            }
        }
        let (mut nodes, scaled) = b::impute_and_scale_nodes("mean", Some("std"));
        nodes.extend([
            b::node("MatMul", &[scaled, "weights"], "matmul", vec![]),
            b::node("Add", &["matmul", "bias"], "logits", vec![]),
        ]);
        let mut initializer = vec![
            b::tensor_f32("mean", &[nf as i64], &mean),
            b::tensor_f32("std", &[nf as i64], &std),
            b::tensor_f32("weights", &[nf as i64, k as i64], &weights),
            b::tensor_f32("bias", &[k as i64], &bias),
        ];
        if self.is_binary() {
            nodes.push(b::node(
                "Softmax",
                &["logits"],
                b::OUTPUT_PROBABILITIES,
                vec![b::attr_int("axis", 1)],
            ));
        } else {
            initializer.push(b::tensor_i64("sum_axes", &[1], &[1]));
            nodes.extend([
                b::node("Sigmoid", &["logits"], "positive", vec![]),
                b::node(
                    "ReduceSum",
                    &["positive", "sum_axes"],
                    "positive_sum",
                    vec![b::attr_int("keepdims", 1)],
                ),
                b::node(
                    "Div",
                    &["positive", "positive_sum"],
                    b::OUTPUT_PROBABILITIES,
                    vec![],
                ),
            ]);
        }
        nodes.push(b::label_node());
        let graph = tract_onnx::pb::GraphProto {
            name: "edgeloop_online_logistic".into(),
            node: nodes,
            initializer,
            input: vec![b::input_info(nf)],
            output: b::classifier_outputs(k),
            ..Default::default()
        };
        b::model_bytes(
            graph,
            &b::ModelMeta {
                family: "online_logistic",
                task: crate::ingest::decode::Task::Classification,
                classes,
                features: feature_names,
                version,
                doc: "Online logistic regression (River's StandardScaler | LogisticRegression, SGD): running mean imputation and scaling, then softmax (binary) or normalised one-vs-rest sigmoids.",
            },
        )
    }
}

impl OnlineClassifier for OnlineLogistic {
    fn learn_one(&mut self, x: &[f64], y: usize) -> Result<(), OnlineError> {
        check_width(self.n_features, x)?;
        if self.is_binary() && y > 1 {
            return Err(OnlineError::Class { class: y });
        }
        if !self.seen.contains(&y) {
            self.seen.push(y);
        }
        self.scaler.learn_one(x);
        let mut xs = Vec::with_capacity(self.n_features);
        self.scaler.transform_into(x, &mut xs);
        match &mut self.head {
            Head::Binary(m) => m.learn(&xs, y == 1, &self.cfg),
            Head::OneVsRest(models) => {
                if !models.iter().any(|(c, _)| *c == y) {
                    models.push((y, Binary::new(self.n_features)));
                }
                for (c, m) in models.iter_mut() {
                    m.learn(&xs, *c == y, &self.cfg);
                }
            }
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
        match self.head {
            Head::Binary(_) => 2,
            Head::OneVsRest(_) => self.seen.iter().max().map_or(0, |m| m + 1),
        }
    }

    fn n_features(&self) -> usize {
        self.n_features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_equals_a_batch_recomputation() {
        // Online statistics equal the batch mean and population variance of
        // the values seen so far; a missing value is skipped.
        let xs = [
            [10.557, 8.100],
            [9.100, f64::NAN],
            [10.945, 10.706],
            [11.568, 8.347],
        ];
        let mut s = OnlineStandardScaler::new(2);
        let mut out = Vec::new();
        for (k, x) in xs.iter().enumerate() {
            s.learn_one(x);
            s.transform_into(x, &mut out);
            for j in 0..2 {
                let seen: Vec<f64> = xs[..=k]
                    .iter()
                    .map(|r| r[j])
                    .filter(|v| !v.is_nan())
                    .collect();
                let n = seen.len() as f64;
                let mean = seen.iter().sum::<f64>() / n;
                let var = seen.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let want = if x[j].is_nan() {
                    f64::NAN
                } else if var == 0.0 {
                    0.0
                } else {
                    (x[j] - mean) / var.sqrt()
                };
                assert!(
                    (out[j] - want).abs() < 1e-12 || (out[j].is_nan() && want.is_nan()),
                    "row {k} feature {j}: {} vs {want}",
                    out[j]
                );
            }
        }
    }

    #[test]
    fn cold_start_predicts_the_only_class() {
        let mut m = OnlineLogistic::new(2, None, OnlineLogisticConfig::default());
        assert_eq!(m.predict_one(&[1.0, 2.0]).unwrap(), None);
        m.learn_one(&[1.0, 2.0], 3).unwrap();
        assert_eq!(m.predict_one(&[-5.0, 9.0]).unwrap(), Some(3));
        assert_eq!(
            m.predict_proba_one(&[0.0, 0.0]).unwrap(),
            vec![0.0, 0.0, 0.0, 1.0]
        );
        assert!(matches!(
            m.learn_one(&[1.0], 0),
            Err(OnlineError::Width {
                expected: 2,
                got: 1
            })
        ));
    }
}
