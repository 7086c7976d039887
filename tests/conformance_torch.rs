//! Models from torch's default ONNX exporter (`torch.onnx.export(...,
//! dynamo=True)`, torch 2.15, opset 20) on both engines, against
//! onnxruntime 1.32.0's outputs: `tests/fixtures/conformance/torch/`
//! (`gen_torch.py` made the models and `manifest.json`; torch is not a CI
//! package, so the files are committed). Every model loads from its file
//! through the engine layer ([`Session::load_file`]: external data beside
//! it), runs the manifest's 64 rows through [`Session::run_rows`] (the fixed
//! batch of 1 one row a run) and matches: floats within 1e-4.
//!
//! What the models carry: `value_info` shapes with the batch axis named
//! `batch` or `s77` on every intermediate value, weights in
//! `dynamo_mlp_external.onnx.data`, a fixed batch `[1, 128]`, a 3-D input
//! `[batch, 1, 64]`, LayerNormalization and Gelu (opset 20).

use std::path::{Path, PathBuf};

use edgeloop::serve::engine::{Data, EngineKind, LoadOptions, ModelError, Named, Session, Tensor};
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
    assert_eq!(models.len(), 5, "the torch suite has 5 models");
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
        by("dynamo_cnn1d")["input_dims"].as_array().map(Vec::len),
        Some(3)
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
}
