//! SIGKILL while the daemon's other writers are busy: retention deleting
//! the oldest samples in chunks, the learner training and promoting (model,
//! card, serving pointer and timeline event in one commit), model pruning
//! (`models.keep_versions`), and the dashboard series and live tallies in
//! the `state` table.
//!
//! The daemon binary as a process on the embedded broker, fed labelled
//! occupancy-like readings at [`RATE`] msg/s (each numbered: its `Date` is
//! [`SEQ_BASE_S`] plus its number in seconds, so a stored sample names its
//! message; its label is `Temperature` above a threshold that drifts, so
//! that newer challengers win and are promoted), `retention_samples`
//! [`RETENTION`] (chunks of 500), `min_labels` 300, `retrain_every` 400,
//! `keep_versions` 3. It is killed [`KILLS`] times, each at a scheduled
//! moment or at the first log line after it that marks a promotion about to
//! commit or a prune about to run, and started again at once. More than
//! [`RETENTION`] messages are published after the last kill, then SIGTERM.
//!
//! Checked: each start reached HTTP health (subscribed) within
//! [`START_BOUND`] and no start ran redb's full repair; the store holds at
//! most [`RETENTION`] samples, none twice, and every acknowledged message
//! among the newest [`RETENTION`]; the serving version is a stored version
//! whose model predicts over HTTP; the versions listing is 1..=n without a
//! gap or a duplicate, each with its card; each timeline event names a
//! listed version, and the versions that served, replayed from the
//! timeline, end at the serving version.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Messages per second.
const RATE: u64 = 400;
/// Seconds of publishing.
const LOAD_S: u64 = 22;
/// `store.retention_samples`.
const RETENTION: u64 = 3_000;
const KILLS: usize = 5;
/// Each kill's moment (seconds after the first publish), and the log line
/// awaited after it (at most [`TRIGGER_WAIT`]) before the kill: `Model
/// loaded.` comes just before a promotion's commit, `Model timeline:` just
/// before a prune.
const KILL_AT: [(f64, Option<&str>); KILLS] = [
    (2.5, None),
    (5.0, Some("Model loaded.")),
    (7.5, None),
    (10.0, Some("Model loaded.")),
    (12.5, Some("Model timeline:")),
];
const TRIGGER_WAIT: Duration = Duration::from_millis(1000);
/// Longest start to HTTP health (subscribed) after a kill.
const START_BOUND: Duration = Duration::from_secs(2);

/// Labelled reading `seq`: features pseudo-random in the reading's number,
/// label `Temperature > 20.5 + 0.9 sin(2 pi seq / 3000)`.
fn payload(seq: u64) -> Vec<u8> {
    let date = chrono::DateTime::from_timestamp(SEQ_BASE_S + seq as i64, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let mut rng = fastrand::Rng::with_seed(seq);
    let t = 19.0 + 3.0 * rng.f64();
    let threshold = 20.5 + 0.9 * (std::f64::consts::TAU * seq as f64 / 3000.0).sin();
    serde_json::to_vec(&serde_json::json!({
        "Date": date,
        "Temperature": t,
        "Humidity": 25.0 + 5.0 * rng.f64(),
        "Light": 500.0 * rng.f64(),
        "CO2": 450.0 + 300.0 * rng.f64(),
        "HumidityRatio": 0.004 + 0.001 * rng.f64(),
        "Occupancy": if t > threshold { "1" } else { "0" },
    }))
    .unwrap()
}

fn seq_of_timestamp(ms: i64) -> Option<u64> {
    let off = ms - SEQ_BASE_S * 1000;
    (off >= 0 && off % 1000 == 0).then_some((off / 1000) as u64)
}

// ---------------------------------------------------------------------------
// Publishers (as tests/embedded_broker.rs).

/// `connections` publishers sharing `0..n` round-robin at `pace`
/// ([`common::spawn_paced_publishers`]).
fn spawn_publisher(
    port: u16,
    n: u64,
    connections: usize,
    pace: Duration,
    limit: Duration,
) -> (tokio::task::JoinHandle<Published>, Arc<Mutex<Published>>) {
    let (task, progress, _stop) =
        common::spawn_paced_publishers(port, 0..n, connections, pace, limit, payload);
    (task, progress)
}

// ---------------------------------------------------------------------------
// The daemon process.

/// The daemon of this test: the embedded broker on `broker_port`, HTTP on
/// a free port, retention, training and pruning kept busy.
fn proc(dir: &Path, broker_port: u16) -> LoggedDaemon {
    let http_port = free_port();
    LoggedDaemon::new(
        dir,
        http_port,
        format!(
            "[store]\npath = '{}'\nretention_samples = {RETENTION}\nretention_chunk = 500\n\
             [mqtt]\nbroker = 'embedded'\nembedded_listen = '127.0.0.1:{broker_port}'\n\
             client_id = '{}'\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n\
             [http]\nlisten = '127.0.0.1:{http_port}'\n\
             [models]\nkeep_versions = 3\n\
             [daemon]\nshutdown_timeout_s = 8\n\
             [[pipelines]]\nname = 'occupancy'\ntopics = ['sensors/+/occupancy']\n\
             features = ['Temperature', 'Humidity', 'Light', 'CO2', 'HumidityRatio']\n\
             label = 'Occupancy'\nclasses = ['0', '1']\ntimestamp = 'Date'\n\
             timestamp_format = '%Y-%m-%d %H:%M:%S'\n\
             [pipelines.model]\nmin_labels = 300\nretrain_every = 400\n",
            dir.join("edgeloop.redb").display(),
            client_id("crk"),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_retention_training_and_pruning_keeps_the_store_whole() {
    init_logs();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = proc(dir.path(), port);
    daemon.spawn();
    let first_start = daemon
        .wait_healthy(Instant::now(), Duration::from_secs(20))
        .await;
    let n = RATE * LOAD_S;
    let (task, progress) = spawn_publisher(
        port,
        n,
        4,
        Duration::from_micros(1_000_000 / RATE),
        Duration::from_secs(LOAD_S + 15),
    );
    let start = Instant::now();
    let mut restarts = Vec::new();
    let mut killed_at = Vec::new();
    for (at, marker) in KILL_AT {
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        let mut hit = None;
        if let Some(marker) = marker {
            let from = daemon.log_text().len();
            let until = Instant::now() + TRIGGER_WAIT;
            while Instant::now() < until {
                if daemon.log_text()[from..].contains(marker) {
                    hit = Some(marker);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        daemon.kill();
        let text = daemon.log_text();
        let last = text.lines().last().unwrap_or("").to_string();
        let acked = progress.lock().unwrap().acked.len();
        killed_at.push(start.elapsed().as_secs_f64());
        eprintln!(
            "kill at {:.2} s (on {hit:?}) with {acked} acknowledged; the log's last line: {last}",
            start.elapsed().as_secs_f64()
        );
        let spawned = Instant::now();
        daemon.spawn();
        restarts.push(daemon.wait_healthy(spawned, Duration::from_secs(20)).await);
    }
    let last_kill_acked = progress.lock().unwrap().acked.len() as u64;
    let p = task.await.unwrap();
    eprintln!(
        "published {n} in {:.1} s: {} acknowledged ({} after the last kill), {} connection errors; \
         first start {first_start:?}, restarts to health {restarts:?}",
        start.elapsed().as_secs_f64(),
        p.acked.len(),
        p.acked.len() as u64 - last_kill_acked,
        p.errors
    );
    assert_eq!(
        p.acked.len() as u64,
        n,
        "every message acknowledged in time"
    );
    assert!(
        p.acked.len() as u64 - last_kill_acked > RETENTION,
        "more than {RETENTION} messages after the last kill"
    );
    for (k, d) in restarts.iter().enumerate() {
        assert!(
            *d < START_BOUND,
            "start {} after a kill took {d:?} to health",
            k + 2
        );
    }

    // Ingest and retention settle: the store holds RETENTION samples.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let p = daemon.get("/v1/pipelines").await.unwrap();
        if p["pipelines"][0]["samples"].as_u64() == Some(RETENTION) {
            break;
        }
        assert!(Instant::now() < until, "the store never settled: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What serves, what is listed, the timeline.
    let models = daemon.get("/v1/pipelines/occupancy/models").await.unwrap();
    let serving = models["serving_version"]
        .as_u64()
        .expect("a version serves") as u32;
    let listed: Vec<u32> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["version"].as_u64().unwrap() as u32)
        .collect();
    for c in models["models"].as_array().unwrap() {
        assert_eq!(
            c["pipeline"], "occupancy",
            "a card without its pipeline: {c}"
        );
        assert!(
            c["features"].as_array().is_some_and(|f| f.len() == 5),
            "{c}"
        );
    }
    let expected: Vec<u32> = (1..=listed.len() as u32).collect();
    assert_eq!(
        listed, expected,
        "versions listed with a gap or a duplicate"
    );
    assert!(listed.contains(&serving));
    let history = daemon.get("/v1/pipelines/occupancy/history").await.unwrap();
    let events = history["events"].as_array().unwrap();
    let listed_set: HashSet<u32> = listed.iter().copied().collect();
    let mut stack: Vec<u32> = Vec::new();
    let mut actions = std::collections::BTreeMap::<String, u32>::new();
    for e in events {
        let v = e["version"].as_u64().unwrap() as u32;
        let action = e["action"].as_str().unwrap().to_string();
        // An alarm while nothing serves names version 0.
        let unserved_alarm = v == 0 && stack.is_empty() && action.ends_with("_alarm");
        assert!(
            listed_set.contains(&v) || unserved_alarm,
            "the timeline names version {v} ({action}), not listed: {listed:?}; served so far {stack:?}"
        );
        match action.as_str() {
            "rollback" => {
                stack.pop();
                assert_eq!(stack.last(), Some(&v), "a rollback to {v}: {stack:?}");
            }
            "trained" | "promote" | "serve_switch" | "fallback" => stack.push(v),
            _ => {}
        }
        *actions.entry(action).or_default() += 1;
    }
    assert_eq!(
        stack.last(),
        Some(&serving),
        "the timeline's served versions end elsewhere than the serving one"
    );
    let predict = daemon
        .request(
            "POST",
            "/v1/pipelines/occupancy/predict",
            Some(predict_body(&[[21.9f32, 27.0, 200.0, 600.0, 0.0045]])),
        )
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&predict.1).unwrap_or_default();
    assert_eq!(predict.0, 200, "predict: {answer}");
    assert_eq!(answer["model_version"], serving);
    let label = answer["predictions"][0]["label"].as_str().unwrap_or("");
    assert!(label == "0" || label == "1", "predict: {answer}");

    // The dashboard's reads of the `state` table (series, live tallies)
    // and the cards side by side.
    let series = daemon.get("/v1/pipelines/occupancy/series").await;
    assert!(
        series
            .as_ref()
            .is_some_and(|s| s["serving_version"] == serving),
        "pipeline series: {series:?}"
    );
    assert!(daemon.get("/v1/series/ingest").await.is_some());
    let versions = daemon.get("/v1/pipelines/occupancy/versions").await;
    assert_eq!(
        versions
            .as_ref()
            .and_then(|v| v["versions"].as_array().map(Vec::len)),
        Some(listed.len()),
        "versions side by side: {versions:?}"
    );

    let (status, _) = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let log = daemon.log_text();
    assert!(
        !log.contains("redb is repairing it"),
        "a restart ran redb's full repair; log:\n{log}"
    );
    let pruned = log.matches("Models of older versions dropped").count();
    eprintln!(
        "versions 1..={} listed, serving {serving}; timeline {actions:?}; {pruned} prunes logged",
        listed.len()
    );
    assert!(
        actions.get("trained").copied().unwrap_or(0) >= 3,
        "too few promotions to test: {actions:?}"
    );
    assert!(pruned >= 1, "no pruning happened");

    // The store: at most RETENTION samples, none twice, the newest
    // RETENTION acknowledged all there.
    let store = edgeloop::store::Store::open(&dir.path().join("edgeloop.redb")).unwrap();
    let samples = store.scan("occupancy", 0..u64::MAX, usize::MAX).unwrap();
    assert!(
        samples.len() as u64 <= RETENTION,
        "{} stored",
        samples.len()
    );
    let mut stored = BTreeSet::new();
    for (_, s) in &samples {
        let q = seq_of_timestamp(s.sample.timestamp_ms).expect("a sample of this test");
        assert!(stored.insert(q), "message {q} stored twice");
    }
    let mut acked = p.acked.clone();
    acked.sort_unstable();
    let newest = &acked[acked.len() - RETENTION as usize..];
    let missing: Vec<u64> = newest
        .iter()
        .copied()
        .filter(|q| !stored.contains(q))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of the newest {RETENTION} acknowledged messages missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!(
        "kills at {killed_at:.2?} s; {} stored; {:.1} s in all",
        samples.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
}
