//! The HTTP API (axum), for local apps.
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/healthz` | 200 `{"status":"ok","reasons":[],"mqtt_connected":bool,"mqtt_subscribed":bool,"ingest_waiting":n,"seconds_since_commit":s,"store_refusing_writes":bool}`; 503 with `"status":"unhealthy"`, `"reasons"` (`ingest_stalled`, `mqtt_disconnected`, `store_refusing_writes`) and `"error"` ([`crate::health`]) |
//! | GET | `/v1/stats` | ingest, prediction and training counters |
//! | GET | `/metrics` | the same counters and more in Prometheus text format ([`crate::metrics`]) |
//! | GET | `/v1/pipelines` | each pipeline: counts, serving version |
//! | POST | `/v1/pipelines/{name}/predict` | `{"rows":[{feature: number|null, …}]}` → a classifier: `{"pipeline", "model_version", "predictions":[{"label","probabilities":{class: p},"anomaly_score","residual_z","residual_feature","anomaly","anomaly_rule"}]}`; a regressor: `{"pipeline", "model_version", "predictions":[{"prediction": number,"anomaly_score",…}]}` (the anomaly fields: [`crate::learn::anomaly`], each row seen as the scorer's next reading, not learned: the trees' score, the largest residual z and its feature, and the alarm with its rule, `"trees"`, `"residual"`, `"both"` or `"level"`, absent without one; all absent with `[pipelines.anomaly] enabled = false`) |
//! | GET | `/v1/pipelines/{name}/models` | every version's model card, the serving version and its `engine` (tract or ort) |
//! | PUT | `/v1/pipelines/{name}/models` | ONNX bytes (header `x-sha256` or `?sha256=`) → `201 {"pipeline", "version", "created": true, "serving_version", "card"}`: checked and stored, served once promoted ([`crate::serve::intake`]); the same bytes as a stored version → `200` with `"created": false` and that version, nothing stored; refusals 413 (oversized), 400 (sha256), 422 (the model) |
//! | POST | `/v1/pipelines/{name}/train` | trains now on what is stored → the new card |
//! | POST | `/v1/pipelines/{name}/models/{version}/promote` | serves a stored version → `{"serving_version"}` |
//! | POST | `/v1/pipelines/{name}/rollback` | serves the version before the current one |
//! | GET | `/v1/pipelines/{name}/history` | the timeline: which version served from when, and why |
//! | GET | `/v1/pipelines/{name}/drift` | data drift per feature (PSI, KS) against the serving version's training data; concept-drift detector state and alarms (`error_rate` of a classifier, `mean_abs_error` of a regressor) |
//! | GET | `/` | the dashboard, a page compiled into the binary (and its files under `/assets/`), open like `/healthz`: it holds no data ([`dashboard`]) |
//! | GET | `/v1/series/ingest` | ingest counters over time (received, stored, rejected by reason, duplicates, salvaged, predictions), cumulative, and per second between points ([`crate::monitor::series`]) |
//! | GET | `/v1/pipelines/{name}/series` | each served version's live accuracy (mean absolute error of a regressor) over time as labels arrive, with the timeline's promotions, rollbacks, refusals and drift alarms |
//! | GET | `/v1/pipelines/{name}/versions` | the versions side by side: holdout accuracy, precision, recall, F1 (macro), training time, dataset size, class composition, latency, augmentation, live score, confusion matrix, champion/challenger decision |
//! | GET | `/v1/predictions` | the newest predictions handed to the outbox (`?pipeline=` to filter), newest first, at most 50 |
//!
//! Errors are JSON `{"error": message}`; the status codes of the handlers'
//! errors are decided in one place, [`ApiError::status`]. Errors produced
//! before a handler runs are JSON too, with their own status:
//! - by axum (extractors, routing): 413 for a body over the 2 MB default
//!   limit (`POST …/predict`), 405 for a method a route does not take, 400
//!   or 415 for a rejected body; [`json_errors`], a layer of [`router`] and
//!   [`metrics_router`], gives any 4xx/5xx answer that is not JSON the body
//!   `{"error": its plain-text body, or the status' reason}`;
//! - by hyper, which answers a request it cannot parse without calling the
//!   router and closes the connection: 414 for a URI over 65,534 bytes
//!   (a limit fixed in hyper), 431 for a head with more than 100 header fields
//!   or still incomplete once hyper's read buffer holds ~408 KiB (a larger
//!   head that completes within one read is accepted: the size limit is not
//!   exact), 400 for a malformed request line or header. Its answer has no
//!   body; [`JsonErrorListener`], the listener the daemon serves on, rewrites
//!   it as JSON with the same status.

pub mod access;
pub mod dashboard;
pub mod serve;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::PipelineConfig;
use crate::monitor::retrain::{LearnerHandle, TrainFailure};
use crate::serve::registry::{Registry, RegistryError};
use crate::stats::Stats;
use crate::store::Store;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub store: Arc<Store>,
    pub pipelines: Arc<Vec<PipelineConfig>>,
    pub learner: LearnerHandle,
    pub stats: Arc<Stats>,
    pub max_rows: usize,
    pub connection: Arc<crate::ingest::mqtt::Connection>,
    /// The verdict of `GET /healthz`.
    pub health: Arc<crate::health::HealthMonitor>,
    pub drift: crate::monitor::retrain::DriftBoard,
    /// `[models]`: the upload size limit.
    pub models: crate::serve::intake::ModelsConfig,
    /// How uploaded models load (the onnxruntime library of `[onnxruntime]`).
    pub load_options: crate::onnx::engine::LoadOptions,
    /// `http.max_body_bytes` and `http.body_timeout_s`.
    pub body: BodyLimits,
    /// The series and newest predictions behind the dashboard (`GET /`).
    pub dashboard: dashboard::Dashboard,
    /// Anomaly scorers: predict rows get their score (not learned).
    pub anomaly: crate::serve::predictions::AnomalyScorers,
}

/// How much of a request body is read, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Bytes, on every route but the model upload (`[models] max_bytes`).
    pub max_bytes: usize,
    /// From the end of the head to the end of the body.
    pub timeout: Duration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_bytes: 2 * 1024 * 1024,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Reads `body` up to `limit` bytes: [`ApiError::BodyTooLarge`] beyond,
/// [`ApiError::BodyTimeout`] when it stopped arriving (the
/// `RequestBodyTimeoutLayer` of [`app`]), [`ApiError::BadRequest`] when the
/// client broke it off.
async fn read_body(
    body: axum::body::Body,
    limit: usize,
    limits: BodyLimits,
) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(inner.as_ref());
        while let Some(err) = source {
            if err.is::<tower_http::timeout::TimeoutError>() {
                return ApiError::BodyTimeout(limits.timeout.as_secs());
            }
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::BodyTooLarge(limit);
            }
            source = err.source();
        }
        ApiError::BadRequest(format!("reading the request body: {inner}"))
    })
}

/// The whole application the daemon serves: `api` (the [`router`] merged
/// with the [`metrics_router`]) behind the bearer-token check of `access`,
/// the body limit and the body timeout. [`serve::serve`] adds the
/// connection limits.
pub fn app(api: Router, access: access::Access, body: BodyLimits) -> Router {
    api.layer(axum::extract::DefaultBodyLimit::max(body.max_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body.timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(access, access::check))
        .layer(axum::middleware::map_response(json_errors))
}

/// Who made a request, for the model timeline ([`crate::serve::registry::ServingEvent::by`]).
fn requester(peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> String {
    match peer {
        Some(axum::Extension(ConnectInfo(addr))) => format!("http {addr}"),
        None => "http".into(),
    }
}

/// Errors a request can meet.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("pipeline `{0}` is not configured")]
    UnknownPipeline(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("pipeline `{0}` has no model yet: it trains once enough labelled samples are stored")]
    NoModel(String),
    #[error("{0}")]
    CannotTrain(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("the request body did not arrive within http.body_timeout_s ({0} s)")]
    BodyTimeout(u64),
    #[error("the request body is over {0} bytes (http.max_body_bytes)")]
    BodyTooLarge(usize),
    #[error("internal error: {0}")]
    Internal(String),
    /// A write the request needed failed on a full disk.
    #[error("the store's file system is full; free space and retry: {0}")]
    StoreFull(String),
    #[error("model refused: {0}")]
    Intake(#[from] crate::serve::intake::IntakeError),
}

impl ApiError {
    /// The one place errors become status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::UnknownPipeline(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NoModel(_) => StatusCode::CONFLICT,
            ApiError::CannotTrain(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::StoreFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Intake(e) => {
                use crate::serve::intake::IntakeError as E;
                match e {
                    E::UnknownPipeline(_) => StatusCode::NOT_FOUND,
                    E::Oversized { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                    E::BadSha256(_) => StatusCode::BAD_REQUEST,
                    E::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    E::StoreFull(_) => StatusCode::INSUFFICIENT_STORAGE,
                    E::Truncated(_)
                    | E::NotOnnx(_)
                    | E::UnsupportedOperator(_)
                    | E::UnsupportedOpset(_)
                    | E::WrongWidth { .. }
                    | E::FeatureOrder { .. }
                    | E::WrongTask { .. }
                    | E::WrongClasses { .. }
                    | E::ExternalData(_)
                    | E::EngineRefused(_)
                    | E::BadOutput(_) => StatusCode::UNPROCESSABLE_ENTITY,
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownPipeline(p) => ApiError::UnknownPipeline(p),
            RegistryError::UnknownVersion { .. } => ApiError::NotFound(e.to_string()),
            RegistryError::NothingToRollBack(_) | RegistryError::Pruned { .. } => {
                ApiError::Conflict(e.to_string())
            }
            RegistryError::Model { .. } => ApiError::CannotTrain(e.to_string()),
            RegistryError::Store(ref s) if s.is_disk_full() => ApiError::StoreFull(e.to_string()),
            RegistryError::Store(_) | RegistryError::Card { .. } => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<TrainFailure> for ApiError {
    fn from(e: TrainFailure) -> Self {
        match e {
            TrainFailure::UnknownPipeline(p) => ApiError::UnknownPipeline(p),
            TrainFailure::Training { .. } | TrainFailure::Registry(RegistryError::Model { .. }) => {
                ApiError::CannotTrain(e.to_string())
            }
            TrainFailure::ShuttingDown => ApiError::Unavailable(e.to_string()),
            TrainFailure::Store(ref s) | TrainFailure::Registry(RegistryError::Store(ref s))
                if s.is_disk_full() =>
            {
                ApiError::StoreFull(e.to_string())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// `GET /metrics`: Prometheus text format 0.0.4 (see [`crate::metrics`]),
/// merged into [`router`]'s by the daemon.
pub fn metrics_router(metrics: crate::metrics::Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
        .layer(axum::middleware::map_response(json_errors))
}

/// Makes every error answer JSON: a 4xx or 5xx response whose content type
/// is not JSON (axum's rejections: 413 body too large, 405 wrong method, 400
/// or 415 from an extractor; a 404 of the method router) gets the body
/// `{"error": message}`, the message being its plain-text body or, when it
/// has none, the status' reason (`"method not allowed"`). The status and
/// the other headers (`allow` of a 405) are kept.
pub async fn json_errors(response: Response) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // axum's rejection texts are one line; a longer body is not a message.
    let text = axum::body::to_bytes(body, 4096).await.ok();
    let message = text
        .as_deref()
        .and_then(|t| std::str::from_utf8(t).ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map_or_else(|| reason_of(status), str::to_string);
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(CONTENT_TYPE);
    (parts, Json(json!({ "error": message }))).into_response()
}

/// A status' reason in lower case (`"payload too large"`), or its code.
fn reason_of(status: StatusCode) -> String {
    status
        .canonical_reason()
        .map_or_else(|| status.as_str().to_string(), str::to_lowercase)
}

/// The listener the daemon serves the API on: `L`'s connections, wrapped in
/// [`JsonErrorIo`] so that the answers hyper writes itself (a request it
/// cannot parse never reaches the router) are JSON errors like the others.
///
/// `axum::serve(JsonErrorListener::new(listener), app)`.
#[derive(Debug)]
pub struct JsonErrorListener<L>(L);

impl<L: axum::serve::Listener> JsonErrorListener<L> {
    pub fn new(inner: L) -> Self {
        Self(inner)
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for JsonErrorListener<L> {
    type Io = JsonErrorIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (JsonErrorIo::new(io), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection whose writes pass through unchanged, except hyper's own
/// answer to a request it could not parse (`hyper_error_as_json`): 400,
/// 414 or 431 with `content-length: 0` and no content type, which becomes
/// the same status with a JSON `{"error": …}` body.
///
/// hyper writes that answer as the first bytes of one write call when the
/// connection does not write vectored (this type does not, so hyper
/// flattens its buffers); it then closes the connection. The router never
/// writes such an answer itself: [`json_errors`] gives its errors a body.
#[derive(Debug)]
pub struct JsonErrorIo<T> {
    inner: T,
    /// A rewritten answer not yet fully written, and how much of it was.
    pending: Vec<u8>,
    written: usize,
}

impl<T> JsonErrorIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> JsonErrorIo<T> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                std::task::ready!(std::pin::Pin::new(&mut self.inner)
                    .poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending = Vec::new();
        self.written = 0;
        std::task::Poll::Ready(Ok(()))
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonErrorIo<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonErrorIo<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        if let Some(answer) = hyper_error_as_json(buf) {
            this.pending = answer;
            // Taken whole; what the socket does not accept now is written
            // by the next write, flush or shutdown (hyper flushes next).
            if let std::task::Poll::Ready(Err(e)) = this.poll_pending(cx) {
                return std::task::Poll::Ready(Err(e));
            }
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        std::pin::Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        std::pin::Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// When `buf` is exactly one body-less error answer as hyper writes it for a
/// request it could not parse (`HTTP/1.1 400|414|431 …`, `content-length:
/// 0`, no content type, nothing after the head), the same answer with a JSON
/// body naming the problem; `None` for anything else.
fn hyper_error_as_json(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let message = match rest.get(..4)? {
        b"400 " => "malformed request: the request line or a header is not HTTP/1.1",
        b"414 " => "URI too long: at most 65534 bytes",
        b"431 " => "request head too large: at most 100 header fields and about 408 KiB",
        _ => return None,
    };
    let head = std::str::from_utf8(buf.strip_suffix(b"\r\n\r\n")?).ok()?;
    let mut lines = head.split("\r\n");
    let mut out = format!("{}\r\n", lines.next()?);
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if value.trim() != "0" {
                return None;
            }
            empty = true;
        } else if name.eq_ignore_ascii_case("content-type")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return None;
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    if !empty {
        return None;
    }
    let body = json!({ "error": message }).to_string();
    out.push_str(&format!(
        "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ));
    Some(out.into_bytes())
}

async fn metrics_text(State(m): State<crate::metrics::Metrics>) -> Response {
    match m.render() {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::metrics::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::Internal(format!("encoding metrics: {e}")).into_response(),
    }
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/stats", get(stats))
        .route("/v1/pipelines", get(pipelines))
        .route("/v1/pipelines/{name}/predict", post(predict))
        .route("/v1/pipelines/{name}/models", get(models).put(upload_model))
        .route("/v1/pipelines/{name}/train", post(train))
        .route(
            "/v1/pipelines/{name}/models/{version}/promote",
            post(promote),
        )
        .route("/v1/pipelines/{name}/rollback", post(rollback))
        .route("/v1/pipelines/{name}/history", get(history))
        .route("/v1/pipelines/{name}/drift", get(drift))
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .route("/v1/series/ingest", get(dashboard::ingest_series))
        .route(
            "/v1/pipelines/{name}/series",
            get(dashboard::pipeline_series),
        )
        .route("/v1/pipelines/{name}/versions", get(dashboard::versions))
        .route("/v1/predictions", get(dashboard::predictions))
        .fallback(|| async {
            ApiError::NotFound("no such route; see the API table in README.md".into())
        })
        .with_state(state)
        .layer(axum::middleware::map_response(json_errors))
}

async fn healthz(State(s): State<AppState>) -> Response {
    let h = s.health.check();
    let status = if h.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(h)).into_response()
}

async fn stats(State(s): State<AppState>) -> Json<Value> {
    Json(json!(s.stats.snapshot()))
}

async fn pipelines(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = Vec::new();
    for p in s.pipelines.iter() {
        let counts = s
            .store
            .counts(&p.name)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        out.push(json!({
            "name": p.name,
            "topics": p.topics,
            "features": p.features,
            "samples": counts.samples,
            "labelled_total": counts.labelled_total,
            "serving_version": s.registry.get(&p.name).map(|m| m.version),
        }));
    }
    Ok(Json(json!({ "pipelines": out })))
}

/// Body of a predict request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// Rows keyed by feature name; `null` marks a missing value (imputed).
    pub rows: Vec<serde_json::Map<String, Value>>,
}

/// One row's prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowPrediction {
    pub label: String,
    pub probabilities: BTreeMap<String, f32>,
    /// The row's anomaly fields, as the prediction messages' (the row seen
    /// as the scorer's next reading: scored, not learned).
    #[serde(flatten)]
    pub scores: crate::serve::predictions::AnomalyJson,
}

/// Answer to a predict request to a classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictResponse {
    pub pipeline: String,
    pub model_version: u32,
    pub predictions: Vec<RowPrediction>,
    /// `true` when the serving version is an online snapshot with one class
    /// learned so far, answering it whatever the row (cold start,
    /// [`crate::monitor::online`]); absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub constant: bool,
}

/// One row's prediction by a regressor: the predicted label value, in the
/// label's unit (the ONNX `prediction` output, `f32`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowValue {
    pub prediction: f32,
    /// As [`RowPrediction::scores`].
    #[serde(flatten)]
    pub scores: crate::serve::predictions::AnomalyJson,
}

/// Answer to a predict request to a regressor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegressionResponse {
    pub pipeline: String,
    pub model_version: u32,
    pub predictions: Vec<RowValue>,
}

/// Answer to a predict request, by the serving model's task.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PredictAnswer {
    Classification(PredictResponse),
    Regression(RegressionResponse),
}

/// Predict requests decoded and run at once, over every pipeline; the others
/// wait with their body read (at most `http.max_body_bytes` each). The
/// slot is taken after the body is read, so clients that send slowly never
/// hold one. Decoding and answering take about 5 MiB at `http.max_rows`
/// (10,000 rows: the rows as JSON values, the answer): without a bound, 150
/// clients sending such requests at once took the daemon from 38 MB to
/// about 1.1 GB, past the packaged unit's MemoryMax=512M, and
/// `http.max_connections` (512) allowed more. A 2-core board runs no more
/// than a few at once anyway.
pub const PREDICT_SLOTS: usize = 4;
static PREDICTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PREDICT_SLOTS);

async fn predict(
    State(s): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Body,
) -> Result<Json<PredictAnswer>, ApiError> {
    if !s.registry.has(&name) {
        return Err(ApiError::UnknownPipeline(name));
    }
    let body = read_body(body, s.body.max_bytes, s.body).await?;
    let _slot = PREDICTING
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let req: PredictRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be {{\"rows\": [{{feature: number, …}}]}}: {e}"
        ))
    })?;
    if req.rows.is_empty() {
        return Err(ApiError::BadRequest("`rows` is empty".into()));
    }
    if req.rows.len() > s.max_rows {
        return Err(ApiError::BadRequest(format!(
            "{} rows; at most {} per request",
            req.rows.len(),
            s.max_rows
        )));
    }
    let serving = s
        .registry
        .get(&name)
        .ok_or_else(|| ApiError::NoModel(name.clone()))?;
    let features = serving.model.features();
    // `impute = "last"`: a row's `device` (when not a feature) names whose
    // last readings fill its missing values.
    let carry = s
        .pipelines
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| Some((p.preprocess.carry_forward.clone()?, p.preprocess.cleaning())));
    // `[pipelines.temporal]`: a row of the raw features with a `device` is
    // formed from that device's recent readings as the stream recorded
    // them (the row itself is not recorded); a row without one gives every
    // model feature.
    let temporal = s.pipelines.iter().find(|p| p.name == name).and_then(|p| {
        let state = p.temporal.state.clone()?;
        Some((state, p.features.clone(), p.preprocess.cleaning()))
    });
    let mut x = Vec::with_capacity(req.rows.len() * features.len());
    // Each row's `device`, whose anomaly rules score it (none: the rules of
    // the readings without a device).
    let mut devices = Vec::with_capacity(req.rows.len());
    for (i, row) in req.rows.iter().enumerate() {
        let device = match row.get("device") {
            Some(Value::String(d)) if !features.contains(&"device".to_string()) => Some(d),
            _ => None,
        };
        // As over MQTT (`device_too_long`): a device id keys per-device
        // state (temporal rows, carried values, anomaly rules).
        if let Some(d) = device.filter(|d| d.len() > crate::ingest::decode::MAX_DEVICE_BYTES) {
            return Err(ApiError::BadRequest(format!(
                "rows[{i}]: `device` is {} bytes; at most {} (as a device id over MQTT)",
                d.len(),
                crate::ingest::decode::MAX_DEVICE_BYTES
            )));
        }
        devices.push(device.cloned());
        let (features, temporal) = match (&temporal, device) {
            (Some((state, raw, cleaning)), Some(d)) => (raw.as_slice(), Some((state, cleaning, d))),
            _ => (features, None),
        };
        let start = x.len();
        for key in row.keys() {
            if !features.contains(key) && key != "device" {
                return Err(ApiError::BadRequest(format!(
                    "rows[{i}]: unknown feature `{key}`; the model takes {features:?}"
                )));
            }
        }
        for f in features {
            let v = match row.get(f) {
                None => {
                    return Err(ApiError::BadRequest(format!(
                        "rows[{i}]: feature `{f}` is missing (send null for a missing value)"
                    )))
                }
                Some(Value::Null) => f32::NAN,
                // A categorical feature: its string's code (NaN, all
                // zeros, when the model never saw it).
                Some(v) if serving.model.is_categorical(f) => {
                    match crate::ingest::categories::category_of(Some(v)) {
                        Ok(c) => serving.model.category_code(f, Some(&c)).unwrap_or(f32::NAN),
                        Err(crate::stats::Reason::MissingFeature) => f32::NAN,
                        Err(_) => {
                            return Err(ApiError::BadRequest(format!(
                                "rows[{i}]: feature `{f}` is categorical: a string, number or null, not {v}"
                            )))
                        }
                    }
                }
                Some(Value::Number(n)) => n.as_f64().map_or(f32::NAN, |v| v as f32),
                // As over MQTT: numeric strings are numbers.
                Some(Value::String(t)) if t.trim().parse::<f64>().is_ok() => {
                    t.trim().parse::<f64>().map_or(f32::NAN, |v| v as f32)
                }
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "rows[{i}]: feature `{f}` must be a number or null, not {other}"
                    )))
                }
            };
            if v.is_infinite() {
                return Err(ApiError::BadRequest(format!(
                    "rows[{i}]: feature `{f}` overflows f32"
                )));
            }
            x.push(v);
        }
        if let Some((state, cleaning, device)) = temporal {
            let mut reading = x.split_off(start);
            cleaning.apply(features, &mut reading);
            x.extend(state.row(device, &reading));
            continue;
        }
        match (&carry, row.get("device")) {
            (Some((cf, cleaning)), Some(Value::String(device)))
                if !features.contains(&"device".to_string()) =>
            {
                cleaning.apply(features, &mut x[start..]);
                cf.fill(device, &mut x[start..]);
            }
            _ => {}
        }
    }
    let peeked = s.anomaly.peek(&name, &x, &devices, features.len());
    let field = |i: usize| peeked.as_ref().and_then(|v| v.get(i));
    let model = serving.clone();
    let started = std::time::Instant::now();
    let proba = tokio::task::spawn_blocking(move || model.model.predict_proba(&x))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    s.stats
        .observe_prediction(&name, "http", started.elapsed().as_secs_f64());
    s.stats
        .http_predictions
        .fetch_add(req.rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if serving.model.task() == crate::ingest::decode::Task::Regression {
        return Ok(Json(PredictAnswer::Regression(RegressionResponse {
            pipeline: name,
            model_version: serving.version,
            predictions: proba
                .into_iter()
                .enumerate()
                .map(|(i, prediction)| RowValue {
                    prediction,
                    scores: field(i).into(),
                })
                .collect(),
        })));
    }
    let classes = serving.model.classes();
    let predictions = proba
        .chunks_exact(classes.len())
        .enumerate()
        .map(|(i, row)| RowPrediction {
            label: classes[crate::learn::logistic::argmax_rows(row, classes.len())[0]].clone(),
            probabilities: classes.iter().cloned().zip(row.iter().copied()).collect(),
            scores: field(i).into(),
        })
        .collect();
    Ok(Json(PredictAnswer::Classification(PredictResponse {
        pipeline: name,
        model_version: serving.version,
        predictions,
        constant: crate::learn::online::export::is_constant(&serving.card),
    })))
}

async fn models(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !s.registry.has(&name) {
        return Err(ApiError::UnknownPipeline(name));
    }
    let (store, registry, pipeline) = (s.store.clone(), s.registry.clone(), name.clone());
    let cards = tokio::task::spawn_blocking(move || registry.cards(&store, &pipeline))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let current = s.registry.get(&name);
    let serving = current.as_ref().map(|m| m.version);
    let engine = current.as_ref().map(|m| m.model.engine());
    Ok(Json(
        json!({ "pipeline": name, "serving_version": serving, "engine": engine, "models": cards }),
    ))
}

/// `PUT /v1/pipelines/{name}/models`: the body is read up to
/// `[models] max_bytes` (413 beyond), its SHA-256 checked against the
/// `x-sha256` header or `sha256` query parameter (400), then the model is
/// checked and stored, not served ([`crate::serve::intake::import`]): 201
/// with `"created": true`; or, when its bytes equal a stored version's of
/// the pipeline, 200 with `"created": false` naming that version, and
/// nothing is stored.
async fn upload_model(
    State(s): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path(name): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    use crate::serve::intake::{self, IntakeError, Source};
    let cfg = s
        .pipelines
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| ApiError::UnknownPipeline(name.clone()))?;
    let limit = s.models.max_bytes;
    let refuse = |e: IntakeError| -> Result<(StatusCode, Json<Value>), ApiError> {
        intake::count(&s.stats, &name, Source::Upload, Err(&e));
        Err(e.into())
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(bytes) = declared.filter(|b| *b > limit) {
        return refuse(IntakeError::Oversized { bytes, limit });
    }
    let bytes = match read_body(body, usize::try_from(limit).unwrap_or(usize::MAX), s.body).await {
        Ok(b) => b.to_vec(),
        Err(ApiError::BodyTooLarge(_)) => {
            return refuse(IntakeError::Oversized {
                bytes: declared.unwrap_or(limit + 1),
                limit,
            })
        }
        Err(e) => return Err(e),
    };
    let claimed = headers
        .get("x-sha256")
        .and_then(|v| v.to_str().ok())
        .or(query.get("sha256").map(String::as_str));
    if let Err(e) = intake::verify_sha256(&bytes, claimed) {
        return refuse(e);
    }
    let (store, stats, options) = (s.store.clone(), s.stats.clone(), s.load_options.clone());
    let by = requester(peer);
    let intake = tokio::task::spawn_blocking(move || {
        intake::import(
            &store,
            &cfg.settings(),
            bytes,
            Source::Upload,
            None,
            limit,
            &options,
            &stats,
            &by,
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    // The same bytes as a stored version: that version, 200, nothing new.
    let status = if intake.is_new() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let card = intake.card();
    Ok((
        status,
        Json(json!({
            "pipeline": name,
            "version": card.version,
            "created": intake.is_new(),
            "serving_version": s.registry.get(&name).map(|m| m.version),
            "card": card,
        })),
    ))
}

async fn train(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !s.registry.has(&name) {
        return Err(ApiError::UnknownPipeline(name));
    }
    let card = s.learner.train_now(&name).await?;
    Ok(Json(json!(card)))
}

async fn promote(
    State(s): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let version: u32 = version
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("version `{version}` is not a number")))?;
    let (store, registry, pipeline) = (s.store.clone(), s.registry.clone(), name.clone());
    let by = requester(peer);
    let serving = tokio::task::spawn_blocking(move || {
        registry.promote_version(
            &store,
            &pipeline,
            version,
            "promote",
            "asked over the API".into(),
            &by,
        )
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(
        json!({ "pipeline": name, "serving_version": serving.version }),
    ))
}

async fn rollback(
    State(s): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !s.registry.has(&name) {
        return Err(ApiError::UnknownPipeline(name));
    }
    let (store, registry, pipeline) = (s.store.clone(), s.registry.clone(), name.clone());
    let by = requester(peer);
    let serving = tokio::task::spawn_blocking(move || registry.rollback(&store, &pipeline, &by))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(
        json!({ "pipeline": name, "serving_version": serving.version }),
    ))
}

async fn history(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !s.registry.has(&name) {
        return Err(ApiError::UnknownPipeline(name));
    }
    let events = s.registry.history(&s.store, &name)?;
    Ok(Json(
        json!({ "pipeline": name, "serving_version": s.registry.get(&name).map(|m| m.version), "events": events }),
    ))
}

async fn drift(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cfg = s
        .pipelines
        .iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| ApiError::UnknownPipeline(name.clone()))?;
    let concept = s
        .drift
        .lock()
        .ok()
        .and_then(|b| b.get(&name).cloned())
        .unwrap_or_default();
    let serving = s.registry.get(&name);
    let store = s.store.clone();
    let last_seq = serving.as_ref().and_then(|m| m.card.last_seq);
    let data = tokio::task::spawn_blocking(move || -> Result<Value, crate::store::StoreError> {
        let Some(last_seq) = last_seq else {
            return Ok(json!({ "message": "no serving version with a known training range yet" }));
        };
        let d = &cfg.drift;
        let report = crate::monitor::data_drift::against_training(
            &store,
            &cfg.name,
            &cfg.features,
            last_seq,
            d.window,
            d.reference,
            &d.data_drift(),
        )?;
        Ok(json!({
            "reference_samples": report.reference_samples,
            "current_samples": report.current_samples,
            "rule": report.rule,
            "drifted": report.drifted(),
            "features": report.features,
        }))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({
        "pipeline": name,
        "serving_version": serving.map(|m| m.version),
        "data": data,
        "concept": concept,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// hyper's answer to a URI over its limit, byte for byte.
    const HYPER_414: &[u8] =
        b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";

    fn split(answer: &[u8]) -> (String, Value) {
        let end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(answer[..end].to_vec()).unwrap();
        let body = serde_json::from_slice(&answer[end + 4..]).unwrap();
        (head, body)
    }

    #[test]
    fn hyper_answers_become_json() {
        let (head, body) = split(&hyper_error_as_json(HYPER_414).unwrap());
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT"));
        assert!(head.contains("\r\ncontent-type: application/json"));
        let len = body.to_string().len();
        assert!(
            head.ends_with(&format!("\r\ncontent-length: {len}")),
            "{head}"
        );
        assert!(!head.contains("content-length: 0"));
        assert_eq!(body["error"], "URI too long: at most 65534 bytes");
        for status in ["400 Bad Request", "431 Request Header Fields Too Large"] {
            let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            let (_, body) = split(&hyper_error_as_json(answer.as_bytes()).unwrap());
            assert!(body["error"].is_string(), "{status}");
        }
        // Anything else is left alone: other statuses, answers with a body
        // or a content type, a head split or followed by other bytes.
        for other in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 414 URI Too Long\r\n",
            b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK",
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            b"{\"error\": \"HTTP/1.1 400 \"}",
        ] {
            assert_eq!(
                hyper_error_as_json(other),
                None,
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    /// Through a pipe that takes 7 bytes at a time: the rewritten answer is
    /// written whole, the other bytes unchanged, in order.
    #[tokio::test]
    async fn the_connection_rewrites_only_hyper_answers() {
        let (near, mut far) = tokio::io::duplex(7);
        let mut io = JsonErrorIo::new(near);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .await
            .unwrap();
        io.write_all(HYPER_414).await.unwrap();
        io.flush().await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let all = reader.await.unwrap();
        let first = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(&all[..first.len()], first);
        assert_eq!(&all[first.len()..], hyper_error_as_json(HYPER_414).unwrap());
    }

    #[tokio::test]
    async fn axum_rejections_become_json() {
        use axum::http::header::{ALLOW, CONTENT_TYPE};
        let plain = (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Failed to buffer the request body",
        )
            .into_response();
        let r = json_errors(plain).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"error": "Failed to buffer the request body"}));

        let empty = (StatusCode::METHOD_NOT_ALLOWED, [(ALLOW, "POST")]).into_response();
        let r = json_errors(empty).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "POST");
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, json!({"error": "method not allowed"}));

        // Already JSON, or not an error: unchanged.
        let api = ApiError::Conflict("busy".into()).into_response();
        let r = json_errors(api).await;
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], br#"{"error":"busy"}"#);
        let ok = json_errors("fine".into_response()).await;
        let body = axum::body::to_bytes(ok.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"fine");
    }
}
