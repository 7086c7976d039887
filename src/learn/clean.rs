//! Cleaning erroneous entries before anything is learned, and inside the
//! exported model (`[pipelines.preprocess]`; `train --missing-values`,
//! `--range`).
//!
//! - **Missing-value markers** (`missing_values = [-200]`): a reading equal
//!   to a marker is missing, as pandas' `read_csv(na_values=…)` reads it
//!   (the UCI Air Quality file writes -200 for a missing reading). A
//!   regression label equal to a marker is a missing label: the sample is
//!   left out of training and evaluation.
//! - **Valid ranges** (`ranges = { T = [-40, 85] }`): a reading outside its
//!   feature's closed range is missing.
//!
//! Missing readings then go through the model's own imputation (the
//! training part's mean, scikit-learn's `SimpleImputer`). The exported ONNX
//! graph starts with the same rule ([`Cleaning::wrap_onnx`]: `Equal`/`Less`/
//! `Greater` → `Or` → `Where(mask, NaN, features)`), so served models and
//! models taken elsewhere read the raw readings.

use std::collections::BTreeMap;

use prost::Message;
use serde::{Deserialize, Serialize};
use tract_onnx::pb;

use crate::onnx::builder::{node, tensor_f32, INPUT};

/// `[pipelines.preprocess]`'s cleaning rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cleaning {
    /// Values that mean "missing" in any feature (and a regression label).
    pub missing_values: Vec<f64>,
    /// Per feature, the closed range `[low, high]` of valid readings.
    pub ranges: BTreeMap<String, [f64; 2]>,
    /// Categorical features: their readings are category codes, never
    /// markers (`[pipelines.preprocess] categorical`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categorical: Vec<String>,
}

impl Cleaning {
    /// Whether there is nothing to clean.
    pub fn is_empty(&self) -> bool {
        self.missing_values.is_empty() && self.ranges.is_empty()
    }

    /// Checks the rules against the features.
    ///
    /// # Errors
    /// A message naming the bad entry: a marker that is not finite, a range
    /// of a feature the pipeline does not have, or with low > high.
    pub fn validate(&self, features: &[String]) -> Result<(), String> {
        if let Some(m) = self.missing_values.iter().find(|m| !m.is_finite()) {
            return Err(format!(
                "missing_values: {m} is not a finite number (NaN is missing already)"
            ));
        }
        for (f, [lo, hi]) in &self.ranges {
            if !features.contains(f) {
                return Err(format!("ranges: `{f}` is not a feature"));
            }
            if !(lo <= hi) {
                return Err(format!("ranges.{f}: [{lo}, {hi}] is empty"));
            }
        }
        Ok(())
    }

    /// Whether `v` (a reading of `feature`, or a label with `feature`
    /// `None`) is missing by these rules.
    fn missing(&self, feature: Option<&str>, v: f64) -> bool {
        if self
            .missing_values
            .iter()
            .any(|&m| v == m || v == f64::from(m as f32))
        {
            return true;
        }
        match feature.and_then(|f| self.ranges.get(f)) {
            Some([lo, hi]) => v < *lo || v > *hi,
            None => false,
        }
    }

    /// Sets the missing readings of row-major `x` (`features.len()` values
    /// a row) to NaN; returns how many.
    pub fn apply(&self, features: &[String], x: &mut [f32]) -> usize {
        if self.is_empty() || features.is_empty() {
            return 0;
        }
        let mut n = 0;
        for row in x.chunks_mut(features.len()) {
            for (v, f) in row.iter_mut().zip(features) {
                if !v.is_nan()
                    && !self.categorical.contains(f)
                    && self.missing(Some(f), f64::from(*v))
                {
                    *v = f32::NAN;
                    n += 1;
                }
            }
        }
        n
    }

    /// Whether a numeric label is a missing value.
    pub fn label_missing(&self, y: f64) -> bool {
        self.missing(None, y)
    }

    /// The ONNX model `onnx` with the cleaning rule in front of its graph:
    /// every node that read the input reads the cleaned input instead.
    /// `onnx` unchanged when there is nothing to clean (or it cannot be
    /// decoded, which edgeloop's own exports always can).
    pub fn wrap_onnx(&self, features: &[String], onnx: Vec<u8>) -> Vec<u8> {
        if self.is_empty() {
            return onnx;
        }
        let Ok(mut model) = pb::ModelProto::decode(&onnx[..]) else {
            return onnx;
        };
        let Some(graph) = model.graph.as_mut() else {
            return onnx;
        };
        const CLEAN: &str = "features_cleaned";
        for n in &mut graph.node {
            for i in &mut n.input {
                if i == INPUT {
                    *i = CLEAN.to_string();
                }
            }
        }
        let mut nodes = Vec::new();
        let mut masks: Vec<String> = Vec::new();
        for (k, m) in self.missing_values.iter().enumerate() {
            let c = format!("clean_marker_{k}");
            graph.initializer.push(tensor_f32(&c, &[], &[*m as f32]));
            let out = format!("clean_is_marker_{k}");
            nodes.push(node("Equal", &[INPUT, &c], &out, vec![]));
            masks.push(out);
        }
        if !self.ranges.is_empty() {
            let bound = |i: usize| {
                features
                    .iter()
                    .map(|f| {
                        self.ranges.get(f).map_or(
                            if i == 0 {
                                f32::NEG_INFINITY
                            } else {
                                f32::INFINITY
                            },
                            |r| r[i] as f32,
                        )
                    })
                    .collect::<Vec<f32>>()
            };
            let nf = features.len() as i64;
            graph
                .initializer
                .push(tensor_f32("clean_low", &[nf], &bound(0)));
            graph
                .initializer
                .push(tensor_f32("clean_high", &[nf], &bound(1)));
            nodes.push(node("Less", &[INPUT, "clean_low"], "clean_below", vec![]));
            nodes.push(node(
                "Greater",
                &[INPUT, "clean_high"],
                "clean_above",
                vec![],
            ));
            masks.push("clean_below".into());
            masks.push("clean_above".into());
        }
        let mut mask = masks[0].clone();
        for (k, m) in masks.iter().enumerate().skip(1) {
            let out = format!("clean_mask_{k}");
            nodes.push(node("Or", &[&mask, m], &out, vec![]));
            mask = out;
        }
        graph
            .initializer
            .push(tensor_f32("clean_nan", &[], &[f32::NAN]));
        nodes.push(node("Where", &[&mask, "clean_nan", INPUT], CLEAN, vec![]));
        nodes.append(&mut graph.node);
        graph.node = nodes;
        model.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_and_ranges_become_missing() {
        let c = Cleaning {
            missing_values: vec![-200.0],
            ranges: BTreeMap::from([("t".to_string(), [-40.0, 85.0])]),
            categorical: vec![],
        };
        let f = vec!["t".to_string(), "co".to_string()];
        let mut x = vec![20.0, -200.0, 90.0, 1.5, -200.0, f32::NAN];
        assert_eq!(c.apply(&f, &mut x), 3);
        assert!(x[1].is_nan() && x[2].is_nan() && x[4].is_nan() && x[5].is_nan());
        assert_eq!((x[0], x[3]), (20.0, 1.5));
        assert!(c.label_missing(-200.0));
        assert!(!c.label_missing(2.6));
        assert!(c.validate(&f).is_ok());
        assert!(c.validate(&["co".to_string()]).is_err());
        // A category code equal to a marker is a category, not missing.
        let c = Cleaning {
            missing_values: vec![0.0],
            categorical: vec!["mode".into()],
            ..Cleaning::default()
        };
        let mut x = vec![0.0, 0.0];
        assert_eq!(c.apply(&["t".into(), "mode".into()], &mut x), 1);
        assert_eq!((x[0].is_nan(), x[1]), (true, 0.0));
    }
}
