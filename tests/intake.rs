//! Model intake, black-box: a daemon trains version 1 on occupancy rows,
//! then bad model files (truncated, random bytes, wrong input width, an
//! operator tract lacks, oversized, wrong or missing SHA-256) are refused
//! each with its own reason while predictions keep coming from version 1;
//! a good foreign model is registered, not served, until promoted, and then
//! serves scikit-learn's probabilities. Once over HTTP, once through the
//! models directory. Reference files: `tests/fixtures/intake/gen_intake.py`.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use edgeloop::daemon::{self, DaemonHandle, Running};
use edgeloop::demo::HttpClient;
use edgeloop::http::PredictResponse;
use edgeloop::ingest::decode::Sample;
use edgeloop::learn::{self, Trigger};
use edgeloop::serve::intake::sha256_hex;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PIPELINE: &str = "occupancy";
const WAIT: Duration = Duration::from_secs(90);
/// `[models] max_bytes` in these tests.
const LIMIT: u64 = 64 * 1024;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/intake")
            .join(name),
    )
    .unwrap()
}

fn reference() -> Value {
    serde_json::from_slice(&fixture("intake.json")).unwrap()
}

/// Starts a daemon that trains version 1 at 2,000 labels (and never again),
/// with the models directory `models_dir`, and replays 2,000 rows.
async fn start_with_v1(
    dir: &Path,
    models_dir: Option<&Path>,
) -> (Running, DaemonHandle, CancellationToken) {
    init_logs();
    let broker = Broker::Embedded(free_port());
    let mut cfg = config(dir, broker);
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = 2000;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    cfg.models.max_bytes = LIMIT;
    cfg.models.poll_ms = 100;
    if let Some(m) = models_dir {
        cfg.models.dir = m.to_path_buf();
    }
    let token = CancellationToken::new();
    let running = daemon::start(cfg, token.clone()).await.unwrap();
    let handle = running.handle.clone();
    assert!(
        handle.wait_subscribed(WAIT).await,
        "the daemon did not subscribe"
    );
    let opts = replay_opts("datatraining.txt", broker.port(), Some(2000));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(WAIT, "version 1", || {
        handle.registry.get(PIPELINE).is_some()
    })
    .await;
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 1);
    (running, handle, token)
}

async fn predict(client: &mut HttpClient, rows: &[Vec<f32>]) -> PredictResponse {
    let (status, body) = client
        .request(
            "POST",
            "/v1/pipelines/occupancy/predict",
            Some(predict_body(rows)),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Predicts one row in a loop until `stop`; the versions that answered.
fn keep_predicting(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u32>> {
    tokio::spawn(async move {
        let mut client = HttpClient::connect(addr).await.unwrap();
        let row = vec![vec![21.0, 27.0, 450.0, 700.0, 0.0043]];
        let mut versions = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            versions.push(predict(&mut client, &row).await.model_version);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        versions
    })
}

/// `PUT /v1/pipelines/occupancy/models` with `?sha256=` when given.
async fn upload(addr: std::net::SocketAddr, body: Vec<u8>, sha: Option<String>) -> (u16, Value) {
    let mut client = HttpClient::connect(addr).await.unwrap();
    let path = match sha {
        Some(s) => format!("/v1/pipelines/occupancy/models?sha256={s}"),
        None => "/v1/pipelines/occupancy/models".into(),
    };
    let (status, resp) = client.request("PUT", &path, Some(body)).await.unwrap();
    let v = serde_json::from_slice(&resp)
        .unwrap_or_else(|e| panic!("{status}: {} ({e})", String::from_utf8_lossy(&resp)));
    (status, v)
}

/// `PUT /v1/pipelines/occupancy/models` with the SHA-256 in the `x-sha256`
/// header (and `query`, e.g. `?sha256=…`, appended to the path).
async fn upload_with_header(
    addr: std::net::SocketAddr,
    body: &[u8],
    sha: &str,
    query: &str,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /v1/pipelines/occupancy/models{query} HTTP/1.1\r\nhost: edgeloop\r\n\
         x-sha256: {sha}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text[9..12].parse().unwrap();
    let json = text.split_once("\r\n\r\n").unwrap().1;
    (
        status,
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{text} ({e})")),
    )
}

/// Deterministic bytes that are not a protobuf (xorshift64).
fn random_bytes(n: usize) -> Vec<u8> {
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// An edgeloop-exported logistic model for the first 3 occupancy features.
fn three_feature_model() -> Vec<u8> {
    let cfg = edgeloop::config::Config::load_with_env(None, std::iter::empty()).unwrap();
    let mut p = cfg.pipelines[0].clone();
    p.features.truncate(3);
    let (x, y) = rows("datatraining.txt");
    let samples: Vec<Sample> = x
        .iter()
        .zip(&y)
        .take(500)
        .enumerate()
        .map(|(i, (r, l))| Sample {
            timestamp_ms: i as i64,
            device: String::new(),
            features: r[..3].to_vec(),
            label: Some(l.clone()),
        })
        .collect();
    learn::train_version(
        &p.settings(),
        &samples,
        None,
        1,
        Trigger::Manual,
        None,
        || false,
    )
    .unwrap()
    .onnx
}

/// `onnx` with its default operator set (`""`) stamped `version`: the
/// scikit-learn fixture's Sub, Div, Gemm and Softmax (opset 13) mean the
/// same up to opset 21.
fn with_opset(onnx: &[u8], version: i64) -> Vec<u8> {
    use prost::Message;
    let mut m = tract_onnx::pb::ModelProto::decode(onnx).unwrap();
    let set = m
        .opset_import
        .iter_mut()
        .find(|o| o.domain.is_empty())
        .unwrap();
    set.version = version;
    m.encode_to_vec()
}

/// The bad files, each with the reason key and a piece of its message.
fn bad_files() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str)> {
    let good = fixture("occupancy_sklearn.onnx");
    vec![
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "truncated",
            "truncated: the file ends inside a protobuf field",
        ),
        (
            "random",
            random_bytes(4096),
            "not_onnx",
            "not an ONNX model",
        ),
        (
            "wide",
            three_feature_model(),
            "wrong_width",
            "wrong input width: the model takes 3 features, pipeline `occupancy` has 5",
        ),
        (
            "det",
            fixture("unsupported_op.onnx"),
            "unsupported_operator",
            "unsupported operator: tract does not support operator ai.onnx.Det",
        ),
        (
            "opset99",
            with_opset(&good, 99),
            "unsupported_opset",
            "unsupported opset: tract implements the default operator set (ai.onnx) up to opset \
             21; the model imports opset 99",
        ),
        (
            "big",
            vec![0u8; LIMIT as usize + 1000],
            "oversized",
            "oversized: the model is 66536 bytes; at most 65536",
        ),
    ]
}

fn refused(handle: &DaemonHandle, reason: &str) -> u64 {
    handle.stats.snapshot().models_refused[reason]
}

/// The fixture rows predicted by the serving model equal scikit-learn's
/// `predict_proba` (and onnxruntime's) within 1e-5.
async fn assert_serves_sklearn(addr: std::net::SocketAddr, version: u32) {
    let r = reference();
    let rows: Vec<Vec<f32>> = serde_json::from_value(r["rows"].clone()).unwrap();
    let sk: Vec<Vec<f64>> = serde_json::from_value(r["sklearn_proba"].clone()).unwrap();
    let mut client = HttpClient::connect(addr).await.unwrap();
    let resp = predict(&mut client, &rows).await;
    assert_eq!(resp.model_version, version);
    for (i, (p, want)) in resp.predictions.iter().zip(&sk).enumerate() {
        for (k, class) in ["0", "1"].iter().enumerate() {
            let got = f64::from(p.probabilities[*class]);
            assert!(
                (got - want[k]).abs() <= 1e-5,
                "row {i} class {class}: {got} vs sklearn {}",
                want[k]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_are_checked_and_serve_only_once_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let (running, handle, token) = start_with_v1(dir.path(), None).await;
    let addr = handle.http_addr;
    let stop_flag = Arc::new(AtomicBool::new(false));
    let predictions = keep_predicting(addr, stop_flag.clone());

    for (what, bytes, reason, message) in bad_files() {
        let before = refused(&handle, reason);
        let (status, v) = upload(addr, bytes.clone(), Some(sha256_hex(&bytes))).await;
        let want = if reason == "oversized" { 413 } else { 422 };
        assert_eq!(status, want, "{what}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(error.contains(message), "{what}: {error}");
        assert_eq!(refused(&handle, reason), before + 1, "{what}");
        assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 1, "{what}");
        assert_eq!(
            handle.store.model_versions(PIPELINE).unwrap(),
            vec![1],
            "{what}"
        );
    }
    let good = fixture("occupancy_sklearn.onnx");
    // A wrong, a malformed and a missing SHA-256: 400.
    for (sha, message) in [
        (Some(sha256_hex(b"something else")), "bad sha256: mismatch"),
        (Some("12345".to_string()), "is not 64 hexadecimal digits"),
        (None, "bad sha256: missing"),
    ] {
        let (status, v) = upload(addr, good.clone(), sha).await;
        assert_eq!(status, 400, "{v}");
        assert!(v["error"].as_str().unwrap().contains(message), "{v}");
    }
    // The `x-sha256` header is checked too, and wins over the query.
    let wrong = sha256_hex(b"something else");
    let right = sha256_hex(&good);
    let (status, v) = upload_with_header(addr, &good, &wrong, &format!("?sha256={right}")).await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("bad sha256: mismatch"),
        "{v}"
    );
    assert_eq!(refused(&handle, "bad_sha256"), 4);
    assert_eq!(handle.store.model_versions(PIPELINE).unwrap(), vec![1]);

    // The good model (SHA-256 in the header): registered as version 2, not served.
    let (status, v) = upload_with_header(addr, &good, &right, "").await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["serving_version"], 1);
    assert_eq!(v["card"]["family"], "imported");
    assert_eq!(v["card"]["imported"]["source"], "upload");
    assert_eq!(v["card"]["imported"]["sha256"], sha256_hex(&good));
    assert_eq!(v["card"]["imported"]["bytes"], good.len());
    assert_eq!(v["card"]["imported"]["engine"], "tract");
    assert!(v["card"]["predict_p50_us"].as_f64().unwrap() > 0.0);
    assert_eq!(handle.stats.snapshot().models_imported, 1);
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop_flag.store(true, Ordering::Relaxed);
    let versions = predictions.await.unwrap();
    assert!(versions.len() > 10, "{} predictions", versions.len());
    assert!(versions.iter().all(|v| *v == 1), "{versions:?}");

    let mut client = HttpClient::connect(addr).await.unwrap();
    let (status, body) = client
        .request("GET", "/v1/pipelines/occupancy/models", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let models: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(models["serving_version"], 1);
    assert_eq!(models["models"].as_array().unwrap().len(), 2);
    let (status, body) = client
        .request("POST", "/v1/pipelines/occupancy/models/2/promote", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 2);
    assert_serves_sklearn(addr, 2).await;

    // `edgeloop models import`: the same upload from the command line.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"));
    cmd.args(["models", "import", "--pipeline", PIPELINE, "--url"])
        .arg(format!("http://{addr}"))
        .arg("--file")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/intake/occupancy_sklearn.onnx"),
        );
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same bytes as version 2: that version answers, nothing is stored.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("already stored as version 2, the same bytes; nothing imported"),
        "{text}"
    );
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 2);
    assert_eq!(handle.store.model_versions(PIPELINE).unwrap(), vec![1, 2]);

    // Uploaded again over HTTP: 200, version 2, `created: false`.
    let (status, v) = upload(addr, good.clone(), Some(sha256_hex(&good))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["created"].as_bool()),
        (Some(2), Some(false)),
        "{v}"
    );
    assert_eq!(v["card"]["imported"]["sha256"], sha256_hex(&good));
    assert_eq!(v["serving_version"], 2);
    // The ONNX of the trained version 1: version 1.
    let v1 = handle.store.get_model(PIPELINE, 1).unwrap().unwrap().onnx;
    let (status, v) = upload(addr, v1.clone(), Some(sha256_hex(&v1))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["created"].as_bool()),
        (Some(1), Some(false)),
        "{v}"
    );
    assert_eq!(v["card"]["family"], "logistic");
    assert_eq!(handle.store.model_versions(PIPELINE).unwrap(), vec![1, 2]);
    assert_eq!(handle.stats.snapshot().models_imported, 1);
    // A different model is a new version.
    let other = five_feature_model();
    assert_ne!(other, v1);
    let (status, v) = upload(addr, other.clone(), Some(sha256_hex(&other))).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["created"].as_bool()),
        (Some(3), Some(true)),
        "{v}"
    );
    assert_eq!(
        handle.store.model_versions(PIPELINE).unwrap(),
        vec![1, 2, 3]
    );
    assert_eq!(handle.stats.snapshot().models_imported, 2);
    // At tract's newest opset (21) a model is taken (opset 99 was refused
    // above, with the bad files).
    let newest = with_opset(&good, 21);
    let (status, v) = upload(addr, newest.clone(), Some(sha256_hex(&newest))).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["version"], 4, "{v}");
    assert_eq!(v["card"]["imported"]["engine"], "tract");
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 2);
    stop(running, handle, token).await;
}

/// A logistic model of the pipeline's five features trained here on the
/// first 1,000 training rows (both classes): valid for the pipeline, other bytes than any
/// stored version's.
fn five_feature_model() -> Vec<u8> {
    let cfg = edgeloop::config::Config::load_with_env(None, std::iter::empty()).unwrap();
    let (x, y) = rows("datatraining.txt");
    let samples: Vec<Sample> = x
        .iter()
        .zip(&y)
        .take(1000)
        .enumerate()
        .map(|(i, (r, l))| Sample {
            timestamp_ms: i as i64,
            device: String::new(),
            features: r.to_vec(),
            label: Some(l.clone()),
        })
        .collect();
    learn::train_version(
        &cfg.pipelines[0].settings(),
        &samples,
        None,
        1,
        Trigger::Manual,
        None,
        || false,
    )
    .unwrap()
    .onnx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_directory_files_are_checked_moved_and_serve_only_once_promoted() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let (running, handle, token) = start_with_v1(dir.path(), Some(&models)).await;
    let addr = handle.http_addr;
    let stop_flag = Arc::new(AtomicBool::new(false));
    let predictions = keep_predicting(addr, stop_flag.clone());
    let inbox = models.join(PIPELINE);
    wait_until(WAIT, "the pipeline's models directory", || {
        inbox.join("refused").is_dir()
    })
    .await;

    let bad = bad_files();
    for (what, bytes, _, _) in &bad {
        std::fs::write(inbox.join(format!("{what}.onnx")), bytes).unwrap();
    }
    // The good one is written as *.tmp (never taken) and renamed.
    let good = fixture("occupancy_sklearn.onnx");
    std::fs::write(inbox.join("good.onnx.tmp"), &good).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        inbox.join("good.onnx.tmp").exists(),
        "a *.tmp file is not taken"
    );
    std::fs::rename(inbox.join("good.onnx.tmp"), inbox.join("good.onnx")).unwrap();

    wait_until(WAIT, "every file processed", || {
        std::fs::read_dir(&inbox)
            .unwrap()
            .flatten()
            .all(|e| e.path().is_dir())
    })
    .await;
    for (what, _, reason, message) in &bad {
        let moved = inbox.join("refused").join(format!("{what}.onnx"));
        assert!(moved.exists(), "{what} moved to refused/");
        let text =
            std::fs::read_to_string(inbox.join("refused").join(format!("{what}.onnx.reason")))
                .unwrap();
        assert!(text.starts_with(&format!("{reason}: ")), "{what}: {text}");
        assert!(text.contains(message), "{what}: {text}");
        assert_eq!(refused(&handle, reason), 1, "{what}");
    }
    assert!(inbox.join("accepted/good.onnx").exists());
    let text = std::fs::read_to_string(inbox.join("accepted/good.onnx.reason")).unwrap();
    assert!(text.contains("imported as version 2"), "{text}");
    assert!(text.contains(&sha256_hex(&good)), "{text}");
    assert_eq!(handle.stats.snapshot().models_imported, 1);
    assert_eq!(handle.store.model_versions(PIPELINE).unwrap(), vec![1, 2]);
    let cards = handle.registry.cards(&handle.store, PIPELINE).unwrap();
    let imported = cards[1].imported.as_ref().unwrap();
    assert_eq!(imported.file_name.as_deref(), Some("good.onnx"));
    assert_eq!(imported.sha256, sha256_hex(&good));
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 1);

    stop_flag.store(true, Ordering::Relaxed);
    let versions = predictions.await.unwrap();
    assert!(versions.len() > 10, "{} predictions", versions.len());
    assert!(versions.iter().all(|v| *v == 1), "{versions:?}");

    handle
        .registry
        .promote_version(&handle.store, PIPELINE, 2, "promote", "test".into(), "test")
        .unwrap();
    assert_serves_sklearn(addr, 2).await;
    let history = handle.registry.history(&handle.store, PIPELINE).unwrap();
    // (Alarms only annotate: the labelled readings are scored for anomalies
    // too, and an anomaly alarm may come at any point.)
    let actions: Vec<&str> = history
        .iter()
        .map(|e| e.action.as_str())
        .filter(|a| !a.ends_with("_alarm"))
        .collect();
    assert_eq!(actions, ["trained", "imported", "promote"]);
    stop(running, handle, token).await;
}

/// Every prefix of a good model, and random bytes of many lengths, are
/// refused without a panic, except a prefix that ends at a top-level field
/// boundary after the graph (the three metadata entries `classes`,
/// `features`, `task` come last): that is a complete model (with its
/// metadata, or without it and adopted by the pipeline's contract), and it
/// must predict exactly as the whole file does. A prefix that cuts a field
/// is reported as truncated.
#[test]
fn every_prefix_and_random_bytes_are_refused() {
    use edgeloop::serve::intake::check_model;
    let cfg = edgeloop::config::Config::load_with_env(None, std::iter::empty()).unwrap();
    let p = &cfg.pipelines[0].settings();
    let good = fixture("occupancy_sklearn.onnx");
    let rows: Vec<Vec<f32>> = serde_json::from_value(reference()["rows"].clone()).unwrap();
    let x = rows.concat();
    let whole = check_model(&good, p, &Default::default())
        .unwrap()
        .predict_proba(&x)
        .unwrap();
    let (mut truncated, mut complete) = (0, 0);
    for cut in 0..good.len() {
        match check_model(&good[..cut], p, &Default::default()) {
            Ok(m) => {
                complete += 1;
                assert_eq!(m.predict_proba(&x).unwrap(), whole, "prefix of {cut} bytes");
            }
            Err(e) => truncated += usize::from(e.reason() == "truncated"),
        }
    }
    assert!(complete <= 3, "{complete} complete prefixes");
    // The graph (field 7) spans most of the file: cuts inside it are truncations.
    assert!(
        truncated * 10 > good.len() * 9,
        "{truncated} of {}",
        good.len()
    );
    for n in [1, 2, 7, 100, 1000, 5000] {
        let e = check_model(&random_bytes(n), p, &Default::default()).unwrap_err();
        assert!(["not_onnx", "truncated"].contains(&e.reason()), "{n}: {e}");
    }
}

/// `[models]` defaults, and a bad value refused naming its key.
#[test]
fn models_config_defaults_and_validation() {
    use edgeloop::config::{Config, ConfigError};
    let cfg = Config::load_with_env(None, std::iter::empty()).unwrap();
    assert_eq!(cfg.models.max_bytes, 32 * 1024 * 1024);
    assert_eq!(cfg.models.poll_ms, 2000);
    assert!(cfg.models.dir.as_os_str().is_empty());
    let env = [("EDGELOOP__MODELS__POLL_MS".to_string(), "0".to_string())];
    match Config::load_with_env(None, env) {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "models.poll_ms"),
        other => panic!("{other:?}"),
    }
}

/// Rows `range` of `tests/fixtures/datasets/<file>` as samples stamped by
/// row number (the CSVs `gen_intake.py` reads).
fn dataset_rows(file: &str, range: std::ops::Range<usize>) -> Vec<Sample> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/datasets")
        .join(file);
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .enumerate()
        .filter(|(i, _)| range.contains(i))
        .map(|(i, r)| {
            let r = r.unwrap();
            Sample {
                timestamp_ms: i as i64,
                device: "d".into(),
                features: (0..5).map(|k| r[k].parse::<f32>().unwrap()).collect(),
                label: Some(r[5].to_string()),
            }
        })
        .collect()
}

/// An imported champion (no parameters edgeloop can read) is scored through
/// its engine on the same holdout and older slice as the challenger, and
/// keeps serving unless the challenger wins: before, a training after an
/// import saw no champion and promoted its challenger as a "first model".
/// The champion's accuracies are scikit-learn's (`intake.json`).
#[test]
fn an_imported_champion_is_judged_on_the_same_holdout() {
    use edgeloop::learn::{Champion, Dataset, Task, TrainSettings};
    let want = &reference()["champion"];
    let champion =
        edgeloop::serve::engine::OnnxModel::load(&fixture("occupancy_sklearn.onnx")).unwrap();
    let features: Vec<String> = ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"]
        .map(String::from)
        .to_vec();
    let recent = Dataset::from_samples(
        &dataset_rows("occupancy_test.csv", 900..1400),
        5,
        Task::Classification,
    );
    let old = Dataset::from_samples(
        &dataset_rows("occupancy_train.csv", 0..300),
        5,
        Task::Classification,
    );
    let decide =
        |champion: &edgeloop::serve::engine::OnnxModel, margin_recent: f64, margin_old: f64| {
            let mut model = edgeloop::config::ModelConfig::default();
            (model.margin_recent, model.margin_old) = (margin_recent, margin_old);
            let settings = TrainSettings {
                pipeline: PIPELINE,
                features: &features,
                model: &model,
                progress: None,
                peak_rss: false,
            };
            let t = learn::train_dataset(
                &settings,
                &recent,
                Some(&old),
                4,
                Trigger::NewLabels,
                Some((3, Champion::Served(champion))),
                &|| false,
            )
            .unwrap();
            assert_eq!(t.chosen.card.n_holdout, 100);
            t.chosen.card.decision.unwrap()
        };
    // A margin no challenger can gain: the imported champion keeps serving.
    let d = decide(&champion, 0.5, 0.05);
    assert_eq!(d.champion_version, Some(3));
    let close = |a: Option<f64>, b: &Value| (a.unwrap() - b.as_f64().unwrap()).abs() < 1e-12;
    assert!(close(d.champion_recent, &want["accuracy_recent"]), "{d:?}");
    assert!(close(d.champion_old, &want["accuracy_old"]), "{d:?}");
    assert!(!d.promoted, "{d:?}");
    assert!(d.reason.starts_with("recent holdout"), "{}", d.reason);
    // No bar at all: the challenger is promoted, with the same champion scores.
    let d = decide(&champion, -1.0, 1.0);
    assert!(d.promoted, "{d:?}");
    assert!(close(d.champion_recent, &want["accuracy_recent"]), "{d:?}");
    // A champion whose engine cannot predict these rows (3 features, not 5)
    // is replaced, and the reason says so.
    let narrow = edgeloop::serve::engine::OnnxModel::load(&three_feature_model()).unwrap();
    let d = decide(&narrow, 0.5, 0.05);
    assert!(d.promoted, "{d:?}");
    assert_eq!(d.champion_recent, None);
    assert_eq!(d.reason, "champion 3 could not predict the holdout");
}

/// A model exported with a fixed batch axis (`[64, 128]`, `[1, 128]`) is
/// adopted and predicts any number of rows: it runs 64 (or 1) at a time,
/// the last run padded. Each row equals onnxruntime's output for it.
#[test]
fn a_fixed_batch_import_predicts_any_number_of_rows() {
    use edgeloop::learn::Task;
    use edgeloop::serve::engine::{Contract, EngineKind, LoadOptions, OnnxModel};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let contract = Contract {
        task: Task::Classification,
        classes: (1..=6).map(|c| c.to_string()).collect(),
        features: (0..128).map(|f| format!("f{f}")).collect(),
    };
    let floats = |v: &Value| -> Vec<f32> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    for name in ["torch_mlp_opset13_b64", "torch_mlp_opset17_b1"] {
        let case = manifest["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap();
        let bytes = std::fs::read(dir.join(case["file"].as_str().unwrap())).unwrap();
        let m = OnnxModel::adopt(
            &bytes,
            &contract,
            EngineKind::Tract,
            &LoadOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (x, want) = (floats(&case["inputs"][0]), floats(&case["outputs"][0]));
        let n = x.len() / 128;
        // 5 rows, all rows, and all rows plus 3 more (a padded last run).
        let mut more = x.clone();
        for r in 0..3 {
            more.extend_from_slice(&x[(r % n) * 128..(r % n + 1) * 128]);
        }
        for rows in [&x[..5.min(n) * 128], &x[..], &more[..]] {
            let got = m
                .predict_proba(rows)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got.len(), rows.len() / 128 * 6, "{name}");
            for (i, p) in got.iter().enumerate() {
                let w = want[(i / 6 % n) * 6 + i % 6];
                assert!(
                    (p - w).abs() <= 1e-4,
                    "{name} value {i}: {p} vs onnxruntime {w}"
                );
            }
        }
    }
}

/// A foreign model whose classes are not the pipeline's is refused as
/// `wrong_classes` (the reason the README lists), not `engine_refused`; a
/// model whose weights are in an external-data file, uploaded alone, as
/// `external_data`, naming the file.
#[test]
fn wrong_classes_and_external_data_are_refused_under_their_own_reasons() {
    use edgeloop::serve::intake::{check_model, IntakeError};
    let cfg = edgeloop::config::Config::load_with_env(None, std::iter::empty()).unwrap();
    let mut p = cfg.pipelines[0].settings();
    p.classes = vec!["empty".into(), "occupied".into()];
    let e = check_model(&fixture("occupancy_sklearn.onnx"), &p, &Default::default()).unwrap_err();
    assert_eq!(e.reason(), "wrong_classes", "{e}");
    assert!(
        matches!(&e, IntakeError::WrongClasses { expected, .. } if expected == &p.classes),
        "{e}"
    );
    assert!(IntakeError::REASONS.contains(&e.reason()));
    let external = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/conformance/torch/models/dynamo_mlp_external.onnx"),
    )
    .unwrap();
    let e = check_model(&external, &p, &Default::default()).unwrap_err();
    assert_eq!(e.reason(), "external_data", "{e}");
    assert!(
        e.to_string().contains("dynamo_mlp_external.onnx.data"),
        "{e}"
    );
    assert!(IntakeError::REASONS.contains(&e.reason()));
}

/// A serving version imported on onnxruntime that tract refuses (the
/// fixture stamped opset 22; tract implements up to 21, as a version
/// imported before 63bc12b may be), then a restart on tract: the daemon
/// served nothing ("Stored model refused; serving nothing") although
/// version 1 loads. Now version 1 serves scikit-learn's probabilities, and
/// the models listing and the history say so (a `fallback` event naming
/// version 2 and the opset).
#[cfg(feature = "ort")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serving_version_tract_refuses_falls_back_after_a_restart_on_tract() {
    use edgeloop::serve::engine::EngineKind;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Broker::Embedded(free_port()));
    cfg.pipelines[0].engine = EngineKind::Ort;
    cfg.pipelines[0].model.min_labels = 1_000_000;
    let (running, handle, token) = start(cfg.clone()).await;
    let opset13 = fixture("occupancy_sklearn.onnx");
    for (version, bytes) in [(1, opset13.clone()), (2, with_opset(&opset13, 22))] {
        let (status, v) = upload(handle.http_addr, bytes.clone(), Some(sha256_hex(&bytes))).await;
        assert_eq!((status, v["version"].as_u64()), (201, Some(version)), "{v}");
        let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
        let path = format!("/v1/pipelines/occupancy/models/{version}/promote");
        let (status, body) = client.request("POST", &path, None).await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 2);
    stop(running, handle, token).await;

    cfg.pipelines[0].engine = EngineKind::Tract;
    let (running, handle, token) = start(cfg).await;
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let mut get = async |path: &str| {
        let (status, body) = client.request("GET", path, None).await.unwrap();
        assert_eq!(status, 200);
        serde_json::from_slice::<Value>(&body).unwrap()
    };
    let models = get("/v1/pipelines/occupancy/models").await;
    assert_eq!(models["serving_version"], 1, "{models}");
    let history = get("/v1/pipelines/occupancy/history").await;
    let last = history["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["version"].as_u64(), last["action"].as_str()),
        (Some(1), Some("fallback"))
    );
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("version 2 does not load: ") && reason.contains("opset 22"),
        "{reason}"
    );
    assert_serves_sklearn(handle.http_addr, 1).await;
    stop(running, handle, token).await;
}
