//! The `svm` and `linear` / `ridge` families against scikit-learn.
//!
//! Expected values come from `tests/fixtures/svm_linear/svm_linear.json`,
//! written by `tests/fixtures/svm_linear/gen_svm_linear.py` (its docstring
//! says which sklearn estimators and why). Rerun the script to regenerate
//! them; never edit the JSON by hand.

#[path = "common/datasets.rs"]
mod datasets;

use std::cell::Cell;
use std::sync::OnceLock;

use edgeloop::learn::linear::{LinearConfig, LinearModel};
use edgeloop::learn::model::{argmax_rows, Target, Task, TrainError};
use edgeloop::learn::svm::{platt_scaling, SvmConfig, SvmModel};
use edgeloop::serve::engine::OnnxModel;
use serde_json::Value;

/// Largest allowed gap between our holdout accuracy and sklearn's: 0.02, or
/// one test sample where that is more (basic_motions has 40 test samples, so
/// 0.02 would demand the very same count; Pegasos after 100 epochs is not at
/// the exact optimum, and a borderline sample may fall either way).
const ACCURACY_TOL: f64 = 0.02;
/// ONNX (tract) against the in-process `predict`.
const ONNX_TOL: f32 = 1e-5;

fn fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/svm_linear/svm_linear.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
    })
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A dataset's SVM, trained once with the default configuration, and its
/// test split.
struct TrainedSvm {
    name: &'static str,
    model: SvmModel,
    test: datasets::Split,
    classes: Vec<String>,
}

fn trained_svms() -> &'static [TrainedSvm] {
    static MODELS: OnceLock<Vec<TrainedSvm>> = OnceLock::new();
    MODELS.get_or_init(|| {
        datasets::CLASSIFICATION
            .iter()
            .map(|&name| {
                let (train, test, classes) = datasets::load(name);
                let y = train.class_indices(&classes);
                let target = Target::Classes {
                    y: &y,
                    classes: &classes,
                };
                let model = SvmModel::fit(
                    &train.x,
                    &target,
                    &train.features,
                    &SvmConfig::default(),
                    None,
                    &|| false,
                )
                .unwrap_or_else(|e| panic!("{name}: {e}"));
                TrainedSvm {
                    name,
                    model,
                    test,
                    classes,
                }
            })
            .collect()
    })
}

fn accuracy(model: &SvmModel, split: &datasets::Split, classes: &[String]) -> f64 {
    let predicted = argmax_rows(&model.predict(&split.x), model.classes().len());
    let truth = split.class_indices(classes);
    let correct = predicted.iter().zip(&truth).filter(|(p, t)| p == t).count();
    correct as f64 / truth.len() as f64
}

#[test]
fn svm_holdout_accuracy_is_within_0_02_of_sklearn() {
    let svm = &fixture()["svm"];
    let defaults = SvmConfig::default();
    assert_eq!(f64_of(&svm["c"]), defaults.c, "fixture C = default c");
    assert_eq!(
        svm["calibration_folds"].as_u64(),
        Some(defaults.calibration_folds as u64)
    );
    for t in trained_svms() {
        let case = &svm["cases"][t.name];
        let want_classes: Vec<String> = serde_json::from_value(case["classes"].clone()).unwrap();
        assert_eq!(t.classes, want_classes, "{}: classes", t.name);
        assert_eq!(case["n_test"].as_u64(), Some(t.test.len() as u64));
        let ours = accuracy(&t.model, &t.test, &t.classes);
        let sklearn = f64_of(&case["accuracy"]);
        println!(
            "{}: holdout accuracy ours {ours:.6}, sklearn {sklearn:.6} (LinearSVC; OvR SVC(linear) {:.6}; {} test samples; our objective {:?})",
            t.name,
            f64_of(&case["accuracy_svc_ovr"]),
            t.test.len(),
            t.model.objective
        );
        let tol = ACCURACY_TOL.max(1.0 / t.test.len() as f64 + 1e-9);
        assert!(
            (ours - sklearn).abs() <= tol,
            "{}: accuracy {ours} vs sklearn {sklearn}",
            t.name
        );
    }
}

/// `(alpha, fitted model, test split)` for `linear` (alpha 0) and `ridge`.
fn trained_linear() -> &'static [(&'static str, LinearModel, datasets::Split)] {
    static MODELS: OnceLock<Vec<(&'static str, LinearModel, datasets::Split)>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let (train, test, _) = datasets::load("air_quality");
        let y = train.values();
        ["linear", "ridge"]
            .into_iter()
            .map(|kind| {
                let alpha = f64_of(&fixture()["regression"]["air_quality"][kind]["alpha"]);
                let model = LinearModel::fit(
                    &train.x,
                    &Target::Values(&y),
                    &train.features,
                    &LinearConfig { alpha },
                    None,
                    &|| false,
                )
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
                (kind, model, test.clone())
            })
            .collect()
    })
}

fn r2(predicted: &[f32], truth: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len() as f64;
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    let ss_res: f64 = predicted
        .iter()
        .zip(truth)
        .map(|(p, t)| (f64::from(*p) - t).powi(2))
        .sum();
    1.0 - ss_res / ss_tot
}

#[test]
fn linear_and_ridge_equal_sklearn_on_air_quality() {
    assert_eq!(
        f64_of(&fixture()["regression"]["air_quality"]["ridge"]["alpha"]),
        LinearConfig::default().alpha,
        "fixture ridge alpha = default alpha"
    );
    for (kind, model, test) in trained_linear() {
        let want = &fixture()["regression"]["air_quality"][*kind];
        let ours = r2(&model.predict(&test.x), &test.values());
        let sklearn = f64_of(&want["r2_test"]);
        println!("air_quality {kind}: test R² ours {ours:.9}, sklearn {sklearn:.9}");
        assert!(
            (ours - sklearn).abs() <= 1e-6,
            "{kind}: R² {ours} vs {sklearn}"
        );
        let coef: Vec<f64> = serde_json::from_value(want["coef"].clone()).unwrap();
        assert_eq!(coef.len(), model.weights.len());
        let worst = model
            .weights
            .iter()
            .zip(&coef)
            .map(|(w, c)| (f64::from(*w) - c).abs())
            .fold(0.0, f64::max);
        let intercept = (f64::from(model.bias) - f64_of(&want["intercept"])).abs();
        println!("air_quality {kind}: max |coef − sklearn| {worst:.2e}, |intercept − sklearn| {intercept:.2e}");
        assert!(
            worst <= 1e-5,
            "{kind}: coefficients {:?} vs {coef:?}",
            model.weights
        );
        assert!(
            intercept <= 1e-5,
            "{kind}: intercept {} vs {}",
            model.bias,
            want["intercept"]
        );
        assert_eq!(model.jitter, 0.0, "{kind}: air_quality is not singular");
    }
}

fn assert_onnx_matches(what: &str, onnx: &[u8], x: &[f32], ours: &[f32], task: Task) {
    let served = OnnxModel::load(onnx).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(served.task(), task, "{what}: task");
    let got = served
        .predict_proba(x)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got.len(), ours.len(), "{what}: output length");
    let worst = got
        .iter()
        .zip(ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "{what}: max |onnx − predict| {worst:.2e} over {} values",
        ours.len()
    );
    assert!(
        worst <= ONNX_TOL,
        "{what}: ONNX differs from predict by {worst}"
    );
}

#[test]
fn onnx_outputs_equal_predict_on_every_test_row() {
    for t in trained_svms() {
        // A missing value in the first row exercises the imputation nodes.
        let mut x = t.test.x.clone();
        x[0] = f32::NAN;
        let ours = t.model.predict(&x);
        assert_onnx_matches(t.name, &t.model.to_onnx(1), &x, &ours, Task::Classification);
    }
    for (kind, model, test) in trained_linear() {
        let ours = model.predict(&test.x);
        assert_onnx_matches(kind, &model.to_onnx(1), &test.x, &ours, Task::Regression);
    }
}

#[test]
fn same_seed_and_data_give_identical_onnx_bytes() {
    let (train, _, classes) = datasets::load("basic_motions");
    let y = train.class_indices(&classes);
    let target = Target::Classes {
        y: &y,
        classes: &classes,
    };
    let fit = |seed| {
        let cfg = SvmConfig {
            seed,
            ..SvmConfig::default()
        };
        SvmModel::fit(&train.x, &target, &train.features, &cfg, None, &|| false)
            .unwrap()
            .to_onnx(3)
    };
    assert_eq!(fit(7), fit(7), "svm: same seed, same bytes");
    assert_ne!(fit(7), fit(8), "svm: the seed matters");
    let (train, _, _) = datasets::load("air_quality");
    let y = train.values();
    let fit = || {
        LinearModel::fit(
            &train.x,
            &Target::Values(&y),
            &train.features,
            &LinearConfig::default(),
            None,
            &|| false,
        )
        .unwrap()
        .to_onnx(3)
    };
    assert_eq!(fit(), fit(), "ridge: same bytes");
}

#[test]
fn validate_refuses_bad_hyperparameters_naming_the_key() {
    assert_eq!(SvmConfig::default().validate(), Ok(()));
    assert_eq!(LinearConfig::default().validate(), Ok(()));
    assert_eq!(LinearConfig { alpha: 0.0 }.validate(), Ok(()));
    let svm = |cfg: SvmConfig| cfg.validate().unwrap_err();
    for c in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = svm(SvmConfig {
            c,
            ..SvmConfig::default()
        });
        assert!(e.starts_with("c: "), "{e}");
    }
    assert_eq!(
        svm(SvmConfig {
            c: -1.0,
            ..SvmConfig::default()
        }),
        "c: -1 must be positive"
    );
    let e = svm(SvmConfig {
        epochs: 0,
        ..SvmConfig::default()
    });
    assert!(e.starts_with("epochs: 0"), "{e}");
    let e = svm(SvmConfig {
        calibration_folds: 1,
        ..SvmConfig::default()
    });
    assert!(e.starts_with("calibration_folds: 1"), "{e}");
    for alpha in [-1.0, f64::NAN] {
        let e = LinearConfig { alpha }.validate().unwrap_err();
        assert!(e.starts_with("alpha: "), "{e}");
    }
    // Unknown keys are refused; missing keys take their defaults.
    assert!(serde_json::from_str::<SvmConfig>(r#"{"C": 1}"#).is_err());
    assert_eq!(
        serde_json::from_str::<LinearConfig>("{}").unwrap(),
        LinearConfig::default()
    );
}

#[test]
fn platt_scaling_equals_sklearn_sigmoid_calibration() {
    let cases = fixture()["platt"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let f: Vec<f64> = serde_json::from_value(case["decision"].clone()).unwrap();
        let positive: Vec<bool> = serde_json::from_value(case["positive"].clone()).unwrap();
        let fit = platt_scaling(&f, &positive);
        let (a, b) = (f64_of(&case["a"]), f64_of(&case["b"]));
        let (a_exact, b_exact) = (f64_of(&case["a_exact"]), f64_of(&case["b_exact"]));
        println!(
            "platt {name}: ours A {:.9} B {:.9}; sklearn A {a:.9} B {b:.9}; exact A {a_exact:.9} B {b_exact:.9} ({} Newton steps)",
            fit.a, fit.b, fit.iterations
        );
        assert!(
            (fit.a - a).abs() <= 1e-6 && (fit.b - b).abs() <= 1e-6,
            "{name}: vs sklearn"
        );
        // The fixture rounds to 9 decimals.
        assert!(
            (fit.a - a_exact).abs() <= 2e-9 && (fit.b - b_exact).abs() <= 2e-9,
            "{name}: vs the exact optimum"
        );
    }
}

#[test]
fn cancellation_stops_svm_training() {
    let (train, _, classes) = datasets::load("basic_motions");
    let y = train.class_indices(&classes);
    let target = Target::Classes {
        y: &y,
        classes: &classes,
    };
    // Cancelled at once, and cancelled midway (after 150 epoch polls: inside
    // the second calibration fold).
    for after in [0, 150] {
        let polls = Cell::new(0);
        let cancelled = || {
            polls.set(polls.get() + 1);
            polls.get() > after
        };
        let out = SvmModel::fit(
            &train.x,
            &target,
            &train.features,
            &SvmConfig::default(),
            None,
            &cancelled,
        );
        assert!(
            matches!(out, Err(TrainError::Cancelled)),
            "after {after}: {out:?}"
        );
        assert_eq!(polls.get(), after + 1, "stops at the first true poll");
    }
}

#[test]
fn families_refuse_the_other_task() {
    let x = [0.0f32, 1.0, 2.0, 3.0];
    let names = vec!["a".to_string()];
    let values = [0.0, 1.0, 0.0, 1.0];
    let out = SvmModel::fit(
        &x,
        &Target::Values(&values),
        &names,
        &SvmConfig::default(),
        None,
        &|| false,
    );
    assert!(matches!(
        out,
        Err(TrainError::Unsupported {
            family: "svm",
            task: Task::Regression
        })
    ));
    let classes = vec!["0".to_string(), "1".to_string()];
    let y = [0, 1, 0, 1];
    let target = Target::Classes {
        y: &y,
        classes: &classes,
    };
    let out = LinearModel::fit(&x, &target, &names, &LinearConfig::default(), None, &|| {
        false
    });
    assert!(matches!(
        out,
        Err(TrainError::Unsupported {
            family: "ridge",
            task: Task::Classification
        })
    ));
    // One class present is too few.
    let y = [1, 1, 1, 1];
    let target = Target::Classes {
        y: &y,
        classes: &classes,
    };
    let out = SvmModel::fit(&x, &target, &names, &SvmConfig::default(), None, &|| false);
    assert!(matches!(out, Err(TrainError::TooFewClasses(1))), "{out:?}");
}

#[test]
fn warm_start_continues_from_the_champion() {
    let t = trained_svms()
        .iter()
        .find(|t| t.name == "occupancy")
        .unwrap();
    let (train, _, classes) = datasets::load("occupancy");
    let y = train.class_indices(&classes);
    let target = Target::Classes {
        y: &y,
        classes: &classes,
    };
    let cfg = SvmConfig {
        epochs: 5,
        ..SvmConfig::default()
    };
    let warm = SvmModel::fit(
        &train.x,
        &target,
        &train.features,
        &cfg,
        Some(&t.model),
        &|| false,
    )
    .unwrap();
    assert!(warm.warm_started);
    assert_eq!(warm.steps, t.model.steps + 5 * train.len() as u64);
    let (champion, challenger) = (
        accuracy(&t.model, &t.test, &classes),
        accuracy(&warm, &t.test, &classes),
    );
    println!(
        "occupancy warm start (5 more epochs): accuracy {challenger:.6}, champion {champion:.6}"
    );
    assert!((challenger - champion).abs() <= ACCURACY_TOL);
    // Other classes: the init is ignored.
    let renamed = vec!["no".to_string(), "yes".to_string()];
    let target = Target::Classes {
        y: &y,
        classes: &renamed,
    };
    let cold = SvmModel::fit(
        &train.x,
        &target,
        &train.features,
        &cfg,
        Some(&t.model),
        &|| false,
    )
    .unwrap();
    assert!(!cold.warm_started);
}
