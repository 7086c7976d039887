//! Models from torch's default ONNX exporter (`torch.onnx.export(...,
//! dynamo=True)`, torch 2.15, opset 20) on both engines, against
//! onnxruntime 1.32.0's outputs: `tests/fixtures/conformance/torch/`
//! (`gen_torch.py` made the models and `manifest.json`; torch is not a CI
//! package, so the files are committed). Every model loads from its file
//! through the engine layer ([`Session::load_file`]: external data beside
//! it), runs the manifest's 64 rows through [`Session::run_rows`] (the fixed
//! batch of 1 and the batch-less `[128]` one row a run) and matches: floats
//! within 1e-4. `edgeloop predict` ([`predict_file`]) runs the same rows
//! from a CSV.
//!
//! What the models carry: `value_info` shapes with the batch axis named
//! `batch` or `s77` on every intermediate value, weights in
//! `dynamo_mlp_external.onnx.data`, a fixed batch `[1, 128]`, no batch axis
//! (`[128]` in, `[6]` out), a 3-D input
//! `[batch, 1, 64]`, LayerNormalization and Gelu (opset 20), the MLP
//! 20-64-64-4 issue 19 measures, LSTM and GRU on `[batch, 16, 4]`
//! sequences, BatchNormalization before Gelu and LayerNormalization.

use std::path::{Path, PathBuf};

use edgeloop::serve::engine::{Data, EngineKind, LoadOptions, ModelError, Named, Session, Tensor};
use edgeloop::serve::predict_file::predict_file;
use serde_json::Value;

const TOL: f32 = 1e-4;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance/torch")
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join("manifest.json")).expect("manifest.json");
    let v: Value = serde_json::from_str(&text).expect("manifest is JSON");
    v["models"].as_array().expect("models").clone()
}

fn shape(v: &Value) -> Vec<usize> {
    v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn inputs(m: &Value) -> Vec<Named> {
    m["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| {
            let t = Tensor::new(shape(i), Data::F32(floats(i))).expect("input tensor");
            Named::new(i["name"].as_str().expect("name"), t)
        })
        .collect()
}

/// Every model on `kind`: loads from its file, matches onnxruntime.
fn run_all(kind: EngineKind, options: &LoadOptions) {
    let models = manifest();
    assert_eq!(models.len(), 10, "the torch suite has 10 models");
    let mut failures = vec![];
    for m in &models {
        let name = m["name"].as_str().expect("name");
        let path = dir().join(m["file"].as_str().expect("file"));
        let session = match Session::load_file(&path, kind, options) {
            Ok(s) => s,
            Err(e) => {
                failures.push(format!("{name}: refused: {e}"));
                continue;
            }
        };
        let out = match session.run_rows(&inputs(m)) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}: run failed: {e}"));
                continue;
            }
        };
        let want = &m["outputs"][0];
        let got = &out[0].tensor;
        if got.shape != shape(want) {
            failures.push(format!(
                "{name}: shape {:?}, onnxruntime {:?}",
                got.shape,
                shape(want)
            ));
            continue;
        }
        let got = got.data.to_f32().expect("floats");
        let worst = got
            .iter()
            .zip(floats(want))
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        if worst.is_nan() || worst > TOL {
            failures.push(format!("{name}: differs from onnxruntime by {worst}"));
        }
    }
    assert!(failures.is_empty(), "{kind:?}: {failures:#?}");
}

#[test]
fn torch_dynamo_exports_load_and_match_onnxruntime_on_tract() {
    run_all(EngineKind::Tract, &LoadOptions::default());
}

#[test]
fn the_manifest_records_what_the_exporter_writes() {
    let models = manifest();
    let by = |n: &str| {
        models
            .iter()
            .find(|m| m["name"] == n)
            .unwrap_or_else(|| panic!("{n} in the manifest"))
    };
    // Intermediate shapes name the batch axis as the input does.
    for n in ["dynamo_mlp", "dynamo_cnn1d", "dynamo_mlp_external"] {
        let m = by(n);
        assert_eq!(
            m["value_info_dim_params"],
            serde_json::json!([m["input_dims"][0]])
        );
    }
    assert_eq!(
        by("dynamo_mlp_external")["external_data"][0],
        "dynamo_mlp_external.onnx.data"
    );
    assert_eq!(by("dynamo_mlp_b1")["input_dims"][0], 1);
    assert_eq!(
        by("dynamo_mlp_nobatch")["input_dims"],
        serde_json::json!([128])
    );
    assert_eq!(
        by("dynamo_cnn1d")["input_dims"].as_array().map(Vec::len),
        Some(3)
    );
    let ops = |n: &str| by(n)["ops"].clone();
    for (model, op) in [
        ("dynamo_lstm", "LSTM"),
        ("dynamo_gru", "GRU"),
        ("dynamo_bn_gelu_ln", "BatchNormalization"),
        ("dynamo_bn_gelu_ln", "LayerNormalization"),
        ("dynamo_bn_gelu_ln", "Gelu"),
    ] {
        assert!(
            ops(model).as_array().unwrap().iter().any(|o| o == op),
            "{model}: {}",
            ops(model)
        );
    }
    assert_eq!(
        by("dynamo_lstm")["input_dims"],
        serde_json::json!(["batch", 16, 4])
    );
}

#[test]
fn external_data_is_read_beside_the_model_and_named_when_missing() {
    let path = dir().join("models/dynamo_mlp_external.onnx");
    let bytes = std::fs::read(&path).unwrap();
    // Bytes alone (an upload): refused, naming the data file.
    let e = Session::load(&bytes, EngineKind::Tract, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ModelError::ExternalData(m) if m.contains("dynamo_mlp_external.onnx.data")),
        "{e}"
    );
    // The model file without its data file: the path is named.
    let tmp = tempfile::tempdir().unwrap();
    let lone = tmp.path().join("dynamo_mlp_external.onnx");
    std::fs::copy(&path, &lone).unwrap();
    let e = Session::load_file(&lone, EngineKind::Tract, &LoadOptions::default()).unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, ModelError::ExternalData(_))
            && text.contains(
                &tmp.path()
                    .join("dynamo_mlp_external.onnx.data")
                    .display()
                    .to_string()
            ),
        "{text}"
    );
    // Self-contained bytes made from the file and its data load anywhere.
    let inlined = edgeloop::serve::engine::inline_external_data(&bytes, path.parent()).unwrap();
    assert!(inlined.len() > bytes.len());
    Session::load(&inlined, EngineKind::Tract, &LoadOptions::default()).unwrap();
}

#[test]
fn wrong_shapes_are_named_in_the_models_terms() {
    let m = manifest();
    let cnn = m.iter().find(|m| m["name"] == "dynamo_cnn1d").unwrap();
    let path = dir().join(cnn["file"].as_str().unwrap());
    let s = Session::load_file(&path, EngineKind::Tract, &LoadOptions::default()).unwrap();
    // Rows of 64 values, not reshaped to [1, 64].
    let flat = Tensor::new(vec![2, 64], Data::F32(vec![0.0; 128])).unwrap();
    let e = s
        .run_rows(&[Named::new("input", flat)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input `input` takes 3 dims [?, 1, 64]") && e.contains("[2, 64]"),
        "{e}"
    );
    let wide = Tensor::new(vec![2, 1, 65], Data::F32(vec![0.0; 130])).unwrap();
    let e = s
        .run_rows(&[Named::new("input", wide)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("axis 2 is 64, given 65"), "{e}");
}

/// The manifest's rows of `m` as a CSV (`c0..`, one sample a line).
fn write_csv(m: &Value, path: &Path) {
    let x = floats(&m["inputs"][0]);
    let n = shape(&m["inputs"][0])[0];
    let width = x.len() / n;
    let mut text = (0..width)
        .map(|j| format!("c{j}"))
        .collect::<Vec<_>>()
        .join(",");
    for row in x.chunks(width) {
        text.push('\n');
        text.push_str(&row.iter().map(f32::to_string).collect::<Vec<_>>().join(","));
    }
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// `edgeloop predict` on every model: the CSV's rows, fed through the same
/// chunking as the daemon (fixed batch of 1, no batch axis: one row a run),
/// the 3-D input reshaped by `--input-shape 1,64` (or by its declared dims),
/// give onnxruntime's outputs.
fn predict_all(kind: EngineKind, options: &LoadOptions) {
    let tmp = tempfile::tempdir().unwrap();
    for m in &manifest() {
        let name = m["name"].as_str().unwrap();
        let csv = tmp.path().join(format!("{name}.csv"));
        write_csv(m, &csv);
        let model = dir().join(m["file"].as_str().unwrap());
        let shapes: &[Option<&[usize]>] = match name {
            "dynamo_cnn1d" => &[Some(&[1, 64]), None],
            "dynamo_lstm" | "dynamo_gru" => &[Some(&[16, 4])],
            _ => &[None],
        };
        for given in shapes {
            let out = predict_file(&model, &csv, kind, options, *given)
                .unwrap_or_else(|e| panic!("{name} {given:?}: {e}"));
            assert_eq!(out.n_rows, 64, "{name}");
            let want = &m["outputs"][0];
            let got = &out.outputs[0].tensor;
            assert_eq!(got.shape, shape(want), "{name}");
            let got = got.data.to_f32().unwrap();
            for (k, (g, w)) in got.iter().zip(floats(want)).enumerate() {
                assert!(
                    (g - w).abs() <= TOL,
                    "{name} value {k}: {g} vs onnxruntime {w}"
                );
            }
        }
    }
    // A shape that does not hold the row's columns is named.
    let cnn = manifest()
        .into_iter()
        .find(|m| m["name"] == "dynamo_cnn1d")
        .unwrap();
    let csv = tmp.path().join("dynamo_cnn1d.csv");
    let e = predict_file(
        &dir().join(cnn["file"].as_str().unwrap()),
        &csv,
        kind,
        options,
        Some(&[2, 64]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("holds 128 values") && e.contains("[?, 1, 64]"),
        "{e}"
    );
}

#[test]
fn predict_runs_batchless_fixed_batch_and_3d_models_row_by_row_on_tract() {
    predict_all(EngineKind::Tract, &LoadOptions::default());
}

#[cfg(feature = "ort")]
mod ort {
    use super::*;

    fn options() -> LoadOptions {
        let path = std::env::var("ORT_DYLIB_PATH").expect(
            "the ort tests need ORT_DYLIB_PATH naming libonnxruntime: \
             eval \"$(tests/run.sh --setup)\" (the README's test command sets it)",
        );
        LoadOptions {
            input_width: None,
            ort_library: Some(PathBuf::from(path)),
        }
    }

    #[test]
    fn torch_dynamo_exports_load_and_match_onnxruntime_on_ort() {
        run_all(EngineKind::Ort, &options());
    }

    #[test]
    fn predict_runs_batchless_fixed_batch_and_3d_models_row_by_row_on_ort() {
        predict_all(EngineKind::Ort, &options());
    }
}

/// One session answers calls of different sizes in turn (the batch symbol
/// resolved anew each call, or a plan made for the size; run states kept
/// between calls): each equals onnxruntime's rows. The recurrent models too:
/// their hidden state starts from zero each call, not where the last call
/// left it. Five sizes: the fifth runs on the general plan (a session makes
/// plans for four).
#[test]
fn one_session_serves_calls_of_every_size_in_turn() {
    let models = manifest();
    for name in ["dynamo_mlp", "dynamo_mlp20", "dynamo_lstm", "dynamo_gru"] {
        let m = models.iter().find(|m| m["name"] == name).unwrap();
        let s = Session::load_file(
            &dir().join(m["file"].as_str().unwrap()),
            EngineKind::Tract,
            &LoadOptions::default(),
        )
        .unwrap();
        let x_shape = shape(&m["inputs"][0]);
        let width: usize = x_shape[1..].iter().product();
        let classes = shape(&m["outputs"][0])[1];
        let (x, want) = (floats(&m["inputs"][0]), floats(&m["outputs"][0]));
        for (start, n) in [
            (0, 64),
            (5, 1),
            (10, 3),
            (0, 64),
            (63, 1),
            (5, 1),
            (2, 7),
            (20, 2),
        ] {
            let mut t_shape = x_shape.clone();
            t_shape[0] = n;
            let t = Tensor::new(
                t_shape,
                Data::F32(x[start * width..(start + n) * width].to_vec()),
            )
            .unwrap();
            let out = s.run_rows(&[Named::new("input", t)]).unwrap();
            let got = out[0].tensor.data.to_f32().unwrap();
            assert_eq!(out[0].tensor.shape, vec![n, classes], "{name}");
            for (g, w) in got
                .iter()
                .zip(&want[start * classes..(start + n) * classes])
            {
                assert!((g - w).abs() <= TOL, "{name} rows {start}+{n}: {g} vs {w}");
            }
        }
    }
}

/// edgeloop's dense layer (`onnx::ml::gemm`: a Gemm with constant weights,
/// a `Relu` after it fused in) gives tract's own Gemm's outputs within
/// 1e-6, on every torch model with a batch axis, at 64 rows and at one row;
/// and the plans do run it (no `Relu` of tract left after the MLP's
/// layers).
#[test]
fn the_dense_layer_equals_tracts_gemm_on_the_torch_models() {
    use tract_onnx::prelude::{
        tvec, DatumType, Framework, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue,
        Tensor as TTensor,
    };
    let with_tracts_gemm = || {
        let mut p = edgeloop::serve::engine::onnx_parser();
        let gemm = tract_onnx::onnx().op_register.0["Gemm"];
        p.op_register.0.insert("Gemm".into(), gemm);
        p
    };
    let models = manifest();
    for name in [
        "dynamo_mlp",
        "dynamo_mlp20",
        "dynamo_mlp_ln_gelu",
        "dynamo_bn_gelu_ln",
        "dynamo_cnn1d",
        "dynamo_lstm",
        "dynamo_gru",
    ] {
        let m = models.iter().find(|m| m["name"] == name).unwrap();
        let path = dir().join(m["file"].as_str().unwrap());
        let x_shape = shape(&m["inputs"][0]);
        let width: usize = x_shape[1..].iter().product();
        let x = floats(&m["inputs"][0]);
        for n in [64, 1] {
            let mut s = x_shape.clone();
            s[0] = n;
            let input = TTensor::from_shape(&s, &x[..n * width]).unwrap();
            let run = |mut parser: tract_onnx::Onnx| {
                parser.ignore_value_info = true;
                let plan = parser
                    .model_for_path(&path)
                    .unwrap()
                    .with_input_fact(0, InferenceFact::dt_shape(DatumType::F32, &s))
                    .unwrap()
                    .into_optimized()
                    .unwrap();
                let ops: Vec<String> = plan
                    .nodes()
                    .iter()
                    .map(|n| format!("{} {:?}", n.op.name(), n.op.info().unwrap_or_default()))
                    .collect();
                let out = plan
                    .into_runnable()
                    .unwrap()
                    .run(tvec!(input.clone().into_tvalue()))
                    .unwrap();
                let y = out[0].cast_to::<f32>().unwrap();
                let y: Vec<f32> = y
                    .to_plain_array_view::<f32>()
                    .unwrap()
                    .iter()
                    .copied()
                    .collect();
                (y, ops)
            };
            let (ours, ops) = run(edgeloop::serve::engine::onnx_parser());
            let (tracts, _) = run(with_tracts_gemm());
            assert_eq!(ours.len(), tracts.len(), "{name}");
            for (a, b) in ours.iter().zip(&tracts) {
                assert!((a - b).abs() <= 1e-6, "{name}, {n} rows: {a} vs {b}");
            }
            if name.starts_with("dynamo_mlp") {
                let dense = ops.iter().filter(|o| o.contains("dense")).count();
                assert!(dense >= 2, "{name}: {ops:#?}");
            }
            if name == "dynamo_mlp" || name == "dynamo_mlp20" {
                assert_eq!(
                    ops.iter().filter(|o| o.contains("relu")).count(),
                    2,
                    "{ops:#?}"
                );
                assert!(!ops.iter().any(|o| o.starts_with("Max")), "{ops:#?}");
            }
        }
    }
}
