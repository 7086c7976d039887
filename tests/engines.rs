//! Both engines against onnxruntime (Python) on models from the ecosystem:
//! skl2onnx pipelines (ZipMap on and off, batch dim `None`), torch-style
//! graphs with symbolic and absent batch dims (opset 13 and 17), a standard
//! operator tract lacks (`Det`) and a custom-domain operator nobody has.
//! Expected values: `tests/fixtures/engines/gen_engines.py` →
//! `tests/fixtures/engines/manifest.json` (the conformance manifest format;
//! `tests/fixtures/conformance/manifest.json` is run too when present).
//! Labels compare exactly, floats within 1e-4.
//!
//! The onnxruntime engine's tests need `--features ort` and `libonnxruntime`:
//! `ORT_DYLIB_PATH`, else the pinned `onnxruntime` wheel's library, found
//! through `python3` (`.ci/run` sets `ORT_DYLIB_PATH` to the same file).

use std::path::{Path, PathBuf};
use std::process::Command;

use edgeloop::learn::model::Task;
use edgeloop::serve::engine::{
    onnx_parser, Contract, DType, Data, Engine, EngineKind, LoadOptions, ModelError, Named,
    OnnxModel, Session, Tensor,
};
use serde_json::Value;

const TOL: f64 = 1e-4;
/// Absolute tolerance for the outputs of models with a tree ensemble
/// (`TreeEnsembleClassifier`, `TreeEnsembleRegressor`, `TreeEnsemble`).
const TREE_TOL: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engines")
}

fn read_manifest(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    v["models"].as_array().unwrap().clone()
}

fn case<'a>(models: &'a [Value], name: &str) -> &'a Value {
    models
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no model {name}"))
}

fn model_bytes(dir: &Path, case: &Value) -> Vec<u8> {
    let path = dir.join(case["file"].as_str().unwrap());
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tensor_of(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"].as_array().unwrap();
    let f = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    let data = match v["dtype"].as_str().unwrap() {
        "float32" | "float" => Data::F32(data.iter().map(|x| f(x) as f32).collect()),
        "float64" | "double" => Data::F64(data.iter().map(f).collect()),
        "int64" | "int32" | "bool" => Data::I64(
            data.iter()
                .map(|x| x.as_i64().or_else(|| x.as_bool().map(i64::from)).unwrap())
                .collect(),
        ),
        "string" => Data::String(
            data.iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect(),
        ),
        other => panic!("dtype {other}"),
    };
    Tensor::new(shape, data).unwrap()
}

fn inputs_of(case: &Value) -> Vec<Named> {
    case["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| Named::new(i["name"].as_str().unwrap(), tensor_of(i)))
        .collect()
}

/// Compares every recorded output; returns a description of the first
/// mismatch.
fn compare(case: &Value, got: &[Named]) -> Result<(), String> {
    let name = case["name"].as_str().unwrap();
    for want in case["outputs"].as_array().unwrap() {
        let out_name = want["name"].as_str().unwrap();
        let g = got
            .iter()
            .find(|o| o.name == out_name)
            .ok_or_else(|| format!("{name}: no output {out_name}"))?;
        let w = tensor_of(want);
        let numel = |s: &[usize]| s.iter().product::<usize>();
        if g.tensor.shape != w.shape
            && !(numel(&g.tensor.shape) == numel(&w.shape)
                && g.tensor.shape.first() == w.shape.first())
        {
            return Err(format!(
                "{name}.{out_name}: shape {:?}, expected {:?}",
                g.tensor.shape, w.shape
            ));
        }
        if let Some(keys) = want["keys"].as_array() {
            let keys: Vec<String> = keys
                .iter()
                .map(|k| k.as_str().map_or_else(|| k.to_string(), str::to_string))
                .collect();
            if g.keys.as_ref() != Some(&keys) {
                return Err(format!(
                    "{name}.{out_name}: keys {:?}, expected {keys:?}",
                    g.keys
                ));
            }
        }
        match (&g.tensor.data, &w.data) {
            (Data::I64(a), Data::I64(b)) if a != b => {
                return Err(format!("{name}.{out_name}: labels {a:?}, expected {b:?}"));
            }
            (Data::String(a), Data::String(b)) if a != b => {
                return Err(format!("{name}.{out_name}: labels {a:?}, expected {b:?}"));
            }
            (Data::I64(_), Data::I64(_)) | (Data::String(_), Data::String(_)) => {}
            (a, b) if matches!(b, Data::F32(_) | Data::F64(_)) => {
                let (a, b) = (a.to_f32().ok_or("strings for floats")?, b.to_f32().unwrap());
                // Tree ensembles (edgeloop's evaluator) are held to 1e-5.
                let trees = ops_of(case).iter().any(|o| o.starts_with("TreeEnsemble"));
                let tol = if trees { TREE_TOL } else { TOL };
                for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                    let same =
                        (x.is_nan() && y.is_nan()) || (f64::from(*x) - f64::from(*y)).abs() <= tol;
                    if !same {
                        return Err(format!("{name}.{out_name}[{k}]: {x}, onnxruntime {y}"));
                    }
                }
            }
            (a, b) => {
                return Err(format!(
                    "{name}.{out_name}: {a:?} is not of the type of {b:?}"
                ))
            }
        }
    }
    Ok(())
}

/// The ops (`domain.op`, default domain `ai.onnx`) the case lists, read from
/// its model when the manifest has none.
fn ops_of(case: &Value) -> Vec<String> {
    case["ops"]
        .as_array()
        .map(|ops| {
            ops.iter()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs every model of a manifest on `kind`. A model tract refuses must be
/// refused for an operator the case lists and tract's parser lacks; every
/// other model must match onnxruntime. Returns the names run and refused.
fn run_manifest(
    manifest: &Path,
    kind: EngineKind,
    options: &LoadOptions,
) -> (Vec<String>, Vec<String>) {
    let dir = manifest.parent().unwrap();
    let (mut ran, mut refused, mut failures) = (vec![], vec![], vec![]);
    for case in read_manifest(manifest) {
        let name = case["name"].as_str().unwrap().to_string();
        let session = match Session::load(&model_bytes(dir, &case), kind, options) {
            Ok(s) => s,
            Err(ModelError::UnsupportedOperator {
                engine: Engine::Tract,
                domain,
                op,
            }) if kind == EngineKind::Tract => {
                let full = format!(
                    "{}.{op}",
                    if domain.is_empty() {
                        "ai.onnx"
                    } else {
                        &domain
                    }
                );
                let listed = ops_of(&case).is_empty() || ops_of(&case).contains(&full);
                let tract_has = onnx_parser().op_register.0.contains_key(&op)
                    && ["", "ai.onnx", "ai.onnx.ml", "com.microsoft"].contains(&domain.as_str());
                if !listed || tract_has {
                    failures.push(format!(
                        "{name}: refused for {full}, which tract has or the model lacks"
                    ));
                }
                refused.push(name);
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        match session
            .run(&inputs_of(&case))
            .map_err(|e| e.to_string())
            .and_then(|out| compare(&case, &out))
        {
            Ok(()) => ran.push(name),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{kind:?}: {failures:#?}");
    (ran, refused)
}

#[test]
fn tract_matches_onnxruntime_on_ecosystem_models() {
    let (ran, refused) = run_manifest(
        &fixtures().join("manifest.json"),
        EngineKind::Tract,
        &LoadOptions::default(),
    );
    for must in [
        "torch_mlp_opset13",
        "torch_mlp_opset17",
        "skl_linear_regression",
    ] {
        assert!(
            ran.contains(&must.to_string()),
            "{must} did not run on tract: ran {ran:?}, refused {refused:?}"
        );
    }
    assert!(
        refused.contains(&"det_only_ort".to_string()),
        "tract is not expected to run Det"
    );
}

/// The conformance suite (`tests/fixtures/conformance`, 31 models from
/// skl2onnx, onnxmltools and torch-style graphs): every model loads on tract
/// through the engine layer and matches onnxruntime's recorded outputs.
#[test]
fn conformance_suite_on_tract() {
    let manifest =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance/manifest.json");
    let total = read_manifest(&manifest).len();
    let (ran, refused) = run_manifest(&manifest, EngineKind::Tract, &LoadOptions::default());
    assert!(refused.is_empty(), "tract refused {refused:?}");
    assert_eq!(ran.len(), total);
    assert!(total >= 31, "{total} models in the suite");
}

#[test]
fn descriptors_give_symbolic_and_absent_dims_as_none_and_zipmap_keys() {
    let dir = fixtures();
    let models = read_manifest(&dir.join("manifest.json"));
    for name in ["torch_mlp_opset13", "torch_mlp_opset17"] {
        let s = Session::load(
            &model_bytes(&dir, case(&models, name)),
            EngineKind::Tract,
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(s.engine(), Engine::Tract);
        assert_eq!(s.inputs().len(), 1);
        assert_eq!(s.inputs()[0].name, "input");
        assert_eq!(s.inputs()[0].dtype, DType::F32);
        assert_eq!(s.inputs()[0].dims, Some(vec![None, Some(5)]), "{name}");
        assert_eq!(s.outputs()[1].dtype, DType::I64);
    }
    // The ZipMap output is described dense, with its keys; the graph is read
    // before any engine (ZipMap itself may be refused by tract).
    let bytes = model_bytes(&dir, case(&models, "skl_scaler_logreg_zipmap"));
    match Session::load(&bytes, EngineKind::Tract, &LoadOptions::default()) {
        Ok(s) => {
            let proba = &s.outputs()[1];
            assert_eq!(proba.keys, Some(vec!["0".to_string(), "1".to_string()]));
            assert_eq!(proba.dims, Some(vec![None, Some(2)]));
        }
        Err(e) => assert!(matches!(e, ModelError::UnsupportedOperator { .. }), "{e}"),
    }
}

#[test]
fn tract_label_output_is_int64_as_declared() {
    let dir = fixtures();
    let models = read_manifest(&dir.join("manifest.json"));
    let c = case(&models, "torch_mlp_opset13");
    let s = Session::load(
        &model_bytes(&dir, c),
        EngineKind::Tract,
        &LoadOptions::default(),
    )
    .unwrap();
    let out = s.run(&inputs_of(c)).unwrap();
    assert!(
        matches!(out[1].tensor.data, Data::I64(_)),
        "{:?}",
        out[1].tensor.data
    );
    assert_eq!(out[1].tensor.shape, vec![64]);
}

#[test]
fn custom_operator_is_refused_by_tract_with_its_name() {
    let bytes = std::fs::read(fixtures().join("models/custom_op.onnx")).unwrap();
    let e = Session::load(&bytes, EngineKind::Tract, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ModelError::UnsupportedOperator { engine: Engine::Tract, domain, op } if domain == "com.example" && op == "Frobnicate"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "tract does not support operator com.example.Frobnicate"
    );
}

#[test]
fn det_is_refused_by_tract_naming_the_operator() {
    let bytes = std::fs::read(fixtures().join("models/det_only_ort.onnx")).unwrap();
    let e = Session::load(&bytes, EngineKind::Tract, &LoadOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "tract does not support operator ai.onnx.Det");
}

#[cfg(not(feature = "ort"))]
#[test]
fn without_the_feature_auto_gives_the_tract_error_and_ort_names_the_feature() {
    let bytes = std::fs::read(fixtures().join("models/det_only_ort.onnx")).unwrap();
    let e = Session::load(&bytes, EngineKind::Auto, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ModelError::UnsupportedOperator { engine: Engine::Tract, op, .. } if op == "Det"),
        "{e:?}"
    );
    let e = Session::load(&bytes, EngineKind::Ort, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(e, ModelError::Unavailable(_)) && e.to_string().contains("feature `ort`"),
        "{e}"
    );
}

#[test]
fn adopt_takes_an_imported_classifier_with_the_pipeline_classes() {
    let dir = fixtures();
    let models = read_manifest(&dir.join("manifest.json"));
    let c = case(&models, "torch_mlp_opset17");
    let contract = Contract {
        task: Task::Classification,
        classes: vec!["low".into(), "mid".into(), "high".into()],
        features: ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]
            .map(String::from)
            .to_vec(),
    };
    let m = OnnxModel::adopt(
        &model_bytes(&dir, c),
        &contract,
        EngineKind::Tract,
        &LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(m.classes(), contract.classes.as_slice());
    assert_eq!(m.engine(), Engine::Tract);
    let x = tensor_of(&c["inputs"][0]).data.to_f32().unwrap();
    let p = m.predict_proba(&x).unwrap();
    let want = tensor_of(&c["outputs"][0]).data.to_f32().unwrap();
    assert_eq!(p.len(), want.len());
    for (a, b) in p.iter().zip(&want) {
        assert!((a - b).abs() <= TOL as f32, "{a} vs onnxruntime {b}");
    }
    // Four features for a five-wide input: refused, naming the widths.
    let narrow = Contract {
        features: contract.features[..4].to_vec(),
        ..contract.clone()
    };
    let e = OnnxModel::adopt(
        &model_bytes(&dir, c),
        &narrow,
        EngineKind::Tract,
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("takes 5 features; the pipeline has 4"),
        "{e}"
    );
    // Two classes against a three-column output: the probe run refuses it.
    let two = Contract {
        classes: vec!["a".into(), "b".into()],
        ..contract
    };
    let e = OnnxModel::adopt(
        &model_bytes(&dir, c),
        &two,
        EngineKind::Tract,
        &LoadOptions::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("gave 3 outputs per row, expected 2"),
        "{e}"
    );
}

#[test]
fn adopt_takes_an_imported_regressor() {
    let dir = fixtures();
    let models = read_manifest(&dir.join("manifest.json"));
    let c = case(&models, "skl_linear_regression");
    let contract = Contract {
        task: Task::Regression,
        classes: vec![],
        features: ["Temperature", "Humidity", "Light", "CO2"]
            .map(String::from)
            .to_vec(),
    };
    let m = OnnxModel::adopt(
        &model_bytes(&dir, c),
        &contract,
        EngineKind::Tract,
        &LoadOptions::default(),
    )
    .unwrap();
    let x = tensor_of(&c["inputs"][0]).data.to_f32().unwrap();
    let y = m.predict_proba(&x).unwrap();
    let want = tensor_of(&c["outputs"][0]).data.to_f32().unwrap();
    assert_eq!(y.len(), 64);
    for (a, b) in y.iter().zip(&want) {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{a} vs onnxruntime {b}"
        );
    }
}

fn edgeloop_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgeloop"))
}

/// The manifest input of `case` as a CSV with neutral column names.
fn csv_of(case: &Value, dir: &Path) -> PathBuf {
    let t = tensor_of(&case["inputs"][0]);
    let x = t.data.to_f32().unwrap();
    let w = t.shape[1];
    let mut text = (0..w)
        .map(|j| format!("c{j}"))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for row in x.chunks(w) {
        text += &(row
            .iter()
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(",")
            + "\n");
    }
    let path = dir.join("rows.csv");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn predict_command_prints_every_output_per_row() {
    let dir = fixtures();
    let models = read_manifest(&dir.join("manifest.json"));
    let c = case(&models, "torch_mlp_opset13");
    let tmp = tempfile::tempdir().unwrap();
    let csv = csv_of(c, tmp.path());
    let out = edgeloop_bin()
        .args(["predict", "--engine", "tract", "--json", "--model"])
        .arg(dir.join("models/torch_mlp_opset13.onnx"))
        .arg("--file")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["engine"], "tract");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 64);
    let labels = tensor_of(&c["outputs"][1]).data;
    let proba = tensor_of(&c["outputs"][0]).data.to_f32().unwrap();
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(
            Data::I64(vec![row["label"].as_i64().unwrap()]),
            Data::I64(vec![match &labels {
                Data::I64(l) => l[i],
                _ => unreachable!(),
            }])
        );
        for j in 0..3 {
            let got = row["probabilities"][j].as_f64().unwrap();
            assert!(
                (got - f64::from(proba[i * 3 + j])).abs() <= TOL,
                "row {i}: {got}"
            );
        }
    }
    // The table: a header and one line per row.
    let out = edgeloop_bin()
        .args(["predict", "--engine", "tract", "--model"])
        .arg(dir.join("models/torch_mlp_opset13.onnx"))
        .arg("--file")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 65);
    assert!(
        lines[0].contains("probabilities[2]") && lines[0].ends_with("label"),
        "{}",
        lines[0]
    );
}

#[test]
fn predict_command_refuses_a_model_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("rows.csv");
    std::fs::write(&csv, "a,b,c\n1,2,3\n").unwrap();
    let out = edgeloop_bin()
        .args(["predict", "--engine", "tract", "--model"])
        .arg(fixtures().join("models/custom_op.onnx"))
        .arg("--file")
        .arg(&csv)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tract does not support operator com.example.Frobnicate"),
        "{err}"
    );
}

#[cfg(feature = "ort")]
mod ort {
    use super::*;

    /// `ORT_DYLIB_PATH`, else the library of the `onnxruntime` wheel that
    /// `python3` imports (`capi/libonnxruntime.so.<version>`).
    fn library() -> PathBuf {
        if let Ok(path) = std::env::var("ORT_DYLIB_PATH") {
            return PathBuf::from(path);
        }
        let script = "import onnxruntime, os; print(os.path.join(os.path.dirname(\
                      onnxruntime.__file__), 'capi', 'libonnxruntime.so.' + onnxruntime.__version__))";
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .expect(
                "the ort tests need ORT_DYLIB_PATH naming libonnxruntime, or python3 with the \
                 onnxruntime wheel: the README's test command, tests/run.sh, sets up both",
            );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    fn options() -> LoadOptions {
        LoadOptions {
            input_width: None,
            ort_library: Some(library()),
        }
    }

    #[test]
    fn ort_matches_onnxruntime_on_every_model() {
        let (ran, refused) = run_manifest(
            &fixtures().join("manifest.json"),
            EngineKind::Ort,
            &options(),
        );
        assert!(refused.is_empty());
        assert_eq!(
            ran.len(),
            read_manifest(&fixtures().join("manifest.json")).len()
        );
    }

    /// The conformance suite on onnxruntime through `ort`.
    #[test]
    fn conformance_suite_on_ort() {
        let manifest =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance/manifest.json");
        let total = read_manifest(&manifest).len();
        let (ran, refused) = run_manifest(&manifest, EngineKind::Ort, &options());
        assert!(refused.is_empty(), "ort refused {refused:?}");
        assert_eq!(ran.len(), total);
    }

    #[test]
    fn auto_falls_back_to_ort_for_a_model_tract_refuses() {
        let dir = fixtures();
        let models = read_manifest(&dir.join("manifest.json"));
        let c = case(&models, "det_only_ort");
        let s = Session::load(&model_bytes(&dir, c), EngineKind::Auto, &options()).unwrap();
        assert_eq!(s.engine(), Engine::Ort);
        compare(c, &s.run(&inputs_of(c)).unwrap()).unwrap();
        // A model tract takes stays on tract.
        let c = case(&models, "torch_mlp_opset13");
        let s = Session::load(&model_bytes(&dir, c), EngineKind::Auto, &options()).unwrap();
        assert_eq!(s.engine(), Engine::Tract);
    }

    #[test]
    fn zipmap_is_dense_in_key_order_and_adopt_takes_its_keys() {
        let dir = fixtures();
        let models = read_manifest(&dir.join("manifest.json"));
        let c = case(&models, "skl_scaler_logreg_zipmap");
        let contract = Contract {
            task: Task::Classification,
            classes: vec![],
            features: ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]
                .map(String::from)
                .to_vec(),
        };
        let m = OnnxModel::adopt(
            &model_bytes(&dir, c),
            &contract,
            EngineKind::Ort,
            &options(),
        )
        .unwrap();
        assert_eq!(m.engine(), Engine::Ort);
        assert_eq!(m.classes(), ["0", "1"]);
        let x = tensor_of(&c["inputs"][0]).data.to_f32().unwrap();
        let p = m.predict_proba(&x).unwrap();
        let want = tensor_of(&c["outputs"][1]).data.to_f32().unwrap();
        for (a, b) in p.iter().zip(&want) {
            assert!((a - b).abs() <= TOL as f32, "{a} vs onnxruntime {b}");
        }
    }

    #[test]
    fn custom_operator_is_refused_by_ort_with_its_name() {
        let bytes = std::fs::read(fixtures().join("models/custom_op.onnx")).unwrap();
        let e = Session::load(&bytes, EngineKind::Ort, &options()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ort does not support operator com.example.Frobnicate"
        );
    }

    #[test]
    fn a_missing_library_is_an_error_naming_the_path() {
        let bytes = std::fs::read(fixtures().join("models/det_only_ort.onnx")).unwrap();
        let missing = LoadOptions {
            input_width: None,
            ort_library: Some(PathBuf::from("/nonexistent/libonnxruntime.so.1.32.0")),
        };
        let e = Session::load(&bytes, EngineKind::Ort, &missing).unwrap_err();
        assert!(matches!(e, ModelError::Unavailable(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("/nonexistent/libonnxruntime.so.1.32.0"),
            "{e}"
        );
        // auto: the tract error, onnxruntime being unavailable.
        let e = Session::load(&bytes, EngineKind::Auto, &missing).unwrap_err();
        assert_eq!(e.to_string(), "tract does not support operator ai.onnx.Det");
    }

    #[test]
    fn predict_command_on_ort_reads_zipmap_by_key() {
        let dir = fixtures();
        let models = read_manifest(&dir.join("manifest.json"));
        let c = case(&models, "skl_scaler_logreg_zipmap");
        let tmp = tempfile::tempdir().unwrap();
        let csv = csv_of(c, tmp.path());
        let out = edgeloop_bin()
            .args(["predict", "--engine", "ort", "--json", "--model"])
            .arg(dir.join(c["file"].as_str().unwrap()))
            .arg("--ort-library")
            .arg(library())
            .arg("--file")
            .arg(&csv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["engine"], "ort");
        let want = tensor_of(&c["outputs"][1]).data.to_f32().unwrap();
        let row = &v["rows"][5]["output_probability"];
        assert!(
            (row["1"].as_f64().unwrap() - f64::from(want[11])).abs() <= TOL,
            "{row}"
        );
    }
}
