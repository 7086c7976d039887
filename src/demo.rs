//! `edgeloop demo`: the whole loop on real data, on a fresh machine, with
//! nothing else running.
//!
//! Starts the embedded broker and the daemon on a temporary store, replays the
//! UCI Occupancy Detection data (Candanedo & Feldheim 2016, CC BY 4.0;
//! `data/occupancy_uci/`): `datatraining.txt` with labels, a final training on
//! everything stored, then `datatest2.txt` without labels. Each unlabelled
//! sample gets a prediction over MQTT; the demo compares them with the true
//! labels (`live_accuracy`) and measures the HTTP predict latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon::{self, DaemonError};
use crate::ingest::replay::{self, ReplayOptions};
use crate::serve::predictions::PredictionMessage;

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo data: {0}")]
    Data(String),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::IngestError),
    #[error("demo: {0}")]
    Step(String),
}

/// One model version in the summary.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DemoModel {
    pub version: u32,
    pub trigger: String,
    /// Rows of the evaluated fit.
    pub n_train: u64,
    /// The older slice: every 10th row older than the holdout, held out
    /// once a champion serves (the older regimes a challenger must not
    /// forget; `learn::train_dataset`, step 1).
    #[serde(default)]
    pub n_older: u64,
    /// The recent holdout: the newest `holdout_fraction` of the rows.
    pub n_holdout: u64,
    /// Rows the promoted model is refit on: all of them
    /// (`n_train + n_older + n_holdout`).
    #[serde(default)]
    pub n_refit: u64,
    /// Holdout class composition, e.g. {"0": 400}.
    pub holdout_classes: std::collections::BTreeMap<String, u64>,
    pub accuracy: Option<f64>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub f1: Option<f64>,
    /// Undefined per-class values (scikit-learn's zero_division cases).
    pub undefined: Vec<String>,
    pub training_ms: f64,
}

/// What the demo prints (`--json`: this object).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DemoSummary {
    pub samples_ingested: u64,
    pub samples_rejected: u64,
    pub duplicates: u64,
    pub models: Vec<DemoModel>,
    /// Accuracy of the MQTT predictions for datatest2.txt against its labels.
    pub live_accuracy: f64,
    pub live_predictions: u64,
    pub live_rows: u64,
    /// Median HTTP round trip of a one-row predict request over loopback, µs.
    pub predict_p50_us: f64,
    /// Median single-row inference in the engine alone, µs (model card).
    pub engine_p50_us: Option<f64>,
    pub elapsed_s: f64,
}

/// The occupancy data directory shipped with the source tree.
pub fn default_data_dir() -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/occupancy_uci");
    if shipped.is_dir() {
        shipped
    } else {
        PathBuf::from("data/occupancy_uci")
    }
}

const TOPIC: &str = "sensors/room1/occupancy";

/// Runs the demo.
///
/// # Errors
/// [`DemoError`] naming the step that failed.
pub async fn run(data_dir: &Path) -> Result<DemoSummary, DemoError> {
    let started = Instant::now();
    let training = data_dir.join("datatraining.txt");
    let test2 = data_dir.join("datatest2.txt");
    for f in [&training, &test2] {
        if !f.is_file() {
            return Err(DemoError::Data(format!(
                "{} not found (pass --data-dir)",
                f.display()
            )));
        }
    }
    let tmp =
        tempfile::tempdir().map_err(|e| DemoError::Step(format!("temporary directory: {e}")))?;
    let broker_port = free_port()?;
    let mut cfg = Config::load_with_env(None, std::iter::empty()).map_err(DaemonError::from)?;
    cfg.store.path = tmp.path().join("edgeloop.redb");
    cfg.mqtt.embedded_listen = SocketAddr::from(([127, 0, 0, 1], broker_port));
    cfg.mqtt.client_id = "edgeloop-demo".into();
    cfg.http.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    // Trainings are asked for at fixed points of the replay (not left to the
    // count triggers, which fire at batch boundaries), so the demo prints the
    // same versions on every run.
    let pipeline = &mut cfg.pipelines[0];
    pipeline.model.min_labels = 1_000_000_000;
    pipeline.model.retrain_every = 1_000_000_000;
    pipeline.drift.retrain_on_drift = false;
    let pipeline_name = pipeline.name.clone();

    let shutdown = CancellationToken::new();
    let running = daemon::start(cfg.clone(), shutdown.clone()).await?;
    let handle = running.handle.clone();
    let result: Result<DemoSummary, DemoError> = async {
        // Collect the predictions published for unlabelled samples.
        let (pred_tx, mut pred_rx) = mpsc::unbounded_channel::<PredictionMessage>();
        let sub_ready = subscribe_predictions(
            broker_port,
            "edgeloop/+/predictions/#",
            pred_tx,
            shutdown.clone(),
        )
        .await?;
        let ready = tokio::time::timeout(Duration::from_secs(10), sub_ready).await;
        if !matches!(ready, Ok(Ok(()))) {
            return Err(DemoError::Step(
                "the prediction subscriber got no SubAck within 10 s".into(),
            ));
        }
        if !handle.wait_subscribed(Duration::from_secs(10)).await {
            return Err(DemoError::Step(
                "the daemon did not subscribe within 10 s".into(),
            ));
        }

        let mut opts = ReplayOptions {
            file: training.clone(),
            topic: TOPIC.into(),
            rate: None,
            host: "127.0.0.1".into(),
            port: broker_port,
            drop_columns: vec![],
            limit: None,
            // Not `{daemon id}-…`: the embedded broker reserves those for
            // the daemon's own connections.
            client_id: "demo-replay".into(),
            give_up_after: Duration::from_secs(replay::GIVE_UP_AFTER_S),
        };
        let payloads = replay::csv_payloads(&opts)?;
        let n_rows = payloads.len();
        // Four chunks of the training period, a training after each.
        for (start, end) in [(0, 2000), (2000, 4000), (4000, 6000), (6000, n_rows)] {
            let end = end.min(n_rows);
            replay::publish_all(&opts, payloads[start..end].to_vec(), shutdown.clone()).await?;
            wait_for(Duration::from_secs(60), "training rows stored", || {
                handle
                    .store
                    .counts(&pipeline_name)
                    .map(|c| c.samples >= end as u64)
                    .unwrap_or(false)
            })
            .await?;
            handle
                .learner
                .train_now(&pipeline_name)
                .await
                .map_err(|e| DemoError::Step(format!("training after {end} rows: {e}")))?;
        }

        // Live phase: the test period without labels.
        opts.file = test2.clone();
        opts.drop_columns = vec!["Occupancy".into()];
        let truth = true_labels(&test2)?;
        let payloads = replay::csv_payloads(&opts)?;
        let live_rows = payloads.len() as u64;
        replay::publish_all(&opts, payloads, shutdown.clone()).await?;
        let mut predicted: HashMap<i64, String> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (predicted.len() as u64) < live_rows && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), pred_rx.recv()).await {
                Ok(Some(m)) => {
                    predicted.insert(m.timestamp_ms, m.label);
                }
                Ok(None) => break,
                Err(_) => {}
            }
        }
        let correct = truth
            .iter()
            .filter(|(ts, label)| predicted.get(ts) == Some(label))
            .count();
        let live_accuracy = correct as f64 / truth.len().max(1) as f64;

        let predict_p50_us = http_predict_p50_us(handle.http_addr, &pipeline_name, 200).await?;
        let cards = handle
            .registry
            .cards(&handle.store, &pipeline_name)
            .map_err(|e| DemoError::Step(e.to_string()))?;
        let engine_p50_us = handle
            .registry
            .get(&pipeline_name)
            .and_then(|s| s.card.predict_p50_us);
        let stats = handle.stats.snapshot();
        let models = cards
            .iter()
            .map(|c| DemoModel {
                version: c.version,
                trigger: serde_json::to_value(c.trigger)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                n_train: c.n_train,
                // The demo augments nothing, so the rows neither trained
                // on nor in the holdout are the older slice.
                n_older: c.n_samples.saturating_sub(c.n_train + c.n_holdout),
                n_holdout: c.n_holdout,
                n_refit: c.n_samples,
                holdout_classes: c.class_composition_holdout.clone(),
                accuracy: c.holdout.as_ref().map(|m| m.accuracy),
                precision: c.holdout.as_ref().map(|m| m.precision_macro),
                recall: c.holdout.as_ref().map(|m| m.recall_macro),
                f1: c.holdout.as_ref().map(|m| m.f1_macro),
                undefined: c
                    .holdout
                    .as_ref()
                    .map(|m| m.undefined.clone())
                    .unwrap_or_default(),
                training_ms: c.training_ms,
            })
            .collect();
        Ok(DemoSummary {
            samples_ingested: stats.samples_stored,
            samples_rejected: stats.samples_rejected,
            duplicates: stats.duplicates,
            models,
            live_accuracy,
            live_predictions: predicted.len() as u64,
            live_rows,
            predict_p50_us,
            engine_p50_us,
            elapsed_s: 0.0,
        })
    }
    .await;
    shutdown.cancel();
    let stopped = running.wait(Duration::from_secs(10)).await;
    let mut summary = result?;
    stopped?;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The summary as a table for people: [`render_results`], then the
/// measured times.
pub fn render(s: &DemoSummary) -> String {
    let mut out = render_results(s);
    out.push_str(&format!(
        "predict latency p50: {:.0} µs over HTTP (engine alone: {} µs)\nelapsed: {:.1} s\n",
        s.predict_p50_us,
        s.engine_p50_us.map_or("-".into(), |v| format!("{v:.0}")),
        s.elapsed_s
    ));
    out
}

/// What the demo prints before its timings: the same on every run and
/// every machine (README.md shows it between `<!-- demo-output -->`
/// markers; `tests/loop_e2e.rs` compares the two). At most 100 columns.
pub fn render_results(s: &DemoSummary) -> String {
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
    let mut out = String::new();
    out.push_str(&format!(
        "edgeloop demo: UCI Occupancy Detection (Candanedo & Feldheim 2016)\n\n\
         samples ingested  {}\nsamples rejected  {}\nduplicates        {}\n\n",
        s.samples_ingested, s.samples_rejected, s.duplicates
    ));
    out.push_str(
        "version  trigger  train  older  holdout  refit  holdout classes  accuracy  precision  recall  f1\n",
    );
    for m in &s.models {
        let classes: Vec<String> = m
            .holdout_classes
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        let line = format!(
            "{:<8} {:<8} {:<6} {:<6} {:<8} {:<6} {:<16} {:<9} {:<10} {:<7} {}",
            m.version,
            m.trigger,
            m.n_train,
            m.n_older,
            m.n_holdout,
            m.n_refit,
            classes.join(" "),
            f(m.accuracy),
            f(m.precision),
            f(m.recall),
            f(m.f1)
        );
        out.push_str(line.trim_end());
        out.push('\n');
        for u in &m.undefined {
            out.push_str(&format!("         note: {u}\n"));
        }
    }
    out.push_str(&format!(
        "\nlive predictions (datatest2.txt, no labels sent): {} of {} rows, accuracy {:.4}\n",
        s.live_predictions, s.live_rows, s.live_accuracy,
    ));
    out
}

fn free_port() -> Result<u16, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DemoError::Step(format!("no free port: {e}")))
}

/// True labels of a CSV by timestamp (ms), timestamps read as the pipeline
/// reads them (UTC, `%Y-%m-%d %H:%M:%S`).
fn true_labels(file: &Path) -> Result<HashMap<i64, String>, DemoError> {
    let mut reader = csv::Reader::from_path(file)
        .map_err(|e| DemoError::Data(format!("{}: {e}", file.display())))?;
    let mut out = HashMap::new();
    for record in reader.records() {
        let r = record.map_err(|e| DemoError::Data(format!("{}: {e}", file.display())))?;
        let (Some(date), Some(label)) = (r.get(0), r.get(6)) else {
            continue;
        };
        let ts = chrono::NaiveDateTime::parse_from_str(date.trim(), "%Y-%m-%d %H:%M:%S")
            .map_err(|e| DemoError::Data(format!("{}: date `{date}`: {e}", file.display())))?;
        out.insert(ts.and_utc().timestamp_millis(), label.trim().to_string());
    }
    Ok(out)
}

/// Subscribes to `filter` and forwards decoded predictions; the returned
/// receiver fires once the subscription is acknowledged.
async fn subscribe_predictions(
    port: u16,
    filter: &str,
    tx: mpsc::UnboundedSender<PredictionMessage>,
    shutdown: CancellationToken,
) -> Result<tokio::sync::oneshot::Receiver<()>, DemoError> {
    let mut opts = MqttOptions::new("demo-predictions", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .map_err(|e| DemoError::Step(format!("subscribe: {e}")))?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            let ev = tokio::select! {
                ev = eventloop.poll() => ev,
                _ = shutdown.cancelled() => break,
            };
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(m) = serde_json::from_slice::<PredictionMessage>(&p.payload) {
                        let _ = tx.send(m);
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        drop(client);
    });
    Ok(ready_rx)
}

async fn wait_for(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<(), DemoError> {
    let until = Instant::now() + limit;
    while !done() {
        if Instant::now() > until {
            return Err(DemoError::Step(format!("timed out waiting for {what}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A minimal HTTP/1.1 client (hyper) on one keep-alive connection, for the
/// demo's latency measurement and the tests.
pub struct HttpClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    token: Option<String>,
}

impl HttpClient {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// A message when the connection or the handshake fails.
    pub async fn connect(addr: SocketAddr) -> Result<Self, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        Self::handshake(stream, addr, addr.to_string()).await
    }

    /// HTTP/1 over `io`, a connection to `addr`, sending `host`.
    async fn handshake<IO>(io: IO, addr: SocketAddr, host: String) -> Result<Self, String>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                .await
                .map_err(|e| format!("handshake {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host,
            token: None,
        })
    }

    /// Connects to `addr` over TLS, checking the server's certificate
    /// against `tls` for the name `server_name` (a DNS name or an IP
    /// address).
    ///
    /// # Errors
    /// A message when the connection, the TLS handshake or the HTTP
    /// handshake fails.
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Self, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("server name `{server_name}`: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {addr}: {e}"))?;
        Self::handshake(stream, addr, server_name.to_string()).await
    }

    /// Sends `token` as a bearer token with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Sends a request; returns the status and the body.
    ///
    /// # Errors
    /// A message when the request fails.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes.to_vec()))
    }
}

async fn http_predict_p50_us(addr: SocketAddr, pipeline: &str, n: usize) -> Result<f64, DemoError> {
    let mut client = HttpClient::connect(addr).await.map_err(DemoError::Step)?;
    let body = br#"{"rows":[{"Temperature":21.0,"Humidity":27.2,"Light":430.0,"CO2":710.0,"HumidityRatio":0.0042}]}"#;
    let path = format!("/v1/pipelines/{pipeline}/predict");
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (status, resp) = client
            .request("POST", &path, Some(body.to_vec()))
            .await
            .map_err(DemoError::Step)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
        if status != 200 {
            return Err(DemoError::Step(format!(
                "predict returned {status}: {}",
                String::from_utf8_lossy(&resp)
            )));
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
