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
fn stored_seqs(store: &edgeloop::store::Store) -> Vec<u64> {
    let next = store.counts("occupancy").unwrap().next_seq;
    store
        .scan("occupancy", 0..next, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, r)| (r.sample.timestamp_ms / 1000 - SEQ_BASE_S) as u64)
        .collect()
}

/// The two stores' seqs together are every message exactly once.
fn each_stored_once(seqs_a: &[u64], seqs_b: &[u64]) {
    assert_eq!(seqs_a.len() as u64 + seqs_b.len() as u64, MESSAGES);
    let all: HashSet<u64> = seqs_a.iter().chain(seqs_b).copied().collect();
    assert_eq!(all, (0..MESSAGES).collect::<HashSet<u64>>());
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
    let (seqs_a, seqs_b) = (stored_seqs(&a.store), stored_seqs(&b.store));
    eprintln!(
        "daemon a stored {}, daemon b {}",
        seqs_a.len(),
        seqs_b.len()
    );
    each_stored_once(&seqs_a, &seqs_b);
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

/// A member of the group as a separate `edgeloop run` process (so that it
/// can be SIGKILLed), its configuration written from `cfg`.
struct Process(std::process::Child);

impl Process {
    fn spawn(cfg: &edgeloop::config::Config, dir: &std::path::Path) -> Self {
        let conf = dir.join("edgeloop.toml");
        std::fs::write(&conf, toml::to_string(cfg).unwrap()).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_edgeloop"))
            .args(["run", "--config"])
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn signal(&mut self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as libc::pid_t, sig) }, 0);
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..3000 {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the member did not exit within 30 s");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `samples_stored` of a member process since it started (`GET
/// /v1/stats`), 0 while it does not answer.
async fn stored_by(http: std::net::SocketAddr) -> u64 {
    let Ok(mut c) = edgeloop::demo::HttpClient::connect(http).await else {
        return 0;
    };
    match c.request("GET", "/v1/stats", None).await {
        Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["samples_stored"].as_u64())
            .unwrap_or(0),
        _ => 0,
    }
}

/// A member SIGKILLed mid-stream loses nothing: 20,000 QoS 1 messages to a
/// group of two (one in this process, one an `edgeloop run` process); the
/// process is SIGKILLed while it takes its share, then started again with
/// the same client id: mosquitto kept what it had given it (sent and not
/// acknowledged, and queued) in its persistent session
/// (`benches/shared_subscription_kill.py`), so the restarted member stores
/// it. Across the two stores every message is stored exactly once (the
/// killed member's deduplication absorbs the redelivery of what it had
/// committed but not acknowledged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_loses_nothing_once_it_returns() {
    let mosquitto = Mosquitto::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (running_a, a, token_a) = start(member(dir_a.path(), mosquitto.port)).await;
    let mut cfg_b = member(dir_b.path(), mosquitto.port);
    let http_b = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    cfg_b.http.listen = http_b;
    let mut b = Process::spawn(&cfg_b, dir_b.path());
    let samples = |h: &edgeloop::daemon::DaemonHandle| h.store.counts("occupancy").unwrap().samples;
    // B has subscribed once it stores: a first message from each device.
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let per_device = MESSAGES / DEVICES;
    let mut first = 0;
    while stored_by(http_b).await == 0 {
        assert!(tokio::time::Instant::now() < until, "member b never stored");
        let mut opts = replay_opts("unused", mosquitto.port, None);
        opts.topic = format!("sensors/d{}/occupancy", first % DEVICES);
        publish(
            &opts,
            vec![seq_payload(
                (first % DEVICES) * per_device + first / DEVICES,
            )],
        )
        .await;
        first += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The rest, while B is SIGKILLed once it has stored part of its share.
    let published: Vec<_> = (0..DEVICES)
        .map(|d| {
            let mut opts = replay_opts("unused", mosquitto.port, None);
            opts.topic = format!("sensors/d{d}/occupancy");
            let already = first / DEVICES + u64::from(first % DEVICES > d);
            let payloads: Vec<Vec<u8>> = (d * per_device + already..(d + 1) * per_device)
                .map(seq_payload)
                .collect();
            tokio::spawn(async move { publish(&opts, payloads).await })
        })
        .collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while stored_by(http_b).await < 2_000 {
        assert!(
            tokio::time::Instant::now() < until,
            "member b stored too little"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.signal(libc::SIGKILL);
    b.wait();
    for p in published {
        p.await.unwrap();
    }
    // A takes the rest of the stream; B's share waits in its session.
    let b_before = {
        let store = edgeloop::store::Store::open(&cfg_b.store.path).unwrap();
        store.counts("occupancy").unwrap().samples
    };
    let mut b = Process::spawn(&cfg_b, dir_b.path());
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        // `samples_stored` counts since the process started.
        let total = samples(&a) + b_before + stored_by(http_b).await;
        if total >= MESSAGES {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "stored {total} of {MESSAGES} after b returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.signal(libc::SIGTERM);
    assert!(b.wait().success());
    let store_b = edgeloop::store::Store::open(&cfg_b.store.path).unwrap();
    let seqs_b = stored_seqs(&store_b);
    let seqs_a = stored_seqs(&a.store);
    eprintln!(
        "a stored {}, b {} ({b_before} before its SIGKILL)",
        seqs_a.len(),
        seqs_b.len()
    );
    each_stored_once(&seqs_a, &seqs_b);
    stop(running_a, a, token_a).await;
}
