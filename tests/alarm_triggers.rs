//! What triggers what (issue 18): data-drift and anomaly alarms are marked
//! on the timeline (`data_drift_alarm`, `anomaly_alarm`), counted in
//! `/metrics` and on the drift board, and train only where
//! `[pipelines.drift] retrain_on` names them (default `["error"]`). The
//! daemon runs in-process over its embedded broker; the data are UCI
//! occupancy's first 1,000 labelled readings (the training data of version
//! 1), then 1,000 unlabelled readings of another week (`datatest2.txt`),
//! whose every window of 500 leaves the training range (the rule of
//! `edgeloop drift` with its range rule on, `range_floor` 0.25: one-minute
//! room readings carry about 2 effective readings per window, too few for
//! the tests; `tests/drift_windows.rs`).

mod common;

use std::time::Duration;

use common::*;
use edgeloop::demo::HttpClient;
use edgeloop::monitor::AlarmKind;

const PIPELINE: &str = "occupancy";
const WAIT: Duration = Duration::from_secs(90);

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut c = HttpClient::connect(addr).await.unwrap();
    c.request("GET", path, None).await.unwrap()
}

/// `name{pipeline="occupancy"} value` in the `/metrics` text.
fn metric(text: &str, name: &str) -> Option<f64> {
    let head = format!("{name}{{pipeline=\"{PIPELINE}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(head.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Version 1 from 1,000 labelled readings, then 1,000 unlabelled readings
/// of another week; returns once both alarm kinds are on the timeline.
async fn run(
    retrain_on: Vec<AlarmKind>,
) -> (
    Vec<edgeloop::serve::registry::ServingEvent>,
    Vec<edgeloop::learn::card::ModelCard>,
    String,
    serde_json::Value,
) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = 1000;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on = retrain_on;
    p.drift.cooldown_labels = 0;
    p.drift.window = 500;
    p.drift.reference = 1000;
    p.drift.range_floor = Some(0.25);
    // Alarms from the first unlabelled readings: a short mass window, a
    // low quantile, the threshold calibrated on the 1,000 non-zero scores
    // of the labelled readings and the first 50 unlabelled ones (every
    // reading is scored), the residual and level rules off. (An episode
    // while no version serves cannot train, and a new one within
    // ANOMALY_ALARM_GAP, a minute, raises no new alarm.)
    p.anomaly.window = 50;
    p.anomaly.calibration = 1000;
    p.anomaly.quantile = 0.5;
    p.anomaly.residual_z = 0.0;
    p.anomaly.level_margin = 0.0;
    let (running, handle, token) = start(cfg).await;
    let opts = replay_opts("datatraining.txt", port, Some(1000));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(WAIT, "v1", || handle.registry.get(PIPELINE).is_some()).await;
    let mut later = replay_opts("datatest2.txt", port, Some(1000));
    later.drop_columns = vec!["Occupancy".into()];
    publish(
        &later,
        edgeloop::ingest::replay::csv_payloads(&later).unwrap(),
    )
    .await;
    let history = || handle.registry.history(&handle.store, PIPELINE).unwrap();
    // The learner looks every 5 s.
    wait_until(
        WAIT,
        "a data-drift and an anomaly alarm on the timeline",
        || {
            let h = history();
            h.iter().any(|e| e.action == "data_drift_alarm")
                && h.iter().any(|e| e.action == "anomaly_alarm")
        },
    )
    .await;
    // A training an alarm asked for has finished (the event follows it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get(handle.http_addr, "/metrics").await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(body).unwrap();
    let mut c = HttpClient::connect(handle.http_addr).await.unwrap();
    let (_, drift) = c
        .request("GET", "/v1/pipelines/occupancy/drift", None)
        .await
        .unwrap();
    let drift: serde_json::Value = serde_json::from_slice(&drift).unwrap();
    let (history, cards) = (
        history(),
        handle.registry.cards(&handle.store, PIPELINE).unwrap(),
    );
    stop(running, handle, token).await;
    (history, cards, metrics, drift)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_annotate_the_timeline_are_counted_and_train_only_where_configured() {
    // Default: `retrain_on = ["error"]`.
    assert_eq!(
        edgeloop::monitor::DriftConfig::default().retrain_on,
        [AlarmKind::Error]
    );
    let (history, cards, metrics, drift) = run(vec![AlarmKind::Error]).await;
    let data: Vec<_> = history
        .iter()
        .filter(|e| e.action == "data_drift_alarm")
        .collect();
    // Every window of the new week drifts: one alarm when drift starts,
    // not one per window.
    assert_eq!(data.len(), 1, "{history:?}");
    assert!(
        data[0].reason.contains("Temperature") || data[0].reason.contains("Humidity"),
        "{}",
        data[0].reason
    );
    assert!(
        data[0]
            .reason
            .ends_with("none: retrain_on leaves out \"data\""),
        "{}",
        data[0].reason
    );
    assert_eq!((data[0].version, data[0].by.as_str()), (1, "learner"));
    let anomaly = history
        .iter()
        .find(|e| e.action == "anomaly_alarm")
        .unwrap();
    assert!(
        anomaly
            .reason
            .ends_with("none: retrain_on leaves out \"anomaly\""),
        "{}",
        anomaly.reason
    );
    assert_eq!(cards.len(), 1, "no training but the first");
    assert_eq!(
        metric(&metrics, "edgeloop_data_drift_alarms_total"),
        Some(1.0)
    );
    let events = metric(&metrics, "edgeloop_anomaly_alarm_events_total").unwrap();
    assert!(events >= 1.0, "{metrics}");
    // The board counts them too (`concept.other`).
    let other = &drift["concept"]["other"];
    assert_eq!(other["data_drift_alarms"], 1, "{other}");
    assert_eq!(other["anomaly_alarms"].as_f64(), Some(events));

    // Retraining on data drift and anomalies where configured: each
    // trains (cool-down 0) with its trigger on the card.
    let (history, cards, _, _) = run(vec![AlarmKind::Data, AlarmKind::Anomaly]).await;
    let data = history
        .iter()
        .find(|e| e.action == "data_drift_alarm")
        .unwrap();
    assert!(
        data.reason.contains("; trained version "),
        "{}",
        data.reason
    );
    let triggers: Vec<_> = cards.iter().map(|c| c.trigger).collect();
    assert!(
        triggers.contains(&edgeloop::learn::Trigger::DataDrift),
        "{triggers:?}"
    );
    assert!(
        triggers.contains(&edgeloop::learn::Trigger::Anomaly),
        "{triggers:?}"
    );
}

/// A restart does not raise the same data-drift alarm again: the watch
/// (the samples checked, and whether the last window drifted) is kept in
/// the store, so a drift already reported is not "starting" after a
/// restart (README: one alarm when drift starts). Before, every start
/// checked the samples since the serving version's training again and
/// added one `data_drift_alarm` per start to the timeline and the counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_raise_the_same_data_drift_alarm_again() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = config(dir.path(), Broker::Embedded(port));
    let p = &mut cfg.pipelines[0];
    p.model.min_labels = 1000;
    p.model.retrain_every = 1_000_000;
    p.drift.window = 500;
    p.drift.reference = 1000;
    p.drift.range_floor = Some(0.25);
    p.anomaly.enabled = false;
    let (running, handle, token) = start(cfg.clone()).await;
    let opts = replay_opts("datatraining.txt", port, Some(1000));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(WAIT, "v1", || handle.registry.get(PIPELINE).is_some()).await;
    let mut later = replay_opts("datatest2.txt", port, Some(1000));
    later.drop_columns = vec!["Occupancy".into()];
    publish(
        &later,
        edgeloop::ingest::replay::csv_payloads(&later).unwrap(),
    )
    .await;
    let alarms = |handle: &edgeloop::daemon::DaemonHandle| {
        handle
            .registry
            .history(&handle.store, PIPELINE)
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "data_drift_alarm")
            .count()
    };
    wait_until(WAIT, "a data-drift alarm", || alarms(&handle) == 1).await;
    stop(running, handle, token).await;

    // Twice more: each start waits three of the learner's 5 s looks.
    for _ in 0..2 {
        let (running, handle, token) = start(cfg.clone()).await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(alarms(&handle), 1, "one alarm for one drift");
        let (status, body) = get(handle.http_addr, "/metrics").await;
        assert_eq!(status, 200);
        let metrics = String::from_utf8(body).unwrap();
        // The counter is kept in the store: still the one alarm.
        assert_eq!(
            metric(&metrics, "edgeloop_data_drift_alarms_total"),
            Some(1.0),
            "{metrics}"
        );
        stop(running, handle, token).await;
    }
}
