//! Standard scaling with mean imputation of missing values.
//!
//! Follows scikit-learn's `StandardScaler` (population standard deviation,
//! `ddof = 0`; a zero-variance feature gets scale 1) and `SimpleImputer`
//! (`strategy = "mean"`): statistics ignore missing values (`NaN`), and a
//! missing value is replaced by the feature's mean, so it scales to 0.

use serde::{Deserialize, Serialize};

/// Per-feature mean and scale, fitted on training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    /// Mean of the present values of each feature, `[n_features]`.
    pub mean: Vec<f32>,
    /// Population standard deviation of each feature (1 where it is 0 or
    /// the feature was never present), `[n_features]`.
    pub scale: Vec<f32>,
}

impl StandardScaler {
    /// Fits on `x`, `[n_rows, n_features]` row-major, `NaN` = missing.
    /// A feature never present gets mean 0 and scale 1.
    pub fn fit(x: &[f32], n_features: usize) -> Self {
        let mut sum = vec![0f64; n_features];
        let mut count = vec![0u64; n_features];
        for row in x.chunks_exact(n_features) {
            for (j, &v) in row.iter().enumerate() {
                if !v.is_nan() {
                    sum[j] += f64::from(v);
                    count[j] += 1;
                }
            }
        }
        let mean: Vec<f64> = sum
            .iter()
            .zip(&count)
            .map(|(s, &c)| if c > 0 { s / c as f64 } else { 0.0 })
            .collect();
        let mut sq = vec![0f64; n_features];
        for row in x.chunks_exact(n_features) {
            for (j, &v) in row.iter().enumerate() {
                if !v.is_nan() {
                    sq[j] += (f64::from(v) - mean[j]).powi(2);
                }
            }
        }
        let scale = sq
            .iter()
            .zip(&count)
            .map(|(s, &c)| {
                let sd = if c > 0 { (s / c as f64).sqrt() } else { 0.0 };
                if sd > 0.0 && sd.is_finite() {
                    sd as f32
                } else {
                    1.0
                }
            })
            .collect();
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            scale,
        }
    }

    /// Number of features.
    pub fn n_features(&self) -> usize {
        self.mean.len()
    }

    /// Imputes and scales `x` in place, `[n_rows, n_features]` row-major:
    /// `NaN → mean`, then `(x − mean) / scale`, in `f32` (the order of the
    /// exported ONNX graph).
    pub fn transform_in_place(&self, x: &mut [f32]) {
        let n = self.n_features();
        for row in x.chunks_exact_mut(n) {
            for ((v, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                let filled = if v.is_nan() { m } else { *v };
                *v = (filled - m) / s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignores_missing_and_guards_zero_variance() {
        // Feature 0: 1, 3, missing -> mean 2, population sd 1.
        // Feature 1: constant 5 -> scale 1.
        let x = [1.0, 5.0, 3.0, 5.0, f32::NAN, 5.0];
        let s = StandardScaler::fit(&x, 2);
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.scale, vec![1.0, 1.0]);
        let mut y = x;
        s.transform_in_place(&mut y);
        assert_eq!(y, [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }
}
