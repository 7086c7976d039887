//! `edgeloop bench ingest`: the daemon's ingest throughput against a bare
//! QoS 1 subscriber on the same broker, in the same run.
//!
//! Rows: {embedded, mosquitto} × {steady, backlog}. For each row two runs,
//! each on a fresh broker of the same configuration and with the same
//! messages: the *bare* run (a rumqttc subscriber in this process, persistent
//! session, QoS 1, automatic acknowledgements, nothing else) and the
//! *daemon* run (the real `edgeloop run` binary as a child process on a
//! temporary store, acknowledging after commit). `ratio` = daemon msg/s ÷
//! bare msg/s; the goal is at least [`GOAL`] in every row.
//!
//! - **steady**: the consumer is connected and subscribed; a publisher in
//!   this process sends the messages with QoS 1 as fast as its in-flight
//!   window of [`PUBLISHER_INFLIGHT`] allows (or at `--rate` msg/s), while
//!   the consumer takes them.
//! - **backlog**: the consumer's persistent session is created (connect,
//!   subscribe, disconnect); the messages are published and acknowledged by
//!   the broker while it is offline; then it connects and drains them.
//!   The broker must outlive the consumer: for the embedded broker it is
//!   hosted by a separate `edgeloop run` whose pipeline matches nothing (a
//!   daemon's own embedded broker dies with it), and the daemon under test
//!   connects to it as an external broker. That is no deployed set-up: to
//!   an external subscriber rumqttd's window of 100 applies (the proxy's
//!   relay serves its own daemon only), and a daemon's own broker never
//!   holds a backlog for it beyond `ingest::broker::PUBLISH_WINDOW` (the
//!   proxy stops reading from publishers there: the crash bound), so in
//!   the deployed set-up a backlog waits in the publishers and drains as
//!   the steady row does. The row is kept for what it shows: an external
//!   consumer of the embedded broker, held to 100 messages per commit.
//!
//! The embedded steady row runs the daemon as deployed, hosting its own
//! broker (so its threads and memory include the broker's); the bare run
//! subscribes to a broker-only daemon. mosquitto is started from this
//! checkout's `config/mosquitto.conf` (the shipped settings; only the
//! listener and the persistence directory change).
//!
//! What is counted and timed, for both consumers alike: `consumed(t)` is the
//! number of distinct messages the consumer holds at `t`: for the bare
//! subscriber, distinct sequence numbers received; for the daemon,
//! `samples_stored` of `GET /v1/stats` (a sample counts once its batch is
//! committed, which is when it is acknowledged), polled every 10 ms, each
//! reading timed at the middle of its request. `t_first` is the first
//! observation with `consumed > 0` (`consumed_first` then), `t_last` the
//! first with every message; msg/s = (messages − consumed_first) ÷
//! (t_last − t_first). The daemon's figure thus leaves out its first
//! commit's messages, the bare figure its first message.
//!
//! A run that makes no progress for `idle` seconds after the publisher is
//! done, or is not complete `timeout` seconds after its consuming phase
//! began, is reported `stalled` with the counts it reached.
//!
//! Right after each row's daemon run, `store_only` measures the daemon's
//! store path alone on the same messages ([`store_only`]: decode, route,
//! deduplicate, durable commits of `store.batch_size`, no MQTT): what
//! durable storage alone sustains on this machine at about that moment.
//! A bare msg/s many times above it cannot be met by any daemon that
//! stores durably, whatever the MQTT side does. (On a shared machine it
//! swings with the neighbours' load, like every figure here; it is a scale,
//! not a sharp bound.)

use std::io::BufRead;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::{failed, free_port, http_get, BenchError};

/// The goal: the daemon at no less than this fraction of the bare
/// subscriber's msg/s.
pub const GOAL: f64 = 0.9;
/// In-flight window of the publisher (rumqttc's default, and the daemon's).
pub const PUBLISHER_INFLIGHT: u16 = 100;
/// In-flight window of the bare subscriber's client (as the daemon's
/// `ingest::mqtt::options`; the broker's window decides what it receives).
pub const SUBSCRIBER_INFLIGHT: u16 = 100;
/// Topic filter of the pipeline and of the bare subscriber.
const FILTER: &str = "bench/+/occupancy";
/// Devices the messages come from (`bench/d{i}/occupancy`).
const DEVICES: usize = 10;
/// Environment variable that replaces the shipped `max_inflight_messages`
/// of the mosquitto the bench starts (to size the window with
/// `EDGELOOP__STORE__BATCH_SIZE`; unset: the shipped value).
pub const INFLIGHT_VAR: &str = "EDGELOOP_BENCH_MOSQUITTO_INFLIGHT";
/// The shipped mosquitto settings.
const MOSQUITTO_CONF: &str = include_str!("../../config/mosquitto.conf");

/// What [`run`] measures with.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// The edgeloop binary to spawn (normally `current_exe()`).
    pub binary: PathBuf,
    /// Messages per row.
    pub messages: u64,
    /// Publisher rate in the steady rows, msg/s; `None`: as fast as its
    /// in-flight window allows.
    pub rate: Option<u64>,
    /// Longest consuming phase of a run, seconds.
    pub timeout_s: u64,
    /// Longest time without progress once the publisher is done, seconds.
    pub idle_s: u64,
    /// mosquitto's executable; `None`: `/usr/sbin/mosquitto` or `mosquitto`
    /// on `PATH`.
    pub mosquitto: Option<PathBuf>,
    pub quick: bool,
}

impl IngestOptions {
    /// 100,000 messages per row (5,000 with `quick`), 120 s per run.
    pub fn new(binary: PathBuf, quick: bool) -> Self {
        Self {
            binary,
            messages: if quick { 5_000 } else { 100_000 },
            rate: None,
            timeout_s: 120,
            idle_s: if quick { 10 } else { 20 },
            mosquitto: None,
            quick,
        }
    }
}

/// Progress of one consumer over its consuming phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Consumption {
    /// `ok`, `stalled`, or what went wrong.
    pub status: String,
    /// Distinct messages consumed (stored, for the daemon) at the end.
    pub consumed: u64,
    /// (messages − consumed_first) ÷ seconds; `null` unless complete.
    pub msg_s: Option<f64>,
    /// `t_last − t_first`, s; `null` unless complete.
    pub seconds: Option<f64>,
    /// Consumed at the first observation.
    pub consumed_first: u64,
    /// Messages the broker acknowledged to the publisher.
    pub published: u64,
    /// The publisher's rate: messages ÷ (first publish → last PUBACK), msg/s.
    pub publish_msg_s: Option<f64>,
}

/// The bare subscriber's run.
#[derive(Debug, Clone, Serialize)]
pub struct BareRun {
    #[serde(flatten)]
    pub run: Consumption,
    /// Messages received again (QoS 1 redeliveries).
    pub duplicates: u64,
    /// Messages published but never received.
    pub missing: u64,
    /// CPU time (user + system) of this bench process over the consuming
    /// phase, seconds, per message in µs: the bare subscriber's cost (the
    /// steady rows include the publisher, which runs meanwhile).
    pub cpu_s: Option<f64>,
    pub cpu_us_per_msg: Option<f64>,
}

/// The daemon's run.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonRun {
    #[serde(flatten)]
    pub run: Consumption,
    /// `messages_received` of `/v1/stats` (publishes the daemon read, with
    /// redeliveries; after the restart in a backlog run).
    pub received: u64,
    /// `duplicates` of `/v1/stats` (redeliveries recognised, not stored).
    pub duplicates: u64,
    /// Durable commits (`commits` of `/v1/stats`).
    pub commits: u64,
    /// Samples in the store at the end (`/v1/pipelines`): all messages once.
    pub stored_total: u64,
    /// Most threads of the daemon process seen during the run.
    pub threads_max: u64,
    /// Peak resident memory of the daemon process (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
    /// WARN and ERROR lines in the daemon's log (rumqttd logs each client
    /// disconnect at ERROR), and the last one.
    pub log_warnings: u64,
    pub last_warning: Option<String>,
    /// CPU time (user + system) of the daemon process from its start to the
    /// end of the run, seconds (`/proc/<pid>/stat`), and per message in µs:
    /// MQTT, decoding, storing (and the embedded broker when it hosts it).
    pub cpu_s: Option<f64>,
    pub cpu_us_per_msg: Option<f64>,
}

/// One row: a broker and a scenario, both consumers.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `embedded` or `mosquitto`.
    pub broker: String,
    /// `steady` or `backlog`.
    pub row: String,
    /// What the row measures.
    pub meaning: String,
    pub messages: u64,
    /// `ok` when both runs completed, else `stalled`, `skipped: …` or the
    /// error.
    pub status: String,
    pub daemon: Option<DaemonRun>,
    pub bare: Option<BareRun>,
    /// daemon msg/s ÷ bare msg/s.
    pub ratio: Option<f64>,
    /// `ratio >= goal`.
    pub meets_goal: Option<bool>,
    /// The broker reported dropping messages (rumqttd: a reader's cursor
    /// fell behind its in-memory commit log and jumped ahead).
    pub broker_dropped: bool,
    /// The daemon's store path alone on the same messages, measured right
    /// after the row's daemon run ([`store_only`]): what durable storage
    /// alone sustains on this machine at about that moment.
    pub store_only: Option<StoreOnly>,
}

/// Everything `edgeloop bench ingest` reports.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub quick: bool,
    pub messages: u64,
    /// Publisher rate of the steady rows, msg/s; `null`: unpaced.
    pub rate: Option<u64>,
    pub publisher_inflight: u16,
    pub subscriber_inflight: u16,
    pub timeout_s: u64,
    pub idle_s: u64,
    pub goal: f64,
    /// `mosquitto -h`'s version line, or `null` when not installed.
    pub mosquitto: Option<String>,
    pub rows: Vec<Row>,
}

/// The writer's work without MQTT ([`store_only`]).
#[derive(Debug, Clone, Serialize)]
pub struct StoreOnly {
    /// Messages per commit (the compiled-in `store.batch_size`).
    pub batch_size: usize,
    pub commits: u64,
    pub seconds: f64,
    /// Messages decoded and durably stored per second.
    pub msg_s: f64,
    /// Samples in the store at the end (each message once).
    pub stored_total: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerKind {
    Embedded,
    Mosquitto,
}

impl BrokerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Mosquitto => "mosquitto",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Steady,
    Backlog,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Steady => "steady",
            Self::Backlog => "backlog",
        }
    }
}

fn meaning(broker: BrokerKind, scenario: Scenario, rate: Option<u64>) -> String {
    let pace = rate.map_or_else(
        || format!("as fast as its QoS 1 in-flight window of {PUBLISHER_INFLIGHT} allows"),
        |r| format!("at {r} msg/s"),
    );
    match (broker, scenario) {
        (BrokerKind::Embedded, Scenario::Steady) => format!(
            "consumer online; publisher {pace}. Daemon: `edgeloop run` hosting its own embedded \
             broker (as deployed). Bare: a broker-only `edgeloop run` (pipeline matching nothing)"
        ),
        (BrokerKind::Mosquitto, Scenario::Steady) => {
            format!("consumer online; publisher {pace}; mosquitto with config/mosquitto.conf")
        }
        (BrokerKind::Embedded, Scenario::Backlog) => "persistent session created, consumer \
             offline while the messages are published and acknowledged, then it connects and \
             drains. Broker: embedded rumqttd in a separate broker-only `edgeloop run` (the \
             daemon's own broker would die with it); the daemon connects to it as external, \
             so rumqttd's window of 100 applies, not the relay. Not a deployed set-up: a \
             daemon's own broker never queues more than its publish window for it"
            .into(),
        (BrokerKind::Mosquitto, Scenario::Backlog) => "persistent session created, consumer \
             offline while the messages are published and acknowledged, then it connects and \
             drains; mosquitto with config/mosquitto.conf"
            .into(),
    }
}

/// Runs every row; see the module documentation.
///
/// # Errors
/// [`BenchError`] only for a failure before any row runs; a row that fails
/// carries its error in `status`.
pub fn run(opts: &IngestOptions) -> Result<IngestReport, BenchError> {
    if opts.messages == 0 {
        return Err(failed("options", "--messages must be at least 1"));
    }
    let msgs = Arc::new(messages(opts.messages, 42));
    let mosquitto = mosquitto_binary(opts.mosquitto.as_deref());
    let version = mosquitto.as_deref().and_then(mosquitto_version);
    let mut rows = Vec::new();
    for broker in [BrokerKind::Embedded, BrokerKind::Mosquitto] {
        for scenario in [Scenario::Steady, Scenario::Backlog] {
            let mut row = Row {
                broker: broker.name().into(),
                row: scenario.name().into(),
                meaning: meaning(broker, scenario, opts.rate),
                messages: opts.messages,
                status: String::new(),
                daemon: None,
                bare: None,
                ratio: None,
                meets_goal: None,
                broker_dropped: false,
                store_only: None,
            };
            let env = match broker {
                BrokerKind::Embedded if !cfg!(feature = "embedded-broker") => {
                    row.status = "skipped: this build has no embedded broker".into();
                    rows.push(row);
                    continue;
                }
                BrokerKind::Mosquitto if mosquitto.is_none() => {
                    row.status = "skipped: mosquitto not installed".into();
                    rows.push(row);
                    continue;
                }
                BrokerKind::Embedded => Env {
                    broker,
                    mosquitto: None,
                },
                BrokerKind::Mosquitto => Env {
                    broker,
                    mosquitto: mosquitto.clone(),
                },
            };
            let bare = bare_run(&env, scenario, &msgs, opts);
            let daemon = daemon_run(&env, scenario, &msgs, opts);
            let mut errors = Vec::new();
            match store_only(&msgs) {
                Ok(so) => row.store_only = Some(so),
                Err(e) => errors.push(format!("store only: {e}")),
            }
            match bare {
                Ok((b, dropped)) => {
                    row.broker_dropped |= dropped;
                    row.bare = Some(b);
                }
                Err(e) => errors.push(format!("bare: {e}")),
            }
            match daemon {
                Ok((d, dropped)) => {
                    row.broker_dropped |= dropped;
                    row.daemon = Some(d);
                }
                Err(e) => errors.push(format!("daemon: {e}")),
            }
            row.ratio = match (&row.daemon, &row.bare) {
                (Some(d), Some(b)) => match (d.run.msg_s, b.run.msg_s) {
                    (Some(d), Some(b)) if b > 0.0 => Some(d / b),
                    _ => None,
                },
                _ => None,
            };
            row.meets_goal = row.ratio.map(|r| r >= GOAL);
            let statuses = [
                row.bare.as_ref().map(|b| b.run.status.as_str()),
                row.daemon.as_ref().map(|d| d.run.status.as_str()),
            ];
            row.status = if !errors.is_empty() {
                errors.join("; ")
            } else if statuses.iter().all(|s| *s == Some("ok")) {
                "ok".into()
            } else {
                let mut parts = Vec::new();
                for (who, s) in ["bare", "daemon"].iter().zip(statuses) {
                    if let Some(s) = s.filter(|s| *s != "ok") {
                        parts.push(format!("{who} {s}"));
                    }
                }
                parts.join(", ")
            };
            rows.push(row);
        }
    }
    Ok(IngestReport {
        quick: opts.quick,
        messages: opts.messages,
        rate: opts.rate,
        publisher_inflight: PUBLISHER_INFLIGHT,
        subscriber_inflight: SUBSCRIBER_INFLIGHT,
        timeout_s: opts.timeout_s,
        idle_s: opts.idle_s,
        goal: GOAL,
        mosquitto: version,
        rows,
    })
}

/// The daemon's store path alone, as its writer runs it: the messages of a
/// row decoded by the daemon's pipeline (the daemon runs' configuration),
/// routed and deduplicated, and appended in durable commits of
/// `store.batch_size` (the compiled-in default) to a store in a temporary
/// directory (the daemon runs' file system); decoding on one thread while
/// the previous batch commits on another, as the writer does. No MQTT, no
/// acknowledgements.
///
/// # Errors
/// When the configuration, the store or a commit fails.
pub fn store_only(msgs: &[Message]) -> Result<StoreOnly, BenchError> {
    use crate::ingest::decode::Decoder;
    use crate::store::{NewSample, Store};
    let dir = tempfile::tempdir().map_err(|e| failed("temporary directory", e))?;
    let conf = daemon_config(dir.path(), "store", 0, "embedded", 0, "store", FILTER)?;
    let cfg = crate::config::Config::load(Some(&conf)).map_err(|e| failed("configuration", e))?;
    let route = cfg.pipelines[0].route();
    let decoder = Decoder::new(&route.schema, cfg.mqtt.ingest_max_payload_bytes);
    let store = Store::open(&cfg.store.path).map_err(|e| failed("store", e))?;
    let batch_size = cfg.store.batch_size;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<NewSample>>(4);
    let started = Instant::now();
    let committer = std::thread::spawn(move || -> Result<(u64, Store), String> {
        let mut commits = 0;
        for rows in rx {
            store.write_batch(&rows, &[]).map_err(|e| e.to_string())?;
            commits += 1;
        }
        Ok((commits, store))
    });
    for chunk in msgs.chunks(batch_size) {
        let rows: Vec<NewSample> = chunk
            .iter()
            .filter_map(|m| {
                let sample = decoder.decode(&m.topic, &m.payload, 0).sample?;
                Some(NewSample {
                    pipeline: route.name.clone(),
                    digest: crate::ingest::writer::digest(&m.topic, &m.payload),
                    sample,
                    dedup: true,
                })
            })
            .collect();
        if tx.send(rows).is_err() {
            break;
        }
    }
    drop(tx);
    let (commits, store) = committer
        .join()
        .map_err(|_| failed("store-only", "the commit thread panicked"))?
        .map_err(|e| failed("store-only commit", e))?;
    let seconds = started.elapsed().as_secs_f64();
    let stored_total = store
        .counts(&route.name)
        .map_err(|e| failed("store", e))?
        .samples;
    Ok(StoreOnly {
        batch_size,
        commits,
        seconds,
        msg_s: msgs.len() as f64 / seconds.max(1e-9),
        stored_total,
    })
}

/// The broker of a row.
struct Env {
    broker: BrokerKind,
    mosquitto: Option<PathBuf>,
}

/// A message: topic and payload.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
}

/// `n` occupancy-like readings from `DEVICES` devices, seeded: each a
/// random walk of temperature, humidity, light, CO₂ and humidity ratio with
/// a room that is occupied or not, a distinct timestamp, and a sequence
/// number (`seq`, first, so the bare subscriber can read it without
/// parsing). No label: the daemon stores them as unlabelled samples.
pub fn messages(n: u64, seed: u64) -> Vec<Message> {
    struct Room {
        occupied: bool,
        temperature: f64,
        humidity: f64,
        co2: f64,
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rooms: Vec<Room> = (0..DEVICES)
        .map(|_| Room {
            occupied: rng.bool(),
            temperature: 20.0 + 2.0 * rng.f64(),
            humidity: 22.0 + 10.0 * rng.f64(),
            co2: 450.0 + 300.0 * rng.f64(),
        })
        .collect();
    let base = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default();
    (0..n)
        .map(|seq| {
            let device = (seq as usize) % DEVICES;
            let r = &mut rooms[device];
            if rng.f64() < 0.01 {
                r.occupied = !r.occupied;
            }
            let target_co2 = if r.occupied { 1100.0 } else { 450.0 };
            r.co2 += 0.05 * (target_co2 - r.co2) + 8.0 * (rng.f64() - 0.5);
            r.temperature = (r.temperature
                + 0.02 * (rng.f64() - 0.5)
                + if r.occupied { 0.002 } else { -0.002 })
            .clamp(19.0, 24.5);
            r.humidity = (r.humidity + 0.1 * (rng.f64() - 0.5)).clamp(16.0, 40.0);
            let light = if r.occupied {
                420.0 + 120.0 * rng.f64()
            } else {
                40.0 * rng.f64()
            };
            // Humidity ratio (kg water / kg dry air) near 101.3 kPa.
            let p_sat = 0.61094 * (17.625 * r.temperature / (r.temperature + 243.04)).exp();
            let p_w = p_sat * r.humidity / 100.0;
            let ratio = 0.622 * p_w / (101.325 - p_w);
            let ts = base + chrono::Duration::seconds(seq as i64);
            let payload = format!(
                r#"{{"seq":{seq},"Date":"{}","Temperature":{:.3},"Humidity":{:.3},"Light":{:.1},"CO2":{:.2},"HumidityRatio":{:.6}}}"#,
                ts.format("%Y-%m-%d %H:%M:%S"),
                r.temperature,
                r.humidity,
                light,
                r.co2,
                ratio
            );
            Message {
                topic: format!("bench/d{device}/occupancy"),
                payload: Bytes::from(payload),
            }
        })
        .collect()
}

/// The sequence number at the start of a payload (`{"seq":123,…`).
fn seq_of(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"{\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

fn mosquitto_binary(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    let fixed = Path::new("/usr/sbin/mosquitto");
    if fixed.exists() {
        return Some(fixed.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("mosquitto"))
            .find(|p| p.is_file())
    })
}

fn mosquitto_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("-h").output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find(|l| l.contains("version"))
        .map(|l| l.trim().to_string())
}

/// A child process stopped (SIGTERM, then SIGKILL after 10 s) and reaped
/// when dropped.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some(status)` once it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM and wait up to `grace`, then SIGKILL.
    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

fn log_file(path: &Path) -> Result<std::fs::File, BenchError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| failed("log file", e))
}

/// Starts mosquitto with the shipped settings on a free port, persistence in
/// `dir`; waits until it accepts connections.
fn start_mosquitto(bin: &Path, dir: &Path) -> Result<(Proc, u16), BenchError> {
    use std::os::unix::fs::PermissionsExt;
    // mosquitto started as root drops to its own user, which must be able
    // to write its persistence file here.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| failed("mosquitto directory", e))?;
    let port = free_port()?;
    let mut conf = String::new();
    for line in MOSQUITTO_CONF.lines() {
        let line = if line.starts_with("listener ") {
            format!("listener {port} 127.0.0.1")
        } else if line.starts_with("persistence_location ") {
            format!("persistence_location {}/", dir.display())
        } else if let (true, Some(n)) = (
            line.starts_with("max_inflight_messages "),
            std::env::var(INFLIGHT_VAR).ok().filter(|v| !v.is_empty()),
        ) {
            format!("max_inflight_messages {n}")
        } else {
            line.to_string()
        };
        conf.push_str(&line);
        conf.push('\n');
    }
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf).map_err(|e| failed("mosquitto config", e))?;
    let log = dir.join("mosquitto.log");
    let child = Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(log_file(&log)?)
        .spawn()
        .map_err(|e| failed("spawning mosquitto", e))?;
    let mut proc = Proc {
        child: Some(child),
        log,
    };
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = proc.exited() {
            return Err(failed(
                "mosquitto",
                format!(
                    "exited: {status}; {}",
                    last_line(&proc.log).unwrap_or_default()
                ),
            ));
        }
        if Instant::now() > until {
            return Err(failed(
                "mosquitto",
                format!("not listening on {port} after 10 s"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc, port))
}

/// Writes a daemon configuration: store in `dir`, HTTP on `http_port`,
/// `broker` ("embedded", listening on `embedded_port`, or a URL), and the
/// occupancy pipeline on `topics`, unlabelled, without MQTT predictions.
fn daemon_config(
    dir: &Path,
    name: &str,
    http_port: u16,
    broker: &str,
    embedded_port: u16,
    client_id: &str,
    topics: &str,
) -> Result<PathBuf, BenchError> {
    let conf = dir.join(format!("{name}.toml"));
    std::fs::write(
        &conf,
        format!(
            "[store]\npath = '{store}'\n\
             [mqtt]\nbroker = '{broker}'\nembedded_listen = '127.0.0.1:{embedded_port}'\n\
             client_id = '{client_id}'\nreconnect_min_ms = 50\nreconnect_max_ms = 1000\n\
             [http]\nlisten = '127.0.0.1:{http_port}'\n\
             [[pipelines]]\nname = 'occupancy'\ntopics = ['{topics}']\nlabel_topics = []\n\
             features = ['Temperature', 'Humidity', 'Light', 'CO2', 'HumidityRatio']\n\
             label = 'Occupancy'\ntimestamp = 'Date'\ntimestamp_format = '%Y-%m-%d %H:%M:%S'\n\
             device_level = 1\nprediction_topic = ''\n",
            store = dir.join(format!("{name}.redb")).display(),
        ),
    )
    .map_err(|e| failed("writing the daemon config", e))?;
    Ok(conf)
}

/// Spawns `edgeloop run` with `conf`, its log in `log`; waits for
/// `/healthz`, and for the MQTT subscription when `subscribed`.
fn start_daemon(
    binary: &Path,
    conf: &Path,
    log: &Path,
    http: SocketAddr,
    subscribed: bool,
) -> Result<Proc, BenchError> {
    let proc = spawn_daemon(binary, conf, log)?;
    wait_daemon(proc, http, subscribed)
}

fn spawn_daemon(binary: &Path, conf: &Path, log: &Path) -> Result<Proc, BenchError> {
    let child = Command::new(binary)
        .args(["run", "--log-level", "warn", "--config"])
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(log_file(log)?)
        .spawn()
        .map_err(|e| failed("spawning the daemon", e))?;
    Ok(Proc {
        child: Some(child),
        log: log.to_path_buf(),
    })
}

fn wait_daemon(mut proc: Proc, http: SocketAddr, subscribed: bool) -> Result<Proc, BenchError> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = proc.exited() {
            return Err(failed(
                "daemon start",
                format!(
                    "exited: {status}; {}",
                    last_line(&proc.log).unwrap_or_default()
                ),
            ));
        }
        let health = http_get(http, "/healthz")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
        if let Some(h) = health {
            if !subscribed || h["mqtt_subscribed"].as_bool() == Some(true) {
                return Ok(proc);
            }
        }
        if Instant::now() > until {
            return Err(failed(
                "daemon start",
                format!(
                    "not {} after 30 s",
                    if subscribed {
                        "subscribed"
                    } else {
                        "answering"
                    }
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The broker-only daemon of the embedded rows: its pipeline matches
/// nothing the publisher sends. Returns it and its MQTT port.
fn start_broker_host(binary: &Path, dir: &Path) -> Result<(Proc, u16), BenchError> {
    let (http_port, mqtt_port) = (free_port()?, free_port()?);
    let conf = daemon_config(
        dir,
        "host",
        http_port,
        "embedded",
        mqtt_port,
        "edgeloop-host",
        "bench-host/+/none",
    )?;
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let proc = start_daemon(binary, &conf, &dir.join("host.log"), http, true)?;
    Ok((proc, mqtt_port))
}

/// A broker a consumer can come back to: mosquitto, or a broker-only
/// daemon for the embedded broker.
fn start_lasting_broker(env: &Env, binary: &Path, dir: &Path) -> Result<(Proc, u16), BenchError> {
    match (env.broker, &env.mosquitto) {
        (BrokerKind::Mosquitto, Some(bin)) => start_mosquitto(bin, dir),
        _ => start_broker_host(binary, dir),
    }
}

/// Whether the broker's log says it dropped messages: rumqttd skips ahead
/// when a reader's cursor fell behind its in-memory commit log ("… jumping
/// to head", "… jumping"); mosquitto logs "Outgoing messages are being
/// dropped" when a client's queue is full.
fn broker_dropped(kind: BrokerKind, log: &Path) -> bool {
    let needle = match kind {
        BrokerKind::Embedded => "jumping",
        BrokerKind::Mosquitto => "dropped",
    };
    std::fs::read_to_string(log)
        .map(|s| s.contains(needle))
        .unwrap_or(false)
}

fn last_line(log: &Path) -> Option<String> {
    let f = std::fs::File::open(log).ok()?;
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .last()
}

/// WARN/ERROR lines of a daemon log, and the last one.
fn warnings(log: &Path) -> (u64, Option<String>) {
    let Ok(text) = std::fs::read_to_string(log) else {
        return (0, None);
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    (lines.len() as u64, lines.last().map(|l| l.to_string()))
}

/// Stamps of one consumer's progress.
#[derive(Debug, Default)]
struct Progress {
    first: Option<(Instant, u64)>,
    last: Option<Instant>,
    count: u64,
    changed: Option<Instant>,
}

impl Progress {
    fn observe(&mut self, at: Instant, count: u64, n: u64) {
        if count > 0 && self.first.is_none() {
            self.first = Some((at, count));
        }
        if count != self.count {
            self.changed = Some(at);
        }
        if count >= n && self.last.is_none() {
            self.last = Some(at);
        }
        self.count = count;
    }

    /// `Some(status)` once the run is over: complete, or stalled.
    fn verdict(
        &self,
        n: u64,
        began: Instant,
        published_at: Option<Instant>,
        opts: &IngestOptions,
    ) -> Option<String> {
        if self.count >= n {
            return Some("ok".into());
        }
        let now = Instant::now();
        if now.duration_since(began) > Duration::from_secs(opts.timeout_s) {
            return Some(format!(
                "stalled: {} of {n} after {} s",
                self.count, opts.timeout_s
            ));
        }
        if let Some(done) = published_at {
            let quiet_since = self.changed.map_or(done, |c| c.max(done));
            if now.duration_since(quiet_since) > Duration::from_secs(opts.idle_s) {
                return Some(format!(
                    "stalled: {} of {n}, no progress for {} s",
                    self.count, opts.idle_s
                ));
            }
        }
        None
    }

    fn consumption(&self, n: u64, status: String) -> Consumption {
        let (msg_s, seconds) = match (self.first, self.last) {
            (Some((t0, c0)), Some(t1)) if t1 > t0 && status == "ok" => {
                let s = t1.duration_since(t0).as_secs_f64();
                (Some((n.saturating_sub(c0)) as f64 / s), Some(s))
            }
            _ => (None, None),
        };
        Consumption {
            status,
            consumed: self.count,
            msg_s,
            seconds,
            consumed_first: self.first.map_or(0, |f| f.1),
            published: 0,
            publish_msg_s: None,
        }
    }
}

/// What the publisher did.
#[derive(Debug, Clone, Default)]
struct Published {
    acked: u64,
    msg_s: Option<f64>,
    error: Option<String>,
}

/// A publisher still running, or what it did.
enum Publisher {
    Running(std::thread::JoinHandle<Published>),
    Done(Published),
}

impl Publisher {
    fn finish(self) -> Published {
        match self {
            Self::Running(h) => h.join().unwrap_or_else(|_| Published {
                error: Some("publisher panicked".into()),
                ..Default::default()
            }),
            Self::Done(p) => p,
        }
    }
}

/// Publishes every message (QoS 1, in-flight [`PUBLISHER_INFLIGHT`],
/// paced at `rate` when given) on a thread of its own, and waits for every
/// PUBACK or `deadline`. `done` is set when it returns.
fn spawn_publisher(
    port: u16,
    msgs: Arc<Vec<Message>>,
    rate: Option<u64>,
    deadline: Instant,
    done: Arc<Mutex<Option<Instant>>>,
) -> std::thread::JoinHandle<Published> {
    std::thread::spawn(move || {
        let out = publish(port, &msgs, rate, deadline);
        if let Ok(mut d) = done.lock() {
            *d = Some(Instant::now());
        }
        out
    })
}

fn publish(port: u16, msgs: &[Message], rate: Option<u64>, deadline: Instant) -> Published {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return Published {
                error: Some(e.to_string()),
                ..Default::default()
            }
        }
    };
    runtime.block_on(async move {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let mut o = MqttOptions::new(
            format!("bench-pub-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(30))
            .set_inflight(PUBLISHER_INFLIGHT)
            .set_max_packet_size(1 << 22, 1 << 22);
        let (client, mut eventloop) = AsyncClient::new(o, 1000);
        let acked = Arc::new(AtomicU64::new(0));
        let last_ack = Arc::new(Mutex::new(None::<Instant>));
        let poller = tokio::spawn({
            let (acked, last_ack) = (acked.clone(), last_ack.clone());
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut l) = last_ack.lock() {
                                *l = Some(Instant::now());
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
        let started = Instant::now();
        let mut error = None;
        for (i, m) in msgs.iter().enumerate() {
            if let Some(r) = rate.filter(|r| *r > 0) {
                let due = started + Duration::from_secs_f64(i as f64 / r as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            if let Err(e) = client
                .publish_bytes(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone())
                .await
            {
                error = Some(e.to_string());
                break;
            }
            if Instant::now() > deadline {
                error = Some("publisher deadline".into());
                break;
            }
        }
        let n = msgs.len() as u64;
        while acked.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let acked_n = acked.load(Ordering::Relaxed);
        let _ = client.try_disconnect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        poller.abort();
        let last = last_ack.lock().ok().and_then(|l| *l);
        let msg_s = last
            .filter(|_| acked_n >= n)
            .map(|l| n as f64 / l.duration_since(started).as_secs_f64().max(1e-9));
        if acked_n < n && error.is_none() {
            error = Some(format!("{acked_n} of {n} acknowledged by the broker"));
        }
        Published {
            acked: acked_n,
            msg_s,
            error,
        }
    })
}

/// Shared state of the bare subscriber.
#[derive(Debug, Default)]
struct BareState {
    seen: Mutex<Vec<bool>>,
    distinct: AtomicU64,
    duplicates: AtomicU64,
    ready: AtomicBool,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

fn bare_options(port: u16) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new("bench-bare", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_manual_acks(false)
        .set_inflight(SUBSCRIBER_INFLIGHT)
        .set_max_packet_size(1 << 22, 1 << 22);
    o
}

/// Connects the bare subscriber's persistent session, subscribes, and
/// disconnects: the broker now queues for it.
fn bare_create_session(port: u16) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed("runtime", e))?;
    runtime.block_on(async move {
        use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
        let (client, mut eventloop) = AsyncClient::new(bare_options(port), 10);
        let run = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client
                            .subscribe(FILTER, QoS::AtLeastOnce)
                            .await
                            .map_err(|e| failed("bare subscribe", e))?;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        client
                            .disconnect()
                            .await
                            .map_err(|e| failed("bare disconnect", e))?;
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(failed("bare session", e)),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .map_err(|_| failed("bare session", "no SUBACK within 10 s"))?
    })?;
    // Let the broker register the disconnection before anything is sent.
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// Runs the bare subscriber on a thread of its own until `stop`: connects
/// (persistent session), subscribes unless the session is present, and
/// counts distinct messages.
fn spawn_bare(
    port: u16,
    n: u64,
    state: Arc<BareState>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<(), String>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            use rumqttc::{AsyncClient, Event, Packet, QoS};
            let (client, mut eventloop) = AsyncClient::new(bare_options(port), 100);
            if let Ok(mut seen) = state.seen.lock() {
                *seen = vec![false; n as usize];
            }
            let poller = tokio::spawn({
                let state = state.clone();
                async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                                if ack.session_present {
                                    state.ready.store(true, Ordering::Release);
                                } else {
                                    let client = client.clone();
                                    tokio::spawn(async move {
                                        let _ = client.subscribe(FILTER, QoS::AtLeastOnce).await;
                                    });
                                }
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                state.ready.store(true, Ordering::Release);
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let now = Instant::now();
                                let new = seq_of(&p.payload)
                                    .and_then(|s| {
                                        let mut seen = state.seen.lock().ok()?;
                                        let slot = seen.get_mut(s as usize)?;
                                        Some(!std::mem::replace(slot, true))
                                    })
                                    .unwrap_or(false);
                                if new {
                                    let d = state.distinct.fetch_add(1, Ordering::AcqRel) + 1;
                                    if d == 1 {
                                        if let Ok(mut f) = state.first.lock() {
                                            *f = Some(now);
                                        }
                                    }
                                    if d == n {
                                        if let Ok(mut l) = state.last.lock() {
                                            *l = Some(now);
                                        }
                                    }
                                } else {
                                    state.duplicates.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
            });
            while !stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            poller.abort();
            Ok(())
        })
    })
}

/// The bare subscriber's run of a row; also whether the broker reported
/// dropping messages.
fn bare_run(
    env: &Env,
    scenario: Scenario,
    msgs: &Arc<Vec<Message>>,
    opts: &IngestOptions,
) -> Result<(BareRun, bool), BenchError> {
    let dir = tempfile::tempdir().map_err(|e| failed("temporary directory", e))?;
    let n = msgs.len() as u64;
    let (mut broker, port) = start_lasting_broker(env, &opts.binary, dir.path())?;
    let state = Arc::new(BareState::default());
    let stop = Arc::new(AtomicBool::new(false));
    let published_at = Arc::new(Mutex::new(None));
    let wait_ready = |state: &BareState| -> Result<(), BenchError> {
        let until = Instant::now() + Duration::from_secs(10);
        while !state.ready.load(Ordering::Acquire) {
            if Instant::now() > until {
                return Err(failed("bare subscriber", "not subscribed after 10 s"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    };
    let (began, published, subscriber) = match scenario {
        Scenario::Steady => {
            let sub = spawn_bare(port, n, state.clone(), stop.clone());
            if let Err(e) = wait_ready(&state) {
                stop.store(true, Ordering::Release);
                let _ = sub.join();
                return Err(e);
            }
            let began = Instant::now();
            let publisher = spawn_publisher(
                port,
                msgs.clone(),
                opts.rate,
                began + Duration::from_secs(opts.timeout_s),
                published_at.clone(),
            );
            (began, Publisher::Running(publisher), sub)
        }
        Scenario::Backlog => {
            bare_create_session(port)?;
            let publisher = spawn_publisher(
                port,
                msgs.clone(),
                None,
                Instant::now() + Duration::from_secs(opts.timeout_s),
                published_at.clone(),
            );
            let published = Publisher::Running(publisher).finish();
            let began = Instant::now();
            let sub = spawn_bare(port, n, state.clone(), stop.clone());
            (began, Publisher::Done(published), sub)
        }
    };
    let cpu_began = own_cpu_s();
    let mut progress = Progress::default();
    let status = loop {
        let count = state.distinct.load(Ordering::Acquire);
        progress.observe(Instant::now(), count, n);
        if let Some(v) = progress.verdict(n, began, published_at.lock().ok().and_then(|p| *p), opts)
        {
            break v;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let cpu_s = own_cpu_s().zip(cpu_began).map(|(end, began)| end - began);
    stop.store(true, Ordering::Release);
    let _ = subscriber.join();
    let published = published.finish();
    broker.stop(Duration::from_secs(5));
    // The subscriber's own stamps are exact; the loop's only decide when to
    // stop.
    progress.first = state.first.lock().ok().and_then(|f| *f).map(|t| (t, 1));
    progress.last = state.last.lock().ok().and_then(|l| *l);
    progress.count = state.distinct.load(Ordering::Acquire);
    let mut run = progress.consumption(n, status);
    run.published = published.acked;
    run.publish_msg_s = published.msg_s;
    if let Some(e) = published.error {
        if run.status == "ok" {
            run.status = format!("publisher: {e}");
        }
    }
    let dropped = broker_dropped(env.broker, &broker.log);
    Ok((
        BareRun {
            duplicates: state.duplicates.load(Ordering::Acquire),
            missing: n - run.consumed.min(n),
            cpu_s,
            cpu_us_per_msg: cpu_s.map(|c| c * 1e6 / n as f64),
            run,
        },
        dropped,
    ))
}

/// `/v1/stats` counters the daemon run follows.
#[derive(Debug, Default, Clone, Copy)]
struct DaemonStats {
    stored: u64,
    received: u64,
    duplicates: u64,
    commits: u64,
}

fn daemon_stats(http: SocketAddr) -> Option<DaemonStats> {
    let v: serde_json::Value = serde_json::from_str(&http_get(http, "/v1/stats")?).ok()?;
    Some(DaemonStats {
        stored: v["samples_stored"].as_u64()?,
        received: v["messages_received"].as_u64().unwrap_or(0),
        duplicates: v["duplicates"].as_u64().unwrap_or(0),
        commits: v["commits"].as_u64().unwrap_or(0),
    })
}

fn stored_total(http: SocketAddr) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(&http_get(http, "/v1/pipelines")?).ok()?;
    v["pipelines"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "occupancy")
        .and_then(|p| p["samples"].as_u64())
}

/// CPU time (user + system) of process `pid` so far, seconds
/// (`/proc/<pid>/stat`, fields 14 and 15, in clock ticks).
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields resume after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime) = (fields.get(11)?, fields.get(12)?);
    let ticks = utime.parse::<u64>().ok()? + stime.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_s > 0).then(|| ticks as f64 / per_s as f64)
}

/// CPU time (user + system) of this process so far, seconds.
fn own_cpu_s() -> Option<f64> {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills `u` when it returns 0; read only then.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: filled above.
    let u = unsafe { u.assume_init() };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(s(u.ru_utime) + s(u.ru_stime))
}

/// `Threads` and `VmHWM` (KiB) of `pid`.
fn threads_and_hwm(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("Threads:")?, field("VmHWM:")?))
}

/// The daemon's run of a row; also whether the broker reported dropping
/// messages.
fn daemon_run(
    env: &Env,
    scenario: Scenario,
    msgs: &Arc<Vec<Message>>,
    opts: &IngestOptions,
) -> Result<(DaemonRun, bool), BenchError> {
    let dir = tempfile::tempdir().map_err(|e| failed("temporary directory", e))?;
    let n = msgs.len() as u64;
    let http_port = free_port()?;
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let log = dir.path().join("daemon.log");
    let published_at = Arc::new(Mutex::new(None));
    // The broker: the daemon's own (embedded steady), else one that lasts.
    let (mut host, port, embedded_own) = match (env.broker, scenario) {
        (BrokerKind::Embedded, Scenario::Steady) => (None, free_port()?, true),
        _ => {
            let (p, port) = start_lasting_broker(env, &opts.binary, dir.path())?;
            (Some(p), port, false)
        }
    };
    let conf = if embedded_own {
        daemon_config(
            dir.path(),
            "daemon",
            http_port,
            "embedded",
            port,
            "edgeloop-bench",
            FILTER,
        )?
    } else {
        daemon_config(
            dir.path(),
            "daemon",
            http_port,
            &format!("mqtt://127.0.0.1:{port}"),
            free_port()?,
            "edgeloop-bench",
            FILTER,
        )?
    };
    let (mut daemon, began, publisher) = match scenario {
        Scenario::Steady => {
            let daemon = start_daemon(&opts.binary, &conf, &log, http, true)?;
            let began = Instant::now();
            let publisher = spawn_publisher(
                port,
                msgs.clone(),
                opts.rate,
                began + Duration::from_secs(opts.timeout_s),
                published_at.clone(),
            );
            (daemon, began, Publisher::Running(publisher))
        }
        Scenario::Backlog => {
            // Create the session, then stop the daemon (SIGTERM: it
            // disconnects); the broker queues for it.
            let mut first = start_daemon(&opts.binary, &conf, &log, http, true)?;
            first.stop(Duration::from_secs(15));
            let published = Publisher::Running(spawn_publisher(
                port,
                msgs.clone(),
                None,
                Instant::now() + Duration::from_secs(opts.timeout_s),
                published_at.clone(),
            ))
            .finish();
            let began = Instant::now();
            let daemon = spawn_daemon(&opts.binary, &conf, &log)?;
            (daemon, began, Publisher::Done(published))
        }
    };
    let pid = daemon.pid();
    let mut progress = Progress::default();
    let mut last = DaemonStats::default();
    let (mut threads_max, mut hwm) = (0, 0);
    let mut sampled = Instant::now() - Duration::from_secs(1);
    let status = loop {
        if let Some(s) = daemon.exited() {
            break format!(
                "daemon exited: {s}; {}",
                last_line(&daemon.log).unwrap_or_default()
            );
        }
        let sent = Instant::now();
        if let Some(s) = daemon_stats(http) {
            let at = sent + (Instant::now() - sent) / 2;
            progress.observe(at, s.stored, n);
            last = s;
        }
        if sampled.elapsed() >= Duration::from_millis(100) || progress.count >= n {
            if let Some((t, h)) = threads_and_hwm(pid) {
                threads_max = threads_max.max(t);
                hwm = hwm.max(h);
            }
            sampled = Instant::now();
        }
        if let Some(v) = progress.verdict(n, began, published_at.lock().ok().and_then(|p| *p), opts)
        {
            break v;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let cpu_s = process_cpu_s(pid);
    let published = publisher.finish();
    let total = stored_total(http).unwrap_or(0);
    if let Some((t, h)) = threads_and_hwm(pid) {
        threads_max = threads_max.max(t);
        hwm = hwm.max(h);
    }
    daemon.stop(Duration::from_secs(15));
    let dropped = host.as_ref().map_or_else(
        || broker_dropped(env.broker, &daemon.log),
        |h| broker_dropped(env.broker, &h.log),
    );
    if let Some(h) = host.as_mut() {
        h.stop(Duration::from_secs(5));
    }
    let mut run = progress.consumption(n, status);
    run.published = published.acked;
    run.publish_msg_s = published.msg_s;
    if let Some(e) = published.error {
        if run.status == "ok" {
            run.status = format!("publisher: {e}");
        }
    }
    let (log_warnings, last_warning) = warnings(&daemon.log);
    Ok((
        DaemonRun {
            run,
            received: last.received,
            duplicates: last.duplicates,
            commits: last.commits,
            stored_total: total,
            threads_max,
            peak_rss_kib: hwm,
            log_warnings,
            last_warning,
            cpu_s,
            cpu_us_per_msg: cpu_s.map(|c| c * 1e6 / n as f64),
        },
        dropped,
    ))
}

/// The report as text: one line per row, then what each row means.
pub fn render(r: &IngestReport) -> String {
    let rate = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    let mut s = String::new();
    s.push_str(&format!(
        "{:<10} {:<8} {:>9} {:>13} {:>11} {:>11} {:>6} {:>5} {:>8} {:>10}  status\n",
        "broker",
        "row",
        "messages",
        "daemon msg/s",
        "bare msg/s",
        "store msg/s",
        "ratio",
        "goal",
        "threads",
        "VmHWM MiB"
    ));
    for row in &r.rows {
        let d = row.daemon.as_ref();
        s.push_str(&format!(
            "{:<10} {:<8} {:>9} {:>13} {:>11} {:>11} {:>6} {:>5} {:>8} {:>10}  {}{}\n",
            row.broker,
            row.row,
            row.messages,
            rate(d.and_then(|d| d.run.msg_s)),
            rate(row.bare.as_ref().and_then(|b| b.run.msg_s)),
            rate(row.store_only.as_ref().map(|so| so.msg_s)),
            row.ratio.map_or("-".into(), |v| format!("{v:.2}")),
            row.meets_goal.map_or("-", |m| if m { "met" } else { "no" }),
            d.map_or("-".into(), |d| d.threads_max.to_string()),
            d.map_or("-".into(), |d| format!(
                "{:.1}",
                d.peak_rss_kib as f64 / 1024.0
            )),
            row.status,
            if row.broker_dropped {
                " (broker dropped messages)"
            } else {
                ""
            }
        ));
    }
    for row in &r.rows {
        let (Some(d), Some(b)) = (&row.daemon, &row.bare) else {
            continue;
        };
        s.push_str(&format!(
            "{} {}: daemon stored {} ({} in the store; {} received, {} duplicates, {} commits), \
             publisher {} msg/s; bare received {} ({} duplicates, {} missing), publisher {} msg/s\n",
            row.broker,
            row.row,
            d.run.consumed,
            d.stored_total,
            d.received,
            d.duplicates,
            d.commits,
            rate(d.run.publish_msg_s),
            b.run.consumed,
            b.duplicates,
            b.missing,
            rate(b.run.publish_msg_s),
        ));
    }
    s.push_str(
        "store msg/s: the daemon's store path alone on the same messages (decode, route, dedup, \
         durable commits of store.batch_size; no MQTT), right after the row's daemon run\n",
    );
    s.push_str(&format!(
        "goal: daemon msg/s >= {:.0} % of bare; publisher in-flight {}; {}\n",
        r.goal * 100.0,
        r.publisher_inflight,
        r.mosquitto.as_deref().unwrap_or("mosquitto not installed")
    ));
    let mut seen = std::collections::HashSet::new();
    for row in &r.rows {
        if seen.insert((row.broker.clone(), row.row.clone())) {
            s.push_str(&format!("{} {}: {}\n", row.broker, row.row, row.meaning));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_distinct_seeded_and_decodable() {
        let a = messages(1000, 42);
        let b = messages(1000, 42);
        assert_eq!(a.len(), 1000);
        assert!(a.iter().zip(&b).all(|(x, y)| x.payload == y.payload));
        let distinct: std::collections::HashSet<_> = a.iter().map(|m| &m.payload).collect();
        assert_eq!(distinct.len(), 1000);
        for (i, m) in a.iter().enumerate() {
            assert_eq!(seq_of(&m.payload), Some(i as u64));
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            for f in ["Temperature", "Humidity", "Light", "CO2", "HumidityRatio"] {
                assert!(v[f].is_number(), "{f} in {v}");
            }
            assert!(rumqttc::matches(&m.topic, FILTER));
        }
    }

    #[test]
    fn progress_rate_leaves_out_the_first_observation() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        p.observe(t0, 0, 1000);
        p.observe(t0 + Duration::from_millis(100), 200, 1000);
        p.observe(t0 + Duration::from_millis(500), 1000, 1000);
        let c = p.consumption(1000, "ok".into());
        assert_eq!(c.consumed_first, 200);
        let rate = c.msg_s.unwrap();
        assert!((rate - 2000.0).abs() < 1e-6, "{rate}");
    }
}
