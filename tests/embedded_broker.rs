//! Issue 12: the embedded broker (rumqttd behind edgeloop's proxy,
//! `src/ingest/broker.rs`) and what it acknowledged.
//!
//! In process, with a stand-in for the daemon (a rumqttc client with the
//! daemon's client id that "commits" a message by recording it, then
//! acknowledges it):
//! 1. publishers are held until the daemon has subscribed;
//! 2. `stop_accepting_publishes` cuts publishers, and `wait_drained`
//!    returns once the daemon has acknowledged every message a publisher
//!    had acknowledged;
//! 3. publishers are never more than `PUBLISH_WINDOW` deliveries ahead of
//!    the daemon's acknowledgements;
//! 4. the proxy's cost in throughput (printed; `--nocapture`).
//!
//! The daemon binary as a process, killed or stopped three times during a
//! load and restarted at once, each message numbered (its `Date` is
//! [`BASE_S`] plus its number in seconds, so a stored sample names its
//! message), publishers counting a message only once its PubAck arrived:
//! 5. SIGKILL at 1,000 msg/s for 12 s, and 6. SIGKILL with 32 publishers at
//!    full speed (the daemon a window behind): per kill, the acknowledged
//!    messages missing from the store are within `crash_loss_bound()`;
//! 7. SIGTERM at 1,000 msg/s: none is missing.
//!
//! 5-7 need the daemon to start the broker with `EmbeddedBroker::start` and
//! drain it at shutdown (`drain_for_shutdown`, see `src/ingest/broker.rs`).
//!
//! Each test holds [`SERIAL`] and finishes within a minute.

// Each test takes SERIAL and holds it across its awaits: every test has its
// own runtime, and the lock only keeps the tests from sharing the 2 cores.
#![allow(clippy::await_holding_lock)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use edgeloop::ingest::broker::{self, EmbeddedBroker, PUBLISH_WINDOW};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

/// `Date` of message 0: 2030-01-01 00:00:00 UTC.
const BASE_S: i64 = SEQ_BASE_S;
const FILTERS: [&str; 2] = ["sensors/+/occupancy", "labels/+/occupancy"];

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn payload(seq: u64) -> Vec<u8> {
    seq_payload(seq)
}

fn seq_of_payload(p: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(p).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

fn seq_of_timestamp(ms: i64) -> Option<u64> {
    let off = ms - BASE_S * 1000;
    (off >= 0 && off % 1000 == 0).then_some((off / 1000) as u64)
}

async fn start_broker(daemon_id: &str) -> (EmbeddedBroker, u16) {
    init_logs();
    let port = free_port();
    let id = daemon_id.to_string();
    let b = tokio::task::spawn_blocking(move || {
        EmbeddedBroker::start(SocketAddr::from(([127, 0, 0, 1], port)), 1 << 20, &id)
    })
    .await
    .unwrap()
    .unwrap();
    (b, port)
}

// ---------------------------------------------------------------------------
// The stand-in daemon.

/// What the stand-in daemon did.
#[derive(Default)]
struct Received {
    /// Seqs "committed" (recorded before their acknowledgement).
    committed: HashSet<u64>,
    subscribed: bool,
    connected: bool,
}

struct FakeDaemon {
    state: Arc<Mutex<Received>>,
    /// While set, received messages are held unacknowledged.
    hold: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FakeDaemon {
    /// Connects as `id` (persistent session, manual acks, through the
    /// broker's proxy) and subscribes to [`FILTERS`]; acknowledges each
    /// message after recording it, `ack_delay` after a batch arrives (a
    /// commit's duration).
    fn start(port: u16, id: &str, ack_delay: Duration) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(100)
            .set_max_packet_size(2 << 20, 2 << 20);
        // The daemon's login: the proxy admits the daemon's client id only
        // with it (this test process's secret, as the daemon's would be).
        daemon_login(&mut opts);
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let state = Arc::new(Mutex::new(Received::default()));
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<rumqttc::Publish>();
        // The "writer": batches what arrived, waits a commit, records,
        // acknowledges in order.
        let writer = tokio::spawn({
            let (state, hold, client) = (state.clone(), hold.clone(), client.clone());
            async move {
                while let Some(first) = rx.recv().await {
                    let mut batch = vec![first];
                    while let Ok(p) = rx.try_recv() {
                        batch.push(p);
                    }
                    while hold.load(std::sync::atomic::Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    tokio::time::sleep(ack_delay).await;
                    {
                        let mut s = state.lock().unwrap();
                        for p in &batch {
                            s.committed.insert(seq_of_payload(&p.payload));
                        }
                    }
                    for p in &batch {
                        let _ = client.ack(p).await;
                    }
                }
            }
        });
        let task = tokio::spawn({
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                let _writer = writer;
                loop {
                    let ev = tokio::select! {
                        ev = eventloop.poll() => ev,
                        _ = stop.cancelled() => break,
                    };
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            state.lock().unwrap().connected = true;
                            if !ack.session_present {
                                let c = client.clone();
                                tokio::spawn(async move {
                                    let filters = FILTERS.map(|f| {
                                        rumqttc::SubscribeFilter::new(f.into(), QoS::AtLeastOnce)
                                    });
                                    let _ = c.subscribe_many(filters).await;
                                });
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            state.lock().unwrap().subscribed = true;
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let _ = tx.send(p);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            state.lock().unwrap().connected = false;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(300), eventloop.poll()).await;
            }
        });
        Self {
            state,
            hold,
            stop,
            task,
        }
    }

    fn committed(&self) -> HashSet<u64> {
        self.state.lock().unwrap().committed.clone()
    }

    async fn wait_subscribed(&self) {
        wait_until(Duration::from_secs(10), "the daemon's SUBACK", || {
            self.state.lock().unwrap().subscribed
        })
        .await;
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------------------
// Publishers.

/// `connections` publishers sharing `seqs` round-robin (message `s` not
/// before `s * pace` from now): [`common::spawn_paced_publishers`].
fn spawn_publisher(
    port: u16,
    seqs: std::ops::Range<u64>,
    connections: usize,
    pace: Duration,
    limit: Duration,
) -> (
    tokio::task::JoinHandle<Published>,
    Arc<Mutex<Published>>,
    CancellationToken,
) {
    common::spawn_paced_publishers(port, seqs, connections, pace, limit, payload)
}

// ---------------------------------------------------------------------------
// 1-4: the broker in process.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_are_held_until_the_daemon_subscribes() {
    let _serial = serial();
    let daemon_id = client_id("dmn");
    let (broker, port) = start_broker(&daemon_id).await;
    assert!(!broker.is_open());
    let (task, progress, _stop) =
        spawn_publisher(port, 0..200, 1, Duration::ZERO, Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        progress.lock().unwrap().connected_at.is_none(),
        "a publisher got its CONNACK before the daemon subscribed"
    );
    assert_eq!(broker.stats().held, 1, "{:?}", broker.stats());
    let daemon = FakeDaemon::start(port, &daemon_id, Duration::ZERO);
    daemon.wait_subscribed().await;
    let p = task.await.unwrap();
    assert_eq!(p.acked.len(), 200, "{p:?}");
    assert!(broker.is_open());
    wait_until(Duration::from_secs(5), "every message committed", || {
        daemon.committed().len() == 200
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_accepting_cuts_publishers_and_drain_waits_for_the_daemon() {
    let _serial = serial();
    let daemon_id = client_id("dmn");
    let (broker, port) = start_broker(&daemon_id).await;
    // Slow commits: 150 ms each, so the daemon is behind when the cut comes.
    let daemon = FakeDaemon::start(port, &daemon_id, Duration::from_millis(150));
    daemon.wait_subscribed().await;
    let mut publishers = Vec::new();
    for i in 0..3u64 {
        publishers.push(spawn_publisher(
            port,
            i * 100_000..i * 100_000 + 5_000,
            2,
            Duration::from_micros(500),
            Duration::from_secs(20),
        ));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_before: usize = publishers
        .iter()
        .map(|(_, p, _)| p.lock().unwrap().acked.len())
        .sum();
    assert!(
        acked_before > 500,
        "{acked_before} acknowledged before the cut"
    );
    let cut = broker.stop_accepting_publishes().await;
    assert_eq!(cut, 6, "every publisher connection is cut");
    let behind = broker.behind();
    let drain = broker
        .wait_drained(broker::DRAIN_QUIET, Duration::from_secs(10))
        .await;
    assert!(drain.complete, "{drain:?}");
    // Nothing more is acknowledged once the gate is closed.
    let mut acked = HashSet::new();
    for (task, progress, stop) in publishers {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = progress.lock().unwrap().acked.len();
        stop.cancel();
        let p = task.await.unwrap();
        assert_eq!(p.acked.len(), n, "acknowledged after the cut");
        assert!(p.errors > 0, "the publisher saw its connection cut");
        acked.extend(p.acked);
    }
    let committed = daemon.committed();
    let lost: Vec<u64> = acked.difference(&committed).copied().collect();
    eprintln!(
        "cut with the daemon {behind} deliveries behind; drained in {} ms; {} acknowledged, {} committed, {} lost",
        drain.waited.as_millis(),
        acked.len(),
        committed.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged, not committed",
        lost.len()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_stay_within_the_window_of_the_daemons_acknowledgements() {
    let _serial = serial();
    let daemon_id = client_id("dmn");
    let (broker, port) = start_broker(&daemon_id).await;
    let daemon = FakeDaemon::start(port, &daemon_id, Duration::ZERO);
    daemon.wait_subscribed().await;
    daemon
        .hold
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (task, progress, _stop) =
        spawn_publisher(port, 0..5_000, 4, Duration::ZERO, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = progress.lock().unwrap().acked.len() as u64;
    eprintln!(
        "daemon not acknowledging: {acked} of 5000 acknowledged to the publisher, {} behind",
        broker.behind()
    );
    assert!(
        acked <= PUBLISH_WINDOW,
        "{acked} acknowledged while the daemon acknowledged nothing"
    );
    assert!(acked >= PUBLISH_WINDOW / 2, "only {acked} acknowledged");
    assert!(broker.behind() <= PUBLISH_WINDOW);
    assert!(broker.stats().throttled > 0, "{:?}", broker.stats());
    daemon
        .hold
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let p = task.await.unwrap();
    assert_eq!(p.acked.len(), 5_000);
    wait_until(Duration::from_secs(10), "every message committed", || {
        daemon.committed().len() == 5_000
    })
    .await;
    daemon.stop().await;
}

/// Publishes one QoS 1 message of `payload` on `sensors/p/occupancy` from
/// a connection of its own; whether the broker acknowledged it within 60 s.
async fn publish_one(port: u16, payload: Vec<u8>) -> bool {
    let mut opts = MqttOptions::new(client_id("big"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(60))
        .set_max_packet_size(2 << 20, 2 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client
        .publish("sensors/p/occupancy", QoS::AtLeastOnce, false, payload)
        .await
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => return true,
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(_)) => return false,
        }
    }
    false
}

/// 32 publishers send a message of about 1 MB each at once while the
/// daemon commits nothing: the broker (payloads up to 1 MiB: a byte window
/// of 8 MiB, 8,388,608 bytes) forwards 8 of them (8 × 1,000,042 bytes; a
/// 9th would pass the window), the proxy reads the others' packets only
/// within its reading budget of the same 8 MiB (they wait in their
/// publishers' connections, not in its buffers); once the daemon commits,
/// all 32 arrive, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_publishes_are_read_and_forwarded_within_the_byte_window() {
    const N: u64 = 32;
    let _serial = serial();
    let daemon_id = client_id("dmn");
    let (broker, port) = start_broker(&daemon_id).await;
    let daemon = FakeDaemon::start(port, &daemon_id, Duration::ZERO);
    daemon.wait_subscribed().await;
    daemon
        .hold
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let window = broker.stats().window_bytes;
    assert_eq!(window, 8 << 20);
    let payload = |seq: u64| {
        serde_json::to_vec(&serde_json::json!({"seq": seq, "pad": "x".repeat(1_000_000)})).unwrap()
    };
    let size = (4 + "sensors/p/occupancy".len() + payload(10).len()) as u64;
    assert_eq!(size, 1_000_042);
    let fit = window / size;
    assert_eq!(fit, 8);
    let publishers: Vec<_> = (10..10 + N)
        .map(|s| tokio::spawn(publish_one(port, payload(s))))
        .collect();
    wait_until(
        Duration::from_secs(30),
        "the window's worth forwarded",
        || broker.behind() >= fit,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = broker.stats();
    eprintln!("daemon holding: {held:?}");
    assert_eq!(held.behind, fit, "{held:?}");
    assert_eq!(held.behind_bytes, fit * size);
    assert!(held.reading_peak_bytes > 0, "{held:?}");
    assert!(held.reading_peak_bytes <= window, "{held:?}");
    daemon
        .hold
        .store(false, std::sync::atomic::Ordering::Relaxed);
    for p in publishers {
        assert!(p.await.unwrap(), "a publish not acknowledged");
    }
    wait_until(Duration::from_secs(30), "every message committed", || {
        daemon.committed().len() == N as usize
    })
    .await;
    let done = broker.stats();
    assert!(done.peak_behind_bytes <= window, "{done:?}");
    assert!(done.reading_peak_bytes <= window, "{done:?}");
    assert!(done.relay_peak_bytes <= done.peak_behind_bytes + 5 * done.relay_peak as u64);
    daemon.stop().await;
}

/// Another subscriber of the embedded broker (an app with a persistent
/// session) is offline while 60,000 QoS 1 messages of about 230 bytes as
/// rumqttd sizes them (4 + topic + payload; 13.9 MB in all) are published
/// on its topic: it gets every one when it comes back. rumqttd keeps them
/// only in its log of that filter and drops the oldest segment beyond
/// `RUMQTTD_SEGMENTS`: with 3 segments of half the byte window (4 MiB each
/// here) the app got 41,794, the oldest 18,206 dropped (and the bench's
/// embedded backlog row stalled at 72,423 of 100,000); 8 keep at least
/// 28 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_subscribers_backlog_of_60000_is_kept_whole() {
    const N: u64 = 60_000;
    const TOPIC: &str = "apps/backlog";
    let _serial = serial();
    let daemon_id = client_id("dmn");
    let (_broker, port) = start_broker(&daemon_id).await;
    let daemon = FakeDaemon::start(port, &daemon_id, Duration::ZERO);
    daemon.wait_subscribed().await;
    let app_id = client_id("app");
    let app_opts = || {
        let mut o = MqttOptions::new(app_id.clone(), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_inflight(100);
        o
    };
    // The app's session: subscribed, then offline.
    {
        let (client, mut eventloop) = AsyncClient::new(app_opts(), 10);
        client.subscribe(TOPIC, QoS::AtLeastOnce).await.unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("no SUBACK: {other:?}"),
            }
        }
        client.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    }
    // The publisher: every message acknowledged by the broker.
    let mut opts = MqttOptions::new(client_id("pub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(opts, 1_000);
    let sender = tokio::spawn(async move {
        for s in 0..N {
            let payload = format!("{{\"seq\": {s}, \"pad\": \"{}\"}}", "x".repeat(190));
            client
                .publish(TOPIC, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0u64;
    while acked < N {
        match tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("{acked} of {N} acknowledged: {other:?}"),
        }
    }
    let _client = sender.await.unwrap();
    // The app comes back to its session.
    let (_app, mut eventloop) = AsyncClient::new(app_opts(), 10);
    let mut got = HashSet::new();
    let until = Instant::now() + Duration::from_secs(60);
    while (got.len() as u64) < N && Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                got.insert(seq_of_payload(&p.payload));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("the app's connection: {e}"),
            Err(_) => break,
        }
    }
    let lowest = got.iter().min().copied();
    assert_eq!(
        got.len() as u64,
        N,
        "the app got {} of {N} (lowest seq {lowest:?})",
        got.len()
    );
    daemon.stop().await;
}

/// A client with the daemon's id and login that records what it receives
/// and acknowledges nothing until told to.
struct Holder {
    /// (seq, packet id, DUP) of each publish received, in order.
    got: Arc<Mutex<Vec<(u64, u16, bool)>>>,
    session_present: Arc<Mutex<Option<bool>>>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Holder {
    fn start(port: u16, id: &str) -> Self {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(false)
            .set_manual_acks(true);
        daemon_login(&mut opts);
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let got = Arc::new(Mutex::new(Vec::new()));
        let session_present = Arc::new(Mutex::new(None));
        let task = tokio::spawn({
            let (got, session, client) = (got.clone(), session_present.clone(), client.clone());
            async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            *session.lock().unwrap() = Some(ack.session_present);
                            if !ack.session_present {
                                let _ = client.try_subscribe(FILTERS[0], QoS::AtLeastOnce);
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            got.lock()
                                .unwrap()
                                .push((seq_of_payload(&p.payload), p.pkid, p.dup));
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }
        });
        Self {
            got,
            session_present,
            client,
            task,
        }
    }

    fn got(&self) -> Vec<(u64, u16, bool)> {
        self.got.lock().unwrap().clone()
    }
}

/// rumqttd sends a subscriber at most 100 unacknowledged QoS 1 messages;
/// the proxy relays more to the daemon (acknowledging rumqttd itself), and
/// sends the daemon what it had not acknowledged again when it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_is_sent_more_than_rumqttds_window_and_gets_it_again_after_a_reconnect() {
    let _serial = serial();
    let daemon_id = client_id("dmn");
    let (broker, port) = start_broker(&daemon_id).await;
    let n = 600u64;
    let first = Holder::start(port, &daemon_id);
    wait_until(Duration::from_secs(10), "the gate to open", || {
        broker.is_open()
    })
    .await;
    let (task, _progress, _stop) =
        spawn_publisher(port, 0..n, 4, Duration::ZERO, Duration::from_secs(20));
    assert_eq!(task.await.unwrap().acked.len() as u64, n);
    wait_until(
        Duration::from_secs(10),
        "every message at the daemon",
        || first.got().len() as u64 >= n,
    )
    .await;
    let got = first.got();
    // Each once, none acknowledged, under distinct packet ids.
    assert_eq!(got.len() as u64, n, "{:?}", &got[n as usize..]);
    let seqs: HashSet<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs.len() as u64, n);
    let pkids: HashSet<u16> = got.iter().map(|g| g.1).collect();
    assert_eq!(pkids.len() as u64, n, "a packet id reused while held");
    assert!(got.iter().all(|g| !g.2), "DUP on a first delivery");
    // Gone without acknowledging anything; back with its session.
    first.task.abort();
    let _ = first.task.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Holder::start(port, &daemon_id);
    wait_until(Duration::from_secs(10), "everything sent again", || {
        second.got().len() as u64 >= n
    })
    .await;
    assert_eq!(*second.session_present.lock().unwrap(), Some(true));
    let again = second.got();
    let seqs: HashSet<u64> = again.iter().map(|g| g.0).collect();
    assert_eq!(seqs.len() as u64, n, "every message sent again, once");
    assert!(again.iter().all(|g| g.2), "sent again without DUP");
    // Acknowledged in order: nothing more comes, and the broker drains.
    for (_, pkid, _) in &again {
        second
            .client
            .ack(&rumqttc::Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: String::new(),
                pkid: *pkid,
                payload: Default::default(),
            })
            .await
            .unwrap();
    }
    broker.stop_accepting_publishes().await;
    let drain = broker
        .wait_drained(broker::DRAIN_QUIET, Duration::from_secs(10))
        .await;
    assert!(drain.complete, "{drain:?}");
    assert_eq!(
        second.got().len(),
        again.len(),
        "delivered again after the acks"
    );
    second.task.abort();
}

fn daemon_login(opts: &mut MqttOptions) {
    opts.set_credentials(
        edgeloop::ingest::mqtt_config::EMBEDDED_DAEMON_USER,
        edgeloop::ingest::mqtt_config::embedded_daemon_secret(),
    );
}

/// Messages per second of `n` QoS 1 publishes (one connection, 100 in
/// flight) on `port`, all received by a subscriber on `sub_port`; with the
/// daemon's login (rumqttd's own port admits nothing else).
async fn rate(port: u16, sub_port: u16, n: u64) -> f64 {
    let mut sub = MqttOptions::new(client_id("sub"), "127.0.0.1", sub_port);
    sub.set_keep_alive(Duration::from_secs(30));
    daemon_login(&mut sub);
    let (mut rx, stop) = subscribe_with(sub, "bench/#").await;
    let mut opts = MqttOptions::new(client_id("bench"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_inflight(100);
    daemon_login(&mut opts);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let t = Instant::now();
    tokio::spawn(async move {
        for i in 0..n {
            let body =
                serde_json::to_vec(&serde_json::json!({ "i": i, "pad": "x".repeat(100) })).unwrap();
            if client
                .publish("bench/x", QoS::AtLeastOnce, false, body)
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (mut acked, mut received) = (0, 0);
    while acked < n || received < n {
        tokio::select! {
            ev = eventloop.poll() => if let Event::Incoming(Packet::PubAck(_)) = ev.unwrap() {
                acked += 1;
            },
            m = rx.recv() => { m.unwrap(); received += 1; }
        }
    }
    stop.cancel();
    n as f64 / t.elapsed().as_secs_f64()
}

/// The proxy's cost: the same load straight to rumqttd's port and through
/// the proxy (gate open, no daemon; the bench topic is not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_throughput_against_rumqttd_directly() {
    let _serial = serial();
    let (broker, port) = start_broker("").await;
    broker.open();
    let internal = broker.rumqttd_addr().port();
    let n = 20_000;
    // Warm-up, then alternate.
    rate(internal, internal, 2_000).await;
    let mut direct = Vec::new();
    let mut proxied = Vec::new();
    for _ in 0..3 {
        direct.push(rate(internal, internal, n).await);
        proxied.push(rate(port, port, n).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, p) = (median(&mut direct), median(&mut proxied));
    eprintln!(
        "QoS 1, 1 publisher + 1 subscriber, {n} messages: rumqttd directly {d:.0} msg/s, through the proxy {p:.0} msg/s ({:.0} %)",
        100.0 * p / d
    );
    assert!(p > 1_000.0, "the proxy carries {p:.0} msg/s");
}

// ---------------------------------------------------------------------------
// 5-6: the daemon binary, killed and restarted during a paced publish.

/// The daemon process on the embedded broker (`broker_port`), HTTP on a
/// free port, stderr to a file.
fn proc(dir: &Path, broker_port: u16) -> LoggedDaemon {
    let http_port = free_port();
    LoggedDaemon::new(
        dir,
        http_port,
        format!(
            "[store]\npath = '{}'\n[mqtt]\nbroker = 'embedded'\nembedded_listen = '127.0.0.1:{broker_port}'\n\
             client_id = '{}'\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n\
             [http]\nlisten = '127.0.0.1:{http_port}'\n\
             [daemon]\nshutdown_timeout_s = 8\n",
            dir.join("edgeloop.redb").display(),
            client_id("ebk"),
        ),
    )
}

/// Samples the daemon's first pipeline holds (`/v1/pipelines`).
async fn stored(daemon: &LoggedDaemon) -> Option<u64> {
    daemon.get("/v1/pipelines").await?["pipelines"][0]["samples"].as_u64()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Kill,
    Term,
}

/// A publishing load: `n` messages over `connections` (one in flight
/// each), message `s` not before `s * pace` (zero: full speed), the daemon
/// stopped at each of `stops_at` (seconds after the first publish).
struct Load {
    n: u64,
    connections: usize,
    pace: Duration,
    stops_at: [f64; 3],
}

/// 1,000 msg/s for 12 s.
const PACED: Load = Load {
    n: 12_000,
    connections: 4,
    pace: Duration::from_millis(1),
    stops_at: [2.5, 5.5, 8.5],
};

/// Runs the daemon, publishes `load` and stops the daemon with `how` at
/// each of its moments, restarting it at once; once every message is
/// acknowledged and the store holds still, stops it with SIGTERM. Asserts
/// nothing is stored twice. Returns, per stop, the acknowledged messages
/// missing from the store that had been acknowledged since the previous
/// stop (a message lost at a stop was acknowledged before it), then those
/// acknowledged after the last one.
async fn run_with_restarts(how: Stop, load: Load) -> Vec<Vec<u64>> {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut daemon = proc(dir.path(), port);
    daemon.spawn();
    daemon
        .wait_healthy(Instant::now(), Duration::from_secs(20))
        .await;
    let (task, progress, _stop) = spawn_publisher(
        port,
        0..load.n,
        load.connections,
        load.pace,
        Duration::from_secs(40),
    );
    let start = Instant::now();
    let mut marks = Vec::new();
    for at in load.stops_at {
        tokio::time::sleep_until((start + Duration::from_secs_f64(at)).into()).await;
        match how {
            Stop::Kill => daemon.kill(),
            Stop::Term => {
                let (status, took) = daemon.terminate();
                assert!(
                    status.success(),
                    "SIGTERM exits 0: {status:?}; log:\n{}",
                    daemon.log_text()
                );
                assert!(took < Duration::from_secs(8), "SIGTERM took {took:?}");
            }
        }
        // PubAcks the stopped process wrote reach the publishers (loopback)
        // within this; the restarted daemon acknowledges nothing before it
        // has subscribed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let acked = progress.lock().unwrap().acked.len();
        marks.push(acked);
        eprintln!(
            "[{how:?}] at {:.1} s: stopped with {acked} acknowledged",
            start.elapsed().as_secs_f64()
        );
        daemon.spawn();
    }
    let p = task.await.unwrap();
    eprintln!(
        "[{how:?}] published {} in {:.1} s: {} acknowledged, {} connection errors",
        load.n,
        start.elapsed().as_secs_f64(),
        p.acked.len(),
        p.errors
    );
    assert_eq!(
        p.acked.len() as u64,
        load.n,
        "every message acknowledged in time"
    );
    // The store holds still for a second.
    let mut last = (None, Instant::now());
    while last.1.elapsed() < Duration::from_secs(1) {
        let now = stored(&daemon).await;
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(55),
            "store never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let log = daemon.log_text();
    assert_eq!(
        log.matches("crash_loss_bound=").count() as u32,
        daemon.starts,
        "each start logs the crash bound; log:\n{log}"
    );
    // Each commit records redb's allocator state (quick repair), so a start
    // after a SIGKILL does not read and checksum the whole store first.
    assert!(
        !log.contains("redb is repairing it"),
        "a restart ran redb's full repair; log:\n{log}"
    );
    let store = edgeloop::store::Store::open(&dir.path().join("edgeloop.redb")).unwrap();
    let samples = store.scan("occupancy", 0..u64::MAX, usize::MAX).unwrap();
    let mut times = vec![0u32; load.n as usize];
    for (_, s) in &samples {
        let q = seq_of_timestamp(s.sample.timestamp_ms).expect("a sample of this test");
        times[q as usize] += 1;
    }
    let dups = times.iter().filter(|&&t| t > 1).count();
    assert_eq!(dups, 0, "messages stored more than once");
    marks.push(p.acked.len());
    let mut lost = Vec::new();
    let mut from = 0;
    for to in marks {
        lost.push(
            p.acked[from..to]
                .iter()
                .copied()
                .filter(|&q| times[q as usize] == 0)
                .collect::<Vec<u64>>(),
        );
        from = to;
    }
    eprintln!(
        "[{how:?}] {} acknowledged, {} stored; acknowledged but not stored, per stop and after: {:?}; {:.1} s in all",
        p.acked.len(),
        samples.len(),
        lost.iter().map(Vec::len).collect::<Vec<_>>(),
        t0.elapsed().as_secs_f64()
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    lost
}

fn assert_within_bound(lost: &[Vec<u64>]) {
    let bound = broker::crash_loss_bound() as usize;
    for (k, l) in lost[..3].iter().enumerate() {
        assert!(
            l.len() <= bound,
            "kill {}: {} acknowledged messages lost; the bound is {bound}",
            k + 1,
            l.len()
        );
    }
    assert!(
        lost[3].is_empty(),
        "{} lost after the last kill (SIGTERM at the end), e.g. {:?}",
        lost[3].len(),
        &lost[3][..lost[3].len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_loses_at_most_the_crash_bound_each() {
    let _serial = serial();
    assert_within_bound(&run_with_restarts(Stop::Kill, PACED).await);
}

/// Publishers faster than the daemon: it is a window behind when killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_full_speed_loses_at_most_the_crash_bound_each() {
    let _serial = serial();
    let lost = run_with_restarts(
        Stop::Kill,
        Load {
            n: 100_000,
            connections: 32,
            pace: Duration::ZERO,
            stops_at: [1.0, 2.5, 4.0],
        },
    )
    .await;
    assert_within_bound(&lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_three_times_loses_nothing_acknowledged() {
    let _serial = serial();
    let lost = run_with_restarts(Stop::Term, PACED).await;
    let all: Vec<u64> = lost.concat();
    assert!(
        all.is_empty(),
        "{} acknowledged messages lost over 3 SIGTERMs, e.g. {:?}",
        all.len(),
        &all[..all.len().min(10)]
    );
}
