//! MQTT over TLS and with username/password, against a real mosquitto that
//! the test starts with a TLS listener on a free loopback port (and a plain
//! one for the test's own subscriber). The certificates (a CA, the broker's,
//! a client's, and an unrelated CA) are made here with rcgen.
//!
//! - a client certificate required by the broker: labelled samples published
//!   over TLS are stored, the model trained from them serves (accuracy on
//!   datatest.txt as `loop_e2e`), and predictions go out over TLS;
//! - username/password over TLS and over plain MQTT; a wrong password is
//!   refused and counted;
//! - a broker certificate from another CA: the daemon (the binary) keeps
//!   running, answers `/healthz`, logs a clear error and counts the failures.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use edgeloop::config::MqttConfig;
use edgeloop::daemon::{self, DaemonHandle};
use edgeloop::demo::HttpClient;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);
const PIPELINE: &str = "occupancy";

/// PEM files of a test PKI, in a temporary directory readable by the
/// `mosquitto` user (mosquitto started as root drops to it).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let pki = Self { dir };
        let ca = pki.ca("edgeloop test CA", "ca");
        pki.leaf(
            &ca,
            "server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.leaf(&ca, "client", &[], ExtendedKeyUsagePurpose::ClientAuth);
        // An unrelated CA, with a broker certificate of its own.
        let other = pki.ca("another CA", "other-ca");
        pki.leaf(
            &other,
            "other-server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(name);
        std::fs::write(&p, pem).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn ca(&self, cn: &str, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        self.write(&format!("{name}.pem"), &ca.pem());
        ca
    }

    fn leaf(
        &self,
        ca: &CertifiedIssuer<'static, KeyPair>,
        name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        self.write(&format!("{name}.pem"), &cert.pem());
        self.write(&format!("{name}-key.pem"), &key.serialize_pem());
    }
}

/// How the TLS listener of [`TlsMosquitto`] authenticates clients.
struct Auth {
    require_certificate: bool,
    /// (user, password) in a `password_file` for both listeners; anonymous
    /// clients are refused then.
    password: Option<(&'static str, &'static str)>,
}

/// mosquitto with a TLS listener (the broker certificate `server_cert`) and
/// a plain one, on free loopback ports. Killed on drop.
struct TlsMosquitto {
    plain: u16,
    tls: u16,
    _dir: tempfile::TempDir,
    child: std::process::Child,
}

impl TlsMosquitto {
    fn start(pki: &Pki, server_cert: &str, auth: Auth) -> Self {
        let dir = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let (plain, tls) = (free_port(), free_port());
        let mut security = String::new();
        if let Some((user, password)) = auth.password {
            let file = dir.path().join("passwd");
            std::fs::write(&file, "").unwrap();
            let ok = Command::new("mosquitto_passwd")
                .arg("-b")
                .arg(&file)
                .args([user, password])
                .status()
                .expect("mosquitto_passwd must be installed (apt-get install mosquitto)");
            assert!(ok.success());
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
            security = format!("allow_anonymous false\npassword_file {}\n", file.display());
        } else {
            security.push_str("allow_anonymous true\n");
        }
        // max_queued_messages 0: mosquitto would otherwise drop QoS 1
        // messages beyond 1000 queued for the daemon while it commits.
        let conf = format!(
            "max_queued_messages 0\nper_listener_settings true\n\
             listener {plain} 127.0.0.1\n{security}\
             listener {tls} 127.0.0.1\n{security}\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate {req}\n",
            ca = pki.path("ca.pem").display(),
            cert = pki.path(&format!("{server_cert}.pem")).display(),
            key = pki.path(&format!("{server_cert}-key.pem")).display(),
            req = auth.require_certificate,
        );
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let bin = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|b| Path::new(b).exists() || !b.starts_with('/'))
            .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto)");
        let until = Instant::now() + Duration::from_secs(10);
        for port in [plain, tls] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < until, "mosquitto did not start on {port}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Self {
            plain,
            tls,
            _dir: dir,
            child,
        }
    }
}

impl Drop for TlsMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[mqtt]` keys of a client of `broker` (`mqtts://…` or `mqtt://…`).
fn mqtt_keys(cfg: &mut MqttConfig, broker: String, pki: &Pki, ca: &str, client_cert: bool) {
    cfg.broker = broker;
    if cfg.broker.starts_with("mqtts://") {
        cfg.tls_ca_file = pki.path(&format!("{ca}.pem"));
    }
    if client_cert {
        cfg.tls_cert_file = pki.path("client.pem");
        cfg.tls_key_file = pki.path("client-key.pem");
    }
}

/// Publishes `payloads` to [`TOPIC`] with QoS 1 through a client made by
/// the daemon's own [`edgeloop::ingest::mqtt::options`] from `mqtt` (so
/// over TLS for an `mqtts://` broker), and waits for every PUBACK.
async fn publish_with(mqtt: &MqttConfig, payloads: Vec<Vec<u8>>) {
    let target = mqtt.target().unwrap();
    let edgeloop::config::BrokerTarget::External { host, port, .. } = target else {
        panic!("external broker expected");
    };
    let opts =
        edgeloop::ingest::mqtt::options(mqtt, &client_id("tpub"), &host, port, false).unwrap();
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let total = payloads.len();
    let publisher = tokio::spawn(async move {
        for p in payloads {
            client
                .publish(TOPIC, QoS::AtLeastOnce, false, p)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    let until = Instant::now() + WAIT;
    while acked < total {
        assert!(Instant::now() < until, "{acked} of {total} acknowledged");
        match tokio::time::timeout(WAIT, eventloop.poll()).await.unwrap() {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("the test publisher's connection failed: {e}"),
        }
    }
    let client = publisher.await.unwrap();
    let _ = client.try_disconnect();
}

fn labelled(n: usize) -> Vec<Vec<u8>> {
    edgeloop::ingest::replay::csv_payloads(&replay_opts("datatraining.txt", 0, Some(n))).unwrap()
}

/// Rows of datatest.txt without their label (the daemon predicts them).
fn unlabelled(n: usize) -> Vec<Vec<u8>> {
    let mut opts = replay_opts("datatest.txt", 0, Some(n));
    opts.drop_columns = vec!["Occupancy".into()];
    edgeloop::ingest::replay::csv_payloads(&opts).unwrap()
}

/// The served model's predictions of `x` over HTTP, in order.
async fn http_predictions(handle: &DaemonHandle, x: &[[f32; 5]]) -> Vec<serde_json::Value> {
    let mut client = HttpClient::connect(handle.http_addr).await.unwrap();
    let mut out = Vec::new();
    for xs in x.chunks(500) {
        let body = predict_body(xs);
        let (status, resp) = client
            .request("POST", "/v1/pipelines/occupancy/predict", Some(body))
            .await
            .unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        let resp: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        out.extend(resp["predictions"].as_array().unwrap().iter().cloned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_over_tls_trains_and_predicts() {
    let pki = Pki::new();
    let broker = TlsMosquitto::start(
        &pki,
        "server",
        Auth {
            require_certificate: true,
            password: None,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Broker::External(broker.plain));
    let url = format!("mqtts://127.0.0.1:{}", broker.tls);
    mqtt_keys(&mut cfg.mqtt, url, &pki, "ca", true);
    cfg.pipelines[0].model.min_labels = 2000;
    cfg.pipelines[0].model.retrain_every = 1_000_000;
    cfg.pipelines[0].drift.retrain_on_drift = false;
    let publisher = cfg.mqtt.clone();
    let (running, handle, token) = start(cfg).await;
    assert_eq!(handle.broker.1, broker.tls);

    publish_with(&publisher, labelled(2000)).await;
    wait_until(WAIT, "a model trained on 2000 samples", || {
        handle.registry.get(PIPELINE).is_some()
    })
    .await;
    assert_eq!(handle.store.counts(PIPELINE).unwrap().samples, 2000);
    assert_eq!(handle.registry.get(PIPELINE).unwrap().card.n_samples, 2000);
    let (x, y) = rows("datatest.txt");
    let served = http_predictions(&handle, &x).await;
    let correct = served
        .iter()
        .zip(&y)
        .filter(|(p, t)| p["label"] == t.as_str())
        .count();
    let accuracy = correct as f64 / y.len() as f64;
    assert!(accuracy >= 0.95, "accuracy on datatest.txt {accuracy}");

    // Unlabelled samples in over TLS; the daemon's predictions out over TLS,
    // read here on the plain listener: each equals the HTTP prediction of
    // the same row (datatest.txt is in time order, so is timestamp_ms).
    let (mut predictions, stop_sub) = subscribe(broker.plain, "edgeloop/+/predictions/#").await;
    publish_with(&publisher, unlabelled(20)).await;
    let mut got = Vec::new();
    for _ in 0..20 {
        let p = tokio::time::timeout(WAIT, predictions.recv())
            .await
            .expect("a prediction over TLS")
            .unwrap();
        assert_eq!(p["model_version"], 1);
        assert_eq!(p["device"], "room1");
        got.push(p);
    }
    got.sort_by_key(|p| p["timestamp_ms"].as_i64().unwrap());
    for (i, (mqtt, http)) in got.iter().zip(&served).enumerate() {
        assert_eq!(mqtt["label"], http["label"], "row {i}");
        for class in ["0", "1"] {
            let (a, b) = (
                mqtt["probabilities"][class].as_f64().unwrap(),
                http["probabilities"][class].as_f64().unwrap(),
            );
            assert!((a - b).abs() <= 1e-5, "row {i} class {class}: {a} vs {b}");
        }
    }
    stop_sub.cancel();
    assert_eq!(handle.stats.snapshot().mqtt_errors, 0);
    stop(running, handle, token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_password_over_tls_and_plain() {
    let pki = Pki::new();
    let broker = TlsMosquitto::start(
        &pki,
        "server",
        Auth {
            require_certificate: false,
            password: Some(("edge", "s3cret pass")),
        },
    );
    for url in [
        format!("mqtts://127.0.0.1:{}", broker.tls),
        format!("mqtt://127.0.0.1:{}", broker.plain),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), Broker::External(broker.plain));
        mqtt_keys(&mut cfg.mqtt, url.clone(), &pki, "ca", false);
        cfg.mqtt.username = "edge".into();
        cfg.mqtt.password = "s3cret pass".into();
        let publisher = cfg.mqtt.clone();
        let (running, handle, token) = start(cfg).await;
        publish_with(&publisher, labelled(300)).await;
        wait_until(WAIT, &format!("300 samples stored over {url}"), || {
            handle.store.counts(PIPELINE).unwrap().samples == 300
        })
        .await;
        assert_eq!(handle.stats.snapshot().mqtt_errors, 0, "{url}");
        stop(running, handle, token).await;

        // A wrong password: refused by the broker, counted, retried; the
        // daemon keeps running and reports itself disconnected.
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), Broker::External(broker.plain));
        mqtt_keys(&mut cfg.mqtt, url.clone(), &pki, "ca", false);
        cfg.mqtt.username = "edge".into();
        cfg.mqtt.password = "wrong".into();
        let token = CancellationToken::new();
        let running = daemon::start(cfg, token.clone()).await.unwrap();
        let handle = running.handle.clone();
        wait_until(WAIT, "two refused connections", || {
            handle.stats.snapshot().mqtt_errors >= 2
        })
        .await;
        assert!(!handle.connection.is_connected(), "{url}");
        assert_eq!(handle.stats.snapshot().mqtt_connects, 0, "{url}");
        stop(running, handle, token).await;
    }
}

/// A broker whose certificate another CA signed: the binary runs on, answers
/// `/healthz` (disconnected), counts the failed handshakes in `/v1/stats`,
/// logs an error naming the CA key, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_refused_logged_and_counted() {
    let pki = Pki::new();
    let broker = TlsMosquitto::start(
        &pki,
        "other-server",
        Auth {
            require_certificate: false,
            password: None,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let conf = dir.path().join("edgeloop.toml");
    std::fs::write(
        &conf,
        format!(
            "[store]\npath = '{}'\n[mqtt]\nbroker = 'mqtts://127.0.0.1:{}'\n\
             tls_ca_file = '{}'\nclient_id = '{}'\nreconnect_min_ms = 50\n\
             reconnect_max_ms = 200\n[http]\nlisten = '127.0.0.1:{http}'\n",
            dir.path().join("edgeloop.redb").display(),
            broker.tls,
            pki.path("ca.pem").display(),
            client_id("ca"),
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeloop"))
        .args(["run", "--config"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], http));
    let until = Instant::now() + WAIT;
    let (health, errors) = loop {
        assert!(Instant::now() < until, "no refused handshakes counted");
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
        if let Ok(mut c) = HttpClient::connect(addr).await {
            let (_, h) = c.request("GET", "/healthz", None).await.unwrap();
            let (_, s) = c.request("GET", "/v1/stats", None).await.unwrap();
            let h: serde_json::Value = serde_json::from_slice(&h).unwrap();
            let s: serde_json::Value = serde_json::from_slice(&s).unwrap();
            if s["mqtt_errors"].as_u64().unwrap() >= 2 {
                break (h, s);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mqtt_connected"], false);
    assert_eq!(errors["mqtt_connects"], 0);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status:?}; log:\n{log}");
    assert!(
        log.contains("TLS with the broker failed: check mqtt.tls_ca_file"),
        "{log}"
    );
    assert!(log.contains("UnknownIssuer"), "{log}");
}
