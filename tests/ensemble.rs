//! Ensembles (soft voting, stacking): the one ONNX graph served by the
//! engine (tract) and by onnxruntime equals the in-process ensemble; the
//! ensemble competes as one more `auto` candidate on the reference datasets;
//! exports are deterministic; bad settings are refused by key.

#[path = "common/datasets.rs"]
mod datasets;
#[path = "common/ort.rs"]
mod ort;

use edgeloop::config::{validate_model, ConfigError, ModelConfig};
use edgeloop::ingest::csv_file::LabelledCsv;
use edgeloop::learn::ensemble::{EnsembleError, EnsembleKind, EnsembleMethod, EnsembleModel};
use edgeloop::learn::model::argmax_rows;
use edgeloop::learn::{
    self, offline, Dataset, Family, Model, Task, TrainError, TrainSettings, Trigger,
};
use edgeloop::serve::engine::OnnxModel;

/// Largest difference allowed between a served output and `predict`.
const TOL: f32 = 1e-5;

/// The dataset's train and test splits as datasets over the union of classes.
fn splits(name: &str) -> (Dataset, Dataset, Vec<String>) {
    let (train, test, classes) = datasets::load(name);
    let to_dataset = |s: &datasets::Split| Dataset {
        x: s.x.clone(),
        y: s.class_indices(&classes),
        values: vec![],
        timestamps: (0..s.len() as i64).collect(),
        classes: classes.clone(),
        n_features: s.features.len(),
        task: Task::Classification,
    };
    (to_dataset(&train), to_dataset(&test), train.features)
}

/// Train then test rows in file order, as one dataset (the loop's holdout is
/// the newest 20 %).
fn whole(name: &str) -> (Dataset, Vec<String>) {
    let (train, test, _) = datasets::load(name);
    let mut x = train.x.clone();
    x.extend_from_slice(&test.x);
    let csv = LabelledCsv {
        features: train.features.clone(),
        x,
        labels: train.labels.iter().chain(&test.labels).cloned().collect(),
    };
    (offline::dataset(&csv, Task::Classification), train.features)
}

/// The rows plus rows with one feature missing and a row with all missing.
fn with_missing(x: &[f32], nf: usize) -> Vec<f32> {
    let mut rows = x.to_vec();
    for j in 0..nf.min(8) {
        let mut r = x[j * nf..(j + 1) * nf].to_vec();
        r[j] = f32::NAN;
        rows.extend(r);
    }
    rows.extend(vec![f32::NAN; nf]);
    rows
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// The served (tract) probabilities of `onnx` equal `want` within [`TOL`];
/// returns the largest difference.
fn served_diff(what: &str, onnx: &[u8], x: &[f32], want: &[f32]) -> f32 {
    let served = OnnxModel::load(onnx).unwrap_or_else(|e| panic!("{what}: {e}"));
    let worst = max_diff(&served.predict_proba(x).unwrap(), want);
    assert!(
        worst <= TOL,
        "{what}: served vs in-process differ by {worst}"
    );
    worst
}

/// onnxruntime's (probabilities, labels) for `onnx` on `x`, through
/// `tests/fixtures/trees_family/run_ort.py`.
fn onnxruntime(onnx: &[u8], x: &[f32], nf: usize) -> (Vec<f32>, Vec<usize>) {
    let outputs = ort::run_onnxruntime(onnx, x, nf);
    let list = |name: &str| outputs[name].as_array().unwrap().clone();
    (
        list("probabilities")
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect(),
        list("label")
            .iter()
            .map(|v| v.as_i64().unwrap() as usize)
            .collect(),
    )
}

fn graph_ops(onnx: &[u8]) -> (Vec<String>, Vec<String>) {
    use prost::Message;
    let proto = tract_onnx::pb::ModelProto::decode(onnx).unwrap();
    let graph = proto.graph.unwrap();
    let ops = graph.node.iter().map(|n| n.op_type.clone()).collect();
    let domains = proto
        .opset_import
        .iter()
        .map(|o| o.domain.clone())
        .collect();
    (ops, domains)
}

#[test]
fn served_ensembles_equal_the_in_process_ones_with_a_forest_member() {
    let (train, test, features) = splits("gas12");
    let nf = features.len();
    let x = with_missing(&test.x, nf);
    let cfg = ModelConfig::default();
    let families = [Family::Forest, Family::Logistic, Family::Tree];
    for kind in [EnsembleKind::Voting, EnsembleKind::Stacking] {
        let e = EnsembleModel::fit(kind, &families, &cfg, &train, &features, &|| false).unwrap();
        let model = Model::Ensemble(Box::new(e));
        let onnx = model.to_onnx(3);
        let want = model.predict(&x);
        let tract = served_diff(kind.name(), &onnx, &x, &want);
        let (ort_proba, ort_label) = onnxruntime(&onnx, &x, nf);
        let ort = max_diff(&ort_proba, &want);
        println!(
            "gas12 {}: {} rows, ONNX {} B, max |served − predict| tract {tract:e}, onnxruntime {ort:e}",
            kind.name(),
            x.len() / nf,
            onnx.len()
        );
        assert!(ort <= TOL, "{}: onnxruntime differs by {ort}", kind.name());
        assert_eq!(ort_label, argmax_rows(&want, test.classes.len()));
        let (ops, domains) = graph_ops(&onnx);
        assert_eq!(ops.iter().filter(|o| *o == "ArgMax").count(), 1, "{ops:?}");
        assert!(domains.iter().any(|d| d == "ai.onnx.ml"), "{domains:?}");
        let combine = match kind {
            EnsembleKind::Voting => "Sum",
            EnsembleKind::Stacking => "Concat",
        };
        assert!(ops.iter().any(|o| o == combine), "{ops:?}");
        let meta = edgeloop::onnx::export::read_metadata(&onnx).unwrap();
        assert_eq!(meta.family.as_deref(), Some("ensemble"));
        assert_eq!(meta.classes, test.classes);
        assert_eq!(meta.features, features);
        // The model stores and reloads as JSON (the loop's store); f64 card
        // fields may move by an ulp through serde_json, the graph may not.
        let json = serde_json::to_string(&model).unwrap();
        let reloaded = Model::from_json(&json).expect("reloads");
        assert!(
            reloaded.to_onnx(3) == onnx,
            "{}: reloaded graph differs",
            kind.name()
        );
    }
}

#[test]
fn same_seed_gives_identical_onnx_bytes() {
    let (train, _, features) = splits("basic_motions");
    let fit = |seed: u64| {
        let mut cfg = ModelConfig {
            folds: 3,
            ..ModelConfig::default()
        };
        cfg.forest.seed = seed;
        cfg.mlp.seed = seed;
        let families = [Family::Forest, Family::Mlp, Family::Logistic];
        EnsembleModel::fit(
            EnsembleKind::Stacking,
            &families,
            &cfg,
            &train,
            &features,
            &|| false,
        )
        .unwrap()
        .to_onnx(1)
    };
    let first = fit(7);
    assert!(first == fit(7), "same seed, different bytes");
    assert!(first != fit(8), "the seed has no effect");
}

fn train(data: &Dataset, features: &[String], model: &ModelConfig) -> learn::Training {
    let settings = TrainSettings {
        pipeline: "test",
        features,
        model,
        progress: None,
        peak_rss: false,
    };
    learn::train_dataset(&settings, data, None, 1, Trigger::Manual, None, &|| false).unwrap()
}

/// `auto` with an ensemble of its best 3 candidates on each reference
/// classification dataset: the ensemble's holdout score against its best
/// member's (the best candidate's).
#[test]
fn ensembles_compete_as_one_more_candidate_on_the_reference_datasets() {
    for kind in [EnsembleMethod::Voting, EnsembleMethod::Stacking] {
        let mut at_least_best = 0;
        for name in datasets::CLASSIFICATION {
            let (data, features) = whole(name);
            let cfg = ModelConfig {
                family: Family::Auto,
                ensemble: kind,
                ensemble_size: 3,
                ..ModelConfig::default()
            };
            let t = train(&data, &features, &cfg);
            let (ens, others): (Vec<_>, Vec<_>) =
                t.candidates.iter().partition(|c| c.family == "ensemble");
            assert_eq!(ens.len(), 1, "{name}: one ensemble candidate");
            let ens = ens[0];
            let members: Vec<String> = ens.hyperparameters["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| m["family"].as_str().unwrap_or("?").to_string())
                        .collect()
                })
                .unwrap_or_default();
            let best = others
                .iter()
                .map(|c| c.holdout_score.unwrap())
                .fold(f64::MIN, f64::max);
            let score = ens.holdout_score.unwrap();
            let scores: Vec<String> = others
                .iter()
                .map(|c| format!("{} {:.4}", c.family, c.holdout_score.unwrap()))
                .collect();
            println!(
                "{name:<13} {kind:?}: ensemble {score:.4} of {members:?}, best member {best:.4} \
                 (candidates: {}); ensemble trained in {:.0} ms, ONNX {} B",
                scores.join(", "),
                ens.training_ms,
                ens.onnx_bytes
            );
            if kind == EnsembleMethod::Stacking {
                println!(
                    "  meta-model L2 per sample → mean CV accuracy on the out-of-fold outputs: {}",
                    ens.hyperparameters["meta"]["l2_cv"]
                );
            }
            assert_eq!(members.len(), 3, "{name}: members");
            if score >= best {
                at_least_best += 1;
            }
            if t.chosen.card.family == "ensemble" {
                let holdout = data.temporal_split(cfg.holdout_fraction).1;
                let want = t.chosen.model.predict(&holdout.x);
                served_diff(name, &t.chosen.onnx, &holdout.x, &want);
                assert_eq!(t.chosen.card.candidates.len(), 6);
                assert_eq!(
                    t.chosen.card.hyperparameters["kind"],
                    format!("{kind:?}").to_lowercase()
                );
            }
        }
        assert!(
            at_least_best >= 2,
            "{kind:?}: the ensemble reaches its best member on {at_least_best} of 3 datasets"
        );
    }
}

fn invalid_key(r: Result<(), ConfigError>) -> String {
    match r {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn bad_ensemble_settings_are_refused_naming_the_key() {
    let auto = |f: fn(&mut ModelConfig)| {
        let mut m = ModelConfig {
            family: Family::Auto,
            ensemble: EnsembleMethod::Stacking,
            ..ModelConfig::default()
        };
        f(&mut m);
        validate_model(&m, Some(Task::Classification), "model.")
    };
    assert!(auto(|_| {}).is_ok());
    assert_eq!(
        invalid_key(auto(|m| m.ensemble_size = 1)),
        "model.ensemble_size"
    );
    assert_eq!(
        invalid_key(auto(|m| m.candidates = vec![Family::Forest])),
        "model.candidates"
    );
    // Ridge cannot learn classification: one candidate left.
    assert_eq!(
        invalid_key(auto(|m| m.candidates = vec![Family::Forest, Family::Ridge])),
        "model.candidates"
    );
    assert_eq!(
        invalid_key(auto(|m| m.family = Family::Forest)),
        "model.ensemble"
    );
    assert_eq!(
        invalid_key(auto(|m| m.evaluation = learn::select::Evaluation::Kfold)),
        "model.ensemble"
    );
    // Names outside the documented values are refused when parsed.
    let parse = |toml_text: &str| toml::from_str::<ModelConfig>(toml_text);
    assert!(parse("ensemble = \"bagging\"").is_err());
    assert!(parse("family = \"ensemble\"").is_err());
    assert!(parse("ensemble = \"voting\"\nensemble_size = 4").is_ok());

    // Unvalidated settings reach the trainer: one member is refused, typed.
    let (data, features) = whole("basic_motions");
    let cfg = ModelConfig {
        family: Family::Auto,
        candidates: vec![Family::Logistic],
        ensemble: EnsembleMethod::Stacking,
        ..ModelConfig::default()
    };
    let settings = TrainSettings {
        pipeline: "test",
        features: &features,
        model: &cfg,
        progress: None,
        peak_rss: false,
    };
    let err = learn::train_dataset(&settings, &data, None, 1, Trigger::Manual, None, &|| false);
    assert!(
        matches!(
            err,
            Err(TrainError::Ensemble(EnsembleError::TooFewMembers(1)))
        ),
        "{:?}",
        err.err()
    );
}
