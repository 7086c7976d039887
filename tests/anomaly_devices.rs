//! The anomaly rules per device (issue 18): a pipeline reading three rooms
//! at different levels, interleaved, scores each reading's residual z and
//! level distance against its own room's earlier readings, as the room's
//! readings scored alone (`tests/fixtures/anomaly/gen_devices.py`, which
//! computes the rules with numpy from their descriptions): in `edgeloop
//! anomaly --device` and in the daemon, whose topics name the device. The
//! second room's first readings, an alarm when the rooms were one stream
//! (residual z 33 after 300 readings of the first room), are not; the
//! first room's jump still is. At most `max_devices` rooms are kept, the
//! least recently seen forgotten and counted; the key is checked at start.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/anomaly")
        .join(name)
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("devices.json")).unwrap()).unwrap()
}

fn values(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Within 1e-9 relative (numpy's quantiles interpolate in another order).
fn assert_close(what: &str, ours: &[f64], want: &[f64]) {
    assert_eq!(ours.len(), want.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{what} row {i}: ours {a}, reference {b}"
        );
    }
}

fn anomaly(extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["anomaly", "--json", "--file"])
        .arg(fixture("devices.csv"))
        .args(extra)
        .output()
        .unwrap()
}

fn anomaly_json(extra: &[&str]) -> Value {
    let out = anomaly(extra);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `--device device`: every row's residual z and level distance as its
/// room's rows scored alone, the alarms (the first room's jump, twice) and
/// their rules; the device column is not a feature. Without it the rows
/// are one stream, the script's pooled values: the second room's first
/// row alarms.
#[test]
fn edgeloop_anomaly_scores_each_device_against_its_own_rows() {
    let r = reference();
    let v = anomaly_json(&["--device", "device"]);
    assert_eq!(
        v["features"],
        serde_json::json!(["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"])
    );
    let want = &r["per_device"];
    assert_close(
        "residual z",
        &values(&v["residual_z"]),
        &values(&want["residual_z"]),
    );
    assert_close("level", &values(&v["level"]), &values(&want["level"]));
    assert_eq!(v["alarms"], want["alarms"]);
    assert_eq!(v["rules"], want["rules"]);
    assert_eq!(v["devices_evicted"], 0);
    // Three rooms, each its own limit (the residual_z default: fewer than
    // `calibration` z-scores each).
    assert_eq!(
        v["residual_limit"],
        serde_json::json!({"room1": 10.0, "room2": 10.0, "room3": 10.0})
    );
    for t in r["first_readings"].as_array().unwrap() {
        let t = t.as_u64().unwrap();
        assert!(!v["alarms"].as_array().unwrap().contains(&t.into()), "{t}");
    }
    let pooled = anomaly_json(&["--features", "Temperature,Humidity,Light,CO2,HumidityRatio"]);
    assert_close(
        "pooled residual z",
        &values(&pooled["residual_z"]),
        &values(&r["pooled"]["residual_z"]),
    );
    let residual: Vec<Value> = pooled["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .zip(pooled["rules"].as_array().unwrap())
        .filter(|(_, rule)| *rule == "residual")
        .map(|(t, _)| t.clone())
        .collect();
    assert_eq!(Value::from(residual), r["pooled"]["residual_alarms"]);
    assert!(r["pooled"]["at_a_switch"].as_u64().unwrap() >= 1);
}

/// `--max-devices 2` over three interleaved rooms: the script's count of
/// rooms forgotten (the least recently seen, when a third comes), and every
/// row's values with a forgotten room starting again from nothing.
#[test]
fn a_third_device_forgets_the_least_recently_seen() {
    let r = reference();
    let v = anomaly_json(&["--device", "device", "--max-devices", "2"]);
    let want = &r["max_devices_2"];
    assert_eq!(v["devices_evicted"], want["evicted"]);
    assert_close(
        "residual z",
        &values(&v["residual_z"]),
        &values(&want["residual_z"]),
    );
    assert_close("level", &values(&v["level"]), &values(&want["level"]));
}

/// `max_devices` at least 1, at start (the key named) and in the flag.
#[test]
fn max_devices_is_validated() {
    let load = |extra: &str| -> Result<edgeloop::config::Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edgeloop.toml");
        let pipeline = "[[pipelines]]\nname='occ'\ntopics=['s/+/o']\nfeatures=['T']\nlabel='y'\n";
        std::fs::write(&file, format!("{pipeline}[pipelines.anomaly]\n{extra}\n")).unwrap();
        edgeloop::config::Config::load_with_env(Some(&file), std::iter::empty())
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        load("").unwrap().pipelines[0].anomaly.max_devices,
        256,
        "the default"
    );
    assert_eq!(
        load("max_devices = 3").unwrap().pipelines[0]
            .anomaly
            .max_devices,
        3
    );
    let err = load("max_devices = 0").unwrap_err();
    assert!(err.contains("anomaly.max_devices"), "{err}");
    let out = anomaly(&["--device", "device", "--max-devices", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-devices: must be at least 1"), "{err}");
    let out = anomaly(&["--device", "room"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no column `room`"), "{err}");
}

/// The daemon, each room on its own topic (`sensors/{room}/occupancy`, the
/// device at level 1), the first room alone for 300 readings and then the
/// three published at once: each prediction message carries its room's
/// residual z and alarm as the script computes them (the first room's
/// jump alarms; the second room's first readings do not), `/metrics`
/// counts those alarms and no eviction; HTTP predict scores a row as its
/// `device`'s next reading (a reading at the second room's levels is an
/// alarm as the first room's, not as the second's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_scores_each_device_against_its_own_readings() {
    use common::*;
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = 1000;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    // The trees' threshold cannot exist within the 2,200 readings (the
    // script models the residual and level rules; the trees score here but
    // never alarm).
    p.anomaly.calibration = 5000;
    let (running, handle, token) = start(cfg).await;
    // Version 1 from labelled rows of another room, room0 (scored and
    // learned by its own rules, not predicted).
    let mut opts = replay_opts("datatraining.txt", port, Some(1000));
    opts.topic = "sensors/room0/occupancy".into();
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(Duration::from_secs(90), "version 1", || {
        handle.registry.get("occupancy").is_some()
    })
    .await;
    // room0's 1,000 readings scored: its alarms are counted before the
    // fixture's.
    let find = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    let metric_of = |text: &str, name: &str| -> f64 {
        find(text, name).unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let metrics = || async {
        let mut client = edgeloop::demo::HttpClient::connect(handle.http_addr)
            .await
            .unwrap();
        let (status, body) = client.request("GET", "/metrics", None).await.unwrap();
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let before = loop {
        let text = metrics().await;
        if metric_of(
            &text,
            "edgeloop_anomaly_score_count{pipeline=\"occupancy\"} ",
        ) >= 1000.0
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "room0's readings scored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (mut rx, stop_sub) = subscribe(port, "edgeloop/occupancy/predictions/#").await;
    // The fixture's rows as payloads, a second apart, by room.
    let mut reader = csv::Reader::from_path(fixture("devices.csv")).unwrap();
    let headers = reader.headers().unwrap().clone();
    let rows: Vec<(String, Vec<u8>)> = reader
        .records()
        .enumerate()
        .map(|(t, rec)| {
            let rec = rec.unwrap();
            let mut m = serde_json::Map::new();
            m.insert(
                "Date".into(),
                format!("2026-12-07 00:{:02}:{:02}", t / 60, t % 60).into(),
            );
            for (h, v) in headers.iter().zip(rec.iter()).skip(1) {
                let v: Value = v.parse::<f64>().map_or(Value::Null, Value::from);
                m.insert(h.into(), v);
            }
            (rec[0].to_string(), serde_json::to_vec(&m).unwrap())
        })
        .collect();
    let n = rows.len();
    let room_opts = |room: &str| {
        let mut o = replay_opts("datatraining.txt", port, None);
        o.topic = format!("sensors/{room}/occupancy");
        o
    };
    let of = |room: &str, range: std::ops::Range<usize>| -> Vec<Vec<u8>> {
        rows[range]
            .iter()
            .filter(|(d, _)| d == room)
            .map(|(_, p)| p.clone())
            .collect()
    };
    let alone = 300;
    assert!(rows[..alone].iter().all(|(d, _)| d == "room1"));
    publish(&room_opts("room1"), of("room1", 0..alone)).await;
    let (o1, o2, o3) = (room_opts("room1"), room_opts("room2"), room_opts("room3"));
    tokio::join!(
        publish(&o1, of("room1", alone..n)),
        publish(&o2, of("room2", alone..n)),
        publish(&o3, of("room3", alone..n)),
    );
    let mut got: Vec<Value> = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a prediction for every reading within a minute")
            .unwrap();
        got.push(m);
    }
    stop_sub.cancel();
    got.sort_by_key(|m| m["timestamp_ms"].as_i64().unwrap());
    let first = got[0]["timestamp_ms"].as_i64().unwrap();
    for (t, m) in got.iter().enumerate() {
        assert_eq!(m["timestamp_ms"].as_i64().unwrap() - first, 1000 * t as i64);
        assert_eq!(m["device"].as_str().unwrap(), rows[t].0, "row {t}");
    }
    let want = &r["per_device"];
    let z: Vec<f64> = got
        .iter()
        .map(|m| m["residual_z"].as_f64().expect("residual_z"))
        .collect();
    assert_close("daemon residual z", &z, &values(&want["residual_z"]));
    let alarmed: Vec<Value> = (0..n)
        .filter(|&t| got[t]["anomaly"].as_bool().unwrap())
        .map(Value::from)
        .collect();
    assert_eq!(Value::from(alarmed.clone()), want["alarms"]);
    let rules: Vec<Value> = alarmed
        .iter()
        .map(|t| got[t.as_u64().unwrap() as usize]["anomaly_rule"].clone())
        .collect();
    assert_eq!(Value::from(rules), want["rules"]);
    // /metrics: the fixture's readings add two alarms, the residual rule's,
    // to room0's; every reading scored; no room forgotten.
    let text = metrics().await;
    // (A counter room0 did not move may be absent before.)
    let added = |name: &str| metric_of(&text, name) - find(&before, name).unwrap_or(0.0);
    assert_eq!(added("edgeloop_anomaly_alarms_total "), 2.0);
    assert_eq!(
        added("edgeloop_anomaly_rule_alarms_total{rule=\"residual\"} "),
        2.0
    );
    assert_eq!(
        metric_of(
            &text,
            "edgeloop_anomaly_score_count{pipeline=\"occupancy\"} "
        ),
        (1000 + n) as f64
    );
    assert_eq!(
        metric_of(&text, "edgeloop_anomaly_devices_evicted_total "),
        0.0
    );
    // HTTP predict: the query as each room's next reading, and without a
    // device (no reading without one was learned).
    let q = &r["query"];
    let reading = values(&q["reading"]);
    let names = ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"];
    let row = |device: Option<&str>| {
        let mut m: serde_json::Map<String, Value> = names
            .iter()
            .zip(&reading)
            .map(|(k, &v)| (k.to_string(), Value::from(v)))
            .collect();
        if let Some(d) = device {
            m.insert("device".into(), d.into());
        }
        Value::Object(m)
    };
    let body = serde_json::json!({"rows": [row(Some("room1")), row(Some("room2")), row(None)]});
    let mut client = edgeloop::demo::HttpClient::connect(handle.http_addr)
        .await
        .unwrap();
    let (status, body) = client
        .request(
            "POST",
            "/v1/pipelines/occupancy/predict",
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    let predictions = v["predictions"].as_array().unwrap();
    for (k, key) in ["room1", "room2", "none"].into_iter().enumerate() {
        let p = &predictions[k];
        assert_close(
            key,
            &[p["residual_z"].as_f64().unwrap()],
            &[q[key]["residual_z"].as_f64().unwrap()],
        );
        assert_eq!(
            p.get("anomaly_rule").unwrap_or(&Value::Null),
            &q[key]["rule"],
            "{key}"
        );
    }
    stop(running, handle, token).await;
}
