//! The MQTT source: owns the connection's event loop (a [`Link`]: rumqttc's
//! MQTT 5 or 3.1.1 client), polls it inside `select!` with shutdown, and
//! hands each received publish to the writer.
//!
//! - Protocol: MQTT 5 by default (`mqtt.protocol`), falling back to 3.1.1
//!   for a broker that refuses an MQTT 5 CONNECT ([`ProtocolChoice`]); 3.1.1
//!   with the embedded broker. The reason codes of a refused CONNACK, of a
//!   SUBACK and of the broker's DISCONNECT are logged (and the failures
//!   counted in `mqtt_errors`).
//! - Persistent session: a stable client id and clean session off (3.1.1)
//!   or clean start off with a session expiry interval of
//!   `mqtt.session_expiry_s` (MQTT 5), so QoS 1 messages sent while the
//!   daemon is down or reconnecting are kept by the broker and delivered
//!   when it is back.
//! - MQTT 5 receive maximum: the broker sends at most
//!   [`receive_maximum`]`(store.batch_size)` unacknowledged messages.
//! - Manual acknowledgements: the writer acknowledges a message only after
//!   the commit that holds it; it hands the packet ids back to this task,
//!   which writes them to the connection (see [`MqttSource`]: no task ever
//!   waits on a full channel that only the other can drain).
//! - Reconnects: the first attempt after a lost connection at once, then
//!   back-off, exponential, capped and jittered (rumqttc would otherwise
//!   retry in a tight loop: rumqtt #703, #918); subscribe again whenever the
//!   broker reports no session (rumqtt #250), and again if no SubAck came.
//! - Each connection has an epoch; acknowledgements of an earlier
//!   connection are dropped (the broker redelivers those messages).
//! - `mqtts://` brokers are reached over TLS 1.2/1.3 with rustls and its
//!   ring provider (no C++ and no cmake: it cross-builds with the target's
//!   gcc), verifying the broker against `mqtt.tls_ca_file`, optionally with
//!   a client certificate; username and password go in the CONNECT packet
//!   over either transport. A refused handshake or login is logged at
//!   ERROR with the key to check, counted in `mqtt_errors`, and retried
//!   with back-off like any other connection failure.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, Packet, PubAck, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub use super::link::Publish;
use super::link::{Link, LinkError, LinkEvent, LinkSpec, ProtocolChoice};
use super::mqtt_config::{BrokerTarget, MqttConfig, Protocol};
use crate::config_error::ConfigError;
use crate::stats::Stats;

/// A publish received from the broker.
#[derive(Debug)]
pub struct Incoming {
    pub publish: Publish,
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
    /// Protocol of the last accepted connection: 0 none yet, 4 (3.1.1), 5.
    protocol: AtomicU8,
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
    /// The protocol of the last connection the broker accepted; `None`
    /// before the first.
    pub fn protocol(&self) -> Option<Protocol> {
        match self.protocol.load(Ordering::Acquire) {
            4 => Some(Protocol::V311),
            5 => Some(Protocol::V5),
            _ => None,
        }
    }
}

/// The MQTT 5 receive maximum of the ingest connection (MQTT 5.0
/// §3.1.2.11.3: the most QoS 1 messages the broker sends it without a
/// PUBACK): `2 × store.batch_size`, at most 65,535 (a two-byte integer).
/// The writer acknowledges a batch only after its commit, so a window of
/// one batch would leave the broker idle during each commit (its fsync);
/// two let the next batch arrive while one commits. It is also what the
/// source holds received and unacknowledged in memory (4,000 at the
/// default `batch_size` of 2,000: about 1 MB of 250-byte readings).
/// config/mosquitto.conf sizes
/// `max_inflight_messages`, the window of 3.1.1 clients, the same way.
pub fn receive_maximum(batch_size: usize) -> u16 {
    batch_size.saturating_mul(2).clamp(1, 65_535) as u16
}

/// Whether `topic` may be a PUBLISH's topic name: not empty, at most
/// 65,535 bytes, no wildcard (`+`, `#`; MQTT 3.1.1 §3.3.2.1 and §4.7.1,
/// MQTT 5 §3.3.2.1) and no U+0000 (§1.5.3). The embedded broker closes a
/// client that publishes on anything else, as mosquitto does; the
/// predictions publisher drops a prediction whose topic is not one.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

/// Room for the topic and header beyond the payload limit, bytes.
pub const PACKET_OVERHEAD: usize = 65536;

/// rumqttc options for a daemon client (`manual_acks`: ack after commit) or a
/// tool client: TLS for an `mqtts://` broker (see [`tls_client_config`]),
/// username and password when configured ([`ClientOptions`], shared with
/// [`options_v5`]).
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
    Ok(ClientOptions::new(cfg, client_id, host, port, manual_acks)?.v311())
}

/// rumqttc MQTT 5 options, as [`options`] for 3.1.1, and: clean start off
/// with a session expiry interval of `mqtt.session_expiry_s` (the
/// persistent session), the receive maximum `receive_maximum` (`None`: the
/// protocol's 65,535), and the maximum packet size announced to the broker
/// (MQTT 5.0 §3.1.2.11.4: the broker discards a larger message for this
/// client instead of sending it).
///
/// # Errors
/// As [`options`].
pub fn options_v5(
    cfg: &MqttConfig,
    client_id: &str,
    host: &str,
    port: u16,
    manual_acks: bool,
    receive_maximum: Option<u16>,
) -> Result<rumqttc::v5::MqttOptions, ConfigError> {
    Ok(ClientOptions::new(cfg, client_id, host, port, manual_acks)?
        .v5(cfg.session_expiry_s, receive_maximum))
}

/// What a client's CONNECT says and how it reaches the broker, decided once
/// for both protocols; [`ClientOptions::v311`] and [`ClientOptions::v5`]
/// write it into each rumqttc's options.
struct ClientOptions {
    client_id: String,
    host: String,
    port: u16,
    keep_alive: Duration,
    /// Acknowledge only when the writer hands the packet id back.
    manual_acks: bool,
    /// Largest packet either way, bytes: `mqtt.max_packet_bytes` plus room
    /// for the topic and header ([`PACKET_OVERHEAD`]).
    max_packet: usize,
    /// Outgoing QoS 1 publishes in flight at once.
    inflight: u16,
    /// TLS for an `mqtts://` broker.
    transport: Option<Transport>,
    /// Username and password of the CONNECT.
    login: Option<(String, String)>,
}

impl ClientOptions {
    fn new(
        cfg: &MqttConfig,
        client_id: &str,
        host: &str,
        port: u16,
        manual_acks: bool,
    ) -> Result<Self, ConfigError> {
        let (transport, login) = transport_and_login(cfg)?;
        Ok(Self {
            client_id: client_id.to_string(),
            host: host.to_string(),
            port,
            keep_alive: Duration::from_secs(cfg.keep_alive_s),
            manual_acks,
            max_packet: cfg.max_packet_bytes + PACKET_OVERHEAD,
            inflight: 100,
            transport,
            login,
        })
    }

    /// MQTT 3.1.1: clean session off (the persistent session).
    fn v311(self) -> MqttOptions {
        let mut o = MqttOptions::new(self.client_id, self.host, self.port);
        o.set_keep_alive(self.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(self.manual_acks)
            .set_max_packet_size(self.max_packet, self.max_packet)
            .set_inflight(self.inflight);
        if let Some(t) = self.transport {
            o.set_transport(t);
        }
        if let Some((user, password)) = self.login {
            o.set_credentials(user, password);
        }
        o
    }

    /// MQTT 5: clean start off with a session expiry interval of
    /// `session_expiry_s`, and `receive_maximum` (see [`options_v5`]).
    fn v5(self, session_expiry_s: u32, receive_maximum: Option<u16>) -> rumqttc::v5::MqttOptions {
        let mut o = rumqttc::v5::MqttOptions::new(self.client_id, self.host, self.port);
        o.set_keep_alive(self.keep_alive)
            .set_clean_start(false)
            .set_session_expiry_interval(Some(session_expiry_s))
            .set_receive_maximum(receive_maximum)
            .set_manual_acks(self.manual_acks)
            .set_max_packet_size(Some(u32::try_from(self.max_packet).unwrap_or(u32::MAX)))
            .set_outgoing_inflight_upper_limit(self.inflight);
        if let Some(t) = self.transport {
            o.set_transport(t);
        }
        if let Some((user, password)) = self.login {
            o.set_credentials(user, password);
        }
        o
    }
}

/// The TLS transport of an `mqtts://` broker and the login of the
/// CONNECT (the daemon's own with the embedded broker), for both
/// protocols' options.
fn transport_and_login(
    cfg: &MqttConfig,
) -> Result<(Option<Transport>, Option<(String, String)>), ConfigError> {
    Ok(match cfg.target()? {
        BrokerTarget::Embedded(_) => (
            None,
            Some((
                crate::ingest::mqtt_config::EMBEDDED_DAEMON_USER.to_string(),
                crate::ingest::mqtt_config::embedded_daemon_secret().to_string(),
            )),
        ),
        BrokerTarget::External { tls, .. } => (
            tls.then(|| tls_client_config(cfg))
                .transpose()?
                .map(|c| Transport::Tls(TlsConfiguration::Rustls(Arc::new(c)))),
            (!cfg.username.is_empty()).then(|| (cfg.username.clone(), cfg.password.clone())),
        ),
    })
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

/// [`tls_server_config`] when both files are set, `None` when neither is.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key of the file set without the
/// other, or as [`tls_server_config`].
pub fn optional_tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    keys: (&str, &str),
) -> Result<Option<rustls::ServerConfig>, ConfigError> {
    match (cert.as_os_str().is_empty(), key.as_os_str().is_empty()) {
        (true, true) => Ok(None),
        (false, false) => tls_server_config(cert, key, keys).map(Some),
        (cert_missing, _) => Err(ConfigError::Invalid {
            key: if cert_missing { keys.0 } else { keys.1 }.into(),
            reason: format!("TLS needs both {} and {}", keys.0, keys.1),
        }),
    }
}

/// The rustls server configuration of a TLS listener (the HTTPS API,
/// `http.tls_*`; the embedded broker, `mqtt.embedded_tls_*`): the ring
/// provider, TLS 1.2 and 1.3, no client certificates, the PEM certificate
/// chain of `cert` (leaf first) and the PEM private key (PKCS#8, PKCS#1 or
/// SEC1) of `key`. `keys` names the two settings in errors, e.g.
/// `("http.tls_cert_file", "http.tls_key_file")`.
///
/// # Errors
/// [`ConfigError::Invalid`] naming the key and the file: unreadable, no PEM
/// certificate or key in it, or a key that does not fit the certificate.
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    keys: (&str, &str),
) -> Result<rustls::ServerConfig, ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        key: key.to_string(),
        reason,
    };
    let read = |name: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| invalid(name, format!("cannot read {}: {e}", path.display())))
    };
    let pem = read(keys.0, cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(keys.0, format!("{}: bad PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(
            keys.0,
            format!("{} holds no PEM CERTIFICATE", cert.display()),
        ));
    }
    let key_pem = read(keys.1, key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            keys.1,
            format!(
                "{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                key.display()
            ),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(keys.0, format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            invalid(
                keys.1,
                format!(
                    "{} does not fit the certificate of {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })
}

/// Capped exponential back-off with ±25 % jitter. After [`Backoff::reset`]
/// (a connection that worked), the first wait is zero: a dropped connection
/// is retried at once, and backed off only when that fails.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    immediate: bool,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
            immediate: false,
        }
    }
    /// The next wait (jittered), doubling the base up to the cap; zero for
    /// the first failure after a reset.
    pub fn next_delay(&mut self) -> Duration {
        if std::mem::take(&mut self.immediate) {
            return Duration::ZERO;
        }
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.75 + fastrand::f64() * 0.5)
    }
    /// Back to the minimum after a successful connection.
    pub fn reset(&mut self) {
        self.next = self.min;
        self.immediate = true;
    }
}

/// Acknowledgements from the writer: the packet ids of QoS 1 publishes
/// received on connection `epoch` whose samples are now committed.
#[derive(Debug)]
pub struct Acks {
    pub epoch: u64,
    pub pkids: Vec<u16>,
}

/// The MQTT source component: the one task that owns the ingest
/// connection's [`Link`] (rumqttc's event loop of either protocol).
///
/// It never waits on anything but the event loop, the writer's channel and
/// the writer's acknowledgements, all in one `select!`, so the loop that
/// carries acknowledgements out is polled even while the writer is behind
/// (no cycle of two full channels: the stall of issue 12). Received
/// publishes wait in a local queue until the writer's channel has room;
/// that queue is bounded by the broker's in-flight window (the broker sends
/// no more unacknowledged QoS 1 messages than that: the MQTT 5 receive
/// maximum, or the broker's own window for 3.1.1), and, as a last guard
/// against a broker without a window (mosquitto `max_inflight_messages 0`
/// with 3.1.1), reading stops while it holds more than `max_waiting`
/// messages and resumes when the writer takes them. Acknowledgements arrive
/// on an unbounded channel (bounded in practice by the same window) and go
/// out without waiting: written straight to the connection in one batch,
/// one flush, over either protocol (see [`MqttSource::write_acks`]).
pub struct MqttSource {
    pub link: Link,
    /// How to open the link again in another protocol (the fallback).
    pub spec: LinkSpec,
    /// The protocol of the daemon's connections to this broker, shared with
    /// the prediction publisher.
    pub choice: Arc<ProtocolChoice>,
    pub filters: Vec<String>,
    /// Dropped when shutdown begins, so the writer sees the end of input.
    pub tx: Option<mpsc::Sender<Incoming>>,
    /// Acknowledgements from the writer, sent after each commit.
    pub acks: mpsc::UnboundedReceiver<Acks>,
    pub connection: Arc<Connection>,
    pub stats: Arc<Stats>,
    pub backoff: Backoff,
    /// Most received publishes held while the writer's channel is full.
    pub max_waiting: usize,
}

/// How long a subscription may go unacknowledged before it is sent again
/// (a request lost with a dropped poll future, or a broker that ignored it).
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(5);

impl MqttSource {
    /// Polls until `shutdown`; then stops forwarding (unacknowledged
    /// messages stay with the broker) and keeps polling, writing the
    /// writer's last acknowledgements, until `drained` is cancelled (the
    /// writer has committed and acknowledged everything it was given) or 5 s
    /// pass, and disconnects.
    ///
    /// # Errors
    /// Never for broker trouble (it reconnects); [`crate::ingest::IngestError::WriterGone`]
    /// if the writer stopped while the source still runs.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        drained: CancellationToken,
    ) -> Result<(), super::IngestError> {
        let mut waiting: VecDeque<Incoming> = VecDeque::new();
        let mut acks: Vec<u16> = Vec::new();
        // When the subscriptions were last requested without a SubAck since.
        let mut subscribe_sent: Option<tokio::time::Instant> = None;
        // Failed connection attempts since the last WARN about them.
        let (mut failures, mut last_warn) = (0u64, tokio::time::Instant::now());
        // Whether the broker ever accepted an MQTT 5 connection (then a
        // connection closed on the CONNECT is no reason to fall back).
        let mut spoke_v5 = false;
        loop {
            // Hand over what the writer has room for, without waiting.
            if let Some(tx) = self.tx.as_ref() {
                while !waiting.is_empty() {
                    match tx.try_reserve() {
                        Ok(permit) => permit.send(waiting.pop_front().expect("not empty")),
                        Err(mpsc::error::TrySendError::Full(())) => break,
                        // The writer gave up a refused batch at shutdown.
                        Err(mpsc::error::TrySendError::Closed(())) if shutdown.is_cancelled() => {
                            break
                        }
                        Err(mpsc::error::TrySendError::Closed(())) => {
                            return Err(super::IngestError::WriterGone)
                        }
                    }
                }
            }
            self.stats
                .source_waiting
                .store(waiting.len() as u64, Ordering::Relaxed);
            self.write_acks(&mut acks).await;
            if let Some(at) = subscribe_sent {
                if !self.connection.is_subscribed()
                    && self.connection.is_connected()
                    && at.elapsed() > RESUBSCRIBE_AFTER
                {
                    warn!(filters = ?self.filters, "No SubAck yet; subscribing again.");
                    self.subscribe();
                    subscribe_sent = Some(tokio::time::Instant::now());
                }
            }
            let reading = waiting.len() < self.max_waiting;
            let tx = self.tx.as_ref();
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                batch = self.acks.recv() => match batch {
                    Some(batch) => { self.take_acks(batch, &mut acks); continue }
                    None if shutdown.is_cancelled() => break,
                    None => return Err(super::IngestError::WriterGone),
                },
                permit = async { tx.expect("checked").reserve().await }, if tx.is_some() && !waiting.is_empty() => {
                    match permit {
                        Ok(permit) => permit.send(waiting.pop_front().expect("not empty")),
                        Err(_) if shutdown.is_cancelled() => break,
                        Err(_) => return Err(super::IngestError::WriterGone),
                    }
                    continue;
                }
                ev = self.link.poll(), if reading => ev,
                // Not reading: wake up now and then for the resubscribe check.
                _ = tokio::time::sleep(Duration::from_millis(100)), if !reading => continue,
            };
            match event {
                Ok(LinkEvent::ConnAck {
                    session_present,
                    receive_maximum,
                    session_expiry_s,
                }) => {
                    let protocol = self.link.protocol();
                    spoke_v5 |= protocol == Protocol::V5;
                    self.choice.connected(protocol);
                    self.connection.epoch.fetch_add(1, Ordering::AcqRel);
                    self.connection.protocol.store(
                        if protocol == Protocol::V5 { 5 } else { 4 },
                        Ordering::Release,
                    );
                    self.connection.connected.store(true, Ordering::Release);
                    self.stats.mqtt_connects.fetch_add(1, Ordering::Relaxed);
                    failures = 0;
                    self.stats
                        .mqtt_disconnected_since_ms
                        .store(0, Ordering::Relaxed);
                    self.backoff.reset();
                    // Acknowledgements of the previous connection: the broker
                    // redelivers those messages (dedup keeps one copy).
                    acks.clear();
                    info!(
                        session_present,
                        %protocol,
                        broker_receive_maximum = ?receive_maximum,
                        granted_session_expiry_s = ?session_expiry_s,
                        "MQTT connected."
                    );
                    self.connection
                        .subscribed
                        .store(session_present, Ordering::Release);
                    if !session_present {
                        self.subscribe();
                        subscribe_sent = Some(tokio::time::Instant::now());
                    }
                }
                Ok(LinkEvent::SubAck { codes, refused }) => {
                    subscribe_sent = None;
                    if refused {
                        self.stats.mqtt_errors.fetch_add(1, Ordering::Relaxed);
                        error!(filters = ?self.filters, reason_codes = ?codes, "The broker refused a subscription.");
                    } else {
                        self.connection.subscribed.store(true, Ordering::Release);
                        debug!(filters = ?self.filters, reason_codes = ?codes, "MQTT subscribed.");
                    }
                }
                Ok(LinkEvent::Publish(publish)) => {
                    self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
                    waiting.push_back(Incoming {
                        publish,
                        epoch: self.connection.epoch(),
                        arrival_ms: crate::stats::now_ms(),
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    // No CONNACK since the last error: this was a connection attempt.
                    let attempt = !self.connection.is_connected();
                    self.choice.observe(&e);
                    self.disconnected(&e);
                    acks.clear();
                    if attempt
                        && !spoke_v5
                        && self.link.protocol() == Protocol::V5
                        && e.refuses_v5()
                    {
                        self.choice.fall_back(&e);
                    }
                    match self.spec.follow(&mut self.link, &self.choice) {
                        // At once: the broker is there.
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => {
                            error!(error = %e, "Cannot set up the MQTT 3.1.1 connection; retrying with MQTT 5.")
                        }
                    }
                    // The first attempt at once, back-off after failures.
                    let delay = self.backoff.next_delay();
                    // One WARN when the connection is lost and one a minute
                    // while it stays lost; each attempt at DEBUG.
                    failures += 1;
                    if delay.is_zero() {
                        warn!(error = %e, "MQTT connection lost; reconnecting.");
                        (failures, last_warn) = (0, tokio::time::Instant::now());
                    } else if failures == 1 || last_warn.elapsed() >= Duration::from_secs(60) {
                        warn!(error = %e, failed_attempts = failures, delay_ms = delay.as_millis() as u64, "MQTT broker unreachable; still retrying (each attempt logged at DEBUG).");
                        last_warn = tokio::time::Instant::now();
                    } else {
                        debug!(error = %e, delay_ms = delay.as_millis() as u64, "MQTT poll failed; backing off.");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        // Unforwarded publishes stay with the broker (never acknowledged).
        let left = waiting.len();
        drop(waiting);
        self.tx = None;
        self.stats.source_waiting.store(0, Ordering::Relaxed);
        if left > 0 {
            debug!(
                left,
                "Stopped with publishes not handed to the writer; the broker keeps them."
            );
        }
        // Draining: keep the connection alive so the writer's last
        // acknowledgements go out; forward nothing new.
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        if self.connection.is_connected() {
            loop {
                self.write_acks(&mut acks).await;
                tokio::select! {
                    biased;
                    batch = self.acks.recv() => match batch {
                        Some(batch) => self.take_acks(batch, &mut acks),
                        // The writer is gone: every acknowledgement it made is here.
                        None => break,
                    },
                    _ = drained.cancelled() => {
                        while let Ok(batch) = self.acks.try_recv() {
                            self.take_acks(batch, &mut acks);
                        }
                        break
                    }
                    _ = &mut deadline => break,
                    ev = self.link.poll() => if ev.is_err() { break },
                }
            }
            // The last acknowledgements (written and flushed), then the
            // DISCONNECT through the request channel.
            let flush = tokio::time::timeout(Duration::from_millis(500), async {
                let mut disconnecting = false;
                loop {
                    self.write_acks(&mut acks).await;
                    if acks.is_empty() && !disconnecting {
                        self.link.try_disconnect();
                        disconnecting = true;
                    }
                    match self.link.poll().await {
                        Ok(LinkEvent::DisconnectWritten) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            });
            let _ = flush.await;
        }
        self.connection.connected.store(false, Ordering::Release);
        info!("MQTT source stopped.");
        Ok(())
    }

    /// Keeps the packet ids of `batch` if it belongs to this connection.
    fn take_acks(&self, batch: Acks, acks: &mut Vec<u16>) {
        if batch.epoch == self.connection.epoch() && self.connection.is_connected() {
            acks.extend(batch.pkids);
        }
    }

    /// Sends the pending acknowledgements without waiting on anything this
    /// task must drain: written as one batch (one flush) straight to
    /// rumqttc's network buffer, over either protocol.
    ///
    /// A QoS 1 PUBACK with manual acks changes no client state (rumqttc's
    /// own `outgoing_puback` only returns the packet), and bypassing the
    /// request channel keeps acknowledgements out of the race between
    /// reading and writing in rumqttc's `select!`, which drains one request
    /// per poll and writes and flushes each: through the channel, 2,000
    /// acknowledgements were 2,000 `writev` calls (BENCHMARKS.md, "MQTT 5
    /// acknowledgements in one write"). rumqttc 0.25 keeps the MQTT 5
    /// event loop's connection private; `vendor/rumqttc` makes it public
    /// as the 3.1.1 one is (`vendor/rumqttc/EDGELOOP-PATCH.md`).
    ///
    /// A failed write leaves the messages unacknowledged: the next poll
    /// reports the broken connection and the broker redelivers them.
    async fn write_acks(&mut self, acks: &mut Vec<u16>) {
        if acks.is_empty() {
            return;
        }
        let n = acks.len() as u64;
        let written = match &mut self.link {
            Link::V311 { eventloop, .. } => {
                let timeout = Duration::from_secs(eventloop.network_options().connection_timeout());
                match eventloop.network.as_mut() {
                    None => None,
                    Some(network) => Some(
                        tokio::time::timeout(timeout, async {
                            for &pkid in acks.iter() {
                                network.write(Packet::PubAck(PubAck::new(pkid))).await?;
                            }
                            network.flush().await
                        })
                        .await
                        .map(|r| r.map_err(|e| e.to_string())),
                    ),
                }
            }
            Link::V5 { eventloop, .. } => {
                use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAck as A5};
                let timeout =
                    Duration::from_secs(eventloop.options.network_options().connection_timeout());
                match eventloop.network.as_mut() {
                    None => None,
                    Some(network) => Some(
                        tokio::time::timeout(timeout, async {
                            for &pkid in acks.iter() {
                                network.write(P5::PubAck(A5::new(pkid, None))).await?;
                            }
                            network.flush().await
                        })
                        .await
                        .map(|r| r.map_err(|e| e.to_string())),
                    ),
                }
            }
        };
        acks.clear();
        match written {
            Some(Ok(Ok(()))) => {
                self.stats.acks_sent.fetch_add(n, Ordering::Relaxed);
            }
            Some(Ok(Err(e))) => {
                debug!(error = %e, "Acknowledgements not written; the broker will redeliver.")
            }
            Some(Err(_)) => {
                debug!("Acknowledgements not flushed in time; the broker will redeliver.")
            }
            None => {}
        }
    }

    /// Requests the subscriptions (QoS 1) without waiting: the request goes
    /// through the channel this task's poll drains.
    fn subscribe(&self) {
        if self.link.try_subscribe(&self.filters).is_err() {
            warn!("MQTT subscribe request failed (request channel full); retried.");
        }
    }

    /// Marks the connection down and logs what an operator should check,
    /// with the broker's reason code when it gave one.
    fn disconnected(&self, e: &LinkError) {
        if self.connection.connected.swap(false, Ordering::AcqRel) {
            self.stats
                .mqtt_disconnected_since_ms
                .store(crate::stats::now_ms(), Ordering::Relaxed);
        } else if self
            .stats
            .mqtt_disconnected_since_ms
            .load(Ordering::Relaxed)
            == 0
        {
            self.stats
                .mqtt_disconnected_since_ms
                .store(crate::stats::now_ms(), Ordering::Relaxed);
        }
        self.connection.subscribed.store(false, Ordering::Release);
        if let Some(hint) = e.hint() {
            error!(error = %e, reason_code = ?e.reason_code(), "{hint}");
        } else if let Some(code) = e.reason_code() {
            warn!(error = %e, reason_code = %code, "The broker refused or closed the MQTT connection.");
        }
        if e.to_string().contains("size limit") {
            error!(error = %e, "A message larger than mqtt.max_packet_bytes blocks the session: the broker redelivers it forever. Set the broker's message_size_limit (config/mosquitto.conf) at or below mqtt.max_packet_bytes.");
        }
        self.stats.mqtt_errors.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The two protocols' options carry the same configured CONNECT: one
    /// builder ([`ClientOptions`]) decides it for both.
    #[test]
    fn both_protocols_connect_with_the_same_settings() {
        let env = [
            ("EDGELOOP__MQTT__BROKER", "mqtt://broker.local:1884"),
            ("EDGELOOP__MQTT__USERNAME", "gw"),
            ("EDGELOOP__MQTT__PASSWORD", "secret"),
            ("EDGELOOP__MQTT__KEEP_ALIVE_S", "17"),
            ("EDGELOOP__MQTT__SESSION_EXPIRY_S", "3600"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = crate::config::Config::load_with_env(None, env)
            .unwrap()
            .mqtt;
        let v311 = options(&cfg, "edge-1", "broker.local", 1884, true).unwrap();
        let v5 = options_v5(&cfg, "edge-1", "broker.local", 1884, true, Some(4000)).unwrap();
        assert_eq!(
            (v311.client_id(), v5.client_id()),
            ("edge-1".into(), "edge-1".into())
        );
        assert_eq!(v311.keep_alive(), Duration::from_secs(17));
        assert_eq!(v5.keep_alive(), Duration::from_secs(17));
        assert!(v311.manual_acks() && v5.manual_acks());
        assert_eq!(
            v311.credentials().map(|l| (l.username, l.password)),
            Some(("gw".into(), "secret".into()))
        );
        assert_eq!(
            v5.credentials().map(|l| (l.username, l.password)),
            Some(("gw".into(), "secret".into()))
        );
        // The payload limit plus room for the topic and header.
        let packet = cfg.max_packet_bytes + PACKET_OVERHEAD;
        assert_eq!(v311.max_packet_size(), packet);
        assert_eq!(v5.max_packet_size(), Some(packet as u32));
        assert_eq!(
            (v311.inflight(), v5.get_outgoing_inflight_upper_limit()),
            (100, Some(100))
        );
        // The persistent session, each protocol its way.
        assert!(!v311.clean_session());
        assert!(!v5.clean_start());
        assert_eq!(v5.session_expiry_interval(), Some(3600));
        assert_eq!(v5.receive_maximum(), Some(4000));
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        // Bases 100, 200, 400, 800, 1000, 1000…, each within ±25 %.
        let bases = [100u128, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, base) in delays.iter().zip(bases) {
            assert!(*d >= base * 3 / 4 && *d <= base * 5 / 4, "{delays:?}");
        }
        // After a connection that worked: at once, then from the minimum.
        b.reset();
        assert_eq!(b.next_delay(), Duration::ZERO);
        let d = b.next_delay().as_millis();
        assert!((75..=125).contains(&d), "{d}");
    }
}
