//! Replay: publishes a CSV file's rows as JSON messages, one per row, with the
//! column names as fields (a value that parses as a number is sent as a JSON
//! number, anything else as a string). QoS 1; waits for every
//! acknowledgement.

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
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    pub published: u64,
    pub acknowledged: u64,
}

/// Reads the CSV into JSON payloads.
///
/// # Errors
/// [`IngestError::Replay`] naming the file and the row when it cannot be read.
pub fn csv_payloads(opts: &ReplayOptions) -> Result<Vec<Vec<u8>>, IngestError> {
    let err = |reason: String| IngestError::Replay {
        file: opts.file.display().to_string(),
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(&opts.file)
        .map_err(|e| err(e.to_string()))?;
    let headers = reader.headers().map_err(|e| err(e.to_string()))?.clone();
    let mut out = Vec::new();
    for (i, record) in reader.records().enumerate() {
        if opts.limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        let record = record.map_err(|e| err(format!("row {}: {e}", i + 1)))?;
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
/// [`IngestError::Replay`] when cancelled before every message was acknowledged.
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
    while acked < total {
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.cancelled() => break,
        };
        match ev {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => published += 1,
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => {
                errors += 1;
                tracing::warn!(error = %e, "Replay: MQTT connection failed; retrying.");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(errors.min(10)))).await;
            }
        }
    }
    if let Ok(client) = publisher.await {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(300), eventloop.poll()).await;
    }
    let report = ReplayReport {
        published: published.min(total),
        acknowledged: acked.min(total),
    };
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
