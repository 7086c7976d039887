//! The dashboard (issue 20), black-box: a daemon ingests and trains on the
//! shipped occupancy data (UCI), scores later labels, predicts unlabelled
//! readings, trains again and changes what serves; then
//!
//! - the JSON endpoints behind the page answer with their shapes and with
//!   the values the store holds (live tallies, cards, timeline, samples);
//! - the series survive a restart (written to the store at shutdown);
//! - headless Chromium (Debian's `chromium`, installed by `tests/run.sh`)
//!   loads `GET /`, every plot draws data points, no error is logged, and a
//!   screenshot is written to `target/dashboard.png` (and, with
//!   `EDGELOOP_UPDATE_SCREENSHOT=1`, to `docs/dashboard.png`, which the README
//!   shows).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use edgeloop::daemon::{DaemonHandle, Running};
use edgeloop::demo::HttpClient;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PIPELINE: &str = "occupancy";
const WAIT: Duration = Duration::from_secs(120);

async fn get(handle: &DaemonHandle, path: &str) -> (u16, Vec<u8>) {
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    client.request("GET", path, None).await.unwrap()
}

async fn get_json(handle: &DaemonHandle, path: &str) -> Value {
    let (status, body) = get(handle, path).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

async fn post_json(handle: &DaemonHandle, path: &str) -> (u16, Value) {
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let (status, body) = client.request("POST", path, None).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

/// Occupancy payloads of `file`, rows `range`; without the label when
/// `unlabelled`.
fn payloads(
    file: &str,
    port: u16,
    range: std::ops::Range<usize>,
    unlabelled: bool,
) -> (edgeloop::ingest::replay::ReplayOptions, Vec<Vec<u8>>) {
    let mut opts = replay_opts(file, port, None);
    if unlabelled {
        opts.drop_columns = vec!["Occupancy".into()];
    }
    let all = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    let end = range.end.min(all.len());
    (opts, all[range.start..end].to_vec())
}

/// A daemon with a history worth drawing: version 1 trained at 2,000
/// labels of `datatraining.txt`, 800 later labelled readings of
/// `datatest.txt` scored against it, 300 unlabelled ones predicted, version
/// 2 trained over the API (promoted over the API when the
/// champion/challenger rule refused it), 400 more labelled readings scored
/// against it, and a rollback to version 1 when the training had promoted
/// version 2.
async fn daemon_with_history(dir: &Path) -> (Running, DaemonHandle, CancellationToken, u16) {
    let port = free_port();
    let mut cfg = config(dir, Broker::Embedded(port));
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = 2000;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    let (running, handle, token) = start(cfg).await;
    let (opts, first) = payloads("datatraining.txt", port, 0..2000, false);
    publish(&opts, first).await;
    wait_until(WAIT, "version 1", || {
        handle.registry.get(PIPELINE).is_some()
    })
    .await;

    let (opts, later) = payloads("datatest.txt", port, 0..800, false);
    publish(&opts, later).await;
    let (opts, unlabelled) = payloads("datatest.txt", port, 800..1100, true);
    publish(&opts, unlabelled).await;
    wait_until(WAIT, "800 live scores of version 1", || {
        live(&handle, 1).is_some_and(|(scored, _)| scored >= 800)
    })
    .await;

    let (status, card) = post_json(&handle, "/v1/pipelines/occupancy/train").await;
    assert_eq!(status, 200, "{card}");
    assert_eq!(card["version"], 2);
    // Version 2 serves the next 400 labels (promoted now if the
    // champion/challenger rule kept version 1), then what served before
    // it comes back when the training had promoted it.
    let promoted_by_training = handle.registry.get(PIPELINE).unwrap().version == 2;
    if !promoted_by_training {
        let (status, answer) = post_json(&handle, "/v1/pipelines/occupancy/models/2/promote").await;
        assert_eq!(status, 200, "{answer}");
    }
    assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 2);
    let (opts, more) = payloads("datatest.txt", port, 1100..1500, false);
    publish(&opts, more).await;
    // Every labelled reading after version 1 is scored once, by the version
    // serving when its label arrived.
    for _ in 0..600 {
        if live(&handle, 2).is_some_and(|(s, _)| s >= 400) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(live(&handle, 1).map(|l| l.0), Some(800));
    assert_eq!(live(&handle, 2).map(|l| l.0), Some(400));
    if promoted_by_training {
        let (status, answer) = post_json(&handle, "/v1/pipelines/occupancy/rollback").await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(handle.registry.get(PIPELINE).unwrap().version, 1);
    }
    (running, handle, token, port)
}

/// The stored live tally of `version`: (scored, correct).
fn live(handle: &DaemonHandle, version: u32) -> Option<(u64, u64)> {
    edgeloop::serve::registry::live_score(
        &handle.store,
        PIPELINE,
        version,
        edgeloop::ingest::decode::Task::Classification,
    )
    .unwrap()
    .map(|l| (l.scored, l.correct))
}

fn f64s(v: &Value) -> Vec<Option<f64>> {
    v.as_array().unwrap().iter().map(Value::as_f64).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_what_the_store_holds_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (running, handle, token, _) = daemon_with_history(dir.path()).await;
    let stored = handle.store.counts(PIPELINE).unwrap().samples;
    assert_eq!(stored, 2000 + 1500);

    // Ingest: the recorder's newest point reaches the store's count.
    let mut ingest = Value::Null;
    for _ in 0..50 {
        ingest = get_json(&handle, "/v1/series/ingest").await;
        if ingest["totals"]["stored"].as_array().unwrap().last() == Some(&Value::from(3500.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t_ms: Vec<i64> = ingest["t_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_i64().unwrap())
        .collect();
    assert!(t_ms.len() >= 2, "{ingest}");
    assert!(t_ms.windows(2).all(|w| w[0] < w[1]), "{t_ms:?}");
    assert_eq!(ingest["step_ms"], 2000);
    assert_eq!(ingest["capacity"], 720);
    for column in edgeloop::monitor::series::INGEST_COLUMNS {
        let col = f64s(&ingest["totals"][column]);
        assert_eq!(col.len(), t_ms.len(), "{column}");
        let col: Vec<f64> = col.into_iter().map(Option::unwrap).collect();
        assert!(col.windows(2).all(|w| w[0] <= w[1]), "{column}: {col:?}");
    }
    let last = |c: &str| {
        f64s(&ingest["totals"][c])
            .last()
            .copied()
            .flatten()
            .unwrap()
    };
    assert_eq!(last("stored"), 3500.0);
    assert_eq!(last("received"), 3500.0);
    assert_eq!(last("rejected"), 0.0);
    assert_eq!(last("predictions"), 300.0);
    let rates = f64s(&ingest["per_second"]["received"]);
    assert_eq!(rates.len(), t_ms.len());
    assert_eq!(rates[0], None);
    // The rates integrate back to the totals.
    let received = f64s(&ingest["totals"]["received"]);
    let integrated: f64 = (1..t_ms.len())
        .map(|i| rates[i].unwrap() * (t_ms[i] - t_ms[i - 1]) as f64 / 1000.0)
        .sum();
    let span = received.last().unwrap().unwrap() - received[0].unwrap();
    assert!(
        (integrated - span).abs() < 1e-6 * span.max(1.0),
        "{integrated} vs {span}"
    );

    // Accuracy: each version's newest point is its stored live tally.
    let series = get_json(&handle, "/v1/pipelines/occupancy/series").await;
    assert_eq!(series["task"], "classification");
    let versions: Vec<u64> = series["version"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let n = versions.len();
    assert!(n >= 2, "{series}");
    for key in [
        "t_ms",
        "scored",
        "correct",
        "accuracy",
        "window_accuracy",
        "mean_abs_error",
    ] {
        assert_eq!(series[key].as_array().unwrap().len(), n, "{key}");
    }
    let scored: Vec<u64> = series["scored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let correct: Vec<u64> = series["correct"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let accuracy = f64s(&series["accuracy"]);
    let window = f64s(&series["window_accuracy"]);
    let mut seen = std::collections::BTreeSet::new();
    for i in (0..n).rev() {
        let v = versions[i] as u32;
        if seen.insert(v) {
            assert_eq!(
                live(&handle, v),
                Some((scored[i], correct[i])),
                "version {v}"
            );
        }
        // serde_json's float parsing is within an ulp, not exact.
        let expected = correct[i] as f64 / scored[i] as f64;
        assert!(
            (accuracy[i].unwrap() - expected).abs() < 1e-12,
            "{expected}"
        );
        let w = window[i].unwrap();
        assert!((0.0..=1.0).contains(&w), "{w}");
        assert!(series["mean_abs_error"][i].is_null());
    }
    assert!(seen.len() >= 2, "points of both served versions: {seen:?}");

    // Anomaly scores: every one of the 3,500 readings was scored, labelled
    // or not (300 were predicted); the newest point holds the predictor's
    // totals, and the alarms are the metric's.
    let mut anomaly = series["anomaly"].clone();
    for _ in 0..50 {
        if anomaly["scored"].as_array().and_then(|a| a.last()) == Some(&Value::from(3500)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        anomaly = get_json(&handle, "/v1/pipelines/occupancy/series").await["anomaly"].clone();
    }
    let points = anomaly["t_ms"].as_array().unwrap().len();
    assert!(points >= 2, "{anomaly}");
    let scored: Vec<u64> = anomaly["scored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(scored.last(), Some(&3500), "{anomaly}");
    assert!(scored.windows(2).all(|w| w[0] <= w[1]), "{scored:?}");
    let alarms = anomaly["alarms"].as_array().unwrap();
    assert_eq!(
        alarms.last().and_then(Value::as_u64),
        Some(
            handle
                .stats
                .anomaly_alarms
                .load(std::sync::atomic::Ordering::Relaxed)
        )
    );
    let (mean, share) = (f64s(&anomaly["mean_score"]), f64s(&anomaly["alarm_share"]));
    assert_eq!((mean.len(), share.len()), (points, points));
    assert_eq!(mean[0], None);
    for i in 1..points {
        // A mean where something was scored in between, else null.
        assert_eq!(mean[i].is_some(), scored[i] > scored[i - 1], "point {i}");
        if let (Some(m), Some(a)) = (mean[i], share[i]) {
            assert!(
                (0.0..=1.0).contains(&m) && (0.0..=1.0).contains(&a),
                "{m} {a}"
            );
        }
    }
    // The timeline is the store's.
    let stored_events: Vec<Value> = handle
        .store
        .events(PIPELINE)
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(series["events"].as_array().unwrap(), &stored_events);
    // (Alarms only annotate: an anomaly alarm may come before version 1,
    // the labelled readings being scored too.)
    let actions: Vec<&str> = stored_events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .filter(|a| !a.ends_with("_alarm"))
        .collect();
    assert!(actions.len() >= 3, "{actions:?}");
    assert_eq!(actions[0], "trained");

    // Versions side by side: the stored cards.
    let v = get_json(&handle, "/v1/pipelines/occupancy/versions").await;
    let serving = handle.store.serving_version(PIPELINE).unwrap();
    assert_eq!(v["serving_version"].as_u64().map(|x| x as u32), serving);
    let list = v["versions"].as_array().unwrap();
    assert_eq!(
        list.len(),
        handle.store.model_versions(PIPELINE).unwrap().len()
    );
    for entry in list {
        let version = entry["version"].as_u64().unwrap() as u32;
        let stored = handle.store.get_model(PIPELINE, version).unwrap().unwrap();
        let card: Value = serde_json::from_str(&stored.card_json).unwrap();
        assert_eq!(entry["serving"], Value::Bool(Some(version) == serving));
        assert_eq!(entry["family"], card["family"]);
        assert_eq!(entry["accuracy"], card["holdout"]["accuracy"]);
        assert_eq!(entry["f1"], card["holdout"]["f1_macro"]);
        assert_eq!(entry["precision"], card["holdout"]["precision_macro"]);
        assert_eq!(entry["recall"], card["holdout"]["recall_macro"]);
        assert_eq!(entry["training_ms"], card["training_ms"]);
        assert_eq!(entry["n_samples"], card["n_samples"]);
        assert_eq!(entry["class_composition"], card["class_composition_train"]);
        assert_eq!(entry["confusion"]["matrix"], card["holdout"]["confusion"]);
        let cells: u64 = entry["confusion"]["matrix"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|c| c.as_u64().unwrap()))
            .sum();
        assert_eq!(cells, card["n_holdout"].as_u64().unwrap());
        let (s, c) = live(&handle, version).unwrap_or((0, 0));
        assert_eq!(entry["live"]["scored"].as_u64().unwrap_or(0), s);
        assert_eq!(entry["live"]["correct"].as_u64().unwrap_or(0), c);
    }
    assert_eq!(list[1]["trigger"], "manual");
    assert!(list[1]["decision"]["reason"].is_string());

    // The newest predictions: unlabelled samples of the store, newest first.
    let p = get_json(&handle, "/v1/predictions").await;
    assert_eq!(p["capacity"], 50);
    let preds = p["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 50);
    let ids: Vec<u64> = preds
        .iter()
        .map(|m| m["sample_id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert_eq!(ids[0], 2000 + 1100 - 1, "the last unlabelled reading");
    for m in preds {
        let seq = m["sample_id"].as_u64().unwrap();
        let sample = &handle.store.scan(PIPELINE, seq..seq + 1, 1).unwrap()[0]
            .1
            .sample;
        assert_eq!(sample.label, None);
        assert_eq!(m["timestamp_ms"].as_i64().unwrap(), sample.timestamp_ms);
        assert_eq!(m["device"], sample.device.as_str());
        assert_eq!(m["pipeline"], PIPELINE);
        assert_eq!(
            m["topic"],
            format!("edgeloop/occupancy/predictions/{}", sample.device)
        );
        let probs: f64 = m["probabilities"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_f64().unwrap())
            .sum();
        assert!((probs - 1.0).abs() < 1e-4, "{m}");
    }
    // A pipeline that is not configured: 404 with the JSON error (17e62f0).
    let (status, body) = get(&handle, "/v1/predictions?pipeline=other").await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("other"), "{body}");

    // The Grafana board queries only metrics that /metrics has.
    let (status, text) = get(&handle, "/metrics").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(text).unwrap();
    let mut exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    // A family declared without samples exists too: a regressor's
    // `edgeloop_drift_mean_abs_error` on this classification daemon.
    let declared: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let mut without_samples = Vec::new();
    for (name, kind) in declared {
        let names = match kind.as_str() {
            "counter" => vec![format!("{name}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .map(|s| format!("{name}{s}"))
                .to_vec(),
            _ => vec![name],
        };
        for n in names {
            if exported.insert(n.clone()) {
                without_samples.push(n);
            }
        }
    }
    let board: Value = serde_json::from_slice(
        &std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/grafana/edgeloop.json"))
            .unwrap(),
    )
    .unwrap();
    let queried = grafana_metrics(&board);
    assert!(queried.len() >= 25, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|m| !exported.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the board queries {missing:?}, not in /metrics"
    );

    // The page and its files, as compiled in.
    let (status, page) = get(&handle, "/").await;
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("/assets/uPlot.iife.min.js") && page.contains("/assets/dashboard.js"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (status, uplot) = get(&handle, "/assets/uPlot.iife.min.js").await;
    assert_eq!(status, 200);
    assert_eq!(
        uplot,
        std::fs::read(root.join("assets/vendor/uplot/uPlot.iife.min.js")).unwrap()
    );
    assert_eq!(get(&handle, "/assets/nothing.js").await.0, 404);
    assert!(edgeloop::http::dashboard::page_bytes() <= 300 * 1024);
    assert_eq!(get(&handle, "/v1/pipelines/nope/series").await.0, 404);

    // Restart: the series were written at shutdown and go on.
    let before_ingest = ingest["t_ms"].as_array().unwrap().len();
    let before_series = series["t_ms"].as_array().unwrap().clone();
    stop(running, handle, token).await;
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    cfg.pipelines[0].model.min_labels = 2000;
    cfg.pipelines[0].model.retrain_every = 1_000_000;
    let (running, handle, token) = start(cfg).await;
    let ingest = get_json(&handle, "/v1/series/ingest").await;
    assert!(
        ingest["t_ms"].as_array().unwrap().len() > before_ingest,
        "{ingest}"
    );
    let totals = f64s(&ingest["totals"]["stored"]);
    assert_eq!(
        totals.last().copied().flatten(),
        Some(3500.0),
        "counts continue"
    );
    let (opts, again) = payloads("datatest.txt", port, 1500..1510, false);
    publish(&opts, again).await;
    wait_until(WAIT, "the restarted recorder to count 10 more", || {
        let s = handle.series.ingest();
        s.last().is_some_and(|v| v[1] == 3510.0)
    })
    .await;
    let series = get_json(&handle, "/v1/pipelines/occupancy/series").await;
    // The earlier points are kept (the newest of them may have moved on).
    let now = series["t_ms"].as_array().unwrap();
    let kept = before_series.len() - 1;
    assert_eq!(&now[..kept], &before_series[..kept]);
    stop(running, handle, token).await;
}

/// Every `edgeloop_…` metric name in the board's queries: panels' targets,
/// annotations and template variables.
fn grafana_metrics(board: &Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(board, &mut exprs);
    assert!(board["panels"].as_array().unwrap().len() >= 20);
    assert_eq!(board["uid"], "edgeloop");
    let mut names = std::collections::BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("edgeloop_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    names
}

/// Where Debian's Chromium is; the test needs it (tests/run.sh installs it).
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = std::process::Command::new("which").arg(name).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    panic!(
        "no chromium on PATH: tests/run.sh installs Debian's `chromium` (apt-get install chromium)"
    );
}

/// Runs headless Chromium on `url` with `args`; returns stdout and stderr.
/// `--virtual-time-budget` lets the page's timers and requests run for that
/// many (virtual) milliseconds before the DOM is dumped or the screenshot
/// taken.
fn run_chromium(url: &str, profile: &Path, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=8000",
            "--window-size=1280,2400",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `name="value"` of the first element whose opening tag contains `marker`.
fn attribute(dom: &str, marker: &str, name: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{name}=\"");
    let from = tag.find(&key)? + key.len();
    Some(tag[from..from + tag[from..].find('"')?].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_every_plot_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (running, handle, token, _) = daemon_with_history(dir.path()).await;
    // Two recorder ticks after the last message, so the rates have points.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // What one refresh of the page reads (BENCHMARKS.md, "Dashboard").
    let mut weights = Vec::new();
    for path in [
        "/healthz",
        "/v1/series/ingest",
        "/v1/stats",
        "/v1/pipelines",
        "/v1/pipelines/occupancy/series",
        "/v1/pipelines/occupancy/drift",
        "/v1/pipelines/occupancy/versions",
        "/v1/predictions",
    ] {
        weights.push((path, get(&handle, path).await.1.len()));
    }
    let total: usize = weights.iter().map(|(_, n)| n).sum();
    eprintln!("dashboard: one refresh reads {total} bytes of JSON: {weights:?}");
    let url = format!("http://{}/", handle.http_addr);
    let profile = tempfile::tempdir().unwrap();
    let (dom, log) = {
        let (url, profile) = (url.clone(), profile.path().to_path_buf());
        tokio::task::spawn_blocking(move || run_chromium(&url, &profile, &["--dump-dom"]))
            .await
            .unwrap()
    };
    assert_eq!(
        attribute(&dom, "<body", "data-ready").as_deref(),
        Some("true"),
        "{dom}\n{log}"
    );
    assert_eq!(
        attribute(&dom, "<body", "data-errors").as_deref(),
        Some("0"),
        "{dom}"
    );
    // The page counts uncaught errors, rejected promises, files that failed
    // to load and console.error calls in data-errors (above): Chromium 156's
    // headless mode does not copy console messages to stderr. Should a
    // build do so, its CONSOLE lines must hold no error either.
    let console: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Failed to load resource")
        })
        .collect();
    assert!(
        console
            .iter()
            .all(|l| !l.contains("ERROR") && !l.contains("Uncaught") && !l.contains("Failed")),
        "{console:#?}"
    );
    for id in [
        "plot-rates",
        "plot-totals",
        "plot-reasons",
        "plot-accuracy-occupancy",
        "plot-anomaly-occupancy",
    ] {
        let points: u64 = attribute(&dom, &format!("id=\"{id}\""), "data-points")
            .unwrap_or_else(|| panic!("no data-points on {id}: {dom}"))
            .parse()
            .unwrap();
        assert!(points > 0, "{id} drew no point");
    }
    assert!(dom.contains("<canvas"), "uPlot drew no canvas");
    assert!(dom.contains("data-version=\"1\""), "confusion matrix of v1");
    assert!(dom.contains("v2"), "version 2's column");
    assert!(
        dom.contains("edgeloop/occupancy/predictions") || dom.contains("occupancy</td>"),
        "last predictions"
    );

    // The screenshot, under target/ (a test run leaves the tree clean);
    // with EDGELOOP_UPDATE_SCREENSHOT=1 it replaces docs/dashboard.png, the
    // one the README shows.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shot = root.join("target/dashboard.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let arg = format!("--screenshot={}", shot.display());
    let (_, log) = {
        let (url, profile) = (url.clone(), profile.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            run_chromium(&url, &profile, &[arg.as_str(), "--window-size=1280,2200"])
        })
        .await
        .unwrap()
    };
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}): {log}"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
    if std::env::var_os("EDGELOOP_UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(&shot, root.join("docs/dashboard.png")).unwrap();
    }
    stop(running, handle, token).await;
}

/// A long history: 15 versions, each trained over the API, served in turn
/// and scored on 20 labelled readings, then version 3 promoted again. The
/// page shows the serving version and the 6 newest (README, Dashboard) in
/// the live-score plot's legend, the versions table and the confusion
/// matrices, and says how many it left out; before, it drew every version
/// (80 legend entries and 90 matrices after 97 versions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_serving_version_and_the_newest_of_a_long_history() {
    const VERSIONS: u32 = 15;
    const SERVING: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = 500;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    let (running, handle, token) = start(cfg).await;
    let (opts, first) = payloads("datatraining.txt", port, 0..500, false);
    publish(&opts, first).await;
    wait_until(WAIT, "version 1", || {
        handle.registry.get(PIPELINE).is_some()
    })
    .await;
    for v in 1..=VERSIONS {
        if v > 1 {
            let (status, card) = post_json(&handle, "/v1/pipelines/occupancy/train").await;
            assert_eq!(status, 200, "{card}");
            assert_eq!(card["version"], v);
            if handle.registry.get(PIPELINE).unwrap().version != v {
                let path = format!("/v1/pipelines/occupancy/models/{v}/promote");
                let (status, answer) = post_json(&handle, &path).await;
                assert_eq!(status, 200, "{answer}");
            }
        }
        assert_eq!(handle.registry.get(PIPELINE).unwrap().version, v);
        let rows = (v as usize - 1) * 20..v as usize * 20;
        let (opts, scored) = payloads("datatest.txt", port, rows, false);
        publish(&opts, scored).await;
        wait_until(WAIT, "20 live scores", || {
            live(&handle, v).is_some_and(|(scored, _)| scored >= 20)
        })
        .await;
    }
    let path = format!("/v1/pipelines/occupancy/models/{SERVING}/promote");
    let (status, answer) = post_json(&handle, &path).await;
    assert_eq!(status, 200, "{answer}");
    // Every version served and has a point of the series.
    let series = get_json(&handle, "/v1/pipelines/occupancy/series").await;
    let mut served: Vec<u64> = series["version"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    served.dedup();
    assert_eq!(served, (1..=u64::from(VERSIONS)).collect::<Vec<_>>());

    let url = format!("http://{}/", handle.http_addr);
    let profile = tempfile::tempdir().unwrap();
    let (dom, log) = {
        let profile = profile.path().to_path_buf();
        tokio::task::spawn_blocking(move || run_chromium(&url, &profile, &["--dump-dom"]))
            .await
            .unwrap()
    };
    assert_eq!(
        attribute(&dom, "<body", "data-errors").as_deref(),
        Some("0"),
        "{dom}\n{log}"
    );
    // The serving version, then the 6 newest: 10 to 15.
    let shown: Vec<u32> = std::iter::once(SERVING)
        .chain(VERSIONS - 5..=VERSIONS)
        .collect();
    let hidden = VERSIONS as usize - shown.len();
    for v in 1..=VERSIONS {
        let expected = shown.contains(&v);
        let legend = format!(">accuracy v{v}<");
        assert_eq!(dom.contains(&legend), expected, "legend of v{v}");
        let column = format!("data-column=\"{v}\"");
        assert_eq!(dom.contains(&column), expected, "table column of v{v}");
        let matrix = format!("data-version=\"{v}\"");
        assert_eq!(dom.contains(&matrix), expected, "confusion matrix of v{v}");
    }
    assert_eq!(dom.matches(">accuracy v").count(), shown.len());
    for role in ["accuracy-hidden", "versions-hidden"] {
        let marker = format!("data-role=\"{role}\"");
        assert_eq!(
            attribute(&dom, &marker, "data-hidden"),
            Some(hidden.to_string()),
            "{role}"
        );
        assert_eq!(
            attribute(&dom, &marker, "data-shown"),
            Some(shown.len().to_string()),
            "{role}"
        );
    }
    let note = format!(
        "Showing the 6 newest of {VERSIONS} versions and the serving v{SERVING}; {hidden} older hidden."
    );
    assert!(dom.contains(&note), "{note}");
    // Each plot's y axis is at least as wide as its widest label (measured
    // by the canvas): a fixed 56 px cut 600,000 to "00,000".
    for id in ["plot-rates", "plot-totals", "plot-accuracy-occupancy"] {
        let marker = format!("id=\"{id}\"");
        let px = |name: &str| -> u32 {
            attribute(&dom, &marker, name)
                .unwrap_or_else(|| panic!("no {name} on {id}"))
                .parse()
                .unwrap()
        };
        let (axis, label) = (px("data-y-axis-px"), px("data-y-label-px"));
        assert!(
            label > 0 && axis > label,
            "{id}: axis {axis} px, label {label} px"
        );
    }
    stop(running, handle, token).await;
}
