//! `GET /metrics`: a strict parse of the Prometheus text format 0.0.4
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format>)
//! and counters equal to what the test sent.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use edgeloop::demo::HttpClient;

const WAIT: Duration = Duration::from_secs(90);

/// Samples by `name{k="v",…}` (labels sorted), with per-family checks.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, f64>,
}

impl Exposition {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample `{key}`; have {:?}", self.samples.keys()))
    }
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// Parses the text format strictly: every line is HELP, TYPE or a sample of
/// a family whose TYPE came first; names and label names valid; label values
/// quoted with only `\\`, `\"`, `\n` escapes; values are floats; a counter's
/// samples end in `_total`; a histogram's buckets rise with `le` up to
/// `+Inf`, which equals `_count`.
fn parse(text: &str) -> Exposition {
    let mut e = Exposition::default();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for (i, line) in text.lines().enumerate() {
        let at = || format!("line {}: `{line}`", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_name(name), "{}", at());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("{}", at()));
            assert!(valid_name(name), "{}", at());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{}",
                at()
            );
            assert!(
                e.types.insert(name.into(), kind.into()).is_none(),
                "TYPE given twice: {}",
                at()
            );
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{}", at());
        let (name, labels, value) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').unwrap_or_else(|| panic!("{}", at()));
                (
                    &line[..open],
                    &line[open + 1..close],
                    line[close + 1..].trim(),
                )
            }
            None => {
                let (n, v) = line.split_once(' ').unwrap_or_else(|| panic!("{}", at()));
                (n, "", v.trim())
            }
        };
        assert!(valid_name(name), "{}", at());
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value: {}", at())),
        };
        // Labels: name="value" pairs, comma separated.
        let mut pairs = Vec::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{}", at()));
            assert!(
                valid_name(k) && !k.starts_with("__"),
                "label name: {}",
                at()
            );
            let mut v = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => v.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => v.push(c),
                        _ => panic!("bad escape: {}", at()),
                    },
                    Some((j, '"')) => break j,
                    Some((_, c)) => v.push(c),
                    None => panic!("unterminated label value: {}", at()),
                }
            };
            pairs.push((k.to_string(), v));
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        let family = e
            .types
            .keys()
            .filter(|f| {
                name == f.as_str()
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample before its TYPE: {}", at()))
            .clone();
        if e.types[&family] == "counter" {
            assert!(name.ends_with("_total") && value >= 0.0, "{}", at());
        }
        pairs.sort();
        let key = if pairs.is_empty() {
            name.to_string()
        } else {
            let l: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        assert!(
            e.samples.insert(key, value).is_none(),
            "duplicate: {}",
            at()
        );
    }
    // Histograms: buckets rise, +Inf equals _count.
    for (family, kind) in &e.types {
        if kind != "histogram" {
            continue;
        }
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for (key, v) in &e.samples {
            let Some(labels) = key.strip_prefix(&format!("{family}_bucket{{")) else {
                continue;
            };
            let labels = labels.trim_end_matches('}');
            let le = labels
                .split(',')
                .find_map(|p| p.strip_prefix("le=\""))
                .unwrap()
                .trim_end_matches('"');
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            let rest: Vec<&str> = labels
                .split(',')
                .filter(|p| !p.starts_with("le="))
                .collect();
            series.entry(rest.join(",")).or_default().push((le, *v));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{{{labels}}}"
            );
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY);
            assert_eq!(last.1, e.get(&format!("{family}_count{{{labels}}}")));
        }
    }
    e
}

#[test]
fn the_parser_refuses_what_prometheus_refuses() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{reason=\"x\\\"y\"} 3\n";
    // Keys hold label values unescaped.
    assert_eq!(parse(ok).get("a_total{reason=\"x\"y\"}"), 3.0);
    for bad in [
        "a_total 3\n",                // no TYPE
        "# TYPE a counter\na 3\n",    // counter without _total
        "# TYPE a gauge\na{b=c} 3\n", // unquoted label
        "# TYPE a gauge\na three\n",  // not a number
        "# TYPE a gauge\n1a 3\n",     // bad name
        "# TYPE a gauge\na 3",        // no final newline
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // falling
    ] {
        assert!(
            std::panic::catch_unwind(|| parse(bad)).is_err(),
            "accepted: {bad:?}"
        );
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut c = HttpClient::connect(addr).await.unwrap();
    c.request("GET", path, None).await.unwrap()
}

/// 600 labelled rows (training at 500 labels), 5 bad payloads of known
/// reasons, and 3 predict requests of 4 rows: `/metrics` counts exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_sent() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    cfg.pipelines[0].model.min_labels = 500;
    cfg.pipelines[0].model.retrain_every = 1_000_000;
    cfg.pipelines[0].drift.retrain_on_drift = false;
    let token = tokio_util::sync::CancellationToken::new();
    let running = edgeloop::daemon::start(cfg, token.clone()).await.unwrap();
    let handle = running.handle.clone();
    assert!(handle.wait_subscribed(WAIT).await);

    let opts = replay_opts("datatraining.txt", port, Some(600));
    let mut payloads = edgeloop::ingest::replay::csv_payloads(&opts).unwrap();
    payloads.extend([
        b"not json".to_vec(),
        b"{nor this".to_vec(),
        b"[1, 2]".to_vec(),
        br#"{"Date": "2015-03-01 00:01:00", "Occupancy": 1}"#.to_vec(),
        serde_json::to_vec(&serde_json::json!({"pad": "x".repeat(70_000)})).unwrap(),
    ]);
    publish(&opts, payloads).await;
    let stats = handle.stats.clone();
    // The learner counts its training just after the swap: wait for both.
    wait_until(WAIT, "every message handled and a model serving", || {
        let s = stats.snapshot();
        s.samples_stored == 600
            && s.samples_rejected == 5
            && s.trainings == 1
            && handle.registry.get("occupancy").is_some()
    })
    .await;

    let (rows, _) = rows("datatest.txt");
    for chunk in rows.chunks(4).take(3) {
        let body = predict_body(chunk);
        let mut c = HttpClient::connect(handle.http_addr).await.unwrap();
        let (status, _) = c
            .request("POST", "/v1/pipelines/occupancy/predict", Some(body))
            .await
            .unwrap();
        assert_eq!(status, 200);
    }

    let (status, body) = get(handle.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let m = parse(&text);
    assert_eq!(m.get("edgeloop_messages_received_total"), 605.0);
    assert_eq!(m.get("edgeloop_samples_stored_total"), 600.0);
    assert_eq!(m.get("edgeloop_messages_rejected_total"), 5.0);
    assert_eq!(m.get("edgeloop_messages_unrouted_total"), 0.0);
    for (reason, n) in [
        ("not_json", 2.0),
        ("not_object", 1.0),
        ("no_features", 1.0),
        ("too_large", 1.0),
        ("bad_label", 0.0),
    ] {
        assert_eq!(
            m.get(&format!(
                "edgeloop_payload_problems_total{{reason=\"{reason}\"}}"
            )),
            n,
            "{reason}"
        );
    }
    assert_eq!(m.get("edgeloop_predictions_total{path=\"http\"}"), 12.0);
    assert_eq!(
        m.get("edgeloop_prediction_duration_seconds_count{path=\"http\",pipeline=\"occupancy\"}"),
        3.0
    );
    assert_eq!(m.get("edgeloop_model_version{pipeline=\"occupancy\"}"), 1.0);
    assert_eq!(
        m.get("edgeloop_trainings_total{outcome=\"completed\"}"),
        1.0
    );
    assert_eq!(
        m.get("edgeloop_training_duration_seconds_count{pipeline=\"occupancy\"}"),
        1.0
    );
    let store_bytes = std::fs::metadata(dir.path().join("edgeloop.redb"))
        .unwrap()
        .len();
    assert_eq!(m.get("edgeloop_store_size_bytes"), store_bytes as f64);
    assert_eq!(m.get("edgeloop_queue_capacity{queue=\"ingest\"}"), 1024.0);
    assert_eq!(m.get("edgeloop_queue_depth{queue=\"ingest\"}"), 0.0);
    assert_eq!(m.types["edgeloop_prediction_duration_seconds"], "histogram");
    // The same numbers as /v1/stats.
    let (_, stats_body) = get(handle.http_addr, "/v1/stats").await;
    let s: edgeloop::stats::StatsSnapshot = serde_json::from_slice(&stats_body).unwrap();
    assert_eq!(
        m.get("edgeloop_messages_received_total"),
        s.messages_received as f64
    );
    assert_eq!(s.http_predictions, 12);

    drop(handle);
    token.cancel();
    running.wait(Duration::from_secs(15)).await.unwrap();
}

/// `daemon.instance` (a fleet's id of each daemon): every sample of
/// `/metrics` carries it as its `instance` label, beside its own labels, and
/// the counts are the same; by default no metric has that label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_carries_the_configured_instance() {
    init_logs();
    for instance in ["gw-07", ""] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = config(dir.path(), Broker::Embedded(port));
        cfg.daemon.instance = instance.into();
        let (running, handle, token) = start(cfg).await;
        let opts = replay_opts("datatraining.txt", port, Some(50));
        publish(
            &opts,
            edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
        )
        .await;
        let stats = handle.stats.clone();
        wait_until(WAIT, "50 stored", || stats.snapshot().samples_stored == 50).await;
        let (status, body) = get(handle.http_addr, "/metrics").await;
        assert_eq!(status, 200);
        let m = parse(&String::from_utf8(body).unwrap());
        let label = format!("instance=\"{instance}\"");
        for key in m.samples.keys() {
            assert_eq!(
                key.contains(&label),
                !instance.is_empty(),
                "{key} with instance `{instance}`"
            );
        }
        if instance.is_empty() {
            assert_eq!(m.get("edgeloop_samples_stored_total"), 50.0);
        } else {
            assert_eq!(
                m.get(&format!("edgeloop_samples_stored_total{{{label}}}")),
                50.0
            );
            assert_eq!(
                m.get(&format!(
                    "edgeloop_payload_problems_total{{{label},reason=\"not_json\"}}"
                )),
                0.0
            );
        }
        stop(running, handle, token).await;
    }
}
