//! Predictions over MQTT: each stored sample without a label is predicted by
//! the serving model and the prediction published on the pipeline's
//! prediction topic.
//!
//! Two components, so that ingest never waits for the broker:
//! - [`Predictor`] runs the model (on a blocking thread) and puts each
//!   prediction in the outbox; a full outbox drops it and counts it;
//! - [`Publisher`] drains the outbox on its own connection while it is
//!   connected (`publish().await` would block for as long as the broker is
//!   away, and a shared connection would queue ingest acknowledgements
//!   behind predictions).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::registry::Registry;
use crate::features::windows::Featurizer;
use crate::ingest::decode::Sample;
use crate::ingest::link::{Link, LinkEvent, LinkSpec, ProtocolChoice};
use crate::ingest::mqtt::Backoff;
use crate::ingest::writer::PredictJob;
use crate::learn::PipelineSettings;
use crate::stats::Stats;

/// The JSON published for one prediction of a classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionMessage {
    pub pipeline: String,
    pub device: String,
    /// The sample's timestamp, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The sample's sequence number in the store.
    pub sample_id: u64,
    pub label: String,
    pub probabilities: BTreeMap<String, f32>,
    pub model_version: u32,
    /// The reading's anomaly fields (absent when scoring is off).
    #[serde(flatten)]
    pub scores: AnomalyJson,
    /// `true` when the serving version is an online snapshot that has
    /// learned one class so far and answers it whatever the reading (cold
    /// start, [`crate::learn::online::export`]); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub constant: bool,
}

/// The JSON published for one prediction of a regressor: as
/// [`PredictionMessage`], with the predicted value (the label's unit, the
/// ONNX `prediction` output) in place of `label` and `probabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueMessage {
    pub pipeline: String,
    pub device: String,
    /// The sample's timestamp, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// The sample's sequence number in the store.
    pub sample_id: u64,
    pub prediction: f32,
    pub model_version: u32,
    /// As [`PredictionMessage::scores`].
    #[serde(flatten)]
    pub scores: AnomalyJson,
}

/// The anomaly fields of a prediction, in MQTT prediction messages and HTTP
/// predict rows (`[pipelines.anomaly]`, [`crate::learn::anomaly::Scorer`]);
/// each absent when scoring is off.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnomalyJson {
    /// The reading's anomaly score in [0, 1] (Half-Space Trees).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly_score: Option<f64>,
    /// The largest residual z of the reading's features against their
    /// EWMA, in smoothed MADs ([`crate::learn::anomaly::ResidualZ`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_z: Option<f64>,
    /// The feature of that residual z (absent while no feature has a
    /// scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_feature: Option<String>,
    /// The alarm: either rule of [`crate::learn::anomaly::Scorer`] fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<bool>,
    /// The rule that fired: `"trees"`, `"residual"`, `"both"` or `"level"` (absent
    /// without an alarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly_rule: Option<String>,
}

impl From<Option<&AnomalyFields>> for AnomalyJson {
    fn from(a: Option<&AnomalyFields>) -> Self {
        Self {
            anomaly_score: a.map(|a| a.score),
            residual_z: a.map(|a| a.residual_z),
            residual_feature: a.and_then(|a| a.residual_feature.clone()),
            anomaly: a.map(|a| a.alarm),
            anomaly_rule: a.and_then(|a| a.rule.map(str::to_string)),
        }
    }
}

/// A reading's anomaly fields as published: the scorer's view of it, with
/// the residual's feature named.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyFields {
    pub score: f64,
    pub residual_z: f64,
    pub residual_feature: Option<String>,
    pub alarm: bool,
    /// `"trees"`, `"residual"`, `"both"` or `"level"` ([`crate::learn::anomaly::AlarmRule`]).
    pub rule: Option<&'static str>,
}

/// A message ready to publish.
#[derive(Debug)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// The newest predictions the predictor handed to the outbox (at most
/// [`RecentPredictions::CAPACITY`], newest last), for the dashboard: each
/// as its topic and the JSON payload published.
#[derive(Debug, Clone, Default)]
pub struct RecentPredictions(Arc<std::sync::Mutex<std::collections::VecDeque<(String, Vec<u8>)>>>);

impl RecentPredictions {
    /// Predictions kept.
    pub const CAPACITY: usize = 50;

    /// Keeps `m` (a copy), forgetting the oldest beyond the capacity.
    pub fn push(&self, m: &Outgoing) {
        let mut q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() == Self::CAPACITY {
            q.pop_front();
        }
        q.push_back((m.topic.clone(), m.payload.clone()));
    }

    /// The kept predictions, newest first: topic and payload.
    pub fn newest_first(&self) -> Vec<(String, Vec<u8>)> {
        let q = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        q.iter().rev().cloned().collect()
    }
}

/// Each pipeline's anomaly scorer (`[pipelines.anomaly]`), shared by the
/// predictor (which scores, then learns, each reading it predicts) and HTTP
/// predict (which scores its rows without learning them), with the
/// predictor's running totals ([`AnomalyTotals`], for the dashboard).
#[derive(Debug, Clone, Default)]
pub struct AnomalyScorers(Arc<std::sync::Mutex<HashMap<String, ScorerEntry>>>);

#[derive(Debug)]
struct ScorerEntry {
    scorer: crate::learn::anomaly::Scorer,
    /// The features the scorer reads, in the readings' order.
    features: Vec<String>,
    totals: AnomalyTotals,
}

impl ScorerEntry {
    fn fields(&self, s: crate::learn::anomaly::Scored) -> AnomalyFields {
        AnomalyFields {
            score: s.score,
            residual_z: s.residual_z,
            residual_feature: s
                .residual_feature
                .and_then(|i| self.features.get(i).cloned()),
            alarm: s.alarm,
            rule: s.rule.map(|r| r.as_str()),
        }
    }
}

/// What a pipeline's scorer has scored and learned since the daemon
/// started (HTTP predict's scores, which are not learned, are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AnomalyTotals {
    /// Readings scored (then learned).
    pub scored: u64,
    /// The sum of their scores (each in [0, 1]).
    pub score_sum: f64,
    /// Alarmed readings (either rule).
    pub alarms: u64,
    /// Alarms by rule (a reading where both fired counts in both; the
    /// level rule's only where neither other fired).
    pub trees_alarms: u64,
    pub residual_alarms: u64,
    pub level_alarms: u64,
    /// Alarms that opened an episode ([`crate::learn::anomaly::Scored::episode`]).
    pub episodes: u64,
}

impl AnomalyScorers {
    /// A scorer per pipeline with scoring enabled, over its model features.
    pub fn new(pipelines: &[PipelineSettings]) -> Self {
        let map = pipelines
            .iter()
            .filter(|p| p.anomaly.enabled)
            .map(|p| {
                (
                    p.name.clone(),
                    ScorerEntry {
                        scorer: crate::learn::anomaly::Scorer::new(&p.anomaly, &p.model_features()),
                        features: p.model_features(),
                        totals: AnomalyTotals::default(),
                    },
                )
            })
            .collect();
        Self(Arc::new(std::sync::Mutex::new(map)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ScorerEntry>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Scores then learns each of `readings` (its device, empty for none,
    /// and its features) in order (counted in the totals and in `stats`'
    /// alarm counters, the devices whose rules were forgotten in
    /// `anomaly_evicted`), or `None` each when the pipeline does not score.
    pub fn score_then_learn<'a>(
        &self,
        pipeline: &str,
        readings: impl Iterator<Item = (&'a str, &'a [f32])>,
        stats: &Stats,
    ) -> Vec<Option<AnomalyFields>> {
        use crate::learn::anomaly::AlarmRule;
        let mut map = self.lock();
        match map.get_mut(pipeline) {
            Some(e) => readings
                .map(|(device, r)| {
                    let evicted = e.scorer.evicted();
                    let s = e.scorer.score_then_learn(Some(device), r);
                    stats
                        .anomaly_evicted
                        .fetch_add(e.scorer.evicted() - evicted, Relaxed);
                    let trees = matches!(s.rule, Some(AlarmRule::Trees | AlarmRule::Both));
                    let residual = matches!(s.rule, Some(AlarmRule::Residual | AlarmRule::Both));
                    let level = matches!(s.rule, Some(AlarmRule::Level));
                    let t = &mut e.totals;
                    t.scored += 1;
                    t.score_sum += s.score;
                    t.alarms += u64::from(s.alarm);
                    t.trees_alarms += u64::from(trees);
                    t.residual_alarms += u64::from(residual);
                    t.level_alarms += u64::from(level);
                    t.episodes += u64::from(s.episode);
                    stats.anomaly_alarms.fetch_add(u64::from(s.alarm), Relaxed);
                    stats
                        .anomaly_trees_alarms
                        .fetch_add(u64::from(trees), Relaxed);
                    stats
                        .anomaly_residual_alarms
                        .fetch_add(u64::from(residual), Relaxed);
                    stats
                        .anomaly_level_alarms
                        .fetch_add(u64::from(level), Relaxed);
                    stats
                        .anomaly_episodes
                        .fetch_add(u64::from(s.episode), Relaxed);
                    Some(e.fields(s))
                })
                .collect(),
            None => readings.map(|_| None).collect(),
        }
    }

    /// Scores then learns `readings` (device, empty for none, and the row
    /// the predictor would score) in order, as [`Self::score_then_learn`]
    /// does, without counting them in the totals or in `Stats`: the
    /// daemon's warm-up from the store at start ([`crate::daemon`]), so
    /// that a restart does not restart the scorer's first window, its
    /// threshold's calibration and each device's rules. Returns how many
    /// were learned (0 when the pipeline does not score).
    pub fn warm<'a>(
        &self,
        pipeline: &str,
        readings: impl Iterator<Item = (&'a str, &'a [f32])>,
    ) -> u64 {
        let mut map = self.lock();
        let Some(e) = map.get_mut(pipeline) else {
            return 0;
        };
        let mut n = 0;
        for (device, r) in readings {
            e.scorer.score_then_learn(Some(device), r);
            n += 1;
        }
        n
    }

    /// `rows` (`n_features` values each) as the next readings of their
    /// `devices` (one per row; `None`: no device) would be seen, without
    /// learning them ([`crate::learn::anomaly::Scorer::peek`]); `None` when
    /// the pipeline does not score.
    pub fn peek(
        &self,
        pipeline: &str,
        rows: &[f32],
        devices: &[Option<String>],
        n_features: usize,
    ) -> Option<Vec<AnomalyFields>> {
        let map = self.lock();
        let e = map.get(pipeline)?;
        Some(
            rows.chunks(n_features.max(1))
                .enumerate()
                .map(|(i, r)| {
                    let device = devices.get(i).and_then(Option::as_deref);
                    e.fields(e.scorer.peek(device, r))
                })
                .collect(),
        )
    }

    /// Each scoring pipeline's totals so far.
    pub fn totals(&self) -> Vec<(String, AnomalyTotals)> {
        self.lock()
            .iter()
            .map(|(name, e)| (name.clone(), e.totals))
            .collect()
    }
}

/// Runs the serving model over unlabelled samples.
pub struct Predictor {
    pub registry: Arc<Registry>,
    pub pipelines: Vec<PipelineSettings>,
    pub rx: mpsc::Receiver<PredictJob>,
    pub outbox: mpsc::Sender<Outgoing>,
    pub stats: Arc<Stats>,
    /// The newest predictions sent to the outbox (or dropped with it full).
    pub recent: RecentPredictions,
    /// Anomaly scorers (shared with HTTP predict).
    pub anomaly: AnomalyScorers,
    /// Windowed pipelines' per-device windows at start (see
    /// [`crate::daemon`]'s warm-up from the store); a windowed pipeline
    /// missing here starts with empty windows.
    pub windows: HashMap<String, Featurizer>,
}

impl Predictor {
    /// Runs until the writer closes the channel (after it drained).
    ///
    /// A windowed pipeline's readings go through its per-device
    /// [`Featurizer`] first (even while no model serves, so that windows are
    /// warm when one does); only the window samples they complete are
    /// predicted, each published with its last reading's timestamp and
    /// sample id.
    pub async fn run(mut self) {
        let mut featurizers = std::mem::take(&mut self.windows);
        for p in self.pipelines.iter().filter(|p| p.windows.enabled) {
            featurizers
                .entry(p.name.clone())
                .or_insert_with(|| Featurizer::new(&p.windows, p.features.len()));
        }
        while let Some(mut job) = self.rx.recv().await {
            let Some(p) = self.pipelines.iter().find(|p| p.name == job.pipeline) else {
                continue;
            };
            // Every reading is scored for anomalies (and learned by the
            // scorer), labelled or not; labelled readings are not predicted.
            // A temporal pipeline first records them, in commit order, as
            // their devices' history and last labels, and scores and
            // predicts from their rows.
            match &p.temporal.state {
                Some(t) => {
                    // Markers and out-of-range readings are missing in the
                    // history too, as in training.
                    let cleaning = p.model.preprocess.cleaning();
                    for (_, s) in &mut job.samples {
                        cleaning.apply(&p.features, &mut s.features);
                    }
                    let samples: Vec<&Sample> = job.samples.iter().map(|(_, s)| s).collect();
                    let (rows, evicted) = t.advance(&samples);
                    if evicted > 0 {
                        self.stats.windows_evicted.fetch_add(evicted, Relaxed);
                    }
                    job.samples = job
                        .samples
                        .into_iter()
                        .zip(rows)
                        .map(|((seq, s), features)| (seq, Sample { features, ..s }))
                        .collect();
                }
                // A windowed pipeline's labelled readings enter their
                // devices' windows too, as in training (`derive` over every
                // stored reading); a window is predicted when an unlabelled
                // reading completes it.
                None => {}
            }
            if job.samples.is_empty() {
                continue;
            }
            if let Some(f) = featurizers.get_mut(&p.name) {
                let before = f.evicted();
                job.samples = into_windows(f, job.samples);
                let evicted = f.evicted() - before;
                if evicted > 0 {
                    self.stats.windows_evicted.fetch_add(evicted, Relaxed);
                    tracing::debug!(pipeline = %p.name, evicted, "Device windows evicted (max_devices).");
                }
                if job.samples.is_empty() {
                    continue;
                }
            }
            // Scored (then learned) from the first reading, whether or not
            // a model serves yet.
            let anomalies = self.anomaly.score_then_learn(
                &p.name,
                job.samples
                    .iter()
                    .map(|(_, s)| (s.device.as_str(), s.features.as_slice())),
                &self.stats,
            );
            if anomalies.iter().any(Option::is_some) {
                self.stats
                    .observe_anomaly_scores(&p.name, anomalies.iter().flatten().map(|a| a.score));
            }
            // Only the unlabelled ones are predicted.
            let (samples, anomalies): (Vec<_>, Vec<_>) = job
                .samples
                .into_iter()
                .zip(anomalies)
                .filter(|((_, s), _)| s.label.is_none())
                .unzip();
            job.samples = samples;
            if job.samples.is_empty() {
                continue;
            }
            if p.prediction_topic.is_empty() {
                continue;
            }
            let Some(serving) = self.registry.get(&job.pipeline) else {
                continue;
            };
            // `impute = "last"`: the device's last readings fill the missing
            // values (after the cleaning rules, so a marker is not carried).
            if let Some(cf) = &p.model.preprocess.carry_forward {
                let cleaning = p.model.preprocess.cleaning();
                for (_, s) in &mut job.samples {
                    cleaning.apply(&p.features, &mut s.features);
                    cf.fill(&s.device, &mut s.features);
                }
            }
            let template = p.prediction_topic.clone();
            let stats = self.stats.clone();
            let messages = tokio::task::spawn_blocking(move || {
                let x: Vec<f32> = job
                    .samples
                    .iter()
                    .flat_map(|(_, s)| s.features.iter().copied())
                    .collect();
                let started = std::time::Instant::now();
                let proba = serving.model.predict_proba(&x);
                stats.observe_prediction(&job.pipeline, "mqtt", started.elapsed().as_secs_f64());
                let proba = match proba {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(pipeline = %job.pipeline, error = %e, "Prediction failed.");
                        return Vec::new();
                    }
                };
                let regression = serving.model.task() == crate::ingest::decode::Task::Regression;
                let classes = serving.model.classes();
                let width = if regression { 1 } else { classes.len() };
                job.samples
                    .iter()
                    .zip(proba.chunks_exact(width))
                    .zip(&anomalies)
                    .map(|(((seq, s), row), anomaly)| {
                        let scores = AnomalyJson::from(anomaly.as_ref());
                        let payload = if regression {
                            serde_json::to_vec(&ValueMessage {
                                pipeline: job.pipeline.clone(),
                                device: s.device.clone(),
                                timestamp_ms: s.timestamp_ms,
                                sample_id: *seq,
                                prediction: row[0],
                                model_version: serving.version,
                                scores,
                            })
                        } else {
                            let best = crate::learn::logistic::argmax_rows(row, classes.len())[0];
                            serde_json::to_vec(&PredictionMessage {
                                pipeline: job.pipeline.clone(),
                                device: s.device.clone(),
                                timestamp_ms: s.timestamp_ms,
                                sample_id: *seq,
                                label: classes[best].clone(),
                                probabilities: classes
                                    .iter()
                                    .cloned()
                                    .zip(row.iter().copied())
                                    .collect(),
                                model_version: serving.version,
                                scores,
                                constant: crate::learn::online::export::is_constant(&serving.card),
                            })
                        };
                        let topic = template
                            .replace("{pipeline}", &job.pipeline)
                            .replace("{device}", &s.device);
                        Outgoing {
                            topic,
                            payload: payload.unwrap_or_default(),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let skip = messages.len().saturating_sub(RecentPredictions::CAPACITY);
            for m in &messages[skip..] {
                self.recent.push(m);
            }
            for m in messages {
                self.stats.predictions_made.fetch_add(1, Relaxed);
                if self.outbox.try_send(m).is_err() {
                    self.stats.predictions_dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

/// The window samples that `readings` complete (see
/// [`crate::features::windows`]), each with its last reading's sequence
/// number, device and timestamp.
fn into_windows(f: &mut Featurizer, readings: Vec<(u64, Sample)>) -> Vec<(u64, Sample)> {
    readings
        .into_iter()
        .filter_map(|(seq, s)| {
            let row = f.push(&s.device, &s.features)?;
            Some((
                seq,
                Sample {
                    features: row.features,
                    ..s
                },
            ))
        })
        .collect()
}

/// Publishes the outbox on its own MQTT connection (client id
/// `{mqtt.client_id}-out`), so that predictions never share rumqttc's request
/// channel or in-flight window with the ingest connection's acknowledgements.
/// Takes from the outbox only while connected; while the broker is away the
/// outbox fills and the predictor counts the overflow. It speaks the
/// protocol of `choice`, which the ingest connection's fallback to MQTT
/// 3.1.1 changes (or this connection's own, whichever is refused first).
pub struct Publisher {
    pub link: Link,
    /// How to open the link again in another protocol (the fallback).
    pub spec: LinkSpec,
    pub choice: Arc<ProtocolChoice>,
    pub rx: mpsc::Receiver<Outgoing>,
    pub stats: Arc<Stats>,
    pub backoff: Backoff,
}

impl Publisher {
    /// Runs until the outbox closes or `shutdown` is cancelled; predictions
    /// still in the outbox then are dropped (they can be recomputed).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut connected = false;
        let mut spoke_v5 = false;
        let mut pending: Option<Outgoing> = None;
        let mut last_invalid = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = self.link.poll() => match ev {
                    Ok(LinkEvent::ConnAck { .. }) => {
                        connected = true;
                        spoke_v5 |= self.link.protocol() == crate::ingest::mqtt_config::Protocol::V5;
                        self.choice.connected(self.link.protocol());
                        self.backoff.reset();
                    }
                    Ok(LinkEvent::PubAck { refusal: None }) => {
                        self.stats.predictions_published.fetch_add(1, Relaxed);
                    }
                    Ok(LinkEvent::PubAck { refusal: Some(code) }) => {
                        tracing::debug!(reason_code = %code, "The broker refused a prediction.");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.choice.observe(&e);
                        if !connected && !spoke_v5 && e.refuses_v5() {
                            self.choice.fall_back(&e);
                        }
                        connected = false;
                        if let Ok(true) = self.spec.follow(&mut self.link, &self.choice) {
                            continue;
                        }
                        let delay = self.backoff.next_delay();
                        tracing::debug!(error = %e, reason_code = ?e.reason_code(), delay_ms = delay.as_millis() as u64, "Prediction link down; backing off.");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.cancelled() => break,
                        }
                    }
                },
                m = self.rx.recv(), if connected && pending.is_none() => match m {
                    Some(m) => pending = Some(m),
                    None => break,
                },
            }
            if let Some(m) = pending.take() {
                if !crate::ingest::mqtt::valid_topic_name(&m.topic) {
                    // rumqttc refuses it on every try, as it would a full
                    // channel: kept, it would stop every later prediction.
                    self.stats.predictions_dropped.fetch_add(1, Relaxed);
                    if last_invalid
                        .is_none_or(|t: std::time::Instant| t.elapsed() >= INVALID_TOPIC_LOG)
                    {
                        last_invalid = Some(std::time::Instant::now());
                        tracing::warn!(topic = ?m.topic, "A prediction's topic is not a valid MQTT topic name (its device id holds + # or NUL); dropped and counted in predictions_dropped (logged at most every 10 s).");
                    }
                    continue;
                }
                // A full request channel keeps the message until the event
                // loop has made room.
                if self
                    .link
                    .try_publish(&m.topic, m.payload.clone().into())
                    .is_err()
                {
                    pending = Some(m);
                }
            }
        }
        self.link.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), self.link.poll()).await;
    }
}

/// How often a prediction dropped for its topic is logged.
const INVALID_TOPIC_LOG: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::Sample;
    use crate::learn::{self, Trigger};
    use crate::store::Store;

    #[tokio::test]
    async fn full_outbox_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        let pipeline = cfg.pipelines[0].settings();
        // Toy data: class 1 when Light is high.
        let samples: Vec<Sample> = (0..40)
            .map(|i| Sample {
                timestamp_ms: i,
                device: "d".into(),
                features: vec![20.0, 30.0, (i % 2) as f32 * 500.0, 600.0, 0.004],
                label: Some(((i % 2) as u8).to_string()),
            })
            .collect();
        let trained =
            learn::train_version(&pipeline, &samples, None, 1, Trigger::Manual, None, || {
                false
            })
            .unwrap();
        let registry = Arc::new(Registry::new(["occupancy"]));
        registry.promote(&store, trained).unwrap();

        let stats = Arc::new(Stats::default());
        let (job_tx, job_rx) = mpsc::channel(4);
        let (outbox_tx, mut outbox_rx) = mpsc::channel(2);
        let predictor = Predictor {
            registry,
            pipelines: vec![pipeline],
            rx: job_rx,
            outbox: outbox_tx,
            stats: stats.clone(),
            recent: RecentPredictions::default(),
            anomaly: AnomalyScorers::default(),
            windows: HashMap::new(),
        };
        let recent = predictor.recent.clone();
        let unlabelled: Vec<(u64, Sample)> = samples
            .iter()
            .take(5)
            .map(|s| {
                (
                    s.timestamp_ms as u64,
                    Sample {
                        label: None,
                        ..s.clone()
                    },
                )
            })
            .collect();
        job_tx
            .send(PredictJob {
                pipeline: "occupancy".into(),
                samples: unlabelled,
            })
            .await
            .unwrap();
        drop(job_tx);
        predictor.run().await;
        assert_eq!(stats.predictions_made.load(Relaxed), 5);
        assert_eq!(
            stats.predictions_dropped.load(Relaxed),
            3,
            "capacity 2: three overflow"
        );
        let first = outbox_rx.recv().await.unwrap();
        assert_eq!(first.topic, "edgeloop/occupancy/predictions/d");
        let msg: PredictionMessage = serde_json::from_slice(&first.payload).unwrap();
        assert_eq!(
            (msg.sample_id, msg.model_version, msg.label.as_str()),
            (0, 1, "0")
        );
        // The dashboard's ring holds all five, dropped ones too, newest first.
        let kept = recent.newest_first();
        assert_eq!(kept.len(), 5);
        assert_eq!(kept[4].1, first.payload);
    }
}
