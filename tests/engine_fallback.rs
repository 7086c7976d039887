//! skl2onnx's PolynomialFeatures + Lasso (`tests/fixtures/poly/gen_poly.py`):
//! tract-onnx 0.23's own LinearRegressor (a MatMul expansion) fails its
//! declutter pass on the Concat of ReduceProd terms ("EinSum: Condition
//! failed"); edgeloop's `onnx::ml::linear_regressor` replaces it, so the
//! model runs on tract and equals onnxruntime's predictions, on the engine
//! layer and as a pipeline's adopted regressor; `auto` keeps it on tract.

use std::path::{Path, PathBuf};

use edgeloop::learn::Task;
use edgeloop::serve::engine::{
    Contract, Data, Engine, EngineKind, LoadOptions, Named, OnnxModel, Session, Tensor,
};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/poly")
}

fn model() -> Vec<u8> {
    std::fs::read(dir().join("poly_lasso.onnx")).unwrap()
}

/// The rows (`[16, 4]`) and onnxruntime's predictions.
fn reference() -> (Vec<f32>, Vec<f32>) {
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir().join("poly_lasso.json")).unwrap()).unwrap();
    let rows: Vec<Vec<f32>> = serde_json::from_value(r["x"].clone()).unwrap();
    (
        rows.concat(),
        serde_json::from_value(r["onnxruntime"].clone()).unwrap(),
    )
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        // CO2 in ppm, 400-1,500: f32 sums in another order.
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1.0),
            "{g} vs onnxruntime {w}"
        );
    }
}

fn check(kind: EngineKind, options: &LoadOptions, engine: Engine) {
    let (x, want) = reference();
    let s = Session::load(&model(), kind, options).unwrap();
    assert_eq!(s.engine(), engine);
    let t = Tensor::new(vec![x.len() / 4, 4], Data::F32(x.clone())).unwrap();
    let out = s.run_rows(&[Named::new("X", t)]).unwrap();
    close(&out[0].tensor.data.to_f32().unwrap(), &want);
    // The pipeline's path: adopted as a regressor of 4 features.
    let contract = Contract {
        task: Task::Regression,
        classes: vec![],
        features: ["Temperature", "Humidity", "Light", "HumidityRatio"]
            .map(String::from)
            .to_vec(),
    };
    let m = OnnxModel::adopt(&model(), &contract, kind, options).unwrap();
    assert_eq!(m.engine(), engine);
    close(&m.predict_proba(&x).unwrap(), &want);
}

#[test]
fn polynomial_lasso_runs_on_tract_and_matches_onnxruntime() {
    check(EngineKind::Tract, &LoadOptions::default(), Engine::Tract);
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
    fn polynomial_lasso_on_ort_and_auto() {
        check(EngineKind::Ort, &options(), Engine::Ort);
        check(EngineKind::Auto, &options(), Engine::Tract);
    }
}
