//! Every model family through the loop's one training path
//! (`learn::train_dataset`): `auto` selection on one split, k-fold
//! cross-validation against scikit-learn, served outputs against the
//! in-process model, determinism.

#[path = "common/datasets.rs"]
mod datasets;

use edgeloop::config::ModelConfig;
use edgeloop::ingest::csv_file::LabelledCsv;
use edgeloop::learn::offline;
use edgeloop::learn::select::{Evaluation, Metric};
use edgeloop::learn::{self, Family, Task, Trigger};
use edgeloop::serve::engine::OnnxModel;

use datasets::{settings, stream as dataset, train};

/// The best holdout score among the candidates.
fn best_holdout(training: &learn::Training) -> f64 {
    training
        .candidates
        .iter()
        .map(|c| c.holdout_score.unwrap())
        .fold(f64::MIN, f64::max)
}

fn fixture() -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/families/families.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Served (tract) outputs equal the in-process model's on `x`.
fn assert_served_equals_in_process(trained: &learn::TrainedVersion, x: &[f32]) {
    let served = OnnxModel::load(&trained.onnx).expect("the engine loads the export");
    let got = served.predict_proba(x).unwrap();
    let want = trained.model.predict(x);
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 1e-5,
        "{}: served vs in-process differ by {worst}",
        trained.card.family
    );
}

#[test]
fn kfold_cross_validation_equals_sklearn_for_the_logistic_family() {
    let expected = &fixture()["occupancy_logistic_cv"];
    let (train, _, _) = datasets::load("occupancy");
    let csv = LabelledCsv {
        features: train.features.clone(),
        x: train.x.clone(),
        labels: train.labels.clone(),
    };
    let data = offline::dataset(&csv, Task::Classification);
    let cfg = ModelConfig {
        l2: expected["l2"].as_f64().unwrap(),
        max_iter: 2000,
        folds: 5,
        ..ModelConfig::default()
    };
    let cv = learn::cross_validate(
        Family::Logistic,
        &cfg,
        &data,
        &train.features,
        Metric::Accuracy,
        &|| false,
    )
    .unwrap();
    let want: Vec<f64> = expected["per_fold"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    println!(
        "per-fold accuracy: edgeloop {:?}, scikit-learn {want:?}",
        cv.per_fold
    );
    assert_eq!(cv.folds, 5);
    for (got, want) in cv.per_fold.iter().zip(&want) {
        assert!((got - want).abs() < 1e-9, "fold accuracy {got} vs {want}");
    }
    assert!((cv.mean - expected["mean"].as_f64().unwrap()).abs() < 1e-9);
    assert!((cv.std - expected["std"].as_f64().unwrap()).abs() < 1e-9);
}

#[test]
fn auto_trains_every_classifier_on_one_split_and_serves_the_best() {
    let (data, features) = dataset("occupancy", Task::Classification);
    // datatraining then datatest in file order; the newest 20 % is the holdout.
    let model = ModelConfig {
        family: Family::Auto,
        ..ModelConfig::default()
    };
    let training = train(&data, &features, &model);
    let families: Vec<&str> = training
        .candidates
        .iter()
        .map(|c| c.family.as_str())
        .collect();
    assert_eq!(families, ["logistic", "mlp", "tree", "forest", "svm"]);
    let first = &training.candidates[0];
    for c in &training.candidates {
        println!(
            "{:<9} holdout accuracy {:.4}  train {:.0} ms  onnx {} B  p50 {:?} µs",
            c.family,
            c.holdout_score.unwrap(),
            c.training_ms,
            c.onnx_bytes,
            c.predict_p50_us
        );
        assert_eq!((c.n_train, c.n_holdout), (first.n_train, first.n_holdout));
        assert_eq!(c.holdout_time_range_ms, first.holdout_time_range_ms);
        assert_eq!(c.metric, "accuracy");
        assert!(c.holdout.as_ref().unwrap().accuracy == c.holdout_score.unwrap());
        assert!(c.predict_p50_us.is_some() && c.predict_batch_p50_us_per_row.is_some());
    }
    let best = best_holdout(&training);
    let chosen = &training.chosen;
    assert_eq!(chosen.card.holdout_score, Some(best));
    assert_eq!(chosen.card.candidates.len(), 5);
    assert_eq!(chosen.card.onnx_bytes, chosen.onnx.len() as u64);
    assert_eq!(chosen.card.n_samples, data.len() as u64);
    let holdout = data.temporal_split(0.2).1;
    assert_served_equals_in_process(chosen, &holdout.x);
}

#[test]
fn auto_trains_every_regressor_on_one_split_and_serves_the_best() {
    let (data, features) = dataset("air_quality", Task::Regression);
    let model = ModelConfig {
        family: Family::Auto,
        ..ModelConfig::default()
    };
    let training = train(&data, &features, &model);
    let families: Vec<&str> = training
        .candidates
        .iter()
        .map(|c| c.family.as_str())
        .collect();
    assert_eq!(families, ["linear", "ridge", "mlp", "tree", "forest"]);
    for c in &training.candidates {
        let r = c.holdout_regression.as_ref().unwrap();
        println!(
            "{:<7} R² {:?}  RMSE {:.4}  MAE {:.4}",
            c.family, r.r2, r.rmse, r.mae
        );
        assert_eq!(c.holdout_score, r.r2);
    }
    let best = best_holdout(&training);
    assert_eq!(training.chosen.card.holdout_score, Some(best));
    let holdout = data.temporal_split(0.2).1;
    assert_served_equals_in_process(&training.chosen, &holdout.x);
}

#[test]
fn kfold_evaluation_puts_cross_validation_in_every_card() {
    let (data, features) = dataset("basic_motions", Task::Classification);
    let model = ModelConfig {
        family: Family::Auto,
        candidates: vec![Family::Logistic, Family::Tree],
        evaluation: Evaluation::Kfold,
        folds: 4,
        ..ModelConfig::default()
    };
    let training = train(&data, &features, &model);
    for c in &training.candidates {
        let cv = c.cv.as_ref().unwrap();
        assert_eq!(
            (cv.folds, cv.per_fold.len(), cv.metric.as_str()),
            (4, 4, "accuracy")
        );
    }
    let best = training
        .candidates
        .iter()
        .map(|c| c.cv.as_ref().unwrap().mean)
        .fold(f64::MIN, f64::max);
    assert_eq!(training.chosen.card.cv.as_ref().unwrap().mean, best);
}

#[test]
fn each_family_is_deterministic_through_the_loop() {
    let (data, features) = dataset("basic_motions", Task::Classification);
    for family in [
        Family::Logistic,
        Family::Mlp,
        Family::Tree,
        Family::Forest,
        Family::Svm,
    ] {
        let model = ModelConfig {
            family,
            ..ModelConfig::default()
        };
        let (a, b) = (
            train(&data, &features, &model).chosen,
            train(&data, &features, &model).chosen,
        );
        assert_eq!(a.onnx, b.onnx, "{family}: same data and seed, same bytes");
        assert_served_equals_in_process(&a, &data.x);
    }
}

#[test]
fn a_family_that_cannot_learn_the_task_is_refused() {
    let (data, features) = dataset("air_quality", Task::Regression);
    let model = ModelConfig {
        family: Family::Svm,
        ..ModelConfig::default()
    };
    let err = learn::train_dataset(
        &settings(&features, &model),
        &data,
        None,
        1,
        Trigger::Manual,
        None,
        &|| false,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "family `svm` does not support regression");
}
