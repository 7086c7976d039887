//! Categorical features (issue 16) against scikit-learn
//! (`tests/fixtures/preprocess/gen_mode.py`, which says how the reference
//! is computed):
//! - the full pipeline with a categorical `mode` (markers and ranges →
//!   median imputation with indicators → Tukey clipping → standard scaling,
//!   one-hot of `mode` with `max_categories = 5` → PCA(6) → logistic) equals
//!   scikit-learn's `Pipeline(ColumnTransformer, …)` within 1e-5: learned
//!   and infrequent categories, explained variance ratios, probabilities of
//!   later rows with an unknown and a missing mode (all zeros); its export,
//!   which takes the strings, gives the in-process probabilities on tract
//!   and on onnxruntime within 1e-5;
//! - a soft-voting ensemble of preprocessed members (logistic and MLP, each
//!   behind its own fitted steps, the one-hot of `mode` included) exports
//!   one graph, sharing the strings' input, whose probabilities equal the
//!   in-process ensemble's on tract and onnxruntime within 1e-5;
//! - the decoder reads a categorical field's string as a code of the
//!   pipeline's book, kept in the store's `state` and read back after a
//!   reopen; a store written before categorical fields existed opens, its
//!   samples read as before, and its book starts empty;
//! - `edgeloop train --categorical mode` on the generated CSV lists the
//!   categories in the card and exports a model that takes the strings;
//! - end to end, over a real mosquitto: the daemon ingests the training
//!   rows as MQTT payloads with `mode` as a string, trains at 400 labels,
//!   exports and serves; the later rows' predictions over HTTP (strings in
//!   the rows) and over MQTT (unlabelled payloads) equal scikit-learn's
//!   Pipeline fitted on the same rows within 1e-5, and rows whose mode is
//!   unknown get the all-zeros encoding's probabilities.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use edgeloop::ingest::categories::CategoryBook;
use edgeloop::learn::preprocess::{PreprocessConfig, CATEGORIES_INPUT};
use edgeloop::learn::{fit_model, Dataset, Family, Model, ModelConfig, Task};
use edgeloop::onnx::engine::{Data, EngineKind, LoadOptions, Named, OnnxModel, Session, Tensor};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> Value {
    serde_json::from_slice(
        &std::fs::read(root().join("tests/fixtures/preprocess/mode.json")).unwrap(),
    )
    .unwrap()
}

fn names(v: &Value) -> Vec<String> {
    serde_json::from_value(v.clone()).unwrap()
}

/// `got` equals `want` within `tol` (absolute).
fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn flat(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
        .collect()
}

/// JSON row objects as `[n, features]` f32 with `mode` as its code in
/// `book` (given in order of first appearance, as the decoder does).
fn encode(rows: &Value, features: &[String], book: &CategoryBook) -> Vec<f32> {
    rows.as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            features
                .iter()
                .map(|f| match &r[f] {
                    Value::String(s) => book.code(0, s).unwrap(),
                    Value::Number(n) => n.as_f64().unwrap() as f32,
                    _ => f32::NAN,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn ort_options() -> LoadOptions {
    LoadOptions::default()
}

#[test]
fn the_pipeline_with_a_categorical_mode_equals_scikit_learn_on_tract_and_onnxruntime() {
    let r = reference();
    let features = names(&r["features"]);
    let nf = features.len();
    let mut cfg: PreprocessConfig = serde_json::from_value(r["config"].clone()).unwrap();
    cfg.validate(&features).unwrap();
    let book = Arc::new(CategoryBook::in_memory(&cfg.categorical));
    cfg.categories = Some(book.clone());
    let model_cfg = ModelConfig {
        preprocess: cfg.clone(),
        family: Family::Logistic,
        l2: r["l2"].as_f64().unwrap(),
        max_iter: 10_000,
        ..ModelConfig::default()
    };
    let cleaning = cfg.cleaning();
    let mut x_train = encode(&r["train_rows"], &features, &book);
    cleaning.apply(&features, &mut x_train);
    let labels = names(&r["train_labels"]);
    let classes = names(&r["classes"]);
    let mut data = Dataset::empty(Task::Classification, classes.clone(), nf);
    data.timestamps = (0..labels.len() as i64).collect();
    data.x = x_train;
    data.y = labels
        .iter()
        .map(|l| classes.iter().position(|c| c == l).unwrap())
        .collect();
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
    let one_hot = &pre.steps.one_hot;
    assert_eq!(one_hot.len(), 1);
    assert_eq!(one_hot[0].categories, names(&r["categories"]));
    assert_eq!(one_hot[0].infrequent, names(&r["infrequent"]));
    let ratios = &pre.steps.pca.as_ref().unwrap().explained_variance_ratio;
    let want_ratios: Vec<f64> =
        serde_json::from_value(r["explained_variance_ratio"].clone()).unwrap();
    close("explained_variance_ratio", ratios, &want_ratios, 1e-5);

    // Later rows: an unknown mode (party) and missing ones (null) among them.
    let raw = encode(&r["test_rows"], &features, &book);
    let modes: Vec<&Value> = r["test_rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| &o["mode"])
        .collect();
    assert!(modes.iter().any(|m| m.is_null()) && modes.iter().any(|m| *m == "party"));
    let mut cleaned = raw.clone();
    cleaning.apply(&features, &mut cleaned);
    let ours = f64s(&model.predict(&cleaned));
    close(
        "probabilities vs scikit-learn",
        &ours,
        &flat(&r["test_probabilities"]),
        1e-5,
    );
    // Every row with a mode never seen: scikit-learn's all-zeros encoding.
    let mut unknown = cleaned.clone();
    let party = book.code(0, "party").unwrap();
    unknown.chunks_exact_mut(nf).for_each(|row| row[2] = party);
    close(
        "unknown mode vs scikit-learn",
        &f64s(&model.predict(&unknown)),
        &flat(&r["unknown_mode_probabilities"]),
        1e-5,
    );

    // The export takes the raw readings and the strings.
    let onnx = cleaning.wrap_onnx(&features, model.to_onnx(1));
    for kind in [EngineKind::Tract, EngineKind::Ort] {
        let served = OnnxModel::load_with(&onnx, kind, &ort_options()).unwrap();
        assert!(served.is_categorical("mode") && !served.is_categorical("co2"));
        let got = served.predict_proba(&raw).unwrap();
        close(&format!("{kind:?} vs in-process"), &f64s(&got), &ours, 1e-5);
        // The graph itself, fed strings: the first later row with mode
        // "party" gives the unknown-mode probabilities.
        let session = Session::load(&onnx, kind, &ort_options()).unwrap();
        let first = &raw[..nf];
        let out = session
            .run(&[
                Named::new(
                    "features",
                    Tensor::new(vec![1, nf], Data::F32(first.to_vec())).unwrap(),
                ),
                Named::new(
                    CATEGORIES_INPUT,
                    Tensor::new(vec![1, 1], Data::String(vec!["party".into()])).unwrap(),
                ),
            ])
            .unwrap();
        let p = out
            .iter()
            .find(|o| o.name == "probabilities")
            .unwrap()
            .tensor
            .data
            .to_f32()
            .unwrap();
        close(
            &format!("{kind:?} graph on the string party"),
            &f64s(&p),
            &flat(&r["unknown_mode_probabilities"])[..3],
            1e-5,
        );
    }
}

/// The fixture's training rows as a dataset (cleaned) with its config and
/// book, and the later rows raw.
fn fixture_data(r: &Value) -> (ModelConfig, Dataset, Vec<f32>) {
    let features = names(&r["features"]);
    let mut cfg: PreprocessConfig = serde_json::from_value(r["config"].clone()).unwrap();
    let book = Arc::new(CategoryBook::in_memory(&cfg.categorical));
    cfg.categories = Some(book.clone());
    let mut x = encode(&r["train_rows"], &features, &book);
    cfg.cleaning().apply(&features, &mut x);
    let classes = names(&r["classes"]);
    let mut data = Dataset::empty(Task::Classification, classes.clone(), features.len());
    let labels = names(&r["train_labels"]);
    data.timestamps = (0..labels.len() as i64).collect();
    data.x = x;
    data.y = labels
        .iter()
        .map(|l| classes.iter().position(|c| c == l).unwrap())
        .collect();
    let raw = encode(&r["test_rows"], &features, &book);
    let model_cfg = ModelConfig {
        preprocess: cfg,
        l2: r["l2"].as_f64().unwrap(),
        max_iter: 2_000,
        ..ModelConfig::default()
    };
    (model_cfg, data, raw)
}

#[test]
fn a_voting_ensemble_of_preprocessed_members_exports_and_equals_in_process() {
    use edgeloop::learn::ensemble::{EnsembleKind, EnsembleModel};
    let r = reference();
    let features = names(&r["features"]);
    let (cfg, data, raw) = fixture_data(&r);
    let e = EnsembleModel::fit(
        EnsembleKind::Voting,
        &[Family::Logistic, Family::Mlp],
        &cfg,
        &data,
        &features,
        &|| false,
    )
    .unwrap();
    assert!(e
        .members
        .iter()
        .all(|m| matches!(m, Model::Preprocessed(_))));
    let cleaning = cfg.preprocess.cleaning();
    let mut cleaned = raw.clone();
    cleaning.apply(&features, &mut cleaned);
    let ours = f64s(&e.predict(&cleaned));
    // The members' mean, each through its own steps.
    let m0 = e.members[0].predict(&cleaned);
    let m1 = e.members[1].predict(&cleaned);
    let mean: Vec<f64> = m0
        .iter()
        .zip(&m1)
        .map(|(a, b)| f64::from((a + b) / 2.0))
        .collect();
    close("ensemble = mean of members", &ours, &mean, 1e-6);
    let onnx = cleaning.wrap_onnx(&features, e.to_onnx(1));
    for kind in [EngineKind::Tract, EngineKind::Ort] {
        let served = OnnxModel::load_with(&onnx, kind, &ort_options()).unwrap();
        let got = served.predict_proba(&raw).unwrap();
        close(
            &format!("ensemble on {kind:?} vs in-process"),
            &f64s(&got),
            &ours,
            1e-5,
        );
    }
}

#[test]
fn the_decoder_codes_strings_in_the_stores_book_and_an_older_store_opens() {
    use edgeloop::ingest::decode::{Decoder, Reason, Schema, Task as DTask};
    use edgeloop::store::{NewSample, Sample, Store};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgeloop.redb");
    // A store as written before categorical fields: samples, no book.
    let old = Sample {
        timestamp_ms: 1,
        device: "d1".into(),
        features: vec![21.5, 3.0],
        label: Some("1".into()),
    };
    {
        let store = Store::open(&path).unwrap();
        store
            .append(&[NewSample {
                pipeline: "room".into(),
                digest: 7,
                sample: old.clone(),
                dedup: true,
            }])
            .unwrap();
    }
    let store = Arc::new(Store::open(&path).unwrap());
    assert_eq!(
        store.labelled("room").unwrap(),
        vec![(0, old.clone())],
        "an older sample reads as before"
    );
    let fields = vec!["mode".to_string()];
    let book = Arc::new(CategoryBook::open(store.clone(), "room", &fields).unwrap());
    assert_eq!(book.snapshot()["mode"], Vec::<String>::new());
    let schema = Schema {
        features: vec!["t".into(), "mode".into()],
        label: "y".into(),
        classes: vec![],
        task: DTask::Classification,
        timestamp: String::new(),
        timestamp_format: String::new(),
        device_level: 1,
        sample_id_field: "sample_id".into(),
        categorical: fields.clone(),
        categories: Some(book.clone()),
    };
    let dec = Decoder::new(&schema, 4096);
    let read = |p: &str| dec.decode("s/d1/room", p.as_bytes(), 5);
    let a = read(r#"{"t": 20, "mode": "eco", "y": "1"}"#);
    assert_eq!(a.sample.unwrap().features, vec![20.0, 0.0]);
    let b = read(r#"{"t": 20, "mode": " boost ", "y": "1"}"#);
    assert_eq!(b.sample.unwrap().features[1], 1.0);
    let c = read(r#"{"t": 20, "mode": "eco"}"#);
    assert_eq!(c.sample.unwrap().features[1], 0.0);
    let d = read(r#"{"t": 20, "mode": null}"#);
    assert!(d.sample.unwrap().features[1].is_nan());
    assert_eq!(d.problems[0].reason, Reason::MissingFeature);
    let e = read(r#"{"t": 20, "mode": {"a": 1}}"#);
    assert!(e.sample.unwrap().features[1].is_nan());
    assert_eq!(e.problems[0].reason, Reason::NonNumeric);
    // The book is in the store: a reopened store gives the same codes.
    drop((dec, book));
    let again = CategoryBook::open(store.clone(), "room", &fields).unwrap();
    assert_eq!(again.snapshot()["mode"], vec!["eco", "boost"]);
    assert_eq!(again.lookup(0, "boost"), Some(1.0));
}

#[test]
fn train_with_categorical_lists_the_categories_and_exports_a_model_taking_strings() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let onnx_path = dir.path().join("m.onnx");
    let csv = root().join("tests/fixtures/preprocess/mode.csv");
    let out = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "train", "--label", "level", "--family", "logistic", "--json",
        ])
        .args(["--task", "classification"])
        .arg("--file")
        .arg(&csv)
        .args([
            "--categorical",
            "mode",
            "--max-categories",
            "5",
            "--impute",
            "median",
        ])
        .args(["--missing-values", "-999", "--range", "humidity=0,100"])
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
    let one_hot = &card["preprocessing"]["one_hot"][0];
    assert_eq!(one_hot["feature"], "mode", "{card}");
    assert_eq!(names(&one_hot["categories"]), names(&r["categories"]));
    assert_eq!(names(&one_hot["infrequent"]), names(&r["infrequent"]));
    let onnx = std::fs::read(&onnx_path).unwrap();
    let session = Session::load(&onnx, EngineKind::Tract, &LoadOptions::default()).unwrap();
    let inputs: Vec<&str> = session.inputs().iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, vec!["features", CATEGORIES_INPUT]);
}

/// The fixture's configuration as a daemon pipeline `room` on mosquitto.
fn room_config(dir: &Path, port: u16, r: &Value) -> edgeloop::config::Config {
    let mut cfg = common::config(dir, common::Broker::External(port));
    let p = &mut cfg.pipelines[0];
    p.name = "room".into();
    p.topics = vec!["rooms/+/room".into()];
    p.label_topics = vec![];
    p.features = names(&r["features"]);
    p.label = "level".into();
    p.classes = names(&r["classes"]);
    p.timestamp = "ts".into();
    p.preprocess = serde_json::from_value(r["config"].clone()).unwrap();
    p.model.family = edgeloop::config::Family::Logistic;
    p.model.l2 = r["l2"].as_f64().unwrap();
    p.model.max_iter = 10_000;
    p.model.min_labels = 400;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    cfg
}

const T0_MS: i64 = 1_767_225_600_000;

/// A daemon on its own mosquitto with the room pipeline (`tweak`ed), its
/// first version trained on the training rows (device `r1`).
struct Trained {
    mosquitto: common::Mosquitto,
    _dir: tempfile::TempDir,
    running: edgeloop::daemon::Running,
    handle: edgeloop::daemon::DaemonHandle,
    token: tokio_util::sync::CancellationToken,
    /// Training rows published.
    train: usize,
    /// Publishing options for the pipeline's broker.
    opts: edgeloop::ingest::replay::ReplayOptions,
}

async fn trained(r: &Value, tweak: impl FnOnce(&mut edgeloop::config::Config)) -> Trained {
    let mosquitto = common::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = room_config(dir.path(), mosquitto.port, r);
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let (running, handle, token) = common::start(cfg).await;
    let train = r["train_rows"].as_array().unwrap().len();
    let mut opts = common::replay_opts("unused", mosquitto.port, None);
    opts.topic = "rooms/r1/room".into();
    common::publish(
        &opts,
        payloads(&r["train_rows"], 0, Some(&names(&r["train_labels"]))),
    )
    .await;
    common::wait_until(Duration::from_secs(120), "a trained model", || {
        handle.registry.get("room").is_some()
    })
    .await;
    Trained {
        mosquitto,
        _dir: dir,
        running,
        handle,
        token,
        train,
        opts,
    }
}

/// Row objects as MQTT payloads: the row, a timestamp a minute apart from
/// `first`, and the label when given.
fn payloads(rows: &Value, first: usize, labels: Option<&[String]>) -> Vec<Vec<u8>> {
    rows.as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mut o = row.clone();
            o["ts"] = (T0_MS + (first + i) as i64 * 60_000).into();
            if let Some(l) = labels {
                o["level"] = l[i].clone().into();
            }
            serde_json::to_vec(&o).unwrap()
        })
        .collect()
}

fn probabilities(p: &std::collections::BTreeMap<String, f32>, classes: &[String]) -> Vec<f64> {
    classes.iter().map(|c| f64::from(p[c])).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_trains_and_serves_a_categorical_pipeline_over_mqtt_and_http() {
    let r = reference();
    let classes = names(&r["classes"]);
    let Trained {
        mosquitto,
        _dir,
        running,
        handle,
        token,
        train,
        mut opts,
    } = trained(&r, |_| {}).await;
    let serving = handle.registry.get("room").unwrap();
    assert_eq!((serving.version, serving.card.n_samples), (1, train as u64));
    let pre = serving.card.preprocessing.as_ref().unwrap();
    assert_eq!(pre.one_hot[0].categories, names(&r["categories"]));
    assert_eq!(pre.one_hot[0].infrequent, names(&r["infrequent"]));
    // The store's book: every mode of the training rows, in order of
    // first appearance.
    let book = handle
        .store
        .get_state(&CategoryBook::state_key("room"))
        .unwrap()
        .unwrap();
    let book: std::collections::BTreeMap<String, Vec<String>> =
        serde_json::from_slice(&book).unwrap();
    assert_eq!(book["mode"].len(), 7, "{book:?}");

    // HTTP: the later rows as they are (strings, an unknown mode, nulls),
    // then each with the unknown mode `party`.
    let test_rows = r["test_rows"].as_array().unwrap().clone();
    let mut rows = test_rows.clone();
    rows.extend(test_rows.iter().map(|o| {
        let mut o = o.clone();
        o["mode"] = "party".into();
        o
    }));
    let body = serde_json::to_vec(&serde_json::json!({ "rows": rows })).unwrap();
    let mut client = edgeloop::demo::HttpClient::connect(handle.http_addr)
        .await
        .unwrap();
    let (status, resp) = client
        .request("POST", "/v1/pipelines/room/predict", Some(body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let resp: edgeloop::http::PredictResponse = serde_json::from_slice(&resp).unwrap();
    let got: Vec<f64> = resp
        .predictions
        .iter()
        .flat_map(|p| probabilities(&p.probabilities, &classes))
        .collect();
    let n = test_rows.len() * classes.len();
    close(
        "HTTP vs scikit-learn",
        &got[..n],
        &flat(&r["test_probabilities"]),
        1e-5,
    );
    close(
        "HTTP, unknown mode, vs scikit-learn",
        &got[n..],
        &flat(&r["unknown_mode_probabilities"]),
        1e-5,
    );
    // A categorical feature that is not a string, number or null: 400.
    let mut bad = test_rows[0].clone();
    bad["mode"] = serde_json::json!(["eco"]);
    let body = serde_json::to_vec(&serde_json::json!({ "rows": [bad] })).unwrap();
    let (status, resp) = client
        .request("POST", "/v1/pipelines/room/predict", Some(body))
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&resp));
    let err: Value = serde_json::from_slice(&resp).unwrap();
    assert!(
        err["error"].as_str().unwrap_or_default().contains("mode"),
        "{err}"
    );

    // MQTT: the later rows unlabelled from another device; one prediction
    // each, equal to scikit-learn's.
    let (mut sub, stop_sub) =
        common::subscribe(mosquitto.port, "edgeloop/room/predictions/#").await;
    opts.topic = "rooms/r2/room".into();
    common::publish(&opts, payloads(&r["test_rows"], train, None)).await;
    let want = flat(&r["test_probabilities"]);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < test_rows.len() {
        let m = tokio::time::timeout(Duration::from_secs(90), sub.recv())
            .await
            .unwrap()
            .unwrap();
        let msg: edgeloop::serve::predictions::PredictionMessage =
            serde_json::from_value(m).unwrap();
        assert_eq!((msg.device.as_str(), msg.model_version), ("r2", 1));
        let k = ((msg.timestamp_ms - T0_MS) / 60_000) as usize - train;
        let c = classes.len();
        close(
            &format!("MQTT row {k} vs scikit-learn"),
            &probabilities(&msg.probabilities, &classes),
            &want[k * c..(k + 1) * c],
            1e-5,
        );
        seen.insert(k);
    }
    stop_sub.cancel();
    common::stop(running, handle, token).await;
}

/// A test row as `[features]` f32, `mode` as the serving model's code.
fn served_row(o: &Value, features: &[String], model: &OnnxModel) -> Vec<f32> {
    features
        .iter()
        .map(|f| match &o[f] {
            Value::String(s) => model.category_code(f, Some(s)).unwrap(),
            Value::Number(n) => n.as_f64().unwrap() as f32,
            _ => f32::NAN,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impute_last_carries_each_devices_last_reading_forward_at_serving() {
    let r = reference();
    let features = names(&r["features"]);
    let Trained {
        mosquitto,
        _dir,
        running,
        handle,
        token,
        train,
        mut opts,
    } = trained(&r, |cfg| {
        cfg.pipelines[0].preprocess.impute = edgeloop::features::preprocess::ImputeStrategy::Last;
    })
    .await;
    let serving = handle.registry.get("room").unwrap();
    let model = &serving.model;
    assert_eq!(
        serving
            .card
            .preprocessing
            .as_ref()
            .unwrap()
            .imputer
            .strategy,
        edgeloop::features::preprocess::ImputeStrategy::Last
    );
    // A complete reading, then one without temperature and with the co2
    // marker, from the same device; a reading without temperature from a
    // device never seen.
    let rows = r["test_rows"].as_array().unwrap();
    let complete = |o: &&Value| {
        features.iter().all(|f| !o[f].is_null())
            && o["co2"] != -999.0
            && (0.0..=100.0).contains(&o["humidity"].as_f64().unwrap())
    };
    let mut full = rows.iter().filter(complete);
    let (a, b, c) = (
        full.next().unwrap(),
        full.next().unwrap(),
        full.next().unwrap(),
    );
    let mut b_gap = b.clone();
    b_gap["temperature"] = Value::Null;
    b_gap["co2"] = (-999.0).into();
    let mut c_gap = c.clone();
    c_gap["temperature"] = Value::Null;
    let row_a = served_row(a, &features, model);
    let mut filled = served_row(&b_gap, &features, model);
    filled[0] = row_a[0];
    filled[3] = row_a[3];
    let want_b = model.predict_proba(&filled).unwrap();
    let want_c = model
        .predict_proba(&served_row(&c_gap, &features, model))
        .unwrap();
    let unfilled_b = model
        .predict_proba(&{
            let mut x = served_row(&b_gap, &features, model);
            x[3] = f32::NAN;
            x
        })
        .unwrap();
    assert!(
        want_b
            .iter()
            .zip(&unfilled_b)
            .any(|(p, q)| (p - q).abs() > 1e-3),
        "carrying forward changes this prediction: {want_b:?} vs {unfilled_b:?}"
    );
    let classes = names(&r["classes"]);

    // MQTT: device r3 sends a then b; device r4 sends c.
    let (mut sub, stop_sub) =
        common::subscribe(mosquitto.port, "edgeloop/room/predictions/#").await;
    let at = |o: &Value, k: usize| {
        let mut o = o.clone();
        o["ts"] = (T0_MS + (train + 1000 + k) as i64 * 60_000).into();
        serde_json::to_vec(&o).unwrap()
    };
    opts.topic = "rooms/r3/room".into();
    common::publish(&opts, vec![at(a, 0), at(&b_gap, 1)]).await;
    opts.topic = "rooms/r4/room".into();
    common::publish(&opts, vec![at(&c_gap, 2)]).await;
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(90), sub.recv())
            .await
            .unwrap()
            .unwrap();
        let msg: edgeloop::serve::predictions::PredictionMessage =
            serde_json::from_value(m).unwrap();
        let k = (msg.timestamp_ms - T0_MS) / 60_000 - (train + 1000) as i64;
        got.insert(k, probabilities(&msg.probabilities, &classes));
    }
    stop_sub.cancel();
    close("MQTT b, carried from a", &got[&1], &f64s(&want_b), 1e-6);
    close(
        "MQTT c, a new device: the graph's fallback",
        &got[&2],
        &f64s(&want_c),
        1e-6,
    );

    // HTTP: rows with a device carry forward the same way.
    let mut ha = a.clone();
    ha["device"] = "h1".into();
    let mut hb = b_gap.clone();
    hb["device"] = "h1".into();
    let body = serde_json::to_vec(&serde_json::json!({ "rows": [ha, hb, c_gap] })).unwrap();
    let mut client = edgeloop::demo::HttpClient::connect(handle.http_addr)
        .await
        .unwrap();
    let (status, resp) = client
        .request("POST", "/v1/pipelines/room/predict", Some(body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let resp: edgeloop::http::PredictResponse = serde_json::from_slice(&resp).unwrap();
    let p = |i: usize| probabilities(&resp.predictions[i].probabilities, &classes);
    close("HTTP b after a from h1", &p(1), &f64s(&want_b), 1e-6);
    close("HTTP c without a device", &p(2), &f64s(&want_c), 1e-6);
    common::stop(running, handle, token).await;
}
