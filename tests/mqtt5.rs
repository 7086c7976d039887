//! MQTT 5 on the daemon's connections (issue 21): the session expiry
//! interval, the receive maximum, and the fallback to MQTT 3.1.1 for a
//! broker that refuses MQTT 5. mosquitto 2.0 speaks MQTT 5; the embedded
//! broker (rumqttd behind edgeloop's proxy) only 3.1.1.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use edgeloop::config::Config;
use edgeloop::ingest::mqtt_config::Protocol;

/// The `seq` each stored sample's timestamp names ([`seq_payload`]),
/// sorted; samples of other readings (before [`SEQ_BASE_S`]) left out.
fn stored_seqs(store: &edgeloop::store::Store) -> Vec<u64> {
    stored_seqs_of(store, "occupancy")
}

/// [`stored_seqs`] of pipeline `pipeline`.
fn stored_seqs_of(store: &edgeloop::store::Store, pipeline: &str) -> Vec<u64> {
    let next = store.counts(pipeline).unwrap().next_seq;
    let mut seqs: Vec<u64> = store
        .scan(pipeline, 0..next, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|(_, r)| u64::try_from(r.sample.timestamp_ms / 1000 - SEQ_BASE_S).ok())
        .collect();
    seqs.sort_unstable();
    seqs
}

fn samples(h: &edgeloop::daemon::DaemonHandle) -> u64 {
    h.store.counts("occupancy").unwrap().samples
}

/// Publishes readings `seqs` ([`seq_payload`]) to [`TOPIC`] on `port`,
/// QoS 1, and waits for the broker's acknowledgements.
async fn publish_seqs(port: u16, seqs: std::ops::Range<u64>) {
    publish(
        &replay_opts("unused", port, None),
        seqs.map(seq_payload).collect(),
    )
    .await;
}

/// A daemon on mosquitto that trains nothing.
fn on_mosquitto(dir: &std::path::Path, port: u16) -> Config {
    let mut cfg = config(dir, Broker::External(port));
    cfg.pipelines[0].model.min_labels = 1_000_000_000;
    cfg
}

/// The configuration is checked: `mqtt.protocol` takes "5" (the default)
/// or "3.1.1", `mqtt.session_expiry_s` at least 1; each refusal names the
/// key.
#[test]
fn protocol_and_session_expiry_are_validated_naming_the_key() {
    let load = |key: &str, value: &str| {
        Config::load_with_env(
            None,
            [(format!("EDGELOOP__MQTT__{key}"), value.to_string())],
        )
        .and_then(|c| c.validate().map(|()| c))
    };
    let default = Config::load_with_env(None, std::iter::empty()).unwrap();
    assert_eq!(default.mqtt.protocol, Protocol::V5);
    assert_eq!(default.mqtt.session_expiry_s, 7 * 24 * 3600);
    assert_eq!(
        load("PROTOCOL", "3.1.1").unwrap().mqtt.protocol,
        Protocol::V311
    );
    // The environment's `5` arrives as a number.
    assert_eq!(load("PROTOCOL", "5").unwrap().mqtt.protocol, Protocol::V5);
    for bad in ["4", "3.1", "five"] {
        let err = load("PROTOCOL", bad).unwrap_err().to_string();
        assert!(err.contains("mqtt.protocol"), "{bad}: {err}");
    }
    let err = load("SESSION_EXPIRY_S", "0").unwrap_err().to_string();
    assert!(err.contains("mqtt.session_expiry_s"), "{err}");
    // MQTT 5.0 §3.1.2.11.2: a four-byte integer; 4294967295 never expires.
    assert_eq!(
        load("SESSION_EXPIRY_S", "4294967295")
            .unwrap()
            .mqtt
            .session_expiry_s,
        u32::MAX
    );
    assert!(load("SESSION_EXPIRY_S", "4294967296").is_err());
    // The receive maximum: two batches, within MQTT 5's two bytes.
    use edgeloop::ingest::mqtt::receive_maximum;
    assert_eq!(
        (
            receive_maximum(1),
            receive_maximum(2000),
            receive_maximum(40_000)
        ),
        (2, 4000, 65_535)
    );
}

/// The daemon connects to mosquitto with MQTT 5 and its session expires as
/// asked: two daemons, one with `session_expiry_s = 2`, one with the
/// default 7 days, both stopped; 100 readings are published to their
/// topic; 4 s later both start again and 10 more are published. mosquitto
/// ended the first daemon's session (and dropped the 100 queued for it):
/// it stores exactly the 10; the second kept its session and stores all
/// 110. (MQTT 3.1.1 has no expiry: both would store 110.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_expires_after_session_expiry_s_and_not_before() {
    let mosquitto = Mosquitto::start();
    let (dir_short, dir_long) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut short = on_mosquitto(dir_short.path(), mosquitto.port);
    short.mqtt.session_expiry_s = 2;
    let long = on_mosquitto(dir_long.path(), mosquitto.port);
    for cfg in [&short, &long] {
        let (running, handle, token) = start(cfg.clone()).await;
        assert_eq!(handle.connection.protocol(), Some(Protocol::V5));
        stop(running, handle, token).await;
    }
    publish_seqs(mosquitto.port, 0..100).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (running_s, s, token_s) = start(short.clone()).await;
    let (running_l, l, token_l) = start(long.clone()).await;
    publish_seqs(mosquitto.port, 100..110).await;
    wait_until(Duration::from_secs(60), "10 and 110 stored", || {
        samples(&s) >= 10 && samples(&l) >= 110
    })
    .await;
    // Nothing more arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stored_seqs(&s.store), (100..110).collect::<Vec<u64>>());
    assert_eq!(stored_seqs(&l.store), (0..110).collect::<Vec<u64>>());
    stop(running_s, s, token_s).await;
    stop(running_l, l, token_l).await;
}

/// The receive maximum bounds what mosquitto sends unacknowledged: with
/// `store.batch_size = 50` the daemon asks for 100 (two batches). Its
/// writer holds every batch uncommitted (so nothing is acknowledged) while
/// 500 readings are published: mosquitto sends exactly 100. Over MQTT 3.1.1
/// the window is mosquitto's own `max_inflight_messages` (20 by default,
/// mosquitto.conf(5)): exactly 20. Released, each daemon stores the 500
/// once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receive_maximum_bounds_what_the_broker_sends_unacknowledged() {
    let mosquitto = Mosquitto::start();
    for (protocol, window) in [(Protocol::V5, 100u64), (Protocol::V311, 20)] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = on_mosquitto(dir.path(), mosquitto.port);
        cfg.store.batch_size = 50;
        cfg.mqtt.protocol = protocol;
        let (running, handle, token) = start(cfg).await;
        assert_eq!(handle.connection.protocol(), Some(protocol));
        handle.hooks.hold.store(true, Relaxed);
        publish_seqs(mosquitto.port, 0..500).await;
        let received = || handle.stats.messages_received.load(Relaxed);
        wait_until(Duration::from_secs(30), "a window's worth received", || {
            received() >= window
        })
        .await;
        // The broker waits for acknowledgements that do not come.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(received(), window, "MQTT {protocol}");
        assert_eq!(samples(&handle), 0);
        handle.hooks.hold.store(false, Relaxed);
        wait_until(Duration::from_secs(60), "500 stored", || {
            samples(&handle) >= 500
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(stored_seqs(&handle.store), (0..500).collect::<Vec<u64>>());
        stop(running, handle, token).await;
    }
}

/// A broker that speaks only MQTT 3.1.1 (the embedded broker of a
/// broker-only daemon, used as an external `mqtt://` broker: rumqttd
/// closes an MQTT 5 connection on its CONNECT): the daemon, configured for
/// MQTT 5, falls back to 3.1.1 on both connections. It stores 200 labelled
/// readings and trains on them, then stores each of 1,000 unlabelled
/// readings exactly once and publishes a prediction of each over its
/// prediction connection, which a subscriber on that broker receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_1_1_broker_gets_a_fallback_and_every_message_once() {
    let (dir_host, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let broker_port = free_port();
    let mut host = config(dir_host.path(), Broker::Embedded(broker_port));
    host.pipelines[0].topics = vec!["nothing/+/here".into()];
    host.pipelines[0].label_topics = vec![];
    let (running_h, h, token_h) = start(host).await;
    let mut cfg = on_mosquitto(dir.path(), broker_port);
    cfg.pipelines[0].model.family = edgeloop::learn::Family::Logistic;
    cfg.pipelines[0].model.min_labels = 200;
    assert_eq!(cfg.mqtt.protocol, Protocol::V5);
    let (running, handle, token) = start(cfg).await;
    assert_eq!(handle.connection.protocol(), Some(Protocol::V311));
    assert_eq!(handle.stats.mqtt_connects.load(Relaxed), 1);
    let opts = replay_opts("datatraining.txt", broker_port, Some(200));
    publish(
        &opts,
        edgeloop::ingest::replay::csv_payloads(&opts).unwrap(),
    )
    .await;
    wait_until(Duration::from_secs(90), "a model trained on 200", || {
        handle.registry.get("occupancy").is_some()
    })
    .await;
    let (mut predictions, stop_sub) =
        subscribe(broker_port, "edgeloop/occupancy/predictions/+").await;
    publish_seqs(broker_port, 0..1000).await;
    wait_until(Duration::from_secs(60), "1,200 stored", || {
        samples(&handle) >= 1200
    })
    .await;
    wait_until(
        Duration::from_secs(60),
        "1,000 predictions published",
        || handle.stats.predictions_published.load(Relaxed) >= 1000,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stored_seqs(&handle.store), (0..1000).collect::<Vec<u64>>());
    assert_eq!(samples(&handle), 1200);
    assert_eq!(handle.stats.predictions_published.load(Relaxed), 1000);
    let mut ids = std::collections::HashSet::new();
    while let Ok(p) = predictions.try_recv() {
        ids.insert(p["sample_id"].as_u64().unwrap());
    }
    assert_eq!(ids.len(), 1000, "distinct predictions received");
    stop_sub.cancel();
    stop(running, handle, token).await;
    stop(running_h, h, token_h).await;
}

/// Two pipelines on `sensors/+/occupancy` and `sensors/#` each store a
/// message matching both once. mosquitto 2.0 delivers a message once per
/// matching subscription over MQTT 5, each copy a new message (no DUP
/// flag), so with both filters subscribed each pipeline stored every
/// reading twice (arrival-time pipelines do not deduplicate by content);
/// the daemon now subscribes to the covering filter alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_of_two_pipelines_store_each_message_once_in_each() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = on_mosquitto(dir.path(), mosquitto.port);
    assert_eq!(cfg.mqtt.protocol, Protocol::V5);
    cfg.pipelines[0].timestamp = String::new();
    let mut all = cfg.pipelines[0].clone();
    all.name = "all".into();
    all.topics = vec!["sensors/#".into()];
    cfg.pipelines.push(all);
    cfg.validate().unwrap();
    let (running, handle, token) = start(cfg).await;
    publish_seqs(mosquitto.port, 0..10).await;
    let counts = |name: &str| handle.store.counts(name).unwrap().samples;
    wait_until(
        Duration::from_secs(30),
        "10 samples in each pipeline",
        || counts("occupancy") >= 10 && counts("all") >= 10,
    )
    .await;
    // Copies would arrive with the originals; give them time to.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((counts("occupancy"), counts("all")), (10, 10));
    stop(running, handle, token).await;
}

/// Two pipelines on `sensors/a/#` and `sensors/+/temp`, which overlap
/// with neither covering the other (refused at load before), content dedup
/// off: the daemon subscribes to their covering filter `sensors/+/#`
/// alone. Ten readings each on a topic matching both filters, the first
/// only, the second only, and neither (`sensors/b/hum`, which the covering
/// filter brings): mosquitto sends each message once (40 received; with
/// both filters subscribed over MQTT 5 the 10 matching both come twice),
/// each pipeline stores each reading its filter matches exactly once, and
/// the 10 on `sensors/b/hum` are stored by none and counted as unrouted.
/// All are acknowledged: the daemon started again on its persistent
/// session receives only the reading published after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_overlapping_filters_store_each_reading_once_per_matching_pipeline() {
    let mosquitto = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = on_mosquitto(dir.path(), mosquitto.port);
    assert_eq!(cfg.mqtt.protocol, Protocol::V5);
    let pipeline = |name: &str, filter: &str| {
        let mut p = cfg.pipelines[0].clone();
        p.name = name.into();
        p.topics = vec![filter.into()];
        p.label_topics = vec![];
        p.dedup = edgeloop::ingest::writer::Dedup::Off;
        p
    };
    cfg.pipelines = vec![
        pipeline("first", "sensors/a/#"),
        pipeline("second", "sensors/+/temp"),
    ];
    cfg.validate().unwrap();
    let subs: Vec<String> = cfg.subscriptions().into_iter().map(|s| s.filter).collect();
    assert_eq!(subs, ["sensors/+/#"]);
    let port = mosquitto.port;
    let publish_at = |topic: &'static str, seqs: std::ops::Range<u64>| async move {
        let mut opts = replay_opts("unused", port, None);
        opts.topic = topic.into();
        publish(&opts, seqs.map(seq_payload).collect()).await;
    };
    let (running, handle, token) = start(cfg.clone()).await;
    publish_at("sensors/a/temp", 0..10).await; // both
    publish_at("sensors/a/hum", 10..20).await; // the first only
    publish_at("sensors/b/temp", 20..30).await; // the second only
    publish_at("sensors/b/hum", 30..40).await; // neither, covered
    let handled = || handle.stats.messages_handled.load(Relaxed);
    wait_until(Duration::from_secs(30), "40 messages handled", || {
        handled() >= 40
    })
    .await;
    // Copies would arrive with the originals; give them time to.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let both_and_second: Vec<u64> = (0..10).chain(20..30).collect();
    assert_eq!(handle.stats.messages_received.load(Relaxed), 40);
    assert_eq!(
        stored_seqs_of(&handle.store, "first"),
        (0..20).collect::<Vec<u64>>()
    );
    assert_eq!(stored_seqs_of(&handle.store, "second"), both_and_second);
    assert_eq!(handle.stats.unrouted.load(Relaxed), 10);
    assert_eq!(handle.stats.samples_stored.load(Relaxed), 40);
    stop(running, handle, token).await;

    let (running, handle, token) = start(cfg).await;
    publish_at("sensors/a/hum", 40..41).await;
    wait_until(Duration::from_secs(30), "the new reading stored", || {
        handle.store.counts("first").unwrap().samples >= 21
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.stats.messages_received.load(Relaxed), 1);
    assert_eq!(
        stored_seqs_of(&handle.store, "first"),
        (0..20).chain(40..41).collect::<Vec<u64>>()
    );
    assert_eq!(stored_seqs_of(&handle.store, "second"), both_and_second);
    stop(running, handle, token).await;
}
