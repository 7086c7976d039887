//! A model tract cannot plan: skl2onnx's PolynomialFeatures + Lasso
//! (`tests/fixtures/poly/gen_poly.py`; tract 0.23 fails an EinSum assertion
//! in its declutter pass on the LinearRegressor over the Concat of
//! ReduceProd terms). On tract it is refused at load with
//! [`ModelError::Refused`] (no panic), so a pipeline on `engine = "tract"`
//! refuses it at intake (`engine_refused`) and `auto` serves it on
//! onnxruntime, whose predictions equal onnxruntime's in Python.

use std::path::{Path, PathBuf};

use edgeloop::serve::engine::{EngineKind, LoadOptions, ModelError, Session};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/poly")
}

fn model() -> Vec<u8> {
    std::fs::read(dir().join("poly_lasso.onnx")).unwrap()
}

#[test]
fn tract_refuses_polynomial_lasso_at_load_naming_tract() {
    let e = Session::load(&model(), EngineKind::Tract, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ModelError::Refused(m) if m.starts_with("tract:")),
        "{e}"
    );
}

#[cfg(feature = "ort")]
mod ort {
    use super::*;
    use edgeloop::learn::Task;
    use edgeloop::serve::engine::{Contract, Data, Engine, Named, OnnxModel, Tensor};

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
    fn auto_serves_polynomial_lasso_on_onnxruntime_with_its_outputs() {
        let reference: Value =
            serde_json::from_slice(&std::fs::read(dir().join("poly_lasso.json")).unwrap()).unwrap();
        let rows: Vec<Vec<f32>> = serde_json::from_value(reference["x"].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(reference["onnxruntime"].clone()).unwrap();
        let x: Vec<f32> = rows.concat();
        let s = Session::load(&model(), EngineKind::Auto, &options()).unwrap();
        assert_eq!(s.engine(), Engine::Ort);
        let t = Tensor::new(vec![rows.len(), 4], Data::F32(x.clone())).unwrap();
        let out = s.run_rows(&[Named::new("X", t)]).unwrap();
        let got = out[0].tensor.data.to_f32().unwrap();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-3 * w.abs().max(1.0), "{g} vs {w}");
        }
        // The pipeline's path: adopted on `auto`, served by onnxruntime.
        let contract = Contract {
            task: Task::Regression,
            classes: vec![],
            features: ["Temperature", "Humidity", "Light", "HumidityRatio"]
                .map(String::from)
                .to_vec(),
        };
        let m = OnnxModel::adopt(&model(), &contract, EngineKind::Auto, &options()).unwrap();
        assert_eq!(m.engine(), Engine::Ort);
        let p = m.predict_proba(&x).unwrap();
        for (g, w) in p.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-3 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
}
