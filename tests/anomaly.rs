//! Half-Space Trees (`src/monitor/anomaly.rs`) against River 0.26.1's
//! `HalfSpaceTrees`, row by row: the scores of
//! `tests/fixtures/anomaly/gen_hst.py` (its docstring example; NAB's
//! ambient temperature file behind River's `MinMaxScaler`; a seeded
//! 3-feature stream with outliers), each scored then learned; and the
//! daemon's prediction messages carry River's scores of the readings it
//! predicts (`[pipelines.anomaly]`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeloop::monitor::anomaly::{HalfSpaceTrees, ScaledHalfSpaceTrees};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/anomaly")
        .join(name)
}

/// Runs `edgeloop` as set up in `cmd`, which must succeed, and parses its
/// standard output as JSON.
fn run_json(cmd: &mut std::process::Command) -> Value {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("hst.json")).unwrap()).unwrap()
}

fn scores(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect()
}

fn csv_rows(name: &str, columns: &[&str]) -> Vec<Vec<f64>> {
    let mut r = csv::Reader::from_path(fixture(name)).unwrap();
    let headers = r.headers().unwrap().clone();
    let idx: Vec<usize> = columns
        .iter()
        .map(|c| headers.iter().position(|h| h == *c).unwrap())
        .collect();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            idx.iter().map(|&i| rec[i].parse().unwrap()).collect()
        })
        .collect()
}

/// Score then learn, as River's progressive validation.
fn progressive(model: &mut ScaledHalfSpaceTrees, rows: &[Vec<f64>]) -> Vec<f64> {
    rows.iter()
        .map(|x| {
            let s = model.score_one(x);
            model.learn_one(x);
            s
        })
        .collect()
}

fn assert_equal(what: &str, ours: &[f64], river: &[f64]) {
    assert_eq!(ours.len(), river.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(river).enumerate() {
        assert!(
            (a - b).abs() <= 1e-12,
            "{what} row {i}: ours {a}, River {b}"
        );
    }
}

#[test]
fn docstring_example_equals_river() {
    let r = reference();
    let xs = scores(&r["doc"]["x"]);
    let mut hst = HalfSpaceTrees::new(5, 3, 3, 42);
    for x in &xs[..3] {
        hst.learn_one(&[*x]);
    }
    let ours: Vec<f64> = xs
        .iter()
        .map(|x| {
            hst.learn_one(&[*x]);
            hst.score_one(&[*x])
        })
        .collect();
    // River's docstring prints 0.107, 0.071, …, 0.853.
    assert_equal("doc", &ours, &scores(&r["doc"]["scores"]));
}

#[test]
fn nab_ambient_temperature_equals_river_row_by_row() {
    let r = reference();
    let rows = csv_rows("nab_ambient_temperature_system_failure.csv", &["value"]);
    assert_eq!(rows.len(), 7267);
    let ours = progressive(&mut ScaledHalfSpaceTrees::with_defaults(42), &rows);
    assert_equal("nab", &ours, &scores(&r["nab"]["scores"]));
}

#[test]
fn three_features_with_outliers_equal_river_row_by_row() {
    let r = reference();
    let rows = csv_rows("mixed.csv", &["a", "b", "c"]);
    let ours = progressive(&mut ScaledHalfSpaceTrees::with_defaults(7), &rows);
    let river = scores(&r["mixed"]["scores"]);
    assert_equal("mixed", &ours, &river);
    // The injected outliers (every 200th row) score above the median of
    // the rest once the trees have a reference window.
    let mut normal: Vec<f64> = (250..5000)
        .filter(|i| i % 200 != 199)
        .map(|i| river[i])
        .collect();
    normal.sort_by(f64::total_cmp);
    let median = normal[normal.len() / 2];
    let above = (250..5000)
        .filter(|i| i % 200 == 199)
        .filter(|&i| ours[i] > median)
        .count();
    assert!(
        above >= 20,
        "{above} of 24 outliers above the median score {median}"
    );
}

/// `edgeloop anomaly --json` on a file: River's scores, and the alarms of
/// its quantile rule alone (`--persistence 1 --residual-z 0 --level-margin
/// 0`: the 0.999 quantile of the last 5,000 non-zero scores, after 1,000;
/// the level rule, whose alarms in the seeded stream's first 1,250 rows
/// are its outliers too, has its own test in tests/anomaly_level.rs) as
/// the reference script computes them with numpy.
#[test]
fn the_anomaly_command_prints_rivers_scores_and_the_rules_alarms() {
    let r = reference();
    for (name, file, features, seed) in [
        ("mixed", "mixed.csv", "c,a,b", "7"),
        (
            "nab",
            "nab_ambient_temperature_system_failure.csv",
            "value",
            "42",
        ),
    ] {
        let v = run_json(
            std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
                .args([
                    "anomaly",
                    "--json",
                    "--seed",
                    seed,
                    "--features",
                    features,
                    "--persistence",
                    "1",
                    "--residual-z",
                    "0",
                    "--level-margin",
                    "0",
                    "--file",
                ])
                .arg(fixture(file)),
        );
        assert_equal(name, &scores(&v["scores"]), &scores(&r[name]["scores"]));
        let t = v["threshold"].as_f64().unwrap();
        assert!(
            (t - r[name]["threshold"].as_f64().unwrap()).abs() < 1e-12,
            "{name}: {t}"
        );
        assert_eq!(v["alarms"], r[name]["alarms"], "{name}");
    }
    // The rule at another quantile and history: the threshold moves with
    // the last 2,000 scores.
    let v = run_json(
        std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["anomaly", "--json", "--seed", "7", "--features", "c,a,b"])
            .args(["--quantile", "0.99", "--history", "2000"])
            .args(["--persistence", "1", "--residual-z", "0"])
            .args(["--level-margin", "0", "--file"])
            .arg(fixture("mixed.csv")),
    );
    let t = v["threshold"].as_f64().unwrap();
    assert!((t - r["mixed_q99"]["threshold"].as_f64().unwrap()).abs() < 1e-12);
    assert_eq!(v["alarms"], r["mixed_q99"]["alarms"]);
    // In the seeded stream every alarm is an injected outlier (every 200th
    // row) past the calibration: 5 at the default 0.999; at 0.99 each of
    // the 19 is, and a few others.
    let alarms = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_u64().unwrap())
            .collect()
    };
    let strict = alarms(&r["mixed"]["alarms"]);
    assert_eq!(strict.len(), 5, "{strict:?}");
    assert!(strict.iter().all(|&i| i % 200 == 199), "{strict:?}");
    let loose = alarms(&r["mixed_q99"]["alarms"]);
    let injected = loose.iter().filter(|&&i| i % 200 == 199).count();
    assert_eq!(injected, 19, "{loose:?}");
}

/// `edgeloop anomaly`'s default rules, the daemon's: the quantile rule
/// with persistence 2 of 5, or a feature's residual against its EWMA above
/// 10 smoothed MADs and above the 0.999 quantile of the earlier residual
/// z-scores (after 30 rows), or, in the first 1,250 rows, the level rule
/// (tests/anomaly_level.rs; in the seeded stream its alarms are outliers
/// the residual rule alarms on too, on NAB's file it is quiet). The
/// residual z of every row and the alarms
/// equal the reference script's (`residual_z`, `rules`, written from the
/// documentation). On the seeded stream the defaults catch 9 of the 25
/// injected outliers (the quantile rule alone: 5) and alarm on nothing
/// else: one outlier in 200 readings is above the 0.999 quantile, so once
/// the residual limit has its 1,000 z-scores the outliers' own size sets
/// it (with a fixed limit of 10: 19). NAB's ambient temperature rises over
/// days, which neither rule alarms on. At `--quantile 0.99 --residual-z
/// 2.5 --episode-gap 24` on the same file both rules alarm, the residual
/// limit rises above 2.5 with the stream's own residuals, and the rules
/// and episodes of the alarms equal the script's.
#[test]
fn the_anomaly_command_default_rules_equal_the_reference() {
    let r = reference();
    for (name, file, features, seed) in [
        ("mixed", "mixed.csv", "c,a,b", "7"),
        (
            "nab",
            "nab_ambient_temperature_system_failure.csv",
            "value",
            "42",
        ),
    ] {
        let v = run_json(
            std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
                .args(["anomaly", "--json", "--seed", seed, "--features", features])
                .arg("--file")
                .arg(fixture(file)),
        );
        assert_equal(name, &scores(&v["scores"]), &scores(&r[name]["scores"]));
        assert_eq!(v["alarms"], r[name]["default_alarms"], "{name}");
        if name == "nab" {
            assert_equal(
                "nab residual z",
                &scores(&v["residual_z"]),
                &scores(&r["nab"]["residual_z"]),
            );
        }
    }
    let alarms: Vec<u64> = r["mixed"]["default_alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_u64().unwrap())
        .collect();
    assert_eq!(alarms.len(), 9, "{alarms:?}");
    assert!(alarms.iter().all(|&i| i % 200 == 199), "{alarms:?}");
    let v = run_json(
        std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["anomaly", "--json", "--seed", "42", "--features", "value"])
            .args(["--quantile", "0.99", "--residual-z", "2.5"])
            .args(["--residual-margin", "0"])
            .args(["--episode-gap", "24", "--file"])
            .arg(fixture("nab_ambient_temperature_system_failure.csv")),
    );
    let want = &r["nab_loose"];
    assert_eq!(v["alarms"], want["alarms"]);
    assert_eq!(v["rules"], want["rules"]);
    assert_eq!(v["episodes"], want["episodes"]);
    let rules: Vec<&str> = want["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(rules.contains(&"trees") && rules.contains(&"residual"));
    // The residual limit rose above 2.5 (the 0.99 quantile of the file's
    // own residual z-scores).
    assert!(
        v["residual_limit"].as_f64().unwrap() > 2.5,
        "{}",
        v["residual_limit"]
    );
}

/// The daemon of `prediction_messages_carry_rivers_anomaly_scores`: one
/// training at 2,000 labels, none after, no drift retraining; the level
/// rule on the levels alone (no dispersion term): its alarms at readings
/// 210 and 215 (Light switched on) keep the level counter checked; with the
/// default dispersion term the first 600 readings raise none
/// (tests/anomaly_level.rs tests the term).
fn scoring_config(store: &std::path::Path, broker: common::Broker) -> edgeloop::config::Config {
    let mut cfg = common::config(store, broker);
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = 2000;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    p.anomaly.level_dispersion = 0;
    cfg
}

/// The daemon scores every reading from the first one, labelled or not,
/// and publishes the scores of those it predicts: River's, reading for
/// reading (the script rounds the readings to float32 as the daemon stores
/// them; the trees see the 2,000 labelled readings of room0 first), with
/// room1's residual z and its feature, and the alarm with its rule, as the
/// script computes them; HTTP predict carries the same fields for its rows
/// (seen as room1's next reading, not learned); `/metrics` observes all
/// 2,600 scores and counts the alarms by rule and the episodes of both
/// rooms. (The labelled readings were not scored: a stream whose readings
/// all carry labels had no anomaly score at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prediction_messages_carry_rivers_anomaly_scores() {
    use common::*;
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::Embedded(free_port());
    let cfg = scoring_config(dir.path(), broker);
    let token = tokio_util::sync::CancellationToken::new();
    let running = edgeloop::daemon::start(cfg, token.clone()).await.unwrap();
    let handle = running.handle.clone();
    assert!(handle.wait_subscribed(Duration::from_secs(90)).await);
    // Version 1 from labelled rows of room0 (labelled samples are scored
    // and learned, not predicted).
    let mut opts = replay_opts("datatraining.txt", broker.port(), Some(2000));
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
    let (mut rx, stop) = subscribe(broker.port(), "edgeloop/occupancy/predictions/#").await;
    let mut opts = replay_opts("datatest2.txt", broker.port(), Some(600));
    opts.drop_columns = vec!["Occupancy".into()];
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    let mut got: Vec<(i64, f64, bool, Value)> = Vec::new();
    while got.len() < 600 {
        let m = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("600 predictions within a minute")
            .unwrap();
        got.push((
            m["timestamp_ms"].as_i64().unwrap(),
            m["anomaly_score"].as_f64().expect("anomaly_score"),
            m["anomaly"].as_bool().expect("anomaly"),
            m,
        ));
    }
    stop.cancel();
    got.sort_by_key(|g| g.0);
    let reference_json = reference();
    let occupancy = &reference_json["occupancy"];
    let residual: Vec<f64> = got
        .iter()
        .map(|g| g.3["residual_z"].as_f64().expect("residual_z"))
        .collect();
    assert_equal("residual z", &residual, &scores(&occupancy["residual_z"]));
    for (i, g) in got.iter().enumerate() {
        // The feature of the residual z (absent for the first readings,
        // before any feature has a scale).
        assert_eq!(
            g.3.get("residual_feature").unwrap_or(&Value::Null),
            &occupancy["residual_feature"][i],
            "reading {i}"
        );
    }
    let rules: Vec<Value> = got
        .iter()
        .filter(|g| g.2)
        .map(|g| g.3["anomaly_rule"].clone())
        .collect();
    assert_eq!(Value::from(rules), occupancy["rules"]);
    assert!(got.iter().all(|g| g.2 || g.3.get("anomaly_rule").is_none()));
    let ours: Vec<f64> = got.iter().map(|g| g.1).collect();
    assert_equal(
        "daemon",
        &ours,
        &scores(&reference()["occupancy"]["scores"]),
    );
    // The trees' threshold is calibrated after the labelled readings, but
    // room1's alarms are its residual rule's and its level rule's (Light
    // switched on), as the reference computes them.
    let alarmed: Vec<u64> = got
        .iter()
        .enumerate()
        .filter(|(_, g)| g.2)
        .map(|(i, _)| i as u64)
        .collect();
    let want_alarms: Vec<u64> = reference()["occupancy"]["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_u64().unwrap())
        .collect();
    assert_eq!(alarmed, want_alarms);
    // HTTP predict scores its rows without learning them: twice the same.
    let r = reference();
    let want = http_queries_equal_the_reference(handle.http_addr).await;
    assert!(want[1] > want[0], "the far reading scores higher: {want:?}");
    // /metrics: the histogram of all 2,600 readings' scores (HTTP queries
    // are not observed), bucket by bucket River's scores counted.
    let mut client = edgeloop::demo::HttpClient::connect(handle.http_addr)
        .await
        .unwrap();
    let (status, body) = client.request("GET", "/metrics", None).await.unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let river = scores(&r["occupancy"]["all_scores"]);
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` in /metrics:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("edgeloop_anomaly_score_count{pipeline=\"occupancy\"}"),
        2600.0
    );
    // Alarms by rule and episodes of both rooms, as the script counts them
    // (HTTP queries are not counted).
    let all_rules = occupancy["all_rules"].as_array().unwrap();
    assert!(all_rules.len() > want_alarms.len(), "room0 alarms too");
    let by_rule = |rule: &str| {
        occupancy["all_rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| *r == rule || *r == "both")
            .count() as f64
    };
    assert_eq!(
        value("edgeloop_anomaly_alarms_total "),
        all_rules.len() as f64
    );
    assert_eq!(
        value("edgeloop_anomaly_rule_alarms_total{rule=\"residual\"}"),
        by_rule("residual")
    );
    assert_eq!(
        value("edgeloop_anomaly_rule_alarms_total{rule=\"trees\"}"),
        by_rule("trees")
    );
    // The level rule's alarms (only where neither other rule fired).
    let level = occupancy["all_rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| *r == "level")
        .count() as f64;
    assert!(level > 0.0);
    assert_eq!(
        value("edgeloop_anomaly_rule_alarms_total{rule=\"level\"}"),
        level
    );
    assert_eq!(
        value("edgeloop_anomaly_episodes_total "),
        occupancy["all_episodes"].as_array().unwrap().len() as f64
    );
    let sum = value("edgeloop_anomaly_score_sum{pipeline=\"occupancy\"}");
    assert!((sum - river.iter().sum::<f64>()).abs() < 1e-6, "sum {sum}");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter(|l| {
            l.starts_with("edgeloop_anomaly_score_bucket{") && l.contains("pipeline=\"occupancy\"")
        })
        .map(|l| {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            (
                le.to_string(),
                l.rsplit(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(buckets.len(), 21, "{buckets:?}");
    for (k, (le, got)) in buckets.iter().enumerate() {
        let bound = if k == 20 {
            assert_eq!(le, "+Inf");
            f64::INFINITY
        } else {
            let bound: f64 = le.parse().unwrap();
            assert_eq!(bound, (k + 1) as f64 / 20.0, "bucket {k}");
            bound
        };
        let want = river.iter().filter(|&&s| s <= bound).count() as f64;
        assert_eq!(*got, want, "bucket le={le}");
    }
    drop(handle);
    token.cancel();
    running.wait(Duration::from_secs(15)).await.unwrap();
    // Restarted on the same store: the scorer is warmed from the 2,600
    // stored readings (daemon::warm_anomaly), so the queries score as
    // before the restart, the reference's values (a scorer begun anew
    // scored every query 0).
    let cfg = scoring_config(dir.path(), common::Broker::Embedded(common::free_port()));
    let token = tokio_util::sync::CancellationToken::new();
    let running = edgeloop::daemon::start(cfg, token.clone()).await.unwrap();
    http_queries_equal_the_reference(running.handle.http_addr).await;
    token.cancel();
    running.wait(Duration::from_secs(15)).await.unwrap();
}

/// The reference's query rows over HTTP predict as room1's next readings,
/// twice (not learned: the same both times): their anomaly scores, residual
/// z, its feature, the alarm and its rule as the script computes them after
/// the 2,600 readings. Returns the scores.
async fn http_queries_equal_the_reference(addr: std::net::SocketAddr) -> Vec<f64> {
    use common::predict_body;
    let r = reference();
    let queries: Vec<[f32; 5]> = r["occupancy"]["queries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let v: Vec<f32> = q
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            [v[0], v[1], v[2], v[3], v[4]]
        })
        .collect();
    let want = scores(&r["occupancy"]["query_scores"]);
    // Each row as the next reading of room1, the device of the readings
    // (the residual and level rules are kept per device; a row without a
    // device would be scored by the rules of the readings without one).
    let mut query_body: Value = serde_json::from_slice(&predict_body(&queries)).unwrap();
    for row in query_body["rows"].as_array_mut().unwrap() {
        row["device"] = "room1".into();
    }
    for _ in 0..2 {
        let mut client = edgeloop::demo::HttpClient::connect(addr).await.unwrap();
        let (status, body) = client
            .request(
                "POST",
                "/v1/pipelines/occupancy/predict",
                Some(serde_json::to_vec(&query_body).unwrap()),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let predictions = v["predictions"].as_array().unwrap();
        let got: Vec<f64> = predictions
            .iter()
            .map(|p| p["anomaly_score"].as_f64().unwrap())
            .collect();
        assert_equal("http", &got, &want);
        let z: Vec<f64> = predictions
            .iter()
            .map(|p| p["residual_z"].as_f64().unwrap())
            .collect();
        assert_equal(
            "http residual z",
            &z,
            &scores(&r["occupancy"]["query_residual_z"]),
        );
        for (k, p) in predictions.iter().enumerate() {
            assert_eq!(
                p["residual_feature"], r["occupancy"]["query_residual_feature"][k],
                "query {k}"
            );
            assert_eq!(p["anomaly"], r["occupancy"]["query_alarm"][k], "query {k}");
            // The alarm's rule, as the reference decides it.
            assert_eq!(
                p.get("anomaly_rule").unwrap_or(&Value::Null),
                &r["occupancy"]["query_rule"][k],
                "query {k}"
            );
        }
    }
    want
}

/// `edgeloop detect` on the shipped NAB column prints River's alarms, as
/// documented: `{"detector", "params", "rows", "standardize", "alarms"}`
/// (ADWIN with River's clock and with `clock=1`; Page-Hinkley on the raw
/// temperatures and on their running z-scores).
#[test]
fn the_detect_command_on_nab_prints_rivers_alarms() {
    let r = reference();
    for (case, detector, extra) in [
        ("adwin", "adwin", &[][..]),
        ("adwin_clock1", "adwin", &["--param", "clock=1"][..]),
        ("page_hinkley", "page_hinkley", &[][..]),
        (
            "page_hinkley_standardized",
            "page_hinkley",
            &["--standardize"][..],
        ),
    ] {
        let v = run_json(
            std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
                .args([
                    "detect",
                    "--json",
                    "--column",
                    "value",
                    "--detector",
                    detector,
                ])
                .args(extra)
                .arg("--file")
                .arg(fixture("nab_ambient_temperature_system_failure.csv")),
        );
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            ["alarms", "detector", "params", "rows", "standardize"],
            "{case}"
        );
        assert_eq!(v["rows"], 7267);
        assert_eq!(v["detector"], detector);
        assert_eq!(v["standardize"], extra.contains(&"--standardize"));
        assert_eq!(v["alarms"], r["nab_detect"][case], "{case}");
    }
}

/// `[pipelines.anomaly]`'s alarm-rule keys from a file; out of range,
/// refused naming the key.
#[test]
fn the_alarm_rule_keys_load_and_are_validated() {
    let load = |extra: &str| -> Result<edgeloop::config::Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("edgeloop.toml");
        let pipeline = "[[pipelines]]\nname='occ'\ntopics=['s/+/o']\nfeatures=['T']\nlabel='y'\n";
        std::fs::write(&file, format!("{pipeline}[pipelines.anomaly]\n{extra}\n")).unwrap();
        edgeloop::config::Config::load_with_env(Some(&file), std::iter::empty())
            .map_err(|e| e.to_string())
    };
    let cfg = load(
        "persistence = 3\npersistence_window = 4\nresidual_z = 6.5\nresidual_alpha = 0.1\n\
         residual_warmup = 100\nepisode_gap = 7",
    )
    .unwrap();
    let a = &cfg.pipelines[0].anomaly;
    assert_eq!(
        (
            a.persistence,
            a.persistence_window,
            a.residual_z,
            a.residual_alpha,
            a.residual_warmup,
            a.episode_gap
        ),
        (3, 4, 6.5, 0.1, 100, 7)
    );
    let level = load("level_margin = 1.5\nlevel_warmup = 300\nlevel_dispersion = 10").unwrap();
    let a = &level.pipelines[0].anomaly;
    assert_eq!(
        (a.level_margin, a.level_warmup, a.level_dispersion),
        (1.5, 300, 10)
    );
    assert_eq!(
        load("level_dispersion = 0").unwrap().pipelines[0]
            .anomaly
            .level_dispersion,
        0
    );
    assert_eq!(
        load("level_margin = 0.0").unwrap().pipelines[0]
            .anomaly
            .level_margin,
        0.0
    );
    assert_eq!(
        load("residual_z = 0.0").unwrap().pipelines[0]
            .anomaly
            .residual_z,
        0.0
    );
    let margin = load("residual_margin = 2.0\nresidual_margin_quantile = 0.99").unwrap();
    let a = &margin.pipelines[0].anomaly;
    assert_eq!((a.residual_margin, a.residual_margin_quantile), (2.0, 0.99));
    for (bad, key) in [
        ("persistence = 0", "anomaly.persistence"),
        ("persistence = 6", "anomaly.persistence_window"),
        ("episode_gap = 0", "anomaly.episode_gap"),
        ("residual_z = -1.0", "anomaly.residual_z"),
        ("residual_alpha = 0.0", "anomaly.residual_alpha"),
        ("residual_alpha = 1.5", "anomaly.residual_alpha"),
        ("residual_margin = 0.5", "anomaly.residual_margin"),
        (
            "residual_margin_quantile = 1.0",
            "anomaly.residual_margin_quantile",
        ),
        ("level_margin = 0.5", "anomaly.level_margin"),
        ("level_warmup = 20", "anomaly.level_warmup"),
        ("level_dispersion = 201", "anomaly.level_dispersion"),
        ("quantile = 1.0", "anomaly.quantile"),
        ("height = 0", "anomaly.height"),
        ("history = 500", "anomaly.history"),
    ] {
        let err = load(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(err.contains(key), "{bad}: {err}");
    }
    // `edgeloop anomaly` refuses the same values in its flags, naming the
    // flag (`--quantile 2` used to run and print "threshold not reached").
    for (flags, named) in [
        (&["--quantile", "2"][..], "--quantile: must be in (0, 1)"),
        (&["--height", "0"], "--height: must be in 1..=20"),
        (
            &["--history", "500"],
            "--history: must be at least `calibration`",
        ),
        (
            &["--level-warmup", "20"],
            "--level-warmup: must be at least 50",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["anomaly", "--json", "--features", "value", "--file"])
            .arg(fixture("nab_ambient_temperature_system_failure.csv"))
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} accepted");
        assert!(err.contains(named), "{flags:?}: {err}");
    }
}
