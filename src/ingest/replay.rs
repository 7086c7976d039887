//! Replay: publishes a CSV file's rows as JSON messages, one per row, with the
//! column names as fields (a value that parses as a number is sent as a JSON
//! number, anything else as a string). QoS 1; waits for every
//! acknowledgement, and gives up when the broker has not answered for
//! [`ReplayOptions::give_up_after`].

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::IngestError;

/// What to replay and where.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub file: PathBuf,
    pub topic: String,
    /// Messages per second; `None` publishes as fast as the broker acknowledges.
    pub rate: Option<f64>,
    pub host: String,
    pub port: u16,
    /// Columns left out of the messages (e.g. the label, to ask for predictions).
    pub drop_columns: Vec<String>,
    /// Only the first `limit` rows.
    pub limit: Option<usize>,
    /// MQTT client id of the publisher.
    pub client_id: String,
    /// The longest time without an answer from the broker (a CONNACK or a
    /// PUBACK) while one is awaited: not connected, or publishes not yet
    /// acknowledged (an idle replay between two `rate` ticks awaits
    /// nothing). Past it the replay fails (no broker listening, or one that
    /// stopped acknowledging) instead of retrying for ever.
    pub give_up_after: Duration,
}

/// The default of [`ReplayOptions::give_up_after`] (`edgeloop replay
/// --timeout-s`), seconds.
pub const GIVE_UP_AFTER_S: u64 = 30;

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    pub published: u64,
    pub acknowledged: u64,
}

/// Reads the CSV into JSON payloads.
///
/// # Errors
/// [`IngestError::Replay`] naming the file and the row when it cannot be
/// read, or the topic when it is no topic name (empty, or holding `+`, `#`
/// or NUL).
pub fn csv_payloads(opts: &ReplayOptions) -> Result<Vec<Vec<u8>>, IngestError> {
    let err = |reason: String| IngestError::Replay {
        file: opts.file.display().to_string(),
        reason,
    };
    // A topic filter copied from a pipeline's `topics` is no topic name: a
    // broker closes the connection on such a publish (MQTT 3.1.1
    // §3.3.2.1), and the replay, reconnecting and publishing it again,
    // never ended (each CONNACK was an answer to its --timeout-s).
    if opts.topic.is_empty() || opts.topic.contains(['+', '#', '\0']) {
        return Err(err(format!(
            "--topic `{}`: a message is published on a topic name, without the wildcards \
             `+` and `#` (those are for subscriptions): name the device, e.g. \
             sensors/room1/occupancy",
            opts.topic
        )));
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&opts.file)
        .map_err(|e| err(e.to_string()))?;
    let headers = reader.headers().map_err(|e| err(e.to_string()))?.clone();
    let mut out = Vec::new();
    for record in reader.records() {
        if opts.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let record =
            record.map_err(|e| err(super::csv_file::describe_csv_error(&opts.file, &e)))?;
        let mut obj = Map::new();
        for (name, value) in headers.iter().zip(record.iter()) {
            if opts.drop_columns.iter().any(|d| d == name) {
                continue;
            }
            let v = match value.parse::<f64>() {
                Ok(x) if x.is_finite() => {
                    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
                }
                _ => Value::String(value.to_string()),
            };
            obj.insert(name.to_string(), v);
        }
        out.push(serde_json::to_vec(&Value::Object(obj)).map_err(|e| err(e.to_string()))?);
    }
    Ok(out)
}

/// Publishes `payloads` to `opts.topic` with QoS 1 and waits until the broker
/// has acknowledged each one (across reconnects: the session is persistent).
///
/// # Errors
/// [`IngestError::Replay`] when cancelled before every message was
/// acknowledged, or when the broker did not answer for
/// `opts.give_up_after` while a connection or an acknowledgement was
/// awaited (naming the broker's address and the last connection error).
pub async fn publish_all(
    opts: &ReplayOptions,
    payloads: Vec<Vec<u8>>,
    shutdown: CancellationToken,
) -> Result<ReplayReport, IngestError> {
    let mut mqtt = MqttOptions::new(opts.client_id.clone(), opts.host.clone(), opts.port);
    mqtt.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_max_packet_size(1 << 24, 1 << 24)
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(mqtt, 1000);
    let total = payloads.len() as u64;
    let topic = opts.topic.clone();
    let rate = opts.rate;
    let publisher = tokio::spawn(async move {
        let mut tick =
            rate.map(|r| tokio::time::interval(Duration::from_secs_f64(1.0 / r.max(1e-3))));
        for p in payloads {
            if let Some(t) = tick.as_mut() {
                t.tick().await;
            }
            if client
                .publish(topic.clone(), QoS::AtLeastOnce, false, p)
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let (mut published, mut acked) = (0u64, 0u64);
    let mut errors = 0u32;
    let mut connected = false;
    // Packet ids sent and not yet acknowledged (a resend after a reconnect
    // keeps its id).
    let mut unacked: HashSet<u16> = HashSet::new();
    let mut last_answer = tokio::time::Instant::now();
    let mut last_error: Option<String> = None;
    let mut gave_up = false;
    let mut was_awaiting = true;
    while acked < total {
        let awaiting = !connected || !unacked.is_empty();
        if awaiting && !was_awaiting {
            // The wait starts with the first publish after an idle spell.
            last_answer = tokio::time::Instant::now();
        }
        was_awaiting = awaiting;
        let deadline = last_answer + opts.give_up_after;
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = tokio::time::sleep_until(deadline), if awaiting => {
                gave_up = true;
                break;
            }
            _ = shutdown.cancelled() => break,
        };
        match ev {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                published += 1;
                unacked.insert(pkid);
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                acked += 1;
                unacked.remove(&ack.pkid);
                last_answer = tokio::time::Instant::now();
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                errors = 0;
                last_answer = tokio::time::Instant::now();
            }
            Ok(_) => {}
            Err(e) => {
                if connected {
                    // The wait for an answer starts again from the loss.
                    last_answer = tokio::time::Instant::now();
                }
                connected = false;
                errors += 1;
                if errors == 1 {
                    tracing::warn!(host = %opts.host, port = opts.port, error = %e, "Replay: MQTT connection failed; retrying.");
                }
                last_error = Some(e.to_string());
                let pause = Duration::from_millis(200 * u64::from(errors.min(10)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    if acked >= total {
        if let Ok(client) = publisher.await {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(300), eventloop.poll()).await;
        }
    } else {
        // Given up or cancelled: the publisher may wait on the client's
        // full request channel, which only the event loop drains.
        publisher.abort();
    }
    let report = ReplayReport {
        published: published.min(total),
        acknowledged: acked.min(total),
    };
    if gave_up {
        let waited = opts.give_up_after.as_secs_f64();
        let what = if connected {
            "stopped acknowledging".to_string()
        } else {
            format!(
                "could not be reached ({})",
                last_error.as_deref().unwrap_or("no CONNACK")
            )
        };
        return Err(IngestError::Replay {
            file: opts.file.display().to_string(),
            reason: format!(
                "gave up after {waited:.0} s without an answer: the MQTT broker at {}:{} {what}; \
                 {} of {total} messages acknowledged",
                opts.host, opts.port, report.acknowledged
            ),
        });
    }
    if report.acknowledged < total {
        return Err(IngestError::Replay {
            file: opts.file.display().to_string(),
            reason: format!(
                "stopped with {} of {total} messages acknowledged",
                report.acknowledged
            ),
        });
    }
    Ok(report)
}
