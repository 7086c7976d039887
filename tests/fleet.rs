//! A fleet on one broker (issue 21): daemons in one share group split a
//! stream (mosquitto 2.0 grants shared subscriptions,
//! `$share/{group}/{filter}`, MQTT 5.0 §4.8.2, to the daemons' MQTT 5
//! connections, and to 3.1.1 ones too, and hands each message of the
//! group's stream to one member); daemons share models over the broker and
//! judge each other's on their own data (`[fleet]`, `serve::fleet`).

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

#[path = "common/ort.rs"]
mod ort;

/// A daemon of the model-exchange test: pipeline `occupancy` on its own
/// sample topic `{tag}/+/occupancy`, logistic regression, its first model
/// trained at `min_labels` labelled samples (also what a fleet model waits
/// for to be judged), then only when asked, with `[fleet]` as given.
fn exchanger(
    dir: &std::path::Path,
    port: u16,
    tag: &str,
    (publish, adopt): (bool, bool),
    min_labels: u64,
) -> edgeloop::config::Config {
    let mut cfg = config(dir, Broker::External(port));
    cfg.daemon.instance = format!("gw-{tag}");
    cfg.fleet.publish = publish;
    cfg.fleet.adopt = adopt;
    let p = &mut cfg.pipelines[0];
    p.topics = vec![format!("{tag}/+/occupancy")];
    p.label_topics = vec![format!("{tag}-labels/+/occupancy")];
    p.model.family = edgeloop::learn::Family::Logistic;
    p.model.min_labels = min_labels;
    p.model.retrain_every = NEVER;
    p.drift.retrain_on_drift = false;
    cfg.validate().unwrap();
    cfg
}

/// `n` labelled readings of `file` (from row `skip`), each label replaced
/// by `relabel`.
fn readings(file: &str, skip: usize, n: usize, relabel: fn(&str) -> String) -> Vec<Vec<u8>> {
    let opts = replay_opts(file, 1, Some(skip + n));
    edgeloop::ingest::replay::csv_payloads(&opts)
        .unwrap()
        .into_iter()
        .skip(skip)
        .map(|p| {
            let mut v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            let label = (v["Occupancy"].as_f64().unwrap() as u8).to_string();
            v["Occupancy"] = relabel(&label).into();
            serde_json::to_vec(&v).unwrap()
        })
        .collect()
}

async fn publish_to(port: u16, topic: &str, payloads: Vec<Vec<u8>>) {
    let mut opts = replay_opts("unused", port, None);
    opts.topic = topic.into();
    publish(&opts, payloads).await;
}

/// Readings a daemon stored, or dropped as duplicates of stored ones
/// (content dedup).
fn handled(h: &edgeloop::daemon::DaemonHandle) -> u64 {
    let s = h.stats.snapshot();
    s.samples_stored + s.duplicates
}

fn adopted(h: &edgeloop::daemon::DaemonHandle) -> u64 {
    h.stats
        .fleet_adopted
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// The ONNX bytes of `version` in a daemon's store.
fn onnx_of(h: &edgeloop::daemon::DaemonHandle, version: u32) -> Vec<u8> {
    h.store
        .get_model("occupancy", version)
        .unwrap()
        .unwrap()
        .onnx
}

/// What `h` serves, after checking that it is exactly `onnx`.
fn serving_exactly(
    h: &edgeloop::daemon::DaemonHandle,
    onnx: &[u8],
) -> std::sync::Arc<edgeloop::serve::registry::Serving> {
    let serving = h.registry.get("occupancy").unwrap();
    assert_eq!(onnx_of(h, serving.version), onnx);
    serving
}

fn refused(h: &edgeloop::daemon::DaemonHandle, reason: &str) -> u64 {
    h.stats.snapshot().fleet_refused[reason]
}

/// Model exchange over the broker (`[fleet]`): daemon A trains on 2,000
/// Occupancy readings and publishes its model (retained). B serves a model
/// it trained on 300 readings whose labels were inverted (a miswired
/// sensor), then stored 1,000 correct readings of another period: A's model
/// wins on B's holdout and B adopts it. Both accuracies of the decision
/// equal onnxruntime's on B's holdout rows (the newest 20 % of the 1,000
/// samples B learns from), B serves A's exact bytes, and its card and
/// timeline say where they came from. C measures the opposite
/// concept (its label is 1 when the room is empty) and serves its own
/// model: A's loses on C's holdout and is refused, C's keeps serving. A
/// model message with a flipped byte and one that is not ONNX are refused
/// and counted by reason while B's adopted model keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_model_is_adopted_where_it_wins_and_refused_where_it_loses() {
    let mosquitto = Mosquitto::start();
    let port = mosquitto.port;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut cfg_b = exchanger(dirs[1].path(), port, "b", (false, true), 1000);
    // B learns from its newest 1,000 samples.
    cfg_b.pipelines[0].model.window = 1000;
    cfg_b.pipelines[0].model.reservoir = 0;
    let (running_b, b, token_b) = start(cfg_b).await;
    let (running_c, c, token_c) =
        start(exchanger(dirs[2].path(), port, "c", (false, true), 500)).await;
    let same = |l: &str| l.to_string();
    let inverted = |l: &str| if l == "1" { "0".into() } else { "1".into() };
    // B's first 300 readings came from a miswired sensor (labels
    // inverted); it trained on them, then 1,000 correct ones arrived.
    publish_to(
        port,
        "b/d1/occupancy",
        readings("datatest.txt", 0, 300, inverted),
    )
    .await;
    publish_to(
        port,
        "c/d1/occupancy",
        readings("datatest2.txt", 0, 1000, inverted),
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "B and C store their readings",
        || handled(&b) == 300 && handled(&c) == 1000,
    )
    .await;
    let own_b = b.learner.train_now("occupancy").await.unwrap();
    let own_c = c.learner.train_now("occupancy").await.unwrap();
    assert!(own_c.holdout.as_ref().unwrap().accuracy > 0.9);
    publish_to(
        port,
        "b/d1/occupancy",
        readings("datatest.txt", 300, 1000, same),
    )
    .await;
    wait_until(Duration::from_secs(60), "B stores its readings", || {
        handled(&b) == 1300
    })
    .await;

    let (running_a, a, token_a) =
        start(exchanger(dirs[0].path(), port, "a", (true, false), NEVER)).await;
    publish_to(
        port,
        "a/d1/occupancy",
        readings("datatraining.txt", 0, 2000, same),
    )
    .await;
    wait_until(Duration::from_secs(60), "A stores its readings", || {
        handled(&a) == 2000
    })
    .await;
    let own_a = a.learner.train_now("occupancy").await.unwrap();
    wait_until(Duration::from_secs(60), "A publishes", || {
        a.stats
            .fleet_published
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    wait_until(Duration::from_secs(120), "B adopts and C refuses", || {
        adopted(&b) == 1 && refused(&c, "judged") == 1
    })
    .await;
    let a_onnx = onnx_of(&a, own_a.version);

    // B serves A's bytes, judged on B's holdout against B's champion.
    let serving_b = serving_exactly(&b, &a_onnx);
    let card = &serving_b.card;
    let imported = card.imported.as_ref().unwrap();
    assert_eq!(imported.source, edgeloop::learn::card::Source::Fleet);
    let origin = imported.fleet.as_ref().unwrap();
    assert_eq!(
        (
            origin.instance.as_str(),
            origin.version,
            origin.topic.as_str()
        ),
        ("gw-a", own_a.version, "edgeloop/fleet/occupancy/models")
    );
    // The side-by-side table (`edgeloop models list`) names the origin.
    let table = edgeloop::learn::card::render_table(std::slice::from_ref(card), None);
    assert!(
        table.contains(&format!("fleet from gw-a v{}", own_a.version)),
        "{table}"
    );
    let decision = card.decision.as_ref().unwrap();
    assert!(decision.promoted, "{decision:?}");
    assert_eq!(decision.champion_version, Some(own_b.version));
    // onnxruntime's labels for B's holdout: the newest 20 % of the 1,000
    // samples B learns from (scikit-learn's accuracy_score: the share equal).
    let stored = b.store.labelled("occupancy").unwrap();
    let holdout = &stored[stored.len() - 200..];
    let x: Vec<f32> = holdout
        .iter()
        .flat_map(|(_, s)| s.features.clone())
        .collect();
    let accuracy = |onnx: &[u8]| {
        let outputs = ort::run_onnxruntime(onnx, &x, FEATURES.len());
        let hits = outputs["label"]
            .as_array()
            .unwrap()
            .iter()
            .zip(holdout)
            .filter(|(p, (_, s))| Some(p.as_i64().unwrap().to_string()) == s.label)
            .count();
        hits as f64 / holdout.len() as f64
    };
    let b_onnx = onnx_of(&b, own_b.version);
    assert_eq!(decision.challenger_recent, Some(accuracy(&a_onnx)));
    assert_eq!(decision.champion_recent, Some(accuracy(&b_onnx)));
    // (Alarms only annotate, and may come at any point.)
    let history = b.registry.history(&b.store, "occupancy").unwrap();
    let last = history
        .iter()
        .rev()
        .find(|e| !e.action.ends_with("_alarm"))
        .unwrap();
    assert_eq!(last.action, "adopted");
    assert!(last.reason.contains("gw-a"));

    // C keeps its own model: A's lost on C's holdout.
    assert_eq!(c.registry.get("occupancy").unwrap().version, own_c.version);
    let history = c.registry.history(&c.store, "occupancy").unwrap();
    let last = history
        .iter()
        .rev()
        .find(|e| !e.action.ends_with("_alarm"))
        .unwrap();
    assert_eq!(last.action, "refused");
    assert!(
        last.reason.contains("does not beat champion"),
        "{}",
        last.reason
    );
    assert_eq!(adopted(&c), 0);

    // Hostile messages on B's models topic: refused by reason, B serves on.
    let topic = "edgeloop/fleet/occupancy/models";
    let header = |onnx: &[u8], pipeline: &str| edgeloop::serve::fleet::Header {
        pipeline: pipeline.into(),
        version: 99,
        sha256: edgeloop::serve::intake::sha256_hex(onnx),
        bytes: onnx.len() as u64,
        instance: "gw-x".into(),
        published_ms: 0,
        card: serde_json::Value::Null,
    };
    let mut flipped = edgeloop::serve::fleet::encode(&header(&a_onnx, "occupancy"), &a_onnx);
    let at = flipped.len() - 10;
    flipped[at] ^= 0x40;
    let junk = b"not an onnx model at all".to_vec();
    let not_onnx = edgeloop::serve::fleet::encode(&header(&junk, "occupancy"), &junk);
    publish_to(port, topic, vec![flipped, not_onnx]).await;
    wait_until(Duration::from_secs(60), "B refuses both", || {
        refused(&b, "bad_sha256") == 1 && refused(&b, "intake") == 1
    })
    .await;
    let snapshot = b.stats.snapshot();
    assert_eq!(snapshot.models_refused["not_onnx"], 1);
    assert_eq!(snapshot.fleet_adopted, 1);
    assert_eq!(
        b.registry.get("occupancy").unwrap().version,
        serving_b.version
    );
    let metrics = b.metrics.render().unwrap();
    assert!(
        metrics.contains(
            "edgeloop_fleet_models_total{instance=\"gw-b\",outcome=\"refused_bad_sha256\"} 1"
        ),
        "{metrics}"
    );

    // B restarted: the retained model comes again and is skipped, not
    // judged or stored a second time.
    let versions = b.store.model_versions("occupancy").unwrap();
    stop(running_b, b, token_b).await;
    let (running_b, b, token_b) =
        start(exchanger(dirs[1].path(), port, "b", (false, true), 1000)).await;
    wait_until(
        Duration::from_secs(60),
        "B skips A's retained model",
        || {
            b.stats
                .fleet_known
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1
        },
    )
    .await;
    assert_eq!(b.store.model_versions("occupancy").unwrap(), versions);
    assert_eq!(
        b.registry.get("occupancy").unwrap().version,
        serving_b.version
    );
    assert_eq!(adopted(&b), 0);

    stop(running_a, a, token_a).await;
    stop(running_b, b, token_b).await;
    stop(running_c, c, token_c).await;
}

/// `[fleet]` is checked at load, naming the key: the embedded broker (one
/// daemon) cannot carry a fleet's models, and the topic prefix must be a
/// topic name.
#[test]
fn fleet_settings_are_validated_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = |cfg: &edgeloop::config::Config| match cfg.validate() {
        Err(edgeloop::config_error::ConfigError::Invalid { key, .. }) => key,
        other => panic!("{other:?}"),
    };
    let mut cfg = config(dir.path(), Broker::Embedded(free_port()));
    cfg.fleet.publish = true;
    assert_eq!(key(&cfg), "fleet");
    let mut cfg = exchanger(dir.path(), free_port(), "a", (true, true), NEVER);
    for prefix in ["", "fleet/+/x", "$SYS/fleet", "fleet/"] {
        cfg.fleet.topic_prefix = prefix.into();
        assert_eq!(key(&cfg), "fleet.topic_prefix", "{prefix:?}");
    }
    cfg.fleet.topic_prefix = "plant-3/fleet".into();
    cfg.validate().unwrap();
    // A model message must fit the connection's packet limit.
    cfg.fleet.max_bytes = cfg.mqtt.max_packet_bytes as u64 + 1;
    assert_eq!(key(&cfg), "fleet.max_bytes");
}

/// The exchange over MQTT 3.1.1 (`mqtt.protocol = "3.1.1"`, or a broker
/// that refused 5): the envelope alone carries the model, its header and
/// SHA-256. A new board joins: B has no labelled sample when A publishes,
/// so A's model waits (`unjudged`, B serves nothing); once B has stored
/// `min_labels` (250) labelled readings, it judges A's model and serves A's
/// exact bytes as its first model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_board_adopts_the_fleets_model_once_it_can_judge_it_over_mqtt_3_1_1() {
    let mosquitto = Mosquitto::start();
    let port = mosquitto.port;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let v311 = |mut cfg: edgeloop::config::Config| {
        cfg.mqtt.protocol = edgeloop::ingest::mqtt_config::Protocol::V311;
        cfg
    };
    let (running_b, b, token_b) =
        start(v311(exchanger(dir_b.path(), port, "b", (false, true), 250))).await;
    let (running_a, a, token_a) = start(v311(exchanger(
        dir_a.path(),
        port,
        "a",
        (true, false),
        NEVER,
    )))
    .await;
    let same = |l: &str| l.to_string();
    publish_to(
        port,
        "a/d1/occupancy",
        readings("datatraining.txt", 0, 1000, same),
    )
    .await;
    wait_until(Duration::from_secs(60), "A stores its readings", || {
        handled(&a) == 1000
    })
    .await;
    let own_a = a.learner.train_now("occupancy").await.unwrap();
    wait_until(Duration::from_secs(60), "A's model waits at B", || {
        refused(&b, "unjudged") == 1
    })
    .await;
    assert!(b.registry.get("occupancy").is_none());
    publish_to(
        port,
        "b/d1/occupancy",
        readings("datatest.txt", 0, 500, same),
    )
    .await;
    wait_until(Duration::from_secs(60), "B adopts A's model", || {
        adopted(&b) == 1
    })
    .await;
    let serving_b = serving_exactly(&b, &onnx_of(&a, own_a.version));
    let decision = serving_b.card.decision.as_ref().unwrap();
    assert_eq!(
        (decision.promoted, decision.reason.as_str()),
        (true, "first model")
    );
    // Judged once: counted `unjudged` when it came, not again while waiting.
    assert_eq!(refused(&b, "unjudged"), 1);
    stop(running_a, a, token_a).await;
    stop(running_b, b, token_b).await;
}
