//! Champion/challenger on the prequential record (`model.probation_labels`,
//! `src/monitor/retrain.rs`): a challenger promoted on its holdout serves on
//! probation beside the champion it replaced; both predict the next
//! labelled samples before their labels are known, and the former champion
//! serves again when its record is better by more than 2 points.
//!
//! The stream: readings x in ±[0.2, 1], labelled "hi" when x > 0 (regime A)
//! or when x < 0 (regime B). Version 1 learns A; the second training sees
//! only B (`model.window` = 600) and wins its holdout (B) by the whole of it;
//! then A returns. Each version is right on its own regime and wrong on the
//! other, so over the 200 samples of probation the former champion's record
//! is better by far: the learner rolls back to version 1, and the timeline
//! says why with both records.

mod common;

use std::time::Duration;

use serde_json::json;

async fn publish(port: u16, xs: &[f32], flipped: bool) {
    let mut opts = common::replay_opts("unused", port, None);
    opts.topic = "lab/a/reg".into();
    let payloads = xs
        .iter()
        .map(|x| {
            let hi = (*x > 0.0) != flipped;
            serde_json::to_vec(&json!({ "x": x, "y": if hi { "hi" } else { "lo" } })).unwrap()
        })
        .collect();
    common::publish(&opts, payloads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_that_loses_live_gives_way_to_the_champion() {
    const WAIT: Duration = Duration::from_secs(120);
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut cfg = common::config(dir.path(), common::Broker::Embedded(port));
    let mut p = cfg.pipelines[0].clone();
    p.name = "reg".into();
    p.topics = vec!["lab/+/reg".into()];
    p.label_topics = vec![];
    p.device_level = 1;
    p.features = vec!["x".into()];
    p.label = "y".into();
    p.classes = vec!["lo".into(), "hi".into()];
    p.timestamp = String::new();
    p.model.family = "logistic".parse().unwrap();
    p.model.min_labels = 600;
    p.model.retrain_every = 600;
    p.model.window = 600;
    p.model.reservoir = 0;
    p.drift.retrain_on_drift = false;
    assert_eq!(p.model.probation_labels, 200, "the default");
    cfg.pipelines = vec![p];
    cfg.validate().unwrap();
    let (running, handle, token) = common::start(cfg).await;
    let serving = || handle.registry.get("reg").map(|s| s.version);

    publish(port, &common::signed_readings(1, 600), false).await;
    common::wait_until(WAIT, "version 1", || serving() == Some(1)).await;
    publish(port, &common::signed_readings(2, 600), true).await;
    common::wait_until(WAIT, "version 2", || serving() == Some(2)).await;
    let card = handle.registry.get("reg").unwrap().card.clone();
    let decision = card.decision.as_ref().unwrap();
    assert!(decision.promoted, "{decision:?}");
    // Regime A returns: version 2 is wrong on it, version 1 right.
    publish(port, &common::signed_readings(3, 400), false).await;
    common::wait_until(WAIT, "the rollback to version 1", || serving() == Some(1)).await;
    // The timeline: v2's errors on regime A also raise drift alarms, which
    // do not train here (`retrain_on_drift = false`); one rollback, to v1.
    let history = handle.registry.history(&handle.store, "reg").unwrap();
    let rollbacks: Vec<_> = history.iter().filter(|e| e.action == "rollback").collect();
    assert_eq!(rollbacks.len(), 1, "{history:?}");
    let last = rollbacks[0];
    assert_eq!(last.version, 1);
    assert_eq!(last.by, "learner");
    assert!(
        last.reason.contains("prequential record") && last.reason.contains("v2 accuracy"),
        "{}",
        last.reason
    );
    // The records in the reason: version 2 right on at most the few B
    // samples scored after its promotion, version 1 on the rest.
    let accuracy = |v: &str| -> f64 {
        let at = last.reason.find(&format!("{v} accuracy ")).unwrap() + v.len() + 10;
        last.reason[at..at + 6].parse().unwrap()
    };
    assert!(accuracy("v2") < 0.3, "{}", last.reason);
    assert!(accuracy("v1") > 0.7, "{}", last.reason);
    assert!(
        (accuracy("v1") + accuracy("v2") - 1.0).abs() < 1e-3,
        "{}",
        last.reason
    );
    // Nothing else changes what serves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(serving(), Some(1));
    common::stop(running, handle, token).await;
}
