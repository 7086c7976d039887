//! Online learning served by the daemon (issue 17): the ONNX export of the
//! online learners (`learn::online::export`) on tract and onnxruntime, and
//! the daemon's online pipeline over a real broker.
//!
//! The streams are River's generators written by
//! `tests/fixtures/online/gen_online.py` (SEA, RandomRBFDrift) and UCI gas
//! sensor drift batch 4 (`tests/fixtures/online/`).

mod common;

use std::path::Path;

use edgeloop::learn::online::export::{leaf_proba, to_onnx};
use edgeloop::learn::online::{OnlineClassifier, OnlineFamily, OnlineModel};
use edgeloop::serve::engine::{EngineKind, LoadOptions, OnnxModel};

fn fixture(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A generated stream: `f0..` columns then `label` (a class index).
fn read_stream(file: &str) -> (Vec<Vec<f64>>, Vec<usize>) {
    let mut r = csv::Reader::from_path(fixture(file)).expect(file);
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for rec in r.records() {
        let rec = rec.expect("csv row");
        let n = rec.len();
        xs.push(
            (0..n - 1)
                .map(|i| f64::from(rec[i].parse::<f32>().expect("feature")))
                .collect(),
        );
        ys.push(rec[n - 1].parse::<usize>().expect("label"));
    }
    (xs, ys)
}

/// Gas batch 4: gas name, concentration, 128 features (as f32).
fn read_gas() -> (Vec<Vec<f64>>, Vec<usize>) {
    let text = std::fs::read_to_string(fixture("tests/fixtures/online/gas_batch4.csv"))
        .expect("gas_batch4.csv");
    let mut names: Vec<String> = Vec::new();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let fields: Vec<&str> = line.trim().split(',').collect();
        let c = match names.iter().position(|g| g == fields[0]) {
            Some(c) => c,
            None => {
                names.push(fields[0].to_string());
                names.len() - 1
            }
        };
        ys.push(c);
        xs.push(
            fields[2..]
                .iter()
                .map(|v| f64::from(v.parse::<f32>().expect("feature")))
                .collect(),
        );
    }
    (xs, ys)
}

fn engines() -> Vec<EngineKind> {
    let mut e = vec![EngineKind::Tract];
    if cfg!(feature = "ort") {
        e.push(EngineKind::Ort);
    }
    e
}

/// Learns `learn` rows of a stream, exports, and compares the graph on the
/// next 300 rows or fewer (one missing its first feature, one its last, one
/// all of them), on every engine, with the learner's own
/// `predict_proba_one` (naive-Bayes-adaptive leaves for the trees):
/// probabilities within 1e-5 (the graph answers f32), the label equal
/// wherever the top two probabilities differ by more than that. [`leaf_proba`]
/// (the graph's computation in f64, in process) equals the learner within
/// 1e-9. Returns the share of the rows where the learner's `predict_one`
/// equals the exported label.
fn check_export(
    family: OnlineFamily,
    xs: &[Vec<f64>],
    ys: &[usize],
    learn: usize,
    seed: u64,
) -> f64 {
    let nf = xs[0].len();
    let mut model: OnlineModel = family.new_model(nf, None, seed);
    for (x, &y) in xs.iter().zip(ys).take(learn) {
        model.learn_one(x, y).expect("learn");
    }
    let k = model.n_classes();
    let classes: Vec<String> = (0..k).map(|c| format!("c{c}")).collect();
    let features: Vec<String> = (0..nf).map(|j| format!("f{j}")).collect();
    let bytes = to_onnx(&model, &features, &classes, 7);
    let mut rows: Vec<Vec<f64>> = xs[learn..(learn + 300).min(xs.len())].to_vec();
    rows[5][0] = f64::NAN;
    rows[6][nf - 1] = f64::NAN;
    rows[7] = vec![f64::NAN; nf];
    let flat: Vec<f32> = rows.iter().flatten().map(|v| *v as f32).collect();
    let mut agree = 0usize;
    for engine in engines() {
        let onnx = OnnxModel::load_with(&bytes, engine, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{family} on {engine:?}: {e}"));
        assert_eq!(onnx.classes(), &classes[..]);
        let got = onnx.predict_proba(&flat).expect("run");
        agree = 0;
        for (i, row) in rows.iter().enumerate() {
            let want = model.predict_proba_one(row).expect("width");
            let graph = leaf_proba(&model, row).expect("width");
            for c in 0..k {
                assert!(
                    (graph[c] - want[c]).abs() < 1e-9,
                    "{family} after {learn}: row {i} class {c}: leaf_proba {} model {}",
                    graph[c],
                    want[c]
                );
                let g = f64::from(got[i * k + c]);
                assert!(
                    (g - want[c]).abs() < 1e-5,
                    "{family} {engine:?} after {learn}: row {i} class {c}: onnx {g} model {}",
                    want[c]
                );
            }
            let mut sorted = want.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let onnx_top = (0..k).fold(0, |b, c| {
                if got[i * k + c] > got[i * k + b] {
                    c
                } else {
                    b
                }
            });
            let own = model.predict_one(row).expect("width");
            if k < 2 || sorted[0] - sorted[1] > 1e-5 {
                assert_eq!(Some(onnx_top), own, "{family} {engine:?}: label of row {i}");
            }
            if own == Some(onnx_top) {
                agree += 1;
            }
        }
    }
    agree as f64 / rows.len() as f64
}

#[test]
fn online_exports_equal_the_learners_predictions_on_tract_and_ort() {
    let (sea_x, sea_y) = read_stream("tests/fixtures/online/sea.csv");
    let (rbf_x, rbf_y) = read_stream("tests/fixtures/online/rbf_drift.csv");
    let (gas_x, gas_y) = read_gas();
    for family in [
        OnlineFamily::HoeffdingTree,
        OnlineFamily::HoeffdingAdaptiveTree,
        OnlineFamily::Arf,
        OnlineFamily::Logistic,
    ] {
        for (name, xs, ys, learn) in [
            ("sea", &sea_x, &sea_y, 3000),
            ("rbf_drift", &rbf_x, &rbf_y, 4000),
            ("gas", &gas_x, &gas_y, 100),
            ("sea", &sea_x, &sea_y, 1),
        ] {
            let agree = check_export(family, xs, ys, learn, 1);
            eprintln!("{family} {name} after {learn}: the learner's own label equals the export's on {agree:.3} of the rows");
        }
    }
}

/// Naive Bayes's edge cases, exported as the learners treat them: a feature
/// that never varies (variance 0: no log density), a class seen once (one
/// sample: no log density, only its prior), a feature missing in a third of
/// the learned rows and in the queried ones, and queries far outside what
/// was learned (log densities of −10¹², where exp underflows). 150 rows: the
/// trees are their root leaf, which predicts by naive Bayes. Every tree
/// family, tract and onnxruntime: the graph equals `predict_proba_one`
/// within 1e-5.
#[test]
fn naive_bayes_edge_cases_export_as_the_learner_predicts() {
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for i in 0..150usize {
        let y = if i == 70 { 2 } else { i % 2 };
        let t = i as f64;
        let x2 = if i % 3 == 0 {
            f64::NAN
        } else {
            f64::from(((t * 0.7).cos() + y as f64) as f32)
        };
        xs.push(vec![f64::from((2.0 * y as f64 + t.sin()) as f32), 5.0, x2]);
        ys.push(y);
    }
    let queries: Vec<Vec<f64>> = vec![
        vec![0.5, 5.0, 0.2],
        vec![2.5, 5.0, f64::NAN],
        vec![f64::NAN, 7.0, 1.5],
        vec![4.0, 5.0, 2.0],
        vec![1e6, -3e5, 1e6],
        vec![f64::NAN, f64::NAN, f64::NAN],
        vec![1.0, 5.0, 1.0],
    ];
    let flat: Vec<f32> = queries.iter().flatten().map(|v| *v as f32).collect();
    for family in [
        OnlineFamily::HoeffdingTree,
        OnlineFamily::HoeffdingAdaptiveTree,
        OnlineFamily::Arf,
    ] {
        let mut model = family.new_model(3, None, 3);
        for (x, y) in xs.iter().zip(&ys) {
            model.learn_one(x, *y).expect("learn");
        }
        let classes: Vec<String> = (0..3).map(|c| format!("c{c}")).collect();
        let features: Vec<String> = (0..3).map(|j| format!("f{j}")).collect();
        let bytes = to_onnx(&model, &features, &classes, 1);
        for engine in engines() {
            let onnx = OnnxModel::load_with(&bytes, engine, &LoadOptions::default())
                .unwrap_or_else(|e| panic!("{family} on {engine:?}: {e}"));
            let got = onnx.predict_proba(&flat).expect("run");
            for (i, q) in queries.iter().enumerate() {
                let want = model.predict_proba_one(q).expect("width");
                assert!(want.iter().sum::<f64>() > 0.99, "{family}: {want:?}");
                for c in 0..3 {
                    let g = f64::from(got[i * 3 + c]);
                    assert!(
                        (g - want[c]).abs() < 1e-5,
                        "{family} {engine:?}: query {i} class {c}: onnx {g} model {}",
                        want[c]
                    );
                }
            }
        }
    }
}

/// With one class learned (the daemon numbers classes in order of
/// appearance, so that is class 0), every family exports a graph that
/// answers it with probability 1 whatever the row, missing values included.
#[test]
fn one_class_exports_as_that_class_whatever_the_input() {
    for family in OnlineFamily::ALL {
        let mut model = family.new_model(3, None, 0);
        model.learn_one(&[1.0, 2.0, 3.0], 0).expect("learn");
        let classes = vec!["on".to_string()];
        let features: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let bytes = to_onnx(&model, &features, &classes, 1);
        for engine in engines() {
            let onnx = OnnxModel::load_with(&bytes, engine, &LoadOptions::default())
                .unwrap_or_else(|e| panic!("{family} on {engine:?}: {e}"));
            let got = onnx
                .predict_proba(&[-50.0, f32::NAN, 9.0, 1.0, 2.0, 3.0])
                .expect("run");
            assert_eq!(got, vec![1.0, 1.0], "{family} {engine:?}");
            assert_eq!(
                leaf_proba(&model, &[-50.0, f64::NAN, 9.0]).unwrap(),
                vec![1.0]
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The daemon's online pipeline, over a real mosquitto.

use std::time::Duration;

use common::*;
use edgeloop::daemon::DaemonHandle;
use edgeloop::demo::HttpClient;
use edgeloop::http::PredictResponse;

const WAIT: Duration = Duration::from_secs(120);
const NEVER: u64 = 1_000_000;

/// An occupancy reading of minute `minute` (a distinct timestamp, so no
/// two are duplicates), labelled `label` unless `None`.
fn reading(temp: f32, minute: u32, label: Option<u8>) -> Vec<u8> {
    let mut v = serde_json::json!({
        "Date": format!("2015-03-01 {:02}:{:02}:00", minute / 60, minute % 60),
        "Temperature": temp, "Humidity": 27.0, "Light": 420.0, "CO2": 700.0, "HumidityRatio": 0.0045,
    });
    if let Some(l) = label {
        v["Occupancy"] = l.into();
    }
    serde_json::to_vec(&v).unwrap()
}

async fn predict(client: &mut HttpClient, rows: &[[f32; 5]]) -> PredictResponse {
    let (status, resp) = client
        .request(
            "POST",
            "/v1/pipelines/occupancy/predict",
            Some(predict_body(rows)),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    serde_json::from_slice(&resp).unwrap()
}

/// The online learner `family` alone (the batch loop held back), with a
/// snapshot after every step of the learner, so that the last one holds
/// every label.
fn online_only(p: &mut edgeloop::config::PipelineConfig, family: &str) {
    p.model.min_labels = NEVER;
    p.model.retrain_every = NEVER;
    p.drift.retrain_on_drift = false;
    p.online.family = family.into();
    p.online.snapshot_every_labels = 1;
    p.online.snapshot_every_s = 0;
}

fn labels_learned(handle: &DaemonHandle, pipeline: &str) -> u64 {
    handle
        .registry
        .get(pipeline)
        .and_then(|s| s.card.hyperparameters["online"]["labels_learned"].as_u64())
        .unwrap_or(0)
}

/// Cold start, a second class, snapshots equal to the in-process learner,
/// and a restart that relearns from the store.
///
/// `[pipelines.online] family = "hoeffding_tree"` with the batch loop held
/// back (`min_labels` never reached): after the first labelled reading the
/// pipeline serves its only class flagged `constant` (MQTT and HTTP); the
/// first reading of the other class is learned at once (a snapshot with both
/// classes, not constant). After 300 rows of UCI Occupancy, the served
/// snapshot's HTTP probabilities equal those of a Hoeffding tree learned
/// here on the same 304 labelled samples in the same order
/// (`export::leaf_proba`, what the export computes; the tree itself equals
/// River's row by row, tests/online.rs) within 1e-5. After a restart the
/// learner has relearned the 304 stored samples: 100 more give a snapshot
/// equal to the same tree learned on all 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_pipeline_serves_from_the_first_label_and_learns_each_class_at_once() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Broker::External(mosquitto.port));
    online_only(&mut cfg.pipelines[0], "hoeffding_tree");
    let (running, handle, token) = start(cfg.clone()).await;
    let (mut sub, stop_sub) = subscribe(mosquitto.port, "edgeloop/occupancy/predictions/#").await;
    let opts = replay_opts("datatraining.txt", mosquitto.port, Some(300));

    // The first labelled reading: class 1 serves, constant.
    publish(&opts, vec![reading(21.0, 1, Some(1))]).await;
    wait_until(WAIT, "the first snapshot", || {
        handle.registry.get("occupancy").is_some()
    })
    .await;
    let s = handle.registry.get("occupancy").unwrap();
    assert_eq!(s.card.family, "hoeffding_tree");
    assert_eq!(s.model.classes(), &["1".to_string()]);
    assert!(edgeloop::learn::online::export::is_constant(&s.card));
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let resp = predict(
        &mut client,
        &[
            [30.0, 40.0, 0.0, 400.0, 0.003],
            [19.0, 20.0, 600.0, 1000.0, 0.005],
        ],
    )
    .await;
    assert!(resp.constant);
    assert_eq!(resp.model_version, s.version);
    for p in &resp.predictions {
        assert_eq!(p.label, "1");
        assert_eq!(p.probabilities["1"], 1.0);
    }
    publish(&opts, vec![reading(22.0, 2, None)]).await;
    let msg = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg["label"], "1");
    assert_eq!(msg["constant"], true);

    // Two more of class 1, then the first of class 0: learned at once.
    publish(
        &opts,
        vec![
            reading(21.5, 3, Some(1)),
            reading(21.2, 4, Some(1)),
            reading(19.0, 5, Some(0)),
        ],
    )
    .await;
    wait_until(WAIT, "a snapshot with both classes", || {
        handle
            .registry
            .get("occupancy")
            .is_some_and(|s| s.model.classes().len() == 2)
    })
    .await;
    let s = handle.registry.get("occupancy").unwrap();
    assert_eq!(s.model.classes(), &["1".to_string(), "0".to_string()]);
    assert!(!edgeloop::learn::online::export::is_constant(&s.card));
    let resp = predict(&mut client, &[[30.0, 40.0, 0.0, 400.0, 0.003]]).await;
    assert!(!resp.constant);
    let events = handle.registry.history(&handle.store, "occupancy").unwrap();
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert!(
        reasons[0].contains("(first label): 1 labels learned"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("(new class `0`): 4 labels learned")),
        "{reasons:?}"
    );

    // 300 rows of Occupancy.
    let payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    publish(&opts, payloads).await;
    wait_until(WAIT, "the snapshot after 304 labels", || {
        labels_learned(&handle, "occupancy") == 304
    })
    .await;
    let (xs, ys) = rows("datatraining.txt");
    let mut learned: Vec<([f32; 5], usize)> = vec![
        ([21.0, 27.0, 420.0, 700.0, 0.0045], 0),
        ([21.5, 27.0, 420.0, 700.0, 0.0045], 0),
        ([21.2, 27.0, 420.0, 700.0, 0.0045], 0),
        ([19.0, 27.0, 420.0, 700.0, 0.0045], 1),
    ];
    learned.extend(
        xs.iter()
            .zip(&ys)
            .take(300)
            .map(|(x, y)| (*x, if y == "1" { 0 } else { 1 })),
    );
    let queries: Vec<[f32; 5]> = xs[300..400].to_vec();
    let served = predict(&mut client, &queries).await;
    equals_the_tree(&served, &learned, &queries);
    stop_sub.cancel();
    stop(running, handle, token).await;

    // Restart: the learner relearns the 304 stored labels.
    let (running, handle, token) = start(cfg).await;
    let before = handle.registry.get("occupancy").unwrap().version;
    let more = edgeloop::ingest::replay::csv_payloads(&replay_opts(
        "datatraining.txt",
        mosquitto.port,
        Some(400),
    ))
    .unwrap();
    publish(&opts, more[300..].to_vec()).await;
    learned.extend(
        xs.iter()
            .zip(&ys)
            .skip(300)
            .take(100)
            .map(|(x, y)| (*x, if y == "1" { 0 } else { 1 })),
    );
    wait_until(WAIT, "the snapshot after 404 labels", || {
        labels_learned(&handle, "occupancy") == 404
    })
    .await;
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let served = predict(&mut client, &queries).await;
    assert!(served.model_version > before);
    equals_the_tree(&served, &learned, &queries);
    stop(running, handle, token).await;
}

/// The served probabilities of `queries` equal those of a Hoeffding tree
/// learned on `learned` (class 0 = "1", class 1 = "0": the order they first
/// appeared in), within 1e-5.
fn equals_the_tree(served: &PredictResponse, learned: &[([f32; 5], usize)], queries: &[[f32; 5]]) {
    let mut tree = OnlineFamily::HoeffdingTree.new_model(5, None, 0);
    for (x, y) in learned {
        let x: Vec<f64> = x.iter().map(|v| f64::from(*v)).collect();
        tree.learn_one(&x, *y).unwrap();
    }
    assert_eq!(served.predictions.len(), queries.len());
    for (q, p) in queries.iter().zip(&served.predictions) {
        let x: Vec<f64> = q.iter().map(|v| f64::from(*v)).collect();
        let want = leaf_proba(&tree, &x).unwrap();
        for (k, class) in ["1", "0"].iter().enumerate() {
            let got = f64::from(p.probabilities[*class]);
            assert!(
                (got - want[k]).abs() < 1e-5,
                "after {}: {got} vs {}",
                learned.len(),
                want[k]
            );
        }
    }
}

/// The loop chooses what serves. River's Agrawal stream changes concept at
/// row 1,000 (`tests/fixtures/online_daemon/gen_agrawal_drift.py`); the
/// batch loop trains a forest at 500 labels and never again (retraining and
/// drift retraining off), so it goes stale at the change; the online
/// Hoeffding tree keeps learning. Both predict every labelled sample before
/// learning it; the serving choice (200 samples, 2 points of hysteresis)
/// first hands serving to the forest (more accurate than the young tree on
/// the first concept: River measures 0.852 for its Hoeffding tree on rows
/// 500-1,000 of this stream, scikit-learn's forest on 500 rows 0.984), then,
/// after the change, back to the online learner (River's tree 0.816 on rows
/// 1,100-2,000, the stale forest 0.472 on rows after 1,100:
/// `tests/fixtures/online_daemon/reference.json`). Each switch is a `serve_switch` event with both
/// accuracies, and the stream ends served by an online snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_switches_to_the_online_learner_when_the_batch_model_goes_stale() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Broker::External(mosquitto.port));
    let mut p = cfg.pipelines[0].clone();
    p.name = "agrawal".into();
    p.topics = vec!["streams/+/agrawal".into()];
    p.label_topics = vec![];
    p.features = (0..9).map(|i| format!("f{i}")).collect();
    p.label = "label".into();
    p.classes = vec![];
    p.timestamp = String::new();
    p.preprocess = Default::default();
    p.model.family = edgeloop::learn::Family::Forest;
    p.model.min_labels = 500;
    p.model.retrain_every = NEVER;
    p.drift.retrain_on_drift = false;
    p.online.family = "hoeffding_tree".into();
    p.online.snapshot_every_labels = 500;
    p.online.snapshot_every_s = 1;
    cfg.pipelines = vec![p];
    let (running, handle, token) = start(cfg).await;

    let (xs, ys) = read_stream("tests/fixtures/online_daemon/agrawal_drift.csv");
    let payloads: Vec<Vec<u8>> = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| {
            let mut m = serde_json::Map::new();
            for (i, v) in x.iter().enumerate() {
                m.insert(format!("f{i}"), (*v).into());
            }
            m.insert("label".into(), (*y as u64).into());
            serde_json::to_vec(&m).unwrap()
        })
        .collect();
    let mut opts = replay_opts("datatraining.txt", mosquitto.port, None);
    opts.topic = "streams/dev1/agrawal".into();
    // In three parts, so that the forest (trained at 500 labels) exists
    // before the rest of the first concept arrives, and the choice has seen
    // that concept before the change.
    let switched_to = |family: &str| {
        let cards = handle.registry.cards(&handle.store, "agrawal").unwrap();
        handle
            .registry
            .history(&handle.store, "agrawal")
            .unwrap()
            .iter()
            .filter(|e| e.action == "serve_switch")
            .any(|e| {
                cards
                    .iter()
                    .any(|c| c.version == e.version && c.family == family)
            })
    };
    publish(&opts, payloads[..500].to_vec()).await;
    wait_until(Duration::from_secs(300), "the forest", || {
        handle
            .registry
            .cards(&handle.store, "agrawal")
            .unwrap()
            .iter()
            .any(|c| c.family == "forest")
    })
    .await;
    publish(&opts, payloads[500..1000].to_vec()).await;
    wait_until(Duration::from_secs(300), "the forest serving", || {
        switched_to("forest")
    })
    .await;
    publish(&opts, payloads[1000..].to_vec()).await;
    wait_until(Duration::from_secs(300), "every label learned", || {
        labels_learned(&handle, "agrawal") == 4000
    })
    .await;
    let events = handle.registry.history(&handle.store, "agrawal").unwrap();
    let family_of = |v: u32| {
        handle
            .registry
            .cards(&handle.store, "agrawal")
            .unwrap()
            .into_iter()
            .find(|c| c.version == v)
            .map(|c| c.family)
            .unwrap()
    };
    let switches: Vec<(u32, String, String)> = events
        .iter()
        .filter(|e| e.action == "serve_switch")
        .map(|e| (e.version, family_of(e.version), e.reason.clone()))
        .collect();
    eprintln!("switches: {switches:#?}");
    let to_batch = switches
        .iter()
        .position(|(_, f, _)| f == "forest")
        .expect("a switch to the forest");
    assert!(switches[to_batch]
        .2
        .starts_with("batch champion more accurate"));
    let back = switches[to_batch..]
        .iter()
        .find(|(_, f, _)| f == "hoeffding_tree")
        .expect("a switch back to the online learner");
    assert!(
        back.2.starts_with("online learner more accurate"),
        "{}",
        back.2
    );
    let last = handle.registry.get("agrawal").unwrap();
    assert_eq!(last.card.family, "hoeffding_tree");
    let online = &last.card.hyperparameters["online"];
    eprintln!("last snapshot's record: {online}");
    assert!(
        online["recent"]["accuracy"].as_f64().unwrap()
            > online["batch_recent"]["accuracy"].as_f64().unwrap() + 0.02
    );
    stop(running, handle, token).await;
}

/// A regression pipeline's online learner (`task = "regression"`,
/// `family = "hoeffding_tree"`: River's `StandardScaler() |
/// HoeffdingTreeRegressor()`), over the embedded broker, on the first 700
/// readings of UCI Air Quality with a feature (a reading without one is
/// refused by the daemon). References: River on the same rows
/// (`tests/fixtures/online_daemon/gen_regression.py`, features as the
/// float32 the daemon stores). After 1 and 450 labels, and after a restart
/// and 600, the served snapshot's HTTP predictions of the next 50 rows
/// equal River's model at that point (within 1e-4, relative above 1: the
/// graph computes in f32 around the double scaler), and the card's recent
/// MAE equals River's prequential MAE over the same last 200 samples
/// (within 1e-6 relative; the learner in process, no ONNX).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_pipeline_serves_the_online_regressor_from_the_first_label() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tests/fixtures/online_daemon/regression.json"))
            .expect("regression.json"),
    )
    .unwrap();
    let features: Vec<String> = reference["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let rows = reference["rows"].as_array().unwrap().clone();
    let labels: Vec<f64> = reference["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|y| y.as_f64().unwrap())
        .collect();
    let reading = |k: usize| {
        let mut m = serde_json::Map::new();
        for (name, v) in features.iter().zip(rows[k].as_array().unwrap()) {
            m.insert(name.clone(), v.clone());
        }
        m.insert("CO_GT".into(), labels[k].into());
        // A distinct payload per row (content deduplication).
        m.insert("row".into(), k.into());
        serde_json::to_vec(&m).unwrap()
    };
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    let mut p = cfg.pipelines[0].clone();
    p.name = "air".into();
    p.topics = vec!["air/+/quality".into()];
    p.label_topics = vec![];
    p.features = features.clone();
    p.label = "CO_GT".into();
    p.task = edgeloop::learn::Task::Regression;
    p.classes = vec![];
    p.timestamp = String::new();
    p.preprocess = Default::default();
    p.model.family = "linear".parse().unwrap();
    p.model.metric = None;
    online_only(&mut p, "hoeffding_tree");
    cfg.pipelines = vec![p];
    cfg.validate().unwrap();
    let mut opts = replay_opts("unused", port, None);
    opts.topic = "air/station1/quality".into();

    // The served snapshot's answers for rows k..k+50 against River's model
    // after k rows, and the card's record against River's.
    async fn check(
        handle: &DaemonHandle,
        k: usize,
        reference: &serde_json::Value,
        features: &[String],
        rows: &[serde_json::Value],
    ) {
        let serving = handle.registry.get("air").unwrap();
        assert_eq!(serving.card.family, "hoeffding_tree");
        assert_eq!(serving.card.metric, "mae");
        let online = &serving.card.hyperparameters["online"];
        assert_eq!(online["labels_learned"], k as u64);
        assert_eq!(online["constant"], false);
        if let Some(want) = reference["recent_mae"][k.to_string()].as_f64() {
            let got = online["recent"]["mae"].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "recent MAE after {k}: {got} vs River {want}"
            );
            assert_eq!(online["recent"]["scored"], (k - 1).min(200) as u64);
        }
        let body: Vec<serde_json::Value> = rows[k..k + 50]
            .iter()
            .map(|r| {
                serde_json::Value::Object(
                    features
                        .iter()
                        .cloned()
                        .zip(r.as_array().unwrap().iter().cloned())
                        .collect(),
                )
            })
            .collect();
        let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
        let (status, resp) = client
            .request(
                "POST",
                "/v1/pipelines/air/predict",
                Some(serde_json::to_vec(&serde_json::json!({ "rows": body })).unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        let resp: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(resp["model_version"], serving.version);
        let want = reference["after"][k.to_string()].as_array().unwrap();
        let got = resp["predictions"].as_array().unwrap();
        assert_eq!(got.len(), 50);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let (g, w) = (g["prediction"].as_f64().unwrap(), w.as_f64().unwrap());
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "after {k} labels, row {}: served {g}, River {w}",
                k + i
            );
        }
    }

    // Publishes the readings up to `k`, waits for the snapshot of `k`
    // labels and checks it.
    let learn_up_to = |handle: DaemonHandle, from: usize, k: usize| {
        let payloads: Vec<Vec<u8>> = (from..k).map(reading).collect();
        let (opts, reference, features, rows) = (opts.clone(), &reference, &features, &rows);
        async move {
            publish(&opts, payloads).await;
            wait_until(WAIT, &format!("the snapshot after {k} labels"), || {
                labels_learned(&handle, "air") == k as u64
            })
            .await;
            check(&handle, k, reference, features, rows).await;
        }
    };
    let (running, handle, token) = start(cfg.clone()).await;
    learn_up_to(handle.clone(), 0, 1).await;
    learn_up_to(handle.clone(), 1, 450).await;
    stop(running, handle, token).await;
    // Restart: the learner relearns the 450 stored samples.
    let (running, handle, token) = start(cfg).await;
    learn_up_to(handle.clone(), 450, 600).await;
    stop(running, handle, token).await;
}

/// `[pipelines.online] family` is checked before anything starts: an
/// unknown family, an online learner on a windowed pipeline, or a family
/// without a regressor on a regression pipeline, is refused naming the
/// key.
#[test]
fn online_config_is_validated_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Broker::Embedded(free_port()));
    cfg.validate().unwrap();
    for family in [
        "off",
        "online_logistic",
        "hoeffding_tree",
        "hoeffding_adaptive_tree",
        "arf",
    ] {
        cfg.pipelines[0].online.family = family.into();
        cfg.validate().unwrap();
    }
    cfg.pipelines[0].online.family = "forest".into();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("pipelines[0].online.family"), "{err}");
    assert!(err.contains("or off"), "{err}");
    // A regression pipeline: the families with a regressor only.
    let classification = cfg.pipelines[0].clone();
    cfg.pipelines[0].task = edgeloop::learn::Task::Regression;
    cfg.pipelines[0].classes = vec![];
    cfg.pipelines[0].model.family = "linear".parse().unwrap();
    cfg.pipelines[0].model.metric = None;
    for family in ["hoeffding_tree", "arf", "off"] {
        cfg.pipelines[0].online.family = family.into();
        cfg.validate().unwrap();
    }
    for family in ["online_logistic", "hoeffding_adaptive_tree"] {
        cfg.pipelines[0].online.family = family.into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("pipelines[0].online.family"), "{err}");
        assert!(err.contains("has no regressor"), "{err}");
    }
    cfg.pipelines[0] = classification;
    cfg.pipelines[0].online.family = "arf".into();
    cfg.pipelines[0].windows.enabled = true;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("pipelines[0].online.family"), "{err}");
}
