//! Prometheus metrics for `GET /metrics`, in the Prometheus text exposition
//! format 0.0.4 (<https://prometheus.io/docs/instrumenting/exposition_formats/>),
//! encoded by the `prometheus-client` crate.
//!
//! Nothing is counted twice: the counters are [`Stats`]'s atomics (the same
//! numbers as `GET /v1/stats`), read at scrape time by one collector together
//! with the gauges (store size, queue depths, serving versions, concept
//! drift); the duration histograms are [`Stats::durations`]. Labels have low
//! cardinality: `pipeline`, `reason`, `outcome`, `path`, `queue`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `edgeloop_messages_received_total` | counter | |
//! | `edgeloop_messages_rejected_total` | counter | |
//! | `edgeloop_payload_problems_total` | counter | `reason` (`not_json`, `not_object`, `too_large`, `no_features` reject the message; the others are salvaged) |
//! | `edgeloop_messages_duplicate_total`, `edgeloop_messages_unrouted_total`, `edgeloop_samples_salvaged_total` | counter | |
//! | `edgeloop_samples_stored_total`, `edgeloop_store_commits_total`, `edgeloop_retention_deleted_total` | counter | |
//! | `edgeloop_labels_total` | counter | `outcome` (`matched`, `unmatched`, `rejected`) |
//! | `edgeloop_store_size_bytes` | gauge | |
//! | `edgeloop_queue_depth`, `edgeloop_queue_capacity` | gauge | `queue` (`ingest`, `predict`, `outbox`) |
//! | `edgeloop_predictions_total` | counter | `path` (`mqtt`, `http`) |
//! | `edgeloop_predictions_published_total`, `edgeloop_predictions_dropped_total` | counter | |
//! | `edgeloop_prediction_duration_seconds` | histogram | `pipeline`, `path` |
//! | `edgeloop_model_version` | gauge | `pipeline` (absent before the first model) |
//! | `edgeloop_trainings_total` | counter | `outcome` (`completed`, `failed`) |
//! | `edgeloop_fleet_models_total` | counter | `outcome` (`published`, `received`, `adopted`, `known` (already stored, skipped), `refused_{reason}`: `crate::serve::fleet::REFUSALS`) |
//! | `edgeloop_training_duration_seconds` | histogram | `pipeline` |
//! | `edgeloop_anomaly_score` | histogram | `pipeline` (each reading's Half-Space Trees score, labelled ones too; buckets 0.05, 0.10, …, 1.0) |
//! | `edgeloop_anomaly_alarms_total` | counter | (readings alarmed by either rule of `[pipelines.anomaly]`) |
//! | `edgeloop_anomaly_rule_alarms_total` | counter | `rule` (`trees`, `residual`: alarms by rule, a reading where both fired counted in both; `level`: the level rule's, where neither fired) |
//! | `edgeloop_anomaly_episodes_total` | counter | (alarms more than `episode_gap` readings after the previous one, `learn::anomaly::Scored::episode`) |
//! | `edgeloop_anomaly_devices_evicted_total` | counter | (devices whose residual and level rules were forgotten for a new device, `[pipelines.anomaly] max_devices`) |
//! | `edgeloop_drift_error_rate`, `edgeloop_drift_mean_abs_error` | gauge | `pipeline` (the serving version's error on the labelled samples scored since it started serving) |
//! | `edgeloop_drift_scored_samples` | gauge | `pipeline` |
//! | `edgeloop_drift_alarms_total` | counter | `pipeline` (every alarm kept in the store) |
//! | `edgeloop_data_drift_alarms_total`, `edgeloop_anomaly_alarm_events_total` | counter | `pipeline` (data-drift alarms; anomaly alarms on the timeline, one per episode of alarmed readings, `learn::anomaly::Scored::episode`, at most one a minute; kept in the store) |
//! | `edgeloop_mqtt_connects_total`, `edgeloop_mqtt_errors_total` | counter | |
//! | `edgeloop_mqtt_connected` | gauge | (1 while the ingest connection is up) |
//! | `edgeloop_healthy` | gauge | (1 when `/healthz` answers 200) |
//! | `edgeloop_unhealthy` | gauge | `reason` (`ingest_stalled`, `mqtt_disconnected`, `store_refusing_writes`: 1 while it holds) |
//! | `edgeloop_ingest_seconds_since_commit` | gauge | (absent before the first commit) |
//! | `edgeloop_ingest_waiting` | gauge | (messages received, not yet handled by the writer) |
//! | `edgeloop_store_commits_refused_total` | counter | (commits refused or failed, each retried) |
//! | `edgeloop_store_free_bytes` | gauge | (free space on the store's file system) |

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as PromRegistry;

use crate::ingest::decode::Reason;
use crate::monitor::retrain::DriftBoard;
use crate::serve::registry::Registry;
use crate::stats::Stats;
use crate::store::Store;

/// The `Content-Type` of the answer (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A bounded channel whose depth is exported as `edgeloop_queue_depth`.
#[derive(Clone)]
pub struct Queue {
    /// The `queue` label.
    pub name: &'static str,
    /// Capacity, items.
    pub capacity: usize,
    /// Items waiting now; `None` once the channel is closed.
    pub depth: Arc<dyn Fn() -> Option<usize> + Send + Sync>,
}

impl Queue {
    /// Watches a tokio mpsc channel through a weak sender, which does not keep
    /// the channel open (closing it is how the components stop).
    pub fn of<T: Send + 'static>(name: &'static str, tx: &tokio::sync::mpsc::Sender<T>) -> Self {
        let weak = tx.downgrade();
        Self {
            name,
            capacity: tx.max_capacity(),
            depth: Arc::new(move || {
                let tx = weak.upgrade()?;
                Some(tx.max_capacity() - tx.capacity())
            }),
        }
    }
}

/// What the scrape reads.
pub struct Sources {
    /// Counters and duration histograms.
    pub stats: Arc<Stats>,
    /// Its file's size is `edgeloop_store_size_bytes`.
    pub store: Arc<Store>,
    /// Serving versions (`edgeloop_model_version`).
    pub registry: Arc<Registry>,
    /// Concept-drift state per pipeline (`edgeloop_drift_*`).
    pub drift: DriftBoard,
    /// Configured pipeline names.
    pub pipelines: Vec<String>,
    pub queues: Vec<Queue>,
    /// `edgeloop_healthy`, `edgeloop_unhealthy`, the ingest gauges.
    pub health: Arc<crate::health::HealthMonitor>,
    /// The `instance` label of every metric (`daemon.instance`; none when
    /// empty).
    pub instance: String,
}

/// The metrics registry of one daemon. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<PromRegistry>,
}

impl Metrics {
    /// Registers the scrape-time collector over `sources`, the duration
    /// histograms of `sources.stats` and its anomaly-score histogram.
    pub fn new(sources: Sources) -> Self {
        let instance = (!sources.instance.is_empty()).then(|| {
            (
                std::borrow::Cow::Borrowed("instance"),
                std::borrow::Cow::Owned(sources.instance.clone()),
            )
        });
        let mut registry = PromRegistry::with_labels(instance.into_iter());
        registry.register(
            "edgeloop_prediction_duration_seconds",
            "Duration of one prediction call (an MQTT batch or an HTTP request), seconds",
            sources.stats.durations.prediction.clone(),
        );
        registry.register(
            "edgeloop_training_duration_seconds",
            "Duration of one training run that produced a version, seconds",
            sources.stats.durations.training.clone(),
        );
        registry.register(
            "edgeloop_anomaly_score",
            "Anomaly score in [0, 1] of each predicted reading (Half-Space Trees; buckets 0.05 apart)",
            sources.stats.anomaly_scores.0.clone(),
        );
        registry.register_collector(Box::new(Scrape(sources)));
        Self {
            registry: Arc::new(registry),
        }
    }

    /// The whole exposition, Prometheus text format 0.0.4.
    ///
    /// # Errors
    /// Only if formatting fails (it writes to a `String`).
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

struct Scrape(Sources);

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: &AtomicU64) -> fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v.load(Relaxed)).encode(m)
}

/// One counter family: `(label value, count)` under `label`.
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(String, u64)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, v) in values {
        let labels = [(label, value.as_str())];
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family: `(label value, value)` under `label`.
fn gauges<N: prometheus_client::encoding::EncodeGaugeValue + Copy + fmt::Debug>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[(String, N)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in values {
        let labels = [(label, value.as_str())];
        ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let st = &s.stats;
        let e = &mut enc;
        counter(
            e,
            "edgeloop_messages_received",
            "MQTT publish packets received",
            &st.messages_received,
        )?;
        counter(
            e,
            "edgeloop_messages_rejected",
            "Messages rejected whole (not JSON, not an object, too large, no feature)",
            &st.samples_rejected,
        )?;
        let problems: Vec<(String, u64)> = Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_string(), st.problems(*r)))
            .collect();
        counters(
            e,
            "edgeloop_payload_problems",
            "Problems found in payloads, by reason",
            "reason",
            &problems,
        )?;
        counter(
            e,
            "edgeloop_messages_duplicate",
            "Messages already stored (QoS 1 redeliveries)",
            &st.duplicates,
        )?;
        counter(
            e,
            "edgeloop_messages_unrouted",
            "Messages on a topic no pipeline matches",
            &st.unrouted,
        )?;
        counter(
            e,
            "edgeloop_samples_salvaged",
            "Stored samples that had at least one problem",
            &st.samples_salvaged,
        )?;
        counter(
            e,
            "edgeloop_samples_stored",
            "Samples stored (new, after dedup), all pipelines",
            &st.samples_stored,
        )?;
        counter(
            e,
            "edgeloop_store_commits",
            "Durable commits of sample batches",
            &st.commits,
        )?;
        counter(
            e,
            "edgeloop_anomaly_alarms",
            "Predicted readings alarmed by either anomaly rule",
            &st.anomaly_alarms,
        )?;
        counters(
            e,
            "edgeloop_anomaly_rule_alarms",
            "Anomaly alarms by rule (trees: the score's threshold; residual: a feature's residual z, both counted where both fired; level: a short run's level distance, where neither fired)",
            "rule",
            &[
                ("trees".into(), st.anomaly_trees_alarms.load(Relaxed)),
                ("residual".into(), st.anomaly_residual_alarms.load(Relaxed)),
                ("level".into(), st.anomaly_level_alarms.load(Relaxed)),
            ],
        )?;
        counter(
            e,
            "edgeloop_anomaly_episodes",
            "Anomaly alarms that opened an episode (more than episode_gap readings after the previous alarm)",
            &st.anomaly_episodes,
        )?;
        counter(
            e,
            "edgeloop_anomaly_devices_evicted",
            "Devices whose anomaly rules were forgotten to make room for a new device ([pipelines.anomaly] max_devices)",
            &st.anomaly_evicted,
        )?;
        counters(
            e,
            "edgeloop_http_auth_refused",
            "HTTP requests refused by the bearer token check, by status (401: none, 403: wrong)",
            "status",
            &[
                ("401".into(), st.http_unauthorized.load(Relaxed)),
                ("403".into(), st.http_forbidden.load(Relaxed)),
            ],
        )?;
        counter(
            e,
            "edgeloop_retention_deleted",
            "Samples deleted by retention",
            &st.retention_deleted,
        )?;
        let l = |a: &AtomicU64| a.load(Relaxed);
        counters(
            e,
            "edgeloop_labels",
            "Late labels, by outcome",
            "outcome",
            &[
                ("matched".into(), l(&st.labels_matched)),
                ("unmatched".into(), l(&st.labels_unmatched)),
                ("rejected".into(), l(&st.labels_rejected)),
            ],
        )?;
        let h = s.health.check();
        let gauge = |e: &mut DescriptorEncoder, name: &str, help: &str, v: f64| -> fmt::Result {
            ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
        };
        gauge(
            e,
            "edgeloop_healthy",
            "1 when GET /healthz answers 200",
            f64::from(u8::from(h.is_ok())),
        )?;
        gauges(
            e,
            "edgeloop_unhealthy",
            "1 while this reason makes the daemon unhealthy",
            "reason",
            &[
                "ingest_stalled",
                "mqtt_disconnected",
                "store_refusing_writes",
            ]
            .map(|r| (r.to_string(), u64::from(h.reasons.contains(&r)))),
        )?;
        gauge(
            e,
            "edgeloop_mqtt_connected",
            "1 while the ingest MQTT connection is up",
            f64::from(u8::from(h.mqtt_connected)),
        )?;
        gauge(
            e,
            "edgeloop_ingest_waiting",
            "Messages received and not yet handled by the writer",
            h.ingest_waiting as f64,
        )?;
        if let Some(secs) = h.seconds_since_commit {
            gauge(
                e,
                "edgeloop_ingest_seconds_since_commit",
                "Seconds since the last commit of received messages",
                secs,
            )?;
        }
        ConstCounter::new(st.commits_refused.load(Relaxed)).encode(e.encode_descriptor(
            "edgeloop_store_commits_refused",
            "Commits refused (free space below store.min_free_bytes) or failed, each retried",
            None,
            MetricType::Counter,
        )?)?;
        if let Ok(free) = s.store.free_bytes() {
            gauge(
                e,
                "edgeloop_store_free_bytes",
                "Free space on the store's file system, bytes",
                free as f64,
            )?;
        }
        let size = std::fs::metadata(s.store.path()).map_or(0, |m| m.len());
        ConstGauge::new(size).encode(e.encode_descriptor(
            "edgeloop_store_size_bytes",
            "Size of the store file on disk, bytes",
            None,
            MetricType::Gauge,
        )?)?;
        let depths: Vec<(String, u64)> = s
            .queues
            .iter()
            .map(|q| (q.name.to_string(), (q.depth)().unwrap_or(0) as u64))
            .collect();
        gauges(
            e,
            "edgeloop_queue_depth",
            "Items waiting in a bounded queue",
            "queue",
            &depths,
        )?;
        let caps: Vec<(String, u64)> = s
            .queues
            .iter()
            .map(|q| (q.name.to_string(), q.capacity as u64))
            .collect();
        gauges(
            e,
            "edgeloop_queue_capacity",
            "Capacity of a bounded queue",
            "queue",
            &caps,
        )?;
        counters(
            e,
            "edgeloop_predictions",
            "Predictions made, by path (mqtt: unlabelled samples; http: rows of predict requests)",
            "path",
            &[
                ("mqtt".into(), l(&st.predictions_made)),
                ("http".into(), l(&st.http_predictions)),
            ],
        )?;
        counter(
            e,
            "edgeloop_predictions_published",
            "Predictions published over MQTT",
            &st.predictions_published,
        )?;
        counter(
            e,
            "edgeloop_predictions_dropped",
            "Predictions dropped because a queue was full",
            &st.predictions_dropped,
        )?;
        let versions: Vec<(String, u64)> = s
            .pipelines
            .iter()
            .filter_map(|p| Some((p.clone(), u64::from(s.registry.get(p)?.version))))
            .collect();
        gauges(
            e,
            "edgeloop_model_version",
            "Model version serving, by pipeline",
            "pipeline",
            &versions,
        )?;
        counters(
            e,
            "edgeloop_trainings",
            "Training runs, by outcome",
            "outcome",
            &[
                ("completed".into(), l(&st.trainings)),
                ("failed".into(), l(&st.trainings_failed)),
            ],
        )?;
        let mut fleet = vec![
            ("published".to_string(), l(&st.fleet_published)),
            ("received".to_string(), l(&st.fleet_received)),
            ("adopted".to_string(), l(&st.fleet_adopted)),
            ("known".to_string(), l(&st.fleet_known)),
        ];
        fleet.extend(
            st.fleet_refused()
                .into_iter()
                .map(|(reason, n)| (format!("refused_{reason}"), n)),
        );
        counters(
            e,
            "edgeloop_fleet_models",
            "Models of the fleet ([fleet]): versions published, models received from other daemons, adopted, and refused by reason",
            "outcome",
            &fleet,
        )?;
        let board: Vec<(String, crate::monitor::retrain::ConceptDrift)> = match s.drift.lock() {
            Ok(b) => s
                .pipelines
                .iter()
                .filter_map(|p| Some((p.clone(), b.get(p)?.clone())))
                .collect(),
            Err(_) => Vec::new(),
        };
        let pick = |f: &dyn Fn(&crate::monitor::retrain::ConceptDrift) -> Option<f64>| -> Vec<(String, f64)> {
            board.iter().filter_map(|(p, d)| Some((p.clone(), f(d)?))).collect()
        };
        gauges(e, "edgeloop_drift_error_rate", "Serving classifier's error rate on the labelled samples scored since it started serving", "pipeline", &pick(&|d| d.error_rate))?;
        gauges(e, "edgeloop_drift_mean_abs_error", "Serving regressor's mean absolute error on the labelled samples scored since it started serving, label unit", "pipeline", &pick(&|d| d.mean_abs_error))?;
        gauges(
            e,
            "edgeloop_drift_scored_samples",
            "Labelled samples scored since the serving version started",
            "pipeline",
            &pick(&|d| Some(d.scored as f64)),
        )?;
        let alarms: Vec<(String, u64)> = board
            .iter()
            .map(|(p, d)| (p.clone(), d.alarms.len() as u64))
            .collect();
        counters(
            e,
            "edgeloop_drift_alarms",
            "Concept-drift alarms (kept in the store across restarts)",
            "pipeline",
            &alarms,
        )?;
        let other =
            |f: &dyn Fn(&crate::monitor::retrain::OtherAlarms) -> u64| -> Vec<(String, u64)> {
                board
                    .iter()
                    .map(|(p, d)| (p.clone(), f(&d.other)))
                    .collect()
            };
        counters(
            e,
            "edgeloop_data_drift_alarms",
            "Data-drift alarms: a window of new samples drifted from the training data (kept across restarts)",
            "pipeline",
            &other(&|o| o.data_drift_alarms),
        )?;
        counters(
            e,
            "edgeloop_anomaly_alarm_events",
            "Anomaly alarms on the timeline: episodes of alarmed readings, at most one a minute (kept across restarts)",
            "pipeline",
            &other(&|o| o.anomaly_alarms),
        )?;
        counter(
            e,
            "edgeloop_mqtt_connects",
            "MQTT connections made (ConnAck received)",
            &st.mqtt_connects,
        )?;
        counter(
            e,
            "edgeloop_mqtt_errors",
            "MQTT connection errors",
            &st.mqtt_errors,
        )?;
        Ok(())
    }
}
