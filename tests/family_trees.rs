//! The `tree` and `forest` families against their references.
//!
//! * Holdout scores against scikit-learn's same estimators with the same
//!   hyperparameters on the same splits: `tests/fixtures/trees_family/trees_family.json`,
//!   written by `gen_trees_family.py` beside it (means over 10 random states;
//!   see its docstring). Rerun the script to regenerate; never edit the JSON.
//! * The exported ONNX models against onnxruntime, run by
//!   `tests/fixtures/trees_family/run_ort.py` on every test row plus rows with
//!   missing values: labels equal, probabilities / predictions within 1e-5 of
//!   `predict`.
//! * Classifiers through the serving engine (tract) on a few rows with a small
//!   forest (tract's own tree-ensemble operator is slow).
//! * Determinism and config validation.
//!
//! Needs `python3` with numpy and onnxruntime (`tests/fixtures/requirements.txt`).

#[path = "common/datasets.rs"]
mod datasets;
#[path = "common/ort.rs"]
mod ort;

use ort::run_onnxruntime;

use std::time::Instant;

use edgeloop::learn::forest::{ForestConfig, ForestModel, MaxFeatures};
use edgeloop::learn::model::{argmax_rows, Target, Task};
use edgeloop::learn::tree::{TreeConfig, TreeModel};
use edgeloop::serve::engine::OnnxModel;
use serde_json::Value;

/// Largest difference allowed between our holdout score and scikit-learn's.
const SCORE_TOL: f64 = 0.02;
/// Largest difference allowed between `predict` and onnxruntime / tract.
const OUTPUT_TOL: f32 = 1e-5;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/trees_family/trees_family.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// Accuracy of probabilities `[n, n_classes]` against class indices.
fn accuracy(proba: &[f32], n_classes: usize, y: &[usize]) -> f64 {
    let pred = argmax_rows(proba, n_classes);
    pred.iter().zip(y).filter(|(p, y)| p == y).count() as f64 / y.len() as f64
}

/// Coefficient of determination, as `sklearn.metrics.r2_score`.
fn r2(pred: &[f32], y: &[f64]) -> f64 {
    let mean = y.iter().sum::<f64>() / y.len() as f64;
    let ss_res: f64 = pred
        .iter()
        .zip(y)
        .map(|(p, y)| (f64::from(*p) - y).powi(2))
        .sum();
    let ss_tot: f64 = y.iter().map(|y| (y - mean).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

/// The test rows plus rows with missing values: one feature missing (each
/// feature in turn, on the first rows), and a row with every feature missing.
fn rows_with_missing(x: &[f32], nf: usize) -> Vec<f32> {
    let mut rows = x.to_vec();
    let n = x.len() / nf;
    for j in 0..nf.min(10) {
        let mut r = x[(j % n) * nf..(j % n + 1) * nf].to_vec();
        r[j] = f32::NAN;
        rows.extend(r);
    }
    rows.extend(vec![f32::NAN; nf]);
    rows
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// Asserts onnxruntime's outputs for `onnx` equal `predict` on `x`: labels
/// exactly, probabilities or predictions within [`OUTPUT_TOL`]. Returns the
/// largest difference.
fn check_onnxruntime(
    what: &str,
    onnx: &[u8],
    predict: &[f32],
    x: &[f32],
    nf: usize,
    task: Task,
    n_classes: usize,
) -> f32 {
    let out = run_onnxruntime(onnx, x, nf);
    let n = x.len() / nf;
    let (got, name) = match task {
        Task::Classification => (floats(&out["probabilities"]), "probabilities"),
        Task::Regression => (floats(&out["prediction"]), "prediction"),
    };
    assert_eq!(got.len(), predict.len(), "{what}: {name} length");
    let max_diff = got
        .iter()
        .zip(predict)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff <= OUTPUT_TOL,
        "{what}: {name} differ from onnxruntime by {max_diff}"
    );
    if task == Task::Classification {
        let labels: Vec<usize> = out["label"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap() as usize)
            .collect();
        assert_eq!(labels.len(), n, "{what}: label length");
        assert_eq!(labels, argmax_rows(predict, n_classes), "{what}: labels");
    }
    max_diff
}

/// Fits both families with their defaults on `name`, compares the holdout
/// scores with scikit-learn's and the ONNX exports with onnxruntime.
fn check_dataset(name: &str) {
    let reference = &fixture()["datasets"][name];
    let (train, test, classes) = datasets::load(name);
    let nf = train.features.len();
    let regression = datasets::REGRESSION.contains(&name);
    let (y_train, v_train) = if regression {
        (vec![], train.values())
    } else {
        (train.class_indices(&classes), vec![])
    };
    let target = if regression {
        Target::Values(&v_train)
    } else {
        Target::Classes {
            y: &y_train,
            classes: &classes,
        }
    };
    let score = |p: &[f32]| {
        if regression {
            r2(p, &test.values())
        } else {
            accuracy(p, classes.len(), &test.class_indices(&classes))
        }
    };
    let rows = rows_with_missing(&test.x, nf);
    let n_test = test.len() * classes.len().max(1);
    let metric = reference["metric"].as_str().unwrap();
    // One fit per seed (the fixture's random states: 100 for a tree, 10 for a
    // forest): the score compared is the mean over seeds; the first seed's
    // model is the one exported.
    for family in ["tree", "forest"] {
        let seeds = reference_seeds(family);
        let started = Instant::now();
        let fits: Vec<(Vec<f32>, Vec<u8>, Value)> = seeds
            .iter()
            .map(|&seed| match family {
                "tree" => {
                    let cfg = TreeConfig {
                        seed,
                        ..TreeConfig::default()
                    };
                    let m =
                        TreeModel::fit(&train.x, &target, &train.features, &cfg, None, &|| false)
                            .unwrap();
                    (m.predict(&rows), m.to_onnx(1), m.hyperparameters())
                }
                _ => {
                    let cfg = ForestConfig {
                        seed,
                        ..ForestConfig::default()
                    };
                    let m =
                        ForestModel::fit(&train.x, &target, &train.features, &cfg, None, &|| false)
                            .unwrap();
                    (m.predict(&rows), m.to_onnx(1), m.hyperparameters())
                }
            })
            .collect();
        let fit_ms = started.elapsed().as_millis() / seeds.len() as u128;
        let scores: Vec<f64> = fits.iter().map(|(p, _, _)| score(&p[..n_test])).collect();
        let ours = scores.iter().sum::<f64>() / scores.len() as f64;
        let (predict, onnx, hyper) = &fits[0];
        let task = if regression {
            Task::Regression
        } else {
            Task::Classification
        };
        let diff = check_onnxruntime(
            &format!("{name} {family}"),
            onnx,
            predict,
            &rows,
            nf,
            task,
            classes.len(),
        );
        let sk = &reference[family];
        let sk_mean = sk["mean"].as_f64().unwrap();
        let (lo, hi) = scores
            .iter()
            .fold((1f64, f64::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)));
        println!(
            "{name} {family}: {metric} edgeloop mean {ours:.4} (min {lo:.4}, max {hi:.4}), \
             sklearn mean {sk_mean:.4} (min {}, max {}) over {} seeds; fit {fit_ms} ms per model; first seed's ONNX {} bytes, \
             max |onnxruntime − predict| {diff:e}; {hyper}",
            sk["min"],
            sk["max"],
            seeds.len(),
            onnx.len()
        );
        assert!(
            (ours - sk_mean).abs() <= SCORE_TOL,
            "{name} {family}: {metric} {ours:.4} vs sklearn {sk_mean:.4}"
        );
    }
}

/// The fixture's random states for `family` (`0..n_random_states`), used
/// as our seeds.
fn reference_seeds(family: &str) -> Vec<u64> {
    (0..fixture()["n_random_states"][family].as_u64().unwrap()).collect()
}

#[test]
fn occupancy_matches_sklearn_and_onnxruntime() {
    check_dataset("occupancy");
}

#[test]
fn gas12_matches_sklearn_and_onnxruntime() {
    check_dataset("gas12");
}

#[test]
fn basic_motions_matches_sklearn_and_onnxruntime() {
    check_dataset("basic_motions");
}

#[test]
fn air_quality_regressors_match_sklearn_and_onnxruntime() {
    check_dataset("air_quality");
}

/// A small forest and a tree of each classification dataset through the
/// serving engine (tract) on 50 rows, some with missing values.
#[test]
fn classifiers_serve_in_the_engine() {
    for name in ["occupancy", "gas12"] {
        let (train, test, classes) = datasets::load(name);
        let nf = train.features.len();
        let y = train.class_indices(&classes);
        let target = Target::Classes {
            y: &y,
            classes: &classes,
        };
        let cfg = ForestConfig {
            n_trees: 5,
            max_depth: 6,
            ..ForestConfig::default()
        };
        let forest =
            ForestModel::fit(&train.x, &target, &train.features, &cfg, None, &|| false).unwrap();
        let tree_cfg = TreeConfig {
            max_depth: 6,
            ..TreeConfig::default()
        };
        let tree = TreeModel::fit(&train.x, &target, &train.features, &tree_cfg, None, &|| {
            false
        })
        .unwrap();
        let rows = rows_with_missing(&test.x[..40 * nf], nf);
        for (family, onnx, predict) in [
            ("forest", forest.to_onnx(3), forest.predict(&rows)),
            ("tree", tree.to_onnx(3), tree.predict(&rows)),
        ] {
            let engine = OnnxModel::load(&onnx).unwrap_or_else(|e| panic!("{name} {family}: {e}"));
            assert_eq!(engine.classes(), &classes[..]);
            assert_eq!(engine.task(), Task::Classification);
            let got = engine.predict_proba(&rows).unwrap();
            assert_eq!(got.len(), predict.len());
            let max_diff = got
                .iter()
                .zip(&predict)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("{name} {family} in tract: max |tract − predict| {max_diff:e}");
            assert!(
                max_diff <= OUTPUT_TOL,
                "{name} {family}: tract differs by {max_diff}"
            );
        }
    }
}

/// Same seed and data give the same ONNX bytes, whatever the number of
/// threads; another seed gives another forest.
#[test]
fn forest_is_deterministic_across_threads() {
    for name in ["gas12", "air_quality"] {
        let (train, _, classes) = datasets::load(name);
        let (y, v) = if classes.is_empty() {
            (vec![], train.values())
        } else {
            (train.class_indices(&classes), vec![])
        };
        let target = if classes.is_empty() {
            Target::Values(&v)
        } else {
            Target::Classes {
                y: &y,
                classes: &classes,
            }
        };
        let fit = |n_jobs, seed| {
            let cfg = ForestConfig {
                n_trees: 6,
                max_depth: 8,
                n_jobs,
                seed,
                ..ForestConfig::default()
            };
            ForestModel::fit(&train.x, &target, &train.features, &cfg, None, &|| false)
                .unwrap()
                .to_onnx(1)
        };
        let one = fit(1, 7);
        assert!(
            one == fit(1, 7),
            "{name}: same seed, n_jobs 1, different bytes"
        );
        assert!(one == fit(2, 7), "{name}: n_jobs 1 and 2 differ");
        assert!(one == fit(3, 7), "{name}: n_jobs 1 and 3 differ");
        assert!(one != fit(2, 8), "{name}: seed has no effect");
    }
}

#[test]
fn validate_refuses_bad_values_by_key() {
    let forest = |f: fn(&mut ForestConfig)| {
        let mut c = ForestConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert_eq!(forest(|c| c.n_trees = 0), "n_trees: 0 must be at least 1");
    assert!(forest(|c| c.max_depth = -1).starts_with("max_depth: -1 "));
    assert!(forest(|c| c.min_samples_leaf = 0).starts_with("min_samples_leaf: 0 "));
    assert!(forest(|c| c.min_samples_split = 1).starts_with("min_samples_split: 1 "));
    assert!(forest(|c| c.n_jobs = -2).starts_with("n_jobs: -2 "));
    assert!(
        forest(|c| c.max_features = MaxFeatures::Fraction(1.5)).starts_with("max_features: 1.5 ")
    );
    assert!(forest(|c| c.max_features = MaxFeatures::Fraction(0.0)).starts_with("max_features: 0 "));
    assert!(ForestConfig::default().validate().is_ok());
    let tree = |f: fn(&mut TreeConfig)| {
        let mut c = TreeConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(tree(|c| c.max_depth = -1).starts_with("max_depth: -1 "));
    assert!(tree(|c| c.min_samples_leaf = 0).starts_with("min_samples_leaf: 0 "));
    assert!(TreeConfig::default().validate().is_ok());
    // Unknown keys are refused; absent keys take the defaults.
    assert!(serde_json::from_str::<ForestConfig>(r#"{"trees": 5}"#).is_err());
    assert!(serde_json::from_str::<TreeConfig>(r#"{"criterion": "log_loss"}"#).is_err());
    let c: TreeConfig = serde_json::from_str(r#"{"criterion": "entropy"}"#).unwrap();
    assert_eq!(
        c,
        TreeConfig {
            criterion: edgeloop::learn::tree::Criterion::Entropy,
            ..TreeConfig::default()
        }
    );
}
