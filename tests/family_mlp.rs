//! The `mlp` family (`learn::mlp`) on the four reference datasets, against
//! scikit-learn's `MLPClassifier` / `MLPRegressor`, plus its ONNX export,
//! determinism, config validation, warm start and cancellation.
//!
//! The scikit-learn scores come from `tests/fixtures/mlp/mlp.json`, written by
//! `tests/fixtures/mlp/gen_mlp.py` (see its docstring: same hyperparameters,
//! same splits, mean holdout score over several seeds). Rerun the script to
//! regenerate them; never edit the JSON by hand.

#[path = "common/datasets.rs"]
mod datasets;

use std::cell::Cell;

use edgeloop::learn::mlp::{MlpConfig, MlpModel};
use edgeloop::learn::model::{argmax_rows, Target, Task, TrainError};
use edgeloop::serve::engine::OnnxModel;
use serde::Deserialize;

/// Largest allowed gap between our mean holdout score and scikit-learn's.
const SCORE_TOL: f64 = 0.02;
/// Largest allowed gap between `MlpModel::predict` and the ONNX model's
/// output run by tract (or onnxruntime).
const ONNX_TOL: f32 = 1e-5;

#[derive(Deserialize)]
struct Fixture {
    sklearn_version: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    config: MlpConfig,
    seeds: Vec<u64>,
    scores: Vec<f64>,
    mean_score: f64,
}

fn case(name: &str) -> (Case, String) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mlp/mlp.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let fixture: Fixture =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"));
    let version = fixture.sklearn_version.clone();
    let case = fixture
        .cases
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{path} lacks case {name}"));
    (case, version)
}

fn classes_target<'a>(y: &'a [usize], classes: &'a [String]) -> Target<'a> {
    Target::Classes { y, classes }
}

fn accuracy(proba: &[f32], n_classes: usize, y: &[usize]) -> f64 {
    let pred = argmax_rows(proba, n_classes);
    pred.iter().zip(y).filter(|(p, t)| p == t).count() as f64 / y.len() as f64
}

/// Coefficient of determination, as sklearn's `r2_score`.
fn r2(pred: &[f32], y: &[f64]) -> f64 {
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let ss_res: f64 = pred
        .iter()
        .zip(y)
        .map(|(p, t)| (f64::from(*p) - t).powi(2))
        .sum();
    let ss_tot: f64 = y.iter().map(|t| (t - mean).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

/// `model.predict(x)` against the exported ONNX model run by the serving
/// engine (tract), every value within [`ONNX_TOL`].
fn assert_onnx_round_trip(name: &str, model: &MlpModel, x: &[f32]) {
    let bytes = model.to_onnx(1);
    let onnx = OnnxModel::load(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(onnx.task(), model.task(), "{name}: task");
    assert_eq!(onnx.classes(), model.classes(), "{name}: classes");
    assert_eq!(onnx.features(), model.feature_names(), "{name}: features");
    let ours = model.predict(x);
    let theirs = onnx
        .predict_proba(x)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(ours.len(), theirs.len(), "{name}: output length");
    let worst = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{name}: ONNX (tract) vs predict, max |diff| = {worst:e}");
    assert!(
        worst <= ONNX_TOL,
        "{name}: ONNX differs from predict by {worst}"
    );
}

/// The config the fixture ran must be our default (with the documented
/// per-dataset override), so the comparison is of the defaults we ship.
fn expected_config(name: &str) -> MlpConfig {
    match name {
        "basic_motions" => MlpConfig {
            early_stopping: false,
            ..MlpConfig::default()
        },
        _ => MlpConfig::default(),
    }
}

/// Fits one model per fixture seed on the train split, scores it on the
/// test split, checks the seed-0 model's ONNX round trip on every test row,
/// and compares the mean score with scikit-learn's.
fn matches_sklearn(name: &str) {
    let (case, sklearn_version) = case(name);
    assert_eq!(case.config, expected_config(name), "{name}: fixture config");
    assert_eq!(
        case.seeds.len(),
        case.scores.len(),
        "{name}: fixture scores"
    );
    let (train, test, classes) = datasets::load(name);
    let regression = datasets::REGRESSION.contains(&name);
    let (y_train_c, y_test_c) = if regression {
        (vec![], vec![])
    } else {
        (train.class_indices(&classes), test.class_indices(&classes))
    };
    let (y_train_v, y_test_v) = if regression {
        (train.values(), test.values())
    } else {
        (vec![], vec![])
    };
    let target = if regression {
        Target::Values(&y_train_v)
    } else {
        classes_target(&y_train_c, &classes)
    };
    let mut scores = Vec::new();
    for &seed in &case.seeds {
        let cfg = MlpConfig {
            seed,
            ..case.config.clone()
        };
        let started = std::time::Instant::now();
        let model = MlpModel::fit(&train.x, &target, &train.features, &cfg, None, &|| false)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let proba = model.predict(&test.x);
        let score = if regression {
            assert_eq!(proba.len(), test.len());
            r2(&proba, &y_test_v)
        } else {
            accuracy(&proba, classes.len(), &y_test_c)
        };
        println!(
            "{name}: seed {seed}: {score:.6} in {:.2} s, {}",
            started.elapsed().as_secs_f64(),
            model.hyperparameters()
        );
        if seed == case.seeds[0] {
            assert_onnx_round_trip(name, &model, &test.x);
        }
        scores.push(score);
    }
    let ours = scores.iter().sum::<f64>() / scores.len() as f64;
    let metric = if regression { "R²" } else { "accuracy" };
    println!(
        "{name}: holdout {metric}, mean over {} seeds: edgeloop {ours:.6} {scores:.4?}, \
         scikit-learn {} {:.6} {:.4?}",
        scores.len(),
        sklearn_version,
        case.mean_score,
        case.scores
    );
    assert!(
        (ours - case.mean_score).abs() <= SCORE_TOL,
        "{name}: edgeloop {metric} {ours:.4} vs scikit-learn {:.4}",
        case.mean_score
    );
}

#[test]
fn occupancy_accuracy_matches_sklearn_and_onnx_round_trips() {
    matches_sklearn("occupancy");
}

#[test]
fn gas12_accuracy_matches_sklearn_and_onnx_round_trips() {
    matches_sklearn("gas12");
}

#[test]
fn basic_motions_accuracy_matches_sklearn_and_onnx_round_trips() {
    matches_sklearn("basic_motions");
}

#[test]
fn air_quality_r2_matches_sklearn_and_onnx_round_trips() {
    matches_sklearn("air_quality");
}

fn basic_motions_fit(cfg: &MlpConfig, init: Option<&MlpModel>) -> MlpModel {
    let (train, _, classes) = datasets::load("basic_motions");
    let y = train.class_indices(&classes);
    MlpModel::fit(
        &train.x,
        &classes_target(&y, &classes),
        &train.features,
        cfg,
        init,
        &|| false,
    )
    .unwrap()
}

#[test]
fn same_seed_gives_identical_onnx_bytes_and_another_seed_does_not() {
    let cfg = MlpConfig {
        max_epochs: 30,
        early_stopping: false,
        ..MlpConfig::default()
    };
    let a = basic_motions_fit(&cfg, None);
    let b = basic_motions_fit(&cfg, None);
    assert_eq!(a, b);
    assert_eq!(a.to_onnx(3), b.to_onnx(3));
    let c = basic_motions_fit(&MlpConfig { seed: 1, ..cfg }, None);
    assert_ne!(a.to_onnx(3), c.to_onnx(3));
}

#[test]
fn validate_names_the_bad_key() {
    assert_eq!(MlpConfig::default().validate(), Ok(()));
    let bad = |cfg: MlpConfig| cfg.validate().expect_err("invalid config accepted");
    let d = MlpConfig::default;
    assert_eq!(
        bad(MlpConfig {
            hidden_layers: vec![],
            ..d()
        }),
        "hidden_layers: must not be empty"
    );
    assert_eq!(
        bad(MlpConfig {
            hidden_layers: vec![8, 0, 4],
            ..d()
        }),
        "hidden_layers[1]: 0 units"
    );
    for lr in [0.0, -1e-3, f64::NAN, f64::INFINITY] {
        let msg = bad(MlpConfig {
            learning_rate: lr,
            ..d()
        });
        assert!(msg.starts_with("learning_rate: "), "{msg}");
    }
    let msg = bad(MlpConfig {
        batch_size: 0,
        ..d()
    });
    assert!(msg.starts_with("batch_size: "), "{msg}");
    // Unknown keys are refused when the section is read.
    let err = serde_json::from_str::<MlpConfig>(r#"{"hidden_layer_sizes": [4]}"#).unwrap_err();
    assert!(err.to_string().contains("hidden_layer_sizes"), "{err}");
    let partial: MlpConfig = serde_json::from_str(r#"{"hidden_layers": [8]}"#).unwrap();
    assert_eq!(partial.hidden_layers, vec![8]);
    assert_eq!(partial.learning_rate, d().learning_rate);
}

#[test]
fn warm_start_continues_from_the_initial_weights() {
    // gas12: its early-stopped fit is near a minimum of the training loss
    // (occupancy's stops while probabilities still sharpen, so one more
    // epoch moves them by ~0.1 from any start).
    let (train, test, classes) = datasets::load("gas12");
    let y = train.class_indices(&classes);
    let y_test = test.class_indices(&classes);
    let target = classes_target(&y, &classes);
    let fit = |cfg: &MlpConfig, init: Option<&MlpModel>| {
        MlpModel::fit(&train.x, &target, &train.features, cfg, init, &|| false).unwrap()
    };
    let init = fit(&MlpConfig::default(), None);
    let p_init = init.predict(&test.x);

    // Zero epochs from init: init's function exactly (its scaler is kept).
    let zero = MlpConfig {
        max_epochs: 0,
        seed: 5,
        ..MlpConfig::default()
    };
    let same = fit(&zero, Some(&init));
    assert_eq!(same.predict(&test.x), p_init);
    assert_eq!(same.hyperparameters()["warm_started"], true);

    // One epoch from init stays close to init; one epoch from scratch does not.
    let one = MlpConfig {
        max_epochs: 1,
        seed: 5,
        ..MlpConfig::default()
    };
    let mean_gap = |p: &[f32]| {
        p.iter()
            .zip(&p_init)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
            / p.len() as f64
    };
    let warm = fit(&one, Some(&init));
    let cold = fit(&one, None);
    let (gap_warm, gap_cold) = (
        mean_gap(&warm.predict(&test.x)),
        mean_gap(&cold.predict(&test.x)),
    );
    let acc = |m: &MlpModel| accuracy(&m.predict(&test.x), classes.len(), &y_test);
    println!(
        "warm start: mean |p − p_init| after one epoch: warm {gap_warm:.5}, cold {gap_cold:.5}; \
         accuracy init {:.4}, warm {:.4}, cold {:.4}",
        acc(&init),
        acc(&warm),
        acc(&cold)
    );
    assert!(
        gap_warm < 0.02,
        "warm start moved far from init: {gap_warm}"
    );
    assert!(
        gap_warm * 5.0 < gap_cold,
        "warm {gap_warm} vs cold {gap_cold}"
    );
    assert!((acc(&warm) - acc(&init)).abs() <= 0.01);

    // Another architecture cannot continue: a fresh start, said so.
    let other = fit(
        &MlpConfig {
            hidden_layers: vec![8],
            max_epochs: 0,
            ..MlpConfig::default()
        },
        Some(&init),
    );
    assert_eq!(other.hidden_layers(), vec![8]);
    assert_eq!(other.hyperparameters()["warm_started"], false);
}

#[test]
fn cancellation_returns_cancelled() {
    let (train, _, classes) = datasets::load("basic_motions");
    let y = train.class_indices(&classes);
    let target = classes_target(&y, &classes);
    let cfg = MlpConfig::default();
    let polls = Cell::new(0);
    let cancel_on_third_poll = || {
        polls.set(polls.get() + 1);
        polls.get() >= 3
    };
    let out = MlpModel::fit(
        &train.x,
        &target,
        &train.features,
        &cfg,
        None,
        &cancel_on_third_poll,
    );
    assert!(matches!(out, Err(TrainError::Cancelled)), "{out:?}");
    assert_eq!(polls.get(), 3, "polled once per epoch until cancelled");
}

#[test]
fn regressor_and_input_errors() {
    let (train, _, _) = datasets::load("air_quality");
    let y = train.values();
    let cfg = MlpConfig {
        max_epochs: 2,
        ..MlpConfig::default()
    };
    let model = MlpModel::fit(
        &train.x,
        &Target::Values(&y),
        &train.features,
        &cfg,
        None,
        &|| false,
    )
    .unwrap();
    assert_eq!(model.task(), Task::Regression);
    assert!(model.classes().is_empty());
    assert_eq!(model.predict(&train.x[..3 * train.features.len()]).len(), 3);

    let one_class = vec!["only".to_string()];
    let err = MlpModel::fit(
        &train.x,
        &classes_target(&vec![0; y.len()], &one_class),
        &train.features,
        &cfg,
        None,
        &|| false,
    );
    assert!(matches!(err, Err(TrainError::TooFewClasses(1))), "{err:?}");
    let err = MlpModel::fit(
        &train.x[1..],
        &Target::Values(&y),
        &train.features,
        &cfg,
        None,
        &|| false,
    );
    assert!(matches!(err, Err(TrainError::Shape { .. })), "{err:?}");
}

/// Python run by [`onnxruntime_runs_the_exported_models`]: argv model,
/// input (`f32` little-endian, `[n, F]`), output directory; writes each
/// output as raw little-endian bytes named after it.
const ORT_SCRIPT: &str = r#"
import sys, numpy as np, onnxruntime as ort
model, inp, out = sys.argv[1:4]
sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
nf = sess.get_inputs()[0].shape[1]
x = np.fromfile(inp, dtype="<f4").reshape(-1, nf)
for meta, value in zip(sess.get_outputs(), sess.run(None, {"features": x})):
    value.astype(value.dtype.newbyteorder("<")).tofile(f"{out}/{meta.name}.bin")
"#;

#[test]
fn onnxruntime_runs_the_exported_models() {
    let has_ort = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime"])
        .output()
        .is_ok_and(|o| o.status.success());
    // CI installs tests/fixtures/requirements.txt; a missing runtime is a
    // broken setup, not a reason to pass.
    assert!(
        has_ort,
        "python3 with onnxruntime is required: the README's test command, tests/run.sh, installs it in target/pyenv"
    );
    let cfg = MlpConfig {
        max_epochs: 5,
        ..MlpConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    for name in ["gas12", "air_quality"] {
        let (train, test, classes) = datasets::load(name);
        let (y_c, y_v) = if classes.is_empty() {
            (vec![], train.values())
        } else {
            (train.class_indices(&classes), vec![])
        };
        let target = if classes.is_empty() {
            Target::Values(&y_v)
        } else {
            classes_target(&y_c, &classes)
        };
        let model =
            MlpModel::fit(&train.x, &target, &train.features, &cfg, None, &|| false).unwrap();
        let model_path = dir.path().join(format!("{name}.onnx"));
        let input_path = dir.path().join(format!("{name}.f32"));
        std::fs::write(&model_path, model.to_onnx(1)).unwrap();
        let bytes: Vec<u8> = test.x.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&input_path, bytes).unwrap();
        let run = std::process::Command::new("python3")
            .args(["-c", ORT_SCRIPT])
            .arg(&model_path)
            .arg(&input_path)
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{name}: onnxruntime failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let read = |output: &str| std::fs::read(dir.path().join(format!("{output}.bin"))).unwrap();
        let first = if classes.is_empty() {
            "prediction"
        } else {
            "probabilities"
        };
        let theirs: Vec<f32> = read(first)
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let ours = model.predict(&test.x);
        assert_eq!(ours.len(), theirs.len(), "{name}: output length");
        let worst = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{name}: onnxruntime vs predict, max |diff| = {worst:e}");
        assert!(worst <= ONNX_TOL, "{name}: onnxruntime differs by {worst}");
        if !classes.is_empty() {
            let labels: Vec<usize> = read("label")
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
                .collect();
            assert_eq!(labels, argmax_rows(&ours, classes.len()), "{name}: labels");
        }
    }
}
