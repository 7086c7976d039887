//! The fitted preprocessing steps of `[pipelines.preprocess]`, each fitted on
//! a training part and applied to any rows: imputation of missing values
//! with missing indicators, outlier clipping, removal of constant features,
//! scaling and principal component analysis. Each follows scikit-learn 1.9's
//! semantics (named per step); `crate::learn::preprocess` chains them, and
//! exports the chain as the front of the ONNX graph.
//!
//! Every matrix is `[n_rows, n_features]` row-major `f32`, `NaN` = missing.
//! Statistics are computed in `f64`; transforms run in `f32` in the order
//! of the exported graph (`(x − center) / scale`), so the in-process
//! transform and the graph agree to the last bit or two.

use serde::{Deserialize, Serialize};

/// numpy's `quantile(v, q)` with its default `linear` interpolation, of the
/// sorted `v` (not empty): the value at position `q·(n − 1)`.
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    let frac = pos - lo as f64;
    v[lo] + frac * (v[hi] - v[lo])
}

/// Column `j` of `x` (`n_features` wide) without its missing values, sorted.
fn present_sorted(x: &[f32], n_features: usize, j: usize) -> Vec<f64> {
    let mut v: Vec<f64> = x
        .chunks_exact(n_features)
        .map(|r| f64::from(r[j]))
        .filter(|v| !v.is_nan())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Mean of column `j`'s present values, `None` when none is.
fn present_mean(x: &[f32], n_features: usize, j: usize) -> Option<f64> {
    let (s, c) = x
        .chunks_exact(n_features)
        .map(|r| r[j])
        .filter(|v| !v.is_nan())
        .fold((0.0, 0usize), |(s, c), v| (s + f64::from(v), c + 1));
    (c > 0).then(|| s / c as f64)
}

/// How missing values are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImputeStrategy {
    /// No imputation step: each family fills a missing value with the
    /// training mean itself.
    #[default]
    Off,
    /// The feature's mean over the training part (`SimpleImputer("mean")`).
    Mean,
    /// The feature's median (`SimpleImputer("median")`).
    Median,
    /// `fill_value` (`SimpleImputer("constant", fill_value=…)`).
    Constant,
    /// Last observation carried forward over the training part in time
    /// order (pandas' `ffill`); a value missing before any observation, and
    /// every missing value in the exported graph, takes the mean.
    Last,
}

/// A fitted imputer, `SimpleImputer(add_indicator=…)`: a missing value
/// becomes `fill[j]`; with indicators, one 0/1 column per feature that had a
/// missing value in the training part is appended after the features
/// (scikit-learn's `MissingIndicator(features="missing-only")`). A feature
/// never present in the training part is filled with 0
/// (`keep_empty_features=True`; the other strategies' columns are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imputer {
    pub strategy: ImputeStrategy,
    /// Fill value of each feature, `[n_features]`.
    pub fill: Vec<f32>,
    /// Features that get an indicator column, in order (empty: none).
    pub indicators: Vec<usize>,
}

impl Imputer {
    /// Fits on `x`. `fill_value` is `constant`'s.
    pub fn fit(
        x: &[f32],
        n_features: usize,
        strategy: ImputeStrategy,
        fill_value: f64,
        add_indicator: bool,
    ) -> Self {
        let fill = (0..n_features)
            .map(|j| {
                let v = match strategy {
                    ImputeStrategy::Constant => Some(fill_value),
                    ImputeStrategy::Median => {
                        let s = present_sorted(x, n_features, j);
                        (!s.is_empty()).then(|| quantile_sorted(&s, 0.5))
                    }
                    _ => present_mean(x, n_features, j),
                };
                v.unwrap_or(0.0) as f32
            })
            .collect();
        let indicators = if add_indicator {
            (0..n_features)
                .filter(|&j| x.chunks_exact(n_features).any(|r| r[j].is_nan()))
                .collect()
        } else {
            vec![]
        };
        Self {
            strategy,
            fill,
            indicators,
        }
    }

    /// Width of the output: the features, then the indicators.
    pub fn n_out(&self) -> usize {
        self.fill.len() + self.indicators.len()
    }

    /// The filled rows with their indicator columns, `[n, n_out]`. With
    /// `strategy = last` and `carry_forward`, a missing value takes the
    /// feature's last present value in an earlier row (the rows in time
    /// order), the fill value before any.
    pub fn transform(&self, x: &[f32], carry_forward: bool) -> Vec<f32> {
        let nf = self.fill.len();
        let mut last: Vec<f32> = self.fill.clone();
        let locf = carry_forward && self.strategy == ImputeStrategy::Last;
        let mut out = Vec::with_capacity(x.len() / nf.max(1) * self.n_out());
        for row in x.chunks_exact(nf) {
            for (j, &v) in row.iter().enumerate() {
                if v.is_nan() {
                    out.push(if locf { last[j] } else { self.fill[j] });
                } else {
                    out.push(v);
                    if locf {
                        last[j] = v;
                    }
                }
            }
            for &j in &self.indicators {
                out.push(if row[j].is_nan() { 1.0 } else { 0.0 });
            }
        }
        out
    }
}

/// What is done with outliers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutlierStrategy {
    #[default]
    Off,
    /// Clip each feature to the training part's `quantiles` (numpy's
    /// `quantile`, linear interpolation).
    ClipQuantile,
    /// Clip each feature to Tukey's fences `[Q1 − k·IQR, Q3 + k·IQR]`
    /// (k = `iqr_factor`; Tukey 1977, k = 1.5).
    ClipIqr,
    /// Leave out of the training part every row with a feature outside
    /// Tukey's fences; served rows are not changed.
    Drop,
}

/// Bounds of the first `low.len()` columns: `x → min(max(x, low), high)`
/// (ONNX `Max` then `Min`); the columns after them (indicators) are not
/// bounded. Finite, so a card or a stored model holds them as JSON numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bounds {
    /// `[n_bounded]`.
    pub low: Vec<f32>,
    /// `[n_bounded]`.
    pub high: Vec<f32>,
}

impl Bounds {
    /// Quantile bounds (`q_low`, `q_high`) or Tukey's fences (`iqr_factor`)
    /// of the first `n_bounded` columns of `x` (no missing values; the rest,
    /// indicator columns, unbounded).
    pub fn fit(
        x: &[f32],
        n_features: usize,
        n_bounded: usize,
        tukey: Option<f64>,
        quantiles: [f64; 2],
    ) -> Self {
        let (mut low, mut high) = (vec![0f32; n_bounded], vec![0f32; n_bounded]);
        for j in 0..n_bounded {
            let s = present_sorted(x, n_features, j);
            if s.is_empty() {
                continue;
            }
            let (lo, hi) = match tukey {
                Some(k) => {
                    let (q1, q3) = (quantile_sorted(&s, 0.25), quantile_sorted(&s, 0.75));
                    (q1 - k * (q3 - q1), q3 + k * (q3 - q1))
                }
                None => (
                    quantile_sorted(&s, quantiles[0]),
                    quantile_sorted(&s, quantiles[1]),
                ),
            };
            low[j] = lo as f32;
            high[j] = hi as f32;
        }
        Self { low, high }
    }

    /// Clips `x` (`n_features` wide) in place.
    pub fn clip(&self, x: &mut [f32], n_features: usize) {
        for row in x.chunks_exact_mut(n_features) {
            for ((v, &lo), &hi) in row.iter_mut().zip(&self.low).zip(&self.high) {
                *v = v.max(lo).min(hi);
            }
        }
    }

    /// `[n_features]` bounds for a graph: `±inf` past the bounded columns.
    pub fn padded(&self, n_features: usize) -> (Vec<f32>, Vec<f32>) {
        let pad = |b: &[f32], fill: f32| {
            let mut v = b.to_vec();
            v.resize(n_features, fill);
            v
        };
        (
            pad(&self.low, f32::NEG_INFINITY),
            pad(&self.high, f32::INFINITY),
        )
    }

    /// The rows of `x` (`n_features` wide) with every bounded value within
    /// bounds.
    pub fn inliers(&self, x: &[f32], n_features: usize) -> Vec<usize> {
        x.chunks_exact(n_features)
            .enumerate()
            .filter(|(_, r)| {
                r.iter()
                    .zip(self.low.iter().zip(&self.high))
                    .all(|(&v, (&lo, &hi))| v >= lo && v <= hi)
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// The columns of `x` whose training variance is above 0,
/// `VarianceThreshold(threshold=0)` (population variance in `f64`).
pub fn non_constant_columns(x: &[f32], n_features: usize) -> Vec<usize> {
    (0..n_features)
        .filter(|&j| {
            let mut col = x.chunks_exact(n_features).map(|r| f64::from(r[j]));
            let Some(first) = col.next() else {
                return false;
            };
            col.any(|v| v != first)
        })
        .collect()
}

/// Keeps the columns `keep` of `x` (`n_features` wide).
pub fn select_columns(x: &[f32], n_features: usize, keep: &[usize]) -> Vec<f32> {
    x.chunks_exact(n_features)
        .flat_map(|r| keep.iter().map(move |&j| r[j]))
        .collect()
}

/// How features are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleStrategy {
    /// No scaling step (each family standardises its inputs itself).
    #[default]
    Off,
    /// `StandardScaler`: mean and population standard deviation.
    Standard,
    /// `RobustScaler`: median and the 25–75 % interquartile range.
    Robust,
    /// `MinMaxScaler` to [0, 1]: minimum and range.
    Minmax,
}

/// `(x − center) / scale` per feature; a feature whose spread is 0 gets
/// scale 1 (scikit-learn's `_handle_zeros_in_scale`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    pub strategy: ScaleStrategy,
    /// `[n_features]`: mean, median or minimum.
    pub center: Vec<f32>,
    /// `[n_features]`: standard deviation, IQR or range.
    pub scale: Vec<f32>,
}

impl Scaling {
    /// Fits on `x` (no missing values).
    pub fn fit(x: &[f32], n_features: usize, strategy: ScaleStrategy) -> Self {
        let n = (x.len() / n_features.max(1)).max(1) as f64;
        let (mut center, mut scale) = (Vec::new(), Vec::new());
        for j in 0..n_features {
            let (c, s) = match strategy {
                ScaleStrategy::Off => (0.0, 1.0),
                ScaleStrategy::Standard => {
                    let m = present_mean(x, n_features, j).unwrap_or(0.0);
                    let var = x
                        .chunks_exact(n_features)
                        .map(|r| (f64::from(r[j]) - m).powi(2))
                        .sum::<f64>()
                        / n;
                    (m, var.sqrt())
                }
                ScaleStrategy::Robust => {
                    let s = present_sorted(x, n_features, j);
                    if s.is_empty() {
                        (0.0, 1.0)
                    } else {
                        (
                            quantile_sorted(&s, 0.5),
                            quantile_sorted(&s, 0.75) - quantile_sorted(&s, 0.25),
                        )
                    }
                }
                ScaleStrategy::Minmax => {
                    let s = present_sorted(x, n_features, j);
                    match (s.first(), s.last()) {
                        (Some(&lo), Some(&hi)) => (lo, hi - lo),
                        _ => (0.0, 1.0),
                    }
                }
            };
            center.push(c as f32);
            // scikit-learn: a scale below 10·eps of its dtype counts as 0.
            scale.push(if s.abs() < 10.0 * f64::EPSILON || !s.is_finite() {
                1.0
            } else {
                s as f32
            });
        }
        Self {
            strategy,
            center,
            scale,
        }
    }

    /// Scales `x` in place.
    pub fn transform_in_place(&self, x: &mut [f32]) {
        for row in x.chunks_exact_mut(self.center.len()) {
            for ((v, &c), &s) in row.iter_mut().zip(&self.center).zip(&self.scale) {
                *v = (*v - c) / s;
            }
        }
    }
}

/// One-hot encoding of one categorical feature, scikit-learn's
/// `OneHotEncoder(handle_unknown="ignore", max_categories=…)` (1.9): the
/// training part's categories sorted, the `max_categories − 1` most
/// frequent (ties: the later in sorted order, numpy's stable
/// `argsort(counts)`) each with a column, the others (`infrequent`) sharing
/// one last column when there are more than `max_categories`; a category
/// not seen in training, and a missing one, gives all zeros.
///
/// The feature's readings are codes ([`crate::ingest::categories`]);
/// `codes` is the pipeline's book when fitted (strings by code).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneHot {
    pub feature: String,
    /// The feature's column in the raw input.
    pub column: usize,
    /// The categories with a column of their own, sorted.
    pub categories: Vec<String>,
    /// The training part's other categories, sorted, sharing the last
    /// column (scikit-learn's `infrequent_categories_`); empty: no such
    /// column.
    pub infrequent: Vec<String>,
    /// The strings by code of the book the feature was read with.
    pub codes: Vec<String>,
}

impl OneHot {
    /// Fits on the codes `x[:, column]` (`n_features` wide; `NaN` and codes
    /// outside `codes` are missing, not categories). `max_categories`: 0 for
    /// no limit.
    pub fn fit(
        x: &[f32],
        n_features: usize,
        column: usize,
        feature: &str,
        codes: &[String],
        max_categories: usize,
    ) -> Self {
        let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
        for row in x.chunks_exact(n_features) {
            if let Some(s) = string_of(codes, row[column]) {
                *counts.entry(s).or_default() += 1;
            }
        }
        // Sorted (BTreeMap order: by bytes, as Python's str order).
        let cats: Vec<(&str, u64)> = counts.into_iter().collect();
        let mut infrequent_mask = vec![false; cats.len()];
        if max_categories > 0 && max_categories < cats.len() {
            let frequent = max_categories - 1;
            let mut order: Vec<usize> = (0..cats.len()).collect();
            order.sort_by_key(|&i| cats[i].1); // stable, as mergesort
            for &i in &order[..cats.len() - frequent] {
                infrequent_mask[i] = true;
            }
        }
        let pick = |infrequent: bool| {
            cats.iter()
                .zip(&infrequent_mask)
                .filter(|(_, &m)| m == infrequent)
                .map(|((s, _), _)| s.to_string())
                .collect::<Vec<String>>()
        };
        Self {
            feature: feature.to_string(),
            column,
            categories: pick(false),
            infrequent: pick(true),
            codes: codes.to_vec(),
        }
    }

    /// Number of output columns.
    pub fn width(&self) -> usize {
        self.categories.len() + usize::from(!self.infrequent.is_empty())
    }

    /// The output column of a category string; `None`: all zeros.
    pub fn column_of(&self, s: &str) -> Option<usize> {
        if let Ok(i) = self.categories.binary_search_by(|c| c.as_str().cmp(s)) {
            return Some(i);
        }
        self.infrequent
            .binary_search_by(|c| c.as_str().cmp(s))
            .ok()
            .map(|_| self.categories.len())
    }

    /// Appends the encoding of the code `v` to `out`.
    pub fn encode(&self, v: f32, out: &mut Vec<f32>) {
        let at = out.len();
        out.resize(at + self.width(), 0.0);
        if let Some(k) = string_of(&self.codes, v).and_then(|s| self.column_of(s)) {
            out[at + k] = 1.0;
        }
    }

    /// Names of the output columns: `feature=category`, then
    /// `feature=infrequent`.
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .categories
            .iter()
            .map(|c| format!("{}={c}", self.feature))
            .collect();
        if !self.infrequent.is_empty() {
            n.push(format!("{}=infrequent", self.feature));
        }
        n
    }
}

/// The string of a code, `None` when missing or not in `codes`.
pub fn string_of(codes: &[String], v: f32) -> Option<&str> {
    if v.is_nan() || v < 0.0 || v.fract() != 0.0 {
        return None;
    }
    codes.get(v as usize).map(String::as_str)
}

/// Devices whose last readings [`CarryForward`] keeps; readings of further
/// devices are not filled (the graph's training statistic fills them).
pub const MAX_DEVICES: usize = 10_000;

/// `impute = "last"` at serving: each device's last observed value of each
/// feature, carried forward into its next readings' missing values before
/// the model's graph (pandas' `ffill` per device, as training fills the
/// training part). A value missing before any observation of its device
/// stays missing, and the graph fills it with the training statistic.
/// Shared by the MQTT predictor and HTTP predict (rows with a `device`);
/// runtime state, not configuration (every two compare equal).
#[derive(Debug, Default)]
pub struct CarryForward {
    /// Columns never filled (categorical features: a missing category is
    /// all zeros).
    skip: Vec<usize>,
    last: std::sync::Mutex<std::collections::HashMap<String, Vec<f32>>>,
}

impl PartialEq for CarryForward {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl CarryForward {
    /// Carries every column but `skip`.
    pub fn new(skip: Vec<usize>) -> Self {
        Self {
            skip,
            last: Default::default(),
        }
    }

    /// Fills the missing values of `row` (a reading of `device`, cleaned)
    /// with the device's last observed ones, and remembers its observed
    /// ones.
    pub fn fill(&self, device: &str, row: &mut [f32]) {
        let mut map = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(device) && map.len() >= MAX_DEVICES {
            return;
        }
        let last = map
            .entry(device.to_string())
            .or_insert_with(|| vec![f32::NAN; row.len()]);
        if last.len() != row.len() {
            *last = vec![f32::NAN; row.len()];
        }
        for (j, (v, l)) in row.iter_mut().zip(last.iter_mut()).enumerate() {
            if self.skip.contains(&j) {
                continue;
            }
            if v.is_nan() {
                *v = *l;
            } else {
                *l = *v;
            }
        }
    }
}

/// How many principal components are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Components {
    /// This many (≥ 1, at most the number of features and of rows).
    Count(usize),
    /// The fewest whose explained variance ratios sum above this fraction
    /// (0 < f < 1), as scikit-learn's `PCA(n_components=f)`.
    Fraction(f64),
}

/// Principal component analysis, scikit-learn's `PCA` (no whitening):
/// `z = (x − mean) · componentsᵀ`. Components are the eigenvectors of the
/// sample covariance (`ddof = 1`) by decreasing eigenvalue (cyclic Jacobi
/// rotations in `f64`), signed as scikit-learn's `svd_flip(…,
/// u_based_decision=False)`: each component's largest absolute entry is
/// positive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    /// `[n_features]`.
    pub mean: Vec<f32>,
    /// `[n_components, n_features]` row-major.
    pub components: Vec<f32>,
    /// Eigenvalue of each kept component, `[n_components]`
    /// (`explained_variance_`).
    pub explained_variance: Vec<f64>,
    /// Its share of the total variance, `[n_components]`
    /// (`explained_variance_ratio_`).
    pub explained_variance_ratio: Vec<f64>,
}

impl Pca {
    /// Fits on `x` (no missing values, at least 2 rows).
    pub fn fit(x: &[f32], n_features: usize, keep: Components) -> Self {
        let p = n_features;
        let n = x.len() / p.max(1);
        let mean: Vec<f64> = (0..p)
            .map(|j| present_mean(x, p, j).unwrap_or(0.0))
            .collect();
        let mut cov = vec![0f64; p * p];
        for row in x.chunks_exact(p) {
            let c: Vec<f64> = row
                .iter()
                .zip(&mean)
                .map(|(&v, m)| f64::from(v) - m)
                .collect();
            for a in 0..p {
                for b in a..p {
                    cov[a * p + b] += c[a] * c[b];
                }
            }
        }
        let denom = (n.max(2) - 1) as f64;
        for a in 0..p {
            for b in a..p {
                cov[a * p + b] /= denom;
                cov[b * p + a] = cov[a * p + b];
            }
        }
        let (values, vectors) = jacobi_eigen(cov, p);
        let mut order: Vec<usize> = (0..p).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let total: f64 = values.iter().sum();
        let values: Vec<f64> = order.iter().map(|&k| values[k].max(0.0)).collect();
        let ratio: Vec<f64> = values
            .iter()
            .map(|v| if total > 0.0 { v / total } else { 0.0 })
            .collect();
        let most = p.min(n);
        let k = match keep {
            Components::Count(k) => k.min(most),
            Components::Fraction(f) => {
                let mut cum = 0.0;
                // numpy's searchsorted(cumsum, f, side="right") + 1.
                let below = ratio
                    .iter()
                    .take_while(|r| {
                        cum += **r;
                        cum <= f
                    })
                    .count();
                (below + 1).min(most)
            }
        }
        .max(1);
        let mut components = Vec::with_capacity(k * p);
        for &col in order.iter().take(k) {
            let v: Vec<f64> = (0..p).map(|i| vectors[i * p + col]).collect();
            let big = v
                .iter()
                .fold(0.0f64, |b, &x| if x.abs() > b.abs() { x } else { b });
            let sign = if big < 0.0 { -1.0 } else { 1.0 };
            components.extend(v.iter().map(|x| (x * sign) as f32));
        }
        Self {
            mean: mean.iter().map(|&m| m as f32).collect(),
            components,
            explained_variance: values[..k].to_vec(),
            explained_variance_ratio: ratio[..k].to_vec(),
        }
    }

    /// Number of kept components.
    pub fn n_components(&self) -> usize {
        self.explained_variance.len()
    }

    /// `x` projected, `[n, n_components]`, in `f32` as the graph computes it.
    pub fn transform(&self, x: &[f32]) -> Vec<f32> {
        let p = self.mean.len();
        let k = self.n_components();
        let mut out = Vec::with_capacity(x.len() / p.max(1) * k);
        for row in x.chunks_exact(p) {
            let c: Vec<f32> = row.iter().zip(&self.mean).map(|(v, m)| v - m).collect();
            for comp in self.components.chunks_exact(p) {
                out.push(c.iter().zip(comp).map(|(a, b)| a * b).sum());
            }
        }
        out
    }
}

/// Eigenvalues and eigenvectors (columns of the returned `[p, p]`
/// row-major matrix) of the symmetric `a`, by cyclic Jacobi rotations
/// (Golub & Van Loan, Matrix Computations, §8.5) until the off-diagonal
/// mass is below 1e-22 of the total.
fn jacobi_eigen(mut a: Vec<f64>, p: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; p * p];
    (0..p).for_each(|i| v[i * p + i] = 1.0);
    let norm: f64 = a.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..p)
            .flat_map(|i| (0..p).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * p + j].powi(2))
            .sum();
        if off <= 1e-22 * norm || off == 0.0 {
            break;
        }
        for r in 0..p {
            for c in r + 1..p {
                let arc = a[r * p + c];
                if arc == 0.0 {
                    continue;
                }
                let theta = (a[c * p + c] - a[r * p + r]) / (2.0 * arc);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let cs = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * cs;
                for k in 0..p {
                    let (akr, akc) = (a[k * p + r], a[k * p + c]);
                    a[k * p + r] = cs * akr - sn * akc;
                    a[k * p + c] = sn * akr + cs * akc;
                }
                for k in 0..p {
                    let (ark, ack) = (a[r * p + k], a[c * p + k]);
                    a[r * p + k] = cs * ark - sn * ack;
                    a[c * p + k] = sn * ark + cs * ack;
                }
                for k in 0..p {
                    let (vkr, vkc) = (v[k * p + r], v[k * p + c]);
                    v[k * p + r] = cs * vkr - sn * vkc;
                    v[k * p + c] = sn * vkr + cs * vkc;
                }
            }
        }
    }
    ((0..p).map(|i| a[i * p + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_numpy_linear_interpolation() {
        // np.quantile([1, 2, 4, 10], [0.25, 0.5, 0.9]) = 1.75, 3.0, 8.2
        let v = [1.0, 2.0, 4.0, 10.0];
        assert_eq!(quantile_sorted(&v, 0.25), 1.75);
        assert_eq!(quantile_sorted(&v, 0.5), 3.0);
        assert!((quantile_sorted(&v, 0.9) - 8.2).abs() < 1e-12);
    }

    #[test]
    fn jacobi_diagonalises_a_2x2() {
        // [[2, 1], [1, 2]]: eigenvalues 3 and 1, vectors (1, 1)/√2, (1, −1)/√2.
        let (vals, vecs) = jacobi_eigen(vec![2.0, 1.0, 1.0, 2.0], 2);
        let mut s = vals.clone();
        s.sort_by(f64::total_cmp);
        assert!((s[0] - 1.0).abs() < 1e-12 && (s[1] - 3.0).abs() < 1e-12);
        let k = if vals[0] > vals[1] { 0 } else { 1 };
        assert!((vecs[k].abs() - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert!((vecs[2 + k] - vecs[k]).abs() < 1e-12);
    }

    #[test]
    fn one_hot_groups_the_infrequent_as_scikit_learn() {
        // OneHotEncoder(max_categories=3, handle_unknown="ignore") on
        // [b, a, c, b, d, b, a, c]: counts a 2, b 3, c 2, d 1; argsort
        // (mergesort) = d, a, c, b: frequent = c, b (the last two); a and d
        // infrequent. transform(a) = [0, 0, 1], (e) = [0, 0, 0].
        let codes: Vec<String> = ["b", "a", "c", "d", "e"].map(String::from).to_vec();
        let x = [0.0, 1.0, 2.0, 0.0, 3.0, 0.0, 1.0, 2.0];
        let h = OneHot::fit(&x, 1, 0, "m", &codes, 3);
        assert_eq!(h.categories, vec!["b", "c"]);
        assert_eq!(h.infrequent, vec!["a", "d"]);
        let mut out = vec![];
        h.encode(1.0, &mut out);
        h.encode(4.0, &mut out);
        h.encode(f32::NAN, &mut out);
        h.encode(2.0, &mut out);
        assert_eq!(out, vec![0., 0., 1., 0., 0., 0., 0., 0., 0., 0., 1., 0.]);
        assert_eq!(h.names(), vec!["m=b", "m=c", "m=infrequent"]);
    }

    #[test]
    fn carry_forward_is_per_device_and_skips_categorical_columns() {
        let cf = CarryForward::new(vec![1]);
        let mut a = [1.0, 0.0, 5.0];
        cf.fill("d1", &mut a);
        let mut b = [f32::NAN, f32::NAN, 6.0];
        cf.fill("d1", &mut b);
        assert_eq!((b[0], b[1].is_nan(), b[2]), (1.0, true, 6.0));
        let mut c = [f32::NAN, 2.0, f32::NAN];
        cf.fill("d2", &mut c);
        assert!(c[0].is_nan() && c[2].is_nan(), "no observation of d2 yet");
    }

    #[test]
    fn last_carries_forward_then_falls_back() {
        let x = [f32::NAN, 1.0, 2.0, f32::NAN, f32::NAN, f32::NAN];
        let imp = Imputer::fit(&x, 2, ImputeStrategy::Last, 0.0, true);
        assert_eq!(imp.fill, vec![2.0, 1.0]);
        assert_eq!(imp.indicators, vec![0, 1]);
        let t = imp.transform(&x, true);
        assert_eq!(
            t,
            vec![2.0, 1.0, 1.0, 0.0, 2.0, 1.0, 0.0, 1.0, 2.0, 1.0, 1.0, 1.0]
        );
        // Served rows: the fallback.
        assert_eq!(imp.transform(&x[4..], false), vec![2.0, 1.0, 1.0, 1.0]);
    }
}
