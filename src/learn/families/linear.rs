//! Linear regression: ordinary least squares (`alpha = 0`, family `linear`)
//! and ridge regression (`alpha > 0`, family `ridge`), on standardised
//! features.
//!
//! Features are mean-imputed and standard-scaled ([`StandardScaler`]) into
//! `Z` `[n, F]`; the coefficients minimise
//!
//! ```text
//! ‖y − Z w − b‖²  +  alpha ‖w‖²        (intercept b unpenalised)
//! ```
//!
//! which is scikit-learn's `Ridge(alpha)` (and, for `alpha = 0`,
//! `LinearRegression()`) with `fit_intercept=True` on the standardised
//! features. Closed form, in `f64`: with `Z̄`, `ȳ` the column and target
//! means and `Zc = Z − Z̄`, `(Zcᵀ Zc + alpha·I) w = Zcᵀ (y − ȳ)` solved by
//! Cholesky, and `b = ȳ − Z̄·w` (`Z̄` is 0 up to the `f32` rounding of the
//! scaling).
//!
//! Singular systems. For `alpha = 0` a constant feature (a zero column of
//! `Zc`) or collinear features make `ZcᵀZc` singular. When a Cholesky pivot
//! falls to `1e-7` of its diagonal entry or below (the feature is explained
//! to within `1e-7` of its variance by the features before it), the system is
//! solved again with a jitter `ε = 1e-7 · max diag(ZcᵀZc)` added to the
//! diagonal: ridge with a tiny `alpha`, whose limit as `ε → 0` is the
//! minimum-norm least-squares solution (the one numpy's `lstsq`, behind
//! sklearn's `LinearRegression`, returns). Fitted values are those of least
//! squares to ~`ε` relative; the jitter used is reported by
//! [`LinearModel::hyperparameters`] (0 when none was needed). The same guard
//! applies to a positive `alpha` too small to make the system well
//! conditioned.

use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::features::scaler::StandardScaler;
use crate::learn::model::{check_shapes, Target, Task, TrainError};
use crate::onnx::builder::{self as b, ModelMeta, OUTPUT_PREDICTION};

/// Relative size of a Cholesky pivot below which the system counts as
/// singular, and of the jitter then added (see the module docs).
const SINGULAR: f64 = 1e-7;

/// Hyperparameters of the `linear` / `ridge` family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearConfig {
    /// L2 strength (≥ 0) on the standardised coefficients, as sklearn's
    /// `Ridge(alpha)`: 0 = ordinary least squares (`linear`), > 0 = ridge
    /// (`ridge`). Like sklearn's, it is not divided by the number of samples.
    pub alpha: f64,
}

impl Default for LinearConfig {
    fn default() -> Self {
        Self { alpha: 1.0 }
    }
}

impl LinearConfig {
    /// Checks every hyperparameter.
    ///
    /// # Errors
    /// A message naming the key (relative to the family section) and why.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(format!(
                "alpha: {} must be 0 (least squares) or positive (ridge)",
                self.alpha
            ));
        }
        Ok(())
    }

    /// `linear` for `alpha = 0`, else `ridge`.
    pub fn family(&self) -> &'static str {
        if self.alpha == 0.0 {
            "linear"
        } else {
            "ridge"
        }
    }
}

/// A trained linear / ridge regressor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    /// Feature names, in input order.
    pub feature_names: Vec<String>,
    pub scaler: StandardScaler,
    /// Coefficients on the standardised features, `[n_features]` (the ONNX
    /// MatMul's `[n_features, 1]`).
    pub weights: Vec<f32>,
    /// Intercept.
    pub bias: f32,
    /// Jitter added to the diagonal because the system was singular (0 when
    /// none was needed).
    pub jitter: f64,
    pub config: LinearConfig,
}

impl LinearModel {
    /// Fits on `x` (`[n, n_features]` row-major, `NaN` = missing) and real
    /// targets. `init` is ignored: the solution is closed form, so a warm
    /// start has nothing to shorten. `cancelled` is polled once, before the
    /// solve (the fit is one pass over the data and a `F×F` Cholesky).
    ///
    /// # Errors
    /// [`TrainError::Unsupported`] for a [`Target::Classes`] target;
    /// [`TrainError::Empty`], [`TrainError::Shape`],
    /// [`TrainError::BadTarget`]; [`TrainError::Cancelled`].
    pub fn fit(
        x: &[f32],
        target: &Target<'_>,
        feature_names: &[String],
        cfg: &LinearConfig,
        init: Option<&LinearModel>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let _ = init;
        let Target::Values(y) = *target else {
            return Err(TrainError::Unsupported {
                family: cfg.family(),
                task: Task::Classification,
            });
        };
        let nf = feature_names.len();
        check_shapes(x, target, nf)?;
        let scaler = StandardScaler::fit(x, nf);
        let mut z = x.to_vec();
        scaler.transform_in_place(&mut z);
        let n = y.len() as f64;
        let mut z_mean = vec![0f64; nf];
        for row in z.chunks_exact(nf) {
            z_mean
                .iter_mut()
                .zip(row)
                .for_each(|(m, &v)| *m += f64::from(v));
        }
        z_mean.iter_mut().for_each(|m| *m /= n);
        let y_mean = y.iter().sum::<f64>() / n;
        // Gram matrix ZcᵀZc (lower triangle used) and right-hand side Zcᵀ(y − ȳ).
        let mut gram = vec![0f64; nf * nf];
        let mut rhs = vec![0f64; nf];
        let mut zc = vec![0f64; nf];
        for (row, &yi) in z.chunks_exact(nf).zip(y) {
            zc.iter_mut()
                .zip(row)
                .zip(&z_mean)
                .for_each(|((c, &v), m)| *c = f64::from(v) - m);
            let r = yi - y_mean;
            for i in 0..nf {
                rhs[i] += zc[i] * r;
                for j in 0..=i {
                    gram[i * nf + j] += zc[i] * zc[j];
                }
            }
        }
        if cancelled() {
            return Err(TrainError::Cancelled);
        }
        let max_diag = (0..nf).map(|i| gram[i * nf + i]).fold(0.0, f64::max);
        let (w, jitter) = match solve_cholesky(&gram, &rhs, nf, cfg.alpha) {
            Some(w) => (w, 0.0),
            None => {
                let jitter = SINGULAR * max_diag.max(f64::MIN_POSITIVE);
                // Every pivot is now at least ~jitter: the solve succeeds
                // unless the data are not finite.
                let w = solve_cholesky(&gram, &rhs, nf, cfg.alpha + jitter)
                    .unwrap_or_else(|| vec![0.0; nf]);
                (w, jitter)
            }
        };
        let bias = y_mean - w.iter().zip(&z_mean).map(|(a, m)| a * m).sum::<f64>();
        Ok(Self {
            feature_names: feature_names.to_vec(),
            scaler,
            weights: w.iter().map(|&v| v as f32).collect(),
            bias: bias as f32,
            jitter,
            config: cfg.clone(),
        })
    }

    /// Always [`Task::Regression`].
    pub fn task(&self) -> Task {
        Task::Regression
    }

    /// Empty: a regressor has no classes.
    pub fn classes(&self) -> &[String] {
        &[]
    }

    /// Feature names, in input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Predictions `[n_rows]` for `x` (`[n_rows, n_features]`, `NaN` =
    /// missing), in `f32` in the order of the exported graph: impute, scale,
    /// MatMul, Add.
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        let nf = self.feature_names.len();
        let mut z = x.to_vec();
        self.scaler.transform_in_place(&mut z);
        z.chunks_exact(nf)
            .map(|row| {
                row.iter()
                    .zip(&self.weights)
                    .map(|(v, w)| v * w)
                    .sum::<f32>()
                    + self.bias
            })
            .collect()
    }

    /// ONNX bytes (opset 13, standard operators), following
    /// [`crate::onnx::builder`]'s contract:
    ///
    /// ```text
    /// features → IsNaN → Where(mean) → Sub(mean) → Div(scale)
    ///   → MatMul(w [F, 1]) → Add(b [1]) → prediction [N, 1]
    /// ```
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        let nf = self.feature_names.len() as i64;
        let (mut nodes, scaled) = b::impute_and_scale_nodes("mean", Some("scale"));
        nodes.extend([
            b::node("MatMul", &[scaled, "weights"], "matmul", vec![]),
            b::node("Add", &["matmul", "bias"], OUTPUT_PREDICTION, vec![]),
        ]);
        let family = self.config.family();
        let graph = pb::GraphProto {
            name: format!("edgeloop_{family}"),
            node: nodes,
            initializer: vec![
                b::tensor_f32("mean", &[nf], &self.scaler.mean),
                b::tensor_f32("scale", &[nf], &self.scaler.scale),
                b::tensor_f32("weights", &[nf, 1], &self.weights),
                b::tensor_f32("bias", &[1], &[self.bias]),
            ],
            input: vec![b::input_info(self.feature_names.len())],
            output: b::regressor_outputs(),
            ..Default::default()
        };
        b::model_bytes(
            graph,
            &ModelMeta {
                family,
                task: Task::Regression,
                classes: &[],
                features: &self.feature_names,
                version,
                doc: "Linear (least squares or ridge) regression with mean imputation and standard scaling.",
            },
        )
    }

    /// The configuration and the solver's outcome, for the model card.
    pub fn hyperparameters(&self) -> serde_json::Value {
        serde_json::json!({
            "alpha": self.config.alpha,
            "solver": "cholesky",
            "jitter": self.jitter,
        })
    }
}

/// Solves `(G + alpha·I) w = rhs` for symmetric `G` (`[n, n]`, lower triangle
/// read) by Cholesky; `None` when a pivot is at most [`SINGULAR`] times its
/// diagonal entry (numerically singular) or not finite.
fn solve_cholesky(gram: &[f64], rhs: &[f64], n: usize, alpha: f64) -> Option<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = gram[i * n + j] + if i == j { alpha } else { 0.0 };
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                let diag = gram[i * n + i] + alpha;
                if !(s.is_finite() && s > SINGULAR * diag) {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    // L u = rhs, then Lᵀ w = u.
    let mut u = vec![0f64; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * u[k]).sum();
        u[i] = (rhs[i] - s) / l[i * n + i];
    }
    let mut w = vec![0f64; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * w[k]).sum();
        w[i] = (u[i] - s) / l[i * n + i];
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(x: &[f32], y: &[f64], nf: usize, alpha: f64) -> LinearModel {
        let names: Vec<String> = (0..nf).map(|j| format!("f{j}")).collect();
        LinearModel::fit(
            x,
            &Target::Values(y),
            &names,
            &LinearConfig { alpha },
            None,
            &|| false,
        )
        .unwrap()
    }

    #[test]
    fn least_squares_recovers_an_exact_line() {
        // y = 3 + 2·a − b; a has mean 4.5, population sd √8.25.
        let x: Vec<f32> = (0..10)
            .flat_map(|i| [i as f32, ((i * 7) % 5) as f32])
            .collect();
        let y: Vec<f64> = x
            .chunks(2)
            .map(|r| 3.0 + 2.0 * f64::from(r[0]) - f64::from(r[1]))
            .collect();
        let m = fit(&x, &y, 2, 0.0);
        assert_eq!(m.jitter, 0.0);
        for (p, t) in m.predict(&x).iter().zip(&y) {
            assert!((f64::from(*p) - t).abs() < 1e-4, "{p} vs {t}");
        }
        assert!((f64::from(m.weights[0]) - 2.0 * 8.25f64.sqrt()).abs() < 1e-4);
    }

    #[test]
    fn constant_and_duplicated_features_get_a_jitter_and_fit() {
        // Columns: a, a again, constant 7. Least squares is singular.
        let x: Vec<f32> = (0..20).flat_map(|i| [i as f32, i as f32, 7.0]).collect();
        let y: Vec<f64> = (0..20).map(|i| 1.0 + 0.5 * i as f64).collect();
        let m = fit(&x, &y, 3, 0.0);
        assert!(m.jitter > 0.0);
        // Minimum-norm: the weight is split evenly over the duplicates, none
        // on the constant feature.
        assert!(
            (m.weights[0] - m.weights[1]).abs() < 1e-4,
            "{:?}",
            m.weights
        );
        assert_eq!(m.weights[2], 0.0);
        for (p, t) in m.predict(&x).iter().zip(&y) {
            assert!((f64::from(*p) - t).abs() < 1e-3, "{p} vs {t}");
        }
    }
}
