//! The dashboard: `GET /`, a page compiled into the binary (HTML, CSS, JS
//! and the vendored uPlot 1.6.32, MIT, `assets/vendor/uplot/`), and the JSON
//! endpoints it reads, which any client may read too.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/` | the page (`assets/dashboard/index.html`) |
//! | GET | `/assets/{file}` | its script and style, uPlot and uPlot's licence |
//! | GET | `/v1/series/ingest` | `{"step_ms", "capacity", "t_ms": [..], "totals": {column: [..]}, "per_second": {"received"\|"stored"\|"rejected"\|"predictions": [null, ..]}}`: cumulative counters over time ([`crate::monitor::series::INGEST_COLUMNS`]) and the rates between points |
//! | GET | `/v1/pipelines/{name}/series` | `{"pipeline", "task", "serving_version", "step_ms", "capacity", "t_ms", "version", "scored", "correct", "accuracy", "window_accuracy", "mean_abs_error", "events", "alarms", "anomaly"}`: each served version's live tally over time, the timeline (promotions, rollbacks, refusals, drift alarms), the detector's alarms, and the anomaly scores (`null` when the pipeline does not score; else `{"t_ms", "scored", "alarms"}` totals and, between points, `"mean_score"` and `"alarm_share"`) |
//! | GET | `/v1/pipelines/{name}/versions` | `{"pipeline", "serving_version", "versions": [..]}`: one entry per stored version, the measures of the model cards side by side |
//! | GET | `/v1/predictions` | `{"capacity", "predictions": [{"topic", …message}]}`: the newest predictions handed to the outbox, newest first |
//!
//! The page holds no data: it is served to anyone who can reach the port,
//! like `GET /healthz`, because a browser cannot send a bearer token when it
//! navigates. Everything it shows comes from the JSON endpoints, which follow
//! `http.auth` as every other GET does ([`super::access`]); on a 401 the page
//! asks for the token (or takes it from a `#token=` fragment), keeps it in
//! the tab's `sessionStorage` and sends it as `Authorization: Bearer`.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::monitor::series::{SeriesBook, ACCURACY_COLUMNS, ANOMALY_COLUMNS, INGEST_COLUMNS};
use crate::serve::predictions::RecentPredictions;

/// What the dashboard reads besides the other handlers' state.
#[derive(Debug, Clone, Default)]
pub struct Dashboard {
    /// Ingest counters and live tallies over time.
    pub series: SeriesBook,
    /// The newest predictions.
    pub predictions: RecentPredictions,
}

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard/dashboard.css");
const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../../assets/vendor/uplot/LICENSE");

/// The static files: path under `/assets/`, content type, content.
pub const ASSETS: [(&str, &str, &str); 5] = [
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        DASHBOARD_JS,
    ),
    ("dashboard.css", "text/css; charset=utf-8", DASHBOARD_CSS),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        UPLOT_JS,
    ),
    ("uPlot.min.css", "text/css; charset=utf-8", UPLOT_CSS),
    (
        "uPlot-LICENSE.txt",
        "text/plain; charset=utf-8",
        UPLOT_LICENSE,
    ),
];

/// Bytes the page adds to the binary: the HTML and every asset.
pub fn page_bytes() -> usize {
    INDEX_HTML.len() + ASSETS.iter().map(|(_, _, c)| c.len()).sum::<usize>()
}

/// Whether `path` is the page or one of its files, served without a token
/// ([`super::access::Access::guards`]): they hold no data.
pub fn is_page(path: &str) -> bool {
    path == "/"
        || path
            .strip_prefix("/assets/")
            .is_some_and(|f| ASSETS.iter().any(|(name, _, _)| *name == f))
}

pub(super) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

pub(super) async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, kind, content)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *content,
        )
            .into_response(),
        None => ApiError::NotFound(format!("no asset `{file}`")).into_response(),
    }
}

/// JSON numbers for the plots: NaN and infinities become `null`.
fn nums(v: impl IntoIterator<Item = f64>) -> Vec<Option<f64>> {
    v.into_iter().map(|x| x.is_finite().then_some(x)).collect()
}

/// `(b − a) / seconds` between consecutive points, `null` first (and where
/// time did not advance).
fn per_second(t_ms: &[i64], values: &[f64]) -> Vec<Option<f64>> {
    let mut out = vec![None; values.len().min(1)];
    for i in 1..values.len() {
        let dt = (t_ms[i] - t_ms[i - 1]) as f64 / 1000.0;
        let dv = values[i] - values[i - 1];
        out.push((dt > 0.0 && dv.is_finite()).then(|| dv.max(0.0) / dt));
    }
    out
}

pub(super) async fn ingest_series(State(s): State<AppState>) -> Json<Value> {
    let series = s.dashboard.series.ingest();
    let t_ms: Vec<i64> = series.points.iter().map(|p| p.t_ms).collect();
    let mut totals = serde_json::Map::new();
    for (i, name) in INGEST_COLUMNS.iter().enumerate() {
        totals.insert((*name).into(), json!(nums(series.column(i))));
    }
    let mut rates = serde_json::Map::new();
    for name in ["received", "stored", "rejected", "predictions"] {
        let i = INGEST_COLUMNS.iter().position(|c| *c == name).unwrap_or(0);
        rates.insert(name.into(), json!(per_second(&t_ms, &series.column(i))));
    }
    Json(json!({
        "step_ms": series.step_ms,
        "capacity": series.capacity,
        "columns": INGEST_COLUMNS,
        "t_ms": t_ms,
        "totals": totals,
        "per_second": rates,
    }))
}

pub(super) async fn pipeline_series(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cfg = s
        .pipelines
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::UnknownPipeline(name.clone()))?;
    let classification = cfg.task == crate::ingest::decode::Task::Classification;
    let series = s.dashboard.series.accuracy(&name);
    let col = |c: &str| series.column(ACCURACY_COLUMNS.iter().position(|x| *x == c).unwrap_or(0));
    let (version, scored, correct, errors) = (
        col("version"),
        col("scored"),
        col("correct"),
        col("error_sum"),
    );
    let mut accuracy = Vec::new();
    let mut window = Vec::new();
    let mut mae = Vec::new();
    for i in 0..series.points.len() {
        let cumulative = (scored[i] > 0.0).then(|| correct[i] / scored[i]);
        // Since the previous point of the same version (the version's
        // first point: since it started serving).
        let (ds, dc) = match i.checked_sub(1).filter(|&j| version[j] == version[i]) {
            Some(j) => (scored[i] - scored[j], correct[i] - correct[j]),
            None => (scored[i], correct[i]),
        };
        let windowed = (ds > 0.0).then(|| dc / ds);
        if classification {
            accuracy.push(cumulative);
            window.push(windowed.or(cumulative));
            mae.push(None);
        } else {
            accuracy.push(None);
            window.push(None);
            mae.push((scored[i] > 0.0).then(|| errors[i] / scored[i]));
        }
    }
    let (store, registry, pipeline) = (s.store.clone(), s.registry.clone(), name.clone());
    let events = tokio::task::spawn_blocking(move || registry.history(&store, &pipeline))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let alarms = s
        .drift
        .lock()
        .ok()
        .and_then(|b| b.get(&name).map(|c| c.alarms.clone()))
        .unwrap_or_default();
    Ok(Json(json!({
        "pipeline": name,
        "task": cfg.task,
        "serving_version": s.registry.get(&name).map(|m| m.version),
        "step_ms": series.step_ms,
        "capacity": series.capacity,
        "t_ms": series.points.iter().map(|p| p.t_ms).collect::<Vec<_>>(),
        "version": version.iter().map(|v| *v as u32).collect::<Vec<_>>(),
        "scored": scored.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        "correct": correct.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        "accuracy": accuracy,
        "window_accuracy": window,
        "mean_abs_error": mae,
        "events": events,
        "alarms": alarms,
        "anomaly": s.dashboard.series.anomaly(&name).map(|a| anomaly_json(&a)),
    })))
}

/// A pipeline's anomaly series for the page: the totals, and between
/// consecutive points the mean score and the share of readings that
/// alarmed (`null` first, and where nothing was scored in between).
fn anomaly_json(series: &crate::monitor::series::Series) -> Value {
    let col = |c: &str| series.column(ANOMALY_COLUMNS.iter().position(|x| *x == c).unwrap_or(0));
    let (scored, sums, alarms) = (col("scored"), col("score_sum"), col("alarms"));
    let mut mean_score = vec![None; scored.len().min(1)];
    let mut alarm_share = mean_score.clone();
    for i in 1..scored.len() {
        let n = scored[i] - scored[i - 1];
        mean_score.push((n > 0.0).then(|| (sums[i] - sums[i - 1]) / n));
        alarm_share.push((n > 0.0).then(|| (alarms[i] - alarms[i - 1]) / n));
    }
    json!({
        "t_ms": series.points.iter().map(|p| p.t_ms).collect::<Vec<_>>(),
        "scored": scored.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        "alarms": alarms.iter().map(|v| *v as u64).collect::<Vec<_>>(),
        "mean_score": nums(mean_score.into_iter().map(|v| v.unwrap_or(f64::NAN))),
        "alarm_share": nums(alarm_share.into_iter().map(|v| v.unwrap_or(f64::NAN))),
    })
}

pub(super) async fn versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !s.registry.has(&name) {
        return Err(ApiError::UnknownPipeline(name));
    }
    let (store, registry, pipeline) = (s.store.clone(), s.registry.clone(), name.clone());
    let cards = tokio::task::spawn_blocking(move || registry.cards(&store, &pipeline))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let serving = s.registry.get(&name).map(|m| m.version);
    let versions: Vec<Value> = cards
        .iter()
        .map(|c| {
            let h = c.holdout.as_ref();
            json!({
                "version": c.version,
                "serving": Some(c.version) == serving,
                "family": c.family,
                "trigger": c.trigger,
                "created_at_ms": c.created_at_ms,
                "imported": c.imported.is_some(),
                "metric": c.metric,
                "holdout_score": c.holdout_score,
                "accuracy": h.map(|m| m.accuracy),
                "precision": h.map(|m| m.precision_macro),
                "recall": h.map(|m| m.recall_macro),
                "f1": h.map(|m| m.f1_macro),
                "regression": c.holdout_regression,
                "training_ms": c.training_ms,
                "n_samples": c.n_samples,
                "n_train": c.n_train,
                "n_holdout": c.n_holdout,
                "class_composition": c.class_composition_train,
                "predict_p50_us": c.predict_p50_us,
                "predict_batch_p50_us_per_row": c.predict_batch_p50_us_per_row,
                "augmentation": c.augmentation,
                "live": c.live,
                "confusion": h.map(|m| json!({ "labels": m.labels, "matrix": m.confusion })),
                "decision": c.decision,
            })
        })
        .collect();
    Ok(Json(json!({
        "pipeline": name,
        "serving_version": serving,
        "versions": versions,
    })))
}

pub(super) async fn predictions(
    State(s): State<AppState>,
    Query(query): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    let pipeline = query.get("pipeline");
    if let Some(p) = pipeline.filter(|p| !s.registry.has(p)) {
        return ApiError::UnknownPipeline(p.clone()).into_response();
    }
    let out: Vec<Value> = s
        .dashboard
        .predictions
        .newest_first()
        .into_iter()
        .filter_map(|(topic, payload)| {
            let mut v: Value = serde_json::from_slice(&payload).ok()?;
            if pipeline.is_some_and(|p| v["pipeline"].as_str() != Some(p.as_str())) {
                return None;
            }
            v.as_object_mut()?
                .insert("topic".into(), Value::String(topic));
            Some(v)
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({ "capacity": RecentPredictions::CAPACITY, "predictions": out })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpAuth;
    use axum::http::Method;

    #[test]
    fn the_page_is_open_and_its_data_follows_the_token() {
        let token = Some("a-token-of-16-chars-at-least");
        let all = super::super::access::Access::new(token, HttpAuth::All, Default::default());
        let writes = super::super::access::Access::new(token, HttpAuth::Writes, Default::default());
        for page in ["/", "/assets/dashboard.js", "/assets/uPlot.iife.min.js"] {
            assert!(!all.guards(&Method::GET, page), "{page}");
            assert!(!writes.guards(&Method::GET, page), "{page}");
        }
        for data in [
            "/v1/series/ingest",
            "/v1/pipelines/occupancy/series",
            "/v1/pipelines/occupancy/versions",
            "/v1/predictions",
            "/assets/../v1/stats",
            "/assets/other.js",
        ] {
            assert!(all.guards(&Method::GET, data), "{data}");
            assert!(!writes.guards(&Method::GET, data), "{data}");
        }
        assert!(page_bytes() < 300 * 1024);
    }

    #[test]
    fn rates_are_differences_over_seconds() {
        let r = per_second(&[0, 2000, 4000, 4000], &[0.0, 10.0, 10.0, 12.0]);
        assert_eq!(r, vec![None, Some(5.0), Some(0.0), None]);
        assert_eq!(per_second(&[], &[]), Vec::<Option<f64>>::new());
        assert_eq!(nums([1.0, f64::NAN]), vec![Some(1.0), None]);
    }
}
