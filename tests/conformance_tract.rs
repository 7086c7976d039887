//! The ONNX conformance suite against tract: every model in
//! `tests/fixtures/conformance/manifest.json` (skl2onnx, onnxmltools and
//! torch.onnx-style graphs; see `gen_conformance.py`) loads with
//! [`edgeloop::serve::engine::onnx_parser`], runs on the recorded inputs, and
//! gives onnxruntime 1.32.0's outputs: labels (int64, string) exactly, floats
//! within 1e-4 absolute. ZipMap outputs are compared densely (`[N, C]` in key
//! order): edgeloop serves ZipMap as the identity on the probabilities.
//!
//! Run: `cargo test --test conformance_tract -- --nocapture` prints the table
//! model × (runs in tract, matches onnxruntime).

use std::path::Path;

use serde_json::Value;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

const TOLERANCE: f32 = 1e-4;

fn dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/conformance"
    ))
}

fn shape_of(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

/// The manifest's input as a tensor (`null` = NaN).
fn input_tensor(v: &Value) -> Tensor {
    let shape = shape_of(v);
    let data = v["data"].as_array().expect("data");
    match v["dtype"].as_str().expect("dtype") {
        "float32" => {
            let x: Vec<f32> = data
                .iter()
                .map(|d| d.as_f64().map_or(f32::NAN, |f| f as f32))
                .collect();
            Tensor::from_shape(&shape, &x).expect("float input")
        }
        "int64" => {
            let x: Vec<i64> = data.iter().map(|d| d.as_i64().expect("int")).collect();
            Tensor::from_shape(&shape, &x).expect("int input")
        }
        "string" => {
            let x: Vec<String> = data
                .iter()
                .map(|d| d.as_str().expect("string").to_string())
                .collect();
            tract_ndarray::ArrayD::from_shape_vec(shape, x)
                .expect("string input")
                .into_tensor()
        }
        other => panic!("unknown input dtype {other}"),
    }
}

/// Loads a model the way a user's model would be: input facts from the
/// model's declaration, a symbolic batch where it is symbolic or absent, the
/// width (and type) from the manifest's inputs.
fn load(bytes: &[u8], inputs: &[Value]) -> TractResult<Arc<TypedRunnableModel>> {
    load_with(edgeloop::serve::engine::onnx_parser(), bytes, inputs)
}

fn load_with(
    parser: tract_onnx::Onnx,
    bytes: &[u8],
    inputs: &[Value],
) -> TractResult<Arc<TypedRunnableModel>> {
    let mut model = parser.model_for_read(&mut std::io::Cursor::new(bytes))?;
    let n = model.symbols.sym("N");
    for (i, spec) in inputs.iter().enumerate() {
        let declared = model.input_fact(i)?.clone();
        let shape = shape_of(spec);
        let dims: TVec<TDim> = shape
            .iter()
            .enumerate()
            .map(|(axis, &width)| {
                if axis == 0 {
                    match declared.shape.dim(0).and_then(|d| d.concretize()) {
                        Some(d) if d.to_i64().is_ok() => d,
                        _ => n.clone().into(),
                    }
                } else {
                    width.to_dim()
                }
            })
            .collect();
        let dt = match spec["dtype"].as_str() {
            Some("float32") => f32::datum_type(),
            Some("int64") => i64::datum_type(),
            _ => String::datum_type(),
        };
        model.set_input_fact(i, InferenceFact::dt_shape(dt, dims))?;
    }
    model.into_optimized()?.into_runnable()
}

/// Compares one output with onnxruntime's; `Err` says how it differs.
fn compare(got: &Tensor, want: &Value) -> Result<(), String> {
    let shape = shape_of(want);
    if got.shape() != shape.as_slice() {
        return Err(format!("shape {:?}, onnxruntime {:?}", got.shape(), shape));
    }
    let data = want["data"].as_array().expect("data");
    match want["dtype"].as_str().expect("dtype") {
        "float32" => {
            let got = got.cast_to::<f32>().map_err(|e| e.to_string())?;
            let got = got
                .to_plain_array_view::<f32>()
                .map_err(|e| e.to_string())?;
            let mut worst = (0.0f32, 0usize);
            for (k, (g, w)) in got.iter().zip(data).enumerate() {
                let w = w.as_f64().map_or(f32::NAN, |f| f as f32);
                let d = (g - w).abs();
                if d.is_nan() && !(g.is_nan() && w.is_nan()) || d > worst.0 {
                    worst = (if d.is_nan() { f32::INFINITY } else { d }, k);
                }
            }
            if worst.0 > TOLERANCE {
                return Err(format!(
                    "value {} differs by {} (tract {}, onnxruntime {})",
                    worst.1,
                    worst.0,
                    got.iter().nth(worst.1).copied().unwrap_or(f32::NAN),
                    data[worst.1]
                ));
            }
        }
        "int64" => {
            // tract may return int64 labels as TDim (ArgMax): cast.
            let got = got.cast_to::<i64>().map_err(|e| e.to_string())?;
            let got = got
                .to_plain_array_view::<i64>()
                .map_err(|e| e.to_string())?;
            for (k, (g, w)) in got.iter().zip(data).enumerate() {
                if Some(*g) != w.as_i64() {
                    return Err(format!("label {k}: tract {g}, onnxruntime {w}"));
                }
            }
        }
        "string" => {
            let got = got
                .to_plain_array_view::<String>()
                .map_err(|e| e.to_string())?;
            for (k, (g, w)) in got.iter().zip(data).enumerate() {
                if Some(g.as_str()) != w.as_str() {
                    return Err(format!("label {k}: tract {g:?}, onnxruntime {w}"));
                }
            }
        }
        other => return Err(format!("unknown output dtype {other}")),
    }
    Ok(())
}

/// Loads and runs manifest entry `m` with `parser`: (ran, differences from onnxruntime
/// or the load / run error).
fn check(parser: tract_onnx::Onnx, m: &Value) -> (bool, Vec<String>) {
    let bytes = std::fs::read(dir().join(m["file"].as_str().expect("file"))).expect("model file");
    let inputs = m["inputs"].as_array().expect("inputs");
    let plan = match load_with(parser, &bytes, inputs) {
        Ok(plan) => plan,
        Err(e) => return (false, vec![format!("refused: {e:#}")]),
    };
    let tensors: TVec<TValue> = inputs
        .iter()
        .map(|i| input_tensor(i).into_tvalue())
        .collect();
    let outputs = match plan.run(tensors) {
        Ok(o) => o,
        Err(e) => return (false, vec![format!("run failed: {e:#}")]),
    };
    let want = m["outputs"].as_array().expect("outputs");
    let mut errors = vec![];
    if outputs.len() != want.len() {
        errors.push(format!(
            "{} outputs, onnxruntime {}",
            outputs.len(),
            want.len()
        ));
    }
    for (got, w) in outputs.iter().zip(want) {
        if let Err(e) = compare(got, w) {
            errors.push(format!("output {}: {e}", w["name"]));
        }
    }
    (true, errors)
}

#[test]
fn every_conformance_model_runs_in_tract_and_matches_onnxruntime() {
    let text = std::fs::read_to_string(dir().join("manifest.json")).expect("manifest.json");
    let manifest: Value = serde_json::from_str(&text).expect("manifest is JSON");
    let models = manifest["models"].as_array().expect("models");
    assert!(models.len() >= 20, "the suite has {} models", models.len());
    let mut failures = Vec::new();
    println!("| model | runs in tract | matches onnxruntime | without onnx::ml |");
    println!("|---|---|---|---|");
    for m in models {
        let name = m["name"].as_str().expect("name");
        let (runs, errors) = check(edgeloop::serve::engine::onnx_parser(), m);
        // The engine before onnx::ml (tract-onnx + edgeloop's tree ensembles), for the table.
        let mut before = tract_onnx::onnx();
        edgeloop::onnx::tree_ensemble::register(&mut before.op_register);
        let before = match check(before, m) {
            (false, _) => "refused",
            (true, e) if e.is_empty() => "matches",
            (true, _) => "differs",
        };
        let mark = |b: bool| if b { "yes" } else { "NO" };
        println!(
            "| {name} | {} | {} | {before} |",
            mark(runs),
            mark(runs && errors.is_empty())
        );
        failures.extend(errors.into_iter().map(|e| format!("{name}: {e}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Loads a conformance model with one attribute of one node changed by `edit`.
fn load_edited(
    file: &str,
    op: &str,
    edit: impl Fn(&mut tract_onnx::pb::AttributeProto) -> bool,
) -> String {
    use prost::Message;
    let bytes = std::fs::read(dir().join("models").join(file)).expect("model file");
    let mut proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).expect("ONNX");
    let graph = proto.graph.as_mut().expect("graph");
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == op)
        .expect("node");
    assert!(
        node.attribute.iter_mut().any(edit),
        "{file}: no attribute edited"
    );
    let bytes = proto.encode_to_vec();
    // With the manifest's input facts, as the conformance test loads it.
    let text = std::fs::read_to_string(dir().join("manifest.json")).expect("manifest.json");
    let manifest: Value = serde_json::from_str(&text).expect("manifest is JSON");
    let entry = manifest["models"]
        .as_array()
        .expect("models")
        .iter()
        .find(|m| m["file"].as_str() == Some(&format!("models/{file}")))
        .expect("model in the manifest");
    match load(&bytes, entry["inputs"].as_array().expect("inputs")) {
        Ok(_) => panic!("{file}: the edited {op} was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn malformed_ml_operators_are_refused_with_the_attribute_named() {
    type Edit = Box<dyn Fn(&mut tract_onnx::pb::AttributeProto) -> bool>;
    // (model file, operator, what the error names, the edit)
    let cases: Vec<(&str, &str, &str, Edit)> = vec![
        (
            "svc_rbf_proba_gas.onnx",
            "SVMClassifier",
            "coefficients",
            Box::new(|a| {
                a.name == "coefficients" && {
                    a.floats.pop();
                    true
                }
            }),
        ),
        (
            "svc_rbf_proba_gas.onnx",
            "SVMClassifier",
            "rho",
            Box::new(|a| {
                a.name == "rho" && {
                    a.floats.truncate(2);
                    true
                }
            }),
        ),
        (
            "svc_poly.onnx",
            "SVMClassifier",
            "kernel_type",
            Box::new(|a| {
                a.name == "kernel_type" && {
                    a.s = b"CUBIC".to_vec();
                    true
                }
            }),
        ),
        (
            "svr_rbf.onnx",
            "SVMRegressor",
            "support vector",
            Box::new(|a| {
                a.name == "support_vectors" && {
                    a.floats.pop();
                    true
                }
            }),
        ),
        (
            "scaler_logreg_gas.onnx",
            "LinearClassifier",
            "intercepts",
            Box::new(|a| {
                a.name == "intercepts" && {
                    a.floats.push(1.0);
                    true
                }
            }),
        ),
        (
            "scaler_logreg.onnx",
            "Scaler",
            "offset",
            Box::new(|a| {
                a.name == "offset" && {
                    a.floats.push(1.0);
                    true
                }
            }),
        ),
        (
            "preprocess_pipeline.onnx",
            "Imputer",
            "imputed",
            Box::new(|a| {
                a.name == "imputed_value_floats" && {
                    a.floats.push(1.0);
                    a.floats.push(1.0);
                    true
                }
            }),
        ),
        (
            "label_encoder.onnx",
            "LabelEncoder",
            "values",
            Box::new(|a| {
                a.name.starts_with("values_") && {
                    a.ints.pop();
                    a.strings.pop();
                    true
                }
            }),
        ),
        (
            "tree_ensemble_ml5_member.onnx",
            "TreeEnsemble",
            "out of range",
            Box::new(|a| {
                a.name == "nodes_truenodeids" && {
                    a.ints[0] = 10_000;
                    true
                }
            }),
        ),
        (
            "tree_ensemble_ml5_member.onnx",
            "TreeEnsemble",
            "aggregate_function",
            Box::new(|a| {
                a.name == "aggregate_function" && {
                    a.i = 7;
                    true
                }
            }),
        ),
        (
            "lightgbm_binary_zipmap.onnx",
            "ZipMap",
            "columns",
            Box::new(|a| {
                a.name == "classlabels_int64s" && {
                    a.ints.push(5);
                    true
                }
            }),
        ),
    ];
    for (file, op, needle, edit) in cases {
        let err = load_edited(file, op, edit);
        assert!(
            err.contains(op) && err.contains(needle),
            "{file}: {op} refused without naming {needle:?}: {err}"
        );
    }
}
