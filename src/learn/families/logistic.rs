//! Multinomial logistic regression (softmax regression) with an L2 penalty,
//! on standardised features.
//!
//! Objective, minimised by L-BFGS ([`crate::learn::lbfgs`]) over one weight vector
//! `w_k` and intercept `b_k` per class:
//!
//! ```text
//! (1/n) Σᵢ −log softmax(W zᵢ + b)[yᵢ]  +  (l2/2) Σₖ ‖w_k‖²      (intercepts unpenalised)
//! ```
//!
//! where `zᵢ` are the features after mean imputation and standard scaling
//! ([`StandardScaler`]). This is scikit-learn's `LogisticRegression(penalty="l2")`
//! with `C = 1/(n·l2)` for three or more classes; for two classes sklearn's
//! sigmoid model reaches the same probabilities with `C = 2/(n·l2)` (see
//! `tests/fixtures/logistic/gen_logistic.py`, which checks both).

use serde::{Deserialize, Serialize};

use crate::features::scaler::StandardScaler;
use crate::learn::lbfgs::{self, Stop};
pub use crate::learn::model::{argmax_rows, TrainError};
use crate::learn::model::{Target, Task};

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogisticConfig {
    /// L2 penalty strength per sample (> 0).
    pub l2: f64,
    /// Most L-BFGS iterations.
    pub max_iter: usize,
    /// Stop when the gradient's largest component is below this.
    pub gtol: f64,
}

/// A trained model: everything needed to predict and to export to ONNX.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticModel {
    /// Class names; index k is output column k.
    pub classes: Vec<String>,
    /// Feature names, in input order.
    pub feature_names: Vec<String>,
    pub scaler: StandardScaler,
    /// Weights `[n_features, n_classes]`, row-major (the ONNX MatMul layout).
    pub weights: Vec<f32>,
    /// Intercepts `[n_classes]`.
    pub bias: Vec<f32>,
    /// L-BFGS iterations used and why it stopped.
    pub iterations: usize,
    pub stop: Stop,
    /// Final objective value.
    pub objective: f64,
}

impl LogisticModel {
    /// Trains on `x` (`[n, n_features]` row-major, `NaN` = missing) and `y`
    /// (class indices into `classes`, every index < `classes.len()`).
    ///
    /// # Errors
    /// [`TrainError`] for empty or mis-shaped data, fewer than 2 classes, or
    /// cancellation.
    pub fn fit(
        x: &[f32],
        y: &[usize],
        classes: Vec<String>,
        feature_names: Vec<String>,
        cfg: &LogisticConfig,
        cancelled: impl Fn() -> bool,
    ) -> Result<Self, TrainError> {
        Self::fit_from(x, y, classes, feature_names, cfg, None, cancelled)
    }

    /// As [`LogisticModel::fit`], starting the optimiser from `init`'s
    /// weights and intercepts (warm start: fine-tuning a champion) instead of
    /// zeros. Classes are matched by name; a class `init` lacks starts at 0.
    /// The objective and its optimum are the same; only the path is shorter
    /// when the data changed little.
    ///
    /// # Errors
    /// As [`LogisticModel::fit`].
    pub fn fit_from(
        x: &[f32],
        y: &[usize],
        classes: Vec<String>,
        feature_names: Vec<String>,
        cfg: &LogisticConfig,
        init: Option<&LogisticModel>,
        cancelled: impl Fn() -> bool,
    ) -> Result<Self, TrainError> {
        Self::fit_weighted(x, y, classes, feature_names, cfg, init, None, cancelled)
    }

    /// As [`LogisticModel::fit_from`], each sample's loss term multiplied by
    /// `sample_weight[i]` (`[n]`; `None`: all 1), as scikit-learn's
    /// `sample_weight` / `class_weight`: the objective is
    /// `(1/n) Σᵢ wᵢ·(−log pᵢ[yᵢ]) + (l2/2) Σₖ ‖w_k‖²`, still sklearn's with
    /// `C = 1/(n·l2)`. Balanced class weights sum to `n`, so the penalty's
    /// relative strength is unchanged.
    ///
    /// # Errors
    /// As [`LogisticModel::fit`]; [`TrainError::Shape`] when `sample_weight`
    /// is not `[n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_weighted(
        x: &[f32],
        y: &[usize],
        classes: Vec<String>,
        feature_names: Vec<String>,
        cfg: &LogisticConfig,
        init: Option<&LogisticModel>,
        sample_weight: Option<&[f64]>,
        cancelled: impl Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let nf = feature_names.len();
        if let Some(w) = sample_weight.filter(|w| w.len() != y.len()) {
            return Err(TrainError::Shape {
                len: w.len(),
                n_features: 1,
            });
        }
        let nc = classes.len();
        if y.is_empty() {
            return Err(TrainError::Empty);
        }
        if nf == 0 || x.len() != y.len() * nf {
            return Err(TrainError::Shape {
                len: x.len(),
                n_features: nf,
            });
        }
        if nc < 2 {
            return Err(TrainError::TooFewClasses(nc));
        }
        let scaler = StandardScaler::fit(x, nf);
        let mut z = x.to_vec();
        scaler.transform_in_place(&mut z);
        let z: Vec<f64> = z.iter().map(|&v| f64::from(v)).collect();
        let n = y.len() as f64;
        let l2 = cfg.l2;
        // θ = [W as [nc, nf] row-major, b as [nc]].
        let n_w = nc * nf;
        let mut logits = vec![0.0; nc];
        let fg = |theta: &[f64], grad: &mut [f64]| -> f64 {
            let (w, b) = theta.split_at(n_w);
            grad.iter_mut().for_each(|g| *g = 0.0);
            let mut loss = 0.0;
            for (i, (row, &yi)) in z.chunks_exact(nf).zip(y).enumerate() {
                let wi = sample_weight.map_or(1.0, |w| w[i]);
                for k in 0..nc {
                    logits[k] = b[k]
                        + w[k * nf..(k + 1) * nf]
                            .iter()
                            .zip(row)
                            .map(|(a, c)| a * c)
                            .sum::<f64>();
                }
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                // One exp per class: logits become exp(logit − max), whose
                // sum gives both the log-sum-exp and the probabilities.
                let true_logit = logits[yi];
                logits.iter_mut().for_each(|l| *l = (*l - max).exp());
                let sum: f64 = logits.iter().sum();
                loss += wi * (max + sum.ln() - true_logit);
                for k in 0..nc {
                    let r = wi * (logits[k] / sum - f64::from(u8::from(k == yi)));
                    let (gw, gb) = grad.split_at_mut(n_w);
                    gw[k * nf..(k + 1) * nf]
                        .iter_mut()
                        .zip(row)
                        .for_each(|(g, c)| *g += r * c);
                    gb[k] += r;
                }
            }
            grad.iter_mut().for_each(|g| *g /= n);
            let (gw, _) = grad.split_at_mut(n_w);
            gw.iter_mut().zip(w).for_each(|(g, wi)| *g += l2 * wi);
            loss / n + 0.5 * l2 * w.iter().map(|v| v * v).sum::<f64>()
        };
        let mut theta0 = vec![0.0; n_w + nc];
        if let Some(init) = init.filter(|m| m.feature_names.len() == nf) {
            let inc = init.classes.len();
            for (k, class) in classes.iter().enumerate() {
                let Some(ik) = init.classes.iter().position(|c| c == class) else {
                    continue;
                };
                // Same logits for the same raw input under the new scaler:
                // w' = w·s'/s, b' = b + Σ w·(m' − m)/s.
                let mut bias = f64::from(init.bias[ik]);
                for j in 0..nf {
                    let w = f64::from(init.weights[j * inc + ik]);
                    let (s_old, s_new) =
                        (f64::from(init.scaler.scale[j]), f64::from(scaler.scale[j]));
                    let shift = f64::from(scaler.mean[j]) - f64::from(init.scaler.mean[j]);
                    theta0[k * nf + j] = w * s_new / s_old;
                    bias += w * shift / s_old;
                }
                theta0[n_w + k] = bias;
            }
        }
        let out = lbfgs::minimize(theta0, fg, cfg.max_iter, cfg.gtol, &cancelled);
        if out.stop == Stop::Cancelled {
            return Err(TrainError::Cancelled);
        }
        let (w, b) = out.x.split_at(n_w);
        // Transpose [nc, nf] -> [nf, nc] for MatMul.
        let mut weights = vec![0f32; n_w];
        for k in 0..nc {
            for j in 0..nf {
                weights[j * nc + k] = w[k * nf + j] as f32;
            }
        }
        Ok(Self {
            classes,
            feature_names,
            scaler,
            weights,
            bias: b.iter().map(|&v| v as f32).collect(),
            iterations: out.iterations,
            stop: out.stop,
            objective: out.f,
        })
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Class probabilities, `[n_rows, n_classes]` row-major, for `x`
    /// (`[n_rows, n_features]`, `NaN` = missing). Computed in `f32` in the
    /// order of the exported ONNX graph: impute, scale, MatMul, Add, Softmax.
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f32> {
        let nf = self.n_features();
        let nc = self.classes.len();
        let mut z = x.to_vec();
        self.scaler.transform_in_place(&mut z);
        let mut out = Vec::with_capacity(z.len() / nf * nc);
        for row in z.chunks_exact(nf) {
            let logits: Vec<f32> = (0..nc)
                .map(|k| {
                    row.iter()
                        .enumerate()
                        .map(|(j, v)| v * self.weights[j * nc + k])
                        .sum::<f32>()
                        + self.bias[k]
                })
                .collect();
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            out.extend(exps.iter().map(|e| e / sum));
        }
        out
    }
}

/// Serialises `model` as an ONNX model (protobuf bytes).
pub fn logistic_to_onnx(model: &LogisticModel, model_version: u32) -> Vec<u8> {
    let nf = model.n_features() as i64;
    let nc = model.classes.len() as i64;
    let (mut nodes, scaled) = crate::onnx::builder::impute_and_scale_nodes("mean", Some("scale"));
    nodes.extend([
        crate::onnx::builder::node("MatMul", &[scaled, "weights"], "matmul", vec![]),
        crate::onnx::builder::node("Add", &["matmul", "bias"], "logits", vec![]),
        crate::onnx::builder::node(
            "Softmax",
            &["logits"],
            crate::onnx::builder::OUTPUT_PROBABILITIES,
            vec![crate::onnx::builder::attr_int("axis", 1)],
        ),
        crate::onnx::builder::label_node(),
    ]);
    let graph = tract_onnx::pb::GraphProto {
        name: "edgeloop_logistic".into(),
        node: nodes,
        initializer: vec![
            crate::onnx::builder::tensor_f32("mean", &[nf], &model.scaler.mean),
            crate::onnx::builder::tensor_f32("scale", &[nf], &model.scaler.scale),
            crate::onnx::builder::tensor_f32("weights", &[nf, nc], &model.weights),
            crate::onnx::builder::tensor_f32("bias", &[nc], &model.bias),
        ],
        input: vec![crate::onnx::builder::input_info(model.n_features())],
        output: crate::onnx::builder::classifier_outputs(model.classes.len()),
        ..Default::default()
    };
    crate::onnx::builder::model_bytes(
        graph,
        &crate::onnx::builder::ModelMeta {
            family: "logistic",
            task: crate::ingest::decode::Task::Classification,
            classes: &model.classes,
            features: &model.feature_names,
            version: model_version,
            doc: "Multinomial logistic regression with mean imputation and standard scaling.",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_start_maps_the_champion_into_the_new_scaling() {
        // Two features, a separable-ish rule; the second fit sees shifted,
        // rescaled data (other mean and spread), warm-started from the first.
        let x: Vec<f32> = (0..200)
            .flat_map(|i| [(i % 17) as f32, (i % 5) as f32 * 3.0])
            .collect();
        let y: Vec<usize> = (0..200)
            .map(|i| usize::from((i % 17) + (i % 5) * 3 > 12))
            .collect();
        let classes = vec!["0".to_string(), "1".to_string()];
        let names = vec!["a".to_string(), "b".to_string()];
        let cfg = LogisticConfig {
            l2: 1e-2,
            max_iter: 500,
            gtol: 1e-10,
        };
        let first =
            LogisticModel::fit(&x, &y, classes.clone(), names.clone(), &cfg, || false).unwrap();
        // Warm start on a subset: the start is already the champion's function,
        // so the optimum is reached in fewer iterations than from zero.
        let (xs, ys) = (&x[..240], &y[..120]);
        let cold =
            LogisticModel::fit(xs, ys, classes.clone(), names.clone(), &cfg, || false).unwrap();
        let warm =
            LogisticModel::fit_from(xs, ys, classes, names, &cfg, Some(&first), || false).unwrap();
        assert!(
            (warm.objective - cold.objective).abs() < 1e-9,
            "same optimum"
        );
        assert!(
            warm.iterations < cold.iterations,
            "warm {} vs cold {}",
            warm.iterations,
            cold.iterations
        );
    }
}

/// The family API shared with the other families (see [`crate::learn::model`]).
impl LogisticModel {
    /// Trains on a [`Target::Classes`] target; `init` warm-starts as in
    /// [`LogisticModel::fit_from`].
    ///
    /// # Errors
    /// [`TrainError::Unsupported`] for a regression target; else as
    /// [`LogisticModel::fit`].
    pub fn fit_target(
        x: &[f32],
        target: &Target<'_>,
        feature_names: &[String],
        cfg: &LogisticConfig,
        init: Option<&LogisticModel>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let Target::Classes { y, classes } = target else {
            return Err(TrainError::Unsupported {
                family: "logistic",
                task: Task::Regression,
            });
        };
        Self::fit_from(
            x,
            y,
            classes.to_vec(),
            feature_names.to_vec(),
            cfg,
            init,
            cancelled,
        )
    }

    /// Always [`Task::Classification`].
    pub fn task(&self) -> Task {
        Task::Classification
    }

    /// Class names, output column order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Feature names, input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Class probabilities `[n, n_classes]`; see [`LogisticModel::predict_proba`].
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        self.predict_proba(x)
    }

    /// ONNX bytes; see [`logistic_to_onnx`].
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        logistic_to_onnx(self, version)
    }

    /// Settings and optimiser outcome, for the model card.
    pub fn hyperparameters(&self, cfg: &LogisticConfig) -> serde_json::Value {
        serde_json::json!({
            "l2": cfg.l2, "max_iter": cfg.max_iter, "gtol": cfg.gtol,
            "iterations": self.iterations, "stop": self.stop, "objective": self.objective,
        })
    }
}
