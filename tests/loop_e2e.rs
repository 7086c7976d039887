//! Black-box tests of the whole loop: the daemon driven in-process on
//! loopback with an injected shutdown, over a real mosquitto (started here on
//! a free port) and over the embedded broker.

mod common;

use std::time::Duration;

use common::*;
use edgeloop::daemon::DaemonHandle;
use edgeloop::demo::HttpClient;
use edgeloop::http::PredictResponse;
use edgeloop::ingest::decode::Reason;
use edgeloop::learn::Model;
use tokio_util::sync::CancellationToken;

const PIPELINE: &str = "occupancy";
const WAIT: Duration = Duration::from_secs(90);

/// Trains once at `min_labels`, then only on `retrain_every` (huge: never)
/// and, with `drift`, on drift alarms.
fn trains_at(cfg: &mut edgeloop::config::Config, min_labels: u64, retrain_every: u64, drift: bool) {
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = min_labels;
    p.model.retrain_every = retrain_every;
    p.drift.retrain_on_drift = drift;
}

const NEVER: u64 = 1_000_000;

fn stored(handle: &DaemonHandle) -> u64 {
    handle.store.counts(PIPELINE).unwrap().samples
}

/// Occupancy rows predicted over HTTP (one request).
async fn predict_rows(client: &mut HttpClient, rows: &[[f32; 5]]) -> PredictResponse {
    let body = predict_body(rows);
    let (status, resp) = client
        .request("POST", "/v1/pipelines/occupancy/predict", Some(body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    serde_json::from_slice(&resp).unwrap()
}

/// Replays the first 2,000 labelled rows of datatraining.txt, waits for the
/// model trained at 2,000 labels, then predicts every row of datatest.txt
/// (another period, both classes) over HTTP.
async fn loop_trains_and_serves(broker: Broker) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), broker);
    trains_at(&mut cfg, 2000, NEVER, false);
    let (running, handle, token) = start(cfg).await;

    let opts = replay_opts("datatraining.txt", broker.port(), Some(2000));
    let payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    assert_eq!(payloads.len(), 2000);
    publish(&opts, payloads).await;
    wait_until(WAIT, "a trained model", || {
        handle.registry.get(PIPELINE).is_some()
    })
    .await;
    let serving = handle.registry.get(PIPELINE).unwrap();
    assert_eq!(serving.version, 1);
    assert_eq!(serving.card.n_samples, 2000);
    assert_eq!(stored(&handle), 2000);

    let (x, y) = rows("datatest.txt");
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let mut served = Vec::new();
    for chunk in x.chunks(500) {
        let resp = predict_rows(&mut client, chunk).await;
        assert_eq!(resp.model_version, 1);
        served.extend(resp.predictions);
    }
    assert_eq!(served.len(), x.len());
    let correct = served
        .iter()
        .zip(&y)
        .filter(|(p, t)| &p.label == *t)
        .count();
    let accuracy = correct as f64 / y.len() as f64;
    assert!(accuracy >= 0.95, "accuracy on datatest.txt {accuracy}");

    // The endpoint's outputs equal the in-process model's (same parameters,
    // evaluated in Rust without ONNX) within 1e-5.
    let stored_model = handle.store.get_model(PIPELINE, 1).unwrap().unwrap();
    let model = Model::from_json(&stored_model.params_json).unwrap();
    let flat: Vec<f32> = x.iter().flatten().copied().collect();
    let proba = model.predict(&flat);
    for (i, p) in served.iter().enumerate() {
        for (k, class) in model.classes().iter().enumerate() {
            let diff = (p.probabilities[class] - proba[i * 2 + k]).abs();
            assert!(
                diff <= 1e-5,
                "row {i} class {class}: served {} in-process {}",
                p.probabilities[class],
                proba[i * 2 + k]
            );
        }
    }
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_over_mosquitto() {
    let mosquitto = Mosquitto::start();
    loop_trains_and_serves(Broker::External(mosquitto.port)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_over_embedded_broker() {
    loop_trains_and_serves(Broker::Embedded(free_port())).await;
}

fn occupancy_json(temp: serde_json::Value, minute: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "Date": format!("2015-03-01 00:{minute:02}:00"),
        "Temperature": temp, "Humidity": 27.0, "Light": 420.0, "CO2": 700.0, "HumidityRatio": 0.0045,
        "Occupancy": 1
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_counted_salvaged_and_ingest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (running, handle, token) = start(config(dir.path(), Broker::Embedded(port))).await;
    let opts = replay_opts("datatraining.txt", port, Some(50));
    let good = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    let missing_ratio = br#"{"Date": "2015-03-01 00:01:00", "Temperature": 21.0, "Humidity": 27.0, "Light": 420.0, "CO2": 700.0, "Occupancy": 1}"#.to_vec();
    let bare_nan = String::from_utf8(occupancy_json(0.into(), 2))
        .unwrap()
        .replace("\"Temperature\":0", "\"Temperature\":NaN");
    let huge =
        serde_json::to_vec(&serde_json::json!({ "Temperature": 1.0, "pad": "x".repeat(1 << 20) }))
            .unwrap();
    let bad: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        missing_ratio,
        bare_nan.into_bytes(),
        occupancy_json(serde_json::Value::Null, 3),
        occupancy_json("n/a".into(), 4),
        huge,
        occupancy_json("21.5".into(), 5),
    ];
    // Bad messages interleaved with good ones.
    let mut payloads = Vec::new();
    for (i, g) in good.into_iter().enumerate() {
        payloads.push(g);
        if i % 7 == 3 {
            if let Some(b) = bad.get(i / 7) {
                payloads.push(b.clone());
            }
        }
    }
    let total = payloads.len() as u64;
    assert_eq!(total, 57);
    publish(&opts, payloads).await;
    let stats = handle.stats.clone();
    wait_until(WAIT, "all messages handled", || {
        stats.snapshot().commits > 0 && stored(&handle) == 55
    })
    .await;
    let s = stats.snapshot();
    assert_eq!(s.messages_received, 57);
    assert_eq!(s.samples_rejected, 2, "not JSON and too large");
    assert_eq!(s.samples_salvaged, 4);
    assert_eq!(stats.problems(Reason::NotJson), 1);
    assert_eq!(stats.problems(Reason::TooLarge), 1);
    assert_eq!(
        stats.problems(Reason::MissingFeature),
        2,
        "absent HumidityRatio and null Temperature"
    );
    assert_eq!(stats.problems(Reason::NonFinite), 1);
    assert_eq!(stats.problems(Reason::NonNumeric), 1);
    assert_eq!(stats.problems(Reason::BadTimestamp), 0);

    // Salvaged fields are kept as missing (NaN), never 0; the rest intact.
    let samples = handle.store.scan(PIPELINE, 0..1000, 1000).unwrap();
    let at = |minute: i64| {
        let ts = 1_425_168_000_000 + minute * 60_000; // 2015-03-01T00:MM:00Z
        samples
            .iter()
            .find(|(_, s)| s.sample.timestamp_ms == ts)
            .map(|(_, s)| s.sample.features.clone())
            .unwrap()
    };
    let f = at(1);
    assert!(f[4].is_nan());
    assert_eq!(&f[..4], &[21.0, 27.0, 420.0, 700.0]);
    for minute in [2, 3, 4] {
        let f = at(minute);
        assert!(f[0].is_nan(), "minute {minute}: {f:?}");
        assert_eq!(&f[1..], &[27.0, 420.0, 700.0, 0.0045]);
    }
    assert_eq!(at(5)[0], 21.5, "a numeric string is read as the number");

    // Still running and serving.
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let (status, _) = client.request("GET", "/healthz", None).await.unwrap();
    assert_eq!(status, 200);
    let (status, body) = client
        .request(
            "POST",
            "/v1/pipelines/occupancy/predict",
            Some(b"{\"rows\": 3}".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = client
        .request("POST", "/v1/pipelines/nope/predict", Some(b"{}".to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 404);
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_samples_and_serving_version_and_gets_messages_sent_while_down() {
    let mut mosquitto = Mosquitto::start();
    let broker = Broker::External(mosquitto.port);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), broker);
    trains_at(&mut cfg, 500, NEVER, false);

    let (running, handle, token) = start(cfg.clone()).await;
    let opts = replay_opts("datatraining.txt", mosquitto.port, Some(1000));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(WAIT, "1000 samples and a model", || {
        stored(&handle) == 1000 && handle.registry.get(PIPELINE).is_some()
    })
    .await;
    let version = handle.registry.get(PIPELINE).unwrap().version;
    stop(running, handle, token).await;

    // Same store, nothing new sent: same sample count, same serving version.
    let (running, handle, token) = start(cfg.clone()).await;
    assert_eq!(
        handle.registry.get(PIPELINE).map(|s| s.version),
        Some(version)
    );
    assert_eq!(stored(&handle), 1000);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored(&handle),
        1000,
        "nothing redelivered twice after a clean stop"
    );
    assert_eq!(
        handle.store.model_versions(PIPELINE).unwrap(),
        vec![version],
        "no retraining at start"
    );
    stop(running, handle, token).await;

    // While the daemon is down, the broker keeps QoS 1 messages for its
    // persistent session, even across a broker restart.
    let mut later = replay_opts("datatest.txt", mosquitto.port, Some(100));
    later.drop_columns = vec!["Occupancy".into()];
    publish(
        &later,
        edgeloop::ingest::replay::csv_payloads(&later).unwrap(),
    )
    .await;
    mosquitto.restart();

    let (running, handle, token) = start(cfg).await;
    wait_until(WAIT, "messages sent while down", || stored(&handle) == 1100).await;
    assert_eq!(handle.store.counts(PIPELINE).unwrap().labelled_total, 1000);
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let (status, body) = client
        .request(
            "POST",
            "/v1/pipelines/occupancy/predict",
            Some(br#"{"rows":[{"Temperature":21,"Humidity":27,"Light":500,"CO2":800,"HumidityRatio":null}]}"#.to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let resp: PredictResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(resp.model_version, version);
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_replay_loses_and_duplicates_nothing() {
    let mut mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Broker::External(mosquitto.port));
    trains_at(&mut cfg, NEVER, NEVER, false);
    let (running, handle, token) = start(cfg).await;

    let mut opts = replay_opts("datatraining.txt", mosquitto.port, Some(3000));
    opts.rate = Some(2000.0);
    let payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    let publisher = tokio::spawn({
        let opts = opts.clone();
        async move {
            edgeloop::ingest::replay::publish_all(&opts, payloads, CancellationToken::new()).await
        }
    });
    // Stop the broker part-way through (SIGTERM: mosquitto persists what it
    // acknowledged) and bring it back on the same port.
    wait_until(WAIT, "replay under way", || stored(&handle) >= 500).await;
    mosquitto.stop();
    let at_stop = stored(&handle);
    assert!(
        at_stop < 3000,
        "the broker must stop mid-replay ({at_stop} stored)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    mosquitto.restart();
    let report = publisher.await.unwrap().unwrap();
    assert_eq!(
        report.acknowledged, 3000,
        "the publisher got every acknowledgement"
    );
    wait_until(WAIT, "every acknowledged message stored", || {
        stored(&handle) >= 3000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Exactly once: 3000 samples, 3000 distinct timestamps (each row has its own).
    let samples = handle
        .store
        .scan(PIPELINE, 0..u64::MAX, usize::MAX)
        .unwrap();
    assert_eq!(samples.len(), 3000);
    let mut ts: Vec<i64> = samples.iter().map(|(_, s)| s.sample.timestamp_ms).collect();
    ts.sort_unstable();
    ts.dedup();
    assert_eq!(ts.len(), 3000);
    assert!(
        handle.stats.snapshot().mqtt_connects >= 2,
        "the daemon reconnected"
    );
    stop(running, handle, token).await;
}

/// `edgeloop check-config`, with `--config FILE` when given and `env` set.
fn check_config(config: Option<&std::path::Path>, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"));
    cmd.arg("check-config");
    if let Some(file) = config {
        cmd.arg("--config").arg(file);
    }
    cmd.envs(env.iter().copied()).output().unwrap()
}

#[test]
fn check_config_names_the_bad_key_and_prints_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[store]\nbatch_sise = 3\n").unwrap();
    let out = check_config(Some(&bad), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("batch_sise") && err.contains("store"), "{err}");

    std::fs::write(&bad, "[[pipelines]]\nname='p'\ntopics=['a/+']\nfeatures=['x']\nlabel='y'\n[pipelines.model]\nholdout_fraction = 0.9\n").unwrap();
    let out = check_config(Some(&bad), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pipelines[0].model.holdout_fraction"));

    let out = check_config(None, &[("EDGELOOP__HTTP__LISTEN", "127.0.0.1:9999")]);
    assert!(out.status.success());
    let printed: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(printed["http"]["listen"].as_str(), Some("127.0.0.1:9999"));
}

/// A number beyond what an integer key can hold was capped at u64::MAX
/// (from the environment, read as a float) and the daemon ran: now it is a
/// config error naming the key, from the environment and from the file.
#[test]
fn check_config_refuses_an_integer_beyond_its_range_naming_the_key() {
    let out = check_config(
        None,
        &[("EDGELOOP__STORE__BATCH_SIZE", "99999999999999999999999")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "config key `store.batch_size`: `99999999999999999999999` (environment \
             EDGELOOP__STORE__BATCH_SIZE) is out of range for this integer (at most \
             9223372036854775807)"
        ),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.toml");
    std::fs::write(&file, "[store]\nbatch_size = 99999999999999999999999\n").unwrap();
    let out = check_config(Some(&file), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config key `store.batch_size`: 99999999999999999999999 (in "),
        "{err}"
    );
}

/// A pipeline with `engine = "ort"` whose onnxruntime library does not load
/// (ORT_DYLIB_PATH naming a missing file): `check-config` said the
/// configuration was valid, and the daemon started, stored and trained, but
/// served nothing. Both now refuse, naming the key, the engine and the
/// library path tried; `engine = "auto"` with the same library is valid (it
/// serves on tract).
#[test]
fn an_ort_engine_whose_library_does_not_load_is_refused_by_check_config_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone/libonnxruntime.so.1.32.0");
    let missing = missing.to_str().unwrap();
    let file = dir.path().join("ort.toml");
    let write = |engine: &str| {
        std::fs::write(
            &file,
            format!(
                "[store]\npath = '{}'\n[http]\nlisten = '127.0.0.1:0'\n[mqtt]\n\
                 broker = 'mqtt://127.0.0.1:{}'\n[[pipelines]]\nname = 'p'\n\
                 topics = ['a/+']\nfeatures = ['x']\nlabel = 'y'\nengine = '{engine}'\n",
                dir.path().join("s.redb").display(),
                free_port()
            ),
        )
        .unwrap()
    };
    write("ort");
    let env = [("ORT_DYLIB_PATH", missing)];
    let named = |err: &str| {
        assert!(
            err.contains("config key `pipelines[0].engine`: \"ort\""),
            "{err}"
        );
        if cfg!(feature = "ort") {
            assert!(
                err.contains(&format!(
                    "onnxruntime library {missing} (from ORT_DYLIB_PATH): no such file"
                )),
                "{err}"
            );
        } else {
            assert!(err.contains("feature `ort`"), "{err}");
        }
    };
    let out = check_config(Some(&file), &env);
    assert!(!out.status.success());
    named(&String::from_utf8_lossy(&out.stderr));
    // `run` refuses to start with the same error (it ran until stopped).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .arg("run")
        .arg("--config")
        .arg(&file)
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the daemon started: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    named(&String::from_utf8_lossy(&out.stderr));
    // auto keeps its fallback: tract alone serves.
    write("auto");
    let out = check_config(Some(&file), &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_json_reports_live_accuracy_on_datatest2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["demo", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["samples_ingested"], 8143 + 9752);
    assert_eq!(v["samples_rejected"], 0);
    assert_eq!(v["live_predictions"], 9752);
    let live = v["live_accuracy"].as_f64().unwrap();
    assert!(live >= 0.95, "live accuracy {live}");
    let models = v["models"].as_array().unwrap();
    assert!(!models.is_empty());
    for key in ["version", "accuracy", "precision", "recall", "f1"] {
        assert!(models[0].get(key).is_some(), "models[0].{key}");
    }
    assert!(v["predict_p50_us"].as_f64().unwrap() > 0.0);

    // The README shows what the demo prints before its timings, verbatim.
    let summary: edgeloop::demo::DemoSummary = serde_json::from_value(v.clone()).unwrap();
    for m in &summary.models {
        assert_eq!(
            m.n_train + m.n_older + m.n_holdout,
            m.n_refit,
            "version {}: train + older + holdout = refit",
            m.version
        );
    }
    assert_eq!(
        summary.models.last().unwrap().n_refit,
        8143,
        "datatraining.txt"
    );
    let printed = edgeloop::demo::render_results(&summary);
    for line in printed.lines() {
        assert!(line.chars().count() <= 100, "over 100 columns: {line}");
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let shown = readme_demo_block(&readme);
    assert!(
        shown == printed,
        "README.md's demo output is stale; replace the block between the \
         <!-- demo-output --> markers with what the demo prints now:\n{printed}"
    );
}

/// The fenced block between README.md's `<!-- demo-output` and
/// `<!-- /demo-output -->` markers, without its fences.
fn readme_demo_block(readme: &str) -> String {
    let start = readme
        .find("<!-- demo-output")
        .expect("README.md has a <!-- demo-output --> marker");
    let end = readme[start..]
        .find("<!-- /demo-output -->")
        .expect("README.md has a <!-- /demo-output --> marker")
        + start;
    let inner = &readme[start..end];
    let body = inner
        .split_once("```text\n")
        .expect("a ```text fence after the marker")
        .1;
    body.rsplit_once("```")
        .expect("a closing fence before the end marker")
        .0
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_duplicate_is_stored_once_and_same_timestamp_readings_both_kept() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (running, handle, token) = start(config(dir.path(), Broker::Embedded(port))).await;
    let opts = replay_opts("datatraining.txt", port, None);
    let a = occupancy_json(21.0.into(), 7);
    let b = occupancy_json(22.0.into(), 7); // same timestamp, another reading
    publish(&opts, vec![a.clone(), b, a]).await; // `a` again: what a redelivery looks like
    wait_until(WAIT, "3 messages handled", || {
        handle.stats.snapshot().messages_received == 3 && stored(&handle) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stored(&handle), 2);
    assert_eq!(handle.stats.snapshot().duplicates, 1);
    let temps: Vec<f32> = handle
        .store
        .scan(PIPELINE, 0..10, 10)
        .unwrap()
        .iter()
        .map(|(_, s)| s.sample.features[0])
        .collect();
    assert_eq!(temps, vec![21.0, 22.0]);
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribes_when_the_broker_lost_the_session() {
    let mut mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (running, handle, token) =
        start(config(dir.path(), Broker::External(mosquitto.port))).await;
    let first = replay_opts("datatraining.txt", mosquitto.port, Some(100));
    publish(
        &first,
        edgeloop::ingest::replay::csv_payloads(&first).unwrap(),
    )
    .await;
    wait_until(WAIT, "100 samples", || stored(&handle) == 100).await;
    mosquitto.restart_losing_sessions();
    let connects = handle.stats.snapshot().mqtt_connects;
    wait_until(WAIT, "reconnected", || {
        handle.stats.snapshot().mqtt_connects > connects
    })
    .await;
    // The new session has no subscription until the daemon subscribes again;
    // give the SUBACK a moment, then publish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = replay_opts("datatest.txt", mosquitto.port, Some(100));
    publish(
        &second,
        edgeloop::ingest::replay::csv_payloads(&second).unwrap(),
    )
    .await;
    wait_until(WAIT, "samples after the resubscription", || {
        stored(&handle) == 200
    })
    .await;
    stop(running, handle, token).await;
}

/// The binary, SIGKILLed mid-replay and started again on the same store:
/// every message the publisher got an acknowledgement for is stored exactly
/// once (acknowledged after commit; redeliveries deduplicated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_daemon_loses_and_duplicates_nothing() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = daemon_process(dir.path(), mosquitto.port, "");
    daemon.wait(WAIT, "the daemon", |_| true).await;
    let mut opts = replay_opts("datatraining.txt", mosquitto.port, Some(3000));
    opts.rate = Some(2000.0);
    let payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    let publisher = tokio::spawn({
        let opts = opts.clone();
        async move {
            edgeloop::ingest::replay::publish_all(&opts, payloads, CancellationToken::new()).await
        }
    });
    daemon
        .wait(WAIT, "ingest under way", |(n, _)| n >= 500)
        .await;
    assert!(!publisher.is_finished(), "the kill must land mid-replay");
    daemon.kill();
    let report = publisher.await.unwrap().unwrap();
    assert_eq!(report.acknowledged, 3000);
    daemon.spawn();
    daemon.wait(WAIT, "3000 samples", |(n, _)| n == 3000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        daemon.state().await.map(|s| s.0),
        Some(3000),
        "no duplicate after redelivery settles"
    );
    let (status, _) = daemon.terminate();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    // Distinct timestamps: each row stored once.
    let store = edgeloop::store::Store::open(&dir.path().join("edgeloop.redb")).unwrap();
    let mut ts: Vec<i64> = store
        .scan(PIPELINE, 0..u64::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|(_, s)| s.sample.timestamp_ms)
        .collect();
    ts.sort_unstable();
    ts.dedup();
    assert_eq!(ts.len(), 3000);
}

async fn json_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    let mut c = HttpClient::connect(addr).await.unwrap();
    let (status, body) = c.request(method, path, None).await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_rollback_and_history_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    trains_at(&mut cfg, 500, NEVER, false); // versions come from the API only
    let (running, handle, token) = start(cfg).await;
    let opts = replay_opts("datatraining.txt", port, Some(1000));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(WAIT, "1000 samples and v1", || {
        stored(&handle) == 1000 && handle.registry.get(PIPELINE).is_some()
    })
    .await;
    let addr = handle.http_addr;
    for expected in [2, 3] {
        let (status, card) = json_request(addr, "POST", "/v1/pipelines/occupancy/train").await;
        assert_eq!((status, card["version"].as_u64()), (200, Some(expected)));
    }
    let serving = |v: &serde_json::Value| v["serving_version"].as_u64();
    assert_eq!(
        serving(
            &json_request(addr, "POST", "/v1/pipelines/occupancy/rollback")
                .await
                .1
        ),
        Some(2)
    );
    assert_eq!(
        serving(
            &json_request(addr, "POST", "/v1/pipelines/occupancy/rollback")
                .await
                .1
        ),
        Some(1)
    );
    let (status, body) = json_request(addr, "POST", "/v1/pipelines/occupancy/rollback").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        serving(
            &json_request(addr, "POST", "/v1/pipelines/occupancy/models/3/promote")
                .await
                .1
        ),
        Some(3)
    );
    assert_eq!(
        json_request(addr, "POST", "/v1/pipelines/occupancy/models/9/promote")
            .await
            .0,
        404
    );
    assert_eq!(
        json_request(addr, "POST", "/v1/pipelines/occupancy/models/x/promote")
            .await
            .0,
        400
    );
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 3);
    let (_, history) = json_request(addr, "GET", "/v1/pipelines/occupancy/history").await;
    let actions: Vec<(u64, &str)> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["action"].as_str().unwrap().ends_with("_alarm"))
        .map(|e| {
            (
                e["version"].as_u64().unwrap(),
                e["action"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            (1, "trained"),
            (2, "trained"),
            (3, "trained"),
            (2, "rollback"),
            (1, "rollback"),
            (3, "promote")
        ]
    );
    stop(running, handle, token).await;
}

/// SIGKILL at random moments while versions are promoted back and forth, new
/// versions are trained and samples arrive: after each restart a complete,
/// stored version serves and every acknowledged sample is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_promotions_leaves_a_complete_version_and_every_sample() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let extra = "[[pipelines]]\nname = 'occupancy'\ntopics = ['sensors/+/occupancy']\n\
                 features = ['Temperature', 'Humidity', 'Light', 'CO2', 'HumidityRatio']\nlabel = 'Occupancy'\n\
                 timestamp = 'Date'\n[pipelines.model]\nmin_labels = 500\nretrain_every = 1000000\n\
                 [pipelines.drift]\nretrain_on_drift = false\n";
    let mut daemon = daemon_process(dir.path(), mosquitto.port, extra);
    let addr = daemon.http;
    daemon.wait(WAIT, "the daemon", |_| true).await;
    let all = edgeloop::ingest::replay::csv_payloads(&replay_opts(
        "datatraining.txt",
        mosquitto.port,
        Some(2000),
    ))
    .unwrap();
    let opts = replay_opts("datatraining.txt", mosquitto.port, None);
    publish(&opts, all[..1000].to_vec()).await;
    daemon
        .wait(WAIT, "a first model", |(_, v)| v.is_some())
        .await;
    for _ in 0..2 {
        assert_eq!(
            json_request(addr, "POST", "/v1/pipelines/occupancy/train")
                .await
                .0,
            200
        );
    }
    let mut published = 1000;
    let mut rng = fastrand::Rng::with_seed(11);
    for round in 0..10 {
        // Promotions back and forth, and new samples, while the kill lands.
        let promoter = tokio::spawn(async move {
            for i in 0.. {
                let Ok(mut c) = HttpClient::connect(addr).await else {
                    return i;
                };
                // Mostly pointer flips, and now and then a whole training
                // (a new ONNX model written) for the kill to land in.
                let path = if i % 4 == 3 {
                    "/v1/pipelines/occupancy/train".to_string()
                } else {
                    format!("/v1/pipelines/occupancy/models/{}/promote", 1 + i % 3)
                };
                if c.request("POST", &path, None).await.is_err() {
                    return i;
                }
            }
            0
        });
        publish(&opts, all[published..published + 100].to_vec()).await;
        published += 100;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..60))).await;
        daemon.kill();
        let promotions = promoter.await.unwrap();
        daemon.spawn();
        daemon.wait(WAIT, "the restarted daemon", |_| true).await;
        let version = daemon
            .state()
            .await
            .unwrap()
            .1
            .expect("a version serves after the restart");
        let (_, models) = json_request(addr, "GET", "/v1/pipelines/occupancy/models").await;
        let stored: Vec<u64> = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["version"].as_u64().unwrap())
            .collect();
        assert!(
            stored.contains(&version),
            "round {round}: serving {version}, stored {stored:?}"
        );
        assert_eq!(
            stored,
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "round {round}: versions are complete"
        );
        let mut c = HttpClient::connect(addr).await.unwrap();
        let row = br#"{"rows":[{"Temperature":21,"Humidity":27,"Light":500,"CO2":800,"HumidityRatio":0.004}]}"#;
        let (status, body) = c
            .request(
                "POST",
                "/v1/pipelines/occupancy/predict",
                Some(row.to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(
            status,
            200,
            "round {round}: {}",
            String::from_utf8_lossy(&body)
        );
        let resp: PredictResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(u64::from(resp.model_version), version);
        eprintln!("round {round}: {promotions} promotions before the kill; serving v{version}");
    }
    let published = published as u64;
    daemon
        .wait(WAIT, "every acknowledged sample", |(n, _)| n == published)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_does_not_block_ingest_behind_mosquitto() {
    // config/mosquitto.conf's message_size_limit keeps a payload larger than
    // mqtt.max_packet_bytes from reaching (and forever blocking) the session.
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (running, handle, token) =
        start(config(dir.path(), Broker::External(mosquitto.port))).await;
    let opts = replay_opts("datatraining.txt", mosquitto.port, Some(20));
    let mut payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    let huge =
        serde_json::to_vec(&serde_json::json!({ "Temperature": 1.0, "pad": "x".repeat(5 << 20) }))
            .unwrap();
    payloads.insert(10, huge);
    publish(&opts, payloads).await;
    wait_until(WAIT, "the 20 good messages", || stored(&handle) == 20).await;
    assert_eq!(
        handle.stats.snapshot().mqtt_errors,
        0,
        "the connection never broke"
    );
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrival_time_pipeline_keeps_repeated_identical_readings() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    cfg.pipelines[0].timestamp = String::new(); // arrival time: dedup = auto → redelivery only
    let (running, handle, token) = start(cfg).await;
    let reading = occupancy_json(21.0.into(), 9);
    publish(
        &replay_opts("datatraining.txt", port, None),
        vec![reading.clone(), reading.clone(), reading],
    )
    .await;
    wait_until(WAIT, "3 readings", || stored(&handle) == 3).await;
    assert_eq!(handle.stats.snapshot().duplicates, 0);
    stop(running, handle, token).await;
}

fn flip(payload: &[u8]) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(payload).unwrap();
    let y = v["Occupancy"].as_f64().unwrap();
    v["Occupancy"] = (1.0 - y).into();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_endpoint_no_drift_on_identical_data_and_drift_on_another_week() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    trains_at(&mut cfg, 1000, NEVER, true);
    cfg.pipelines[0].drift.window = 1000;
    cfg.pipelines[0].drift.reference = 1000;
    // The week below leaves the training range (half its temperature and
    // humidity readings), which only the range rule can see at one-minute
    // room readings (the tests have about 2 effective readings): on here,
    // off by default.
    cfg.pipelines[0].drift.range_floor = Some(0.25);
    let (running, handle, token) = start(cfg).await;
    let opts = replay_opts("datatraining.txt", port, Some(1000));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(WAIT, "v1", || handle.registry.get(PIPELINE).is_some()).await;
    let addr = handle.http_addr;
    let (status, v) = json_request(addr, "GET", "/v1/pipelines/occupancy/drift").await;
    assert_eq!(status, 200, "{v}");
    eprintln!("identical: {}", v["data"]);
    assert_eq!(v["data"]["reference_samples"], 1000);
    assert_eq!(v["data"]["current_samples"], 1000);
    for f in v["data"]["features"].as_array().unwrap() {
        assert_eq!(f["psi"].as_f64(), Some(0.0), "{f}");
        assert_eq!(f["ks_statistic"].as_f64(), Some(0.0), "{f}");
        assert_eq!(f["drifted"], false);
    }
    // Another week, unlabelled.
    let mut later = replay_opts("datatest2.txt", port, Some(1000));
    later.drop_columns = vec!["Occupancy".into()];
    publish(
        &later,
        edgeloop::ingest::replay::csv_payloads(&later).unwrap(),
    )
    .await;
    wait_until(WAIT, "2000 samples", || stored(&handle) == 2000).await;
    let (_, v) = json_request(addr, "GET", "/v1/pipelines/occupancy/drift").await;
    eprintln!("another week: {}", v["data"]);
    assert!(!v["data"]["drifted"].as_array().unwrap().is_empty(), "{v}");
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concept_drift_alarm_triggers_one_retraining() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    trains_at(&mut cfg, 1000, NEVER, true);
    cfg.pipelines[0].drift.cooldown_labels = 600;
    let (running, handle, token) = start(cfg.clone()).await;
    let opts = replay_opts("datatraining.txt", port, Some(1600));
    let payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    publish(&opts, payloads[..1000].to_vec()).await;
    wait_until(WAIT, "v1", || handle.registry.get(PIPELINE).is_some()).await;
    // The concept changes: the same readings now mean the opposite.
    let flipped: Vec<Vec<u8>> = payloads[1000..1600].iter().map(|p| flip(p)).collect();
    publish(&opts, flipped).await;
    wait_until(WAIT, "1600 samples", || stored(&handle) == 1600).await;
    let addr = handle.http_addr;
    let mut v = serde_json::Value::Null;
    let until = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < until {
        v = json_request(addr, "GET", "/v1/pipelines/occupancy/drift")
            .await
            .1;
        // (Not the new version's scored samples: the flipped ones are its
        // training data, which it is not scored on.)
        let alarmed = v["concept"]["alarms"]
            .as_array()
            .is_some_and(|a| !a.is_empty());
        if alarmed && handle.stats.snapshot().trainings >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        handle.stats.snapshot().trainings >= 2,
        "no retraining within {WAIT:?}: {v}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v2 = json_request(addr, "GET", "/v1/pipelines/occupancy/drift")
        .await
        .1;
    eprintln!("concept: {}", v2["concept"]);
    let alarms = v2["concept"]["alarms"].as_array().unwrap();
    assert!(!alarms.is_empty(), "{v}");
    let history = handle.registry.history(&handle.store, PIPELINE).unwrap();
    assert!(
        history.iter().any(|e| e.action == "drift_alarm"),
        "alarms are on the timeline"
    );
    let cards = handle.registry.cards(&handle.store, PIPELINE).unwrap();
    let drift_trainings = cards
        .iter()
        .filter(|c| c.trigger == edgeloop::learn::Trigger::Drift)
        .count();
    assert_eq!(drift_trainings, 1, "one change, one retraining: {alarms:?}");
    stop(running, handle, token).await;

    // The alarm history survives a restart.
    let (running, handle, token) = start(cfg).await;
    let (_, after) = json_request(handle.http_addr, "GET", "/v1/pipelines/occupancy/drift").await;
    let seqs = |a: &serde_json::Value| -> Vec<u64> {
        a.as_array()
            .unwrap()
            .iter()
            .map(|x| x["sample_seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        seqs(&after["concept"]["alarms"]),
        seqs(&v2["concept"]["alarms"])
    );
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_challenger_is_stored_with_its_reason_and_the_champion_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    trains_at(&mut cfg, 500, 500, false);
    cfg.pipelines[0].model.margin_recent = 1.0; // no challenger can gain a whole point
    let (running, handle, token) = start(cfg).await;
    let opts = replay_opts("datatraining.txt", port, Some(1000));
    let payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    publish(&opts, payloads[..500].to_vec()).await;
    wait_until(WAIT, "v1", || handle.registry.get(PIPELINE).is_some()).await;
    publish(&opts, payloads[500..].to_vec()).await;
    wait_until(WAIT, "v2 stored", || {
        handle.store.model_versions(PIPELINE).unwrap().len() == 2
    })
    .await;
    assert_eq!(
        handle.registry.get(PIPELINE).unwrap().version,
        1,
        "the champion keeps serving"
    );
    assert_eq!(handle.store.serving_version(PIPELINE).unwrap(), Some(1));
    let cards = handle.registry.cards(&handle.store, PIPELINE).unwrap();
    let first = cards[0].decision.as_ref().unwrap();
    assert!(first.promoted && first.champion_version.is_none());
    let d = cards[1].decision.as_ref().unwrap();
    eprintln!("{d:?}");
    assert!(!d.promoted);
    assert_eq!(d.champion_version, Some(1));
    assert!(d.reason.starts_with("recent holdout"), "{}", d.reason);
    assert!(d.champion_recent.is_some() && d.challenger_recent.is_some());
    assert!(
        d.champion_old.is_some() && d.challenger_old.is_some(),
        "the older slice is scored too"
    );
    // The refusal is on the timeline, and serving did not change.
    let history = handle.registry.history(&handle.store, PIPELINE).unwrap();
    // (Alarms, which only annotate: drift_alarm, data_drift_alarm,
    // anomaly_alarm, are left out.)
    let events: Vec<(u32, &str)> = history
        .iter()
        .filter(|e| !e.action.ends_with("_alarm"))
        .map(|e| (e.version, e.action.as_str()))
        .collect();
    assert_eq!(events, vec![(1, "trained"), (2, "refused")]);
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_labels_match_by_sample_id_or_device_and_time_and_unmatched_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (running, handle, token) = start(config(dir.path(), Broker::Embedded(port))).await;
    let mut opts = replay_opts("datatest.txt", port, Some(10));
    opts.drop_columns = vec!["Occupancy".into()];
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(WAIT, "10 unlabelled samples", || stored(&handle) == 10).await;
    assert_eq!(handle.store.counts(PIPELINE).unwrap().labelled_total, 0);
    // The true labels, sent later on the label topic.
    let mut reader = csv::Reader::from_path(data("datatest.txt")).unwrap();
    let rows: Vec<(String, String)> = reader
        .records()
        .take(10)
        .map(|r| {
            let r = r.unwrap();
            (r[0].to_string(), r[6].to_string())
        })
        .collect();
    let mut labels = Vec::new();
    for (i, (_, y)) in rows.iter().enumerate().take(5) {
        labels.push(
            serde_json::to_vec(
                &serde_json::json!({ "sample_id": i, "Occupancy": y.parse::<u8>().unwrap() }),
            )
            .unwrap(),
        );
    }
    for (date, y) in &rows[5..8] {
        labels.push(
            serde_json::to_vec(
                &serde_json::json!({ "Date": date, "Occupancy": y.parse::<u8>().unwrap() }),
            )
            .unwrap(),
        );
    }
    labels.push(br#"{"sample_id": 999, "Occupancy": 1}"#.to_vec());
    labels.push(br#"{"Date": "2001-01-01 00:00:00", "Occupancy": 0}"#.to_vec());
    let mut label_opts = replay_opts("datatest.txt", port, None);
    label_opts.topic = "labels/room1/occupancy".into();
    publish(&label_opts, labels).await;
    wait_until(WAIT, "labels handled", || {
        let s = handle.stats.snapshot();
        s.labels_matched + s.labels_unmatched == 10
    })
    .await;
    let s = handle.stats.snapshot();
    assert_eq!((s.labels_matched, s.labels_unmatched), (8, 2));
    assert_eq!(handle.store.counts(PIPELINE).unwrap().labelled_total, 8);
    let stored_labels: Vec<(u64, String)> = handle
        .store
        .labelled(PIPELINE)
        .unwrap()
        .into_iter()
        .map(|(seq, s)| (seq, s.label.unwrap()))
        .collect();
    let expected: Vec<(u64, String)> = (0..8).map(|i| (i as u64, rows[i].1.clone())).collect();
    assert_eq!(stored_labels, expected);
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_labels_feed_the_concept_drift_detector() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    trains_at(&mut cfg, 500, NEVER, false);
    let (running, handle, token) = start(cfg).await;
    let opts = replay_opts("datatraining.txt", port, Some(800));
    let payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    publish(&opts, payloads[..500].to_vec()).await;
    wait_until(WAIT, "v1", || handle.registry.get(PIPELINE).is_some()).await;
    // 300 readings without labels, then their labels, late, by sample id.
    let unlabelled: Vec<Vec<u8>> = payloads[500..]
        .iter()
        .map(|p| {
            let mut v: serde_json::Value = serde_json::from_slice(p).unwrap();
            v.as_object_mut().unwrap().remove("Occupancy");
            serde_json::to_vec(&v).unwrap()
        })
        .collect();
    publish(&opts, unlabelled).await;
    wait_until(WAIT, "800 samples", || stored(&handle) == 800).await;
    let labels: Vec<Vec<u8>> = payloads[500..]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            serde_json::to_vec(
                &serde_json::json!({ "sample_id": 500 + i, "Occupancy": v["Occupancy"] }),
            )
            .unwrap()
        })
        .collect();
    let mut label_opts = replay_opts("datatraining.txt", port, None);
    label_opts.topic = "labels/room1/occupancy".into();
    publish(&label_opts, labels).await;
    let addr = handle.http_addr;
    let mut scored = 0;
    let until = std::time::Instant::now() + WAIT;
    while scored < 300 && std::time::Instant::now() < until {
        scored = json_request(addr, "GET", "/v1/pipelines/occupancy/drift")
            .await
            .1["concept"]["scored"]
            .as_u64()
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(scored, 300, "every late label scored once");
    assert_eq!(handle.stats.snapshot().labels_matched, 300);

    // The same samples labelled again, each message new (not a redelivery)
    // and its label flipped: the stored labels are replaced, and nothing is
    // scored twice (before: 600 scored, the serving version's live tally
    // counting each of its predictions once per label sent).
    let live = |v: &serde_json::Value| {
        v["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["serving"] == true)
            .map(|v| v["live"].clone())
    };
    let versions = "/v1/pipelines/occupancy/versions";
    let live_before = live(&json_request(addr, "GET", versions).await.1);
    let relabels: Vec<Vec<u8>> = payloads[500..]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let v: serde_json::Value = serde_json::from_slice(p).unwrap();
            let y = match &v["Occupancy"] {
                serde_json::Value::String(y) => y.parse::<u64>().unwrap(),
                y => y.as_f64().unwrap() as u64,
            };
            let flipped = 1 - y;
            serde_json::to_vec(&serde_json::json!({
                "sample_id": 500 + i, "Occupancy": flipped, "sent": "again"
            }))
            .unwrap()
        })
        .collect();
    publish(&label_opts, relabels).await;
    wait_until(WAIT, "600 labels matched", || {
        handle.stats.snapshot().labels_matched == 600
    })
    .await;
    // Whatever was handed to the learner has been scored by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drift = json_request(addr, "GET", "/v1/pipelines/occupancy/drift")
        .await
        .1;
    assert_eq!(
        drift["concept"]["scored"], 300,
        "relabelled samples scored again"
    );
    assert_eq!(
        live(&json_request(addr, "GET", versions).await.1),
        live_before
    );
    assert_eq!(handle.store.counts(PIPELINE).unwrap().labelled_total, 800);
    stop(running, handle, token).await;
}

/// `edgeloop evaluate --prequential --json` on datatraining.txt, with `extra` flags.
fn evaluate_json(extra: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args([
            "evaluate",
            "--prequential",
            "--label",
            "Occupancy",
            "--json",
        ])
        .args(extra)
        .arg("--file")
        .arg(data("datatraining.txt"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn evaluate_prequential_json_reports_both_models_over_time() {
    let v = evaluate_json(&[]);
    assert_eq!(v["rows"], 8143);
    // The first model exists after min_samples (200) rows; both are scored from then on.
    assert_eq!(v["scored"], 8143 - 200);
    assert_eq!(
        v["features"].as_array().unwrap().len(),
        5,
        "Date is not numeric"
    );
    assert_eq!(v["segments"].as_array().unwrap().len(), 10);
    let scored: u64 = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scored"].as_u64().unwrap())
        .sum();
    assert_eq!(scored, 7943);
    assert!(
        v["loop_accuracy"].as_f64().unwrap() > 0.5 && v["frozen_accuracy"].as_f64().unwrap() > 0.5
    );
    let decisions = v["decisions"].as_array().unwrap();
    assert_eq!(decisions[0]["index"], 199);
    assert_eq!(decisions[0]["reason"], "first model");
    assert!(v["model_bytes_peak"].as_u64().unwrap() > 0);
    // Another family through the same loop: the frozen model is a tree fit on
    // the first 200 rows, scored on every later row.
    let v = evaluate_json(&["--family", "tree"]);
    assert_eq!(v["loop_config"]["model"]["family"], "tree");
    let csv =
        edgeloop::ingest::csv_file::read_labelled_csv(&data("datatraining.txt"), "Occupancy", &[])
            .unwrap();
    let first: Vec<(Vec<f32>, String)> = (0..200)
        .map(|i| (csv.row(i).to_vec(), csv.labels[i].clone()))
        .collect();
    let refs: Vec<&(Vec<f32>, String)> = first.iter().collect();
    let cfg = edgeloop::config::ModelConfig {
        family: edgeloop::learn::Family::Tree,
        ..Default::default()
    };
    let tree = edgeloop::monitor::continual::fit(&refs, &csv.features, &cfg, None).unwrap();
    let proba = tree.predict(&csv.x[200 * 5..]);
    let pred = edgeloop::learn::model::argmax_rows(&proba, 2);
    let correct = pred
        .iter()
        .zip(&csv.labels[200..])
        .filter(|(k, l)| &tree.classes()[**k] == *l)
        .count();
    let frozen = v["frozen_accuracy"].as_f64().unwrap();
    assert_eq!(
        (frozen * 7943.0).round() as usize,
        correct,
        "frozen tree accuracy {frozen}"
    );
    // Unknown column: a clear error, non-zero exit.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["evaluate", "--prequential", "--label", "Nope", "--file"])
        .arg(data("datatraining.txt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no column `Nope`"));
}

/// `edgeloop evaluate --pipeline` runs the pipeline's `model.window` as the
/// daemon does: `window = 0` is every labelled sample. It was a window of
/// none, so every row went straight to the reservoir: with `reservoir = 50`
/// the loop never held `min_labels` (300) rows and never trained. Now the
/// first training runs after the 300th row on its older 80 % (the temporal
/// holdout is the newest 0.2 × 300 = 60), and `--window 0` is the same.
#[test]
fn evaluate_with_a_pipeline_window_of_0_trains_on_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edgeloop.toml");
    std::fs::write(
        &config,
        "[[pipelines]]\nname = \"occupancy\"\ntopics = [\"sensors/+/occupancy\"]\n\
         features = [\"Temperature\", \"Humidity\", \"Light\", \"CO2\", \"HumidityRatio\"]\n\
         label = \"Occupancy\"\nclasses = [\"0\", \"1\"]\n\
         [pipelines.model]\nwindow = 0\nreservoir = 50\nmin_labels = 300\n\
         retrain_every = 1000000\nholdout_fraction = 0.2\n\
         [pipelines.drift]\nretrain_on_drift = false\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    for extra in [&[][..], &["--window", "0"][..]] {
        let mut args = vec!["--pipeline", "occupancy", "--config", config];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["evaluate", "--prequential", "--json"])
            .args(&args)
            .arg("--file")
            .arg(data("datatraining.txt"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let first = &v["decisions"][0];
        assert_eq!(first["index"], 299, "{extra:?}: {}", v["decisions"]);
        assert_eq!(first["n_train"], 240, "{extra:?}: {}", v["decisions"]);
        assert_eq!(v["scored"], 8143 - 300, "{extra:?}");
    }
}

/// A forest serves through the daemon (tree ensembles run by edgeloop's own
/// operator inside tract): its HTTP outputs equal the in-process model's, and
/// the card's live accuracy, tallied as labelled samples arrive after
/// deployment, equals the in-process model's accuracy on those samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forest_serves_and_its_card_tallies_live_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    trains_at(&mut cfg, 2000, NEVER, false);
    cfg.pipelines[0].model.family = edgeloop::learn::Family::Forest;
    let (running, handle, token) = start(cfg).await;

    let opts = replay_opts("datatraining.txt", port, Some(2000));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(WAIT, "a trained model", || {
        handle.registry.get(PIPELINE).is_some()
    })
    .await;
    let serving = handle.registry.get(PIPELINE).unwrap();
    assert_eq!(
        (serving.version, serving.card.family.as_str()),
        (1, "forest")
    );

    // Labelled samples of another period, after deployment.
    let test_opts = replay_opts("datatest.txt", port, None);
    publish(
        &test_opts,
        edgeloop::ingest::replay::csv_payloads(&test_opts).unwrap(),
    )
    .await;
    let (x, y) = rows("datatest.txt");
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let until = std::time::Instant::now() + WAIT;
    let live = loop {
        let (status, body) = client
            .request("GET", "/v1/pipelines/occupancy/models", None)
            .await
            .unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let live = v["models"][0]["live"].clone();
        if live["scored"].as_u64() >= Some(y.len() as u64) || std::time::Instant::now() > until {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(live["scored"].as_u64(), Some(y.len() as u64), "{live}");
    let stored_model = handle.store.get_model(PIPELINE, 1).unwrap().unwrap();
    let model = Model::from_json(&stored_model.params_json).unwrap();
    assert_eq!(model.family(), edgeloop::learn::Family::Forest);
    let flat: Vec<f32> = x.iter().flatten().copied().collect();
    let proba = model.predict(&flat);
    let predicted = edgeloop::learn::model::argmax_rows(&proba, 2);
    let correct = predicted
        .iter()
        .zip(&y)
        .filter(|(k, t)| &model.classes()[**k] == *t)
        .count();
    println!(
        "forest live accuracy {live} vs in-process {correct}/{}",
        y.len()
    );
    assert_eq!(live["correct"].as_u64(), Some(correct as u64));

    // HTTP predictions equal the in-process forest's.
    let resp = predict_rows(&mut client, &x[..200]).await;
    for (i, p) in resp.predictions.iter().enumerate() {
        for (k, class) in model.classes().iter().enumerate() {
            assert!((p.probabilities[class] - proba[i * 2 + k]).abs() <= 1e-5);
        }
    }
    stop(running, handle, token).await;
}

/// The air-quality regression features, in model input order.
const AQ_FEATURES: [&str; 8] = [
    "PT08_S1_CO",
    "PT08_S2_NMHC",
    "PT08_S3_NOx",
    "PT08_S4_NO2",
    "PT08_S5_O3",
    "T",
    "RH",
    "AH",
];

/// One hour of data/air_quality_uci: `-200` (the file's missing sentinel)
/// is `None`.
struct AqRow {
    /// "YYYY-MM-DD HH:MM:SS" (the pipeline's `timestamp_format`).
    date: String,
    x: [Option<f32>; 8],
    /// CO_GT, mg/m³.
    y: Option<f64>,
}

impl AqRow {
    /// The message a device sends: a missing feature is `null` (stored as
    /// missing, imputed by the model), a missing CO_GT is left out (an
    /// unlabelled sample, predicted over MQTT).
    fn payload(&self) -> Vec<u8> {
        let mut v = serde_json::json!({ "Date": self.date });
        for (name, x) in AQ_FEATURES.iter().zip(self.x) {
            v[*name] = x.map_or(serde_json::Value::Null, |x| f64::from(x).into());
        }
        if let Some(y) = self.y {
            v["CO_GT"] = y.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    /// The timestamp the decoder reads, ms since the Unix epoch (UTC).
    fn timestamp_ms(&self) -> i64 {
        chrono::NaiveDateTime::parse_from_str(&self.date, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    /// Features as the decoder stores them (`NaN` = missing).
    fn features(&self) -> Vec<f32> {
        self.x.iter().map(|x| x.unwrap_or(f32::NAN)).collect()
    }
}

fn air_quality_rows() -> Vec<AqRow> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/air_quality_uci/AirQualityUCI.csv");
    let mut reader = csv::Reader::from_path(path).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (date, time, label) = (col("Date"), col("Time"), col("CO_GT"));
    let features: Vec<usize> = AQ_FEATURES.iter().map(|f| col(f)).collect();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let value =
                |i: usize| Some(r[i].trim().parse::<f64>().unwrap()).filter(|v| *v != -200.0);
            let dmy: Vec<u32> = r[date].split('/').map(|p| p.parse().unwrap()).collect();
            let hms: Vec<u32> = r[time].split(':').map(|p| p.parse().unwrap()).collect();
            AqRow {
                date: format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
                    dmy[2], dmy[1], dmy[0], hms[0], hms[1], hms[2]
                ),
                x: std::array::from_fn(|k| value(features[k]).map(|v| v as f32)),
                y: value(label),
            }
        })
        .collect()
}

/// A regression pipeline `air` on data/air_quality_uci: CO_GT from the
/// metal-oxide sensors and the weather, `family`, `detector`.
fn air_quality_config(
    store: &std::path::Path,
    broker: Broker,
    family: edgeloop::config::Family,
) -> edgeloop::config::Config {
    let mut cfg = config(store, broker);
    let mut p = cfg.pipelines[0].clone();
    p.name = "air".into();
    p.topics = vec!["sensors/+/air".into()];
    p.label_topics = vec![];
    p.features = AQ_FEATURES.iter().map(|f| f.to_string()).collect();
    p.label = "CO_GT".into();
    p.classes = vec![];
    p.timestamp = "Date".into();
    p.task = edgeloop::learn::Task::Regression;
    p.model.family = family;
    cfg.pipelines = vec![p];
    cfg
}

/// The loop on a regression pipeline, over mosquitto: 2,000 labelled hours
/// train a ridge version; the next 1,000 labelled hours are predicted over
/// HTTP (the served values equal the in-process model's, and so does R²) and
/// scored by the concept-drift monitor (|y − ŷ|); hours without CO_GT get
/// their predictions over MQTT; a non-numeric label is a bad_label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_pipeline_trains_serves_and_scores_air_quality() {
    use edgeloop::http::RegressionResponse;
    use edgeloop::learn::metrics::regression_metrics;
    const AIR: &str = "air";
    let mosquitto = Mosquitto::start();
    let broker = Broker::External(mosquitto.port);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = air_quality_config(dir.path(), broker, edgeloop::config::Family::Ridge);
    trains_at(&mut cfg, 2000, NEVER, false);
    cfg.validate().unwrap();
    let pipeline = cfg.pipelines[0].settings();
    let (running, handle, token) = start(cfg).await;

    let rows = air_quality_rows();
    assert_eq!(rows.len(), 9357);
    // An hour whose every feature is -200 has nothing to learn from (the
    // decoder rejects it: no_features); in this file the features are
    // missing all together or not at all.
    let readable = |r: &&AqRow| r.x.iter().any(Option::is_some);
    let labelled: Vec<&AqRow> = rows
        .iter()
        .filter(|r| r.y.is_some())
        .filter(readable)
        .collect();
    assert_eq!(
        labelled.len(),
        7344,
        "readable hours whose CO_GT is not -200"
    );
    let (train, eval) = (&labelled[..2000], &labelled[2000..3000]);
    // The hours without CO_GT after the training period, unlabelled.
    let last_train = train[1999].date.clone();
    let unlabelled: Vec<&AqRow> = rows
        .iter()
        .filter(|r| r.y.is_none() && r.date > last_train)
        .filter(readable)
        .take(40)
        .collect();
    assert_eq!(unlabelled.len(), 40);

    let mut opts = replay_opts("unused", mosquitto.port, None);
    opts.topic = "sensors/aq1/air".into();
    let mut payloads: Vec<Vec<u8>> = train.iter().map(|r| r.payload()).collect();
    // A label that is not a number: counted, the sample kept unlabelled.
    let mut bad: serde_json::Value = serde_json::from_slice(&train[0].payload()).unwrap();
    bad["Date"] = "2004-03-01 00:00:00".into();
    bad["CO_GT"] = "high".into();
    payloads.insert(1000, serde_json::to_vec(&bad).unwrap());
    publish(&opts, payloads).await;
    wait_until(WAIT, "a trained regressor", || {
        handle.registry.get(AIR).is_some()
    })
    .await;
    let serving = handle.registry.get(AIR).unwrap();
    assert_eq!(serving.version, 1);
    assert_eq!(serving.card.task, edgeloop::learn::Task::Regression);
    assert_eq!(serving.card.family, "ridge");
    assert_eq!(serving.card.n_samples, 2000);
    assert!(serving.card.holdout.is_none() && serving.card.classes.is_empty());
    let counts = handle.store.counts(AIR).unwrap();
    assert_eq!((counts.samples, counts.labelled_total), (2001, 2000));
    assert_eq!(handle.stats.problems(Reason::BadLabel), 1);

    // The same training in-process: the same card metrics and the same model.
    let samples: Vec<edgeloop::ingest::decode::Sample> = train
        .iter()
        .map(|r| edgeloop::ingest::decode::Sample {
            timestamp_ms: r.timestamp_ms(),
            device: "aq1".into(),
            features: r.features(),
            label: r.y.map(|y| y.to_string()),
        })
        .collect();
    let reference = edgeloop::learn::train_version(
        &pipeline,
        &samples,
        None,
        1,
        edgeloop::learn::Trigger::MinLabels,
        None,
        || false,
    )
    .unwrap();
    let (served_card, ref_card) = (
        serving.card.holdout_regression.clone().unwrap(),
        reference.card.holdout_regression.clone().unwrap(),
    );
    eprintln!("holdout: daemon {served_card:?}, in-process {ref_card:?}");
    assert_eq!(served_card, ref_card);

    // Held-out hours (after the training period) over HTTP.
    let (sub, stop_sub) = subscribe(mosquitto.port, "edgeloop/air/predictions/#").await;
    let mut sub = sub;
    let body_rows: Vec<serde_json::Value> = eval
        .iter()
        .map(|r| {
            serde_json::Value::Object(
                AQ_FEATURES
                    .iter()
                    .zip(r.x)
                    .map(|(k, x)| {
                        (
                            k.to_string(),
                            x.map_or(serde_json::Value::Null, |x| f64::from(x).into()),
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "rows": body_rows })).unwrap();
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let (status, resp) = client
        .request("POST", "/v1/pipelines/air/predict", Some(body))
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    let raw: serde_json::Value = serde_json::from_slice(&resp).unwrap();
    let keys: Vec<&str> = raw["predictions"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        keys.contains(&"prediction")
            && keys.contains(&"anomaly_score")
            && keys.iter().all(|k| *k == "prediction"
                || k.starts_with("anomaly")
                || k.starts_with("residual_")),
        "a regressor answers a value (and the row's anomaly fields), no label or probabilities: {keys:?}"
    );
    let resp: RegressionResponse = serde_json::from_slice(&resp).unwrap();
    assert_eq!((resp.pipeline.as_str(), resp.model_version), (AIR, 1));
    let served: Vec<f64> = resp
        .predictions
        .iter()
        .map(|p| f64::from(p.prediction))
        .collect();
    assert_eq!(served.len(), 1000);
    let x: Vec<f32> = eval.iter().flat_map(|r| r.features()).collect();
    let in_process: Vec<f64> = reference
        .model
        .predict(&x)
        .into_iter()
        .map(f64::from)
        .collect();
    let max_diff = served
        .iter()
        .zip(&in_process)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let y: Vec<f64> = eval.iter().map(|r| r.y.unwrap()).collect();
    let (served_m, ref_m) = (
        regression_metrics(&y, &served).unwrap(),
        regression_metrics(&y, &in_process).unwrap(),
    );
    eprintln!(
        "held-out 1000 hours: served {served_m:?}, in-process {ref_m:?}, max |diff| {max_diff:e}"
    );
    assert!(
        max_diff <= 1e-4,
        "served and in-process predictions differ by {max_diff}"
    );
    let (r2, ref_r2) = (served_m.r2.unwrap(), ref_m.r2.unwrap());
    assert!(
        (r2 - ref_r2).abs() <= 1e-6,
        "served R² {r2}, in-process {ref_r2}"
    );
    assert!(r2 > 0.8, "served R² {r2} on the next 1000 hours");

    // The held-out hours arrive labelled: the concept-drift monitor scores
    // each with |y − ŷ|, so its mean is the served MAE.
    publish(&opts, eval.iter().map(|r| r.payload()).collect()).await;
    let addr = handle.http_addr;
    let mut concept = serde_json::Value::Null;
    let until = std::time::Instant::now() + WAIT;
    while concept["scored"].as_u64() != Some(1000) && std::time::Instant::now() < until {
        concept = json_request(addr, "GET", "/v1/pipelines/air/drift").await.1["concept"].clone();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("concept: {concept}");
    assert_eq!(concept["scored"], 1000, "{concept}");
    assert!(concept["error_rate"].is_null());
    let mae = concept["mean_abs_error"].as_f64().unwrap();
    assert!(
        (mae - served_m.mae).abs() <= 1e-5,
        "monitor MAE {mae}, served {}",
        served_m.mae
    );
    // The version's card carries the same live score.
    let models = json_request(addr, "GET", "/v1/pipelines/air/models")
        .await
        .1;
    let live = &models["models"][0]["live"];
    assert_eq!(live["scored"], 1000, "{live}");
    assert!(live["accuracy"].is_null());
    let live_mae = live["mean_abs_error"].as_f64().unwrap();
    assert!(
        (live_mae - served_m.mae).abs() <= 1e-5,
        "card live MAE {live_mae}"
    );

    // Hours without CO_GT are predicted over MQTT.
    publish(&opts, unlabelled.iter().map(|r| r.payload()).collect()).await;
    let mut messages = Vec::new();
    while messages.len() < unlabelled.len() {
        let m = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap()
            .unwrap();
        messages.push(m);
    }
    stop_sub.cancel();
    let ids: std::collections::BTreeSet<u64> = messages
        .iter()
        .map(|m| m["sample_id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        unlabelled.len(),
        "one message per unlabelled hour"
    );
    let x: Vec<f32> = unlabelled.iter().flat_map(|r| r.features()).collect();
    let expected = reference.model.predict(&x);
    for (i, m) in messages.iter().enumerate() {
        assert!(
            m.get("label").is_none() && m.get("probabilities").is_none(),
            "{m}"
        );
        assert_eq!(
            (m["pipeline"].as_str(), m["device"].as_str()),
            (Some(AIR), Some("aq1"))
        );
        assert_eq!(m["model_version"], 1);
        let msg: edgeloop::serve::predictions::ValueMessage =
            serde_json::from_value(m.clone()).unwrap();
        let k = unlabelled
            .iter()
            .position(|r| r.timestamp_ms() == msg.timestamp_ms)
            .unwrap();
        let diff = (msg.prediction - expected[k]).abs();
        assert!(
            diff <= 1e-4,
            "message {i}: {} vs in-process {}",
            msg.prediction,
            expected[k]
        );
    }
    assert_eq!(handle.stats.problems(Reason::BadLabel), 1);

    // A second version over the API: champion and challenger are judged on
    // R² over the same holdout, the newest 20 % of the 3,000 labelled hours.
    let (status, card) = json_request(addr, "POST", "/v1/pipelines/air/train").await;
    assert_eq!(status, 200, "{card}");
    let card: edgeloop::learn::card::ModelCard = serde_json::from_value(card).unwrap();
    let decision = card.decision.clone().unwrap();
    eprintln!("version 2: {decision:?}");
    assert_eq!(
        (card.version, card.n_samples, card.n_holdout),
        (2, 3000, 600)
    );
    assert_eq!(decision.champion_version, Some(1));
    let recent = &eval[400..];
    let x: Vec<f32> = recent.iter().flat_map(|r| r.features()).collect();
    let y: Vec<f64> = recent.iter().map(|r| r.y.unwrap()).collect();
    let champion: Vec<f64> = reference
        .model
        .predict(&x)
        .into_iter()
        .map(f64::from)
        .collect();
    let champion_r2 = regression_metrics(&y, &champion).unwrap().r2.unwrap();
    let judged = decision.champion_recent.unwrap();
    assert!(
        (judged - champion_r2).abs() <= 1e-9,
        "champion R² {judged}, in-process {champion_r2}"
    );
    assert_eq!(card.holdout_score, decision.challenger_recent);
    assert_eq!(handle.registry.get(AIR).unwrap().version, 2);
    stop(running, handle, token).await;
}

#[test]
fn regression_config_refuses_ddm_and_classes_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::Embedded(free_port());
    let mut cfg = air_quality_config(dir.path(), broker, edgeloop::config::Family::Forest);
    cfg.validate().unwrap();
    cfg.pipelines[0].drift.detector = edgeloop::monitor::continual::DetectorKind::Ddm;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("pipelines[0].drift.detector"), "{err}");
    cfg.pipelines[0].drift.detector = edgeloop::monitor::continual::DetectorKind::PageHinkley;
    cfg.validate().unwrap();
    cfg.pipelines[0].classes = vec!["1".into()];
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("pipelines[0].classes"), "{err}");
}
