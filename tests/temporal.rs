//! Temporal features (`[pipelines.temporal]`, `src/features/temporal.rs`):
//! the rows against numpy (`tests/fixtures/temporal/gen_temporal.py`), on
//! the training path ([`derive`]) and the serving one ([`SharedTemporal`]);
//! and the daemon on a stream whose label is the sign of the device's
//! *previous* reading, which no model of one reading can learn (its
//! accuracy is that of a coin): trained at `min_labels` over MQTT, scored
//! live, served over MQTT and HTTP (a row with a `device`), and again after a
//! restart, every prediction held to the stream's rule.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use edgeloop::features::temporal::{derive, SharedTemporal, TemporalConfig};
use edgeloop::ingest::decode::Sample;
use serde_json::{json, Value};

fn fixture() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/temporal/temporal.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn close_row(what: &str, got: &[f32], want: &Value) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: width");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        match w.as_f64() {
            None => assert!(g.is_nan(), "{what}[{j}]: {g}, numpy: missing"),
            Some(w) => assert!(
                (f64::from(*g) - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what}[{j}]: {g}, numpy {w}"
            ),
        }
    }
}

#[test]
fn rows_equal_numpy_in_training_and_serving() {
    let f = fixture();
    let classes = strings(&f["classes"]);
    let cfg = TemporalConfig {
        lags: f["lags"].as_u64().unwrap() as usize,
        deltas: true,
        rolling: f["rolling"].as_u64().unwrap() as usize,
        last_label: true,
        ..Default::default()
    };
    let samples: Vec<(u64, Sample)> = f["readings"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let features = r["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().map_or(f32::NAN, |v| v as f32))
                .collect();
            let sample = Sample {
                timestamp_ms: i as i64,
                device: r["device"].as_str().unwrap().into(),
                features,
                label: r["label"].as_str().map(String::from),
            };
            (i as u64 + 10, sample)
        })
        .collect();
    let want = f["rows"].as_array().unwrap();
    assert_eq!(want.len(), samples.len());
    assert_eq!(
        cfg.feature_names(&["a".into(), "b".into()], &classes).len(),
        want[0].as_array().unwrap().len()
    );
    // Training: every reading's row, seqs, devices and labels kept.
    let rows = derive(&cfg, 2, &classes, samples.clone());
    for (i, ((seq, s), w)) in rows.iter().zip(want).enumerate() {
        assert_eq!((*seq, &s.device), (samples[i].0, &samples[i].1.device));
        assert_eq!(s.label, samples[i].1.label);
        close_row(&format!("derive row {i}"), &s.features, w);
    }
    // Serving: the same rows in chunks of any size; a query's row is the
    // one the next reading gets, and is not recorded.
    let shared = SharedTemporal::new(&cfg, 2, &classes);
    let mut i = 0;
    for chunk in samples.chunks(7) {
        let next = &chunk[0].1;
        let query = shared.row(&next.device, &next.features);
        let query = shared
            .row(&next.device, &next.features)
            .iter()
            .zip(&query)
            .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
        assert!(query, "a query changes nothing");
        let (got, evicted) = shared.advance(&chunk.iter().map(|(_, s)| s).collect::<Vec<_>>());
        assert_eq!(evicted, 0);
        for row in got {
            close_row(&format!("serving row {i}"), &row, &want[i]);
            i += 1;
        }
    }
    assert_eq!(i, want.len());
    let first = &samples[0].1;
    close_row(
        "query before any reading",
        &SharedTemporal::new(&cfg, 2, &classes).row(&first.device, &first.features),
        &want[0],
    );
}

/// The stream's label: "hi" when the device's previous reading
/// (`common::signed_readings`) was positive, else "lo" (its first reading:
/// "lo").
fn rule(previous: Option<f32>) -> &'static str {
    if previous.is_some_and(|p| p > 0.0) {
        "hi"
    } else {
        "lo"
    }
}

fn config(dir: &std::path::Path, port: u16) -> edgeloop::config::Config {
    let mut cfg = common::config(dir, common::Broker::Embedded(port));
    let mut p = cfg.pipelines[0].clone();
    p.name = "seq".into();
    p.topics = vec!["lab/+/seq".into()];
    p.label_topics = vec![];
    p.device_level = 1;
    p.features = vec!["x".into()];
    p.label = "y".into();
    p.classes = vec!["lo".into(), "hi".into()];
    p.timestamp = String::new();
    p.prediction_topic = "edgeloop/{pipeline}/predictions/{device}".into();
    p.temporal.lags = 1;
    p.model.family = "logistic".parse().unwrap();
    p.model.min_labels = 600;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    cfg.pipelines = vec![p];
    cfg.validate().unwrap();
    cfg
}

/// Labelled readings of `device` by the rule, after `previous`.
fn labelled(xs: &[f32], mut previous: Option<f32>) -> Vec<&'static str> {
    xs.iter()
        .map(|x| {
            let l = rule(previous);
            previous = Some(*x);
            l
        })
        .collect()
}

async fn publish(port: u16, device: &str, xs: &[f32], labels: Option<&[&str]>) {
    let mut opts = common::replay_opts("unused", port, None);
    opts.topic = format!("lab/{device}/seq");
    let payloads = xs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let mut m = json!({ "x": x });
            if let Some(l) = labels {
                m["y"] = l[i].into();
            }
            serde_json::to_vec(&m).unwrap()
        })
        .collect();
    common::publish(&opts, payloads).await;
}

async fn predict(addr: std::net::SocketAddr, rows: Value) -> (u16, Value) {
    let mut client = edgeloop::demo::HttpClient::connect(addr).await.unwrap();
    let body = serde_json::to_vec(&json!({ "rows": rows })).unwrap();
    let (status, resp) = client
        .request("POST", "/v1/pipelines/seq/predict", Some(body))
        .await
        .unwrap();
    (status, serde_json::from_slice(&resp).unwrap())
}

fn labels_of(resp: &Value) -> Vec<String> {
    resp["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_learns_what_the_previous_reading_says() {
    const WAIT: Duration = Duration::from_secs(120);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let (running, handle, token) = common::start(config(dir.path(), port)).await;

    // 400 labelled readings from each of two devices: version 1 at 600.
    let mut last = std::collections::HashMap::new();
    for (k, device) in ["a", "b"].iter().enumerate() {
        let xs = common::signed_readings(k as u64 + 1, 400);
        publish(port, device, &xs, Some(&labelled(&xs, None))).await;
        last.insert(device.to_string(), xs[xs.len() - 1]);
    }
    common::wait_until(WAIT, "version 1", || handle.registry.get("seq").is_some()).await;
    let serving = handle.registry.get("seq").unwrap();
    assert_eq!(serving.model.features(), ["x", "x_lag1"]);
    let holdout = serving.card.holdout.as_ref().unwrap();
    assert!(
        holdout.accuracy >= 0.97,
        "holdout accuracy {} on a rule of the previous reading",
        holdout.accuracy
    );

    // Live scoring: 200 more labelled readings of `a` are scored with their
    // rows (the previous one of each, the training's last for the first).
    let xs = common::signed_readings(7, 200);
    publish(port, "a", &xs, Some(&labelled(&xs, Some(last["a"])))).await;
    last.insert("a".into(), xs[xs.len() - 1]);
    let addr = handle.http_addr;
    let mut concept = Value::Null;
    for _ in 0..600 {
        let mut client = edgeloop::demo::HttpClient::connect(addr).await.unwrap();
        let (_, body) = client
            .request("GET", "/v1/pipelines/seq/drift", None)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        concept = v["concept"].clone();
        if concept["scored"].as_u64().unwrap_or(0) >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(concept["scored"].as_u64().unwrap() >= 200, "{concept}");
    assert!(
        concept["error_rate"].as_f64().unwrap() <= 0.03,
        "live error rate {concept}"
    );

    // MQTT: 60 unlabelled readings of `b`, each predicted by the sign of
    // the reading before it.
    let (mut sub, stop_sub) = common::subscribe(port, "edgeloop/seq/predictions/#").await;
    let xs = common::signed_readings(9, 60);
    publish(port, "b", &xs, None).await;
    let mut got = std::collections::BTreeMap::new();
    while got.len() < xs.len() {
        let m = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("a prediction per reading")
            .unwrap();
        assert_eq!(m["device"], "b");
        got.insert(
            m["sample_id"].as_u64().unwrap(),
            m["label"].as_str().unwrap().to_string(),
        );
    }
    stop_sub.cancel();
    let want: Vec<&str> = (0..xs.len())
        .map(|i| rule(Some(if i == 0 { last["b"] } else { xs[i - 1] })))
        .collect();
    assert_eq!(got.values().map(String::as_str).collect::<Vec<_>>(), want);
    last.insert("b".into(), xs[xs.len() - 1]);

    // HTTP: the raw reading with a device takes that device's last reading
    // as its lag (asked twice: a query is not recorded); the model's own
    // features without one.
    let rows = json!([
        { "x": 0.5, "device": "a" },
        { "x": 0.5, "device": "b" },
        { "x": -0.5, "device": "b" },
        { "x": 0.5, "x_lag1": 0.9 },
        { "x": 0.5, "x_lag1": -0.9 },
    ]);
    let (status, resp) = predict(addr, rows).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        labels_of(&resp),
        [
            rule(Some(last["a"])),
            rule(Some(last["b"])),
            rule(Some(last["b"])),
            "hi",
            "lo"
        ]
    );
    let (status, resp) = predict(addr, json!([{ "x": 0.5, "x_lag2": 1.0 }])).await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp["error"].as_str().unwrap().contains("x_lag2"), "{resp}");

    // A restart: the serving state is replayed from the store.
    common::stop(running, handle, token).await;
    let (running, handle, token) = common::start(config(dir.path(), port)).await;
    let (status, resp) = predict(
        handle.http_addr,
        json!([{ "x": 0.5, "device": "a" }, { "x": 0.5, "device": "b" }]),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        labels_of(&resp),
        [rule(Some(last["a"])), rule(Some(last["b"]))]
    );
    common::stop(running, handle, token).await;
}

#[test]
fn temporal_features_refuse_what_they_cannot_combine_with() {
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path(), 1883);
    let refused = |f: &dyn Fn(&mut edgeloop::config::PipelineConfig)| {
        let mut cfg = base.clone();
        f(&mut cfg.pipelines[0]);
        cfg.validate().unwrap_err().to_string()
    };
    let e = refused(&|p| p.windows.enabled = true);
    assert!(
        e.contains("pipelines[0].temporal") && e.contains("windows"),
        "{e}"
    );
    let e = refused(&|p| {
        p.temporal.last_label = true;
        p.classes.clear();
    });
    assert!(
        e.contains("temporal.last_label") && e.contains("classes"),
        "{e}"
    );
    let e = refused(&|p| p.temporal.rolling = 1);
    assert!(e.contains("temporal.rolling"), "{e}");
    let e =
        refused(&|p| p.preprocess.impute = edgeloop::features::preprocess::ImputeStrategy::Last);
    assert!(e.contains("preprocess.impute"), "{e}");
    let mut ok = base.clone();
    ok.pipelines[0].temporal.last_label = true;
    ok.pipelines[0].temporal.rolling = 5;
    ok.pipelines[0].temporal.deltas = true;
    ok.validate().unwrap();
    assert_eq!(
        ok.pipelines[0].model_features(),
        [
            "x",
            "x_lag1",
            "x_delta",
            "x_mean5",
            "x_std5",
            "last_label_lo",
            "last_label_hi"
        ]
    );
}

/// `[pipelines.online]` with temporal features: the online learner learns
/// each labelled row (its reading and the previous one) as it is stored, and
/// its ONNX snapshot serves before any batch version; after a restart it
/// relearns the same rows from the store. Late labels are learned online
/// too, each with its row formed from the readings stored before it: 200
/// readings of a third device sent unlabelled, then their labels on the
/// label topic by `sample_id` (from the prediction messages); the learner's
/// record over its last 200 samples (all late ones) stays ≥ 0.97, which a
/// row without its reading's past could not reach (the rule is the previous
/// reading's sign, a coin toss otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_online_learner_learns_rows_with_their_past() {
    const WAIT: Duration = Duration::from_secs(120);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let online = |dir: &std::path::Path| {
        let mut cfg = config(dir, port);
        let p = &mut cfg.pipelines[0];
        p.online.family = "online_logistic".into();
        p.model.min_labels = 1_000_000;
        p.label_topics = vec!["lab/+/seq_label".into()];
        cfg.validate().unwrap();
        cfg
    };
    let (running, handle, token) = common::start(online(dir.path())).await;
    let mut last = std::collections::HashMap::new();
    for (k, device) in ["a", "b"].iter().enumerate() {
        let xs = common::signed_readings(k as u64 + 11, 400);
        publish(port, device, &xs, Some(&labelled(&xs, None))).await;
        last.insert(*device, xs[xs.len() - 1]);
    }
    let learned = |h: &edgeloop::daemon::DaemonHandle| {
        h.registry.get("seq").map_or(0, |s| {
            s.card.hyperparameters["online"]["labels_learned"]
                .as_u64()
                .unwrap_or(0)
        })
    };
    common::wait_until(WAIT, "a snapshot of 800 labels", || learned(&handle) >= 800).await;
    let serving = handle.registry.get("seq").unwrap();
    assert_eq!(serving.model.features(), ["x", "x_lag1"]);
    let recent = serving.card.hyperparameters["online"]["recent"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!(recent >= 0.97, "online prequential accuracy {recent}");
    let rows = json!([{ "x": 0.5, "device": "a" }, { "x": -0.5, "device": "b" }]);
    let (status, resp) = predict(handle.http_addr, rows.clone()).await;
    assert_eq!(status, 200, "{resp}");
    let want = [rule(Some(last["a"])), rule(Some(last["b"]))];
    assert_eq!(labels_of(&resp), want);
    common::stop(running, handle, token).await;

    let (running, handle, token) = common::start(online(dir.path())).await;
    let (status, resp) = predict(handle.http_addr, rows).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(labels_of(&resp), want, "after the restart");
    // The relearned learner predicts the next labelled rows as before.
    let xs = common::signed_readings(21, 150);
    publish(port, "a", &xs, Some(&labelled(&xs, Some(last["a"])))).await;
    common::wait_until(WAIT, "the new labels learned", || learned(&handle) >= 900).await;
    let serving = handle.registry.get("seq").unwrap();
    let recent = serving.card.hyperparameters["online"]["recent"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!(
        recent >= 0.97,
        "online prequential accuracy after the restart {recent}"
    );

    // Late labels: 200 readings of `c` without labels, their labels later.
    // 800 relearned and 150 learned since the restart.
    let before = 950;
    let (mut sub, stop_sub) = common::subscribe(port, "edgeloop/seq/predictions/c").await;
    let xs = common::signed_readings(31, 200);
    publish(port, "c", &xs, None).await;
    let mut ids = Vec::new();
    while ids.len() < xs.len() {
        let msg = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("a prediction message of c")
            .unwrap();
        ids.push(msg["sample_id"].as_u64().unwrap());
    }
    stop_sub.cancel();
    // The prediction messages come in arrival order; the labels follow the
    // rule of each reading's predecessor.
    let want = labelled(&xs, None);
    let mut opts = common::replay_opts("unused", port, None);
    opts.topic = "lab/c/seq_label".into();
    let labels = ids
        .iter()
        .zip(&want)
        .map(|(id, y)| serde_json::to_vec(&json!({ "sample_id": id, "y": y })).unwrap())
        .collect();
    common::publish(&opts, labels).await;
    common::wait_until(WAIT, "the late labels learned", || {
        learned(&handle) >= before + 200
    })
    .await;
    let serving = handle.registry.get("seq").unwrap();
    let online = &serving.card.hyperparameters["online"];
    assert_eq!(online["labels_learned"], before + 200);
    let recent = online["recent"]["accuracy"].as_f64().unwrap();
    assert!(
        recent >= 0.97,
        "online prequential accuracy over the late labels {recent}"
    );
    common::stop(running, handle, token).await;
}
