//! The fleet (`[fleet]`): models shared over the broker and judged locally.
//!
//! Daemons that see the same kind of data learn from each other through the
//! broker they already use, with no coordinator:
//!
//! - **publish** (`[fleet] publish = true`): each version that starts serving
//!   a pipeline (a training, a promotion, an online snapshot; not a version
//!   adopted from the fleet, which its author already published) goes out on
//!   `{topic_prefix}/{pipeline}/models`, QoS 1, **retained** (a daemon that
//!   joins later receives the newest at once). The payload is the
//!   [envelope](encode): the ONNX bytes with a JSON [`Header`] (pipeline,
//!   version, SHA-256, size, the publishing daemon's instance id, its card).
//!   Over MQTT 5 the message also carries the content type [`CONTENT_TYPE`]
//!   and the user properties `pipeline`, `version`, `sha256` and `instance`;
//!   the envelope alone is authoritative.
//! - **adopt** (`[fleet] adopt = true`): the daemon subscribes to the models
//!   topic of each of its pipelines and hands every model another daemon
//!   published to its learner as an [`Offer`]. The learner
//!   (`crate::monitor::retrain`) refuses what intake refuses
//!   ([`crate::serve::intake::check_model`]: size, parse, operators, input
//!   width and feature order, task and classes, probe run), then judges the
//!   model as it judges its own challengers: the same holdout of its own
//!   labelled samples, the same older slice (the forgetting guard), the same
//!   rule and trivial baseline ([`crate::learn::judge_version`]). A winner is
//!   stored and serves, on probation beside the champion it replaced
//!   (`model.probation_labels`), like a challenger of an automatic training;
//!   a loser is stored with its card's decision and never serves. Either way
//!   the timeline and the card say where it came from
//!   ([`crate::learn::card::Imported`] with `source = "fleet"` and its
//!   [`crate::learn::card::FleetOrigin`]).
//!
//! What is refused never changes what serves; refusals are counted by
//! reason ([`REFUSALS`], `GET /v1/stats` `fleet_refused`, `/metrics`
//! `edgeloop_fleet_models_total{outcome}`) and logged at WARN. A model
//! already stored (the same SHA-256 for the pipeline) is skipped, so a
//! retained model received again at each reconnect is judged once.
//!
//! The fleet connection is the daemon's third (client id
//! `{mqtt.client_id}-flt`), in the protocol of the other two (MQTT 5, or
//! 3.1.1 after the broker refused 5: the envelope alone then); the models
//! are retained, so a daemon that was away receives the newest again when
//! it subscribes.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::ingest::link::{Link, LinkEvent, LinkSpec, ProtocolChoice};
use crate::ingest::mqtt_config::Protocol;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::registry::Registry;
use crate::stats::Stats;
use crate::store::Store;

/// `[fleet]`: model exchange between daemons over the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Publish each version that starts serving (retained, QoS 1).
    pub publish: bool,
    /// Take the models other daemons publish as challengers.
    pub adopt: bool,
    /// Topic prefix: models go on `{topic_prefix}/{pipeline}/models`.
    pub topic_prefix: String,
    /// Largest envelope published or accepted, bytes (ONNX plus header). The
    /// broker must allow it too: mosquitto's `message_size_limit` in
    /// `config/mosquitto.conf` is 4 MiB, the default here.
    pub max_bytes: u64,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            publish: false,
            adopt: false,
            topic_prefix: "edgeloop/fleet".into(),
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

impl FleetConfig {
    /// Whether the fleet connection runs at all.
    pub fn enabled(&self) -> bool {
        self.publish || self.adopt
    }

    /// The topic of `pipeline`'s models.
    pub fn models_topic(&self, pipeline: &str) -> String {
        format!("{}/{pipeline}/models", self.topic_prefix)
    }
}

/// MQTT 5 content type of a model message.
pub const CONTENT_TYPE: &str = "application/vnd.edgeloop.model+onnx";

/// First line of every envelope: the format and its version.
pub const MAGIC: &[u8] = b"edgeloop-model/1\n";

/// Longest header accepted, bytes (a card is a few KiB).
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// What a model message says about the model it carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub pipeline: String,
    /// Its version at the daemon that published it.
    pub version: u32,
    /// SHA-256 of the ONNX bytes, lowercase hex.
    pub sha256: String,
    /// Size of the ONNX bytes.
    pub bytes: u64,
    /// The publishing daemon (`daemon.instance`, else its `mqtt.client_id`).
    pub instance: String,
    /// When it was published, ms since the Unix epoch.
    pub published_ms: i64,
    /// Its model card at the publishing daemon (JSON), for the record.
    #[serde(default)]
    pub card: serde_json::Value,
}

/// A model received from another daemon, for the learner to judge.
#[derive(Debug, Clone)]
pub struct Offer {
    pub header: Header,
    pub onnx: Vec<u8>,
    pub topic: String,
}

/// Why a fleet model was not adopted, in the order the stats list them:
/// `envelope` (not an edgeloop model message: no magic, a header that is not
/// JSON, sizes that disagree, another pipeline's topic), `bad_sha256` (the
/// bytes do not hash to the header's SHA-256), `oversized` (beyond
/// `fleet.max_bytes`), `intake` (refused by intake's checks; the reason is
/// counted in `models_refused` too), `judged` (lost on this daemon's
/// holdout, or worse than the trivial baseline), `unjudged` (fewer
/// labelled samples than `model.min_labels`, what the pipeline's own first
/// model needs: the newest such model of each pipeline waits and is judged
/// once they have arrived),
/// `busy` (the learner's queue of offers was full; offered again at the next
/// reconnect).
pub const REFUSALS: [&str; 7] = crate::stats::FLEET_REFUSAL_REASONS;

/// The bytes of a model message: [`MAGIC`], the header as one line of JSON,
/// `\n`, then the ONNX bytes.
pub fn encode(header: &Header, onnx: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + json.len() + 1 + onnx.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&json);
    out.push(b'\n');
    out.extend_from_slice(onnx);
    out
}

/// A refused model message: the [`REFUSALS`] reason and what was found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Parses a model message received on the models topic of `pipeline` and
/// checks its SHA-256 and sizes.
///
/// # Errors
/// A [`Refusal`]: `envelope`, `oversized` or `bad_sha256`.
pub fn decode(payload: &[u8], pipeline: &str, max_bytes: u64) -> Result<Offer, Refusal> {
    if payload.len() as u64 > max_bytes {
        return Err(Refusal::new(
            "oversized",
            format!(
                "{} bytes; at most {max_bytes} are accepted (fleet.max_bytes)",
                payload.len()
            ),
        ));
    }
    let rest = payload
        .strip_prefix(MAGIC)
        .ok_or_else(|| Refusal::new("envelope", "no `edgeloop-model/1` first line"))?;
    let end = rest
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&b| b == b'\n')
        .ok_or_else(|| Refusal::new("envelope", "no header line"))?;
    let header: Header = serde_json::from_slice(&rest[..end])
        .map_err(|e| Refusal::new("envelope", format!("header: {e}")))?;
    let onnx = &rest[end + 1..];
    if header.pipeline != pipeline {
        return Err(Refusal::new(
            "envelope",
            format!(
                "a model of pipeline `{}` on the topic of `{pipeline}`",
                header.pipeline
            ),
        ));
    }
    if header.bytes != onnx.len() as u64 {
        return Err(Refusal::new(
            "envelope",
            format!(
                "the header says {} bytes, {} follow it",
                header.bytes,
                onnx.len()
            ),
        ));
    }
    super::intake::verify_sha256(onnx, Some(&header.sha256))
        .map_err(|e| Refusal::new("bad_sha256", e.to_string()))?;
    Ok(Offer {
        header,
        onnx: onnx.to_vec(),
        topic: String::new(),
    })
}

/// The fleet connection: publishes serving versions and receives others'.
/// It speaks the daemon's protocol ([`ProtocolChoice`]: MQTT 5, or 3.1.1
/// once the broker refused 5 on any of the daemon's connections).
pub struct FleetLink {
    pub config: FleetConfig,
    /// This daemon's id in the fleet (`daemon.instance`, else the client id).
    pub instance: String,
    pub link: Link,
    /// How to open the link again in another protocol (the fallback).
    pub spec: LinkSpec,
    pub choice: Arc<ProtocolChoice>,
    pub pipelines: Vec<String>,
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    /// To the learner (adopt).
    pub offers: mpsc::Sender<Offer>,
    /// Back-off between failed connection attempts.
    pub backoff: crate::ingest::mqtt::Backoff,
}

/// How often the serving versions are looked at for one to publish.
const PUBLISH_TICK: Duration = Duration::from_millis(500);

/// State key of the newest version of `pipeline` published.
fn published_key(pipeline: &str) -> String {
    format!("fleet/published/{pipeline}")
}

/// How the fleet connection opens (client id `{mqtt.client_id}-flt`, the
/// broker, TLS and credentials of `[mqtt]`; automatic acknowledgements:
/// adopting is idempotent).
pub fn link_spec(mqtt: &crate::ingest::mqtt_config::MqttConfig, host: &str, port: u16) -> LinkSpec {
    LinkSpec {
        cfg: mqtt.clone(),
        client_id: format!("{}-flt", mqtt.client_id),
        host: host.into(),
        port,
        manual_acks: false,
        receive_maximum: None,
        requests: 64,
    }
}

impl FleetLink {
    /// Runs until `shutdown`: connects (again after a failure, with
    /// back-off), subscribes to the models topics (adopt), publishes each
    /// new serving version (publish), forwards others' models.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut published: HashMap<String, u32> = HashMap::new();
        for p in &self.pipelines {
            if let Ok(Some(b)) = self.store.get_state(&published_key(p)) {
                if let Ok(v) = <[u8; 4]>::try_from(b.as_slice()) {
                    published.insert(p.clone(), u32::from_le_bytes(v));
                }
            }
        }
        let (mut connected, mut spoke_v5) = (false, false);
        let mut tick = tokio::time::interval(PUBLISH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick(), if connected && self.config.publish => {
                    self.publish_new(&mut published).await;
                }
                event = self.link.poll() => match event {
                    Ok(LinkEvent::ConnAck { .. }) => {
                        connected = true;
                        spoke_v5 |= self.link.protocol() == Protocol::V5;
                        self.choice.connected(self.link.protocol());
                        self.backoff.reset();
                        info!(instance = %self.instance, protocol = ?self.link.protocol(), publish = self.config.publish, adopt = self.config.adopt, "Fleet connection up.");
                        if self.config.adopt {
                            let topics: Vec<String> =
                                self.pipelines.iter().map(|p| self.config.models_topic(p)).collect();
                            if self.link.try_subscribe(&topics).is_err() {
                                warn!("Fleet subscribe request failed; retried at the next connection.");
                            }
                        }
                    }
                    Ok(LinkEvent::Publish(p)) => self.received(p),
                    Ok(LinkEvent::PubAck { refusal: None }) => {
                        self.stats.fleet_published.fetch_add(1, Relaxed);
                    }
                    Ok(LinkEvent::PubAck { refusal: Some(code) }) => {
                        warn!(reason_code = %code, "The broker refused a model message (its size limit?).");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.choice.observe(&e);
                        if !connected && !spoke_v5 && e.refuses_v5() {
                            self.choice.fall_back(&e);
                        }
                        if connected {
                            warn!(error = %e, reason_code = ?e.reason_code(), "Fleet connection lost; reconnecting.");
                        }
                        connected = false;
                        if let Ok(true) = self.spec.follow(&mut self.link, &self.choice) {
                            continue;
                        }
                        let delay = self.backoff.next_delay();
                        debug!(error = %e, delay_ms = delay.as_millis() as u64, "Fleet connection failed; backing off.");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        self.link.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), self.link.poll()).await;
        info!("Fleet connection stopped.");
    }

    /// Publishes each pipeline's serving version once (not one adopted from
    /// the fleet); a full request channel leaves it for the next tick.
    async fn publish_new(&mut self, published: &mut HashMap<String, u32>) {
        for p in &self.pipelines {
            let Some(serving) = self.registry.get(p) else {
                continue;
            };
            if published.get(p) == Some(&serving.version) {
                continue;
            }
            let from_fleet = serving
                .card
                .imported
                .as_ref()
                .is_some_and(|i| i.source == crate::learn::card::Source::Fleet);
            if from_fleet {
                published.insert(p.clone(), serving.version);
                continue;
            }
            let (store, name, version) = (self.store.clone(), p.clone(), serving.version);
            let stored = tokio::task::spawn_blocking(move || store.get_model(&name, version)).await;
            let Ok(Ok(Some(stored))) = stored else {
                warn!(pipeline = %p, version, "Fleet: the serving model could not be read; not published.");
                published.insert(p.clone(), version);
                continue;
            };
            let header = Header {
                pipeline: p.clone(),
                version,
                sha256: super::intake::sha256_hex(&stored.onnx),
                bytes: stored.onnx.len() as u64,
                instance: self.instance.clone(),
                published_ms: crate::stats::now_ms(),
                card: serde_json::from_str(&stored.card_json).unwrap_or_default(),
            };
            let payload = encode(&header, &stored.onnx);
            if payload.len() as u64 > self.config.max_bytes {
                warn!(pipeline = %p, version, bytes = payload.len(), limit = self.config.max_bytes, "Fleet: the model is larger than fleet.max_bytes; not published.");
                published.insert(p.clone(), version);
                continue;
            }
            let properties = vec![
                ("pipeline".into(), header.pipeline.clone()),
                ("version".into(), version.to_string()),
                ("sha256".into(), header.sha256.clone()),
                ("instance".into(), header.instance.clone()),
            ];
            let topic = self.config.models_topic(p);
            if self
                .link
                .try_publish_retained(&topic, payload.into(), CONTENT_TYPE, properties)
                .is_ok()
            {
                published.insert(p.clone(), version);
                info!(pipeline = %p, version, sha256 = %header.sha256, "Fleet: model published.");
                let _ = self
                    .store
                    .put_state(&published_key(p), &version.to_le_bytes());
            }
        }
    }

    /// A message on a models topic: another daemon's model goes to the
    /// learner; this daemon's own (retained) is skipped.
    fn received(&self, p: crate::ingest::link::Publish) {
        let topic = p.topic;
        if p.payload.is_empty() {
            // A retained model cleared by its publisher.
            return;
        }
        let Some(pipeline) = self
            .pipelines
            .iter()
            .find(|n| self.config.models_topic(n) == topic)
        else {
            return;
        };
        let refused = |r: &Refusal| {
            self.stats.count_fleet_refused(r.reason);
            warn!(%pipeline, %topic, reason = r.reason, error = %r.message, "Fleet model refused; the current version keeps serving.");
        };
        let mut offer = match decode(&p.payload, pipeline, self.config.max_bytes) {
            Ok(o) => o,
            Err(r) => return refused(&r),
        };
        if offer.header.instance == self.instance {
            return;
        }
        self.stats.fleet_received.fetch_add(1, Relaxed);
        offer.topic = topic.clone();
        if self.offers.try_send(offer).is_err() {
            refused(&Refusal::new(
                "busy",
                "the learner has offers waiting; offered again at the next reconnect",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(onnx: &[u8]) -> Header {
        Header {
            pipeline: "occ".into(),
            version: 3,
            sha256: crate::serve::intake::sha256_hex(onnx),
            bytes: onnx.len() as u64,
            instance: "gw-1".into(),
            published_ms: 1,
            card: serde_json::json!({"version": 3}),
        }
    }

    #[test]
    fn an_envelope_round_trips_and_each_corruption_is_refused_by_reason() {
        let onnx = b"\x08\x07onnx-bytes\n\x00with a newline".to_vec();
        let h = header(&onnx);
        let bytes = encode(&h, &onnx);
        let offer = decode(&bytes, "occ", 1 << 20).unwrap();
        assert_eq!((offer.header, offer.onnx), (h.clone(), onnx.clone()));

        let reason =
            |b: &[u8], pipeline: &str, max: u64| decode(b, pipeline, max).unwrap_err().reason;
        // One flipped byte of the model.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(reason(&flipped, "occ", 1 << 20), "bad_sha256");
        // Cut short.
        assert_eq!(
            reason(&bytes[..bytes.len() - 3], "occ", 1 << 20),
            "envelope"
        );
        // Not an envelope; a header that is not JSON; another pipeline's.
        assert_eq!(reason(&onnx, "occ", 1 << 20), "envelope");
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(b"{not json\n");
        assert_eq!(reason(&bad, "occ", 1 << 20), "envelope");
        assert_eq!(reason(&bytes, "other", 1 << 20), "envelope");
        // Beyond the limit.
        assert_eq!(reason(&bytes, "occ", bytes.len() as u64 - 1), "oversized");
    }
}
