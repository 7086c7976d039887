//! The MQTT source: owns rumqttc's `EventLoop`, polls it inside `select!`
//! with shutdown, and hands each received publish to the writer.
//!
//! - Persistent session: clean session off and a stable client id, so QoS 1
//!   messages sent while the daemon is down or reconnecting are kept by the
//!   broker and delivered when it is back.
//! - Manual acknowledgements: the writer acknowledges a message only after
//!   the commit that holds it (from its own task: acking from the poll task
//!   can fill rumqttc's request channel and stall).
//! - Reconnects back off exponentially, capped and jittered (rumqttc would
//!   otherwise retry in a tight loop: rumqtt #703, #918), and subscribe again
//!   whenever the broker reports no session (rumqtt #250).
//! - Each connection has an epoch; the writer drops acknowledgements for
//!   publishes of an earlier connection (the broker redelivers those).
//! - `mqtts://` brokers are reached over TLS 1.2/1.3 with rustls and its
//!   ring provider (no C++ and no cmake: it cross-builds with the target's
//!   gcc), verifying the broker against `mqtt.tls_ca_file`, optionally with
//!   a client certificate; username and password go in the CONNECT packet
//!   over either transport. A refused handshake or login is logged at
//!   ERROR with the key to check, counted in `mqtt_errors`, and retried
//!   with back-off like any other connection failure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{BrokerTarget, ConfigError, MqttConfig};
use crate::stats::Stats;

/// A publish received from the broker.
#[derive(Debug)]
pub struct Incoming {
    pub publish: rumqttc::Publish,
    /// Connection epoch it arrived on (see [`Connection::epoch`]).
    pub epoch: u64,
    /// Arrival time, ms since the Unix epoch.
    pub arrival_ms: i64,
}

/// Connection state shared with the writer and the prediction publisher.
#[derive(Debug, Default)]
pub struct Connection {
    connected: AtomicBool,
    subscribed: AtomicBool,
    epoch: AtomicU64,
}

impl Connection {
    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
    /// Whether the broker has acknowledged the subscriptions on this
    /// connection (or kept them in a resumed session).
    pub fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }
    /// Number of the current connection (incremented on each ConnAck).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// Room for the topic and header beyond the payload limit, bytes.
pub const PACKET_OVERHEAD: usize = 65536;

/// rumqttc options for a daemon client (`manual_acks`: ack after commit) or a
/// tool client: TLS for an `mqtts://` broker (see [`tls_client_config`]),
/// username and password when configured.
///
/// # Errors
/// [`ConfigError::Invalid`] from [`tls_client_config`] (a TLS file that
/// cannot be read or parsed) or for a bad `mqtt.broker`.
pub fn options(
    cfg: &MqttConfig,
    client_id: &str,
    host: &str,
    port: u16,
    manual_acks: bool,
) -> Result<MqttOptions, ConfigError> {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(cfg.keep_alive_s))
        .set_clean_session(false)
        .set_manual_acks(manual_acks)
        .set_max_packet_size(
            cfg.max_packet_bytes + PACKET_OVERHEAD,
            cfg.max_packet_bytes + PACKET_OVERHEAD,
        )
        .set_inflight(100);
    if matches!(cfg.target()?, BrokerTarget::External { tls: true, .. }) {
        let tls = tls_client_config(cfg)?;
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    if !cfg.username.is_empty() {
        o.set_credentials(cfg.username.clone(), cfg.password.clone());
    }
    Ok(o)
}

/// The rustls client configuration of an `mqtts://` broker: the ring
/// provider, TLS 1.2 and 1.3, the CA certificates of `mqtt.tls_ca_file` as
/// the only roots, and the client certificate chain of `mqtt.tls_cert_file`
/// with the key of `mqtt.tls_key_file` when both are set. The broker's
/// certificate must name the host of `mqtt.broker` (DNS name or IP address
/// in its subject alternative names; RFC 6125).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key and the file: unreadable, no
/// PEM `CERTIFICATE` (or private key) in it, a CA certificate rustls cannot
/// use, or a key that does not belong to the client certificate.
pub fn tls_client_config(cfg: &MqttConfig) -> Result<rustls::ClientConfig, ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        key: format!("mqtt.{key}"),
        reason,
    };
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
    };
    let certs = |key: &str, path: &std::path::Path| {
        let pem = read(key, path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(key, format!("{}: bad PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(
                key,
                format!("{} holds no PEM CERTIFICATE", path.display()),
            ));
        }
        Ok(certs)
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs("tls_ca_file", &cfg.tls_ca_file)? {
        roots.add(cert).map_err(|e| {
            invalid(
                "tls_ca_file",
                format!(
                    "{}: unusable CA certificate: {e}",
                    cfg.tls_ca_file.display()
                ),
            )
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("broker", format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    if cfg.tls_cert_file.as_os_str().is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let chain = certs("tls_cert_file", &cfg.tls_cert_file)?;
    let key_pem = read("tls_key_file", &cfg.tls_key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            "tls_key_file",
            format!(
                "{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                cfg.tls_key_file.display()
            ),
        )
    })?;
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        invalid(
            "tls_key_file",
            format!(
                "{} does not fit the certificate of {}: {e}",
                cfg.tls_key_file.display(),
                cfg.tls_cert_file.display()
            ),
        )
    })
}

/// What an operator should check after a failed connection, for the
/// failures that retrying alone will not fix.
fn connection_hint(e: &ConnectionError) -> Option<&'static str> {
    match e {
        ConnectionError::Tls(_) => Some(
            "TLS with the broker failed: check mqtt.tls_ca_file (the CA that signed the broker's \
             certificate), that the certificate names the host of mqtt.broker, and \
             mqtt.tls_cert_file/tls_key_file if the broker requires a client certificate.",
        ),
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => Some("The broker refused the login: check mqtt.username and mqtt.password."),
        _ => None,
    }
}

/// Capped exponential back-off with ±25 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }
    /// The next wait (jittered), doubling the base up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.75 + fastrand::f64() * 0.5)
    }
    /// Back to the minimum after a successful connection.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The MQTT source component.
pub struct MqttSource {
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub filters: Vec<String>,
    /// Dropped when shutdown begins, so the writer sees the end of input.
    pub tx: Option<mpsc::Sender<Incoming>>,
    pub connection: Arc<Connection>,
    pub stats: Arc<Stats>,
    pub backoff: Backoff,
}

impl MqttSource {
    /// Polls until `shutdown`; then stops forwarding (unacknowledged
    /// messages stay with the broker) and keeps polling until `drained` is
    /// cancelled (the writer has sent its last acknowledgements) or 5 s pass,
    /// and disconnects.
    ///
    /// # Errors
    /// Never for broker trouble (it reconnects); [`crate::ingest::IngestError::WriterGone`]
    /// if the writer stopped while the source still runs.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        drained: CancellationToken,
    ) -> Result<(), super::IngestError> {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                ev = self.eventloop.poll() => ev,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.connection.epoch.fetch_add(1, Ordering::AcqRel);
                    self.connection.connected.store(true, Ordering::Release);
                    self.stats.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                    self.backoff.reset();
                    info!(session_present = ack.session_present, "MQTT connected.");
                    self.connection
                        .subscribed
                        .store(ack.session_present, Ordering::Release);
                    if !ack.session_present {
                        let topics: Vec<_> = self
                            .filters
                            .iter()
                            .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
                            .collect();
                        // Not awaited here: the request goes through the channel this
                        // loop drains.
                        let client = self.client.clone();
                        tokio::spawn(async move {
                            if let Err(e) = client.subscribe_many(topics).await {
                                warn!(error = %e, "MQTT subscribe request failed.");
                            }
                        });
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        error!(filters = ?self.filters, "The broker refused a subscription.");
                    } else {
                        self.connection.subscribed.store(true, Ordering::Release);
                        debug!(filters = ?self.filters, "MQTT subscribed.");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
                    let item = Incoming {
                        publish,
                        epoch: self.connection.epoch(),
                        arrival_ms: crate::learn::now_ms(),
                    };
                    // Backpressure: the broker sends at most its in-flight window
                    // of unacknowledged QoS 1 messages, so this rarely waits.
                    let Some(tx) = self.tx.as_ref() else { break };
                    tokio::select! {
                        r = tx.send(item) => if r.is_err() {
                            return Err(super::IngestError::WriterGone);
                        },
                        _ = shutdown.cancelled() => break,
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.connection.connected.store(false, Ordering::Release);
                    self.connection.subscribed.store(false, Ordering::Release);
                    if let Some(hint) = connection_hint(&e) {
                        error!(error = %e, "{hint}");
                    }
                    if e.to_string().contains("size limit") {
                        error!(error = %e, "A message larger than mqtt.max_packet_bytes blocks the session: the broker redelivers it forever. Set the broker's message_size_limit (config/mosquitto.conf) at or below mqtt.max_packet_bytes.");
                    }
                    self.stats.mqtt_errors.fetch_add(1, Ordering::Relaxed);
                    let delay = self.backoff.next_delay();
                    warn!(error = %e, delay_ms = delay.as_millis() as u64, "MQTT poll failed; backing off.");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.tx = None;
        // Draining: keep the connection alive so the writer's last
        // acknowledgements go out; forward nothing new.
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        if self.connection.is_connected() {
            loop {
                tokio::select! {
                    _ = drained.cancelled() => break,
                    _ = &mut deadline => break,
                    ev = self.eventloop.poll() => if ev.is_err() { break },
                }
            }
            let _ = self.client.try_disconnect();
            let flush = tokio::time::timeout(Duration::from_millis(500), async {
                while let Ok(ev) = self.eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            });
            let _ = flush.await;
        }
        self.connection.connected.store(false, Ordering::Release);
        info!("MQTT source stopped.");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        // Bases 100, 200, 400, 800, 1000, 1000…, each within ±25 %.
        let bases = [100u128, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, base) in delays.iter().zip(bases) {
            assert!(*d >= base * 3 / 4 && *d <= base * 5 / 4, "{delays:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
