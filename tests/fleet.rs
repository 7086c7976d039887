//! A fleet on one broker (issue 21): daemons in one share group split a
//! stream. mosquitto (2.0) grants shared subscriptions
//! (`$share/{group}/{filter}`, MQTT 5.0 §4.8.2) to the daemons' MQTT 3.1.1
//! connections and hands each message of the group's stream to one member.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const NEVER: u64 = 1_000_000_000;
const MESSAGES: u64 = 20_000;
const DEVICES: u64 = 10;

fn member(dir: &std::path::Path, port: u16) -> edgeloop::config::Config {
    let mut cfg = config(dir, Broker::External(port));
    let p = &mut cfg.pipelines[0];
    p.topics = vec!["$share/edgeloop/sensors/+/occupancy".into()];
    p.model.min_labels = NEVER;
    p.model.retrain_every = NEVER;
    p.drift.retrain_on_drift = false;
    cfg.validate().unwrap();
    cfg
}

/// The `seq` each stored sample's timestamp names ([`seq_payload`]).
fn stored_seqs(handle: &edgeloop::daemon::DaemonHandle) -> Vec<u64> {
    let next = handle.store.counts("occupancy").unwrap().next_seq;
    handle
        .store
        .scan("occupancy", 0..next, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, r)| (r.sample.timestamp_ms / 1000 - SEQ_BASE_S) as u64)
        .collect()
}

/// Two daemons subscribed as one share group, 20,000 QoS 1 messages from
/// 10 devices: every message is stored exactly once across the two stores
/// (no seq missing, none twice), and each daemon stored a share of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_group_stores_each_message_once_across_its_daemons() {
    let mosquitto = Mosquitto::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (running_a, a, token_a) = start(member(dir_a.path(), mosquitto.port)).await;
    let (running_b, b, token_b) = start(member(dir_b.path(), mosquitto.port)).await;
    let per_device = MESSAGES / DEVICES;
    let publishers: Vec<_> = (0..DEVICES)
        .map(|d| {
            let mut opts = replay_opts("unused", mosquitto.port, None);
            opts.topic = format!("sensors/d{d}/occupancy");
            let payloads: Vec<Vec<u8>> = (d * per_device..(d + 1) * per_device)
                .map(seq_payload)
                .collect();
            tokio::spawn(async move { publish(&opts, payloads).await })
        })
        .collect();
    for p in publishers {
        p.await.unwrap();
    }
    let samples = |h: &edgeloop::daemon::DaemonHandle| h.store.counts("occupancy").unwrap().samples;
    wait_until(
        Duration::from_secs(120),
        "20,000 stored across the two",
        || samples(&a) + samples(&b) >= MESSAGES,
    )
    .await;
    // Nothing more arrives (no copy delivered to both).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (seqs_a, seqs_b) = (stored_seqs(&a), stored_seqs(&b));
    eprintln!(
        "daemon a stored {}, daemon b {}",
        seqs_a.len(),
        seqs_b.len()
    );
    assert_eq!(seqs_a.len() as u64 + seqs_b.len() as u64, MESSAGES);
    let all: HashSet<u64> = seqs_a.iter().chain(&seqs_b).copied().collect();
    assert_eq!(all, (0..MESSAGES).collect::<HashSet<u64>>());
    // mosquitto hands the group's messages out in turn: each has a share.
    for (name, n) in [("a", seqs_a.len()), ("b", seqs_b.len())] {
        assert!(n as u64 >= MESSAGES / 10, "daemon {name} stored only {n}");
    }
    stop(running_a, a, token_a).await;
    stop(running_b, b, token_b).await;
}

/// Shared subscriptions are checked at load: a malformed `$share/…`, a
/// shared subscription on the embedded broker (one daemon), and a shared
/// label topic (a late label must reach the daemon that stored its sample)
/// are refused naming the key.
#[test]
fn shared_subscriptions_are_validated_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = member(dir.path(), free_port());
    for bad in [
        "$share/edgeloop",
        "$share//sensors/+/x",
        "$share/a+b/sensors/x",
        "$share/g/sensors/#/x",
    ] {
        cfg.pipelines[0].topics = vec![bad.into()];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("pipelines[0].topics"), "{bad}: {err}");
    }
    cfg.pipelines[0].topics = vec!["$share/edgeloop/sensors/+/occupancy".into()];
    cfg.validate().unwrap();
    // Routing matches the messages' topics against the filter itself.
    let route = cfg.pipelines[0].route();
    assert_eq!(route.topics, vec!["sensors/+/occupancy".to_string()]);
    cfg.pipelines[0].label_topics = vec!["$share/edgeloop/labels/+/occupancy".into()];
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("pipelines[0].label_topics"), "{err}");
    cfg.pipelines[0].label_topics = vec!["labels/+/occupancy".into()];
    cfg.validate().unwrap();
    let mut embedded = config(dir.path(), Broker::Embedded(free_port()));
    embedded.pipelines[0].topics = vec!["$share/edgeloop/sensors/+/occupancy".into()];
    let err = embedded.validate().unwrap_err().to_string();
    assert!(err.contains("pipelines[0].topics"), "{err}");
    assert!(err.contains("embedded broker"), "{err}");
}
