//! The embedded MQTT broker (rumqttd 0.20), for boards without mosquitto.
//! Behind the default cargo feature `embedded-broker`.
//!
//! # Why a proxy in front of rumqttd
//!
//! rumqttd keeps everything in memory and acknowledges a publisher as soon
//! as its router has appended the message to the in-memory commit log of
//! each matching filter (`router/routing.rs`, `handle_device_payload`: the
//! PUBACK is queued next to `append_to_commitlog`). Nothing ties that
//! acknowledgement to the subscriber: a slow or absent daemon only makes the
//! log longer, up to `max_segment_count` segments of `max_segment_size`
//! bytes, after which the oldest segment is dropped
//! (`segments/mod.rs`, `apply_retention`) and the subscriber's cursor jumps
//! (`readv`: "jumping to head"). Its only window towards a subscriber is the
//! hard-coded 100 unacknowledged QoS 1 publishes (`router/iobufs.rs`,
//! `MAX_INFLIGHT`; `max_inflight_count` in [`rumqttd::ConnectionSettings`]
//! only caps how many packets one read of a connection takes, and
//! `max_outgoing_packet_count` applies to QoS 0 only). rumqttd 0.20 has no
//! API to stop a server, refuse or close connections (`Broker::start` joins
//! its server threads forever; the router's event channel is private; the
//! `external_auth` hook only sees new connections, never existing ones), and
//! a subscription starts at the current end of its filter's log (`Subscribe`
//! takes `next_native_offset`), so whatever publishers sent to a freshly
//! started broker before the daemon subscribed reached no one.
//!
//! So rumqttd listens on an ephemeral loopback port and edgeloop owns the
//! configured address: a small proxy (one thread, one current-thread tokio
//! runtime) that reads MQTT framing (fixed headers, and the few fields it
//! needs) and forwards whole packets, unchanged but for the packet ids of
//! deliveries to the daemon (5.). That gives five things:
//!
//! 1. **Gate at start.** Connections other than the daemon's are held after
//!    their CONNECT (not forwarded, no CONNACK) until the daemon's client
//!    (`daemon_client_id`) has subscribed: its SUBACK, or a CONNACK with
//!    `session_present` (a daemon restarted in the same process resumes its
//!    session). Nothing is acknowledged before someone will receive it.
//! 2. **Stop accepting publishes** ([`EmbeddedBroker::stop_accepting_publishes`]):
//!    the gate closes and every external connection is cut at a packet
//!    boundary: the proxy stops reading from the client and half-closes its
//!    side towards rumqttd, which reads what was forwarded, appends it, sees
//!    the end of the stream and drops the connection (a PUBACK rumqttd had
//!    not written yet is never sent: the publisher resends that message
//!    later, and the daemon's digest deduplication absorbs the copy). The
//!    daemon's own connections (`daemon_client_id` and
//!    `{daemon_client_id}-…`, e.g. the predictions publisher) stay.
//! 3. **Knowing when the daemon has everything** ([`EmbeddedBroker::wait_drained`]):
//!    the proxy sees every PUBLISH rumqttd sends to the daemon's client and
//!    every PUBACK the daemon returns (after its durable commit). Drained:
//!    the gate is closed, no external connection is left, the daemon is
//!    connected, every QoS 1 delivery to it is acknowledged, and no new
//!    delivery came for a quiet period ([`DRAIN_QUIET`]). With nothing
//!    unacknowledged rumqttd's window to the daemon is open, so a message
//!    still in its log would be sent within the router's next pass
//!    (milliseconds); 300 ms without one means the log is caught up.
//! 4. **A hard bound on what a crash loses.** Every publish forwarded from
//!    an external client whose topic matches k of the daemon's filters
//!    (learned from its SUBSCRIBE packets; rumqttd delivers one copy per
//!    matching filter, at the subscription's QoS) adds k to a debt, and
//!    every PUBACK of a (non-retained) delivery to the daemon takes one
//!    off. Publishes are forwarded only while the debt is below
//!    [`PUBLISH_WINDOW`]; beyond it the proxy stops reading from publishers
//!    (TCP backpressure; their QoS 1 messages wait, unacknowledged, in
//!    their own clients). A publish that never reaches the daemon (refused
//!    by rumqttd, say) would keep its count: whenever the daemon is
//!    connected with nothing unacknowledged, no delivery and no counted
//!    publish for [`DRAIN_QUIET`], rumqttd holds nothing for it and the
//!    debt is reset to 0.
//! 5. **The relay: a window of [`RELAY_WINDOW`] towards the daemon.** With
//!    rumqttd's 100, each of the daemon's commits (one fsync) held at most
//!    100 messages, which capped ingest at about 22,000 msg/s. The proxy
//!    acknowledges each QoS 1 delivery to rumqttd itself, in order, as soon
//!    as it has forwarded it, while fewer than [`RELAY_WINDOW`] of the
//!    daemon's are unacknowledged (beyond that, when the daemon acknowledges
//!    one), and keeps it until the daemon acknowledges it after its commit.
//!    rumqttd numbers deliveries 1 to 100 over and over, so the proxy gives
//!    each its own packet id (rewritten in place), and takes the daemon's
//!    PUBACKs itself. The proxy and rumqttd share the process, so the relay
//!    loses nothing a crash would not lose anyway (5. does not change 4.).
//!    When the daemon's connection drops with the process alive (an
//!    in-process restart, a keep-alive timeout), rumqttd delivers again
//!    what it had no acknowledgement for, and the proxy sends the daemon
//!    the rest it held, with DUP set, right after the CONNACK of its next
//!    connection with a session (a new session drops them, as a broker
//!    would). The daemon acknowledges in order, as rumqttd requires;
//!    QoS 2 deliveries (the daemon subscribes at QoS 1) are forwarded
//!    unchanged.
//!
//! # What SIGKILL can lose
//!
//! A message acknowledged to its publisher but not yet committed by the
//! daemon was forwarded by the proxy and not yet acknowledged by the daemon,
//! so it is within the debt: at most [`PUBLISH_WINDOW`] messages. One
//! imprecision adds to it: an acknowledgement the proxy sent rumqttd just
//! before the daemon's connection broke may not have been processed by
//! rumqttd, which then delivers that message again and the daemon
//! acknowledges it a second time; rumqttd never has more than 100
//! deliveries unacknowledged ([`BROKER_INFLIGHT`]), so that is at most 100
//! per break of the daemon's own loopback connection, and it is forgotten
//! the next time the daemon is caught up. (What the proxy sends again after
//! such a break is no longer counted, so it cannot count twice.) [`crash_loss_bound`] is the sum, logged
//! when the broker starts. Without the window the loss was bounded only by
//! the commit log: 8 segments of 4 MiB (`mqtt.max_packet_bytes`), about
//! 200,000 messages of 150 bytes.
//!
//! Measured (tests/embedded_broker.rs, daemon binary, SIGKILL three times
//! during a load): at 1,000 msg/s nothing was lost (the daemon keeps up);
//! with 32 publishers at full speed (the daemon a window behind) 871 to
//! 1,000 acknowledged messages per kill, against 20,000 to 30,000 per kill
//! before the window. The proxy carries 100,000+ QoS 1 msg/s on loopback
//! (73-90 % of rumqttd reached directly). The relay (5.) doubled the
//! daemon's end-to-end ingest (`edgeloop bench ingest`, embedded steady
//! row: 23,247 to 48,405 msg/s, commits per 100,000 messages 1,281 to 297;
//! BENCHMARKS.md).
//!
//! A throttled publisher's later packets (PINGREQ included) wait behind its
//! blocked publish: if the daemon stops acknowledging for longer than 1.5
//! keep-alive periods, rumqttd or the client drops that connection, and the
//! client reconnects and resends (nothing is lost; its session is kept).
//!
//! # The daemon's side
//!
//! [`EmbeddedBroker::start`] with the daemon's `mqtt.client_id`; the
//! daemon's clients connect to the configured address as before. At
//! shutdown, in this order: [`EmbeddedBroker::drain_for_shutdown`] while
//! the MQTT source still forwards and the writer still commits and
//! acknowledges; then the source stops forwarding, the writer commits and
//! acknowledges what it holds, the source disconnects. With an external
//! broker the first step is skipped.
//!
//! # Lifetime
//!
//! rumqttd has no stop API: a broker started here lives until the process
//! ends. Starting the same address twice in one process reuses the running
//! broker (a daemon restarted in-process keeps its broker, like a real one);
//! [`EmbeddedBroker::start`] then closes the gate again until the (new)
//! daemon has subscribed.
//!
//! # Access
//!
//! The proxy reads each connection's CONNECT (MQTT 3.1.1 §3.1; MQTT 5 is
//! parsed too, and refused by rumqttd's v4 server) and decides:
//! - the daemon's own login ([`EMBEDDED_DAEMON_USER`] with
//!   [`embedded_daemon_secret`], 32 random bytes drawn per process and never
//!   written) admits any client id: the daemon's clients;
//! - without it, the daemon's client ids (`daemon_client_id` and
//!   `{daemon_client_id}-…`) are refused with CONNACK 5 "not authorized":
//!   no other client can take the daemon's session (rumqttd, like any MQTT
//!   broker, hands a session to the newest connection with its id);
//! - other clients need one of [`BrokerAccess::users`] when there are any
//!   (CONNACK 4 "bad user name or password", 5 without a username);
//!   otherwise they connect anonymously (loopback only: `check-config`
//!   refuses a wider `mqtt.embedded_listen` without users).
//!
//! Before any login, a client id holding `+`, `$`, `#` or `/` is refused
//! with CONNACK 2 "identifier rejected", and a client beyond
//! [`MAX_CLIENTS`] external connections with CONNACK 3 "server
//! unavailable". rumqttd's router drops either without a CONNACK, and
//! rumqttd 0.20's `remote()` then leaves the id's will handler behind: the
//! next CONNECT with that id panics while holding the handlers' mutex
//! (`server/broker.rs`, `try_send(..).unwrap()`), poisoning it, and every
//! later CONNECT panics too: the broker takes nobody, the daemon's own
//! reconnection included. So rumqttd must never see a CONNECT it refuses.
//! A client's PUBLISH on a topic name that is none (a wildcard `+` or `#`,
//! U+0000, empty, not UTF-8: MQTT 3.1.1 §3.3.2.1, §1.5.3) closes its
//! connection, as mosquitto does (§4.8); rumqttd would route it.
//!
//! Logins are compared in constant time (`subtle`). An admitted CONNECT is
//! forwarded with its login replaced by the daemon's: rumqttd's own static
//! authentication (`ConnectionSettings::auth`) admits that login only, so
//! rumqttd's ephemeral loopback port, which any local process can find,
//! takes nobody around the proxy's window and checks. With
//! [`BrokerAccess::tls`] the configured address speaks TLS (tokio-rustls)
//! and the daemon's clients connect to a plain loopback listener of the
//! proxy ([`EmbeddedBroker::daemon_addr`]) that admits only the daemon's
//! login.

use std::collections::{HashMap, VecDeque};

use crate::ingest::mqtt_config::{embedded_daemon_secret, EMBEDDED_DAEMON_USER};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A client connection: plain TCP or TLS.
trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ClientIo for T {}
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::IngestError;

/// Most deliveries to the daemon (messages × matching filters) that
/// external publishers may be ahead of the daemon's commits. Beyond it the
/// proxy stops reading from publishers until the daemon acknowledges.
/// Ten times rumqttd's window to the daemon: the daemon never waits for the
/// publishers, and at 1,000 msg/s it is one second of readings. The same
/// deliveries are bounded in bytes too ([`publish_window_bytes`]).
pub const PUBLISH_WINDOW: u64 = 1000;

/// The least [`publish_window_bytes`]: 8 MiB.
pub const PUBLISH_WINDOW_MIN_BYTES: u64 = 8 << 20;

/// Most bytes of deliveries to the daemon (each counted as rumqttd sizes a
/// message in its log: [`publish_size`], times the daemon's filters it
/// matches) that external publishers may be ahead of the daemon's
/// acknowledgements, beside the [`PUBLISH_WINDOW`] of messages: two of the
/// largest packets a broker of `max_payload_bytes` takes (one committing,
/// one arriving), at least [`PUBLISH_WINDOW_MIN_BYTES`]; 8.25 MiB at the
/// default `mqtt.max_packet_bytes` of 4 MiB. As the message window, it
/// does not hold back a publish when nothing is counted.
///
/// Everything the embedded broker and the daemon hold of a message between
/// its publisher and the daemon's commit is within it: what rumqttd's log
/// has not yet sent the daemon, rumqttd's and the proxy's buffers towards
/// it, the relay's copies ([`RELAY_WINDOW`]), the daemon's queues and the
/// writer's batch. The proxy's reading budget (publishers' packets longer
/// than [`LARGE_PACKET`] read and not yet forwarded) is as large. Counted in messages alone, a flood of payloads near the
/// size limit (garbage the daemon rejects, or not) let 1,000 of them, up
/// to 4 GiB, be in flight at once.
pub fn publish_window_bytes(max_payload_bytes: usize) -> u64 {
    (2 * max_payload_bytes.saturating_add(PACKET_OVERHEAD) as u64).max(PUBLISH_WINDOW_MIN_BYTES)
}

/// Packets longer than this, bytes, are read from a publisher only within
/// the proxy's reading budget ([`Shared::reading`]).
pub const LARGE_PACKET: usize = 64 * 1024;

/// Segments of rumqttd's in-memory log of each filter
/// (`max_segment_count`, the one being filled included); see
/// [`rumqttd_segment_bytes`]. The log is also all an external client's
/// persistent session can fall behind by (another subscriber of the
/// embedded broker, offline): 8 keep at least what the earlier sizing kept
/// (8 segments of `max_packet_bytes`, at least 1 MiB); 3 dropped 27,577 of
/// a 100,000-message backlog queued for such a client (`edgeloop bench
/// ingest`, the embedded backlog row).
pub const RUMQTTD_SEGMENTS: usize = 8;

/// rumqttd's `max_segment_size` for a window of `window_bytes`
/// ([`publish_window_bytes`]): half of it. rumqttd keeps every message in
/// the log of each filter it matches, read or not, and drops the oldest
/// segment only when the one being filled reaches this size, while
/// [`RUMQTTD_SEGMENTS`] are kept; a segment holds at least this many bytes
/// when it is closed, and at most this plus one message. So:
/// - nothing the daemon has not read is dropped: when the oldest segment
///   goes, the closed ones left (two would do) hold at least `window_bytes`, the
///   newest bytes of the log, and what the daemon has not acknowledged is
///   at most that (the byte window counts each message before it is
///   forwarded to rumqttd);
/// - a log holds at most 8 × (`window_bytes` / 2 + one message): 65 MiB
///   at the defaults whatever the payloads (32.5 MiB of small readings),
///   where 8 segments of `max_packet_bytes` held up to 9 × (4 + 4) MiB,
///   72 MiB; an offline subscriber's backlog may fill it.
pub fn rumqttd_segment_bytes(window_bytes: u64) -> usize {
    usize::try_from(window_bytes / 2)
        .unwrap_or(usize::MAX)
        .max(1 << 20)
}

/// The size rumqttd gives a PUBLISH in its log (`router/logs.rs`,
/// `Storage for PublishData`): 4 + topic + payload bytes, from the
/// packet's first byte and its body (variable header and payload); the
/// same for a publisher's packet and for its delivery to the daemon,
/// whatever their packet ids. 0 for a body too short to be a PUBLISH.
pub fn publish_size(byte1: u8, body: &[u8]) -> u64 {
    let id = if (byte1 >> 1) & 3 > 0 { 2 } else { 0 };
    match str16(body) {
        Some((_, rest)) if rest.len() >= id => (body.len() + 2 - id) as u64,
        _ => 0,
    }
}

/// rumqttd's window of unacknowledged QoS 1 publishes towards one
/// subscriber (`router/iobufs.rs`, `MAX_INFLIGHT`; not configurable).
pub const BROKER_INFLIGHT: u64 = 100;

/// Most QoS 1 deliveries the proxy acknowledges to rumqttd on the daemon's
/// behalf before the daemon has acknowledged them (see "The relay" in the
/// module documentation): the daemon's in-flight window, beyond rumqttd's
/// 100. Equal to [`PUBLISH_WINDOW`], which bounds the same messages from the
/// publishers' side.
pub const RELAY_WINDOW: usize = PUBLISH_WINDOW as usize;

/// How long nothing new must reach the daemon, with everything it received
/// acknowledged, before the broker counts as drained.
pub const DRAIN_QUIET: Duration = Duration::from_millis(300);

/// Most external clients (publishers, subscribers) connected through the
/// proxy at once; beyond, a CONNECT is refused with CONNACK 3 "server
/// unavailable" (MQTT 5: 0x89 "server busy"), and the client retries.
pub const MAX_CLIENTS: usize = 1000;

/// rumqttd's `max_connections` beyond [`MAX_CLIENTS`]: the daemon's own
/// connections (three, and a replaced one while it reconnects) and the
/// connections the proxy closed whose disconnection rumqttd's router has
/// not handled yet. rumqttd must never refuse for want of room (see
/// "Access" in the module documentation).
const RUMQTTD_SPARE_CONNECTIONS: usize = 64;

/// Characters rumqttd's router refuses in a client id (`router/routing.rs`,
/// `validate_clientid`).
const REFUSED_ID_CHARS: [char; 4] = ['+', '$', '#', '/'];

/// How long a cut connection may take to close after the proxy half-closed
/// it towards rumqttd.
const CUT_GRACE: Duration = Duration::from_secs(2);
/// How long a new connection may take to send its CONNECT (as rumqttd's
/// `connection_timeout_ms`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection is held at the closed gate before it is dropped
/// (clients reconnect by themselves).
const HOLD_LIMIT: Duration = Duration::from_secs(60);
/// Room for the topic and header beyond the payload limit, bytes.
const PACKET_OVERHEAD: usize = 65536;

/// The most acknowledged messages a SIGKILL (or any crash) of the process
/// can lose with the embedded broker: [`PUBLISH_WINDOW`] plus
/// [`BROKER_INFLIGHT`] (see the module documentation). It does not depend
/// on the configuration: the window counts messages, whatever their size.
pub fn crash_loss_bound() -> u64 {
    PUBLISH_WINDOW + BROKER_INFLIGHT
}

/// Brokers started in this process, by the address asked for.
static STARTED: OnceLock<Mutex<HashMap<SocketAddr, EmbeddedBroker>>> = OnceLock::new();

/// Starts a broker listening on `listen` (MQTT 3.1.1), accepting payloads up
/// to `max_payload_bytes`, and waits until it accepts connections. Its gate
/// is open: no client is treated as the daemon's, nothing is held, counted
/// or throttled (the behaviour before [`EmbeddedBroker`]). Kept for
/// callers not yet moved to [`EmbeddedBroker::start`], which needs the
/// daemon's client id for the gate, the drain and the crash bound.
///
/// # Errors
/// As [`EmbeddedBroker::start`].
pub fn start(listen: SocketAddr, max_payload_bytes: usize) -> Result<(), IngestError> {
    let broker = EmbeddedBroker::start(listen, max_payload_bytes, "")?;
    broker.open();
    Ok(())
}

/// The broker this process started on `listen`, if any.
pub fn running(listen: SocketAddr) -> Option<EmbeddedBroker> {
    STARTED.get()?.lock().ok()?.get(&listen).cloned()
}

/// Who may connect to the embedded broker (see "Access" in the module
/// documentation).
#[derive(Clone, Default)]
pub struct BrokerAccess {
    /// `(username, password)` of the clients allowed in; empty: any client
    /// may connect, with or without credentials.
    pub users: Vec<(String, String)>,
    /// MQTT over TLS on the configured address (taken at the first start
    /// of an address in a process). The daemon's own clients then connect
    /// to a plain loopback listener of the proxy
    /// ([`EmbeddedBroker::daemon_addr`]) that admits only them.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for BrokerAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("BrokerAccess")
            .field("users", &names)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A running embedded broker: rumqttd behind edgeloop's proxy. Cheap to
/// clone; every clone is the same broker.
#[derive(Clone)]
pub struct EmbeddedBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("listen", &self.shared.listen)
            .field("internal", &self.shared.internal)
            .field("open", &self.is_open())
            .finish()
    }
}

/// What [`EmbeddedBroker::wait_drained`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    /// Everything the broker held for the daemon was delivered and
    /// acknowledged (see [`EmbeddedBroker::wait_drained`]).
    pub complete: bool,
    /// How long it waited.
    pub waited: Duration,
    /// Deliveries to the daemon not acknowledged when it returned.
    pub unacknowledged: usize,
    /// Deliveries external publishers were ahead of the daemon's
    /// acknowledgements (an estimate; 0 once drained).
    pub behind: u64,
}

/// Counters of the proxy ([`EmbeddedBroker::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// As [`EmbeddedBroker::behind`].
    pub behind: u64,
    /// The bytes of those deliveries ([`publish_size`] each).
    pub behind_bytes: u64,
    /// Most `behind_bytes` since the broker started: at most
    /// `window_bytes` (beyond it only when one publish alone matches so
    /// many of the daemon's filters).
    pub peak_behind_bytes: u64,
    /// [`publish_window_bytes`] of this broker.
    pub window_bytes: u64,
    /// Most deliveries the relay held at once (copies kept until the
    /// daemon acknowledges them).
    pub relay_peak: usize,
    /// Most bytes of those copies held at once.
    pub relay_peak_bytes: u64,
    /// Most bytes of publishers' packets longer than [`LARGE_PACKET`] read
    /// or being read, not yet forwarded, at once: at most `window_bytes`.
    pub reading_peak_bytes: u64,
    /// Publishes that waited for the window (the daemon was
    /// [`PUBLISH_WINDOW`] behind).
    pub throttled: u64,
    /// Times the count was reset because the daemon was caught up while
    /// publishes it will never receive were still counted.
    pub stale_resets: u64,
    /// Connections waiting at the closed gate now.
    pub held: usize,
    /// Whether the gate is open.
    pub open: bool,
    /// CONNECTs refused: a wrong or missing login, another client using
    /// the daemon's client id, a client id rumqttd does not take, or one
    /// client beyond [`MAX_CLIENTS`].
    pub refused: u64,
    /// Clients closed for publishing on a topic name that is none: a
    /// wildcard (`+`, `#`), U+0000, empty, or not UTF-8 (MQTT 3.1.1
    /// §3.3.2.1 and §1.5.3).
    pub bad_topics: u64,
}

impl EmbeddedBroker {
    /// Starts rumqttd on an ephemeral loopback port and the proxy on
    /// `listen` (MQTT 3.1.1; payloads up to `max_payload_bytes`), and waits
    /// until rumqttd accepts connections. `daemon_client_id` is the client
    /// id of the daemon's subscribing connection; `{daemon_client_id}-…` are
    /// its other connections (not gated, not cut). An empty id means no
    /// daemon: nothing is counted, and the gate must be opened with
    /// [`EmbeddedBroker::open`].
    ///
    /// The gate is closed: connections other than the daemon's are held
    /// after their CONNECT until the daemon's client has subscribed (or
    /// resumed a session that has subscriptions).
    ///
    /// Idempotent per address within a process: a second call returns the
    /// running broker, now for `daemon_client_id`, with its gate closed
    /// again (external connections are cut) until that daemon has
    /// subscribed.
    ///
    /// Blocking (up to 5 s): call it from `spawn_blocking` in async code.
    ///
    /// # Errors
    /// [`IngestError::Broker`] when `listen` is taken by another program or
    /// rumqttd does not come up within 5 s.
    pub fn start(
        listen: SocketAddr,
        max_payload_bytes: usize,
        daemon_client_id: &str,
    ) -> Result<Self, IngestError> {
        Self::start_with(
            listen,
            max_payload_bytes,
            daemon_client_id,
            BrokerAccess::default(),
        )
    }

    /// As [`EmbeddedBroker::start`], admitting only the clients `access`
    /// allows (a restart in the same process replaces them).
    ///
    /// # Errors
    /// As [`EmbeddedBroker::start`].
    pub fn start_with(
        listen: SocketAddr,
        max_payload_bytes: usize,
        daemon_client_id: &str,
        access: BrokerAccess,
    ) -> Result<Self, IngestError> {
        let started = STARTED.get_or_init(Default::default);
        let mut started = started
            .lock()
            .map_err(|_| IngestError::Broker("lock poisoned".into()))?;
        if let Some(broker) = started.get(&listen) {
            *broker
                .shared
                .users
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = access.users;
            broker.shared.rearm(daemon_client_id);
            return Ok(broker.clone());
        }
        let listener = StdListener::bind(listen)
            .map_err(|e| IngestError::Broker(format!("cannot listen on {listen}: {e}")))?;
        let bound = listener.local_addr().map_err(|e| {
            IngestError::Broker(format!("cannot read the address of {listen}: {e}"))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| IngestError::Broker(e.to_string()))?;
        let daemon_listener = match access.tls {
            None => None,
            Some(_) => {
                let l = StdListener::bind("127.0.0.1:0").map_err(|e| {
                    IngestError::Broker(format!("no free loopback port for the daemon: {e}"))
                })?;
                l.set_nonblocking(true)
                    .map_err(|e| IngestError::Broker(e.to_string()))?;
                Some(l)
            }
        };
        let daemon_addr = match &daemon_listener {
            Some(l) => l
                .local_addr()
                .map_err(|e| IngestError::Broker(e.to_string()))?,
            None if bound.ip().is_unspecified() => SocketAddr::from(([127, 0, 0, 1], bound.port())),
            None => bound,
        };
        let internal = start_rumqttd(max_payload_bytes, publish_window_bytes(max_payload_bytes))?;
        let (gate, _) = watch::channel(Gate {
            open: false,
            generation: 0,
        });
        let now = Instant::now();
        let shared = Arc::new(Shared {
            listen: bound,
            daemon_addr,
            internal,
            max_frame: max_payload_bytes.saturating_add(PACKET_OVERHEAD),
            window_bytes: publish_window_bytes(max_payload_bytes),
            reading: tokio::sync::Semaphore::new(
                usize::try_from(publish_window_bytes(max_payload_bytes)).unwrap_or(usize::MAX >> 4),
            ),
            reading_peak: AtomicU64::new(0),
            gate,
            flow: Mutex::new(Flow {
                daemon_id: daemon_client_id.to_string(),
                auto_open: true,
                filters: Vec::new(),
                debt: 0,
                debt_bytes: 0,
                peak_debt_bytes: 0,
                daemon: None,
                relay: Relay::default(),
                last_delivery: now,
                last_counted: now,
                externals: 0,
                externals_gone: now,
                closed_at: None,
                held: 0,
                held_warned: now,
                resets: 0,
                throttled: 0,
            }),
            changed: Notify::new(),
            next_conn: AtomicU64::new(1),
            users: Mutex::new(access.users),
            refused: AtomicU64::new(0),
            bad_topics: AtomicU64::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("mqtt-proxy".into())
            .spawn({
                let shared = shared.clone();
                let tls = access.tls.clone();
                move || run_proxy(shared, listener, tls, daemon_listener, ready_tx)
            })
            .map_err(|e| IngestError::Broker(e.to_string()))?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| IngestError::Broker("the proxy thread did not start".into()))?
            .map_err(IngestError::Broker)?;
        let broker = Self { shared };
        started.insert(listen, broker.clone());
        info!(
            listen = %bound,
            rumqttd = %internal,
            daemon_client_id,
            publish_window = PUBLISH_WINDOW,
            publish_window_bytes = broker.shared.window_bytes,
            crash_loss_bound = crash_loss_bound(),
            users = broker.shared.users.lock().map(|u| u.len()).unwrap_or(0),
            tls = %daemon_addr != bound,
            "Embedded MQTT broker started. Publishers are held until the daemon has subscribed; \
             a crash (SIGKILL, power loss) loses at most crash_loss_bound acknowledged messages, \
             SIGTERM none."
        );
        Ok(broker)
    }

    /// Where the daemon's own clients connect: the configured address
    /// (loopback when it is `0.0.0.0`), or, when that one speaks TLS, a
    /// plain loopback listener of the proxy that admits only the daemon's
    /// login.
    pub fn daemon_addr(&self) -> SocketAddr {
        self.shared.daemon_addr
    }

    /// Where the broker accepts connections (the configured address, with
    /// the port bound when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// rumqttd's own address (loopback, ephemeral port). Connections made
    /// there bypass the proxy: no gate, no cut, not counted (for
    /// measurements).
    pub fn rumqttd_addr(&self) -> SocketAddr {
        self.shared.internal
    }

    /// Whether external clients are let through now.
    pub fn is_open(&self) -> bool {
        self.shared.gate.borrow().open
    }

    /// Lets external clients through now (held ones included), whether or
    /// not the daemon has subscribed. The daemon does not need it: the gate
    /// opens by itself once its client has subscribed.
    pub fn open(&self) {
        self.shared.set_open();
    }

    /// Deliveries external publishers are ahead of the daemon's
    /// acknowledgements now: about what a crash would lose now.
    pub fn behind(&self) -> u64 {
        self.shared.flow().debt
    }

    /// Counters of the proxy.
    pub fn stats(&self) -> ProxyStats {
        let f = self.shared.flow();
        ProxyStats {
            behind: f.debt,
            behind_bytes: f.debt_bytes,
            peak_behind_bytes: f.peak_debt_bytes,
            window_bytes: self.shared.window_bytes,
            relay_peak: f.relay.peak,
            relay_peak_bytes: f.relay.peak_bytes,
            reading_peak_bytes: self.shared.reading_peak.load(Ordering::Relaxed),
            throttled: f.throttled,
            stale_resets: f.resets,
            held: f.held,
            open: self.is_open(),
            refused: self.shared.refused.load(Ordering::Relaxed),
            bad_topics: self.shared.bad_topics.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting publishes: closes the gate (new connections are held,
    /// and dropped after a minute) and cuts every external connection at a
    /// packet boundary; waits until those connections are closed (at most
    /// about 2.5 s). The daemon's own connections stay. Returns how many
    /// connections were cut.
    ///
    /// A publish forwarded before the cut is in rumqttd's log (and reaches
    /// the daemon) even if its PUBACK never reaches the publisher, which
    /// then sends it again later: at least once, never lost.
    pub async fn stop_accepting_publishes(&self) -> usize {
        let cut = {
            let mut f = self.shared.flow();
            f.auto_open = false;
            f.closed_at = Some(Instant::now());
            f.externals
        };
        self.shared.gate.send_modify(|g| {
            g.open = false;
            g.generation += 1;
        });
        let until = Instant::now() + CUT_GRACE + Duration::from_millis(500);
        while self.shared.flow().externals > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.shared.flow().externals;
        info!(
            cut,
            left, "Embedded MQTT broker: stopped accepting publishes."
        );
        cut
    }

    /// Waits until the daemon has received and acknowledged everything the
    /// broker holds for it, or `limit` passes. Drained: the gate is closed
    /// ([`EmbeddedBroker::stop_accepting_publishes`]), no external
    /// connection is left, the daemon's client is connected, every QoS 1
    /// publish sent to it is acknowledged, and for `quiet` none was sent and
    /// no external connection was open. Call it while the daemon still
    /// receives, commits and acknowledges as usual.
    pub async fn wait_drained(&self, quiet: Duration, limit: Duration) -> Drain {
        let started = Instant::now();
        loop {
            let (complete, unacknowledged, behind) = {
                let f = self.shared.flow();
                let now = Instant::now();
                let unacked = f.daemon.as_ref().map(|_| f.relay.len());
                let complete = !self.is_open()
                    && f.externals == 0
                    && unacked == Some(0)
                    && now.duration_since(f.last_delivery) >= quiet
                    && now.duration_since(f.externals_gone) >= quiet
                    && f.closed_at.is_some_and(|t| now.duration_since(t) >= quiet);
                (complete, unacked.unwrap_or(0), f.debt)
            };
            let waited = started.elapsed();
            if complete || waited >= limit {
                let drain = Drain {
                    complete,
                    waited,
                    unacknowledged,
                    behind: if complete { 0 } else { behind },
                };
                if complete {
                    info!(
                        waited_ms = waited.as_millis() as u64,
                        "Embedded MQTT broker drained: the daemon has acknowledged everything it held."
                    );
                } else {
                    warn!(
                        waited_ms = waited.as_millis() as u64,
                        unacknowledged,
                        behind,
                        daemon_connected = self.shared.flow().daemon.is_some(),
                        "Embedded MQTT broker not drained in time: what it still holds for the \
                         daemon is lost when the process exits (the publishers had it acknowledged)."
                    );
                }
                return drain;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the daemon's shutdown does first:
    /// [`EmbeddedBroker::stop_accepting_publishes`], then
    /// [`EmbeddedBroker::wait_drained`] with [`DRAIN_QUIET`] until `limit`
    /// (counted from the call).
    pub async fn drain_for_shutdown(&self, limit: Duration) -> Drain {
        let started = Instant::now();
        self.stop_accepting_publishes().await;
        self.wait_drained(DRAIN_QUIET, limit.saturating_sub(started.elapsed()))
            .await
    }
}

/// Starts rumqttd on a free loopback port, its log of each filter sized
/// for a window of `window_bytes` ([`rumqttd_segment_bytes`]), and waits
/// until it completes an MQTT handshake there; returns the address.
fn start_rumqttd(max_payload_bytes: usize, window_bytes: u64) -> Result<SocketAddr, IngestError> {
    // rumqttd binds the address itself and cannot report the port it got
    // for port 0: take a free port, release it, hand it over.
    let internal = StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| IngestError::Broker(format!("no free loopback port: {e}")))?;
    let server = rumqttd::ServerSettings {
        name: "edgeloop-embedded".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload_bytes,
            // Packets taken from one connection per read (not a window).
            max_inflight_count: 100,
            // Only the proxy (and the daemon through it) knows this login:
            // rumqttd's own port, reachable on loopback, admits nobody else.
            auth: Some(HashMap::from([(
                EMBEDDED_DAEMON_USER.to_string(),
                embedded_daemon_secret().to_string(),
            )])),
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: MAX_CLIENTS + RUMQTTD_SPARE_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: rumqttd_segment_bytes(window_bytes),
            max_segment_count: RUMQTTD_SEGMENTS,
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
    while !mqtt_handshake(internal) {
        if Instant::now() > until {
            return Err(IngestError::Broker(format!(
                "rumqttd not accepting connections on {internal} after 5 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(internal)
}

/// A full MQTT CONNECT / CONNACK / DISCONNECT exchange (a bare TCP probe
/// makes rumqttd log an error for the half-open connection).
fn mqtt_handshake(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = StdStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = bytes::BytesMut::new();
    let id = format!("edgeloop-probe-{}", std::process::id());
    let mut connect = rumqttc::Connect::new(id);
    connect.set_login(EMBEDDED_DAEMON_USER, embedded_daemon_secret());
    if connect.write(&mut buf).is_err() || rumqttc::Disconnect.write(&mut buf).is_err() {
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

// ---------------------------------------------------------------------------
// The proxy.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gate {
    open: bool,
    /// Incremented by each close: external connections let through under
    /// an older generation are cut.
    generation: u64,
}

struct Shared {
    listen: SocketAddr,
    /// Where the daemon's own clients connect.
    daemon_addr: SocketAddr,
    internal: SocketAddr,
    /// `(username, password)` of the clients allowed in; empty: any client
    /// (loopback only, `check-config` holds it so).
    users: Mutex<Vec<(String, String)>>,
    /// CONNECTs refused (as [`ProxyStats::refused`]).
    refused: AtomicU64,
    /// As [`ProxyStats::bad_topics`].
    bad_topics: AtomicU64,
    /// Largest packet forwarded, bytes.
    max_frame: usize,
    /// [`publish_window_bytes`] of this broker's payload limit.
    window_bytes: u64,
    /// The reading budget, bytes (`window_bytes` of them): a publisher's
    /// packet longer than [`LARGE_PACKET`] takes its length from it before
    /// the rest of it is read, and gives it back once the packet is
    /// forwarded. Without it each connection read its packet whole before
    /// the window could hold it back: 64 publishers of 4 MiB packets held
    /// 300 MB in the proxy's buffers.
    reading: tokio::sync::Semaphore,
    /// Most bytes of the reading budget taken at once.
    reading_peak: AtomicU64,
    gate: watch::Sender<Gate>,
    flow: Mutex<Flow>,
    /// Woken when the debt goes down.
    changed: Notify,
    next_conn: AtomicU64,
}

/// Accounting between external publishers and the daemon.
struct Flow {
    daemon_id: String,
    /// Open the gate at the daemon's next SUBACK (or CONNACK with a
    /// session).
    auto_open: bool,
    /// The daemon's subscriptions (mirrored from its SUBSCRIBE and
    /// UNSUBSCRIBE packets).
    filters: Vec<String>,
    /// Deliveries to the daemon forwarded and not yet acknowledged by it.
    debt: u64,
    /// Their bytes ([`publish_size`] each), within
    /// [`Shared::window_bytes`].
    debt_bytes: u64,
    /// Most `debt_bytes` so far.
    peak_debt_bytes: u64,
    daemon: Option<DaemonLink>,
    /// QoS 1 deliveries to the daemon it has not acknowledged yet.
    relay: Relay,
    /// Last PUBLISH rumqttd sent to the daemon.
    last_delivery: Instant,
    /// Last counted publish forwarded.
    last_counted: Instant,
    /// External connections let through and not yet closed.
    externals: usize,
    /// When `externals` last became 0.
    externals_gone: Instant,
    closed_at: Option<Instant>,
    /// Connections waiting at the closed gate.
    held: usize,
    held_warned: Instant,
    resets: u64,
    throttled: u64,
}

impl Flow {
    /// Counts `k` deliveries of `bytes` in all, forwarded now.
    fn count(&mut self, k: u64, bytes: u64) {
        self.debt += k;
        self.debt_bytes = self.debt_bytes.saturating_add(bytes);
        self.peak_debt_bytes = self.peak_debt_bytes.max(self.debt_bytes);
        self.last_counted = Instant::now();
    }
}

/// The daemon's current connection.
struct DaemonLink {
    conn: u64,
    /// rumqttd's packet ids to acknowledge on this connection, in order
    /// (rumqttd requires acknowledgements in order), written by its task
    /// towards rumqttd ([`up`]).
    acks: tokio::sync::mpsc::UnboundedSender<u16>,
}

/// One QoS 1 delivery to the daemon, under the proxy's packet id.
struct Relayed {
    pkid: u16,
    /// Counted in the debt (a non-retained publish).
    counted: bool,
    /// Its [`publish_size`]: counted in the debt's bytes when `counted`.
    size: u64,
    /// The PUBLISH as sent to the daemon, to send again on its next
    /// connection if it is not acknowledged on this one.
    packet: Vec<u8>,
}

/// The QoS 1 deliveries to the daemon it has not acknowledged, in the
/// order sent (see "The relay" in the module documentation).
struct Relay {
    /// Acknowledged to rumqttd by the proxy: kept until the daemon
    /// acknowledges them, and sent again on its next connection.
    early: VecDeque<Relayed>,
    /// Not yet acknowledged to rumqttd (with rumqttd's packet id on the
    /// current connection): rumqttd delivers them again after a reconnect.
    late: VecDeque<(Relayed, u16)>,
    /// The proxy's packet ids in use (1..=65535).
    in_use: Box<[u64; 1024]>,
    last_pkid: u16,
    /// Most deliveries held at once.
    peak: usize,
    /// Bytes of the copies held now (each packet as sent to the daemon).
    bytes: u64,
    /// Most `bytes` held at once.
    peak_bytes: u64,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            early: VecDeque::new(),
            late: VecDeque::new(),
            in_use: Box::new([0; 1024]),
            last_pkid: 0,
            peak: 0,
            bytes: 0,
            peak_bytes: 0,
        }
    }
}

impl Relay {
    fn len(&self) -> usize {
        self.early.len() + self.late.len()
    }

    fn used(&self, pkid: u16) -> bool {
        self.in_use[usize::from(pkid / 64)] & (1 << (pkid % 64)) != 0
    }

    fn mark(&mut self, pkid: u16, used: bool) {
        let (word, bit) = (usize::from(pkid / 64), 1u64 << (pkid % 64));
        if used {
            self.in_use[word] |= bit;
        } else {
            self.in_use[word] &= !bit;
        }
    }

    /// A free packet id (the window is far below 65,535, so one exists).
    fn take_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1);
            if self.last_pkid != 0 && !self.used(self.last_pkid) {
                self.mark(self.last_pkid, true);
                return self.last_pkid;
            }
        }
    }

    /// Forgets the deliveries rumqttd was not told of: it delivers them
    /// again on the daemon's next connection.
    fn drop_late(&mut self) {
        while let Some((r, _)) = self.late.pop_front() {
            self.forget(&r);
        }
    }

    fn clear(&mut self) {
        self.drop_late();
        while let Some(r) = self.early.pop_front() {
            self.forget(&r);
        }
    }

    /// Holds a delivery not yet acknowledged to rumqttd (its packet id
    /// there is `rumqttd_pkid`).
    fn hold(&mut self, r: Relayed, rumqttd_pkid: u16) {
        self.bytes += r.packet.len() as u64;
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        self.late.push_back((r, rumqttd_pkid));
        self.peak = self.peak.max(self.len());
    }

    /// A delivery no longer held: its id is free, its copy gone.
    fn forget(&mut self, r: &Relayed) {
        self.mark(r.pkid, false);
        self.bytes = self.bytes.saturating_sub(r.packet.len() as u64);
    }

    /// Acknowledges to rumqttd, in order, what the window allows.
    fn release(&mut self, link: Option<&DaemonLink>) {
        while self.early.len() < RELAY_WINDOW {
            let Some((r, rumqttd_pkid)) = self.late.pop_front() else {
                break;
            };
            if let Some(link) = link {
                let _ = link.acks.send(rumqttd_pkid);
            }
            self.early.push_back(r);
        }
    }

    /// The daemon acknowledged `pkid`: its size ([`publish_size`]) if it
    /// was counted, `Some(None)` if not, or `None` when the relay does not
    /// hold it. A delivery not yet acknowledged to rumqttd is, with every
    /// one before it (in order).
    fn acknowledged(&mut self, pkid: u16, link: Option<&DaemonLink>) -> Option<Option<u64>> {
        let found = if let Some(i) = self.early.iter().position(|r| r.pkid == pkid) {
            self.early.remove(i)
        } else {
            let i = self.late.iter().position(|(r, _)| r.pkid == pkid)?;
            for (r, rumqttd_pkid) in self.late.drain(..=i) {
                if let Some(link) = link {
                    let _ = link.acks.send(rumqttd_pkid);
                }
                self.early.push_back(r);
            }
            self.early.pop_back()
        }?;
        self.forget(&found);
        self.release(link);
        Some(found.counted.then_some(found.size))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The daemon's subscribing client: observed.
    Daemon,
    /// Another client of the daemon (`{id}-…`): not gated, not cut.
    Internal,
    External,
}

impl Shared {
    fn flow(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_open(&self) {
        self.gate
            .send_if_modified(|g| !std::mem::replace(&mut g.open, true));
    }

    /// A new start on a running broker (an in-process restart).
    fn rearm(&self, daemon_id: &str) {
        {
            let mut f = self.flow();
            if f.daemon_id != daemon_id {
                f.daemon_id = daemon_id.to_string();
                f.filters.clear();
                f.debt = 0;
                f.daemon = None;
                f.relay.clear();
            }
            f.auto_open = true;
            f.closed_at = Some(Instant::now());
        }
        self.gate.send_if_modified(|g| {
            let was = g.open;
            g.open = false;
            g.generation += u64::from(was);
            was
        });
        self.changed.notify_waiters();
    }

    fn classify(&self, client_id: Option<&str>) -> Kind {
        let f = self.flow();
        match client_id {
            Some(id) if !f.daemon_id.is_empty() && id == f.daemon_id => Kind::Daemon,
            Some(id)
                if !f.daemon_id.is_empty()
                    && id.len() > f.daemon_id.len() + 1
                    && id.starts_with(f.daemon_id.as_str())
                    && id.as_bytes()[f.daemon_id.len()] == b'-' =>
            {
                Kind::Internal
            }
            _ => Kind::External,
        }
    }

    /// How many deliveries to the daemon a publish on `topic` makes.
    fn matches(f: &Flow, topic: &str) -> u64 {
        f.filters
            .iter()
            .filter(|filter| rumqttc::matches(topic, filter))
            .count() as u64
    }

    /// Counts `k` deliveries of `size` bytes each ([`publish_size`]) if
    /// both windows allow ([`PUBLISH_WINDOW`] deliveries and
    /// [`Shared::window_bytes`]); always when nothing is counted, so that
    /// one publish matching more filters than the window still passes.
    fn try_acquire(&self, k: u64, size: u64) -> bool {
        let mut f = self.flow();
        let bytes = k.saturating_mul(size);
        if f.debt == 0
            || (f.debt + k <= PUBLISH_WINDOW && f.debt_bytes + bytes <= self.window_bytes)
        {
            f.count(k, bytes);
            true
        } else {
            false
        }
    }

    async fn acquire(&self, k: u64, size: u64) {
        let mut counted = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_acquire(k, size) {
                return;
            }
            if !counted {
                counted = true;
                self.flow().throttled += 1;
            }
            notified.await;
        }
    }

    /// Reset of a stale debt; warning about connections held too long.
    fn tick(&self) {
        let now = Instant::now();
        let mut f = self.flow();
        let caught_up = f.daemon.is_some() && f.relay.len() == 0;
        if f.debt > 0
            && caught_up
            && now.duration_since(f.last_delivery) >= DRAIN_QUIET
            && now.duration_since(f.last_counted) >= DRAIN_QUIET
        {
            debug!(
                debt = f.debt,
                "Embedded broker: the daemon is caught up; forgetting publishes it will not receive."
            );
            f.debt = 0;
            f.debt_bytes = 0;
            f.resets += 1;
            drop(f);
            self.changed.notify_waiters();
            return;
        }
        if f.held > 0
            && f.auto_open
            && !self.gate.borrow().open
            && now.duration_since(f.held_warned) >= Duration::from_secs(30)
        {
            f.held_warned = now;
            warn!(
                held = f.held,
                daemon_client_id = %f.daemon_id,
                "Embedded MQTT broker: publishers are held until the daemon has subscribed, and it has not yet."
            );
        }
    }

    /// A packet from a client towards rumqttd. Returns the deliveries an
    /// external publish must acquire before it is forwarded, and the size
    /// of each ([`publish_size`]).
    fn inspect_up(&self, kind: Kind, byte1: u8, body: &[u8]) -> (u64, u64) {
        match (byte1 >> 4, kind) {
            (PUBLISH, _) => {
                let Some(topic) = str16(body).and_then(|(t, _)| std::str::from_utf8(t).ok()) else {
                    return (0, 0);
                };
                let mut f = self.flow();
                let (k, size) = (Self::matches(&f, topic), publish_size(byte1, body));
                if k > 0 && kind != Kind::External {
                    f.count(k, k.saturating_mul(size));
                    return (0, 0);
                }
                (k, size)
            }
            (SUBSCRIBE, Kind::Daemon) => {
                let mut f = self.flow();
                for filter in subscribe_filters(body) {
                    if !f.filters.contains(&filter) {
                        f.filters.push(filter);
                    }
                }
                (0, 0)
            }
            (UNSUBSCRIBE, Kind::Daemon) => {
                let gone = unsubscribe_filters(body);
                self.flow().filters.retain(|f| !gone.contains(f));
                (0, 0)
            }
            _ => (0, 0),
        }
    }

    /// The daemon's PUBACK of `pkid` on connection `conn`: taken by the
    /// relay (never forwarded: rumqttd had its acknowledgement from the
    /// proxy, or gets it now, in order). False for a stale one (an earlier
    /// connection's, or a packet id the relay does not hold), which is
    /// dropped too.
    fn daemon_ack(&self, conn: u64, pkid: u16) {
        let mut f = self.flow();
        let f = &mut *f;
        let link = f.daemon.as_ref().filter(|d| d.conn == conn);
        if link.is_none() {
            return;
        }
        match f.relay.acknowledged(pkid, link) {
            Some(counted) => {
                if let (Some(size), true) = (counted, f.debt > 0) {
                    f.debt -= 1;
                    f.debt_bytes = f.debt_bytes.saturating_sub(size);
                    self.changed.notify_waiters();
                }
            }
            None => debug!(
                pkid,
                "Embedded broker: an acknowledgement of nothing held; dropped."
            ),
        }
    }

    /// A packet from rumqttd towards the daemon's client (connection
    /// `conn`, whose acknowledgements towards rumqttd go to `acks`), in
    /// `packet` (fixed header of `header_len` bytes): a QoS 1 PUBLISH is
    /// relayed (renumbered in place); after a CONNACK of a resumed session
    /// the deliveries the daemon had not acknowledged are appended to
    /// `resend`.
    fn inspect_down(
        &self,
        conn: u64,
        packet: &mut [u8],
        header_len: usize,
        acks: &tokio::sync::mpsc::UnboundedSender<u16>,
        resend: &mut Vec<u8>,
    ) {
        let byte1 = packet[0];
        match byte1 >> 4 {
            PUBLISH => {
                let qos = (byte1 >> 1) & 3;
                let retained = byte1 & 1 == 1;
                let mut f = self.flow();
                let f = &mut *f;
                f.last_delivery = Instant::now();
                if qos != 1 || !f.daemon.as_ref().is_some_and(|d| d.conn == conn) {
                    return;
                }
                let body = &packet[header_len..];
                let Some(at) = str16(body).map(|(t, _)| header_len + 2 + t.len()) else {
                    return;
                };
                let Some(id) = packet.get(at..at + 2) else {
                    return;
                };
                let rumqttd_pkid = u16::from_be_bytes([id[0], id[1]]);
                let pkid = f.relay.take_pkid();
                packet[at..at + 2].copy_from_slice(&pkid.to_be_bytes());
                let size = publish_size(byte1, &packet[header_len..]);
                f.relay.hold(
                    Relayed {
                        pkid,
                        counted: !retained,
                        size,
                        packet: packet.to_vec(),
                    },
                    rumqttd_pkid,
                );
                f.relay.release(f.daemon.as_ref());
            }
            CONNACK => {
                let body = &packet[header_len..];
                let (session, code) = (body.first().copied(), body.get(1).copied());
                if code != Some(0) {
                    return;
                }
                let resumed = session.is_some_and(|s| s & 1 == 1);
                let open = {
                    let mut f = self.flow();
                    let f = &mut *f;
                    f.daemon = Some(DaemonLink {
                        conn,
                        acks: acks.clone(),
                    });
                    f.relay.drop_late();
                    if resumed {
                        // Sent again (DUP) before anything new. Counted no
                        // more: should rumqttd deliver one of them again too
                        // (an acknowledgement it did not read before the old
                        // connection closed), that copy is counted instead;
                        // the debt only errs high, and is reset once the
                        // daemon is caught up.
                        for r in f.relay.early.iter_mut() {
                            r.counted = false;
                            r.packet[0] |= 0x08;
                            resend.extend_from_slice(&r.packet);
                        }
                    } else {
                        f.relay.clear();
                    }
                    f.auto_open && resumed && !f.filters.is_empty()
                };
                if open {
                    info!("Embedded MQTT broker: the daemon resumed its session; letting publishers in.");
                    self.set_open();
                }
            }
            SUBACK => {
                let body = &packet[header_len..];
                let ok = body.get(2..).is_some_and(|c| c.iter().any(|&c| c != 0x80));
                if ok && self.flow().auto_open {
                    info!(
                        "Embedded MQTT broker: the daemon has subscribed; letting publishers in."
                    );
                    self.set_open();
                }
            }
            _ => {}
        }
    }

    fn daemon_gone(&self, conn: u64) {
        let mut f = self.flow();
        if f.daemon.as_ref().is_some_and(|d| d.conn == conn) {
            f.daemon = None;
            f.relay.drop_late();
        }
    }
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;

/// The fixed header of the packet at the start of `buf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    byte1: u8,
    /// Fixed header length (2..=5).
    header_len: usize,
    /// Whole packet length.
    len: usize,
}

/// `Ok(None)`: not enough bytes yet for a whole packet. `Err`: a malformed
/// remaining length or a packet above `max`.
fn frame(buf: &[u8], max: usize) -> Result<Option<Header>, ()> {
    let mut remaining = 0usize;
    for i in 1..5 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            if remaining > max {
                return Err(());
            }
            let len = i + 1 + remaining;
            return Ok((buf.len() >= len).then_some(Header {
                byte1: buf[0],
                header_len: i + 1,
                len,
            }));
        }
    }
    Err(())
}

/// The whole length of the packet at the start of `buf` when its fixed
/// header is there and the rest is not yet (and it is at most `max`).
fn pending_len(buf: &[u8], max: usize) -> Option<usize> {
    let mut remaining = 0usize;
    for i in 1..5 {
        let b = *buf.get(i)?;
        remaining |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let len = i + 1 + remaining;
            return (remaining <= max && buf.len() < len).then_some(len);
        }
    }
    None
}

/// A length-prefixed MQTT string and what follows it.
fn str16(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    Some((b.get(2..2 + n)?, b.get(2 + n..)?))
}

/// A variable byte integer and what follows it.
fn varint(b: &[u8]) -> Option<(usize, &[u8])> {
    let mut v = 0usize;
    for i in 0..4 {
        let byte = *b.get(i)?;
        v |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, &b[i + 1..]));
        }
    }
    None
}

/// Client id and clean-session flag of a CONNECT body (MQTT 3.1.1 or 5).
#[cfg(test)]
fn parse_connect(body: &[u8]) -> Option<(String, bool)> {
    let c = parse_connect_login(body)?;
    Some((c.client_id, c.clean))
}

/// What the proxy reads of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConnectLogin {
    client_id: String,
    clean: bool,
    /// Protocol level (4: MQTT 3.1.1, 5: MQTT 5).
    level: u8,
    username: Option<Vec<u8>>,
    password: Option<Vec<u8>>,
    /// Offset in the body of the connect flags byte.
    flags_at: usize,
    /// Offset in the body where the username (or, without one, the end of
    /// the payload) is.
    login_at: usize,
}

/// Parses a CONNECT body (MQTT 3.1.1 §3.1, MQTT 5 §3.1): the client id,
/// the will (skipped), the username and password.
fn parse_connect_login(body: &[u8]) -> Option<ConnectLogin> {
    let (_name, rest) = str16(body)?;
    let (level, flags) = (*rest.first()?, *rest.get(1)?);
    let flags_at = body.len() - rest.len() + 1;
    let mut rest = rest.get(4..)?;
    if level == 5 {
        let (n, r) = varint(rest)?;
        rest = r.get(n..)?;
    }
    let (id, mut rest) = str16(rest)?;
    if flags & 0b100 != 0 {
        if level == 5 {
            let (n, r) = varint(rest)?;
            rest = r.get(n..)?;
        }
        let (_topic, r) = str16(rest)?;
        let (_payload, r) = str16(r)?;
        rest = r;
    }
    let login_at = body.len() - rest.len();
    let mut username = None;
    if flags & 0x80 != 0 {
        let (u, r) = str16(rest)?;
        username = Some(u.to_vec());
        rest = r;
    }
    let mut password = None;
    if flags & 0x40 != 0 {
        let (p, _) = str16(rest)?;
        password = Some(p.to_vec());
    }
    Some(ConnectLogin {
        client_id: String::from_utf8_lossy(id).into_owned(),
        clean: flags & 0b10 != 0,
        level,
        username,
        password,
        flags_at,
        login_at,
    })
}

/// The CONNECT packet (fixed header included) of `body` with its login
/// replaced by `username` and `password`.
fn with_login(body: &[u8], c: &ConnectLogin, username: &str, password: &str) -> Vec<u8> {
    let mut new_body = Vec::with_capacity(c.login_at + username.len() + password.len() + 4);
    new_body.extend_from_slice(&body[..c.login_at]);
    new_body[c.flags_at] |= 0xC0;
    for field in [username.as_bytes(), password.as_bytes()] {
        new_body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        new_body.extend_from_slice(field);
    }
    let mut packet = vec![CONNECT << 4];
    let mut n = new_body.len();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if n == 0 {
            break;
        }
    }
    packet.extend_from_slice(&new_body);
    packet
}

/// CONNACK return codes (MQTT 3.1.1 §3.2.2.3) and their MQTT 5 reason codes.
const ID_REJECTED: (u8, u8) = (2, 0x85);
const SERVER_BUSY: (u8, u8) = (3, 0x89);
const BAD_LOGIN: (u8, u8) = (4, 0x86);
const NOT_AUTHORIZED: (u8, u8) = (5, 0x87);

/// A CONNACK refusing a connection of protocol `level`.
fn refusal(level: u8, code: (u8, u8)) -> Vec<u8> {
    if level == 5 {
        vec![CONNACK << 4, 3, 0, code.1, 0]
    } else {
        vec![CONNACK << 4, 2, 0, code.0]
    }
}

impl Shared {
    /// Whether a CONNECT may go on: `Ok` with the kind of client, or the
    /// CONNACK code refusing it. The daemon's own login (its user and this
    /// process's secret, compared in constant time) admits any client id;
    /// without it the daemon's ids are refused; other clients need one of
    /// `users` when there are any. A client id rumqttd refuses is refused
    /// first, whoever sends it.
    fn admit(&self, c: &ConnectLogin) -> Result<Kind, (u8, u8)> {
        use subtle::ConstantTimeEq;
        if c.client_id.contains(REFUSED_ID_CHARS) {
            return Err(ID_REJECTED);
        }
        let eq = |a: &[u8], b: &[u8]| bool::from(a.ct_eq(b));
        let (user, pass) = (
            c.username.as_deref().unwrap_or_default(),
            c.password.as_deref().unwrap_or_default(),
        );
        let kind = self.classify(Some(&c.client_id));
        if eq(user, EMBEDDED_DAEMON_USER.as_bytes())
            && eq(pass, embedded_daemon_secret().as_bytes())
        {
            return Ok(kind);
        }
        if kind != Kind::External {
            return Err(NOT_AUTHORIZED);
        }
        let users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if users.is_empty() {
            return Ok(kind);
        }
        if c.username.is_none() {
            return Err(NOT_AUTHORIZED);
        }
        // Every user is compared, so the time does not say which matched.
        let found = users.iter().fold(false, |found, (u, p)| {
            found | (eq(user, u.as_bytes()) & eq(pass, p.as_bytes()))
        });
        if found {
            Ok(kind)
        } else {
            Err(BAD_LOGIN)
        }
    }
}

/// Topic filters of a SUBSCRIBE body (MQTT 3.1.1).
fn subscribe_filters(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = body.get(2..).unwrap_or_default();
    while let Some((f, r)) = str16(rest) {
        out.push(String::from_utf8_lossy(f).into_owned());
        rest = r.get(1..).unwrap_or_default();
    }
    out
}

/// Topic filters of an UNSUBSCRIBE body (MQTT 3.1.1).
fn unsubscribe_filters(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = body.get(2..).unwrap_or_default();
    while let Some((f, r)) = str16(rest) {
        out.push(String::from_utf8_lossy(f).into_owned());
        rest = r;
    }
    out
}

/// Which listener a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// The configured address (plain or TLS): every admitted client.
    Configured,
    /// The loopback listener beside a TLS one: the daemon's own clients.
    DaemonOnly,
}

fn run_proxy(
    shared: Arc<Shared>,
    listener: StdListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    daemon_listener: Option<StdListener>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("proxy runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("proxy listener: {e}")));
                return;
            }
        };
        let daemon_listener = match daemon_listener.map(tokio::net::TcpListener::from_std) {
            None => None,
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => {
                let _ = ready.send(Err(format!("proxy listener: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        tokio::spawn({
            let shared = shared.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                loop {
                    tick.tick().await;
                    shared.tick();
                }
            }
        });
        if let Some(daemon_listener) = daemon_listener {
            tokio::spawn(accept_loop(
                shared.clone(),
                daemon_listener,
                None,
                Listener::DaemonOnly,
            ));
        }
        accept_loop(
            shared,
            listener,
            tls.map(tokio_rustls::TlsAcceptor::from),
            Listener::Configured,
        )
        .await;
    });
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    kind: Listener,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                match &tls {
                    None => {
                        tokio::spawn(serve(shared, stream, peer, kind));
                    }
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        tokio::spawn(async move {
                            match tokio::time::timeout(CONNECT_TIMEOUT, accept).await {
                                Ok(Ok(tls)) => serve(shared, tls, peer, kind).await,
                                Ok(Err(e)) => {
                                    debug!(%peer, error = %e, "Embedded broker: TLS handshake failed.")
                                }
                                Err(_) => {
                                    debug!(%peer, "Embedded broker: TLS handshake timed out.")
                                }
                            }
                        });
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "Embedded MQTT broker: accept failed.");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Decrements `externals` when an external connection ends.
struct ExternalGuard(Arc<Shared>);

impl ExternalGuard {
    /// Counts one more external connection; None when [`MAX_CLIENTS`] are
    /// connected.
    fn try_new(shared: &Arc<Shared>) -> Option<Self> {
        let mut f = shared.flow();
        if f.externals >= MAX_CLIENTS {
            return None;
        }
        f.externals += 1;
        Some(Self(shared.clone()))
    }
}

impl Drop for ExternalGuard {
    fn drop(&mut self) {
        let mut f = self.0.flow();
        f.externals -= 1;
        if f.externals == 0 {
            f.externals_gone = Instant::now();
        }
    }
}

/// Counts a connection held at the gate.
struct HeldGuard(Arc<Shared>);

impl HeldGuard {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.flow().held += 1;
        Self(shared.clone())
    }
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.0.flow().held -= 1;
    }
}

/// One client connection: its CONNECT, the gate, then both directions.
async fn serve<S: ClientIo>(
    shared: Arc<Shared>,
    mut client: S,
    peer: SocketAddr,
    listener: Listener,
) {
    let mut buf = BytesMut::with_capacity(8192);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match frame(&buf, shared.max_frame) {
                Ok(Some(h)) => return Some(h),
                Ok(None) => {}
                Err(()) => return None,
            }
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await;
    let Ok(Some(h)) = first else {
        debug!(%peer, "Embedded broker: connection closed before a whole first packet.");
        return;
    };
    let connect = (h.byte1 >> 4 == CONNECT)
        .then(|| parse_connect_login(&buf[h.header_len..h.len]))
        .flatten();
    let Some(connect) = connect else {
        debug!(%peer, "Embedded broker: the first packet is not a CONNECT; closing.");
        return;
    };
    let admitted = shared.admit(&connect).and_then(|kind| {
        // The daemon's own listener (beside a TLS one) takes the daemon only.
        if listener == Listener::DaemonOnly && kind == Kind::External {
            Err(NOT_AUTHORIZED)
        } else {
            Ok(kind)
        }
    });
    let kind = match admitted {
        Ok(kind) => kind,
        Err(code) => {
            refuse(&shared, &mut client, peer, &connect, code).await;
            return;
        }
    };
    // rumqttd admits only the daemon's login: every admitted client goes
    // on with it.
    let packet = with_login(
        &buf[h.header_len..h.len],
        &connect,
        EMBEDDED_DAEMON_USER,
        embedded_daemon_secret(),
    );
    let rest = buf.split_off(h.len);
    buf.clear();
    buf.extend_from_slice(&packet);
    buf.unsplit(rest);
    if kind == Kind::Daemon && connect.clean {
        shared.flow().filters.clear();
    }
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut generation = 0;
    let _external = if kind == Kind::External {
        match hold(&shared, &mut client, &mut buf).await {
            Some(g) => generation = g,
            None => return,
        }
        match ExternalGuard::try_new(&shared) {
            Some(guard) => Some(guard),
            None => {
                refuse(&shared, &mut client, peer, &connect, SERVER_BUSY).await;
                return;
            }
        }
    } else {
        None
    };
    let broker = match TcpStream::connect(shared.internal).await {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "Embedded MQTT broker: rumqttd refused a connection.");
            return;
        }
    };
    let _ = broker.set_nodelay(true);
    let (client_rd, client_wr) = tokio::io::split(client);
    let (broker_rd, broker_wr) = broker.into_split();
    // The relay's acknowledgements towards rumqttd (daemon only).
    let (acks_tx, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let acks_rx = (kind == Kind::Daemon).then_some(acks_rx);
    let up = up(
        &shared, kind, conn, generation, buf, client_rd, broker_wr, acks_rx,
    );
    let down = async {
        if kind == Kind::Daemon {
            down_daemon(&shared, conn, broker_rd, client_wr, acks_tx).await;
        } else {
            copy_down(broker_rd, client_wr).await;
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        // rumqttd closed the connection: drop the client's too.
        _ = &mut down => {}
        // The client closed, or the connection was cut: rumqttd sees the
        // end of the stream and closes its side.
        _ = &mut up => {
            let _ = tokio::time::timeout(CUT_GRACE, &mut down).await;
        }
    }
    if kind == Kind::Daemon {
        shared.daemon_gone(conn);
    }
}

/// Answers `connect` with a CONNACK refusing it with `code`, counted and
/// logged, and closes the connection.
async fn refuse<S: ClientIo>(
    shared: &Shared,
    client: &mut S,
    peer: SocketAddr,
    connect: &ConnectLogin,
    code: (u8, u8),
) {
    shared.refused.fetch_add(1, Ordering::Relaxed);
    warn!(
        %peer,
        client_id = %connect.client_id,
        username = %String::from_utf8_lossy(connect.username.as_deref().unwrap_or_default()),
        "Embedded MQTT broker: connection refused ({}).",
        if code == ID_REJECTED {
            "the client id holds one of + $ # /, which the embedded broker does not take"
        } else if code == SERVER_BUSY {
            "the most clients the embedded broker takes at once (MAX_CLIENTS) are connected"
        } else if code == NOT_AUTHORIZED
            && shared.classify(Some(&connect.client_id)) != Kind::External
        {
            "the daemon's client id, without the daemon's login"
        } else if code == NOT_AUTHORIZED {
            "no username; mqtt.embedded_users_file lists the users"
        } else {
            "wrong username or password"
        }
    );
    let _ = client.write_all(&refusal(connect.level, code)).await;
    let _ = client.shutdown().await;
}

/// Holds an external connection until the gate opens; the generation it
/// opened under, or None when the client left or waited too long.
async fn hold<S: ClientIo>(
    shared: &Arc<Shared>,
    client: &mut S,
    buf: &mut BytesMut,
) -> Option<u64> {
    let mut gate = shared.gate.subscribe();
    let mut held = None;
    let until = tokio::time::Instant::now() + HOLD_LIMIT;
    loop {
        let g = *gate.borrow_and_update();
        if g.open {
            return Some(g.generation);
        }
        if held.is_none() {
            held = Some(HeldGuard::new(shared));
        }
        tokio::select! {
            r = gate.changed() => if r.is_err() { return None },
            r = client.read_buf(buf) => match r {
                Ok(n) if n > 0 && buf.len() <= shared.max_frame => {}
                _ => return None,
            },
            _ = tokio::time::sleep_until(until) => return None,
        }
    }
}

/// Client → rumqttd: whole packets, inspected; external publishes wait for
/// the window; an external connection stops at a cut. Half-closes the
/// connection to rumqttd when it ends.
///
/// The daemon's connection (`acks` is `Some`): its PUBACKs go to the relay
/// instead of rumqttd, and the relay's acknowledgements (rumqttd's packet
/// ids, in order) are written to rumqttd between whole packets.
#[allow(clippy::too_many_arguments)]
async fn up<R: AsyncRead + Unpin>(
    shared: &Shared,
    kind: Kind,
    conn: u64,
    generation: u64,
    mut buf: BytesMut,
    mut client: R,
    mut broker: OwnedWriteHalf,
    mut acks: Option<tokio::sync::mpsc::UnboundedReceiver<u16>>,
) {
    let mut gate = shared.gate.subscribe();
    let external = kind == Kind::External;
    let mut out = BytesMut::new();
    // The reading budget taken for the large packet being read.
    let mut reading: Option<tokio::sync::SemaphorePermit<'_>> = None;
    'conn: loop {
        if external && gate.borrow().generation != generation {
            break;
        }
        let mut ready = 0;
        loop {
            let h = match frame(&buf[ready..], shared.max_frame) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(()) => {
                    debug!("Embedded broker: malformed or oversized packet; closing.");
                    break 'conn;
                }
            };
            let body = &buf[ready + h.header_len..ready + h.len];
            if acks.is_some() {
                // The daemon: PUBACKs to the relay, the rest forwarded.
                if h.byte1 >> 4 == PUBACK && body.len() >= 2 {
                    shared.daemon_ack(conn, u16::from_be_bytes([body[0], body[1]]));
                } else {
                    let _ = shared.inspect_up(kind, h.byte1, body);
                    out.extend_from_slice(&buf[ready..ready + h.len]);
                }
                ready += h.len;
                continue;
            }
            if h.byte1 >> 4 == PUBLISH && !publish_topic_valid(body) {
                // MQTT 3.1.1 §4.8: a protocol violation closes the
                // connection; what came before it is forwarded. rumqttd
                // would route it (its `+` stored as a device id).
                shared.bad_topics.fetch_add(1, Ordering::Relaxed);
                warn!(
                    topic = %String::from_utf8_lossy(str16(body).map_or(&[][..], |(t, _)| t)),
                    "Embedded MQTT broker: a client published on a topic name with a wildcard (+ #), U+0000, or none; closing its connection (MQTT 3.1.1 section 3.3.2.1), as mosquitto does. Nothing of that publish is stored or acknowledged."
                );
                if ready > 0 {
                    let _ = broker.write_all(&buf[..ready]).await;
                }
                break 'conn;
            }
            let (k, size) = shared.inspect_up(kind, h.byte1, body);
            if k > 0 && !shared.try_acquire(k, size) {
                if ready > 0 {
                    if broker.write_all(&buf[..ready]).await.is_err() {
                        break 'conn;
                    }
                    buf.advance(ready);
                    ready = 0;
                }
                tokio::select! {
                    _ = shared.acquire(k, size) => {}
                    _ = gate.wait_for(|g| g.generation != generation) => break 'conn,
                }
            }
            ready += h.len;
        }
        if let Some(rx) = acks.as_mut() {
            buf.advance(ready);
            while let Ok(pkid) = rx.try_recv() {
                out.extend_from_slice(&puback(pkid));
            }
            if !out.is_empty() {
                if broker.write_all(&out).await.is_err() {
                    break;
                }
                out.clear();
            }
        } else if ready > 0 {
            if broker.write_all(&buf[..ready]).await.is_err() {
                break;
            }
            buf.advance(ready);
        }
        if external {
            // A large packet not yet whole takes its length from the
            // reading budget before more of it is read; one forwarded gives
            // it back, and its buffer goes.
            match pending_len(&buf, shared.max_frame).filter(|&n| n > LARGE_PACKET) {
                Some(n) if reading.as_ref().map(|r| r.num_permits()) != Some(n) => {
                    // An earlier packet's budget first (it was forwarded).
                    drop(reading.take());
                    let permits = u32::try_from(n).unwrap_or(u32::MAX);
                    tokio::select! {
                        p = shared.reading.acquire_many(permits) => reading = p.ok(),
                        _ = gate.wait_for(|g| g.generation != generation) => break,
                    }
                    let taken = shared
                        .window_bytes
                        .saturating_sub(shared.reading.available_permits() as u64);
                    shared.reading_peak.fetch_max(taken, Ordering::Relaxed);
                    buf.reserve(n - buf.len());
                }
                Some(_) => {}
                // A large packet forwarded: its budget back, and its buffer
                // freed (kept, the connection would hold it to its end).
                None if reading.take().is_some() => {
                    let rest = buf.split();
                    buf = BytesMut::with_capacity(8192.max(rest.len()));
                    buf.extend_from_slice(&rest);
                }
                None => {}
            }
        }
        tokio::select! {
            biased;
            _ = gate.wait_for(|g| g.generation != generation), if external => break,
            pkid = async { acks.as_mut().expect("daemon").recv().await }, if acks.is_some() => {
                match pkid {
                    Some(pkid) => out.extend_from_slice(&puback(pkid)),
                    None => break,
                }
            }
            r = client.read_buf(&mut buf) => match r {
                Ok(n) if n > 0 => {}
                _ => break,
            },
        }
    }
    // The relay's last acknowledgements go out before the end of the
    // stream (rumqttd reads what precedes it).
    if let Some(rx) = acks.as_mut() {
        while let Ok(pkid) = rx.try_recv() {
            out.extend_from_slice(&puback(pkid));
        }
        if !out.is_empty() {
            let _ = broker.write_all(&out).await;
        }
    }
    let _ = broker.shutdown().await;
}

/// Whether a PUBLISH's body starts with a topic name a client may publish
/// on ([`super::mqtt::valid_topic_name`], and UTF-8: MQTT 3.1.1 §1.5.3).
fn publish_topic_valid(body: &[u8]) -> bool {
    str16(body)
        .and_then(|(t, _)| std::str::from_utf8(t).ok())
        .is_some_and(super::mqtt::valid_topic_name)
}

/// An MQTT 3.1.1 PUBACK.
fn puback(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [PUBACK << 4, 2, hi, lo]
}

/// rumqttd → the daemon's client: whole packets, inspected; QoS 1 publishes
/// relayed (see [`Shared::inspect_down`]).
async fn down_daemon<W: AsyncWrite + Unpin>(
    shared: &Shared,
    conn: u64,
    mut broker: OwnedReadHalf,
    mut client: W,
    acks: tokio::sync::mpsc::UnboundedSender<u16>,
) {
    let mut buf = BytesMut::with_capacity(16384);
    let mut resend = Vec::new();
    loop {
        match broker.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        let mut ready = 0;
        loop {
            match frame(&buf[ready..], shared.max_frame) {
                Ok(Some(h)) => {
                    shared.inspect_down(
                        conn,
                        &mut buf[ready..ready + h.len],
                        h.header_len,
                        &acks,
                        &mut resend,
                    );
                    ready += h.len;
                    if !resend.is_empty() {
                        // After the CONNACK, before anything else.
                        if client.write_all(&buf[..ready]).await.is_err()
                            || client.write_all(&resend).await.is_err()
                        {
                            let _ = client.shutdown().await;
                            return;
                        }
                        resend.clear();
                        buf.advance(ready);
                        ready = 0;
                    }
                }
                Ok(None) => break,
                Err(()) => {
                    warn!("Embedded MQTT broker: malformed packet from rumqttd to the daemon; closing.");
                    let _ = client.shutdown().await;
                    return;
                }
            }
        }
        if ready > 0 {
            if client.write_all(&buf[..ready]).await.is_err() {
                break;
            }
            buf.advance(ready);
        }
    }
    let _ = client.shutdown().await;
}

/// rumqttd → any other client: bytes as they come.
async fn copy_down<W: AsyncWrite + Unpin>(mut broker: OwnedReadHalf, mut client: W) {
    let _ = tokio::io::copy(&mut broker, &mut client).await;
    let _ = client.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{Connect, Publish, QoS, Subscribe, SubscribeFilter};

    fn bytes_of(write: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut b = BytesMut::new();
        write(&mut b);
        b.to_vec()
    }

    #[test]
    fn frames_whole_packets_only() {
        let mut p = Publish::new("a/b", QoS::AtLeastOnce, vec![7u8; 300]);
        p.pkid = 9;
        let bytes = bytes_of(|b| {
            p.write(b).unwrap();
        });
        let h = frame(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(h.len, bytes.len());
        assert_eq!(h.header_len, 3, "300 + 7 bytes need two length bytes");
        assert_eq!(h.byte1 >> 4, PUBLISH);
        assert_eq!((h.byte1 >> 1) & 3, 1);
        assert_eq!(frame(&bytes[..bytes.len() - 1], 1 << 20), Ok(None));
        assert_eq!(frame(&bytes[..2], 1 << 20), Ok(None));
        assert_eq!(frame(&bytes, 100), Err(()), "above the limit");
        assert_eq!(
            frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], 1 << 30),
            Err(())
        );
        let body = &bytes[h.header_len..h.len];
        assert_eq!(str16(body).unwrap().0, b"a/b");
    }

    /// The length of a packet not yet whole is known from its fixed
    /// header (what the reading budget takes before reading the rest).
    #[test]
    fn a_packets_length_is_read_before_the_packet() {
        let mut p = Publish::new("a/b", QoS::AtLeastOnce, vec![7u8; 300]);
        p.pkid = 9;
        let bytes = bytes_of(|b| {
            p.write(b).unwrap();
        });
        assert_eq!(pending_len(&bytes[..3], 1 << 20), Some(bytes.len()));
        assert_eq!(
            pending_len(&bytes[..bytes.len() - 1], 1 << 20),
            Some(bytes.len())
        );
        assert_eq!(pending_len(&bytes, 1 << 20), None, "whole");
        assert_eq!(pending_len(&bytes[..2], 1 << 20), None, "header cut");
        assert_eq!(pending_len(&bytes[..3], 100), None, "above the limit");
        assert_eq!(pending_len(&[], 1 << 20), None);
    }

    #[test]
    fn reads_connect_and_subscribe() {
        let mut c = Connect::new("edgeloop");
        c.clean_session = false;
        let bytes = bytes_of(|b| {
            c.write(b).unwrap();
        });
        let h = frame(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(h.byte1 >> 4, CONNECT);
        assert_eq!(
            parse_connect(&bytes[h.header_len..h.len]),
            Some(("edgeloop".to_string(), false))
        );
        let s = Subscribe::new_many([
            SubscribeFilter::new("sensors/+/occupancy".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("labels/#".into(), QoS::AtLeastOnce),
        ]);
        let bytes = bytes_of(|b| {
            s.write(b).unwrap();
        });
        let h = frame(&bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(h.byte1 >> 4, SUBSCRIBE);
        assert_eq!(
            subscribe_filters(&bytes[h.header_len..h.len]),
            ["sensors/+/occupancy", "labels/#"]
        );
    }

    #[test]
    fn a_connects_login_is_read_and_replaced_as_rumqttc_encodes_it() {
        // rumqttc's encoder writes the packets; its decoder reads ours back.
        let cases = [
            (None, None),
            (Some("alice"), Some("pw")),
            (Some("bob"), None),
        ];
        for (user, pass) in cases {
            for will in [false, true] {
                let mut c = Connect::new("dev-1");
                c.clean_session = false;
                if let Some(u) = user {
                    c.login = Some(rumqttc::Login::new(u, pass.unwrap_or("")));
                }
                if will {
                    c.last_will = Some(rumqttc::LastWill::new(
                        "dev/1/status",
                        "gone",
                        QoS::AtLeastOnce,
                        false,
                    ));
                }
                let bytes = bytes_of(|b| {
                    c.write(b).unwrap();
                });
                let h = frame(&bytes, 1 << 20).unwrap().unwrap();
                let body = &bytes[h.header_len..h.len];
                let l = parse_connect_login(body).unwrap();
                assert_eq!(l.client_id, "dev-1");
                assert!(!l.clean);
                assert_eq!(l.level, 4);
                assert_eq!(l.username.as_deref(), user.map(str::as_bytes));
                // rumqttc leaves the password flag off for an empty one.
                assert_eq!(l.password.as_deref(), pass.map(str::as_bytes));
                let new = with_login(body, &l, "edgeloop-daemon", "s3cret");
                let mut stream = BytesMut::from(&new[..]);
                let packet = rumqttc::Packet::read(&mut stream, 1 << 20).unwrap();
                let rumqttc::Packet::Connect(back) = packet else {
                    panic!("not a CONNECT: {packet:?}");
                };
                assert_eq!(back.client_id, "dev-1");
                assert!(!back.clean_session);
                assert_eq!(back.keep_alive, c.keep_alive);
                assert_eq!(back.last_will, c.last_will);
                let login = back.login.expect("a login");
                assert_eq!(
                    (login.username.as_str(), login.password.as_str()),
                    ("edgeloop-daemon", "s3cret")
                );
            }
        }
    }

    #[test]
    fn publishes_on_a_topic_name_that_is_none_are_told_apart() {
        let body = |topic: &[u8]| {
            let mut b = (topic.len() as u16).to_be_bytes().to_vec();
            b.extend_from_slice(topic);
            b.extend_from_slice(&[0, 1, b'{', b'}']);
            b
        };
        assert!(publish_topic_valid(&body(b"sensors/room1/occupancy")));
        assert!(publish_topic_valid(&body(
            "capteurs/salle-é/occupation".as_bytes()
        )));
        for bad in [
            &b"sensors/+/occupancy"[..],
            b"sensors/#",
            b"+",
            b"a/\0/b",
            b"",
            b"a/\xff",
        ] {
            assert!(!publish_topic_valid(&body(bad)), "{bad:?}");
        }
        // A topic length beyond the body: no topic name.
        assert!(!publish_topic_valid(&[0, 9, b'a']));
    }

    #[test]
    fn refusals_are_connacks_with_mqtt_codes() {
        // MQTT 3.1.1 §3.2.2.3: 4 bad user name or password, 5 not authorized.
        let mut stream = BytesMut::from(&refusal(4, BAD_LOGIN)[..]);
        let packet = rumqttc::Packet::read(&mut stream, 1 << 20).unwrap();
        assert_eq!(
            packet,
            rumqttc::Packet::ConnAck(rumqttc::ConnAck::new(
                rumqttc::ConnectReturnCode::BadUserNamePassword,
                false
            ))
        );
        let mut stream = BytesMut::from(&refusal(4, NOT_AUTHORIZED)[..]);
        let packet = rumqttc::Packet::read(&mut stream, 1 << 20).unwrap();
        assert_eq!(
            packet,
            rumqttc::Packet::ConnAck(rumqttc::ConnAck::new(
                rumqttc::ConnectReturnCode::NotAuthorized,
                false
            ))
        );
    }

    #[test]
    fn mqtt5_connect_client_id_after_properties() {
        // "MQTT", level 5, flags (clean), keep-alive 30, properties (len 5:
        // session expiry 0x11 = 10), client id "abc".
        let body = [
            0, 4, b'M', b'Q', b'T', b'T', 5, 0b10, 0, 30, 5, 0x11, 0, 0, 0, 10, 0, 3, b'a', b'b',
            b'c',
        ];
        assert_eq!(parse_connect(&body), Some(("abc".to_string(), true)));
    }

    fn relayed(r: &mut Relay, rumqttd_pkid: u16) -> u16 {
        let pkid = r.take_pkid();
        r.hold(
            Relayed {
                pkid,
                counted: true,
                size: 1,
                packet: vec![0x32],
            },
            rumqttd_pkid,
        );
        pkid
    }

    #[test]
    fn the_relay_acknowledges_rumqttd_in_order_within_its_window() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let link = DaemonLink { conn: 1, acks: tx };
        let mut acked = || std::iter::from_fn(|| rx.try_recv().ok()).collect::<Vec<u16>>();
        let mut r = Relay::default();
        // rumqttd numbers 1..=100 and starts again; the relay's ids stay
        // distinct while held.
        let ours: Vec<u16> = (0..RELAY_WINDOW + 150)
            .map(|i| {
                let p = relayed(&mut r, (i % 100) as u16 + 1);
                r.release(Some(&link));
                p
            })
            .collect();
        assert_eq!(
            ours.iter().collect::<std::collections::HashSet<_>>().len(),
            ours.len()
        );
        // The window's worth acknowledged to rumqttd at once, in its order.
        let first = acked();
        assert_eq!(first.len(), RELAY_WINDOW);
        assert_eq!(&first[..3], &[1, 2, 3]);
        assert_eq!((r.early.len(), r.late.len()), (RELAY_WINDOW, 150));
        // The daemon acknowledges the oldest: one more goes to rumqttd.
        assert_eq!(r.acknowledged(ours[0], Some(&link)), Some(Some(1)));
        assert_eq!(acked(), vec![((RELAY_WINDOW % 100) + 1) as u16]);
        // It acknowledges one rumqttd has not had yet: rumqttd gets every
        // one before it too, in order.
        let k = RELAY_WINDOW + 10;
        assert_eq!(r.acknowledged(ours[k], Some(&link)), Some(Some(1)));
        let released = acked();
        assert_eq!(released.len(), 10);
        assert_eq!(released[9], ((k % 100) + 1) as u16);
        assert_eq!(
            r.acknowledged(ours[k], Some(&link)),
            None,
            "acknowledged twice"
        );
        assert_eq!(r.len(), RELAY_WINDOW + 150 - 2);
        // A reconnect: what rumqttd has not had is dropped (it delivers it
        // again), the rest is kept to be sent again; ids are freed.
        r.drop_late();
        assert_eq!((r.early.len(), r.late.len()), (RELAY_WINDOW + 10 - 1, 0));
        let freed = ours[RELAY_WINDOW + 20];
        assert!(!r.used(freed) && r.used(ours[1]));
        r.clear();
        assert!(r.in_use.iter().all(|w| *w == 0));
    }

    #[test]
    fn relay_ids_wrap_around_and_skip_the_held() {
        let mut r = Relay::default();
        let held = relayed(&mut r, 1);
        assert_eq!(held, 1);
        for _ in 0..u16::MAX - 1 {
            let p = relayed(&mut r, 1);
            r.acknowledged(p, None);
        }
        // 65,535 taken in turn; id 1 is still held, 0 is never used.
        assert_eq!(r.take_pkid(), 2);
        assert_eq!(puback(0x1234), [0x40, 2, 0x12, 0x34]);
    }

    /// A publish's size is rumqttd's (4 + topic + payload) whatever its
    /// QoS and packet id, and rumqttd's log of each filter, sized from the
    /// byte window, still holds a window's worth when it drops its oldest
    /// segment, within a bound derived from the sizes alone.
    #[test]
    fn publishes_are_sized_as_rumqttd_and_its_log_holds_the_window() {
        let topic = "sensors/d1/occupancy";
        for (qos, payload) in [
            (QoS::AtMostOnce, 0),
            (QoS::AtMostOnce, 300),
            (QoS::AtLeastOnce, 0),
            (QoS::AtLeastOnce, 300_000),
        ] {
            let mut p = Publish::new(topic, qos, vec![7u8; payload]);
            if qos != QoS::AtMostOnce {
                p.pkid = 9;
            }
            let bytes = bytes_of(|b| {
                p.write(b).unwrap();
            });
            let h = frame(&bytes, 1 << 20).unwrap().unwrap();
            let body = &bytes[h.header_len..h.len];
            assert_eq!(
                publish_size(h.byte1, body),
                (4 + topic.len() + payload) as u64,
                "{qos:?} {payload}"
            );
        }
        assert_eq!(publish_size(0x32, &[0, 9, b'a']), 0, "no topic");
        assert_eq!(publish_size(0x32, &[0, 1, b'a', 0]), 0, "no packet id");
        // Two of the largest packets (4 MiB + 64 KiB), at least 8 MiB.
        assert_eq!(publish_window_bytes(4 << 20), 8_519_680);
        assert_eq!(publish_window_bytes(1 << 20), 8 << 20);
        for max in [1 << 10, 1 << 20, 4 << 20, 64 << 20] {
            let window = publish_window_bytes(max);
            let segment = rumqttd_segment_bytes(window) as u64;
            let kept = RUMQTTD_SEGMENTS as u64 - 1;
            // When the oldest segment goes, the closed ones left (each at
            // least `segment`) hold the newest `window` bytes: all the
            // daemon may not have read.
            assert!(kept * segment >= window, "{max}: {kept} x {segment}");
            // And at least what the earlier sizing kept for an offline
            // subscriber (7 closed segments of max(max, 1 MiB)).
            let before = 7 * (max as u64).max(1 << 20);
            assert!(
                kept * segment >= before,
                "{max}: {kept} x {segment} < {before}"
            );
            // No segment beyond one message past its size.
            let message = (max + PACKET_OVERHEAD) as u64;
            let log = RUMQTTD_SEGMENTS as u64 * (segment + message);
            assert!(log <= 8 * window, "{max}: {log}");
            if max == 4 << 20 {
                // 65 MiB, where 9 segments of up to 8 MiB held 72 MiB.
                assert_eq!(log, 8 * (4_259_840 + 4_259_840));
            }
        }
    }

    #[test]
    fn crash_bound_is_window_plus_rumqttd_inflight() {
        assert_eq!(crash_loss_bound(), 1100);
    }
}
