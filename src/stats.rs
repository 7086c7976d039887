//! Counters shared by the components (lock-free). Served as JSON by
//! `GET /v1/stats` and in Prometheus text by `GET /metrics`
//! ([`crate::metrics`]). Labels have low cardinality: reasons, pipelines,
//! never device ids.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Why (part of) a payload could not be used. Counted per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not parseable as JSON even leniently. Rejected.
    NotJson,
    /// JSON, but not an object. Rejected.
    NotObject,
    /// Payload larger than `mqtt.ingest_max_payload_bytes`. Rejected.
    TooLarge,
    /// No feature could be read. Rejected.
    NoFeatures,
    /// A feature field is absent or `null`. Kept as missing.
    MissingFeature,
    /// A feature field is not a number (`"n/a"`, an object). Kept as missing.
    NonNumeric,
    /// A feature is NaN or infinite: a bare `NaN`/`Infinity` token, the
    /// string `"NaN"` or `"inf"`, a number beyond `f32` (`1e300`) or beyond
    /// `f64` (`1e400`, which strict JSON parsers refuse). Kept as missing.
    NonFinite,
    /// The label is not a string, number or boolean, is a bare NaN/Infinity,
    /// or is not one of the pipeline's declared `classes`; for a regression
    /// pipeline, it is not a finite number or numeric string. The sample is
    /// kept unlabelled.
    BadLabel,
    /// The timestamp is absent or unreadable. The arrival time is used.
    BadTimestamp,
    /// A late label's `sample_id_field` is present but not a sample id (a
    /// non-negative integer, or a string holding one: `-1`, `1.5`, `"x"`).
    /// The label is rejected (not matched by device and time instead).
    BadSampleId,
    /// The device id (the topic level `device_level`) is longer than
    /// [`crate::ingest::decode::MAX_DEVICE_BYTES`]. Rejected.
    DeviceTooLong,
}

impl Reason {
    /// Every reason, for exporting counters.
    pub const ALL: [Reason; 11] = [
        Reason::NotJson,
        Reason::NotObject,
        Reason::TooLarge,
        Reason::NoFeatures,
        Reason::MissingFeature,
        Reason::NonNumeric,
        Reason::NonFinite,
        Reason::BadLabel,
        Reason::BadTimestamp,
        Reason::BadSampleId,
        Reason::DeviceTooLong,
    ];

    /// The reason's stable name (metric label, JSON key).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotJson => "not_json",
            Reason::NotObject => "not_object",
            Reason::TooLarge => "too_large",
            Reason::NoFeatures => "no_features",
            Reason::MissingFeature => "missing_feature",
            Reason::NonNumeric => "non_numeric",
            Reason::NonFinite => "non_finite",
            Reason::BadLabel => "bad_label",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::BadSampleId => "bad_sample_id",
            Reason::DeviceTooLong => "device_too_long",
        }
    }

    /// Whether this reason rejects the whole payload.
    pub fn rejects(self) -> bool {
        matches!(
            self,
            Reason::NotJson
                | Reason::NotObject
                | Reason::TooLarge
                | Reason::NoFeatures
                | Reason::BadSampleId
                | Reason::DeviceTooLong
        )
    }
}

/// Why a model was refused at intake (`crate::serve::intake::IntakeError::reason`),
/// in the order the stats list them.
pub const MODEL_REFUSAL_REASONS: [&'static str; 15] = [
    "unknown_pipeline",
    "oversized",
    "bad_sha256",
    "truncated",
    "not_onnx",
    "unsupported_operator",
    "unsupported_opset",
    "wrong_width",
    "feature_order",
    "wrong_task",
    "wrong_classes",
    "external_data",
    "engine_refused",
    "bad_output",
    "store",
];

/// Why a fleet model was not adopted (`crate::serve::fleet::REFUSALS`).
pub const FLEET_REFUSAL_REASONS: [&str; 7] = [
    "envelope",
    "bad_sha256",
    "oversized",
    "intake",
    "judged",
    "unjudged",
    "busy",
];

/// Daemon-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// MQTT publish packets received.
    pub messages_received: AtomicU64,
    /// Samples stored (new, after dedup), all pipelines.
    pub samples_stored: AtomicU64,
    /// Messages already stored (QoS 1 redeliveries).
    pub duplicates: AtomicU64,
    /// Messages rejected whole (not JSON, too large, …).
    pub samples_rejected: AtomicU64,
    /// Stored samples that had at least one problem (salvaged).
    pub samples_salvaged: AtomicU64,
    /// Messages on a topic that no pipeline's filter matches: acknowledged,
    /// not stored (the topics a covering subscription brings beyond the
    /// filters it was joined from, `ingest::mqtt_config::subscription_plan`).
    pub unrouted: AtomicU64,
    /// Problems by [`Reason`], in `Reason::ALL` order.
    problems: [AtomicU64; Reason::ALL.len()],
    /// Late labels applied to a stored sample.
    pub labels_matched: AtomicU64,
    /// Late labels that matched no stored sample.
    pub labels_unmatched: AtomicU64,
    /// Late-label messages that could not be read.
    pub labels_rejected: AtomicU64,
    /// Durable commits of sample batches.
    pub commits: AtomicU64,
    /// Messages the writer is done with (committed, or rejected within a
    /// committed batch); `messages_received - messages_handled` are waiting.
    pub messages_handled: AtomicU64,
    /// Acknowledgements written to the broker.
    pub acks_sent: AtomicU64,
    /// Publishes received and held by the MQTT source while the writer's
    /// channel is full (a gauge).
    pub source_waiting: AtomicU64,
    /// When the last commit finished, ms since the Unix epoch (0: none yet).
    pub last_commit_ms: AtomicI64,
    /// When a long read inside a commit last moved on, ms since the Unix
    /// epoch (0: none): a pipeline's dedup index, read from its stored
    /// samples by its first commit after a start ([`crate::store::Store::set_progress`]).
    /// Progress for the stall verdict, as a commit is.
    pub store_progress_ms: AtomicI64,
    /// When the MQTT connection was lost, ms since the Unix epoch; 0 while
    /// connected (and before the first connection attempt fails).
    pub mqtt_disconnected_since_ms: AtomicI64,
    /// Whether the store refuses writes now (disk below `store.min_free_bytes`
    /// or a failed commit); the writer then holds its batch unacknowledged.
    pub store_refusing: AtomicBool,
    /// Why the store refuses writes (empty when it does not).
    pub store_refusal: std::sync::Mutex<String>,
    /// Commits refused or failed (each retried later).
    pub commits_refused: AtomicU64,
    /// Samples deleted by retention.
    pub retention_deleted: AtomicU64,
    /// Predictions made for unlabelled samples.
    pub predictions_made: AtomicU64,
    /// Rows predicted for `POST /v1/pipelines/{name}/predict` requests.
    pub http_predictions: AtomicU64,
    /// Predictions published over MQTT.
    pub predictions_published: AtomicU64,
    /// Predictions dropped because the outbox was full.
    pub predictions_dropped: AtomicU64,
    /// Devices whose serving-time window or temporal history was evicted to
    /// make room for a new device (`[pipelines.windows] max_devices`,
    /// `[pipelines.temporal] max_devices`).
    pub windows_evicted: AtomicU64,
    /// Trainings that ended in a new served version.
    pub trainings: AtomicU64,
    /// Trainings that failed (too few classes, …).
    pub trainings_failed: AtomicU64,
    /// MQTT connections made (ConnAck received).
    pub mqtt_connects: AtomicU64,
    /// MQTT connection errors.
    pub mqtt_errors: AtomicU64,
    /// Models imported (upload or models directory; `crate::serve::intake`).
    pub models_imported: AtomicU64,
    /// Models refused at intake, by reason (`IntakeError::REASONS` order).
    models_refused: [AtomicU64; MODEL_REFUSAL_REASONS.len()],
    /// Versions published to the fleet (`crate::serve::fleet`).
    pub fleet_published: AtomicU64,
    /// Models received from other daemons (well-formed, before judging).
    pub fleet_received: AtomicU64,
    /// Fleet models that won on this daemon's holdout and serve.
    pub fleet_adopted: AtomicU64,
    /// Fleet models skipped as already stored here (the same SHA-256: a
    /// retained model received again after a reconnect or a restart).
    pub fleet_known: AtomicU64,
    /// Fleet models refused, by reason (`FLEET_REFUSAL_REASONS` order).
    fleet_refused: [AtomicU64; FLEET_REFUSAL_REASONS.len()],
    /// Readings alarmed by either rule of `[pipelines.anomaly]`.
    pub anomaly_alarms: AtomicU64,
    /// Alarms by rule (the trees' threshold; the residual test), a reading
    /// where both fired counted in both; and the level rule's (alarms only
    /// it raised: where another fired too the alarm is that rule's).
    pub anomaly_trees_alarms: AtomicU64,
    pub anomaly_residual_alarms: AtomicU64,
    pub anomaly_level_alarms: AtomicU64,
    /// Alarms that opened an episode (`learn::anomaly::Scored::episode`).
    pub anomaly_episodes: AtomicU64,
    /// Devices whose anomaly rules were forgotten to make room for a new
    /// device (`[pipelines.anomaly] max_devices`).
    pub anomaly_evicted: AtomicU64,
    /// HTTP requests refused for want of the bearer token (401).
    pub http_unauthorized: AtomicU64,
    /// HTTP requests refused for a wrong bearer token (403).
    pub http_forbidden: AtomicU64,
    /// Latency histograms (prediction, training).
    pub durations: Durations,
    /// Anomaly scores of the readings the daemon predicts.
    pub anomaly_scores: AnomalyScores,
}

/// Anomaly scores in [0, 1] (`[pipelines.anomaly]`, Half-Space Trees) of
/// the readings the daemon predicts, by pipeline (`edgeloop_anomaly_score`
/// in `GET /metrics`). Buckets 0.05 · k, k = 1..=20: a score in the first
/// window is 0.
#[derive(Debug)]
pub struct AnomalyScores(pub Histograms<PipelineLabels>);

impl Default for AnomalyScores {
    fn default() -> Self {
        fn scores() -> Histogram {
            Histogram::new((1..=20).map(|k| f64::from(k) / 20.0))
        }
        Self(Family::new_with_constructor(scores))
    }
}

/// Labels `[("pipeline", name), ("path", "http" | "mqtt")]`.
pub type PathLabels = [(&'static str, String); 2];
/// Labels `[("pipeline", name)]`.
pub type PipelineLabels = [(&'static str, String); 1];
/// A histogram per label set, all with the same buckets.
pub type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Duration histograms, seconds, by pipeline (Prometheus `_bucket`, `_sum`,
/// `_count` in `GET /metrics`).
#[derive(Debug)]
pub struct Durations {
    /// One `predict_proba` call: a batch of MQTT samples (`path="mqtt"`) or
    /// one HTTP request's rows (`path="http"`). Buckets 100 µs · 2^k, k < 16
    /// (up to 3.3 s).
    pub prediction: Histograms<PathLabels>,
    /// One training run that produced a version (the card's `training_ms`).
    /// Buckets 10 ms · 2^k, k < 20 (up to 87 min).
    pub training: Histograms<PipelineLabels>,
}

impl Default for Durations {
    fn default() -> Self {
        fn prediction() -> Histogram {
            Histogram::new(exponential_buckets(1e-4, 2.0, 16))
        }
        fn training() -> Histogram {
            Histogram::new(exponential_buckets(1e-2, 2.0, 20))
        }
        Self {
            prediction: Family::new_with_constructor(prediction),
            training: Family::new_with_constructor(training),
        }
    }
}

impl Stats {
    /// Counts one problem.
    pub fn count_problem(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.problems[i].fetch_add(1, Relaxed);
        }
    }

    /// Problems counted so far for `reason`.
    pub fn problems(&self, reason: Reason) -> u64 {
        Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.problems[i].load(Relaxed))
    }

    /// Counts one imported model.
    pub fn count_model_imported(&self) {
        self.models_imported.fetch_add(1, Relaxed);
    }

    /// Counts one model refused at intake for `reason`
    /// (an `IntakeError::reason`).
    pub fn count_model_refused(&self, reason: &str) {
        if let Some(i) = MODEL_REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.models_refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts one fleet model refused for `reason` (one of
    /// [`FLEET_REFUSAL_REASONS`]).
    pub fn count_fleet_refused(&self, reason: &str) {
        if let Some(i) = FLEET_REFUSAL_REASONS.iter().position(|r| *r == reason) {
            self.fleet_refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Fleet models refused so far, by reason.
    pub fn fleet_refused(&self) -> BTreeMap<String, u64> {
        FLEET_REFUSAL_REASONS
            .iter()
            .zip(&self.fleet_refused)
            .map(|(r, n)| (r.to_string(), n.load(Relaxed)))
            .collect()
    }

    /// Records one prediction call of `pipeline` over `path` ("http" or
    /// "mqtt") that took `seconds`.
    pub fn observe_prediction(&self, pipeline: &str, path: &'static str, seconds: f64) {
        self.durations
            .prediction
            .get_or_create(&[
                ("pipeline", pipeline.to_string()),
                ("path", path.to_string()),
            ])
            .observe(seconds);
    }

    /// Records the anomaly scores of readings of `pipeline` (the
    /// histogram is looked up once, not once per reading).
    pub fn observe_anomaly_scores(&self, pipeline: &str, scores: impl IntoIterator<Item = f64>) {
        let histogram = self
            .anomaly_scores
            .0
            .get_or_create(&[("pipeline", pipeline.to_string())]);
        for score in scores {
            histogram.observe(score);
        }
    }

    /// Records one training run of `pipeline` that took `seconds`.
    pub fn observe_training(&self, pipeline: &str, seconds: f64) {
        self.durations
            .training
            .get_or_create(&[("pipeline", pipeline.to_string())])
            .observe(seconds);
    }

    /// A snapshot for JSON.
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Relaxed);
        StatsSnapshot {
            messages_received: l(&self.messages_received),
            samples_stored: l(&self.samples_stored),
            duplicates: l(&self.duplicates),
            samples_rejected: l(&self.samples_rejected),
            samples_salvaged: l(&self.samples_salvaged),
            unrouted: l(&self.unrouted),
            problems: Reason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), self.problems(*r)))
                .collect(),
            labels_matched: l(&self.labels_matched),
            labels_unmatched: l(&self.labels_unmatched),
            labels_rejected: l(&self.labels_rejected),
            commits: l(&self.commits),
            messages_handled: l(&self.messages_handled),
            commits_refused: l(&self.commits_refused),
            store_refusing: self.store_refusing.load(Relaxed),
            retention_deleted: l(&self.retention_deleted),
            predictions_made: l(&self.predictions_made),
            http_predictions: l(&self.http_predictions),
            predictions_published: l(&self.predictions_published),
            predictions_dropped: l(&self.predictions_dropped),
            windows_evicted: l(&self.windows_evicted),
            trainings: l(&self.trainings),
            trainings_failed: l(&self.trainings_failed),
            mqtt_connects: l(&self.mqtt_connects),
            mqtt_errors: l(&self.mqtt_errors),
            models_imported: l(&self.models_imported),
            models_refused: MODEL_REFUSAL_REASONS
                .iter()
                .zip(&self.models_refused)
                .map(|(r, n)| (r.to_string(), l(n)))
                .collect(),
            fleet_published: l(&self.fleet_published),
            fleet_received: l(&self.fleet_received),
            fleet_adopted: l(&self.fleet_adopted),
            fleet_known: l(&self.fleet_known),
            fleet_refused: self.fleet_refused(),
        }
    }
}

/// Plain-number copy of [`Stats`].
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct StatsSnapshot {
    pub messages_received: u64,
    pub samples_stored: u64,
    pub duplicates: u64,
    pub samples_rejected: u64,
    pub samples_salvaged: u64,
    pub unrouted: u64,
    pub problems: BTreeMap<String, u64>,
    pub labels_matched: u64,
    pub labels_unmatched: u64,
    pub labels_rejected: u64,
    pub commits: u64,
    #[serde(default)]
    pub messages_handled: u64,
    #[serde(default)]
    pub commits_refused: u64,
    #[serde(default)]
    pub store_refusing: bool,
    pub retention_deleted: u64,
    pub predictions_made: u64,
    #[serde(default)]
    pub http_predictions: u64,
    pub predictions_published: u64,
    pub predictions_dropped: u64,
    pub windows_evicted: u64,
    pub trainings: u64,
    pub trainings_failed: u64,
    pub mqtt_connects: u64,
    pub mqtt_errors: u64,
    #[serde(default)]
    pub models_imported: u64,
    /// Models refused at intake, by reason.
    #[serde(default)]
    pub models_refused: BTreeMap<String, u64>,
    /// The fleet (`[fleet]`): versions published, models received from
    /// other daemons, adopted (serving), and refused by reason.
    #[serde(default)]
    pub fleet_published: u64,
    #[serde(default)]
    pub fleet_received: u64,
    #[serde(default)]
    pub fleet_adopted: u64,
    #[serde(default)]
    pub fleet_known: u64,
    #[serde(default)]
    pub fleet_refused: BTreeMap<String, u64>,
}
