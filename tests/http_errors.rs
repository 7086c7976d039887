//! Every error answer of the HTTP API is JSON `{"error": "…"}` with its
//! status, over real TCP connections (raw bytes: a 100 KB URI is more than
//! `http::Uri`, hence any HTTP client, accepts):
//! - errors of axum's layers and extractors (413 body over 2 MB, 405 wrong
//!   method, 400 bad path parameter) and of the handlers (400 malformed JSON,
//!   404 unknown route), through the daemon's own port;
//! - errors hyper answers itself before any routing (414 URI over 65,534
//!   bytes, 431 more than 100 header fields or a head beyond hyper's ~408 KiB
//!   read buffer, 400 malformed head), through `http::JsonErrorListener`
//!   (`axum::serve(http::JsonErrorListener::new(listener), app)`), serving
//!   the same router from the daemon's handle, and through the daemon's own
//!   port, which serves on that listener.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use edgeloop::daemon::{self, DaemonHandle};
use edgeloop::http::{self, AppState, JsonErrorListener};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const PIPELINE: &str = "occupancy";

/// A parsed answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, lower-cased.
    headers: Vec<String>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}:");
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix(&prefix).map(str::trim))
    }

    /// The `error` string of a JSON error body; panics otherwise.
    fn error(&self, what: &str) -> String {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}: {self:?}"
        );
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{what}: the body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        });
        let obj = v.as_object().expect("a JSON object");
        assert_eq!(obj.len(), 1, "{what}: only `error`: {v}");
        v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: `error` is not a string: {v}"))
            .to_string()
    }
}

/// The head and body length of a complete answer in `buf`, if it is.
fn complete(buf: &[u8]) -> Option<(usize, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    (buf.len() >= end + len).then_some((end, len))
}

/// Sends `request` (written while the answer is read, as a large body may be
/// refused before it is all sent) and reads one answer.
async fn send(addr: SocketAddr, request: Vec<u8>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    // The write half is kept open until the answer is read: hyper does not
    // answer a client that half-closed.
    let writer = tokio::spawn(async move {
        let _ = tx.write_all(&request).await;
        tx
    });
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0; 64 * 1024];
        loop {
            if let Some((end, len)) = complete(&buf) {
                return (buf, end, len);
            }
            match rx.read(&mut chunk).await {
                Ok(0) => panic!("closed before a whole answer: {buf:?}"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("{e} before a whole answer: {buf:?}"),
            }
        }
    };
    let (buf, end, len) = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("an answer within 30 s");
    writer.abort();
    let head = String::from_utf8(buf[..end - 4].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap();
    Answer {
        status: status.parse().unwrap(),
        headers: lines.map(str::to_lowercase).collect(),
        body: buf[end..end + len].to_vec(),
    }
}

fn get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: edgeloop\r\n{extra_headers}\r\n").into_bytes()
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: edgeloop\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// `n` header fields of `size` bytes each.
fn fields(n: usize, size: usize) -> String {
    (0..n)
        .map(|i| format!("x-fill-{i}: {}\r\n", "a".repeat(size)))
        .collect()
}

/// Errors decided by axum or the handlers: the daemon's port answers them.
fn routed_cases() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let predict = format!("/v1/pipelines/{PIPELINE}/predict");
    // Valid JSON, 3 MB: refused for its size alone (axum's 2 MB default).
    let mut big = br#"{"rows": [], "pad": ""#.to_vec();
    big.resize(3_000_000, b' ');
    big.extend_from_slice(b"\"}");
    vec![
        (
            "oversized predict body",
            post(&predict, &big),
            413,
            "max_body_bytes",
        ),
        ("wrong method", get(&predict, ""), 405, "method not allowed"),
        (
            "wrong method on /metrics",
            post("/metrics", b""),
            405,
            "method not allowed",
        ),
        (
            "malformed JSON body",
            post(&predict, br#"{"rows": [{"Temperature": 1"#),
            400,
            "body must be",
        ),
        (
            "path parameter not UTF-8",
            get("/v1/pipelines/%FF/history", ""),
            400,
            "utf-8",
        ),
        (
            "unknown route",
            get("/v2/nothing", ""),
            404,
            "no such route",
        ),
        // A new pipeline, nothing stored: predict and train say what is
        // missing (train said "training data is empty").
        (
            "predict before any model",
            post(
                &predict,
                br#"{"rows": [{"Temperature": 21.0, "Humidity": 27.2, "Light": 430, "CO2": 710, "HumidityRatio": null}]}"#,
            ),
            409,
            "has no model yet",
        ),
        (
            "train before any labelled sample",
            post(&format!("/v1/pipelines/{PIPELINE}/train"), b""),
            422,
            "no labelled sample is stored yet",
        ),
        // README, HTTP API: 404 unknown pipeline, on every route that names
        // one (rollback answered 409 "no earlier version", the predictions
        // filter 200 with none).
        (
            "unknown pipeline: predict",
            post("/v1/pipelines/nope/predict", br#"{"rows": []}"#),
            404,
            "pipeline `nope` is not configured",
        ),
        (
            "unknown pipeline: rollback",
            post("/v1/pipelines/nope/rollback", b""),
            404,
            "pipeline `nope` is not configured",
        ),
        (
            "unknown pipeline: promote",
            post("/v1/pipelines/nope/models/1/promote", b""),
            404,
            "pipeline `nope` is not configured",
        ),
        (
            "unknown pipeline: train",
            post("/v1/pipelines/nope/train", b""),
            404,
            "pipeline `nope` is not configured",
        ),
        (
            "unknown pipeline: predictions filter",
            get("/v1/predictions?pipeline=nope", ""),
            404,
            "pipeline `nope` is not configured",
        ),
    ]
    .into_iter()
    .chain(
        ["models", "versions", "history", "drift", "series"].map(|route| {
            (
                "unknown pipeline: GET",
                get(&format!("/v1/pipelines/nope/{route}"), ""),
                404,
                "pipeline `nope` is not configured",
            )
        }),
    )
    .collect()
}

/// Errors hyper answers itself, before routing.
fn hyper_cases() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    vec![
        (
            "100 KB URI",
            get(&format!("/healthz?q={}", "a".repeat(100_000)), ""),
            414,
            "uri too long",
        ),
        (
            "200 KB of headers in 200 fields",
            get("/healthz", &fields(200, 1000)),
            431,
            "too large",
        ),
        // hyper refuses a head still incomplete once its read buffer holds
        // ~408 KiB; one that completes within a read past that is accepted,
        // so a refusal is certain only well beyond (reads are ≤ ~408 KiB).
        (
            "a 1 MB header field",
            get("/healthz", &fields(1, 1_000_000)),
            431,
            "too large",
        ),
        (
            "malformed header line",
            get("/healthz", "no colon here\r\n"),
            400,
            "malformed",
        ),
        (
            "malformed request line",
            b"GET /a b c HTTP/1.1\r\nhost: edgeloop\r\n\r\n".to_vec(),
            400,
            "malformed",
        ),
    ]
}

/// The API as the daemon serves it, on `JsonErrorListener`, from `handle`.
async fn serve_api(
    handle: &DaemonHandle,
    cfg: &edgeloop::config::Config,
    token: CancellationToken,
) -> SocketAddr {
    let app = http::router(AppState {
        registry: handle.registry.clone(),
        store: handle.store.clone(),
        pipelines: Arc::new(cfg.pipelines.clone()),
        learner: handle.learner.clone(),
        stats: handle.stats.clone(),
        max_rows: cfg.http.max_rows,
        connection: handle.connection.clone(),
        health: handle.health.clone(),
        drift: Default::default(),
        models: cfg.models.clone(),
        load_options: cfg.engine_of(0).1,
        body: Default::default(),
        dashboard: Default::default(),
        anomaly: Default::default(),
    })
    .merge(http::metrics_router(handle.metrics.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(JsonErrorListener::new(listener), app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_json_with_its_status() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), Broker::Embedded(free_port()));
    assert_eq!(cfg.pipelines[0].name, PIPELINE);
    let token = CancellationToken::new();
    let running = daemon::start(cfg.clone(), token.clone()).await.unwrap();
    let handle = running.handle.clone();
    assert!(handle.wait_subscribed(Duration::from_secs(90)).await);
    let api = serve_api(&handle, &cfg, token.clone()).await;

    for addr in [handle.http_addr, api] {
        // Answers that are not errors pass through unchanged.
        let ok = send(addr, get("/v1/pipelines", "")).await;
        assert_eq!(ok.status, 200, "{ok:?}");
        let v: Value = serde_json::from_slice(&ok.body).unwrap();
        assert_eq!(v["pipelines"][0]["name"], PIPELINE);
        // A head of 200 KB in at most 100 fields is within hyper's limits:
        // served, not refused.
        let ok = send(addr, get("/v1/pipelines", &fields(2, 100_000))).await;
        assert_eq!(ok.status, 200, "{ok:?}");

        for (what, request, status, says) in routed_cases() {
            let a = send(addr, request).await;
            assert_eq!(a.status, status, "{what}: {a:?}");
            let error = a.error(what);
            assert!(
                error.to_lowercase().contains(says),
                "{what}: {error:?} should say {says:?}"
            );
            if status == 405 {
                assert!(a.header("allow").is_some(), "{what}: {a:?}");
            }
        }
    }
    for (what, request, status, says) in hyper_cases() {
        let a = send(api, request.clone()).await;
        assert_eq!(a.status, status, "{what}: {a:?}");
        let error = a.error(what);
        assert!(
            error.to_lowercase().contains(says),
            "{what}: {error:?} should say {says:?}"
        );
        // The daemon's own port serves on JsonErrorListener too.
        let a = send(handle.http_addr, request).await;
        assert_eq!(a.status, status, "{what} (daemon): {a:?}");
        let error = a.error(what);
        assert!(
            error.to_lowercase().contains(says),
            "{what} (daemon): {error:?} should say {says:?}"
        );
    }

    drop(handle);
    token.cancel();
    running.wait(Duration::from_secs(15)).await.unwrap();
}

/// A predict row's `device` is bounded as an MQTT reading's device id
/// (`MAX_DEVICE_BYTES`, 256; `device_too_long` over MQTT): a longer one is
/// a 400 naming the row and the limit, one at the limit is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predict_row_with_a_device_over_256_bytes_is_refused() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = 300;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    let (running, handle, token) = start(cfg).await;
    let opts = replay_opts("datatraining.txt", port, Some(300));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(Duration::from_secs(90), "version 1", || {
        handle.registry.get(PIPELINE).is_some()
    })
    .await;
    let row = |device: &str| {
        serde_json::json!({"Temperature": 21.0, "Humidity": 27.2, "Light": 430,
            "CO2": 710, "HumidityRatio": 0.0047, "device": device})
    };
    let path = format!("/v1/pipelines/{PIPELINE}/predict");
    let limit = edgeloop::ingest::decode::MAX_DEVICE_BYTES;
    let at_limit = "d".repeat(limit);
    let body = serde_json::json!({"rows": [row("room1"), row(&at_limit)]});
    let a = send(
        handle.http_addr,
        post(&path, &serde_json::to_vec(&body).unwrap()),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    // Multi-byte characters count in bytes, as over MQTT.
    let over = "é".repeat(limit / 2 + 1);
    let body = serde_json::json!({"rows": [row("room1"), row(&over)]});
    let a = send(
        handle.http_addr,
        post(&path, &serde_json::to_vec(&body).unwrap()),
    )
    .await;
    assert_eq!(a.status, 400, "{a:?}");
    assert_eq!(
        a.error("device over the limit"),
        "bad request: rows[1]: `device` is 258 bytes; at most 256 (as a device id over MQTT)"
    );
    stop(running, handle, token).await;
}
