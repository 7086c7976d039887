//! `[pipelines.preprocess]`: the preprocessing a pipeline's models carry,
//! fitted on each training part only and exported as the front of the
//! model's ONNX graph, so served models read the raw readings.
//!
//! In order (each step off unless configured; the numeric steps are
//! [`crate::features::preprocess`]'s, scikit-learn's semantics):
//!
//! 0. cleaning: missing-value markers and valid ranges ([`Cleaning`],
//!    applied to the whole dataset before any split);
//! 1. `impute = "mean" | "median" | "constant" | "last"`
//!    (`SimpleImputer`; `last` carries each feature's last observation
//!    forward over the training part in time order, and falls back to the
//!    training mean before the first observation and in the exported graph,
//!    which holds no state between calls; the daemon carries each device's
//!    last reading forward before the graph, [`CarryForward`]), with `missing_indicator = true`
//!    one 0/1 column per feature that had a missing value in the training
//!    part, appended after the features (`add_indicator=True`);
//! 2. `outliers = "clip_quantile"` (to the training part's `quantiles`,
//!    default 1 % and 99 %), `"clip_iqr"` (to Tukey's fences
//!    `[Q1 − k·IQR, Q3 + k·IQR]`, `k = iqr_factor`, default 1.5), or
//!    `"drop"` (rows of the training part with a feature outside Tukey's
//!    fences are left out; served rows are not changed), on the imputed
//!    features (not the indicators);
//! 3. `drop_constant = true`: columns constant over the training part are
//!    removed (`VarianceThreshold(0)`);
//! 4. `scale = "standard" | "robust" | "minmax"` (`StandardScaler`,
//!    `RobustScaler`, `MinMaxScaler`), every column;
//! 5. `categorical = ["mode"]`: those features are read as strings
//!    ([`crate::ingest::categories`]: codes in the samples, strings in the
//!    exported model) and one-hot encoded after the numeric steps
//!    ([`OneHot`]: `OneHotEncoder(handle_unknown="ignore",
//!    max_categories=…)`, categories learned from the training part, the
//!    less frequent beyond `max_categories − 1` sharing one column, an
//!    unknown or missing category all zeros); the numeric steps see only
//!    the other features;
//! 6. `pca = N` components or a fraction of explained variance (`PCA`),
//!    over the numeric columns and the one-hot columns.
//!
//! The imputer is fitted on every row of the training part; the steps after
//! `drop` on the rows it kept. Every family then standardises its inputs
//! itself as before (a scikit-learn pipeline equal to edgeloop's ends in
//! `StandardScaler()` before the model).
//!
//! A model with preprocessing is a [`Model::Preprocessed`]
//! ([`PreprocessedModel`]): the fitted steps ([`Preprocessor`], also the
//! card's `preprocessing`) and the family's model fitted on their output.
//! Its graph (inputs `features`, `[N, n_features]` f32, and with
//! categorical features `categories`, `[N, n_categorical]` strings, whose
//! columns are the categorical features in `categorical` order; the
//! categorical features' slots of `features` are not read): `Gather(numeric
//! columns) → IsNaN → Where(fill)` (`Gather → Cast → Concat` for the
//! indicators) `→ Max(low) → Min(high) → Gather(kept columns) → Sub(center)
//! → Div(scale)`, `Concat` with each categorical feature's `Gather(column
//! of categories) → LabelEncoder(category → column) → OneHotEncoder`
//! (`ai.onnx.ml`), `→ Sub(mean) → MatMul(componentsᵀ)` → the family's
//! graph. The metadata `categorical` (JSON `[[feature, [string by code]]]`)
//! lets the engine (`crate::onnx::engine::OnnxModel`) turn the codes of a
//! served sample back into strings.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use super::clean::Cleaning;
use super::model::{Model, Task, TrainError};
use super::settings::ModelConfig;
use super::Dataset;
use crate::features::preprocess::{
    self as steps, Bounds, CarryForward, Components, ImputeStrategy, Imputer, OneHot,
    OutlierStrategy, Pca, ScaleStrategy, Scaling,
};
use crate::ingest::categories::CategoryBook;
use crate::onnx::builder::{
    attr_int, attr_ints, attr_strings, input_info, node, tensor_f32, tensor_i64, value_info, INPUT,
    ML_DOMAIN,
};

/// The exported graph's input of categorical strings, `[N, n_categorical]`.
pub const CATEGORIES_INPUT: &str = "categories";

/// `[pipelines.preprocess]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Values that mean "missing" in any feature (and a regression label).
    pub missing_values: Vec<f64>,
    /// Per feature, the closed range `[low, high]` of valid readings.
    pub ranges: BTreeMap<String, [f64; 2]>,
    /// How missing values are filled; `off`: by each family (the mean).
    pub impute: ImputeStrategy,
    /// `impute = "constant"`'s value.
    pub fill_value: f64,
    /// Indicator columns of the features that had missing values.
    pub missing_indicator: bool,
    /// What is done with outliers.
    pub outliers: OutlierStrategy,
    /// `clip_quantile`'s levels `[low, high]`, 0 ≤ low < high ≤ 1.
    pub quantiles: [f64; 2],
    /// Tukey's k of `clip_iqr` and `drop`.
    pub iqr_factor: f64,
    /// Remove the features constant over the training part.
    pub drop_constant: bool,
    /// How features are scaled.
    pub scale: ScaleStrategy,
    /// Principal components kept: a count (1, 2, …) or a fraction of
    /// explained variance in (0, 1); 0: no PCA.
    pub pca: f64,
    /// Features read as strings and one-hot encoded.
    pub categorical: Vec<String>,
    /// At most this many one-hot columns per categorical feature, the
    /// least frequent categories sharing the last (0: one per category).
    pub max_categories: usize,
    /// The pipeline's category codes, set by the daemon (the store's book)
    /// or `edgeloop train` (the file's); not a key.
    #[serde(skip)]
    pub categories: Option<Arc<CategoryBook>>,
    /// With `impute = "last"`, the devices' last readings at serving, set
    /// by the daemon; not a key.
    #[serde(skip)]
    pub carry_forward: Option<Arc<CarryForward>>,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            missing_values: vec![],
            ranges: BTreeMap::new(),
            impute: ImputeStrategy::Off,
            fill_value: 0.0,
            missing_indicator: false,
            outliers: OutlierStrategy::Off,
            quantiles: [0.01, 0.99],
            iqr_factor: 1.5,
            drop_constant: false,
            scale: ScaleStrategy::Off,
            pca: 0.0,
            categorical: vec![],
            max_categories: 0,
            categories: None,
            carry_forward: None,
        }
    }
}

impl PreprocessConfig {
    /// The cleaning rules (markers and ranges).
    pub fn cleaning(&self) -> Cleaning {
        Cleaning {
            missing_values: self.missing_values.clone(),
            ranges: self.ranges.clone(),
            categorical: self.categorical.clone(),
        }
    }

    /// Whether any fitted step is configured (cleaning aside).
    pub fn has_steps(&self) -> bool {
        self.impute != ImputeStrategy::Off || !self.categorical.is_empty()
    }

    /// The same cleaning without the fitted steps.
    pub fn without_steps(&self) -> Self {
        Self {
            missing_values: self.missing_values.clone(),
            ranges: self.ranges.clone(),
            ..Self::default()
        }
    }

    /// Checks the section against the pipeline's features.
    ///
    /// # Errors
    /// A message `key: reason` naming the first bad key: the cleaning rules'
    /// ([`Cleaning::validate`]); a step after imputation without `impute`;
    /// quantiles outside [0, 1] or not increasing; a negative or not finite
    /// `iqr_factor` or `fill_value`; a `pca` that is neither a count nor a
    /// fraction in (0, 1); a categorical feature that is not a feature,
    /// twice, or with a range; no numeric feature left; `max_categories`
    /// of 1.
    pub fn validate(&self, features: &[String]) -> Result<(), String> {
        self.cleaning().validate(features)?;
        for (i, c) in self.categorical.iter().enumerate() {
            if !features.contains(c) {
                return Err(format!("categorical: `{c}` is not a feature"));
            }
            if self.categorical[..i].contains(c) {
                return Err(format!("categorical: `{c}` is listed twice"));
            }
            if self.ranges.contains_key(c) {
                return Err(format!(
                    "ranges: `{c}` is categorical (its readings are strings)"
                ));
            }
        }
        if !self.categorical.is_empty() && self.categorical.len() >= features.len() {
            return Err("categorical: at least one feature must stay numeric".to_string());
        }
        if self.max_categories == 1 {
            return Err(
                "max_categories: 1 would put every category in one column; 0 (no limit) or ≥ 2"
                    .into(),
            );
        }
        if self.impute == ImputeStrategy::Off && self.categorical.is_empty() {
            let needs = [
                ("missing_indicator", self.missing_indicator),
                ("outliers", self.outliers != OutlierStrategy::Off),
                ("drop_constant", self.drop_constant),
                ("scale", self.scale != ScaleStrategy::Off),
                ("pca", self.pca != 0.0),
            ];
            if let Some((k, _)) = needs.iter().find(|(_, on)| *on) {
                return Err(format!(
                    "{k}: needs `impute` (\"mean\", \"median\", \"constant\" or \"last\"): the \
                     steps after imputation see no missing values"
                ));
            }
        }
        let [lo, hi] = self.quantiles;
        if !(0.0 <= lo && lo < hi && hi <= 1.0) {
            return Err(format!(
                "quantiles: [{lo}, {hi}] must be increasing within [0, 1]"
            ));
        }
        if !(self.iqr_factor.is_finite() && self.iqr_factor >= 0.0) {
            return Err(format!(
                "iqr_factor: {} must be a number ≥ 0",
                self.iqr_factor
            ));
        }
        if !self.fill_value.is_finite() {
            return Err(format!("fill_value: {} is not finite", self.fill_value));
        }
        if self.components().is_none() && self.pca != 0.0 {
            return Err(format!(
                "pca: {} must be a count of components (1, 2, …) or a fraction of explained \
                 variance in (0, 1)",
                self.pca
            ));
        }
        Ok(())
    }

    /// `pca` as components to keep; `None` when 0 or invalid.
    pub fn components(&self) -> Option<Components> {
        let p = self.pca;
        if p > 0.0 && p < 1.0 {
            Some(Components::Fraction(p))
        } else if p >= 1.0 && p.fract() == 0.0 && p.is_finite() {
            Some(Components::Count(p as usize))
        } else {
            None
        }
    }
}

/// The fitted steps: what the card shows as `preprocessing`, and what
/// [`PreprocessedModel`] applies before its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessor {
    /// The raw input features, in order.
    pub features: Vec<String>,
    /// The columns of the numeric features, which the numeric steps
    /// (imputer to scaling) read; `None`: every feature (no categorical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numeric: Option<Vec<usize>>,
    pub imputer: Imputer,
    pub outliers: OutlierStrategy,
    /// Clipping bounds of each column after imputation (`clip_quantile`,
    /// `clip_iqr`), or the fences `drop` applied to the training part.
    pub bounds: Option<Bounds>,
    /// Training rows left out by `outliers = "drop"`.
    pub rows_dropped: u64,
    /// Columns removed as constant (`drop_constant`), by name.
    pub dropped_constant: Vec<String>,
    /// Indices of the kept columns after imputation (`None`: all).
    pub kept: Option<Vec<usize>>,
    pub scaling: Option<Scaling>,
    /// The categorical features' encodings, appended after the numeric
    /// columns, in `categorical` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_hot: Vec<OneHot>,
    pub pca: Option<Pca>,
    /// The columns the model receives, in order.
    pub output: Vec<String>,
}

impl Preprocessor {
    /// Fits the steps of `cfg` on the training part `data` (columns
    /// `features`); returns them with the part transformed (rows `drop`
    /// left out removed).
    ///
    /// # Errors
    /// [`TrainError::Settings`] when `drop_constant` leaves no column, or
    /// categorical features come without their category book.
    pub fn fit(
        cfg: &PreprocessConfig,
        data: &Dataset,
        features: &[String],
    ) -> Result<(Self, Dataset), TrainError> {
        let n_raw = features.len();
        let categorical: Vec<usize> = cfg
            .categorical
            .iter()
            .filter_map(|c| features.iter().position(|f| f == c))
            .collect();
        let book = match (&cfg.categories, categorical.is_empty()) {
            (_, true) => BTreeMap::new(),
            (Some(book), false) => book.snapshot(),
            (None, false) => {
                return Err(TrainError::Settings(
                    "preprocess.categorical: the pipeline's category codes are not known here"
                        .into(),
                ))
            }
        };
        let numeric: Option<Vec<usize>> = (!categorical.is_empty())
            .then(|| (0..n_raw).filter(|j| !categorical.contains(j)).collect());
        let numeric_features: Vec<String> = match &numeric {
            Some(cols) => cols.iter().map(|&j| features[j].clone()).collect(),
            None => features.to_vec(),
        };
        let nf = numeric_features.len();
        let xn = match &numeric {
            Some(cols) => steps::select_columns(&data.x, n_raw, cols),
            None => data.x.clone(),
        };
        let imputer = Imputer::fit(&xn, nf, cfg.impute, cfg.fill_value, cfg.missing_indicator);
        let mut names: Vec<String> = numeric_features.clone();
        names.extend(
            imputer
                .indicators
                .iter()
                .map(|&j| format!("{}_missing", numeric_features[j])),
        );
        let mut width = imputer.n_out();
        let mut x = imputer.transform(&xn, true);
        let mut d = data.clone();
        let mut rows_dropped = 0;
        let bounds = match cfg.outliers {
            OutlierStrategy::Off => None,
            OutlierStrategy::ClipQuantile | OutlierStrategy::ClipIqr => {
                let tukey = (cfg.outliers == OutlierStrategy::ClipIqr).then_some(cfg.iqr_factor);
                let b = Bounds::fit(&x, width, nf, tukey, cfg.quantiles);
                b.clip(&mut x, width);
                Some(b)
            }
            OutlierStrategy::Drop => {
                let b = Bounds::fit(&x, width, nf, Some(cfg.iqr_factor), cfg.quantiles);
                let keep = b.inliers(&x, width);
                if !keep.is_empty() && keep.len() < d.len() {
                    rows_dropped = (d.len() - keep.len()) as u64;
                    x = keep
                        .iter()
                        .flat_map(|&i| x[i * width..(i + 1) * width].iter().copied())
                        .collect();
                    d = d.select(&keep);
                }
                Some(b)
            }
        };
        let (mut kept, mut dropped_constant) = (None, vec![]);
        if cfg.drop_constant {
            let keep = steps::non_constant_columns(&x, width);
            if keep.is_empty() {
                return Err(TrainError::Settings(
                    "preprocess.drop_constant: every feature is constant in the training part"
                        .into(),
                ));
            }
            if keep.len() < width {
                dropped_constant = (0..width)
                    .filter(|j| !keep.contains(j))
                    .map(|j| names[j].clone())
                    .collect();
                x = steps::select_columns(&x, width, &keep);
                names = keep.iter().map(|&j| names[j].clone()).collect();
                width = keep.len();
                kept = Some(keep);
            }
        }
        let scaling = (cfg.scale != ScaleStrategy::Off).then(|| {
            let s = Scaling::fit(&x, width, cfg.scale);
            s.transform_in_place(&mut x);
            s
        });
        // `d.x` is still the raw rows (those `drop` kept).
        let one_hot: Vec<OneHot> = categorical
            .iter()
            .map(|&j| {
                let codes = book.get(&features[j]).map_or(&[][..], Vec::as_slice);
                OneHot::fit(&d.x, n_raw, j, &features[j], codes, cfg.max_categories)
            })
            .collect();
        if !one_hot.is_empty() {
            x = append_one_hot(&x, width, &d.x, n_raw, &one_hot);
            width += one_hot.iter().map(OneHot::width).sum::<usize>();
            names.extend(one_hot.iter().flat_map(OneHot::names));
        }
        let pca = cfg.components().map(|k| {
            let p = Pca::fit(&x, width, k);
            x = p.transform(&x);
            names = (1..=p.n_components()).map(|i| format!("pc{i}")).collect();
            p
        });
        d.n_features = names.len();
        d.x = x;
        Ok((
            Self {
                features: features.to_vec(),
                numeric,
                imputer,
                outliers: cfg.outliers,
                bounds,
                rows_dropped,
                dropped_constant,
                kept,
                scaling,
                one_hot,
                pca,
                output: names,
            },
            d,
        ))
    }

    /// `x` (`[n, features.len()]`, raw) through the steps as the exported
    /// graph computes them: `[n, output.len()]`. Missing values take the
    /// fill value (`last`: the training mean; no state between calls).
    pub fn transform(&self, raw: &[f32]) -> Vec<f32> {
        let n_raw = self.features.len();
        let mut x = match &self.numeric {
            Some(cols) => self
                .imputer
                .transform(&steps::select_columns(raw, n_raw, cols), false),
            None => self.imputer.transform(raw, false),
        };
        if let (Some(b), true) = (&self.bounds, self.clips()) {
            b.clip(&mut x, self.imputer.n_out());
        }
        if let Some(keep) = &self.kept {
            x = steps::select_columns(&x, self.imputer.n_out(), keep);
        }
        if let Some(s) = &self.scaling {
            s.transform_in_place(&mut x);
        }
        if !self.one_hot.is_empty() {
            let width = self.kept.as_ref().map_or(self.imputer.n_out(), Vec::len);
            x = append_one_hot(&x, width, raw, n_raw, &self.one_hot);
        }
        match &self.pca {
            Some(p) => p.transform(&x),
            None => x,
        }
    }

    fn clips(&self) -> bool {
        matches!(
            self.outliers,
            OutlierStrategy::ClipQuantile | OutlierStrategy::ClipIqr
        )
    }

    /// The ONNX model `inner` (whose input is [`Self::output`]) behind the
    /// steps: its input becomes the raw features, its `features` metadata
    /// their names. `inner` unchanged if it does not decode (edgeloop's own
    /// exports always do).
    pub fn wrap_onnx(&self, inner: Vec<u8>) -> Vec<u8> {
        let Ok(mut model) = pb::ModelProto::decode(&inner[..]) else {
            return inner;
        };
        let Some(graph) = model.graph.as_mut() else {
            return inner;
        };
        let nf = self.imputer.fill.len() as i64;
        let (mut nodes, mut init) = (Vec::new(), Vec::new());
        let mut cur;
        let mut width = self.imputer.n_out() as i64;
        let mut src = INPUT;
        if let Some(cols) = &self.numeric {
            let idx: Vec<i64> = cols.iter().map(|&j| j as i64).collect();
            init.push(tensor_i64("pre_numeric_columns", &[nf], &idx));
            nodes.push(node(
                "Gather",
                &[INPUT, "pre_numeric_columns"],
                "pre_numeric",
                vec![attr_int("axis", 1)],
            ));
            src = "pre_numeric";
        }
        init.push(tensor_f32("pre_fill", &[nf], &self.imputer.fill));
        nodes.push(node("IsNaN", &[src], "pre_is_missing", vec![]));
        nodes.push(node(
            "Where",
            &["pre_is_missing", "pre_fill", src],
            "pre_imputed",
            vec![],
        ));
        cur = "pre_imputed".to_string();
        if !self.imputer.indicators.is_empty() {
            let idx: Vec<i64> = self.imputer.indicators.iter().map(|&j| j as i64).collect();
            init.push(tensor_i64(
                "pre_indicator_columns",
                &[idx.len() as i64],
                &idx,
            ));
            nodes.push(node(
                "Gather",
                &["pre_is_missing", "pre_indicator_columns"],
                "pre_indicator_mask",
                vec![attr_int("axis", 1)],
            ));
            nodes.push(node(
                "Cast",
                &["pre_indicator_mask"],
                "pre_indicators",
                vec![attr_int("to", 1)],
            ));
            nodes.push(node(
                "Concat",
                &[&cur, "pre_indicators"],
                "pre_with_indicators",
                vec![attr_int("axis", 1)],
            ));
            cur = "pre_with_indicators".into();
        }
        if let (Some(b), true) = (&self.bounds, self.clips()) {
            let (low, high) = b.padded(width as usize);
            init.push(tensor_f32("pre_low", &[width], &low));
            init.push(tensor_f32("pre_high", &[width], &high));
            nodes.push(node("Max", &[&cur, "pre_low"], "pre_above_low", vec![]));
            nodes.push(node(
                "Min",
                &["pre_above_low", "pre_high"],
                "pre_clipped",
                vec![],
            ));
            cur = "pre_clipped".into();
        }
        if let Some(keep) = &self.kept {
            let idx: Vec<i64> = keep.iter().map(|&j| j as i64).collect();
            init.push(tensor_i64("pre_kept_columns", &[idx.len() as i64], &idx));
            nodes.push(node(
                "Gather",
                &[&cur, "pre_kept_columns"],
                "pre_kept",
                vec![attr_int("axis", 1)],
            ));
            cur = "pre_kept".into();
            width = idx.len() as i64;
        }
        if let Some(s) = &self.scaling {
            init.push(tensor_f32("pre_center", &[width], &s.center));
            init.push(tensor_f32("pre_scale", &[width], &s.scale));
            nodes.push(node("Sub", &[&cur, "pre_center"], "pre_centered", vec![]));
            nodes.push(node(
                "Div",
                &["pre_centered", "pre_scale"],
                "pre_scaled",
                vec![],
            ));
            cur = "pre_scaled".into();
        }
        if !self.one_hot.is_empty() {
            let mut parts = vec![cur.clone()];
            for (k, h) in self.one_hot.iter().enumerate() {
                if h.width() == 0 {
                    continue;
                }
                let at = format!("pre_cat_{k}_at");
                init.push(tensor_i64(&at, &[], &[k as i64]));
                let col = format!("pre_cat_{k}");
                nodes.push(node(
                    "Gather",
                    &[CATEGORIES_INPUT, &at],
                    &col,
                    vec![attr_int("axis", 1)],
                ));
                // Category → its column (the infrequent share the last);
                // any other string → −1, which OneHotEncoder gives zeros.
                let keys: Vec<&str> = h
                    .categories
                    .iter()
                    .chain(&h.infrequent)
                    .map(String::as_str)
                    .collect();
                let values: Vec<i64> = (0..keys.len())
                    .map(|i| i.min(h.categories.len()) as i64)
                    .collect();
                let index = format!("pre_cat_{k}_index");
                let mut le = node(
                    "LabelEncoder",
                    &[&col],
                    &index,
                    vec![
                        attr_strings("keys_strings", &keys),
                        attr_ints("values_int64s", values),
                        attr_int("default_int64", -1),
                    ],
                );
                le.domain = ML_DOMAIN.into();
                nodes.push(le);
                let one = format!("pre_cat_{k}_one_hot");
                let mut oh = node(
                    "OneHotEncoder",
                    &[&index],
                    &one,
                    vec![
                        attr_ints("cats_int64s", (0..h.width() as i64).collect()),
                        attr_int("zeros", 1),
                    ],
                );
                oh.domain = ML_DOMAIN.into();
                nodes.push(oh);
                parts.push(one);
                width += h.width() as i64;
            }
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            nodes.push(node(
                "Concat",
                &refs,
                "pre_encoded",
                vec![attr_int("axis", 1)],
            ));
            cur = "pre_encoded".into();
        }
        if let Some(p) = &self.pca {
            let k = p.n_components();
            let w = width as usize;
            // componentsᵀ, [width, k].
            let wt: Vec<f32> = (0..w)
                .flat_map(|i| (0..k).map(move |c| (i, c)))
                .map(|(i, c)| p.components[c * w + i])
                .collect();
            init.push(tensor_f32("pre_pca_mean", &[width], &p.mean));
            init.push(tensor_f32("pre_pca_components", &[width, k as i64], &wt));
            nodes.push(node(
                "Sub",
                &[&cur, "pre_pca_mean"],
                "pre_pca_centered",
                vec![],
            ));
            nodes.push(node(
                "MatMul",
                &["pre_pca_centered", "pre_pca_components"],
                "pre_projected",
                vec![],
            ));
            cur = "pre_projected".into();
        }
        for n in &mut graph.node {
            for i in &mut n.input {
                if i == INPUT {
                    *i = cur.clone();
                }
            }
        }
        nodes.append(&mut graph.node);
        graph.node = nodes;
        graph.initializer.extend(init);
        graph.input = vec![input_info(self.features.len())];
        if !self.one_hot.is_empty() {
            graph.input.push(value_info(
                CATEGORIES_INPUT,
                tract_onnx::pb::tensor_proto::DataType::String,
                &[self.one_hot.len() as i64],
            ));
            if !model.opset_import.iter().any(|o| o.domain == ML_DOMAIN) {
                model.opset_import.push(pb::OperatorSetIdProto {
                    domain: ML_DOMAIN.into(),
                    version: 3,
                });
            }
            let codes: Vec<(&String, &Vec<String>)> = self
                .one_hot
                .iter()
                .map(|h| (&h.feature, &h.codes))
                .collect();
            model.metadata_props.push(pb::StringStringEntryProto {
                key: "categorical".into(),
                value: serde_json::to_string(&codes).unwrap_or_default(),
            });
        }
        for p in &mut model.metadata_props {
            if p.key == "features" {
                p.value = serde_json::to_string(&self.features).unwrap_or_default();
            }
        }
        model.encode_to_vec()
    }
}

/// The rows of `x` (`width` wide) each followed by the one-hot columns of
/// the codes in the same row of `raw` (`n_raw` wide).
fn append_one_hot(
    x: &[f32],
    width: usize,
    raw: &[f32],
    n_raw: usize,
    one_hot: &[OneHot],
) -> Vec<f32> {
    let extra: usize = one_hot.iter().map(OneHot::width).sum();
    let mut out = Vec::with_capacity(x.len() / width.max(1) * (width + extra));
    for (row, r) in x.chunks_exact(width.max(1)).zip(raw.chunks_exact(n_raw)) {
        out.extend_from_slice(&row[..width]);
        for h in one_hot {
            h.encode(r[h.column], &mut out);
        }
    }
    out
}

/// A family's model behind fitted preprocessing steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessedModel {
    pub steps: Preprocessor,
    /// Fitted on the steps' output ([`Preprocessor::output`]).
    pub model: Model,
}

impl PreprocessedModel {
    pub fn task(&self) -> Task {
        self.model.task()
    }

    pub fn classes(&self) -> &[String] {
        self.model.classes()
    }

    /// The raw input features.
    pub fn feature_names(&self) -> &[String] {
        &self.steps.features
    }

    /// The model's predictions for raw rows `x` (`[n, features]`).
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        self.model.predict(&self.steps.transform(x))
    }

    /// The model's graph behind the steps' ([`Preprocessor::wrap_onnx`]).
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        self.steps.wrap_onnx(self.model.to_onnx(version))
    }
}

/// Fits `cfg.preprocess`'s steps on the training part `data`, then `fit`
/// on their output (with the steps off in the config it receives, and
/// `init`'s own model when it was fitted on the same columns); `None` when
/// no step is configured (call `fit` on `data` itself).
///
/// # Errors
/// As [`Preprocessor::fit`] and `fit`.
pub fn fit_behind<R>(
    cfg: &ModelConfig,
    data: &Dataset,
    features: &[String],
    init: Option<&Model>,
    fit: impl FnOnce(&ModelConfig, &Dataset, &[String], Option<&Model>) -> Result<R, TrainError>,
) -> Result<Option<(Preprocessor, R)>, TrainError> {
    if !cfg.preprocess.has_steps() {
        return Ok(None);
    }
    let (steps, d) = Preprocessor::fit(&cfg.preprocess, data, features)?;
    let inner_cfg = ModelConfig {
        preprocess: cfg.preprocess.without_steps(),
        ..cfg.clone()
    };
    let init = match init {
        Some(Model::Preprocessed(p)) if p.model.feature_names() == steps.output.as_slice() => {
            Some(&p.model)
        }
        _ => None,
    };
    let out = fit(&inner_cfg, &d, &steps.output, init)?;
    Ok(Some((steps, out)))
}
