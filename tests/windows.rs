//! Windowed features (`src/features/windows.rs`): each statistic against
//! numpy (`tests/fixtures/windows/gen_windows.py`), the streaming featurizer
//! against the batch definition, and BasicMotions (4 classes, 40 training
//! cases, 6 channels × 100 readings at 10 Hz) replayed as 10 Hz readings, one
//! device per case, through the loop's training path (`learn::train_version`
//! with `[pipelines.windows]`) and the serving featurizer: test accuracy
//! with and without augmentation, at least 0.9 with it. And the same
//! through the daemon: readings over MQTT (embedded broker), training at
//! `min_labels`, one prediction per test device published over MQTT.

mod common;

use std::path::PathBuf;

use edgeloop::config::{Config, PipelineConfig};
use edgeloop::features::augment::AugmentConfig;
use edgeloop::features::windows::{window_stats, Featurizer, Stat, WindowsConfig};
use edgeloop::ingest::decode::Sample;
use edgeloop::learn::{self, Family, Trigger};

fn root(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn close(got: f32, want: Option<f64>, what: &str) {
    match want {
        None => assert!(got.is_nan(), "{what}: {got}, numpy: undefined"),
        Some(w) => assert!(
            (f64::from(got) - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}: {got}, numpy {w}"
        ),
    }
}

#[test]
fn statistics_equal_numpy() {
    let text = std::fs::read_to_string(root("tests/fixtures/windows/windows.json")).unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let values: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().map_or(f32::NAN, |v| v as f32))
            .collect();
        let mut batch = vec![];
        window_stats(values.iter().copied(), &Stat::ALL, &mut batch);
        for (s, got) in Stat::ALL.iter().zip(&batch) {
            close(
                *got,
                case["expected"][s.name()].as_f64(),
                &format!("{name} {}", s.name()),
            );
        }
        // The streaming form: after unrelated readings (the ring wraps), a
        // window of exactly these values, step 1, and a second channel.
        let cfg = WindowsConfig {
            enabled: true,
            size: values.len(),
            step: 1,
            stats: Stat::ALL.to_vec(),
            max_devices: 4,
        };
        let mut f = Featurizer::new(&cfg, 2);
        for k in 0..7 {
            f.push("d", &[100.0 + k as f32, 0.0]);
            f.push("other", &[-1.0, -1.0]);
        }
        let mut last = None;
        for &v in &values {
            last = f.push("d", &[v, 2.0 * v]);
        }
        let row = last
            .expect("a window sample at every reading with step 1")
            .features;
        assert_eq!(row.len(), 12);
        for (k, got) in row[..6].iter().enumerate() {
            assert!(
                got.to_bits() == batch[k].to_bits() || (got.is_nan() && batch[k].is_nan()),
                "{name}: streaming {got} vs batch {}",
                batch[k]
            );
        }
    }
}

/// One BasicMotions case: 6 channels × 100 readings, and its label.
struct Case {
    channels: Vec<Vec<f32>>,
    label: String,
}

/// Parses a sktime `.ts` file as `tests/fixtures/datasets/prepare.py` does:
/// after `@data`, one case a line, channels separated by `:`, the label last.
fn load_ts(file: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(root(&format!("data/basic_motions/{file}"))).unwrap();
    let mut data = false;
    let mut out = vec![];
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.to_lowercase().starts_with("@data") {
            data = true;
            continue;
        }
        if !data {
            continue;
        }
        let parts: Vec<&str> = line.split(':').collect();
        let (label, chans) = parts.split_last().unwrap();
        out.push(Case {
            channels: chans
                .iter()
                .map(|c| c.split(',').map(|t| t.parse::<f32>().unwrap()).collect())
                .collect(),
            label: label.to_string(),
        });
    }
    out
}

const CHANNELS: [&str; 6] = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"];

/// Readings of case `k` of `cases` as device `{prefix}{k}` at 10 Hz. The
/// training file lists its cases class by class; each case gets its own
/// 10-second slot, classes interleaved, so that a temporal holdout holds
/// every class.
fn readings(cases: &[Case], prefix: &str, labelled: bool) -> Vec<Sample> {
    let n = cases.len();
    let per_class = 10;
    let mut out = vec![];
    for (k, case) in cases.iter().enumerate() {
        let slot = (k % per_class) * (n / per_class) + k / per_class;
        let t0 = 1_600_000_000_000 + slot as i64 * 10_000;
        for j in 0..case.channels[0].len() {
            out.push(Sample {
                timestamp_ms: t0 + j as i64 * 100,
                device: format!("{prefix}{k:02}"),
                features: case.channels.iter().map(|c| c[j]).collect(),
                label: labelled.then(|| case.label.clone()),
            });
        }
    }
    out
}

fn pipeline(augment: AugmentConfig) -> PipelineConfig {
    let mut p = Config::load(None).unwrap().pipelines[0].clone();
    p.name = "basic_motions".into();
    p.features = CHANNELS.iter().map(|c| c.to_string()).collect();
    p.classes = vec![];
    p.windows = WindowsConfig {
        enabled: true,
        size: 100,
        step: 100,
        stats: Stat::ALL.to_vec(),
        max_devices: 64,
    };
    p.model.family = Family::Forest;
    p.model.augment = augment;
    p
}

/// Trains on the 40 training cases and predicts the 40 test cases as the
/// daemon would: readings of the 40 test devices interleaved in time,
/// through one serving [`Featurizer`]. Returns the test accuracy.
fn accuracy(p: &PipelineConfig, train: &[Case], test: &[Case]) -> f64 {
    let trained = learn::train_version(
        &p.settings(),
        &readings(train, "train-", true),
        None,
        1,
        Trigger::Manual,
        None,
        || false,
    )
    .unwrap();
    let model = &trained.model;
    assert_eq!(model.feature_names(), &p.model_features()[..]);
    assert_eq!(model.feature_names().len(), 36);
    assert_eq!(trained.card.n_samples, 40, "one window per case");
    let mut stream = readings(test, "test-", false);
    stream.sort_by_key(|s| (s.timestamp_ms % 10_000, s.timestamp_ms));
    let mut f = Featurizer::new(&p.windows, CHANNELS.len());
    let mut windows: Vec<(String, Vec<f32>)> = vec![];
    for s in &stream {
        if let Some(row) = f.push(&s.device, &s.features) {
            windows.push((s.device.clone(), row.features));
        }
    }
    assert_eq!(windows.len(), test.len());
    assert_eq!(f.evicted(), 0);
    let x: Vec<f32> = windows
        .iter()
        .flat_map(|(_, w)| w.iter().copied())
        .collect();
    let proba = model.predict(&x);
    let classes = model.classes();
    let correct = windows
        .iter()
        .zip(proba.chunks_exact(classes.len()))
        .filter(|((device, _), row)| {
            let k: usize = device.trim_start_matches("test-").parse().unwrap();
            let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            classes[best] == test[k].label
        })
        .count();
    correct as f64 / test.len() as f64
}

#[test]
fn basic_motions_at_10_hz_with_and_without_augmentation() {
    let (train, test) = (
        load_ts("BasicMotions_TRAIN.ts"),
        load_ts("BasicMotions_TEST.ts"),
    );
    assert_eq!((train.len(), test.len()), (40, 40));
    assert!(train
        .iter()
        .all(|c| c.channels.len() == 6 && c.channels[0].len() == 100));
    let plain = accuracy(&pipeline(AugmentConfig::default()), &train, &test);
    let augment = AugmentConfig {
        copies: 10,
        jitter: 0.05,
        scaling: 0.1,
        time_shift: 2,
        seed: 7,
        ..Default::default()
    };
    assert!(augment.validate().is_ok());
    let augmented = accuracy(&pipeline(augment), &train, &test);
    let raw = raw_window_augmentation(&train, &test);
    println!(
        "BasicMotions, windows of 100 readings (10 s at 10 Hz), forest: \
         test accuracy {plain:.3} without augmentation, {augmented:.3} with \
         (statistic rows: jitter, scaling, time shift), {raw:.3} with the raw \
         readings augmented before the statistics (`windows` groups: time \
         shift, window slicing, scaling, jitter)"
    );
    assert!(augmented >= 0.9, "with augmentation: {augmented}");
    assert!(raw >= 0.9, "raw-window augmentation: {raw}");
}

/// The other way to augment a windowed task: augment each training case's
/// raw readings (one feature per channel and position, `windows` groups
/// per channel: time shift and window slicing act on the readings), then
/// summarise every row, original or added, by the same statistics. Test
/// accuracy of a forest trained on those rows.
fn raw_window_augmentation(train: &[Case], test: &[Case]) -> f64 {
    use edgeloop::features::augment::augment;
    use edgeloop::learn::{sort_classes, Dataset, Task, TrainSettings};
    let len = train[0].channels[0].len();
    let raw_names: Vec<String> = CHANNELS
        .iter()
        .flat_map(|c| (0..len).map(move |i| format!("{c}_{i}")))
        .collect();
    let classes = sort_classes(train.iter().map(|c| c.label.clone()));
    let mut raw = Dataset::empty(Task::Classification, classes.clone(), raw_names.len());
    for (k, case) in train.iter().enumerate() {
        raw.x.extend(case.channels.iter().flatten());
        raw.y
            .push(classes.iter().position(|c| *c == case.label).unwrap());
        raw.timestamps.push(k as i64);
    }
    let cfg = AugmentConfig {
        copies: 10,
        jitter: 0.05,
        scaling: 0.1,
        time_shift: 10,
        window_slice: 0.1,
        windows: CHANNELS
            .iter()
            .map(|c| (0..len).map(|i| format!("{c}_{i}")).collect())
            .collect(),
        seed: 7,
        ..Default::default()
    };
    assert!(cfg.validate().is_ok());
    let groups = cfg.window_indices(&raw_names).unwrap();
    let rows = augment(&raw, &cfg, &groups, 0);
    assert_eq!(rows.len(), 440);
    let summarise = |x: &[f32]| {
        let mut out = vec![];
        for ch in x.chunks_exact(len) {
            window_stats(ch.iter().copied(), &Stat::ALL, &mut out);
        }
        out
    };
    let p = pipeline(AugmentConfig::default());
    let features = p.model_features();
    let mut data = Dataset::empty(Task::Classification, classes.clone(), features.len());
    for (r, x) in rows.x.chunks_exact(raw_names.len()).enumerate() {
        data.x.extend(summarise(x));
        data.y.push(rows.y[r]);
        // Interleave the classes in time, as the replay does.
        data.timestamps
            .push(((r % 40) % 10 * 4 + (r % 40) / 10) as i64);
    }
    let order = {
        let mut o: Vec<usize> = (0..data.len()).collect();
        o.sort_by_key(|&i| data.timestamps[i]);
        o
    };
    let data = data.select(&order);
    let settings = TrainSettings {
        pipeline: "basic_motions",
        features: &features,
        model: &p.model,
        progress: None,
        peak_rss: false,
    };
    let model = learn::train_dataset(&settings, &data, None, 1, Trigger::Manual, None, &|| false)
        .unwrap()
        .chosen
        .model;
    let x: Vec<f32> = test
        .iter()
        .flat_map(|c| summarise(&c.channels.concat()))
        .collect();
    let proba = model.predict(&x);
    let correct = test
        .iter()
        .zip(proba.chunks_exact(classes.len()))
        .filter(|(case, row)| {
            let best = (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
            model.classes()[best] == case.label
        })
        .count();
    correct as f64 / test.len() as f64
}

/// The daemon's half of windowed features, end to end over the embedded
/// broker: the 40 training cases arrive as labelled 10 Hz readings (one
/// device per case, `motion/{device}/basic`), version 1 trains at
/// `min_labels` (every training reading stored); the 40 test cases arrive
/// interleaved in time (every third reading labelled), the first 50 of each
/// device before a restart of the daemon and the last 50 after it, and the
/// predictor publishes exactly one prediction per test device, at its 100th
/// reading, whose probabilities are the stored version's on the window
/// statistics of that device's readings: the restart warmed the windows
/// from the store. Between the two halves, 5 busy devices send 1,300
/// labelled readings each, more than the newest 6,400 readings
/// (`size × max_devices`) the warm-up once took across devices: the test
/// devices, quiet meanwhile, are warmed with their own newest readings all
/// the same (the 64 most recent devices, each its newest 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_predicts_one_window_per_device_over_mqtt() {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use common::{client_id, free_port, wait_until, Broker};
    use edgeloop::features::windows::derive;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    const NAME: &str = "basic_motions";
    const WAIT: Duration = Duration::from_secs(60);
    let started = Instant::now();
    let (train, test) = (
        load_ts("BasicMotions_TRAIN.ts"),
        load_ts("BasicMotions_TEST.ts"),
    );
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cfg = common::config(dir.path(), Broker::Embedded(port));
    let mut p = pipeline(AugmentConfig::default());
    p.topics = vec!["motion/+/basic".into()];
    p.label_topics = vec![];
    p.device_level = 1;
    p.timestamp = "t".into();
    p.label = "activity".into();
    p.prediction_topic = "edgeloop/{pipeline}/predictions/{device}".into();
    p.model.min_labels = 40 * 100;
    p.model.retrain_every = 1_000_000;
    p.drift.retrain_on_drift = false;
    cfg.pipelines = vec![p.clone()];
    cfg.validate().unwrap();

    let (running, handle, token) = common::start(cfg.clone()).await;

    let message = |s: &Sample| {
        let mut v = serde_json::json!({ "t": s.timestamp_ms });
        for (c, x) in CHANNELS.iter().zip(&s.features) {
            v[*c] = f64::from(*x).into();
        }
        if let Some(l) = &s.label {
            v["activity"] = l.clone().into();
        }
        (
            format!("motion/{}/basic", s.device),
            serde_json::to_vec(&v).unwrap(),
        )
    };

    // Training readings, labelled; version 1 once all 4,000 are stored.
    let train_readings = readings(&train, "train-", true);
    publish(port, train_readings.iter().map(message).collect()).await;
    wait_until(WAIT, "version 1", || handle.registry.get(NAME).is_some()).await;
    let serving = handle.registry.get(NAME).unwrap();
    assert_eq!(serving.version, 1);
    assert_eq!(serving.card.n_samples, 40, "one window per training case");
    assert_eq!(handle.store.counts(NAME).unwrap().labelled_total, 4000);
    let stored = handle.store.get_model(NAME, 1).unwrap().unwrap();
    let model = learn::Model::from_json(&stored.params_json).unwrap();
    assert_eq!(model.feature_names(), &p.model_features()[..]);

    // Test readings, the 40 devices interleaved in time; every third
    // reading of a device (the 2nd, 5th, …, 98th) labelled. A window is a
    // device's last 100 readings, labelled or not, as in training: the
    // predictor took only the unlabelled ones (67 per device), so no
    // window was ever completed and nothing was predicted.
    let mut test_readings = readings(&test, "test-", false);
    for (i, s) in test_readings.iter_mut().enumerate() {
        if i % 100 % 3 == 1 {
            s.label = Some(test[i / 100].label.clone());
        }
    }
    test_readings.sort_by_key(|s| (s.timestamp_ms % 10_000, s.timestamp_ms));
    // The first 50 readings of each device, then a restart: the windows
    // are warmed from the store (the predictor's windows were empty after
    // a restart, so no device completed its window with its last 50).
    let (first, rest): (Vec<&Sample>, Vec<&Sample>) = test_readings
        .iter()
        .partition(|s| s.timestamp_ms % 10_000 < 50 * 100);
    assert_eq!((first.len(), rest.len()), (2000, 2000));
    publish(port, first.iter().map(|s| message(s)).collect()).await;
    wait_until(WAIT, "the first half stored", || {
        handle.store.counts(NAME).unwrap().samples == 6000
    })
    .await;
    // Busy devices, labelled (their windows are not predicted): after them
    // the test devices' readings are not among the newest 6,400.
    let busy: Vec<Sample> = (0..5 * 1300)
        .map(|i| Sample {
            timestamp_ms: 1_700_000_000_000 + i as i64 * 100,
            device: format!("busy-{}", i % 5),
            features: train_readings[i % train_readings.len()].features.clone(),
            label: Some(train[0].label.clone()),
        })
        .collect();
    publish(port, busy.iter().map(message).collect()).await;
    wait_until(WAIT, "the busy readings stored", || {
        handle.store.counts(NAME).unwrap().samples == 6000 + 6500
    })
    .await;
    assert!(6500 > p.windows.size * p.windows.max_devices);
    assert_eq!(handle.stats.snapshot().predictions_made, 0);
    common::stop(running, handle, token).await;
    let (running, handle, token) = common::start(cfg).await;
    assert_eq!(handle.registry.get(NAME).unwrap().version, 1);
    let (mut sub, stop_sub) =
        common::subscribe(port, &format!("edgeloop/{NAME}/predictions/#")).await;
    publish(port, rest.iter().map(|s| message(s)).collect()).await;
    let mut got: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    while got.len() < test.len() {
        let m = tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("a prediction per test device")
            .unwrap();
        let device = m["device"].as_str().unwrap().to_string();
        assert!(
            got.insert(device, m).is_none(),
            "two predictions for one device"
        );
    }
    // Nothing more arrives (one window per device: 100 readings, step 100).
    assert!(
        tokio::time::timeout(Duration::from_millis(500), sub.recv())
            .await
            .is_err(),
        "a prediction beyond one per device"
    );
    stop_sub.cancel();
    let stats = handle.stats.snapshot();
    assert_eq!(stats.predictions_made, 40);
    assert_eq!(stats.predictions_dropped, 0);

    // The in-process reference: the stored version on the batch windows.
    let windows = derive(&test_readings, &p.windows, CHANNELS.len());
    assert_eq!(windows.len(), test.len());
    let x: Vec<f32> = windows
        .iter()
        .flat_map(|w| w.features.iter().copied())
        .collect();
    let proba = model.predict(&x);
    let classes = model.classes();
    let mut correct = 0;
    let mut max_diff = 0f64;
    for (w, row) in windows.iter().zip(proba.chunks_exact(classes.len())) {
        let m = &got[&w.device];
        let k: usize = w.device.trim_start_matches("test-").parse().unwrap();
        assert_eq!(m["pipeline"], NAME);
        assert_eq!(m["model_version"], 1);
        assert_eq!(
            m["timestamp_ms"].as_i64().unwrap(),
            w.timestamp_ms,
            "the 100th reading's"
        );
        assert!(m["sample_id"].is_u64());
        let served = m["probabilities"].as_object().unwrap();
        assert_eq!(served.len(), classes.len());
        for (c, want) in classes.iter().zip(row) {
            let diff = (served[c].as_f64().unwrap() - f64::from(*want)).abs();
            max_diff = max_diff.max(diff);
        }
        correct += usize::from(m["label"] == test[k].label.as_str());
    }
    let accuracy = correct as f64 / test.len() as f64;
    println!(
        "BasicMotions through the daemon (forest, windows of 100 at 10 Hz): \
         accuracy {accuracy:.3} over {} test devices, served vs in-process \
         probabilities max |diff| {max_diff:e}, {:.1} s",
        test.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        max_diff <= 1e-5,
        "served and in-process probabilities differ by {max_diff}"
    );
    assert!(accuracy >= 0.9, "accuracy through the daemon: {accuracy}");

    common::stop(running, handle, token).await;

    /// Publishes `(topic, payload)` in order on one connection (QoS 1) and
    /// waits for every acknowledgement.
    async fn publish(port: u16, messages: Vec<(String, Vec<u8>)>) {
        let mut opts = MqttOptions::new(client_id("pub"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let total = messages.len();
        let publisher = tokio::spawn(async move {
            for (topic, payload) in messages {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .unwrap();
            }
            client
        });
        let mut acked = 0;
        while acked < total {
            match tokio::time::timeout(WAIT, eventloop.poll()).await.unwrap() {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publishing: {e}"),
            }
        }
        let client = publisher.await.unwrap();
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    }
}
