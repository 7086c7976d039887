//! One MQTT client connection in either protocol version behind one
//! interface, so that the source and the prediction publisher are written
//! once: rumqttc's MQTT 3.1.1 client (`rumqttc`) or its MQTT 5 client
//! (`rumqttc::v5`), each an `AsyncClient` with the `EventLoop` it feeds.
//!
//! - [`LinkSpec`] says how to connect (options of [`super::mqtt::options`]
//!   or [`super::mqtt::options_v5`]) and builds a [`Link`] for a protocol.
//! - [`Link::poll`] yields [`LinkEvent`]s in both protocols' terms (a
//!   received publish as [`Publish`], the reason codes of CONNACK and
//!   SUBACK as text) and [`LinkError`]s.
//! - [`ProtocolChoice`], shared by the daemon's connections to one broker,
//!   falls back from MQTT 5 to 3.1.1 once the broker refuses an MQTT 5
//!   CONNECT (MQTT 5.0 §3.2.2.2: reason code 0x84 "unsupported protocol
//!   version"; a 3.1.1 broker answers return code 0x01 and closes, MQTT
//!   3.1.1 §3.1.2.2, or closes at once).

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use rumqttc::v5;
use tracing::warn;

use super::mqtt_config::{MqttConfig, Protocol};
use crate::config_error::ConfigError;

/// A publish received from the broker, in either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: rumqttc::QoS,
    /// Set on a redelivery (MQTT 3.1.1 §3.3.1.1, MQTT 5.0 §3.3.1.1).
    pub dup: bool,
    /// Packet id of a QoS 1 or 2 publish; 0 for QoS 0.
    pub pkid: u16,
}

impl From<rumqttc::Publish> for Publish {
    fn from(p: rumqttc::Publish) -> Self {
        Self {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            dup: p.dup,
            pkid: p.pkid,
        }
    }
}

impl From<v5::mqttbytes::v5::Publish> for Publish {
    fn from(p: v5::mqttbytes::v5::Publish) -> Self {
        // MQTT 5.0 §1.5.4: a topic is UTF-8; a broker that sent anything
        // else gets it replaced, and the topic then matches no pipeline.
        let topic = match String::from_utf8(p.topic.to_vec()) {
            Ok(t) => t,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Self {
            topic,
            payload: p.payload,
            qos: match p.qos {
                v5::mqttbytes::QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
                v5::mqttbytes::QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
                v5::mqttbytes::QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
            },
            dup: p.dup,
            pkid: p.pkid,
        }
    }
}

/// What a poll of a [`Link`] yields.
#[derive(Debug)]
pub enum LinkEvent {
    /// The broker accepted the connection (CONNACK). MQTT 5 only: the
    /// broker's receive maximum towards it and the session expiry it
    /// granted, when it sent them.
    ConnAck {
        session_present: bool,
        receive_maximum: Option<u16>,
        session_expiry_s: Option<u32>,
    },
    /// SUBACK: the reason code of each filter (MQTT 5.0 §3.9.3; MQTT
    /// 3.1.1's return codes, §3.9.3, as `Success(..)` or `Failure`), and
    /// whether any refused its filter.
    SubAck {
        codes: Vec<String>,
        refused: bool,
    },
    Publish(Publish),
    /// The broker acknowledged a QoS 1 publish of ours; `refusal`: the
    /// MQTT 5 PUBACK reason code when it is an error (≥ 0x80).
    PubAck {
        refusal: Option<String>,
    },
    /// Our DISCONNECT went to the network.
    DisconnectWritten,
    Other,
}

/// A failed poll: the connection is down (rumqttc reconnects on the next
/// poll).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    V311(rumqttc::ConnectionError),
    #[error("{0}")]
    V5(v5::ConnectionError),
}

impl LinkError {
    /// What an operator should check, for the failures that retrying alone
    /// will not fix.
    pub fn hint(&self) -> Option<&'static str> {
        const TLS: &str = "TLS with the broker failed: check mqtt.tls_ca_file (the CA that \
             signed the broker's certificate), that the certificate names the host of \
             mqtt.broker, and mqtt.tls_cert_file/tls_key_file if the broker requires a client \
             certificate.";
        const LOGIN: &str = "The broker refused the login: check mqtt.username and mqtt.password.";
        use rumqttc::ConnectReturnCode as C3;
        use v5::mqttbytes::v5::ConnectReturnCode as C5;
        match self {
            LinkError::V311(rumqttc::ConnectionError::Tls(_))
            | LinkError::V5(v5::ConnectionError::Tls(_)) => Some(TLS),
            LinkError::V311(rumqttc::ConnectionError::ConnectionRefused(
                C3::BadUserNamePassword | C3::NotAuthorized,
            ))
            | LinkError::V5(v5::ConnectionError::ConnectionRefused(
                C5::BadUserNamePassword | C5::NotAuthorized | C5::BadAuthenticationMethod,
            )) => Some(LOGIN),
            _ => None,
        }
    }

    /// The reason code of a refused CONNACK or of the broker's DISCONNECT
    /// (MQTT 5.0 §3.2.2.2, §3.14.2.1; MQTT 3.1.1 §3.2.2.3), as rumqttc
    /// names it.
    pub fn reason_code(&self) -> Option<String> {
        match self {
            LinkError::V311(rumqttc::ConnectionError::ConnectionRefused(c)) => {
                Some(format!("{c:?}"))
            }
            LinkError::V5(v5::ConnectionError::ConnectionRefused(c)) => Some(format!("{c:?}")),
            LinkError::V5(v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
                reason_code,
                ..
            })) => Some(format!("{reason_code:?}")),
            LinkError::V5(v5::ConnectionError::MqttState(v5::StateError::ConnFail { reason })) => {
                Some(format!("{reason:?}"))
            }
            _ => None,
        }
    }

    /// Whether this error, on a connection attempt (no CONNACK since the
    /// last error), says the broker does not speak MQTT 5: a CONNACK
    /// "unsupported protocol version", or the connection closed or
    /// unreadable after the CONNECT went out (an MQTT 3.1.1 broker answers
    /// an unknown protocol level with return code 0x01, which an MQTT 5
    /// client cannot parse, or closes at once). A TCP connection that
    /// could not be opened, TLS, a timeout or another refusal are not.
    pub fn refuses_v5(&self) -> bool {
        use v5::mqttbytes::v5::ConnectReturnCode as C5;
        match self {
            LinkError::V5(v5::ConnectionError::ConnectionRefused(
                C5::UnsupportedProtocolVersion | C5::RefusedProtocolVersion,
            )) => true,
            LinkError::V5(v5::ConnectionError::MqttState(e)) => matches!(
                e,
                v5::StateError::ConnectionAborted
                    | v5::StateError::Deserialization(_)
                    | v5::StateError::Io(_)
                    | v5::StateError::WrongPacket
            ),
            LinkError::V5(v5::ConnectionError::NotConnAck(_)) => true,
            _ => false,
        }
    }
}

/// The protocol the daemon's connections to one broker speak: the
/// configured one, until the broker refuses an MQTT 5 CONNECT; 3.1.1 from
/// then on. Shared by the ingest and the prediction connections, so the
/// first to be refused switches both and the fallback is logged once. Once
/// any of them got an MQTT 5 CONNACK the broker speaks MQTT 5, and a
/// connection closed on its CONNECT later is a broker going down or coming
/// up, not a refusal (before, a mosquitto restart could switch a daemon to
/// 3.1.1 until its own restart).
#[derive(Debug)]
pub struct ProtocolChoice {
    configured: Protocol,
    fell_back: AtomicBool,
    spoke_v5: AtomicBool,
}

impl ProtocolChoice {
    pub fn new(configured: Protocol) -> Self {
        Self {
            configured,
            fell_back: AtomicBool::new(false),
            spoke_v5: AtomicBool::new(false),
        }
    }

    /// A connection got its CONNACK speaking `protocol`.
    pub fn connected(&self, protocol: Protocol) {
        if protocol == Protocol::V5 {
            self.spoke_v5.store(true, Ordering::Release);
        }
    }

    /// A connection failed with `error`: an MQTT 5 CONNACK refusing for
    /// another reason than the protocol version (a bad login, a banned
    /// client id) was read as MQTT 5, so the broker speaks it.
    pub fn observe(&self, error: &LinkError) {
        use v5::mqttbytes::v5::ConnectReturnCode as C5;
        if let LinkError::V5(v5::ConnectionError::ConnectionRefused(code)) = error {
            if !matches!(
                code,
                C5::UnsupportedProtocolVersion | C5::RefusedProtocolVersion
            ) {
                self.spoke_v5.store(true, Ordering::Release);
            }
        }
    }

    /// The protocol to connect with now.
    pub fn current(&self) -> Protocol {
        if self.fell_back.load(Ordering::Acquire) {
            Protocol::V311
        } else {
            self.configured
        }
    }

    /// Falls back to MQTT 3.1.1 after `error` refused an MQTT 5 CONNECT,
    /// unless one of the connections spoke MQTT 5 with this broker; logs
    /// one WARN, the first time.
    pub fn fall_back(&self, error: &LinkError) {
        if self.spoke_v5.load(Ordering::Acquire) {
            return;
        }
        if !self.fell_back.swap(true, Ordering::AcqRel) {
            warn!(error = %error, "The broker refused an MQTT 5 connection; speaking MQTT 3.1.1 to it from now on (set mqtt.protocol = \"3.1.1\" to skip the attempt).");
        }
    }
}

/// How to open a [`Link`]: the `[mqtt]` section, the client id, the broker
/// address, and the client's settings.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    pub cfg: MqttConfig,
    pub client_id: String,
    pub host: String,
    pub port: u16,
    /// Acknowledge received publishes only when told (after the commit).
    pub manual_acks: bool,
    /// MQTT 5 receive maximum (the broker's in-flight window towards this
    /// client, MQTT 5.0 §3.1.2.11.3); `None`: the protocol's 65,535.
    pub receive_maximum: Option<u16>,
    /// Capacity of rumqttc's request channel, requests.
    pub requests: usize,
}

impl LinkSpec {
    /// A client of `protocol` with its event loop (nothing connects before
    /// the first poll).
    ///
    /// # Errors
    /// As [`super::mqtt::options`].
    pub fn open(&self, protocol: Protocol) -> Result<Link, ConfigError> {
        Ok(match protocol {
            Protocol::V311 => {
                let o = super::mqtt::options(
                    &self.cfg,
                    &self.client_id,
                    &self.host,
                    self.port,
                    self.manual_acks,
                )?;
                let (client, eventloop) = rumqttc::AsyncClient::new(o, self.requests);
                Link::V311 { client, eventloop }
            }
            Protocol::V5 => {
                let o = super::mqtt::options_v5(
                    &self.cfg,
                    &self.client_id,
                    &self.host,
                    self.port,
                    self.manual_acks,
                    self.receive_maximum,
                )?;
                let (client, eventloop) = v5::AsyncClient::new(o, self.requests);
                Link::V5 { client, eventloop }
            }
        })
    }
}

impl LinkSpec {
    /// Reopens `link` in `choice`'s protocol when the fallback changed it
    /// since `link` was opened; `true` when it did (connect again at once:
    /// the broker is there).
    ///
    /// # Errors
    /// As [`LinkSpec::open`]; `link` is then unchanged.
    pub fn follow(&self, link: &mut Link, choice: &ProtocolChoice) -> Result<bool, ConfigError> {
        if link.protocol() == choice.current() {
            return Ok(false);
        }
        *link = self.open(choice.current())?;
        Ok(true)
    }
}

/// An MQTT client and the event loop it feeds, in one protocol version.
pub enum Link {
    V311 {
        client: rumqttc::AsyncClient,
        eventloop: rumqttc::EventLoop,
    },
    V5 {
        client: v5::AsyncClient,
        eventloop: v5::EventLoop,
    },
}

/// The request channel is full (or its event loop is gone): try again
/// after the next poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Link {
    pub fn protocol(&self) -> Protocol {
        match self {
            Link::V311 { .. } => Protocol::V311,
            Link::V5 { .. } => Protocol::V5,
        }
    }

    /// The next event; connects first when not connected. Cancel-safe as
    /// rumqttc's `EventLoop::poll`.
    ///
    /// # Errors
    /// [`LinkError`]: the connection failed or broke.
    pub async fn poll(&mut self) -> Result<LinkEvent, LinkError> {
        match self {
            Link::V311 { eventloop, .. } => {
                use rumqttc::{Event, Outgoing, Packet};
                Ok(match eventloop.poll().await.map_err(LinkError::V311)? {
                    Event::Incoming(Packet::ConnAck(ack)) => LinkEvent::ConnAck {
                        session_present: ack.session_present,
                        receive_maximum: None,
                        session_expiry_s: None,
                    },
                    Event::Incoming(Packet::SubAck(ack)) => LinkEvent::SubAck {
                        refused: ack
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)),
                        codes: ack.return_codes.iter().map(|c| format!("{c:?}")).collect(),
                    },
                    Event::Incoming(Packet::Publish(p)) => LinkEvent::Publish(p.into()),
                    Event::Incoming(Packet::PubAck(_)) => LinkEvent::PubAck { refusal: None },
                    Event::Outgoing(Outgoing::Disconnect) => LinkEvent::DisconnectWritten,
                    _ => LinkEvent::Other,
                })
            }
            Link::V5 { eventloop, .. } => {
                use rumqttc::Outgoing;
                use v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
                use v5::Event;
                Ok(match eventloop.poll().await.map_err(LinkError::V5)? {
                    Event::Incoming(Packet::ConnAck(ack)) => LinkEvent::ConnAck {
                        session_present: ack.session_present,
                        receive_maximum: ack.properties.as_ref().and_then(|p| p.receive_max),
                        session_expiry_s: ack
                            .properties
                            .as_ref()
                            .and_then(|p| p.session_expiry_interval),
                    },
                    Event::Incoming(Packet::SubAck(ack)) => LinkEvent::SubAck {
                        refused: ack
                            .return_codes
                            .iter()
                            .any(|c| !matches!(c, SubscribeReasonCode::Success(_))),
                        codes: ack.return_codes.iter().map(|c| format!("{c:?}")).collect(),
                    },
                    Event::Incoming(Packet::Publish(p)) => LinkEvent::Publish(p.into()),
                    Event::Incoming(Packet::PubAck(ack)) => LinkEvent::PubAck {
                        refusal: (!matches!(
                            ack.reason,
                            PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                        ))
                        .then(|| format!("{:?}", ack.reason)),
                    },
                    Event::Outgoing(Outgoing::Disconnect) => LinkEvent::DisconnectWritten,
                    _ => LinkEvent::Other,
                })
            }
        }
    }

    /// Requests the subscriptions, QoS 1, without waiting.
    ///
    /// # Errors
    /// [`Busy`] when the request channel is full.
    pub fn try_subscribe(&self, filters: &[String]) -> Result<(), Busy> {
        match self {
            Link::V311 { client, .. } => {
                client
                    .try_subscribe_many(filters.iter().map(|f| {
                        rumqttc::SubscribeFilter::new(f.clone(), rumqttc::QoS::AtLeastOnce)
                    }))
                    .map_err(|_| Busy)
            }
            Link::V5 { client, .. } => client
                .try_subscribe_many(filters.iter().map(|f| {
                    v5::mqttbytes::v5::Filter::new(f.clone(), v5::mqttbytes::QoS::AtLeastOnce)
                }))
                .map_err(|_| Busy),
        }
    }

    /// Requests a QoS 1 publish (not retained) without waiting.
    ///
    /// # Errors
    /// [`Busy`] when the request channel is full.
    pub fn try_publish(&self, topic: &str, payload: Bytes) -> Result<(), Busy> {
        match self {
            Link::V311 { client, .. } => client
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .map_err(|_| Busy),
            Link::V5 { client, .. } => client
                .try_publish(topic, v5::mqttbytes::QoS::AtLeastOnce, false, payload)
                .map_err(|_| Busy),
        }
    }

    /// Requests a QoS 1 **retained** publish without waiting, with MQTT 5's
    /// content type and user properties (MQTT 3.1.1 has neither: the
    /// payload alone); the fleet's model messages (`crate::serve::fleet`).
    ///
    /// # Errors
    /// [`Busy`] when the request channel is full.
    pub fn try_publish_retained(
        &self,
        topic: &str,
        payload: Bytes,
        content_type: &str,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), Busy> {
        match self {
            Link::V311 { client, .. } => client
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, true, payload)
                .map_err(|_| Busy),
            Link::V5 { client, .. } => {
                let properties = v5::mqttbytes::v5::PublishProperties {
                    content_type: Some(content_type.into()),
                    user_properties,
                    ..Default::default()
                };
                client
                    .try_publish_with_properties(
                        topic,
                        v5::mqttbytes::QoS::AtLeastOnce,
                        true,
                        payload,
                        properties,
                    )
                    .map_err(|_| Busy)
            }
        }
    }

    /// Requests the DISCONNECT without waiting.
    pub fn try_disconnect(&self) {
        let _ = match self {
            Link::V311 { client, .. } => client.try_disconnect().map_err(|_| Busy),
            Link::V5 { client, .. } => client.try_disconnect().map_err(|_| Busy),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use v5::mqttbytes::v5::ConnectReturnCode as C5;

    #[test]
    fn only_a_refused_or_closed_mqtt5_connect_means_fall_back() {
        let v5 = |e| LinkError::V5(e);
        // MQTT 5.0 §3.2.2.2 0x84; a 3.1.1 broker's CONNACK 0x01 that an
        // MQTT 5 client cannot read; a connection closed on the CONNECT.
        assert!(v5(v5::ConnectionError::ConnectionRefused(
            C5::UnsupportedProtocolVersion
        ))
        .refuses_v5());
        assert!(v5(v5::ConnectionError::MqttState(
            v5::StateError::ConnectionAborted
        ))
        .refuses_v5());
        // Not a protocol question: the login, no listener, and any 3.1.1 error.
        assert!(!v5(v5::ConnectionError::ConnectionRefused(C5::NotAuthorized)).refuses_v5());
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!v5(v5::ConnectionError::Io(refused())).refuses_v5());
        assert!(!LinkError::V311(rumqttc::ConnectionError::Io(refused())).refuses_v5());
        // The reason code of a refusal and of the broker's DISCONNECT.
        assert_eq!(
            v5(v5::ConnectionError::ConnectionRefused(C5::NotAuthorized)).reason_code(),
            Some("NotAuthorized".into())
        );
        let disconnect = v5(v5::ConnectionError::MqttState(
            v5::StateError::ServerDisconnect {
                reason_code: v5::mqttbytes::v5::DisconnectReasonCode::SessionTakenOver,
                reason_string: None,
            },
        ));
        assert_eq!(disconnect.reason_code(), Some("SessionTakenOver".into()));
        assert!(!disconnect.refuses_v5());
    }

    #[test]
    fn a_broker_that_spoke_mqtt5_is_not_switched_to_3_1_1_by_a_closed_connect() {
        // A connection reset on the CONNECT: what a 3.1.1 broker does, and
        // what a restarting mosquitto 2.0 (MQTT 5) did to the prediction
        // link while the ingest link had spoken MQTT 5 to it.
        let reset = || {
            LinkError::V5(v5::ConnectionError::MqttState(
                v5::StateError::ConnectionAborted,
            ))
        };
        assert!(reset().refuses_v5());
        let never = ProtocolChoice::new(Protocol::V5);
        never.connected(Protocol::V311);
        never.fall_back(&reset());
        assert_eq!(never.current(), Protocol::V311);
        let spoke = ProtocolChoice::new(Protocol::V5);
        spoke.connected(Protocol::V5);
        spoke.fall_back(&reset());
        assert_eq!(spoke.current(), Protocol::V5);
        // A login refused in an MQTT 5 CONNACK, then the reset: what the
        // daemon met from a mosquitto that refused anonymous clients and was
        // restarted to admit them.
        let refused = ProtocolChoice::new(Protocol::V5);
        refused.observe(&LinkError::V5(v5::ConnectionError::ConnectionRefused(
            C5::NotAuthorized,
        )));
        refused.fall_back(&reset());
        assert_eq!(refused.current(), Protocol::V5);
        let unsupported = ProtocolChoice::new(Protocol::V5);
        let e = LinkError::V5(v5::ConnectionError::ConnectionRefused(
            C5::UnsupportedProtocolVersion,
        ));
        unsupported.observe(&e);
        unsupported.fall_back(&e);
        assert_eq!(unsupported.current(), Protocol::V311);
    }

    #[test]
    fn an_mqtt5_publish_reads_as_the_3_1_1_one() {
        let mut p = v5::mqttbytes::v5::Publish::new(
            "sensors/d1/occupancy",
            v5::mqttbytes::QoS::AtLeastOnce,
            vec![1u8, 2, 3],
            None,
        );
        (p.pkid, p.dup) = (7, true);
        let mut q = rumqttc::Publish::new(
            "sensors/d1/occupancy",
            rumqttc::QoS::AtLeastOnce,
            vec![1u8, 2, 3],
        );
        (q.pkid, q.dup) = (7, true);
        assert_eq!(Publish::from(p), Publish::from(q));
    }
}
