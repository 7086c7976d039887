//! edgeloop's `ai.onnx.ml` tree-ensemble operators (`onnx::tree_ensemble`, registered by
//! `serve::engine::onnx_parser`) against onnxruntime.
//!
//! Models and expected outputs come from `tests/fixtures/tree_ensemble/`, written by
//! `gen_tree_ensemble.py` there (scikit-learn models exported with skl2onnx, and
//! hand-built graphs for every branch mode, post transform, aggregate and onnxruntime's
//! two-class cases; onnxruntime CPU, one thread). Rerun the script to regenerate them;
//! never edit the JSON by hand. Labels must match exactly, scores within 1e-5
//! (relative to the magnitude above 1).

use std::path::{Path, PathBuf};

use edgeloop::serve::engine::onnx_parser;
use serde::Deserialize;
use tract_onnx::prelude::*;

const TOL: f32 = 1e-5;

#[derive(Deserialize)]
struct Case {
    kind: String,
    note: String,
    inputs: Vec<Vec<Option<f32>>>,
    #[serde(default)]
    label_type: String,
    #[serde(default)]
    label: Vec<serde_json::Value>,
    #[serde(default)]
    scores: Vec<Vec<Option<f32>>>,
    #[serde(default)]
    y: Vec<Vec<Option<f32>>>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tree_ensemble")
}

/// Loads fixture `name` with a symbolic batch of `n_features` columns (skl2onnx leaves
/// the batch dimension unnamed, which tract cannot type).
fn load(name: &str, n_features: usize) -> Arc<TypedRunnableModel> {
    onnx_parser()
        .model_for_path(dir().join(format!("{name}.onnx")))
        .and_then(|m| {
            let n = m.symbols.sym("N");
            let fact =
                InferenceFact::dt_shape(f32::datum_type(), tvec![n.to_dim(), n_features.to_dim()]);
            m.with_input_fact(0, fact)
        })
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

fn close(got: f32, want: Option<f32>) -> bool {
    match want {
        None => got.is_nan(),
        Some(w) => (got - w).abs() <= TOL * w.abs().max(1.0),
    }
}

/// Runs fixture `name` through tract with edgeloop's register; returns the row count.
fn check(name: &str) -> usize {
    let path = dir().join(format!("{name}.ort.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let case: Case = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let (n, f) = (case.inputs.len(), case.inputs[0].len());
    let plan = load(name, f);
    let x: Vec<f32> = case
        .inputs
        .iter()
        .flatten()
        .map(|v| v.unwrap_or(f32::NAN))
        .collect();
    let out = plan
        .run(tvec!(Tensor::from_shape(&[n, f], &x)
            .unwrap()
            .into_tvalue()))
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let expected = if case.kind == "classifier" {
        &case.scores
    } else {
        &case.y
    };
    let scores = out[out.len() - 1].to_plain_array_view::<f32>().unwrap();
    assert_eq!(
        scores.shape(),
        &[n, expected[0].len()],
        "{name}: scores shape"
    );
    for (r, want) in expected.iter().enumerate() {
        for (c, w) in want.iter().enumerate() {
            let got = scores[[r, c]];
            assert!(
                close(got, *w),
                "{name} ({}): row {r} {:?}, score {c}: tract {got}, onnxruntime {w:?}",
                case.note,
                case.inputs[r]
            );
        }
    }
    if case.kind == "classifier" {
        let labels: Vec<String> = if case.label_type == "string" {
            out[0]
                .to_plain_array_view::<String>()
                .unwrap()
                .iter()
                .cloned()
                .collect()
        } else {
            out[0]
                .to_plain_array_view::<i64>()
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect()
        };
        let want: Vec<String> = case
            .label
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect();
        for (r, (g, w)) in labels.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{name} ({}): row {r} label", case.note);
        }
        assert_eq!(labels.len(), want.len());
    }
    n
}

#[test]
fn decision_tree_classifiers_match_onnxruntime() {
    check("dt_occupancy");
    check("dt_gas12_int");
    check("dt_gas12_str");
}

#[test]
fn random_forest_classifiers_match_onnxruntime() {
    check("rf50_occupancy");
    check("rf_gas12");
}

#[test]
fn gradient_boosting_classifiers_match_onnxruntime() {
    check("gb_occupancy");
    check("gb_gas12");
}

#[test]
fn regressors_match_onnxruntime() {
    check("dt_air");
    check("rf_air");
    check("gb_air");
}

#[test]
fn hand_built_ensembles_match_onnxruntime() {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("hand_")
                .and_then(|n| n.strip_suffix(".ort.json"))
                .map(|n| format!("hand_{n}"))
        })
        .collect();
    names.sort();
    assert!(names.len() >= 30, "fixtures missing: {names:?}");
    for name in &names {
        check(name);
    }
}

#[test]
fn regressor_is_served_where_tract_refuses_it() {
    let path = dir().join("gb_air.onnx");
    assert!(tract_onnx::onnx()
        .model_for_path(&path)
        .and_then(|m| m.into_optimized())
        .is_err());
    assert!(onnx_parser().model_for_path(&path).is_ok());
}

/// A node's true child out of range, a leaf weight for a class that does not exist, a
/// cycle, and a length mismatch: each refused at load with a message.
#[test]
fn malformed_models_are_refused_with_a_message() {
    type Edit = fn(&mut Vec<tract_onnx::pb::AttributeProto>);
    fn attr<'a>(
        attrs: &'a mut [tract_onnx::pb::AttributeProto],
        name: &str,
    ) -> &'a mut tract_onnx::pb::AttributeProto {
        attrs.iter_mut().find(|a| a.name == name).unwrap()
    }
    let cases: [(Edit, &str); 4] = [
        (
            |a| attr(a, "nodes_truenodeids").ints[0] = 9999,
            "true node 9999 is not in the tree",
        ),
        (|a| attr(a, "class_ids").ints[0] = 5, "id 5 out of range"),
        (|a| attr(a, "nodes_falsenodeids").ints[1] = 0, "cycle"),
        (
            |a| attr(a, "nodes_values").floats.truncate(3),
            "nodes_values",
        ),
    ];
    for (edit, message) in cases {
        let parser = onnx_parser();
        let mut proto = parser
            .proto_model_for_path(dir().join("dt_occupancy.onnx"))
            .unwrap();
        let graph = proto.graph.as_mut().unwrap();
        let node = graph
            .node
            .iter_mut()
            .find(|n| n.op_type == "TreeEnsembleClassifier")
            .unwrap();
        edit(&mut node.attribute);
        let err = match parser.model_for_proto_model(&proto) {
            Ok(_) => panic!("malformed model loaded ({message})"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(message), "{err}");
    }
}
