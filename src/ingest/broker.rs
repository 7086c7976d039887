//! The embedded MQTT broker (rumqttd), for boards without mosquitto. Behind
//! the default cargo feature `embedded-broker`.
//!
//! rumqttd has no stop API: a broker started here lives until the process
//! ends. Starting the same address twice in one process reuses the running
//! broker (a daemon restarted in-process keeps its broker, like a real one).

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::IngestError;

static STARTED: OnceLock<Mutex<HashSet<SocketAddr>>> = OnceLock::new();

/// Starts a broker listening on `listen` (MQTT 3.1.1), accepting payloads up
/// to `max_payload_bytes`, and waits until it accepts connections.
///
/// # Errors
/// [`IngestError::Broker`] when the address is taken by another program or
/// the broker does not come up within 5 s.
pub fn start(listen: SocketAddr, max_payload_bytes: usize) -> Result<(), IngestError> {
    let started = STARTED.get_or_init(Default::default);
    let mut started = started
        .lock()
        .map_err(|_| IngestError::Broker("lock poisoned".into()))?;
    if started.contains(&listen) {
        return Ok(());
    }
    // A clear error for a taken port (rumqttd would only log it in its thread).
    drop(
        TcpListener::bind(listen)
            .map_err(|e| IngestError::Broker(format!("cannot listen on {listen}: {e}")))?,
    );
    let server = rumqttd::ServerSettings {
        name: "edgeloop-embedded".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: max_payload_bytes.max(1 << 20),
            max_segment_count: 8,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    };
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "Embedded MQTT broker stopped.");
            }
        })
        .map_err(|e| IngestError::Broker(e.to_string()))?;
    let until = Instant::now() + Duration::from_secs(5);
    while !mqtt_handshake(listen) {
        if Instant::now() > until {
            return Err(IngestError::Broker(format!(
                "not accepting connections on {listen} after 5 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    started.insert(listen);
    tracing::info!(%listen, "Embedded MQTT broker started.");
    Ok(())
}

/// A full MQTT CONNECT / CONNACK / DISCONNECT exchange (a bare TCP probe
/// makes rumqttd log an error for the half-open connection).
fn mqtt_handshake(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = bytes::BytesMut::new();
    let id = format!("edgeloop-probe-{}", std::process::id());
    if rumqttc::Connect::new(id).write(&mut buf).is_err()
        || rumqttc::Disconnect.write(&mut buf).is_err()
    {
        return false;
    }
    let (connect, disconnect) = buf.split_at(buf.len() - 2);
    let mut connack = [0u8; 4];
    let ok = stream.write_all(connect).is_ok()
        && stream.read_exact(&mut connack).is_ok()
        && connack[0] == 0x20;
    let _ = stream.write_all(disconnect);
    ok
}
