//! Wiring: starts every component on one root [`CancellationToken`] and
//! stops them in order.
//!
//! ```text
//! MqttSource ──Incoming──▶ Writer ──commit──▶ Store ◀── Learner ──promote──▶ Registry
//!     ▲  (ack after commit) │   └─PredictJob─▶ Predictor ──Outgoing──▶ Publisher ──▶ MQTT
//!     └─────────────────────┘                                 HTTP ◀── Registry, Store
//! ```
//!
//! Shutdown: cancelling the root token stops ingest first (the source stops
//! forwarding and drops its sender), the writer commits and acknowledges what
//! it holds, then the source disconnects and HTTP stops last. A component that
//! fails cancels the root token, and [`Running::wait`] returns its error, so
//! the process exits non-zero with the reason. [`Running::wait`] logs the
//! components it still waits for each second and, past the deadline, returns
//! [`DaemonError::ShutdownTimeout`] naming them.
//!
//! systemd (`Type=notify`, <https://www.freedesktop.org/software/systemd/man/sd_notify.html>):
//! `READY=1` once the registry is restored and HTTP is bound, `STOPPING=1`
//! when shutdown starts, `STATUS=` lines on the way, and `WATCHDOG=1` every
//! half `WatchdogSec` while the daemon is healthy (see [`watchdog`]). Without
//! `NOTIFY_SOCKET` (tests, a shell) these are no-ops.
//!
//! SIGHUP: the binary rereads the configuration and applies what
//! [`reload_plan`] allows.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{BrokerTarget, Config, ConfigError};
use crate::health::HealthMonitor;
use crate::http::{self, AppState};
use crate::ingest::link::{LinkSpec, ProtocolChoice};
use crate::ingest::mqtt::{self, Backoff, Connection, MqttSource};
use crate::ingest::writer::{Hooks, Writer};
use crate::metrics::{Metrics, Queue, Sources};
use crate::monitor::retrain::{Learner, LearnerHandle};
use crate::serve::predictions::{Predictor, Publisher};
use crate::serve::registry::Registry;
use crate::stats::Stats;
use crate::store::Store;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error(transparent)]
    Registry(#[from] crate::serve::registry::RegistryError),
    #[error("HTTP: cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("component `{component}` failed: {reason}")]
    Component {
        component: &'static str,
        reason: String,
    },
    #[error(
        "shutdown did not finish within {after:?}: still running: {}",
        pending.join(", ")
    )]
    ShutdownTimeout {
        after: Duration,
        /// Components that had not stopped.
        pending: Vec<&'static str>,
    },
}

/// What tests, the demo and the CLI reach in a running daemon.
#[derive(Clone)]
pub struct DaemonHandle {
    /// Where the HTTP API listens (the bound address when port 0 was asked).
    pub http_addr: SocketAddr,
    /// Where the MQTT client connects.
    pub broker: (String, u16),
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
    pub learner: LearnerHandle,
    pub connection: Arc<Connection>,
    /// The Prometheus metrics served by `GET /metrics`.
    pub metrics: Metrics,
    /// The verdict behind `GET /healthz` and the watchdog.
    pub health: Arc<HealthMonitor>,
    /// Fault injection for tests (a writer that holds its batches).
    pub hooks: Arc<Hooks>,
    /// The series behind the dashboard's plots.
    pub series: crate::monitor::series::SeriesBook,
}

impl DaemonHandle {
    /// Waits until the broker has acknowledged the subscriptions (a message
    /// published before that reaches no subscriber on a broker that did not
    /// keep the daemon's session). False after `limit`.
    pub async fn wait_subscribed(&self, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        while !self.connection.is_subscribed() {
            if tokio::time::Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// A started daemon.
pub struct Running {
    pub handle: DaemonHandle,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    failure: Arc<Mutex<Option<DaemonError>>>,
    alive: Alive,
}

/// Names of the components still running.
type Alive = Arc<Mutex<BTreeSet<&'static str>>>;

fn pending(alive: &Alive) -> Vec<&'static str> {
    alive
        .lock()
        .map(|a| a.iter().copied().collect())
        .unwrap_or_default()
}

impl Running {
    /// Waits until every component has stopped (after the root token is
    /// cancelled, or a component failed). After cancellation, waits at most
    /// `grace`.
    ///
    /// # Errors
    /// The first component failure, or [`DaemonError::ShutdownTimeout`].
    pub async fn wait(self, grace: Duration) -> Result<(), DaemonError> {
        self.wait_with(move || grace).await
    }

    /// As [`Running::wait`], with the deadline read when shutdown starts
    /// (SIGHUP may have changed `daemon.shutdown_timeout_s` meanwhile).
    ///
    /// # Errors
    /// The first component failure, or [`DaemonError::ShutdownTimeout`]
    /// naming the components that had not stopped.
    pub async fn wait_with(self, grace: impl Fn() -> Duration) -> Result<(), DaemonError> {
        self.shutdown.cancelled().await;
        let grace = grace();
        let _ = sd_notify::notify(&[
            NotifyState::Stopping,
            NotifyState::Status("Stopping: ingest first, then draining, then HTTP"),
        ]);
        let deadline = tokio::time::Instant::now() + grace;
        info!(
            deadline_ms = grace.as_millis() as u64,
            waiting_for = ?pending(&self.alive),
            "Waiting for the components to stop."
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = self.tracker.wait() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    let pending = pending(&self.alive);
                    error!(deadline_ms = grace.as_millis() as u64, still_running = ?pending, "Shutdown deadline passed; exiting with what did not finish.");
                    return Err(DaemonError::ShutdownTimeout { after: grace, pending });
                }
                _ = tick.tick() => {
                    let pending = pending(&self.alive);
                    let status = format!("Stopping: waiting for {}", pending.join(", "));
                    let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
                    info!(waiting_for = ?pending, "Still stopping.");
                }
            }
        }
        let failure = self.failure.lock().ok().and_then(|mut f| f.take());
        match failure {
            Some(e) => Err(e),
            None => {
                info!("Stopped cleanly.");
                Ok(())
            }
        }
    }
}

/// How often a step of the start that is still running tells systemd so
/// ([`while_starting`]).
const START_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Awaits `step`, a part of the start before `READY=1` that can take long
/// (opening a store redb must repair after a crash reads the whole file),
/// and every `every` while it runs: extends systemd's start timeout
/// (`TimeoutStartSec=`, 60 s in the packaged unit) by four times `every`
/// from now (`EXTEND_TIMEOUT_USEC`, systemd.service(5); ignored without
/// systemd) with `status(elapsed)` as the unit's status line, through
/// `notify`, and logs that status at info. Without it systemd would kill a
/// daemon whose store takes longer than the timeout to open and start it
/// again on the same file: a repair that never finishes.
async fn while_starting<T>(
    step: impl std::future::Future<Output = T>,
    every: Duration,
    notify: impl Fn(&[NotifyState]),
    status: impl Fn(Duration) -> String,
) -> T {
    let started = tokio::time::Instant::now();
    tokio::pin!(step);
    let mut tick = tokio::time::interval_at(started + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            done = &mut step => return done,
            _ = tick.tick() => {
                let line = status(started.elapsed());
                info!(status = %line, "Still starting.");
                let extend = u32::try_from((4 * every).as_micros()).unwrap_or(u32::MAX);
                notify(&[NotifyState::ExtendTimeoutUsec(extend), NotifyState::Status(&line)]);
            }
        }
    }
}

/// Starts the daemon for `cfg`. Cancelling `shutdown` stops it.
///
/// # Errors
/// [`DaemonError`] when the configuration is invalid (a pipeline with
/// `engine = "ort"` whose onnxruntime library does not load included:
/// [`Config::check_engines`]), the store cannot be opened, the embedded
/// broker or the HTTP listener cannot start.
pub async fn start(cfg: Config, shutdown: CancellationToken) -> Result<Running, DaemonError> {
    cfg.validate()?;
    cfg.check_store_dir()?;
    cfg.check_engines()?;
    let stats = Arc::new(Stats::default());
    let store_path = cfg.store.path.clone();
    // redb's full repair of a store that needs one reports 0.0, 0.6, 0.9
    // (`Store::open_observed`); the start's status line says where it is.
    let repair = Arc::new(std::sync::atomic::AtomicU64::new(f64::NAN.to_bits()));
    let observe = {
        let repair = repair.clone();
        Arc::new(move |p: f64| repair.store(p.to_bits(), std::sync::atomic::Ordering::Relaxed))
    };
    let opening = tokio::task::spawn_blocking(move || Store::open_observed(&store_path, observe));
    let store = Arc::new(
        while_starting(
            opening,
            START_PROGRESS_EVERY,
            |s| {
                let _ = sd_notify::notify(s);
            },
            |elapsed| {
                let p = f64::from_bits(repair.load(std::sync::atomic::Ordering::Relaxed));
                if p.is_nan() {
                    format!("Opening the store ({} s)", elapsed.as_secs())
                } else {
                    format!(
                        "Opening the store: redb is repairing it after an unclean shutdown, {:.0} % ({} s)",
                        p * 100.0,
                        elapsed.as_secs()
                    )
                }
            },
        )
        .await
        .map_err(|e| DaemonError::Component {
            component: "store",
            reason: e.to_string(),
        })??,
    );
    store.set_min_free_bytes(cfg.store.min_free_bytes);
    // A commit reading a pipeline's dedup index is progress, not a stall.
    store.set_progress({
        let stats = stats.clone();
        Arc::new(move || {
            stats
                .store_progress_ms
                .store(crate::stats::now_ms(), std::sync::atomic::Ordering::Relaxed)
        })
    });
    // Categorical features: each pipeline's book of category codes, shared
    // by its decoder (which gives new strings their codes) and its
    // training (which reads them back as strings). Runtime state the
    // stages share through their sections.
    let mut cfg = cfg;
    // The rows the temporal warm-up formed, for the anomaly scorers' own
    // (`warm_anomaly`): one read of the store for both.
    let mut temporal_rows = std::collections::HashMap::new();
    for p in &mut cfg.pipelines {
        if !p.preprocess.categorical.is_empty() {
            let book = crate::ingest::categories::CategoryBook::open(
                store.clone(),
                &p.name,
                &p.preprocess.categorical,
            )?;
            p.preprocess.categories = Some(Arc::new(book));
        }
        // `[pipelines.temporal]`: each device's recent readings and last
        // label, for the predictor and HTTP predict; warmed with the newest
        // stored readings and each recent device's own past before them
        // (`temporal_warm`), so that a restart does not start without one.
        if p.temporal.is_enabled() {
            let (state, rows) = warm_temporal(&store, p)?;
            p.temporal.state = Some(Arc::new(state));
            temporal_rows.insert(p.name.clone(), rows);
        }
        // `impute = "last"`: each device's last readings fill its next
        // missing ones before the graph (predictor, HTTP rows with a device).
        if p.preprocess.impute == crate::features::preprocess::ImputeStrategy::Last
            && !p.windows.enabled
        {
            let skip = (0..p.features.len())
                .filter(|&j| p.preprocess.categorical.contains(&p.features[j]))
                .collect();
            p.preprocess.carry_forward = Some(Arc::new(
                crate::features::preprocess::CarryForward::new(skip),
            ));
        }
    }
    let registry = Arc::new(
        cfg.pipelines.iter().enumerate().fold(
            Registry::new(cfg.pipelines.iter().map(|p| p.name.as_str()))
                .with_keep_versions(cfg.models.keep_versions)
                .with_keep_cards(cfg.models.keep_cards),
            |registry, (i, p)| {
                let (engine, options) = cfg.engine_of(i);
                let contract = crate::onnx::engine::Contract {
                    task: p.task,
                    classes: p.classes.clone(),
                    features: p.model_features(),
                };
                registry
                    .with_engine(&p.name, engine, options)
                    .with_contract(&p.name, contract)
            },
        ),
    );
    {
        let (registry, store) = (registry.clone(), store.clone());
        tokio::task::spawn_blocking(move || registry.restore(&store))
            .await
            .map_err(|e| DaemonError::Component {
                component: "registry",
                reason: e.to_string(),
            })??;
    }
    // HTTP's port first: the embedded broker takes an ephemeral loopback
    // port for rumqttd, which could be the configured HTTP port when that
    // one is in the ephemeral range (tests pick free ports there).
    let listener = http::serve::bind(cfg.http.listen).map_err(|e| DaemonError::Listen {
        addr: cfg.http.listen,
        reason: e.to_string(),
    })?;
    let http_addr = listener.local_addr().map_err(|e| DaemonError::Listen {
        addr: cfg.http.listen,
        reason: e.to_string(),
    })?;

    let (host, port, embedded) = match cfg.mqtt.target()? {
        BrokerTarget::External { host, port, .. } => (host, port, None),
        BrokerTarget::Embedded(addr) => {
            let (broker, daemon_addr) = start_embedded(addr, &cfg.mqtt).await?;
            (
                daemon_addr.ip().to_string(),
                daemon_addr.port(),
                Some(broker),
            )
        }
    };
    let choice = Arc::new(ProtocolChoice::new(
        cfg.mqtt.protocol_for(&cfg.mqtt.target()?),
    ));
    let receive_maximum = mqtt::receive_maximum(cfg.store.batch_size);
    // The request channel carries only subscriptions and the disconnect:
    // the source writes the acknowledgements itself, over either protocol.
    let spec = LinkSpec {
        cfg: cfg.mqtt.clone(),
        client_id: cfg.mqtt.client_id.clone(),
        host: host.clone(),
        port,
        manual_acks: true,
        receive_maximum: Some(receive_maximum),
        requests: 64,
    };
    let link = spec.open(choice.current())?;
    let connection = Arc::new(Connection::default());
    let (incoming_tx, incoming_rx) = mpsc::channel(INGEST_QUEUE);
    let (acks_tx, acks_rx) = mpsc::unbounded_channel();
    let hooks = Arc::new(Hooks::default());
    let health = Arc::new(HealthMonitor::new(
        stats.clone(),
        connection.clone(),
        Duration::from_secs(cfg.daemon.stall_timeout_s),
        Duration::from_secs(cfg.mqtt.keep_alive_s),
    ));
    let (predict_tx, predict_rx) = mpsc::channel(256);
    let (outbox_tx, outbox_rx) = mpsc::channel(cfg.mqtt.outbox_capacity);
    let ingest_queue = Queue::of("ingest", &incoming_tx);
    let predict_queue = Queue::of("predict", &predict_tx);
    let outbox_queue = Queue::of("outbox", &outbox_tx);
    let labels_added = Arc::new(Notify::new());
    let (late_tx, late_rx) = mpsc::channel(64);
    let drained = CancellationToken::new();
    let tracker = TaskTracker::new();
    let failure: Arc<Mutex<Option<DaemonError>>> = Arc::new(Mutex::new(None));

    let source = MqttSource {
        link,
        spec,
        choice: choice.clone(),
        filters: crate::ingest::mqtt_config::subscriptions(
            cfg.pipelines
                .iter()
                .flat_map(|p| p.topics.iter().chain(&p.label_topics)),
        ),
        tx: Some(incoming_tx),
        acks: acks_rx,
        connection: connection.clone(),
        stats: stats.clone(),
        backoff: Backoff::new(
            Duration::from_millis(cfg.mqtt.reconnect_min_ms),
            Duration::from_millis(cfg.mqtt.reconnect_max_ms),
        ),
        max_waiting: MAX_SOURCE_WAITING,
    };
    let writer = Writer {
        store: store.clone(),
        pipelines: cfg.pipelines.iter().map(|p| p.route()).collect(),
        max_payload_bytes: cfg.mqtt.ingest_max_payload_bytes,
        store_cfg: cfg.store.clone(),
        acks: acks_tx,
        rx: incoming_rx,
        hooks: hooks.clone(),
        stats: stats.clone(),
        labels_added: labels_added.clone(),
        late_tx,
        predict_tx,
    };
    let recent_predictions = crate::serve::predictions::RecentPredictions::default();
    let anomaly_scorers = crate::serve::predictions::AnomalyScorers::new(
        &cfg.pipelines
            .iter()
            .map(|p| p.settings())
            .collect::<Vec<_>>(),
    );
    warm_anomaly(&store, &cfg, &anomaly_scorers, temporal_rows)?;
    let predictor = Predictor {
        registry: registry.clone(),
        pipelines: cfg.pipelines.iter().map(|p| p.settings()).collect(),
        rx: predict_rx,
        outbox: outbox_tx,
        stats: stats.clone(),
        recent: recent_predictions.clone(),
        anomaly: anomaly_scorers.clone(),
        windows: warm_windows(&store, &cfg)?,
    };
    let out_spec = LinkSpec {
        cfg: cfg.mqtt.clone(),
        client_id: format!("{}-out", cfg.mqtt.client_id),
        host: host.clone(),
        port,
        manual_acks: false,
        receive_maximum: None,
        requests: 1000,
    };
    let publisher = Publisher {
        link: out_spec.open(choice.current())?,
        spec: out_spec,
        choice: choice.clone(),
        rx: outbox_rx,
        stats: stats.clone(),
        backoff: Backoff::new(
            Duration::from_millis(cfg.mqtt.reconnect_min_ms),
            Duration::from_millis(cfg.mqtt.reconnect_max_ms),
        ),
    };
    let (learner, learner_handle) = Learner::new(
        store.clone(),
        registry.clone(),
        cfg.pipelines.iter().map(|p| p.monitored()).collect(),
        labels_added,
        late_rx,
        stats.clone(),
    );
    let series = {
        let (store, names) = (
            store.clone(),
            cfg.pipelines
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>(),
        );
        tokio::task::spawn_blocking(move || {
            crate::monitor::series::SeriesBook::restore(&store, names.iter().map(String::as_str))
        })
        .await
        .map_err(|e| DaemonError::Component {
            component: "series",
            reason: e.to_string(),
        })?
        .map_err(|e| DaemonError::Component {
            component: "series",
            reason: e.to_string(),
        })?
    };
    let learner = learner
        .with_series(series.clone())
        .with_anomaly(anomaly_scorers.clone());
    // `[fleet]`: the learner judges what the fleet connection receives.
    let (offers_tx, offers_rx) = tokio::sync::mpsc::channel(4);
    let learner = if cfg.fleet.adopt {
        learner.with_fleet(crate::monitor::retrain::FleetIntake {
            offers: offers_rx,
            options: cfg.engine_of(0).1,
            max_model_bytes: cfg.models.max_bytes,
            waiting: Default::default(),
        })
    } else {
        learner
    };
    let fleet = if cfg.fleet.enabled() {
        Some(crate::serve::fleet::FleetLink {
            config: cfg.fleet.clone(),
            instance: if cfg.daemon.instance.is_empty() {
                cfg.mqtt.client_id.clone()
            } else {
                cfg.daemon.instance.clone()
            },
            link: crate::serve::fleet::link_spec(&cfg.mqtt, &host, port).open(choice.current())?,
            spec: crate::serve::fleet::link_spec(&cfg.mqtt, &host, port),
            choice: choice.clone(),
            pipelines: cfg.pipelines.iter().map(|p| p.name.clone()).collect(),
            registry: registry.clone(),
            store: store.clone(),
            stats: stats.clone(),
            offers: offers_tx,
            backoff: Backoff::new(
                Duration::from_millis(cfg.mqtt.reconnect_min_ms),
                Duration::from_millis(cfg.mqtt.reconnect_max_ms),
            ),
        })
    } else {
        None
    };
    let series_handle = series.clone();
    let recorder = crate::monitor::series::Recorder {
        book: series.clone(),
        stats: stats.clone(),
        anomaly: anomaly_scorers.clone(),
        store: store.clone(),
        tick: crate::monitor::series::TICK,
        persist_every: crate::monitor::series::PERSIST_EVERY,
    };
    let drift_board = learner.board();
    let metrics = Metrics::new(Sources {
        stats: stats.clone(),
        store: store.clone(),
        registry: registry.clone(),
        drift: drift_board.clone(),
        pipelines: cfg.pipelines.iter().map(|p| p.name.clone()).collect(),
        queues: vec![ingest_queue, predict_queue, outbox_queue],
        health: health.clone(),
        instance: cfg.daemon.instance.clone(),
    });
    let app = http::router(AppState {
        registry: registry.clone(),
        store: store.clone(),
        pipelines: Arc::new(cfg.pipelines.clone()),
        learner: learner_handle.clone(),
        stats: stats.clone(),
        max_rows: cfg.http.max_rows,
        connection: connection.clone(),
        health: health.clone(),
        drift: drift_board,
        models: cfg.models.clone(),
        load_options: cfg.engine_of(0).1,
        body: http_body_limits(&cfg.http),
        dashboard: http::dashboard::Dashboard {
            series,
            predictions: recent_predictions,
        },
        anomaly: anomaly_scorers,
    })
    .merge(http::metrics_router(metrics.clone()));
    let token = cfg.http.bearer_token()?;
    let app = http::app(
        app,
        http::access::Access::new(token.as_deref(), cfg.http.auth, stats.clone()),
        http_body_limits(&cfg.http),
    );
    let https = cfg.http.tls_server_config()?.map(Arc::new);
    let conn_limits = http::serve::ConnLimits {
        header_timeout: Duration::from_secs(cfg.http.header_timeout_s),
        max_connections: cfg.http.max_connections,
    };
    tracing::info!(
        listen = %http_addr,
        https = https.is_some(),
        token = token.is_some(),
        auth = cfg.http.auth.as_str(),
        "HTTP API: {}.",
        match (&token, cfg.http.auth) {
            (None, _) => "no token: every request is open (loopback only)",
            (Some(_), crate::config::HttpAuth::Writes) =>
                "train, promote, rollback and uploads need the token",
            (Some(_), crate::config::HttpAuth::All) => "every request but /healthz needs the token",
        }
    );

    let alive: Alive = Arc::default();
    let supervise = |name: &'static str| {
        let (shutdown, failure, alive) = (shutdown.clone(), failure.clone(), alive.clone());
        if let Ok(mut a) = alive.lock() {
            a.insert(name);
        }
        move |result: Result<(), String>| {
            if let Ok(mut a) = alive.lock() {
                a.remove(name);
            }
            if let Err(reason) = result {
                error!(component = name, %reason, "Component failed; stopping the daemon.");
                if let Ok(mut f) = failure.lock() {
                    f.get_or_insert(DaemonError::Component {
                        component: name,
                        reason,
                    });
                }
                shutdown.cancel();
            }
        }
    };
    // The source stops forwarding once the embedded broker has handed
    // over everything it acknowledged (at once with an external broker).
    let ingest_stop = CancellationToken::new();
    spawn(&tracker, supervise("broker-drain"), {
        let (shutdown, ingest_stop) = (shutdown.clone(), ingest_stop.clone());
        let limit = Duration::from_secs(cfg.daemon.shutdown_timeout_s) / 2;
        async move {
            shutdown.cancelled().await;
            drain_embedded(embedded, limit).await;
            ingest_stop.cancel();
            Ok(())
        }
    });
    spawn(&tracker, supervise("mqtt-source"), {
        let (ingest_stop, drained) = (ingest_stop.clone(), drained.clone());
        async move {
            source
                .run(ingest_stop, drained)
                .await
                .map_err(|e| e.to_string())
        }
    });
    spawn(&tracker, supervise("writer"), {
        let (drained, ingest_stop) = (drained.clone(), ingest_stop.clone());
        async move {
            // Drains until the source closes its channel; `ingest_stop`
            // (when the source stops forwarding) only abandons a batch the
            // store refuses.
            let r = writer.run(ingest_stop).await.map_err(|e| e.to_string());
            drained.cancel();
            r
        }
    });
    spawn(&tracker, supervise("predictor"), async move {
        predictor.run().await;
        Ok(())
    });
    spawn(&tracker, supervise("publisher"), {
        let shutdown = shutdown.clone();
        async move {
            publisher.run(shutdown).await;
            Ok(())
        }
    });
    spawn(&tracker, supervise("series"), {
        let shutdown = shutdown.clone();
        async move {
            recorder.run(shutdown).await;
            Ok(())
        }
    });
    spawn(&tracker, supervise("learner"), {
        let shutdown = shutdown.clone();
        async move { learner.run(shutdown).await.map_err(|e| e.to_string()) }
    });
    if let Some(fleet) = fleet {
        let shutdown = shutdown.clone();
        spawn(&tracker, supervise("fleet"), async move {
            fleet.run(shutdown).await;
            Ok(())
        });
    }
    if !cfg.models.dir.as_os_str().is_empty() {
        let watcher = crate::serve::intake::ModelsDirWatcher {
            dir: cfg.models.dir.clone(),
            poll: Duration::from_millis(cfg.models.poll_ms),
            max_bytes: cfg.models.max_bytes,
            options: cfg.engine_of(0).1,
            pipelines: cfg.pipelines.iter().map(|p| p.settings()).collect(),
            store: store.clone(),
            stats: stats.clone(),
        };
        let shutdown = shutdown.clone();
        spawn(&tracker, supervise("models-dir"), async move {
            watcher.run(shutdown).await
        });
    }
    spawn(&tracker, supervise("http"), {
        let drained = drained.clone();
        async move {
            http::serve::serve(listener, app, https, conn_limits, drained)
                .await
                .map_err(|e| e.to_string())
        }
    });
    spawn(&tracker, supervise("health"), {
        let (shutdown, health) = (shutdown.clone(), health.clone());
        async move {
            health.run(shutdown).await;
            Ok(())
        }
    });
    if let Some(period) = sd_notify::watchdog_enabled() {
        spawn(&tracker, supervise("watchdog"), {
            let (shutdown, health) = (shutdown.clone(), health.clone());
            async move {
                watchdog(period, &health, shutdown).await;
                Ok(())
            }
        });
    }
    tracker.close();
    info!(%http_addr, broker = %format!("{host}:{port}"), store = %cfg.store.path.display(), pipelines = cfg.pipelines.len(), "edgeloop running.");
    let status = format!(
        "Serving HTTP on {http_addr}; MQTT {host}:{port}; {} pipeline(s)",
        cfg.pipelines.len()
    );
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        warn!(error = %e, "Cannot notify systemd (NOTIFY_SOCKET) that the daemon is ready.");
    }
    Ok(Running {
        handle: DaemonHandle {
            http_addr,
            broker: (host, port),
            store,
            registry,
            stats,
            learner: learner_handle,
            connection,
            metrics,
            health,
            hooks,
            series: series_handle,
        },
        shutdown,
        tracker,
        failure,
        alive,
    })
}

/// Each windowed pipeline's per-device windows (`[pipelines.windows]`),
/// warmed at start device by device: the `max_devices` devices whose
/// newest stored reading is the most recent ([`Store::recent_devices`]),
/// each with its own newest `size` readings ([`Store::newest_of_device`]),
/// labelled or not, pushed in commit order as the predictor pushes them
/// live, the least recent device first (so the windows' eviction order is
/// the stream's). After a restart each of those devices' next reading can
/// complete a window rather than waiting for `size` new ones, a quiet
/// device's as well as a busy one's: the newest readings across devices,
/// which this took before (at most 20,000), could be the busy devices'
/// alone. It reads at most `size × max_devices` readings, what the windows
/// hold once full, and one device's at a time. The window samples the
/// warm-up completes are not predicted again. A device's step phase counts
/// from the first reading warmed, not from its first stored reading. The
/// time index keeps one reading per device and timestamp: each device's
/// readings among the newest `min(size × max_devices,
/// WARM_WINDOW_READINGS)` by seq are added from the store itself, so a busy
/// device whose readings share timestamps still gets its newest `size`.
fn warm_windows(
    store: &Store,
    cfg: &Config,
) -> Result<std::collections::HashMap<String, crate::features::windows::Featurizer>, DaemonError> {
    let mut out = std::collections::HashMap::new();
    for p in cfg.pipelines.iter().filter(|p| p.windows.enabled) {
        let mut f = crate::features::windows::Featurizer::new(&p.windows, p.features.len());
        let size = p.windows.size;
        // The newest readings by seq, by device: the time index keeps one
        // reading per device and timestamp, so readings of one timestamp
        // (a `Date` in seconds at 10 Hz) are found here.
        let want = (size as u64)
            .saturating_mul(p.windows.max_devices as u64)
            .min(WARM_WINDOW_READINGS);
        let next = store.counts(&p.name)?.next_seq;
        let mut newest: std::collections::HashMap<String, Vec<(u64, crate::store::StoredSample)>> =
            std::collections::HashMap::new();
        for (seq, r) in store.scan(&p.name, next.saturating_sub(want)..next, usize::MAX)? {
            newest
                .entry(r.sample.device.clone())
                .or_default()
                .push((seq, r));
        }
        for (device, _) in store.recent_devices(&p.name, p.windows.max_devices)? {
            let mut readings = store.newest_of_device(&p.name, &device, size)?;
            if let Some(more) = newest.remove(&device) {
                readings.extend(more);
                readings.sort_by_key(|(seq, _)| *seq);
                readings.dedup_by_key(|(seq, _)| *seq);
            }
            for (_, r) in &readings[readings.len().saturating_sub(size)..] {
                f.push(&r.sample.device, &r.sample.features);
            }
        }
        out.insert(p.name.clone(), f);
    }
    Ok(out)
}

/// Each scoring pipeline's anomaly scorer (`[pipelines.anomaly]`), warmed
/// at start with the newest [`WARM_READINGS`](crate::features::temporal::WARM_READINGS)
/// stored readings, labelled or not, in commit order, formed as the
/// predictor forms them live (a temporal pipeline's rows as the serving
/// state's warm-up formed them, `temporal_rows` from [`warm_temporal`]; a
/// windowed pipeline's
/// window samples from a featurizer of its own, not the one that serves)
/// and learned without being counted. Without it every restart began the
/// scorer anew: no alarm until its first window and its threshold's
/// calibration were read again (1,250 readings by default), each device's
/// rules empty, and the threshold calibrated on whatever came first after
/// the restart. A pipeline that has stored as many readings or fewer gets
/// the scorer it had before the restart (the same readings in the same
/// order, but for readings the predictor dropped with its queue full and
/// late labels, which a temporal pipeline's last-label features see now);
/// beyond that, one that started that many readings back.
fn warm_anomaly(
    store: &Store,
    cfg: &Config,
    scorers: &crate::serve::predictions::AnomalyScorers,
    mut temporal_rows: std::collections::HashMap<String, Vec<(String, Vec<f32>)>>,
) -> Result<(), DaemonError> {
    for p in cfg.pipelines.iter().filter(|p| p.anomaly.enabled) {
        let readings = match temporal_rows.remove(&p.name) {
            Some(rows) => rows,
            None => {
                let next = store.counts(&p.name)?.next_seq;
                let start = next.saturating_sub(crate::features::temporal::WARM_READINGS);
                store
                    .scan(&p.name, start..next, usize::MAX)?
                    .into_iter()
                    .map(|(_, r)| (r.sample.device, r.sample.features))
                    .collect()
            }
        };
        let rows: Vec<(String, Vec<f32>)> = if p.windows.enabled {
            let mut f = crate::features::windows::Featurizer::new(&p.windows, p.features.len());
            readings
                .into_iter()
                .filter_map(|(device, row)| {
                    let w = f.push(&device, &row)?;
                    Some((device, w.features))
                })
                .collect()
        } else {
            readings
        };
        if rows.is_empty() {
            continue;
        }
        let n = scorers.warm(
            &p.name,
            rows.iter().map(|(d, x)| (d.as_str(), x.as_slice())),
        );
        info!(pipeline = %p.name, readings = n, "Anomaly scorer warmed from the store.");
    }
    Ok(())
}

/// The serving state of a temporal pipeline at start: the stored readings
/// of [`crate::monitor::retrain::temporal_warm`] (the newest 20,000 and the
/// past they lack of the `max_devices` devices heard most recently), after
/// the cleaning rules, advanced in seq order. With `[pipelines.anomaly]`
/// on, also the rows it formed for the newest 20,000, each with its device,
/// in seq order, for [`warm_anomaly`] (empty otherwise; a quiet device's
/// past before them forms rows but is not among them).
#[allow(clippy::type_complexity)]
pub(crate) fn warm_temporal(
    store: &Store,
    p: &crate::config::PipelineConfig,
) -> Result<
    (
        crate::features::temporal::SharedTemporal,
        Vec<(String, Vec<f32>)>,
    ),
    DaemonError,
> {
    let shared =
        crate::features::temporal::SharedTemporal::new(&p.temporal, p.features.len(), &p.classes);
    let next = store.counts(&p.name)?.next_seq;
    let start = next.saturating_sub(crate::features::temporal::WARM_READINGS);
    let mut newest =
        crate::monitor::retrain::temporal_warm(store, &p.name, &p.temporal, &p.classes, next)?;
    let cleaning = p.preprocess.cleaning();
    for (_, r) in &mut newest {
        cleaning.apply(&p.features, &mut r.sample.features);
    }
    let (rows, _) = shared.advance(&newest.iter().map(|(_, r)| &r.sample).collect::<Vec<_>>());
    let rows = if p.anomaly.enabled {
        newest
            .into_iter()
            .zip(rows)
            .filter(|((seq, _), _)| *seq >= start)
            .map(|((_, r), row)| (r.sample.device, row))
            .collect()
    } else {
        Vec::new()
    };
    Ok((shared, rows))
}

/// The newest readings of a windowed pipeline read by seq at start, besides
/// each device's from the time index ([`warm_windows`]).
pub const WARM_WINDOW_READINGS: u64 = 20_000;

/// Spawns `fut` on the tracker; its result (or panic) goes to `on_done`.
fn spawn<F>(
    tracker: &TaskTracker,
    on_done: impl FnOnce(Result<(), String>) + Send + 'static,
    fut: F,
) where
    F: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let inner = tokio::spawn(fut);
    tracker.spawn(async move {
        let result = match inner.await {
            Ok(r) => r,
            Err(e) => Err(format!("panicked or aborted: {e}")),
        };
        on_done(result);
    });
}

#[cfg(feature = "embedded-broker")]
type Embedded = crate::ingest::broker::EmbeddedBroker;
#[cfg(not(feature = "embedded-broker"))]
type Embedded = std::convert::Infallible;

#[cfg(feature = "embedded-broker")]
async fn start_embedded(
    addr: SocketAddr,
    mqtt: &crate::config::MqttConfig,
) -> Result<(Embedded, SocketAddr), DaemonError> {
    let access = crate::ingest::broker::BrokerAccess {
        users: mqtt.embedded_users()?,
        tls: mqtt.embedded_tls()?.map(Arc::new),
    };
    let (max_packet, client_id) = (mqtt.max_packet_bytes, mqtt.client_id.clone());
    tokio::task::spawn_blocking(move || {
        crate::ingest::broker::EmbeddedBroker::start_with(addr, max_packet, &client_id, access).map(
            |b| {
                let daemon_addr = b.daemon_addr();
                (b, daemon_addr)
            },
        )
    })
    .await
    .map_err(|e| DaemonError::Component {
        component: "broker",
        reason: e.to_string(),
    })?
    .map_err(DaemonError::from)
}

#[cfg(not(feature = "embedded-broker"))]
async fn start_embedded(
    _addr: SocketAddr,
    _mqtt: &crate::config::MqttConfig,
) -> Result<(Embedded, SocketAddr), DaemonError> {
    Err(DaemonError::Config(ConfigError::Invalid {
        key: "mqtt.broker".into(),
        reason: "this build has no embedded broker (cargo feature `embedded-broker`); \
                 set an mqtt://host:port URL"
            .into(),
    }))
}

/// Shutdown, first step: the embedded broker stops accepting publishes and
/// hands what it holds to the daemon's client (which still forwards to the
/// writer), within `limit`.
#[cfg(feature = "embedded-broker")]
async fn drain_embedded(embedded: Option<Embedded>, limit: Duration) {
    if let Some(broker) = embedded {
        broker.drain_for_shutdown(limit).await;
    }
}

#[cfg(not(feature = "embedded-broker"))]
async fn drain_embedded(_embedded: Option<Embedded>, _limit: Duration) {}

/// Runs the daemon until `shutdown` is cancelled, then stops within `grace`.
///
/// # Errors
/// As [`start`] and [`Running::wait`].
pub async fn run(
    cfg: Config,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), DaemonError> {
    start(cfg, shutdown).await?.wait(grace).await
}

/// Allocations of at least this many bytes are mapped on their own
/// ([`map_large_allocations`]).
pub const MMAP_THRESHOLD_BYTES: usize = 1 << 20;

/// Has glibc's malloc map every allocation of [`MMAP_THRESHOLD_BYTES`]
/// (1 MiB) or more on its own and unmap it when it is freed (elsewhere, or
/// when `MALLOC_MMAP_THRESHOLD_` is set in the environment, nothing).
/// glibc's threshold starts at 128 KiB but rises, up to 32 MiB, to the size
/// of each mapped block freed; after the first payload of a few MiB (an
/// MQTT packet buffer, a training's matrix) blocks of that size come from
/// the arenas, and what they free stays resident there. Fed 17,600
/// garbage payloads (1,600 of 1 to 4 MiB) through the embedded broker, a
/// release daemon kept 130 MB resident afterwards with the dynamic
/// threshold and 65-70 MB with a fixed one (BENCHMARKS.md, "Garbage on the
/// pipeline's topics"). Called once by `edgeloop run`, before anything
/// large is allocated.
pub fn map_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt takes two integers and sets the allocator's own
        // parameters under its lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int);
        }
    }
}

/// Capacity of the channel from the MQTT source to the writer, messages.
const INGEST_QUEUE: usize = 1024;

/// Most publishes the MQTT source holds beyond [`INGEST_QUEUE`] before it
/// stops reading from the broker (only a broker without an in-flight window
/// sends that many unacknowledged messages; see `MqttSource`).
const MAX_SOURCE_WAITING: usize = 16 * 1024;

/// Pings the systemd watchdog (`WATCHDOG=1`) every `period / 2` while the
/// async runtime runs this task on time and ingest is not stalled
/// ([`HealthMonitor`]'s `ingest_stalled`: messages waiting, no commit for
/// `daemon.stall_timeout_s`), until `shutdown`. A stall skips the ping and
/// systemd restarts the daemon after `WatchdogSec` (`Restart=on-failure`);
/// the broker being away or the store refusing writes (disk full) are
/// reported by `/healthz` but do not stop the ping: a restart cannot fix
/// them and would take HTTP predictions down meanwhile.
pub async fn watchdog(period: Duration, health: &HealthMonitor, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        period_ms = period.as_millis() as u64,
        "systemd watchdog enabled."
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let h = health.check();
        if h.reasons.contains(&"ingest_stalled") {
            let status = format!(
                "Unhealthy: {}",
                h.error.as_deref().unwrap_or("ingest stalled")
            );
            let _ = sd_notify::notify(&[NotifyState::Status(&status)]);
        } else if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
            warn!(error = %e, "Cannot ping the systemd watchdog.");
        }
    }
}

/// What a reread configuration changes: keys applied at once and keys that
/// need a restart, as dotted paths (`daemon.log_filter`,
/// `pipelines[0].drift.psi_floor`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Changed keys the running daemon applies (`daemon.*`).
    pub applied: Vec<String>,
    /// Changed keys that keep their old value until a restart.
    pub restart: Vec<String>,
}

/// The keys a reload applies at once: read per use, not copied at start.
const RELOADABLE: [&str; 2] = ["daemon.log_filter", "daemon.shutdown_timeout_s"];

/// Compares the running configuration with a reread one. Keys under
/// `[daemon]` (log filter, shutdown deadline) are read per use and apply at
/// once; every other key is read once at start (the components hold copies),
/// so a change to it needs a restart.
pub fn reload_plan(running: &Config, reread: &Config) -> ReloadPlan {
    let mut changed = Vec::new();
    match (serde_json::to_value(running), serde_json::to_value(reread)) {
        (Ok(a), Ok(b)) => diff("", &a, &b, &mut changed),
        _ => changed.push("(configuration not comparable)".into()),
    }
    let (applied, restart) = changed
        .into_iter()
        .partition(|k| RELOADABLE.contains(&k.as_str()));
    ReloadPlan { applied, restart }
}

/// The configuration the daemon runs with after a reload of `reread`:
/// `running` with the keys a reload applies (`daemon.log_filter`,
/// `daemon.shutdown_timeout_s`) taken from `reread`. Every other key keeps
/// its running value, so the next reload names it again while it still
/// differs (before, the whole `[daemon]` section was taken, and a changed
/// `stall_timeout_s` was reported once, then no more while still unapplied).
pub fn reloaded(running: &Config, reread: &Config) -> Config {
    // The keys of RELOADABLE.
    let mut next = running.clone();
    next.daemon.log_filter = reread.daemon.log_filter.clone();
    next.daemon.shutdown_timeout_s = reread.daemon.shutdown_timeout_s;
    next
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff(&join(k), u, v, out),
                    _ => out.push(join(k)),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                diff(&format!("{path}[{i}]"), u, v, out);
            }
        }
        _ if a != b => out.push(path.to_string()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step of the start that runs until the second tick: two
    /// notifications, each extending systemd's start timeout by four ticks
    /// (`EXTEND_TIMEOUT_USEC=200000` for ticks of 50 ms) with the status line
    /// of that moment; the step's value is returned. A step already done
    /// sends nothing.
    #[tokio::test]
    async fn a_long_step_of_the_start_extends_systemds_timeout_while_it_runs() {
        let sent = Mutex::new(Vec::new());
        let done = Notify::new();
        let notify = |states: &[NotifyState]| {
            let line: Vec<String> = states.iter().map(ToString::to_string).collect();
            let mut sent = sent.lock().unwrap();
            sent.push(line.join("\n"));
            if sent.len() == 2 {
                done.notify_one();
            }
        };
        let calls = std::sync::atomic::AtomicU32::new(0);
        let status = |_: Duration| {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            format!("Opening the store (tick {n})")
        };
        let step = async {
            done.notified().await;
            7
        };
        let every = Duration::from_millis(50);
        assert_eq!(while_starting(step, every, notify, status).await, 7);
        assert_eq!(
            *sent.lock().unwrap(),
            [
                "EXTEND_TIMEOUT_USEC=200000\nSTATUS=Opening the store (tick 1)",
                "EXTEND_TIMEOUT_USEC=200000\nSTATUS=Opening the store (tick 2)"
            ]
        );
        sent.lock().unwrap().clear();
        assert_eq!(while_starting(async { 8 }, every, notify, status).await, 8);
        assert!(sent.lock().unwrap().is_empty());
    }

    /// Windows of 4 readings (step 1), at most 3 devices, 1 channel: a
    /// quiet device ("q", 3 readings first), then busy "b1" and "b2" (100
    /// readings each, every two sharing a timestamp, which the time index
    /// keeps once), and a stale "s" before all of them. The
    /// warm-up gives "q" its 3 readings (the next completes a window whose
    /// mean is theirs and its own) and each busy device its newest 4
    /// readings, the ones sharing timestamps included; "s" is left out.
    #[test]
    fn the_windows_are_warmed_device_by_device() {
        use crate::store::{NewSample, Sample};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let mut batch: Vec<NewSample> = Vec::new();
        let mut add = |device: &str, ts: i64, x: f32| {
            let digest = batch.len() as u128;
            batch.push(NewSample {
                pipeline: "w".into(),
                digest,
                sample: Sample {
                    timestamp_ms: ts,
                    device: device.into(),
                    features: vec![x],
                    label: None,
                },
                dedup: false,
            });
        };
        add("s", 0, 1000.0);
        add("q", 10, 1.0);
        add("q", 20, 2.0);
        add("q", 30, 3.0);
        for i in 0..200 {
            add(&format!("b{}", 1 + i % 2), 100 + i as i64 / 4, i as f32);
        }
        store.append(&batch).unwrap();
        let mut cfg = Config::load_with_env(None, std::iter::empty()).unwrap();
        let mut p = cfg.pipelines.remove(0);
        p.name = "w".into();
        p.features = vec!["x".into()];
        p.windows = crate::features::windows::WindowsConfig {
            enabled: true,
            size: 4,
            step: 1,
            stats: vec![crate::features::windows::Stat::Mean],
            max_devices: 3,
        };
        cfg.pipelines = vec![p];
        let mut windows = warm_windows(&store, &cfg).unwrap();
        let f = windows.get_mut("w").unwrap();
        let mean = |f: &mut crate::features::windows::Featurizer, d: &str, x: f32| {
            f.push(d, &[x]).map(|w| w.features[0])
        };
        // q: 1, 2, 3 and now 4.
        assert_eq!(mean(f, "q", 4.0), Some(2.5));
        // b1 (even i): its newest 4 are 192, 194, 196, 198; then 200.
        assert_eq!(
            mean(f, "b1", 200.0),
            Some((194.0 + 196.0 + 198.0 + 200.0) / 4.0)
        );
        assert_eq!(
            mean(f, "b2", 201.0),
            Some((195.0 + 197.0 + 199.0 + 201.0) / 4.0)
        );
        assert_eq!(f.evicted(), 0, "q, b1 and b2 only");
        // s was not warmed: a new device evicts the least recent (q).
        assert_eq!(mean(f, "s", 1001.0), None);
        assert_eq!(f.evicted(), 1);
    }

    /// 2,000 stored readings of one device (a seeded spread in 0..10),
    /// every third labelled; then the scorer warmed from the store, and
    /// one that scored and learned the same readings live through the
    /// predictor's path, see a spike of 100 alike: the residual rule's
    /// alarm, the same score. A scorer the restart began anew (the
    /// behaviour before) has read nothing: score 0, no alarm. Then with
    /// lags: the warmed scorer learned the rows the predictor's temporal
    /// state forms.
    #[test]
    fn the_anomaly_scorer_is_warmed_from_the_store_as_it_scored_live() {
        use crate::serve::predictions::AnomalyScorers;
        use crate::store::{NewSample, Sample};
        let stats = crate::stats::Stats::default();
        let readings: Vec<Sample> = (0..2_000u32)
            .map(|i| Sample {
                timestamp_ms: i64::from(i) * 1_000,
                device: "d".into(),
                features: vec![(i.wrapping_mul(7_919) % 1_000) as f32 / 100.0],
                label: (i % 3 == 0).then(|| "0".to_string()),
            })
            .collect();
        for lags in [0, 2] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s.redb")).unwrap();
            let mut cfg = Config::load_with_env(None, std::iter::empty()).unwrap();
            let mut p = cfg.pipelines.remove(0);
            p.name = "a".into();
            p.features = vec!["x".into()];
            p.classes = vec!["0".into(), "1".into()];
            p.anomaly.enabled = true;
            p.temporal.lags = lags;
            cfg.pipelines = vec![p];
            let batch: Vec<NewSample> = readings
                .iter()
                .enumerate()
                .map(|(i, s)| NewSample {
                    pipeline: "a".into(),
                    digest: i as u128,
                    sample: s.clone(),
                    dedup: false,
                })
                .collect();
            store.append(&batch).unwrap();
            let settings: Vec<_> = cfg.pipelines.iter().map(|p| p.settings()).collect();
            // Live: the predictor's path (its temporal state when lags).
            let live = AnomalyScorers::new(&settings);
            let shared = crate::features::temporal::SharedTemporal::new(
                &cfg.pipelines[0].temporal,
                1,
                &cfg.pipelines[0].classes,
            );
            let rows: Vec<Vec<f32>> = if lags > 0 {
                shared.advance(&readings.iter().collect::<Vec<_>>()).0
            } else {
                readings.iter().map(|s| s.features.clone()).collect()
            };
            live.score_then_learn("a", rows.iter().map(|r| ("d", r.as_slice())), &stats);
            let warmed = AnomalyScorers::new(&settings);
            let temporal_rows = if lags > 0 {
                let (_, rows) = warm_temporal(&store, &cfg.pipelines[0]).unwrap();
                std::collections::HashMap::from([("a".to_string(), rows)])
            } else {
                std::collections::HashMap::new()
            };
            warm_anomaly(&store, &cfg, &warmed, temporal_rows).unwrap();
            let fresh = AnomalyScorers::new(&settings);
            let spike = if lags > 0 {
                shared.row("d", &[100.0])
            } else {
                vec![100.0]
            };
            let device = [Some("d".to_string())];
            let n = spike.len();
            let w = warmed.peek("a", &spike, &device, n).unwrap().remove(0);
            assert_eq!(w, live.peek("a", &spike, &device, n).unwrap().remove(0));
            assert!(w.alarm, "lags {lags}: {w:?}");
            assert_eq!(w.rule, Some("residual"));
            assert!(w.residual_z > 10.0, "{w:?}");
            let f = fresh.peek("a", &spike, &device, n).unwrap().remove(0);
            assert_eq!((f.score, f.alarm), (0.0, false));
            // Not counted: the totals are the live readings' only.
            assert_eq!(warmed.totals()[0].1.scored, 0);
            assert_eq!(live.totals()[0].1.scored, 2_000);
        }
    }

    #[test]
    fn reload_plan_applies_daemon_keys_and_names_the_others() {
        let running = Config::load_with_env(None, std::iter::empty()).unwrap();
        let mut reread = running.clone();
        assert_eq!(reload_plan(&running, &reread), ReloadPlan::default());
        reread.daemon.shutdown_timeout_s = 3;
        reread.daemon.log_filter = "debug".into();
        reread.http.max_rows = 7;
        reread.pipelines[0].drift.psi_floor = 0.5;
        let plan = reload_plan(&running, &reread);
        assert_eq!(
            plan.applied,
            ["daemon.log_filter", "daemon.shutdown_timeout_s"]
        );
        assert_eq!(
            plan.restart,
            ["http.max_rows", "pipelines[0].drift.psi_floor"]
        );
        reread.pipelines.push(reread.pipelines[0].clone());
        assert_eq!(
            reload_plan(&running, &reread).restart,
            ["http.max_rows", "pipelines"]
        );
        // The metrics' instance label is set at start.
        let mut other = running.clone();
        other.daemon.instance = "gw-07".into();
        let plan = reload_plan(&running, &other);
        assert_eq!(plan.restart, ["daemon.instance"]);
        assert!(plan.applied.is_empty());
    }

    #[test]
    fn a_key_that_needs_a_restart_is_named_at_every_reload_until_then() {
        let running = Config::load_with_env(None, std::iter::empty()).unwrap();
        let mut reread = running.clone();
        reread.daemon.stall_timeout_s = 20;
        reread.daemon.log_filter = "debug".into();
        let first = reload_plan(&running, &reread);
        assert_eq!(first.applied, ["daemon.log_filter"]);
        assert_eq!(first.restart, ["daemon.stall_timeout_s"]);
        // The same file reread (a second SIGHUP): the filter is applied,
        // the stall timeout still runs at its start value.
        let now = reloaded(&running, &reread);
        assert_eq!(now.daemon.log_filter, "debug");
        assert_eq!(now.daemon.stall_timeout_s, running.daemon.stall_timeout_s);
        let second = reload_plan(&now, &reread);
        assert!(second.applied.is_empty());
        assert_eq!(second.restart, ["daemon.stall_timeout_s"]);
    }
}

/// `[http]`'s body limits.
fn http_body_limits(h: &crate::config::HttpConfig) -> http::BodyLimits {
    http::BodyLimits {
        max_bytes: h.max_body_bytes,
        timeout: Duration::from_secs(h.body_timeout_s),
    }
}
