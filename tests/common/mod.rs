//! Shared harness for the black-box tests: a real mosquitto on a free
//! loopback port, test configurations, the occupancy data.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgeloop::config::Config;
use edgeloop::ingest::replay::{self, ReplayOptions};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

pub const TOPIC: &str = "sensors/room1/occupancy";
pub const FEATURES: [&str; 5] = ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"];

/// The body of `POST /v1/pipelines/{name}/predict` for occupancy rows:
/// `{"rows": [{feature: value, …}, …]}` in [`FEATURES`] order.
pub fn predict_body<R: AsRef<[f32]>>(rows: &[R]) -> Vec<u8> {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::Value::Object(
                FEATURES
                    .iter()
                    .zip(r.as_ref())
                    .map(|(k, v)| (k.to_string(), (*v).into()))
                    .collect(),
            )
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "rows": rows })).unwrap()
}

pub fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/occupancy_uci")
        .join(file)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A unique MQTT client id (≤ 19 characters).
pub fn client_id(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where the daemon under test connects.
#[derive(Debug, Clone, Copy)]
pub enum Broker {
    Embedded(u16),
    External(u16),
}

impl Broker {
    pub fn port(self) -> u16 {
        match self {
            Broker::Embedded(p) | Broker::External(p) => p,
        }
    }
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// The default configuration, pointed at a temporary store, `broker`, and
/// HTTP on a free port.
pub fn config(store: &Path, broker: Broker) -> Config {
    let mut cfg = Config::load_with_env(None, std::iter::empty()).unwrap();
    cfg.store.path = store.join("edgeloop.redb");
    match broker {
        Broker::Embedded(port) => {
            cfg.mqtt.broker = "embedded".into();
            cfg.mqtt.embedded_listen = SocketAddr::from(([127, 0, 0, 1], port));
        }
        Broker::External(port) => cfg.mqtt.broker = format!("mqtt://127.0.0.1:{port}"),
    }
    cfg.mqtt.client_id = client_id("el");
    cfg.mqtt.reconnect_min_ms = 50;
    cfg.mqtt.reconnect_max_ms = 500;
    cfg.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

/// A mosquitto started by the test on a free loopback port, with
/// persistence in its own temporary directory. Killed on drop.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // mosquitto started as root drops to its own user, which must be able
        // to write its persistence file here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nautosave_interval 1\nmax_queued_messages 0\n\
             message_size_limit 4194304\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Self {
            port,
            dir,
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let bin = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|b| Path::new(b).exists() || !b.starts_with('/'))
            .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed: the README's test command, tests/run.sh, installs it (or apt-get install mosquitto)");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "mosquitto did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops mosquitto with SIGTERM (it saves its persistence file) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Restarts with its persistence file deleted: every session is lost.
    pub fn restart_losing_sessions(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.dir.path().join("mosquitto.db"));
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Replay options for `file` to [`TOPIC`] on `port`.
pub fn replay_opts(file: &str, port: u16, limit: Option<usize>) -> ReplayOptions {
    ReplayOptions {
        file: data(file),
        topic: TOPIC.into(),
        rate: None,
        host: "127.0.0.1".into(),
        port,
        drop_columns: vec![],
        limit,
        client_id: client_id("pub"),
        // Tests restart brokers and daemons under a replay: far longer than
        // any of those pauses, still bounded.
        give_up_after: std::time::Duration::from_secs(300),
    }
}

/// Publishes `payloads` and waits for every acknowledgement.
pub async fn publish(opts: &ReplayOptions, payloads: Vec<Vec<u8>>) {
    replay::publish_all(opts, payloads, CancellationToken::new())
        .await
        .unwrap();
}

/// Rows of an occupancy file: features and label.
pub fn rows(file: &str) -> (Vec<[f32; 5]>, Vec<String>) {
    let mut reader = csv::Reader::from_path(data(file)).unwrap();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in reader.records() {
        let r = r.unwrap();
        let f = |i: usize| r[i].trim().parse::<f32>().unwrap();
        x.push([f(1), f(2), f(3), f(4), f(5)]);
        y.push(r[6].trim().to_string());
    }
    (x, y)
}

/// Polls `done` every 20 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `edgeloop` binary on an external broker (tests/loop_e2e.rs): its
/// config in `dir` (store, broker at `broker_port`, HTTP on a free port,
/// plus `extra` TOML appended), started.
pub fn daemon_process(dir: &Path, broker_port: u16, extra: &str) -> LoggedDaemon {
    let port = free_port();
    let mut d = LoggedDaemon::new(
        dir,
        port,
        format!(
            "[store]\npath = '{}'\n[mqtt]\nbroker = 'mqtt://127.0.0.1:{broker_port}'\nclient_id = '{}'\n\
             reconnect_min_ms = 50\n[http]\nlisten = '127.0.0.1:{port}'\n{extra}",
            dir.join("edgeloop.redb").display(),
            client_id("proc"),
        ),
    );
    d.spawn();
    d
}

/// Subscribes to `filter` on the broker at `port`; every payload (JSON)
/// arrives on the receiver until the token is cancelled.
pub async fn subscribe(
    port: u16,
    filter: &str,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    CancellationToken,
) {
    let mut opts = rumqttc::MqttOptions::new(client_id("sub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    subscribe_with(opts, filter).await
}

/// As [`subscribe`], connecting with `opts`.
pub async fn subscribe_with(
    opts: rumqttc::MqttOptions,
    filter: &str,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    CancellationToken,
) {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let _client = client;
        loop {
            let ev = tokio::select! {
                ev = eventloop.poll() => ev,
                _ = token.cancelled() => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(serde_json::from_slice(&p.payload).unwrap());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(90), ready_rx)
        .await
        .unwrap()
        .unwrap();
    (rx, stop)
}

impl Mosquitto {
    /// SIGKILL (no persistence save on the way out) and wait; `start_again`
    /// brings it back on the same port.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Deletes the persistence file (while stopped): every session is lost.
    pub fn delete_persistence(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("mosquitto.db"));
    }

    /// Starts mosquitto again on the same port and returns the moment its
    /// port first accepted a connection (polled every 2 ms).
    pub fn start_again(&mut self) -> Instant {
        assert!(self.child.is_none(), "mosquitto is still running");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed at /usr/sbin/mosquitto");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Instant::now();
            }
            assert!(
                Instant::now() < until,
                "mosquitto did not start again on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// `Date` of sequence-numbered reading 0 ([`seq_payload`]): 2030-01-01, s.
pub const SEQ_BASE_S: i64 = 1_893_456_000;

/// Unlabelled occupancy reading number `seq`, distinct for every `seq`: its
/// `Date` is [`SEQ_BASE_S`] plus `seq` seconds, so a stored sample names the
/// message it came from.
pub fn seq_payload(seq: u64) -> Vec<u8> {
    let date = chrono::DateTime::from_timestamp(SEQ_BASE_S + seq as i64, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let f = (seq % 1000) as f64;
    serde_json::to_vec(&serde_json::json!({
        "Date": date,
        "Temperature": 19.0 + f / 200.0,
        "Humidity": 25.0 + f / 100.0,
        "Light": f,
        "CO2": 450.0 + f,
        "HumidityRatio": 0.004 + f / 1e6,
        "seq": seq,
    }))
    .unwrap()
}

/// Starts the daemon in this process with `cfg` and waits (at most 120 s)
/// until its ingest connection has subscribed.
pub async fn start(
    cfg: Config,
) -> (
    edgeloop::daemon::Running,
    edgeloop::daemon::DaemonHandle,
    CancellationToken,
) {
    init_logs();
    let token = CancellationToken::new();
    let running = edgeloop::daemon::start(cfg, token.clone()).await.unwrap();
    let handle = running.handle.clone();
    assert!(
        handle.wait_subscribed(Duration::from_secs(120)).await,
        "the daemon did not subscribe over {:?}",
        handle.broker
    );
    (running, handle, token)
}

/// Stops the daemon within 15 s; the handle goes too, so the store file is
/// released.
pub async fn stop(
    running: edgeloop::daemon::Running,
    handle: edgeloop::daemon::DaemonHandle,
    token: CancellationToken,
) {
    drop(handle);
    token.cancel();
    running.wait(Duration::from_secs(15)).await.unwrap();
}

/// `n` seeded readings uniform in ±[0.2, 1]: a sign to learn, never within
/// 0.2 of the boundary (tests/temporal.rs, tests/probation.rs).
pub fn signed_readings(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n)
        .map(|_| {
            let m = 0.2 + 0.8 * rng.f32();
            if rng.bool() {
                m
            } else {
                -m
            }
        })
        .collect()
}

/// The `edgeloop` binary as a child process on a configuration file of its
/// own, its log appended to `daemon.log` across restarts, for the tests that
/// SIGKILL and restart it (tests/embedded_broker.rs, tests/crash_restart.rs,
/// tests/loop_e2e.rs through [`daemon_process`]). SIGKILLed on drop.
pub struct LoggedDaemon {
    conf: PathBuf,
    log: PathBuf,
    pub http: SocketAddr,
    child: Option<Child>,
    /// How many times it was started.
    pub starts: u32,
}

impl LoggedDaemon {
    /// Writes `config` (TOML, whose `[http] listen` is `127.0.0.1:{http_port}`)
    /// to `dir/edgeloop.toml`; not started yet.
    pub fn new(dir: &Path, http_port: u16, config: String) -> Self {
        let conf = dir.join("edgeloop.toml");
        std::fs::write(&conf, config).unwrap();
        Self {
            conf,
            log: dir.join("daemon.log"),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            child: None,
            starts: 0,
        }
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.starts += 1;
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_edgeloop"))
                .args(["run", "--log-level", "info", "--config"])
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    /// SIGKILL, and wait for the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; the exit status and how long it took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut c = self.child.take().unwrap();
        let t = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        (c.wait().unwrap(), t.elapsed())
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Option<(u16, Vec<u8>)> {
        let mut c = edgeloop::demo::HttpClient::connect(self.http).await.ok()?;
        c.request(method, path, body).await.ok()
    }

    /// A GET's JSON body, when it answers 200.
    pub async fn get(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = self.request("GET", path, None).await?;
        (status == 200).then(|| serde_json::from_slice(&body).ok())?
    }

    /// Waits until `/healthz` answers 200 with its MQTT subscription
    /// acknowledged; how long that took from `since`.
    pub async fn wait_healthy(&self, since: Instant, limit: Duration) -> Duration {
        loop {
            if self
                .get("/healthz")
                .await
                .is_some_and(|h| h["mqtt_subscribed"] == true)
            {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < limit,
                "the daemon was not healthy within {limit:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// (samples stored, serving version) of the first pipeline, once the
    /// daemon answers and its MQTT subscription is acknowledged.
    pub async fn state(&self) -> Option<(u64, Option<u64>)> {
        let mut c = edgeloop::demo::HttpClient::connect(self.http).await.ok()?;
        let (_, health) = c.request("GET", "/healthz", None).await.ok()?;
        let health: serde_json::Value = serde_json::from_slice(&health).ok()?;
        if health["mqtt_subscribed"] != true {
            return None;
        }
        let (_, body) = c.request("GET", "/v1/pipelines", None).await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        Some((
            v["pipelines"][0]["samples"].as_u64()?,
            v["pipelines"][0]["serving_version"].as_u64(),
        ))
    }

    /// Waits until `done(state)` holds.
    pub async fn wait(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn((u64, Option<u64>)) -> bool,
    ) {
        let until = Instant::now() + limit;
        loop {
            if self.state().await.is_some_and(&done) {
                return;
            }
            assert!(
                Instant::now() < until,
                "timed out after {limit:?} waiting for {what}: {:?}",
                self.state().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LoggedDaemon {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Paced QoS 1 publishers (tests/embedded_broker.rs, tests/crash_restart.rs).

/// What a publisher saw.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Seqs the broker acknowledged (PubAck).
    pub acked: Vec<u64>,
    /// Connection errors seen.
    pub errors: u64,
    /// When the first ConnAck arrived.
    pub connected_at: Option<Instant>,
}

/// One QoS 1 publisher connection with one message in flight: publishes
/// `payload(s)` for each of `seqs` to `sensors/p/occupancy`, message `s`
/// not before
/// `t0 + (s - first) * pace`,
/// until every one is acknowledged, `stop` is cancelled or `deadline`
/// passes. With one in flight, a PubAck names the outstanding message.
///
/// rumqttc 0.25 drops its unacknowledged publishes, and the requests still
/// in its channel, when it reconnects to a broker that reports no session
/// (`EventLoop::poll`: `if !connack.session_present { self.pending.clear() }`),
/// as a restarted embedded broker always does: the outstanding message is
/// then published again here (a copy may be stored already; the daemon's
/// digest deduplication keeps one).
#[allow(clippy::too_many_arguments)]
pub async fn publish_paced(
    port: u16,
    seqs: Vec<u64>,
    first: u64,
    t0: tokio::time::Instant,
    pace: Duration,
    deadline: Instant,
    stop: CancellationToken,
    progress: Arc<Mutex<Published>>,
    payload: fn(u64) -> Vec<u8>,
) {
    let mut opts = MqttOptions::new(client_id("pub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_inflight(1);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let send = |s: u64| {
        client
            .try_publish("sensors/p/occupancy", QoS::AtLeastOnce, false, payload(s))
            .unwrap()
    };
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut next = seqs.into_iter().peekable();
    let mut outstanding: Option<u64> = None;
    // A connection error since `outstanding` was handed to rumqttc.
    let mut broke = false;
    loop {
        let due = match (outstanding, next.peek()) {
            (None, None) => break,
            (None, Some(&s)) => {
                let at = t0 + pace * (s - first) as u32;
                if tokio::time::Instant::now() >= at {
                    send(s);
                    outstanding = next.next();
                    broke = false;
                    continue;
                }
                at
            }
            (Some(_), _) => deadline,
        };
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = tokio::time::sleep_until(due) => continue,
            _ = tokio::time::sleep_until(deadline) => break,
            _ = stop.cancelled() => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                progress
                    .lock()
                    .unwrap()
                    .connected_at
                    .get_or_insert_with(Instant::now);
                if let (Some(s), true, false) = (outstanding, broke, ack.session_present) {
                    send(s);
                    broke = false;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => {
                if let Some(s) = outstanding.take() {
                    progress.lock().unwrap().acked.push(s);
                }
            }
            Ok(_) => {}
            Err(_) => {
                broke = true;
                progress.lock().unwrap().errors += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
}

/// `connections` publishers ([`publish_paced`]) sharing `seqs` round-robin
/// (message `s` not before `(s - seqs.start) * pace` from now); `progress`
/// holds what was acknowledged so far; the task returns it when all have
/// finished, or `stop` is cancelled, or `limit` passes.
pub fn spawn_paced_publishers(
    port: u16,
    seqs: std::ops::Range<u64>,
    connections: usize,
    pace: Duration,
    limit: Duration,
    payload: fn(u64) -> Vec<u8>,
) -> (
    tokio::task::JoinHandle<Published>,
    Arc<Mutex<Published>>,
    CancellationToken,
) {
    let progress = Arc::new(Mutex::new(Published::default()));
    let stop = CancellationToken::new();
    let t0 = tokio::time::Instant::now();
    let deadline = Instant::now() + limit;
    let first = seqs.start;
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let mine: Vec<u64> = seqs
                .clone()
                .filter(|s| (s - first) as usize % connections == c)
                .collect();
            tokio::spawn(publish_paced(
                port,
                mine,
                first,
                t0,
                pace,
                deadline,
                stop.clone(),
                progress.clone(),
                payload,
            ))
        })
        .collect();
    let task = tokio::spawn({
        let progress = progress.clone();
        async move {
            for t in tasks {
                let _ = t.await;
            }
            let p = progress.lock().unwrap().clone();
            p
        }
    });
    (task, progress, stop)
}
