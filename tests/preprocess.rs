//! `[pipelines.preprocess]`'s fitted steps (issue 16) against scikit-learn
//! (`tests/fixtures/preprocess/gen_preprocess.py`, which says how each
//! reference is computed):
//! - each step (imputation mean / median / constant / last with missing
//!   indicators, clipping to quantiles or Tukey's fences, dropping outlier
//!   rows, removing constant columns, standard / robust / min-max scaling,
//!   PCA by count and by explained-variance fraction): fitted parameters,
//!   the training part's output and later rows' output within 1e-5; and a
//!   model behind the steps, exported, gives on tract its in-process
//!   predictions;
//! - the full pipeline (markers and ranges → median imputation with
//!   indicators → Tukey clipping → standard scaling → PCA(3) → logistic):
//!   probabilities equal scikit-learn's Pipeline within 1e-5, and the
//!   exported graph, fed the raw rows (markers included), gives the
//!   in-process probabilities on tract and on onnxruntime within 1e-5;
//! - `edgeloop train` with the options: the card lists the fitted steps,
//!   the exported model reads the raw features; a step after imputation
//!   without `impute` is refused by check-config, naming the key.

#[path = "common/ort.rs"]
mod ort;

use std::path::Path;
use std::process::Command;

use edgeloop::learn::preprocess::{PreprocessConfig, Preprocessor};
use edgeloop::learn::{fit_model, Dataset, Family, Model, ModelConfig, Task};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> Value {
    serde_json::from_slice(
        &std::fs::read(root().join("tests/fixtures/preprocess/preprocess.json")).unwrap(),
    )
    .unwrap()
}

fn rows(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter())
        .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
        .collect()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

fn names(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap()
}

/// `got` equals `want` within `tol` relative (absolute below 1).
fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g.is_infinite() && g == w) || (g - w).abs() <= tol * w.abs().max(1.0);
        assert!(ok, "{what}[{i}]: {g} vs scikit-learn {w}");
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn regression_data(x: Vec<f32>, nf: usize) -> Dataset {
    let n = x.len() / nf;
    let mut d = Dataset::empty(Task::Regression, vec![], nf);
    d.x = x;
    d.values = (0..n).map(|i| (i % 7) as f64).collect();
    d.timestamps = (0..n as i64).collect();
    d
}

#[test]
fn each_step_equals_scikit_learn_and_its_export() {
    let r = reference();
    let features = names(&r["features"]);
    let nf = features.len();
    let (x_train, x_test) = (rows(&r["x_train"]), rows(&r["x_test"]));
    let data = regression_data(x_train.clone(), nf);
    for case in r["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let cfg: PreprocessConfig = serde_json::from_value(case["config"].clone()).unwrap();
        cfg.validate(&features).unwrap();
        let (steps, out) = Preprocessor::fit(&cfg, &data, &features).unwrap();
        close(
            &format!("{name} fill"),
            &f64s(&steps.imputer.fill),
            &floats(&case["fill"]),
            1e-6,
        );
        let indicators: Vec<usize> = serde_json::from_value(case["indicators"].clone()).unwrap();
        assert_eq!(steps.imputer.indicators, indicators, "{name}");
        if let Some(low) = case.get("low") {
            let b = steps.bounds.as_ref().expect("bounds");
            close(
                &format!("{name} low"),
                &f64s(&b.low[..nf]),
                &floats(low),
                1e-6,
            );
            close(
                &format!("{name} high"),
                &f64s(&b.high[..nf]),
                &floats(&case["high"]),
                1e-6,
            );
        }
        if let Some(kept) = case.get("rows_kept") {
            assert_eq!(
                out.len() as u64,
                kept.as_u64().unwrap(),
                "{name}: rows kept"
            );
            assert_eq!(steps.rows_dropped, (data.len() - out.len()) as u64);
        }
        if let Some(kept) = case.get("kept") {
            let kept: Vec<usize> = serde_json::from_value(kept.clone()).unwrap();
            assert_eq!(steps.kept.as_ref(), Some(&kept), "{name}");
            assert_eq!(steps.dropped_constant, vec!["c".to_string()], "{name}");
        }
        if let Some(center) = case.get("center") {
            let s = steps.scaling.as_ref().expect("scaling");
            close(
                &format!("{name} center"),
                &f64s(&s.center),
                &floats(center),
                1e-6,
            );
            close(
                &format!("{name} scale"),
                &f64s(&s.scale),
                &floats(&case["scale"]),
                1e-6,
            );
        }
        let pca_signs: Vec<f32> = match case.get("components") {
            Some(c) => {
                let p = steps.pca.as_ref().expect("pca");
                close(
                    &format!("{name} explained_variance_ratio"),
                    &p.explained_variance_ratio,
                    &floats(&case["explained_variance_ratio"]),
                    1e-5,
                );
                close(
                    &format!("{name} explained_variance"),
                    &p.explained_variance,
                    &floats(&case["explained_variance"]),
                    1e-5,
                );
                // Components up to sign.
                let width = p.mean.len();
                c.as_array()
                    .unwrap()
                    .iter()
                    .enumerate()
                    .map(|(k, comp)| {
                        let want = floats(comp);
                        let ours = f64s(&p.components[k * width..(k + 1) * width]);
                        let dot: f64 = ours.iter().zip(&want).map(|(a, b)| a * b).sum();
                        let sign = dot.signum();
                        let flipped: Vec<f64> = ours.iter().map(|v| v * sign).collect();
                        close(&format!("{name} component {k}"), &flipped, &want, 1e-5);
                        sign as f32
                    })
                    .collect()
            }
            None => vec![],
        };
        let unsign = |x: &[f32], width: usize| -> Vec<f64> {
            if pca_signs.is_empty() {
                return f64s(x);
            }
            x.chunks_exact(width)
                .flat_map(|r| r.iter().zip(&pca_signs).map(|(v, s)| f64::from(v * s)))
                .collect()
        };
        let width = steps.output.len();
        assert_eq!(out.n_features, width, "{name}");
        close(
            &format!("{name} training part"),
            &unsign(&out.x, width),
            &rows(&case["train_out"])
                .iter()
                .map(|&v| f64::from(v))
                .collect::<Vec<_>>(),
            1e-5,
        );
        close(
            &format!("{name} later rows"),
            &unsign(&steps.transform(&x_test), width),
            &rows(&case["test_out"])
                .iter()
                .map(|&v| f64::from(v))
                .collect::<Vec<_>>(),
            1e-5,
        );

        // A ridge model behind the steps: its graph on tract equals its
        // in-process predictions on the raw later rows.
        let model_cfg = ModelConfig {
            preprocess: cfg.clone(),
            ..ModelConfig::default()
        };
        let model =
            fit_model(Family::Ridge, &model_cfg, &data, &features, None, &|| false).unwrap();
        assert!(matches!(model, Model::Preprocessed(_)), "{name}");
        // Stored (warm starts) and shown in the card as JSON: read back whole.
        let json = serde_json::to_string(&model).unwrap();
        let back = Model::from_json(&json).expect("the stored model reads back");
        assert_eq!(back.predict(&x_test), model.predict(&x_test), "{name}");
        assert_eq!(model.feature_names(), features.as_slice());
        let onnx = model.to_onnx(1);
        let meta = edgeloop::onnx::export::read_metadata(&onnx).unwrap();
        assert_eq!(
            meta.features, features,
            "{name}: the graph reads raw features"
        );
        let tract = edgeloop::serve::engine::OnnxModel::load(&onnx)
            .unwrap()
            .predict_proba(&x_test)
            .unwrap();
        close(
            &format!("{name} tract vs in-process"),
            &f64s(&tract),
            &f64s(&model.predict(&x_test)),
            1e-5,
        );
    }
}

#[test]
fn the_full_pipeline_equals_scikit_learn_on_tract_and_onnxruntime() {
    let r = reference();
    let p = &r["pipeline"];
    let features = names(&r["features"]);
    let nf = features.len();
    let cfg: PreprocessConfig = serde_json::from_value(p["config"].clone()).unwrap();
    cfg.validate(&features).unwrap();
    let model_cfg = ModelConfig {
        preprocess: cfg.clone(),
        family: Family::Logistic,
        l2: p["l2"].as_f64().unwrap(),
        max_iter: 10_000,
        ..ModelConfig::default()
    };
    // The cleaning rules apply to the whole dataset first (as
    // `train_dataset` does); the steps are fitted on the training rows.
    let cleaning = cfg.cleaning();
    let mut x_train = rows(&p["x_train"]);
    cleaning.apply(&features, &mut x_train);
    let y: Vec<usize> = serde_json::from_value(p["y_train"].clone()).unwrap();
    let mut data = Dataset::empty(
        Task::Classification,
        vec!["0".into(), "1".into(), "2".into()],
        nf,
    );
    data.timestamps = (0..y.len() as i64).collect();
    data.x = x_train;
    data.y = y;
    let model = fit_model(
        Family::Logistic,
        &model_cfg,
        &data,
        &features,
        None,
        &|| false,
    )
    .unwrap();
    let Model::Preprocessed(pre) = &model else {
        panic!("a model behind its steps")
    };
    close(
        "explained_variance_ratio",
        &pre.steps.pca.as_ref().unwrap().explained_variance_ratio,
        &floats(&p["explained_variance_ratio"]),
        1e-5,
    );
    let raw = rows(&p["x_test"]);
    assert!(raw.contains(&-999.0), "the later rows hold markers");
    let mut cleaned = raw.clone();
    cleaning.apply(&features, &mut cleaned);
    let ours = f64s(&model.predict(&cleaned));
    let want: Vec<f64> = rows(&p["test_probabilities"])
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    close("probabilities vs scikit-learn", &ours, &want, 1e-5);

    let onnx = cleaning.wrap_onnx(&features, model.to_onnx(1));
    let tract = edgeloop::serve::engine::OnnxModel::load(&onnx)
        .unwrap()
        .predict_proba(&raw)
        .unwrap();
    close("tract vs in-process", &f64s(&tract), &ours, 1e-5);
    let ort = ort::run_onnxruntime(&onnx, &raw, nf);
    let ort: Vec<f64> = ort["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| match v {
            Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>(),
            x => vec![x.as_f64().unwrap()],
        })
        .collect();
    close("onnxruntime vs in-process", &ort, &ours, 1e-5);
}

#[test]
fn train_lists_the_fitted_steps_in_the_card_and_exports_raw_features() {
    let r = reference();
    let p = &r["pipeline"];
    let features = names(&r["features"]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("pre.csv");
    let mut text = format!("{},y\n", features.join(","));
    let labels: Vec<u64> = serde_json::from_value(p["y_train"].clone()).unwrap();
    for (row, y) in p["x_train"].as_array().unwrap().iter().zip(&labels) {
        let cells: Vec<String> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().map_or(String::new(), |v| v.to_string()))
            .collect();
        text += &format!("{},{y}\n", cells.join(","));
    }
    std::fs::write(&csv, text).unwrap();
    let onnx_path = dir.path().join("m.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["train", "--label", "y", "--family", "logistic", "--json"])
        .args(["--features", &features.join(",")])
        .args(["--task", "classification", "--missing-values", "-999"])
        .args([
            "--range",
            "f3=-3,3",
            "--impute",
            "median",
            "--missing-indicator",
        ])
        .args([
            "--outliers",
            "clip_iqr",
            "--drop-constant",
            "--scale",
            "robust",
        ])
        .args(["--pca", "0.9", "--file"])
        .arg(&csv)
        .arg("--export")
        .arg(&onnx_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cards: Value = serde_json::from_slice(&out.stdout).unwrap();
    let card = &cards[0];
    // The card reads back whole (the store keeps it as JSON).
    let typed: edgeloop::learn::card::ModelCard = serde_json::from_value(card.clone()).unwrap();
    assert!(typed.preprocessing.is_some());
    let pre = &card["preprocessing"];
    assert_eq!(pre["imputer"]["strategy"], "median");
    assert_eq!(pre["outliers"], "clip_iqr");
    assert_eq!(pre["dropped_constant"], serde_json::json!(["c"]));
    assert_eq!(pre["scaling"]["strategy"], "robust");
    let ratio = floats(&pre["pca"]["explained_variance_ratio"]);
    let kept = ratio.len();
    // The fewest components over 90 % (scikit-learn's rule): the ones
    // before the last stay below it.
    assert!(ratio.iter().sum::<f64>() > 0.9, "{ratio:?}");
    assert!(ratio[..kept - 1].iter().sum::<f64>() <= 0.9, "{ratio:?}");
    assert_eq!(
        pre["output"],
        serde_json::json!((1..=kept).map(|i| format!("pc{i}")).collect::<Vec<_>>())
    );
    assert_eq!(card["features"], serde_json::json!(features));
    let onnx = std::fs::read(&onnx_path).unwrap();
    let meta = edgeloop::onnx::export::read_metadata(&onnx).unwrap();
    assert_eq!(meta.features, features);
    // A marker and an out-of-range reading are read by the exported model.
    let row = [0.1f32, f32::NAN, -999.0, 7.5, 10.0, 3.0];
    let proba = edgeloop::serve::engine::OnnxModel::load(&onnx)
        .unwrap()
        .predict_proba(&row)
        .unwrap();
    assert!((proba.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{proba:?}");
}

#[test]
fn a_step_after_imputation_without_impute_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("c.toml");
    std::fs::write(
        &conf,
        format!(
            "[store]\npath = '{}'\n[[pipelines]]\nname = 'p'\ntopics = ['p/+']\n\
             features = ['a', 'b']\nlabel = 'y'\n[pipelines.preprocess]\nscale = 'robust'\n",
            dir.path().join("s.redb").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["check-config", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pipelines[0].preprocess.scale"), "{err}");
    assert!(err.contains("needs `impute`"), "{err}");
}

#[test]
fn a_stacking_ensemble_carries_the_steps_in_its_members_not_its_meta_model() {
    use edgeloop::learn::ensemble::{EnsembleKind, EnsembleModel};
    let r = reference();
    let p = &r["pipeline"];
    let features = names(&r["features"]);
    let cfg: PreprocessConfig = serde_json::from_value(p["config"].clone()).unwrap();
    let model_cfg = ModelConfig {
        preprocess: cfg.clone(),
        ..ModelConfig::default()
    };
    let mut x = rows(&p["x_train"]);
    cfg.cleaning().apply(&features, &mut x);
    let y: Vec<usize> = serde_json::from_value(p["y_train"].clone()).unwrap();
    let mut data = Dataset::empty(
        Task::Classification,
        vec!["0".into(), "1".into(), "2".into()],
        features.len(),
    );
    data.timestamps = (0..y.len() as i64).collect();
    data.x = x;
    data.y = y;
    let e = EnsembleModel::fit(
        EnsembleKind::Stacking,
        &[Family::Logistic, Family::Tree],
        &model_cfg,
        &data,
        &features,
        &|| false,
    )
    .unwrap();
    assert!(e
        .members
        .iter()
        .all(|m| matches!(m, Model::Preprocessed(_))));
    // The meta-model reads the members' probabilities, not the features.
    assert!(matches!(e.meta, Some(Model::Logistic(_))), "{:?}", e.meta);
    let model = Model::Ensemble(Box::new(e));
    let raw = rows(&p["x_test"]);
    let mut cleaned = raw.clone();
    cfg.cleaning().apply(&features, &mut cleaned);
    let onnx = cfg.cleaning().wrap_onnx(&features, model.to_onnx(1));
    let tract = edgeloop::serve::engine::OnnxModel::load(&onnx)
        .unwrap()
        .predict_proba(&raw)
        .unwrap();
    close(
        "stacking on tract vs in-process",
        &f64s(&tract),
        &f64s(&model.predict(&cleaned)),
        1e-5,
    );
}
