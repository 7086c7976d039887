//! `[mqtt]`: the broker, the session and the back-off of the MQTT
//! connections, and the broker URLs they accept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config_error::ConfigError;

/// `[mqtt]`: broker, session and back-off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub broker: String,
    pub embedded_listen: SocketAddr,
    pub client_id: String,
    pub keep_alive_s: u64,
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    pub max_packet_bytes: usize,
    pub ingest_max_payload_bytes: usize,
    pub outbox_capacity: usize,
    /// MQTT version of the daemon's connections to an external broker
    /// ([`Protocol`]); the embedded broker always speaks 3.1.1.
    pub protocol: Protocol,
    /// MQTT 5 session expiry interval, seconds (MQTT 5.0 §3.1.2.11.2): how
    /// long the broker keeps the daemon's session (subscriptions, queued
    /// QoS 1 messages) after the connection ends. 1..=4294967295, where
    /// 4294967295 never expires. MQTT 3.1.1 has no expiry: its persistent
    /// session (clean session off) lasts until the broker's own limit
    /// (mosquitto `persistent_client_expiration`).
    pub session_expiry_s: u32,
    /// PEM file of the CA certificate(s) that sign an `mqtts://` broker's
    /// certificate; required for `mqtts://`, refused otherwise.
    #[serde(default)]
    pub tls_ca_file: PathBuf,
    /// PEM client certificate (chain) for brokers that require one
    /// (mosquitto `require_certificate true`); with `tls_key_file`.
    #[serde(default)]
    pub tls_cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: PathBuf,
    /// MQTT username (CONNECT packet, MQTT 3.1.1 §3.1.3.4); empty: none.
    /// Sent in clear text unless the broker is `mqtts://`.
    #[serde(default)]
    pub username: String,
    /// MQTT password; needs `username`.
    #[serde(default)]
    pub password: String,
    /// The embedded broker's users: a file of `username:password` lines
    /// (`#` starts a comment). Empty: clients connect without credentials,
    /// allowed only while `embedded_listen` is a loopback address.
    #[serde(default)]
    pub embedded_users_file: PathBuf,
    /// MQTT over TLS on `embedded_listen`: PEM certificate chain and
    /// private key (both or neither). The daemon's own clients then use a
    /// plain loopback listener of the proxy that admits only them.
    #[serde(default)]
    pub embedded_tls_cert_file: PathBuf,
    #[serde(default)]
    pub embedded_tls_key_file: PathBuf,
}

/// `mqtt.protocol`: the MQTT version the daemon's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// MQTT 5.0 (OASIS standard, 2019): session expiry, receive maximum and
    /// reason codes. A broker that refuses an MQTT 5 CONNECT (CONNACK
    /// "unsupported protocol version", or a connection closed on the
    /// CONNECT) is spoken to in 3.1.1 from then on, with one WARN.
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1 (OASIS standard, 2014).
    #[serde(rename = "3.1.1")]
    V311,
}

/// `"5"` or `"3.1.1"`; also the number 5, which is what
/// `EDGELOOP__MQTT__PROTOCOL=5` becomes (the `config` crate parses numbers
/// in the environment).
impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(5) => Ok(Protocol::V5),
            Raw::Text(t) if t == "5" => Ok(Protocol::V5),
            Raw::Text(t) if t == "3.1.1" => Ok(Protocol::V311),
            Raw::Number(n) => Err(serde::de::Error::custom(format!(
                "`{n}` is not an MQTT version: \"5\" or \"3.1.1\""
            ))),
            Raw::Text(t) => Err(serde::de::Error::custom(format!(
                "`{t}` is not an MQTT version: \"5\" or \"3.1.1\""
            ))),
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::V5 => "5",
            Protocol::V311 => "3.1.1",
        })
    }
}

/// Username of the daemon's own connections to the embedded broker; their
/// password is [`embedded_daemon_secret`]. The embedded broker's proxy lets
/// a client use the daemon's client ids only with this login, and rumqttd
/// behind it accepts no other.
pub const EMBEDDED_DAEMON_USER: &str = "edgeloop-daemon";

/// The password of [`EMBEDDED_DAEMON_USER`]: 32 random bytes (the ring
/// provider's system random source), hex, drawn once per process and never
/// written anywhere: only this process's clients know it.
pub fn embedded_daemon_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        let mut bytes = [0u8; 32];
        let random = rustls::crypto::ring::default_provider().secure_random;
        if random.fill(&mut bytes).is_err() {
            // The system random source failed (it does not on Linux):
            // the kernel's, read directly.
            use std::io::Read;
            let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// Where the daemon's MQTT client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerTarget {
    /// The in-process broker, listening on this loopback address.
    Embedded(SocketAddr),
    /// An external broker at host:port; over TLS for `mqtts://`.
    External { host: String, port: u16, tls: bool },
}

impl MqttConfig {
    /// The MQTT version of the daemon's connections: `protocol` for an
    /// external broker, 3.1.1 for the embedded one (rumqttd behind the
    /// proxy speaks no other).
    pub fn protocol_for(&self, target: &BrokerTarget) -> Protocol {
        match target {
            BrokerTarget::Embedded(_) => Protocol::V311,
            BrokerTarget::External { .. } => self.protocol,
        }
    }

    /// The broker this configuration points at.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `mqtt.broker` when it is neither
    /// `"embedded"` nor a URL of one of [`BROKER_SCHEMES`]: `mqtt://` or
    /// `tcp://` (plain), `mqtts://` or `ssl://` (TLS).
    pub fn target(&self) -> Result<BrokerTarget, ConfigError> {
        if self.broker == "embedded" {
            return Ok(BrokerTarget::Embedded(self.embedded_listen));
        }
        let invalid = |reason| ConfigError::Invalid {
            key: "mqtt.broker".into(),
            reason,
        };
        let tls = self
            .broker
            .strip_prefix("mqtts://")
            .or_else(|| self.broker.strip_prefix("ssl://"));
        if let Some(rest) = tls {
            // 8883: the IANA port of MQTT over TLS.
            let (host, port) = parse_host_port(&self.broker, rest, 8883).map_err(invalid)?;
            return Ok(BrokerTarget::External {
                host,
                port,
                tls: true,
            });
        }
        let (host, port) = parse_mqtt_url(&self.broker).map_err(invalid)?;
        Ok(BrokerTarget::External {
            host,
            port,
            tls: false,
        })
    }

    /// Checks the session ([`MqttConfig::validate_session`]), and the TLS
    /// and authentication keys against the broker URL, reading every file
    /// they name (so a missing or unreadable file stops the daemon before it
    /// starts, naming the key and the file).
    ///
    /// # Errors
    /// As [`MqttConfig::validate_session`]; [`ConfigError::Invalid`] naming
    /// the key: a TLS file with a plain
    /// `mqtt://` broker or the embedded one, `mqtts://` without
    /// `tls_ca_file`, a certificate without its key (or the reverse), a
    /// password without a username, a file that cannot be read or holds no
    /// usable PEM item.
    pub fn validate_security(&self) -> Result<(), ConfigError> {
        self.validate_session()?;
        let bad = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                key: format!("mqtt.{key}"),
                reason,
            })
        };
        let tls = matches!(self.target()?, BrokerTarget::External { tls: true, .. });
        let set = |p: &Path| !p.as_os_str().is_empty();
        if !tls {
            for (key, path) in [
                ("tls_ca_file", &self.tls_ca_file),
                ("tls_cert_file", &self.tls_cert_file),
                ("tls_key_file", &self.tls_key_file),
            ] {
                if set(path) {
                    return bad(
                        key,
                        format!(
                            "set, but mqtt.broker `{}` is not an mqtts:// URL",
                            self.broker
                        ),
                    );
                }
            }
        } else if !set(&self.tls_ca_file) {
            return bad(
                "tls_ca_file",
                "an mqtts:// broker needs the PEM file of the CA that signed its \
                 certificate (the system's roots: /etc/ssl/certs/ca-certificates.crt)"
                    .into(),
            );
        }
        if set(&self.tls_cert_file) != set(&self.tls_key_file) {
            return bad(
                if set(&self.tls_cert_file) {
                    "tls_key_file"
                } else {
                    "tls_cert_file"
                },
                "a client certificate needs both tls_cert_file and tls_key_file".into(),
            );
        }
        if !self.password.is_empty() && self.username.is_empty() {
            return bad("username", "a password is set without a username".into());
        }
        if self.broker == "embedded" && !self.username.is_empty() {
            return bad(
                "username",
                "the daemon reaches the embedded broker with its own credentials; set \
                 mqtt.username for an external broker, and the embedded broker's users in \
                 mqtt.embedded_users_file"
                    .into(),
            );
        }
        let embedded = self.broker == "embedded";
        if !embedded && set(&self.embedded_users_file) {
            return bad(
                "embedded_users_file",
                format!("set, but mqtt.broker `{}` is not \"embedded\"", self.broker),
            );
        }
        if !embedded {
            for (key, path) in [
                ("embedded_tls_cert_file", &self.embedded_tls_cert_file),
                ("embedded_tls_key_file", &self.embedded_tls_key_file),
            ] {
                if set(path) {
                    return bad(
                        key,
                        format!("set, but mqtt.broker `{}` is not \"embedded\"", self.broker),
                    );
                }
            }
        }
        if embedded {
            self.embedded_tls()?;
            let users = self.embedded_users()?;
            if users.is_empty() && !self.embedded_listen.ip().is_loopback() {
                return bad(
                    "embedded_listen",
                    format!(
                        "{} is reachable beyond this machine, and the embedded broker has no \
                         users: anyone who reaches it could publish readings and labels. Set \
                         mqtt.embedded_users_file, or listen on 127.0.0.1",
                        self.embedded_listen
                    ),
                );
            }
        }
        if tls {
            crate::ingest::mqtt::tls_client_config(self)?;
        }
        Ok(())
    }
}

impl MqttConfig {
    /// Checks the session settings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `mqtt.session_expiry_s` when it is 0
    /// (MQTT 5: the session would end with each connection, and with it
    /// every QoS 1 message the broker holds for the daemon).
    pub fn validate_session(&self) -> Result<(), ConfigError> {
        if self.session_expiry_s == 0 {
            return Err(ConfigError::Invalid {
                key: "mqtt.session_expiry_s".into(),
                reason: "must be at least 1 (0 ends the session with each connection: \
                         messages sent while the daemon is away would be lost)"
                    .into(),
            });
        }
        Ok(())
    }

    /// The embedded broker's TLS server configuration, when
    /// `embedded_tls_cert_file` is set.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key: one file without the other,
    /// or a file that cannot be used.
    pub fn embedded_tls(&self) -> Result<Option<rustls::ServerConfig>, ConfigError> {
        crate::ingest::mqtt::optional_tls_server_config(
            &self.embedded_tls_cert_file,
            &self.embedded_tls_key_file,
            ("mqtt.embedded_tls_cert_file", "mqtt.embedded_tls_key_file"),
        )
    }

    /// The embedded broker's users, `(username, password)`, from
    /// `embedded_users_file`; empty when it is not set.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `mqtt.embedded_users_file`: the file
    /// cannot be read, a line has no `:`, an empty username or password, a
    /// username given twice, [`EMBEDDED_DAEMON_USER`], or no user at all.
    pub fn embedded_users(&self) -> Result<Vec<(String, String)>, ConfigError> {
        let path = &self.embedded_users_file;
        if path.as_os_str().is_empty() {
            return Ok(Vec::new());
        }
        let bad = |reason: String| ConfigError::Invalid {
            key: "mqtt.embedded_users_file".into(),
            reason,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let mut users: Vec<(String, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{} line {}", path.display(), i + 1);
            let (user, password) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("{at}: expected username:password")))?;
            if user.is_empty() || password.is_empty() {
                return Err(bad(format!("{at}: empty username or password")));
            }
            if user == EMBEDDED_DAEMON_USER || users.iter().any(|(u, _)| u == user) {
                return Err(bad(format!("{at}: username `{user}` is taken")));
            }
            users.push((user.to_string(), password.to_string()));
        }
        if users.is_empty() {
            return Err(bad(format!(
                "{} holds no username:password line",
                path.display()
            )));
        }
        Ok(users)
    }
}

/// The URL schemes of `mqtt.broker`, plain then TLS, as listed when a URL
/// has another: `tcp://` and `ssl://` are the names Eclipse Paho's clients
/// use for `mqtt://` and `mqtts://`, and rumqttc's `MqttOptions::parse_url`
/// takes all four, so a URL copied from either works here.
pub const BROKER_SCHEMES: &str = "mqtt://host[:port] or tcp://host[:port] (plain, port 1883), \
                                  mqtts://host[:port] or ssl://host[:port] (TLS, port 8883)";

/// The refusal of a broker URL of another scheme, listing those taken.
fn unknown_scheme(url: &str) -> String {
    format!("`{url}` is neither \"embedded\" nor a broker URL: {BROKER_SCHEMES}")
}

/// Parses `mqtt://host[:port]` or its alias `tcp://host[:port]` (port 1883
/// when absent) into host and port.
///
/// ```
/// use edgeloop::config::parse_mqtt_url;
/// assert_eq!(parse_mqtt_url("mqtt://broker:1884"), Ok(("broker".to_string(), 1884)));
/// assert_eq!(parse_mqtt_url("tcp://10.0.0.2"), Ok(("10.0.0.2".to_string(), 1883)));
/// assert!(parse_mqtt_url("http://broker").is_err());
/// ```
///
/// # Errors
/// A message saying what is wrong with the URL; for another scheme, the
/// schemes taken ([`BROKER_SCHEMES`]).
pub fn parse_mqtt_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or_else(|| unknown_scheme(url))?;
    parse_host_port(url, rest, 1883)
}

/// `host[:port]` of `url` (`rest`: after the scheme), `default_port` when
/// absent.
fn parse_host_port(url: &str, rest: &str, default_port: u16) -> Result<(String, u16), String> {
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("`{url}`: port `{p}` is not a number in 1..=65535"))?,
        ),
        None => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("`{url}`: host and a non-zero port are required"));
    }
    Ok((host.to_string(), port))
}

/// The topic filter a subscription matches: for a shared subscription
/// `$share/{group}/{filter}` (MQTT 5.0 §4.8.2; mosquitto grants it to MQTT
/// 3.1.1 clients too) the `{filter}`, which the topics of the messages it
/// delivers match; any other filter as it is.
pub fn topic_filter(subscription: &str) -> &str {
    shared(subscription).map_or(subscription, |(_, f)| f)
}

/// `(group, filter)` of a shared subscription `$share/{group}/{filter}`,
/// `None` for any other filter (including a malformed `$share/…`, which
/// [`valid_subscription`] refuses).
pub fn shared(subscription: &str) -> Option<(&str, &str)> {
    subscription.strip_prefix("$share/")?.split_once('/')
}

/// Why `filter` is not a valid MQTT topic filter (MQTT 3.1.1 §4.7.1,
/// the rules rumqttc's `valid_filter` checks), as a sentence naming the
/// level at fault; `None` for a valid filter. A newcomer writes
/// `sensors/room+/occupancy` or `sensors/#/occupancy` and is told which
/// wildcard goes where.
pub fn filter_problem(filter: &str) -> Option<String> {
    if filter.is_empty() {
        return Some("an empty filter matches no topic".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let last = i + 1 == levels.len();
        if level.contains('#') && (*level != "#" || !last) {
            return Some(format!(
                "level {} `{level}`: `#` must be a whole level and the last one (`sensors/#`)",
                i + 1
            ));
        }
        if level.contains('+') && *level != "+" {
            return Some(format!(
                "level {} `{level}`: `+` must be a whole level (`sensors/+/occupancy`)",
                i + 1
            ));
        }
    }
    (!rumqttc::valid_filter(filter)).then(|| "not a valid MQTT topic filter".into())
}

/// Why `subscription` is neither a valid topic filter nor a valid shared
/// subscription (`$share/{group}/{filter}`), as [`filter_problem`] says it;
/// `None` when [`valid_subscription`] takes it.
pub fn subscription_problem(subscription: &str) -> Option<String> {
    if subscription.starts_with("$share/") {
        return match shared(subscription) {
            Some((group, _)) if group.is_empty() || group.contains(['+', '#']) => Some(format!(
                "the shared subscription's group `{group}` must be a non-empty name without `+` or `#` ($share/{{group}}/{{filter}})"
            )),
            Some((_, filter)) => filter_problem(filter)
                .map(|why| format!("the shared subscription's filter `{filter}`: {why}")),
            None => Some("a shared subscription is $share/{group}/{filter}".into()),
        };
    }
    filter_problem(subscription)
}

/// Whether `subscription` is a valid topic filter, or a valid shared
/// subscription: a group name without `/`, `+` or `#`, then a valid filter.
pub fn valid_subscription(subscription: &str) -> bool {
    if subscription.starts_with("$share/") {
        return match shared(subscription) {
            Some((group, filter)) => {
                !group.is_empty()
                    && !group.contains(['+', '#'])
                    && !filter.is_empty()
                    && rumqttc::valid_filter(filter)
            }
            None => false,
        };
    }
    rumqttc::valid_filter(subscription)
}

/// Whether some topic matches both topic filters `a` and `b` (MQTT 3.1.1
/// §4.7: `+` one level, `#` this level's parent and every level below; a
/// wildcard first level matches no topic starting with `$`, §4.7.2).
pub fn filters_overlap(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    let wild = |l: &str| l == "+" || l == "#";
    if (wild(a[0]) && b[0].starts_with('$')) || (wild(b[0]) && a[0].starts_with('$')) {
        return false;
    }
    for i in 0.. {
        match (a.get(i).copied(), b.get(i).copied()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) if x == y || x == "+" || y == "+" => {}
            _ => return false,
        }
    }
    unreachable!("the loop returns by the end of the shorter filter")
}

/// Whether every topic that topic filter `inner` matches, `outer` matches
/// too (`sensors/#` covers `sensors/+/temp`; a filter covers itself).
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    let (o, n): (Vec<&str>, Vec<&str>) = (outer.split('/').collect(), inner.split('/').collect());
    if (o[0] == "+" || o[0] == "#") && n[0].starts_with('$') {
        return false;
    }
    for i in 0.. {
        match (o.get(i).copied(), n.get(i).copied()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) | (Some(_), Some("#")) => return false,
            (Some(x), Some(y)) if x == y || (x == "+" && y != "#") => {}
            _ => return false,
        }
    }
    unreachable!("the loop returns by the end of the shorter filter")
}

/// The least general topic filter that covers both `a` and `b`, level by
/// level: an equal level is kept, two different ones become `+`, and from
/// the level where either has `#` or has ended while the other goes on, the
/// rest is `#` (`sensors/a/#` and `sensors/+/temp`: `sensors/+/#`; `a` and
/// `a/b`: `a/#`, since `#` also matches its parent level, MQTT 3.1.1
/// §4.7.1.2). `None` when no filter covers both: their first levels differ
/// and one of them starts with `$`, which no wildcard first level matches
/// (§4.7.2).
pub fn covering_filter(a: &str, b: &str) -> Option<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.split('/').collect(), b.split('/').collect());
    if a[0] != b[0] && (a[0].starts_with('$') || b[0].starts_with('$')) {
        return None;
    }
    let mut out: Vec<&str> = Vec::with_capacity(a.len().max(b.len()));
    for i in 0.. {
        match (a.get(i).copied(), b.get(i).copied()) {
            (None, None) => break,
            (Some("#"), _) | (_, Some("#")) | (None, Some(_)) | (Some(_), None) => {
                out.push("#");
                break;
            }
            (Some(x), Some(y)) => out.push(if x == y { x } else { "+" }),
        }
    }
    Some(out.join("/"))
}

/// One subscription of the ingest connection, and the configured topic
/// filters it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// What the ingest connection subscribes to, `$share/{group}/` kept.
    pub filter: String,
    /// The configured filters (every pipeline's sample and label topics)
    /// it stands for, each once, the first configured first.
    pub covers: Vec<String>,
}

impl Subscription {
    /// Whether this subscription is a covering filter joined from
    /// configured filters that overlap partly ([`covering_filter`]), and
    /// none of them: the broker sends the daemon topics that none of the
    /// filters it stands for matches (`sensors/b/hum` for `sensors/+/#`,
    /// joined from `sensors/a/#` and `sensors/+/temp`).
    pub fn is_joined(&self) -> bool {
        !self.covers.contains(&self.filter)
    }
}

/// The subscriptions the ingest connection makes for `filters` (every
/// pipeline's sample and label topics), so that no two of the same kind
/// (plain, or shared in the same group) overlap: a broker delivers a
/// message once per matching subscription (MQTT 5.0 §3.3.4; mosquitto 2.0
/// over MQTT 5), each copy a new message without the DUP flag, and a
/// pipeline that does not deduplicate by content stored it twice (with
/// `sensors/#` and `sensors/+/temp` both subscribed, every `sensors/x/temp`
/// reading). Each filter is subscribed once; of two that overlap, one that
/// covers the other stands for both (`sensors/#`), and two that overlap
/// partly are joined into their [`covering_filter`] (`sensors/a/#` and
/// `sensors/+/temp`: `sensors/+/#`), repeated until no two of a kind
/// overlap (a joined filter may overlap a third). The writer routes each
/// message by every pipeline's own filters ([`crate::ingest::writer::Route`]),
/// so a topic a covering filter brings that no pipeline's filter matches is
/// acknowledged and counted as unrouted, not stored. Subscriptions of
/// different kinds are left as they are (`Config` refuses them when they
/// overlap).
pub fn subscription_plan<'a>(filters: impl IntoIterator<Item = &'a String>) -> Vec<Subscription> {
    let kind = |s: &str| shared(s).map(|(group, _)| group.to_string());
    let mut plan: Vec<Subscription> = Vec::new();
    for f in filters {
        if !plan.iter().any(|s| &s.filter == f) {
            plan.push(Subscription {
                filter: f.clone(),
                covers: vec![f.clone()],
            });
        }
    }
    // The first pair of a kind that overlaps, joined into the earlier one,
    // until none does.
    loop {
        let pair = (0..plan.len())
            .flat_map(|i| (i + 1..plan.len()).map(move |j| (i, j)))
            .find_map(|(i, j)| {
                let (a, b) = (&plan[i].filter, &plan[j].filter);
                if kind(a) != kind(b) {
                    return None;
                }
                let (fa, fb) = (topic_filter(a), topic_filter(b));
                if !filters_overlap(fa, fb) {
                    return None;
                }
                let joined = if filter_covers(fa, fb) {
                    fa.to_string()
                } else if filter_covers(fb, fa) {
                    fb.to_string()
                } else {
                    // Overlapping filters always have one.
                    covering_filter(fa, fb)?
                };
                Some((i, j, joined))
            });
        let Some((i, j, joined)) = pair else { break };
        let gone = plan.remove(j);
        let sub = &mut plan[i];
        sub.filter = match shared(&sub.filter) {
            Some((group, _)) => format!("$share/{group}/{joined}"),
            None => joined,
        };
        for f in gone.covers {
            if !sub.covers.contains(&f) {
                sub.covers.push(f);
            }
        }
    }
    plan
}

/// The topic filters of [`subscription_plan`]: what the ingest connection
/// subscribes to.
pub fn subscriptions<'a>(filters: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    subscription_plan(filters)
        .into_iter()
        .map(|s| s.filter)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_and_cover_follow_the_matching_rules() {
        // (a, b, overlap, a covers b)
        for (a, b, overlap, covers) in [
            ("sensors/#", "sensors/+/temp", true, true),
            ("sensors/+/temp", "sensors/#", true, false),
            ("sensors/#", "sensors", true, true),
            ("sensors/+/temp", "sensors/a/#", true, false),
            ("sensors/+/temp", "sensors/+/hum", false, false),
            ("sensors/+/temp", "sensors/a/temp", true, true),
            ("sensors/+", "sensors/+/temp", false, false),
            ("+/+/temp", "sensors/a/+", true, false),
            ("#", "anything/at/all", true, true),
            ("#", "$SYS/broker", false, false),
            ("+/broker", "$SYS/broker", false, false),
            ("$SYS/#", "$SYS/broker", true, true),
            ("a/b", "a/b", true, true),
        ] {
            assert_eq!(filters_overlap(a, b), overlap, "{a} ∩ {b}");
            assert_eq!(filters_overlap(b, a), overlap, "{b} ∩ {a}");
            assert_eq!(filter_covers(a, b), covers, "{a} ⊇ {b}");
        }
    }

    #[test]
    fn subscriptions_leave_out_covered_and_repeated_filters() {
        let s = |v: &[&str]| subscriptions(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["sensors/+/temp", "sensors/#"]), ["sensors/#"]);
        assert_eq!(s(&["sensors/#", "sensors/#"]), ["sensors/#"]);
        assert_eq!(s(&["sensors/+/temp", "sensors/a/#"]), ["sensors/+/#"]);
        // A shared subscription covers only its own group's filters.
        assert_eq!(
            s(&[
                "$share/g/sensors/#",
                "sensors/+/temp",
                "$share/g/sensors/a/temp"
            ]),
            ["$share/g/sensors/#", "sensors/+/temp"]
        );
    }

    /// The covering filter of two filters, level by level, covers both
    /// (checked with `filter_covers`) and is the least general one.
    #[test]
    fn the_covering_filter_keeps_equal_levels_and_widens_the_rest() {
        for (a, b, joined) in [
            ("sensors/a/#", "sensors/+/temp", Some("sensors/+/#")),
            ("sensors/a/temp", "sensors/b/temp", Some("sensors/+/temp")),
            ("a/+/c", "a/b/+", Some("a/+/+")),
            ("+/a", "b/+", Some("+/+")),
            // Different lengths: `#` from where the shorter ends (`a/#`
            // matches `a` itself).
            ("a", "a/b", Some("a/#")),
            ("a/b", "a/+/c", Some("a/+/#")),
            ("a/+/+", "a/x/y/#", Some("a/+/+/#")),
            ("#", "sensors/a", Some("#")),
            ("a/b/c/d", "a/#", Some("a/#")),
            ("$SYS/a/#", "$SYS/+/b", Some("$SYS/+/#")),
            // No wildcard first level matches a `$` topic (MQTT 3.1.1 §4.7.2).
            ("$SYS/a", "sensors/a", None),
            ("#", "$SYS/a", None),
            ("$SYS/a", "$foo/a", None),
        ] {
            assert_eq!(covering_filter(a, b).as_deref(), joined, "{a} ∪ {b}");
            assert_eq!(covering_filter(b, a).as_deref(), joined, "{b} ∪ {a}");
            if let Some(j) = joined {
                assert!(filter_covers(j, a) && filter_covers(j, b), "{j} ⊇ {a}, {b}");
            }
        }
    }

    /// Partly overlapping filters of a kind are subscribed as their
    /// covering filter, again until no two of a kind overlap; filters that
    /// do not overlap, and those of other kinds, are left as they are.
    #[test]
    fn partly_overlapping_filters_are_joined_until_none_overlaps() {
        let plan = |v: &[&str]| {
            subscription_plan(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .into_iter()
                .map(|s| (s.filter, s.covers))
                .collect::<Vec<_>>()
        };
        let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            plan(&["sensors/a/#", "sensors/+/temp", "labels/+/temp"]),
            [
                (
                    "sensors/+/#".to_string(),
                    own(&["sensors/a/#", "sensors/+/temp"])
                ),
                ("labels/+/temp".to_string(), own(&["labels/+/temp"])),
            ]
        );
        // The joined `a/+/+` overlaps `a/x/y/#` (which also matches
        // `a/x/y`): joined again.
        assert_eq!(
            plan(&["a/+/c", "a/b/+", "a/x/y/#"]),
            [("a/+/+/#".to_string(), own(&["a/+/c", "a/b/+", "a/x/y/#"]))]
        );
        // Different lengths without `#` do not overlap: both kept.
        assert_eq!(
            plan(&["a/b", "a/+/c"]),
            [
                ("a/b".to_string(), own(&["a/b"])),
                ("a/+/c".to_string(), own(&["a/+/c"]))
            ]
        );
        // `#` does not match `$SYS` topics: no join.
        let kept = plan(&["#", "$SYS/broker/#"]);
        assert_eq!(kept.len(), 2, "{kept:?}");
        // A covered filter joins the one that covers it, which stays a
        // configured filter (no topic beyond them).
        let p = subscription_plan(&own(&["sensors/a/#", "sensors/+/temp", "sensors/#"]));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].filter, "sensors/#");
        assert!(!p[0].is_joined());
        let p = subscription_plan(&own(&["sensors/a/#", "sensors/+/temp"]));
        assert!(p[0].is_joined());
        // Shared in one group: joined in the group; another group and a
        // plain filter are other kinds, left apart.
        assert_eq!(
            plan(&[
                "$share/g/sensors/a/#",
                "$share/g/sensors/+/temp",
                "$share/h/sensors/+/temp",
                "sensors/a/temp",
            ])
            .into_iter()
            .map(|(f, _)| f)
            .collect::<Vec<_>>(),
            [
                "$share/g/sensors/+/#",
                "$share/h/sensors/+/temp",
                "sensors/a/temp"
            ]
        );
    }
}
