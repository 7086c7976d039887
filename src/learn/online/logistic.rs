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
