//! Model intake: ONNX models brought from elsewhere (an upload with
//! `PUT /v1/pipelines/{name}/models`, or a file dropped into the pipeline's
//! models directory) are checked, registered as a new stored version, and
//! served only once promoted (`POST /v1/pipelines/{name}/models/{version}/promote`
//! or `edgeloop models promote`).
//!
//! The checks, in order, each refusal with its own [`IntakeError`] reason:
//! 1. size within `[models] max_bytes` (`oversized`);
//! 2. (uploads) the SHA-256 the client sent matches the bytes (`bad_sha256`);
//! 3. the bytes are an ONNX `ModelProto` (`truncated` when a protobuf field
//!    runs past the end of the file, `not_onnx` otherwise) whose weights are
//!    inside it (`external_data`: an upload is one file; a file of the models
//!    directory has its external-data files read from beside it);
//! 4. the default operator set (`ai.onnx`) is no newer than the engine
//!    implements (`unsupported_opset`: tract 21, [`crate::onnx::engine::TRACT_MAX_OPSET`];
//!    onnxruntime refuses a newer one itself, `engine_refused`, naming its
//!    limit) and every operator is one the engine implements
//!    (`unsupported_operator`);
//! 5. the declared input width and the feature names and order equal the
//!    pipeline's schema (`wrong_width`, `feature_order`), as do the task and
//!    classes (`wrong_task`, `wrong_classes`);
//! 6. the engine loads it and a probe run on a batch of rows gives the
//!    expected shape: `[N, n_classes]` probabilities (finite, in [0, 1],
//!    rows summing to 1 ± 1e-3) for a classifier, `[N, 1]` for a regressor
//!    (`engine_refused`, `bad_output`).
//!
//! A refusal never changes what serves. The single loader call is
//! [`check_model`]'s `load`; it is where a loader for foreign graphs plugs in.
//!
//! The models directory (`[models] dir`) holds one sub-directory per
//! pipeline, polled every `poll_ms`: a file is taken once its size and
//! modification time are the same on two polls in a row (or when it was
//! written as `*.tmp` and renamed: `*.tmp` files are never taken), then moved
//! to `accepted/` or `refused/` beside a `<file>.reason` text file saying
//! what happened.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tract_onnx::pb;

use super::engine::{Contract, LoadOptions, ModelError, OnnxModel};
use super::registry::ServingEvent;
use crate::learn::card::ModelCard;
use crate::learn::PipelineSettings;
use crate::learn::{Task, Trigger};
use crate::stats::Stats;
use crate::store::{Store, StoredModel};

/// `[models]`: intake of ONNX models brought from elsewhere (upload with
/// `PUT /v1/pipelines/{name}/models`, or the models directory); see
/// [`crate::serve::intake`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Directory watched for model files, one sub-directory per pipeline
    /// (`<dir>/<pipeline>/*.onnx`); empty: no watching.
    pub dir: PathBuf,
    /// Polling period of the directory, milliseconds.
    pub poll_ms: u64,
    /// Largest model accepted (upload body or file), bytes.
    pub max_bytes: u64,
    /// Versions of each pipeline whose model (ONNX and parameters) is
    /// kept: the newest this many, plus the serving one and the newest this
    /// many that served, stood by or were imported; older versions keep
    /// their card only ([`crate::serve::registry::Registry::prune`]). 0
    /// keeps every model (the store then grows with every training and
    /// every online snapshot).
    pub keep_versions: usize,
    /// Versions of each pipeline whose card (and live tally) is kept once
    /// their model was dropped: the newest this many; older ones leave no
    /// trace but the timeline's events. Every card read
    /// ([`crate::serve::registry::Registry::cards`]: `GET …/models`, the
    /// dashboard, the fleet's known check) reads them all, and an online
    /// learner makes a version a minute. Applied with `keep_versions` (0
    /// there keeps every card too); 0 here: every card.
    pub keep_cards: usize,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            poll_ms: 2000,
            max_bytes: 32 * 1024 * 1024,
            keep_versions: 50,
            keep_cards: 1000,
        }
    }
}

pub use crate::learn::card::{Imported, Source};

/// Why a model was refused. [`IntakeError::reason`] names the kind (the
/// stats key); the message says what was found.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("pipeline `{0}` is not configured")]
    UnknownPipeline(String),
    #[error(
        "oversized: the model is {bytes} bytes; at most {limit} are accepted ([models] max_bytes)"
    )]
    Oversized { bytes: u64, limit: u64 },
    #[error("bad sha256: {0}")]
    BadSha256(String),
    #[error("truncated: the file ends inside a protobuf field ({0}); was the copy complete?")]
    Truncated(String),
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    #[error("unsupported operator: {0}")]
    UnsupportedOperator(String),
    /// The model imports a newer default operator set than the engine
    /// implements.
    #[error("unsupported opset: {0}")]
    UnsupportedOpset(String),
    #[error("wrong input width: the model takes {model} features, pipeline `{pipeline}` has {expected} ({features:?})")]
    WrongWidth {
        pipeline: String,
        model: usize,
        expected: usize,
        features: Vec<String>,
    },
    #[error("feature order: the model takes {model:?}, pipeline `{pipeline}` sends {expected:?}")]
    FeatureOrder {
        pipeline: String,
        model: Vec<String>,
        expected: Vec<String>,
    },
    #[error("wrong task: the model is a {model} model, pipeline `{pipeline}` does {expected}")]
    WrongTask {
        pipeline: String,
        model: Task,
        expected: Task,
    },
    #[error("wrong classes: the model predicts {model:?}, pipeline `{pipeline}` has {expected:?}")]
    WrongClasses {
        pipeline: String,
        model: Vec<String>,
        expected: Vec<String>,
    },
    #[error("external data: {0}")]
    ExternalData(String),
    #[error("engine refused the model: {0}")]
    EngineRefused(String),
    #[error("bad output: {0}")]
    BadOutput(String),
    #[error("store: {0}")]
    Store(String),
    /// The store's file system is full (ENOSPC on the write).
    #[error("store: the file system is full; free space and retry: {0}")]
    StoreFull(String),
}

impl IntakeError {
    /// Every reason, in the order the stats list them.
    pub const REASONS: [&'static str; 15] = crate::stats::MODEL_REFUSAL_REASONS;

    /// The kind of refusal (low-cardinality stats key).
    pub fn reason(&self) -> &'static str {
        match self {
            IntakeError::UnknownPipeline(_) => "unknown_pipeline",
            IntakeError::Oversized { .. } => "oversized",
            IntakeError::BadSha256(_) => "bad_sha256",
            IntakeError::Truncated(_) => "truncated",
            IntakeError::NotOnnx(_) => "not_onnx",
            IntakeError::UnsupportedOperator(_) => "unsupported_operator",
            IntakeError::UnsupportedOpset(_) => "unsupported_opset",
            IntakeError::WrongWidth { .. } => "wrong_width",
            IntakeError::FeatureOrder { .. } => "feature_order",
            IntakeError::WrongTask { .. } => "wrong_task",
            IntakeError::WrongClasses { .. } => "wrong_classes",
            IntakeError::ExternalData(_) => "external_data",
            IntakeError::EngineRefused(_) => "engine_refused",
            IntakeError::BadOutput(_) => "bad_output",
            IntakeError::Store(_) | IntakeError::StoreFull(_) => "store",
        }
    }
}

/// Rows of the probe run.
const PROBE_ROWS: usize = 8;

/// Checks `onnx` against `pipeline`'s schema (steps 3 to 6 of the module
/// docs) and returns the loaded model.
///
/// # Errors
/// The first check that fails, as an [`IntakeError`].
pub fn check_model(
    onnx: &[u8],
    pipeline: &PipelineSettings,
    options: &LoadOptions,
) -> Result<OnnxModel, IntakeError> {
    let proto = decode(onnx)?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| IntakeError::NotOnnx("the ModelProto has no graph".into()))?;
    if proto.opset_import.is_empty() || graph.node.is_empty() {
        return Err(IntakeError::NotOnnx(
            "no operator set or no node: not a model graph".into(),
        ));
    }
    // An upload is one file: weights kept in external-data files are not
    // here (the models directory reads them from beside the file first).
    if let Err(ModelError::ExternalData(m)) = super::engine::inline_external_data(onnx, None) {
        return Err(IntakeError::ExternalData(m));
    }
    let features = pipeline.model_features();
    // The declared input width, when the graph states it.
    let declared = graph
        .input
        .iter()
        .find(|i| !graph.initializer.iter().any(|t| t.name == i.name))
        .and_then(|i| {
            let pb::type_proto::Value::TensorType(t) = i.r#type.as_ref()?.value.as_ref()?;
            t.shape.as_ref()?.dim.last().cloned()
        })
        .and_then(|d| match d.value? {
            pb::tensor_shape_proto::dimension::Value::DimValue(v) => usize::try_from(v).ok(),
            _ => None,
        });
    if let Some(width) = declared.filter(|w| *w != features.len()) {
        return Err(wrong_width(pipeline, width, &features));
    }
    let model = load(onnx, pipeline, &features, options)?;
    if model.features().len() != features.len() {
        return Err(wrong_width(pipeline, model.features().len(), &features));
    }
    if model.features() != features.as_slice() {
        return Err(IntakeError::FeatureOrder {
            pipeline: pipeline.name.clone(),
            model: model.features().to_vec(),
            expected: features,
        });
    }
    if model.task() != pipeline.task {
        return Err(IntakeError::WrongTask {
            pipeline: pipeline.name.clone(),
            model: model.task(),
            expected: pipeline.task,
        });
    }
    let sorted = |c: &[String]| {
        let mut c = c.to_vec();
        c.sort();
        c
    };
    // The same classes, in any order: predictions name each class.
    if pipeline.task == Task::Classification
        && !pipeline.classes.is_empty()
        && sorted(model.classes()) != sorted(&pipeline.classes)
    {
        return Err(IntakeError::WrongClasses {
            pipeline: pipeline.name.clone(),
            model: model.classes().to_vec(),
            expected: pipeline.classes.clone(),
        });
    }
    probe(&model, features.len())?;
    Ok(model)
}

/// The one loader call, on the pipeline's engine: a file with edgeloop's
/// metadata (classes, features, task) as it says; a foreign graph
/// (skl2onnx, onnxmltools, `torch.onnx`) adopted by the pipeline's contract
/// ([`OnnxModel::load_for`]).
fn load(
    onnx: &[u8],
    pipeline: &PipelineSettings,
    features: &[String],
    options: &LoadOptions,
) -> Result<OnnxModel, IntakeError> {
    let contract = Contract {
        task: pipeline.task,
        classes: pipeline.classes.clone(),
        features: features.to_vec(),
    };
    OnnxModel::load_for(onnx, Some(&contract), pipeline.engine, options).map_err(|e| match e {
        ModelError::UnsupportedOperator { .. } => IntakeError::UnsupportedOperator(e.to_string()),
        ModelError::UnsupportedOpset { .. } => IntakeError::UnsupportedOpset(e.to_string()),
        ModelError::WrongClasses { model, expected } => IntakeError::WrongClasses {
            pipeline: pipeline.name.clone(),
            model,
            expected,
        },
        ModelError::ExternalData(m) => IntakeError::ExternalData(m),
        e => IntakeError::EngineRefused(e.to_string()),
    })
}

fn wrong_width(pipeline: &PipelineSettings, model: usize, features: &[String]) -> IntakeError {
    IntakeError::WrongWidth {
        pipeline: pipeline.name.clone(),
        model,
        expected: features.len(),
        features: features.to_vec(),
    }
}

/// Runs `PROBE_ROWS` rows (zeros, ones, a ramp) and checks the output's
/// shape and, for a classifier, that each row is a probability vector.
fn probe(model: &OnnxModel, n_features: usize) -> Result<(), IntakeError> {
    let x: Vec<f32> = (0..PROBE_ROWS * n_features)
        .map(|i| match i / n_features {
            0 => 0.0,
            1 => 1.0,
            r => (r * n_features + i % n_features) as f32 * 0.5,
        })
        .collect();
    let out = model
        .predict_proba(&x)
        .map_err(|e| IntakeError::BadOutput(format!("probe run failed: {e}")))?;
    let width = match model.task() {
        Task::Classification => model.classes().len(),
        Task::Regression => 1,
    };
    if out.len() != PROBE_ROWS * width {
        return Err(IntakeError::BadOutput(format!(
            "{PROBE_ROWS} probe rows gave {} values; expected [{PROBE_ROWS}, {width}]",
            out.len()
        )));
    }
    if model.task() == Task::Classification {
        for (r, row) in out.chunks_exact(width).enumerate() {
            let sum: f32 = row.iter().sum();
            if row
                .iter()
                .any(|p| !p.is_finite() || !(0.0..=1.0).contains(p))
                || (sum - 1.0).abs() > 1e-3
            {
                return Err(IntakeError::BadOutput(format!(
                    "probe row {r}: {row:?} are not probabilities (sum {sum})"
                )));
            }
        }
    }
    Ok(())
}

/// Decodes a `ModelProto`; a failure is classified by walking the top-level
/// protobuf fields (<https://protobuf.dev/programming-guides/encoding/>):
/// a length-delimited field running past the end is a truncated file, an
/// unknown field number or wire type is not ONNX.
fn decode(onnx: &[u8]) -> Result<pb::ModelProto, IntakeError> {
    if onnx.is_empty() {
        return Err(IntakeError::NotOnnx("the file is empty".into()));
    }
    match pb::ModelProto::decode(onnx) {
        Ok(m) => Ok(m),
        Err(e) => Err(match walk_top_level(onnx) {
            Walk::Truncated(at) => IntakeError::Truncated(format!(
                "a field at byte {at} of {} runs past the end; prost: {e}",
                onnx.len()
            )),
            Walk::Foreign(why) => IntakeError::NotOnnx(format!("{why}; prost: {e}")),
            Walk::Whole => IntakeError::NotOnnx(format!("prost: {e}")),
        }),
    }
}

enum Walk {
    Truncated(usize),
    Foreign(String),
    Whole,
}

/// Top-level fields of `onnx.proto`'s `ModelProto` and their wire types
/// (0 varint, 2 length-delimited).
fn model_field_wire_type(field: u64) -> Option<u64> {
    match field {
        1 | 5 => Some(0),
        2 | 3 | 4 | 6 | 7 | 8 | 14 | 20 | 25 => Some(2),
        _ => None,
    }
}

fn walk_top_level(bytes: &[u8]) -> Walk {
    fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let Some(key) = varint(bytes, &mut at) else {
            return Walk::Truncated(start);
        };
        let (field, wire) = (key >> 3, key & 7);
        if model_field_wire_type(field) != Some(wire) {
            return Walk::Foreign(format!(
                "byte {start}: field {field} with wire type {wire} is not part of an ONNX ModelProto"
            ));
        }
        if wire == 0 {
            if varint(bytes, &mut at).is_none() {
                return Walk::Truncated(start);
            }
        } else {
            let Some(len) = varint(bytes, &mut at) else {
                return Walk::Truncated(start);
            };
            match at.checked_add(len as usize) {
                Some(end) if end <= bytes.len() => at = end,
                _ => return Walk::Truncated(start),
            }
        }
    }
    Walk::Whole
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks that `claimed` (64 hex digits, any case) is the SHA-256 of `bytes`.
///
/// # Errors
/// [`IntakeError::BadSha256`] when it is missing, malformed or different.
pub fn verify_sha256(bytes: &[u8], claimed: Option<&str>) -> Result<String, IntakeError> {
    let claimed = claimed
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            IntakeError::BadSha256(
                "missing: send the file's SHA-256 as header `x-sha256` or query `?sha256=`".into(),
            )
        })?;
    if claimed.len() != 64 || !claimed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(IntakeError::BadSha256(format!(
            "`{claimed}` is not 64 hexadecimal digits"
        )));
    }
    let actual = sha256_hex(bytes);
    if !claimed.eq_ignore_ascii_case(&actual) {
        return Err(IntakeError::BadSha256(format!(
            "mismatch: sent {claimed}, the {} bytes received hash to {actual}",
            bytes.len()
        )));
    }
    Ok(actual)
}

/// What [`import`] did with a model that passed the checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Intake {
    /// Stored as a new version (its card).
    Stored(ModelCard),
    /// Its bytes equal a version of the pipeline already stored (that
    /// version's card): nothing new was stored.
    Existing(ModelCard),
}

impl Intake {
    /// The card of the version that holds the model.
    pub fn card(&self) -> &ModelCard {
        match self {
            Intake::Stored(c) | Intake::Existing(c) => c,
        }
    }

    /// Whether a new version was stored.
    pub fn is_new(&self) -> bool {
        matches!(self, Intake::Stored(_))
    }
}

/// Checks `onnx` and stores it as the next version of `pipeline`, not
/// serving; the timeline gets an `imported` event in the same commit. A
/// model whose bytes equal a stored version's of the pipeline (imported or
/// trained, its model not dropped by `keep_versions`) is not stored again:
/// [`Intake::Existing`] names that version. The outcome is counted in
/// `stats` (an existing version is not counted as imported) and logged.
///
/// # Errors
/// An [`IntakeError`]; then nothing was stored.
pub fn import(
    store: &Store,
    pipeline: &PipelineSettings,
    onnx: Vec<u8>,
    source: Source,
    file_name: Option<String>,
    max_bytes: u64,
    options: &LoadOptions,
    stats: &Stats,
    by: &str,
) -> Result<Intake, IntakeError> {
    let result = import_inner(
        store, pipeline, onnx, source, file_name, max_bytes, options, by,
    );
    match &result {
        Ok(Intake::Existing(card)) => tracing::info!(
            pipeline = %pipeline.name,
            ?source,
            version = card.version,
            "Model already stored; nothing imported."
        ),
        Ok(Intake::Stored(card)) => count(stats, &pipeline.name, source, Ok(card)),
        Err(e) => count(stats, &pipeline.name, source, Err(e)),
    }
    result
}

/// The stored version of `pipeline` whose ONNX bytes equal `onnx` (the
/// oldest, if several), with its card. Only versions whose card gives the
/// same size are read.
///
/// # Errors
/// [`IntakeError::Store`] on a read failure.
pub fn stored_version(
    store: &Store,
    pipeline: &str,
    onnx: &[u8],
) -> Result<Option<ModelCard>, IntakeError> {
    let store_err = |e: crate::store::StoreError| IntakeError::Store(e.to_string());
    for (version, json) in store.model_cards(pipeline).map_err(store_err)? {
        let Ok(card) = serde_json::from_str::<ModelCard>(&json) else {
            continue;
        };
        if card.onnx_bytes != onnx.len() as u64 {
            continue;
        }
        if let Some(stored) = store.get_model(pipeline, version).map_err(store_err)? {
            if stored.onnx == onnx {
                return Ok(Some(card));
            }
        }
    }
    Ok(None)
}

/// Counts and logs an intake outcome (also for refusals found before
/// [`import`], such as a bad checksum).
pub fn count(
    stats: &Stats,
    pipeline: &str,
    source: Source,
    result: Result<&ModelCard, &IntakeError>,
) {
    match result {
        Ok(card) => {
            stats.count_model_imported();
            tracing::info!(%pipeline, ?source, version = card.version, "Model imported; serving only once promoted.");
        }
        Err(e) => {
            stats.count_model_refused(e.reason());
            tracing::warn!(%pipeline, ?source, reason = e.reason(), error = %e, "Model refused; the current version keeps serving.");
        }
    }
}

/// Held by an import from its look for the same bytes
/// ([`stored_version`]) to its commit, so that concurrent imports of one
/// file store one version. One for the process: imports are rare, and a
/// daemon has one store.
static IMPORTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn import_inner(
    store: &Store,
    pipeline: &PipelineSettings,
    onnx: Vec<u8>,
    source: Source,
    file_name: Option<String>,
    max_bytes: u64,
    options: &LoadOptions,
    by: &str,
) -> Result<Intake, IntakeError> {
    if onnx.len() as u64 > max_bytes {
        return Err(IntakeError::Oversized {
            bytes: onnx.len() as u64,
            limit: max_bytes,
        });
    }
    let model = check_model(&onnx, pipeline, options)?;
    // Whether the bytes are new and storing them is one step: two uploads
    // of the same file at once made two versions (each looked before
    // either stored). Held from the look to the commit; the checks above,
    // the costly part, run outside it.
    let _one_at_a_time = IMPORTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(card) = stored_version(store, &pipeline.name, &onnx)? {
        return Ok(Intake::Existing(card));
    }
    let store_err = |e: crate::store::StoreError| {
        if e.is_disk_full() {
            IntakeError::StoreFull(e.to_string())
        } else {
            IntakeError::Store(e.to_string())
        }
    };
    // Numbered by the store, as the learner's versions are: a training
    // running meanwhile never gets the same number.
    let version = store
        .reserve_model_version(&pipeline.name)
        .map_err(store_err)?;
    let card = imported_card(pipeline, &model, &onnx, source, file_name, version);
    let stored = StoredModel {
        onnx,
        card_json: serde_json::to_string(&card).map_err(|e| {
            store.release_model_version(&pipeline.name, version);
            IntakeError::Store(e.to_string())
        })?,
        params_json: String::new(),
    };
    let event = ServingEvent::now(
        version,
        "imported",
        format!(
            "imported from {} (sha256 {}); serves once promoted",
            match source {
                Source::Upload => "an upload",
                Source::ModelsDir => "the models directory",
                Source::Fleet => "the fleet",
            },
            card.imported.as_ref().map_or("", |i| i.sha256.as_str())
        ),
        by,
    );
    store
        .append_event(&pipeline.name, &event.to_json(), Some((version, &stored)))
        .map_err(|e| {
            store.release_model_version(&pipeline.name, version);
            store_err(e)
        })?;
    event.log(&pipeline.name);
    Ok(Intake::Stored(card))
}

/// The card of an imported version `version` of `pipeline`: what its file
/// is (source, SHA-256, size, engine, producer), its latency on the
/// engine, its task, features and classes; trained on nothing here.
pub fn imported_card(
    pipeline: &PipelineSettings,
    model: &OnnxModel,
    onnx: &[u8],
    source: Source,
    file_name: Option<String>,
    version: u32,
) -> ModelCard {
    let (p50, batch_p50) = latency(model);
    let producer = pb::ModelProto::decode(onnx)
        .map(|m| {
            format!("{} {}", m.producer_name, m.producer_version)
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    let imported = Imported {
        source,
        file_name,
        sha256: sha256_hex(onnx),
        bytes: onnx.len() as u64,
        engine: model.engine().to_string(),
        producer,
        fleet: None,
    };
    ModelCard {
        hyperparameters: serde_json::json!({ "imported": imported }),
        onnx_bytes: onnx.len() as u64,
        predict_p50_us: Some(p50),
        predict_batch_p50_us_per_row: Some(batch_p50),
        imported: Some(imported),
        ..ModelCard::bare(
            pipeline.name.clone(),
            version,
            "imported".into(),
            model.task(),
            Trigger::Manual,
            model.features().to_vec(),
            model.classes().to_vec(),
        )
    }
}

/// Median single-row and per-row (64-row batch) latency, microseconds, over
/// 21 runs each.
fn latency(model: &OnnxModel) -> (f64, f64) {
    let nf = model.features().len();
    let median = |rows: usize| {
        let x = vec![0.5f32; rows * nf];
        let mut t: Vec<f64> = (0..21)
            .map(|_| {
                let start = Instant::now();
                let _ = model.predict_proba(&x);
                start.elapsed().as_secs_f64() * 1e6 / rows as f64
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    (median(1), median(64))
}

/// The models-directory watcher: one sub-directory per pipeline under
/// `dir`, polled every `poll`.
pub struct ModelsDirWatcher {
    pub dir: PathBuf,
    pub poll: Duration,
    pub max_bytes: u64,
    /// How models load (the onnxruntime library of `[onnxruntime]`).
    pub options: LoadOptions,
    pub pipelines: Vec<PipelineSettings>,
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
}

impl ModelsDirWatcher {
    /// Polls until `shutdown` is cancelled. Files are checked on a blocking
    /// thread, one at a time.
    ///
    /// # Errors
    /// A message when a pipeline's directory cannot be created.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), String> {
        for p in &self.pipelines {
            for sub in ["", "accepted", "refused"] {
                let d = self.dir.join(&p.name).join(sub);
                std::fs::create_dir_all(&d)
                    .map_err(|e| format!("models dir {}: {e}", d.display()))?;
            }
        }
        let mut seen: HashMap<PathBuf, (u64, Option<SystemTime>)> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.poll) => {}
            }
            let mut ready = Vec::new();
            let mut now_seen = HashMap::new();
            for p in &self.pipelines {
                let Ok(entries) = std::fs::read_dir(self.dir.join(&p.name)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let Ok(meta) = entry.metadata() else { continue };
                    // `*.data`: external data, read with the model naming it.
                    if !meta.is_file()
                        || name.starts_with('.')
                        || name.ends_with(".tmp")
                        || name.ends_with(".data")
                    {
                        continue;
                    }
                    let sig = (meta.len(), meta.modified().ok());
                    if seen.get(&path) == Some(&sig) {
                        ready.push((p.clone(), path.clone(), name));
                    } else {
                        now_seen.insert(path, sig);
                    }
                }
            }
            seen = now_seen;
            for (pipeline, path, name) in ready {
                let (store, stats, max_bytes, options) = (
                    self.store.clone(),
                    self.stats.clone(),
                    self.max_bytes,
                    self.options.clone(),
                );
                let outcome = tokio::task::spawn_blocking(move || {
                    take_file(&store, &pipeline, &path, &name, max_bytes, &options, &stats)
                })
                .await;
                if let Ok(Err(e)) = outcome {
                    tracing::warn!(error = %e, "Models directory: a file could not be moved.");
                }
            }
        }
    }
}

/// Imports one file of the models directory and moves it to `accepted/` or
/// `refused/` with its `.reason` file.
fn take_file(
    store: &Store,
    pipeline: &PipelineSettings,
    path: &Path,
    name: &str,
    max_bytes: u64,
    options: &LoadOptions,
    stats: &Stats,
) -> std::io::Result<()> {
    let len = std::fs::metadata(path)?.len();
    let result = if len > max_bytes {
        // Not read into memory.
        let e = IntakeError::Oversized {
            bytes: len,
            limit: max_bytes,
        };
        count(stats, &pipeline.name, Source::ModelsDir, Err(&e));
        Err(e)
    } else {
        let bytes = std::fs::read(path)?;
        // Weights the model keeps beside it (`model.onnx.data`) go into the
        // stored version.
        match super::engine::inline_external_data(&bytes, path.parent()) {
            Ok(bytes) => import(
                store,
                pipeline,
                bytes.into_owned(),
                Source::ModelsDir,
                Some(name.to_string()),
                max_bytes,
                options,
                stats,
                "models_dir",
            ),
            Err(ModelError::ExternalData(m)) => {
                let e = IntakeError::ExternalData(m);
                count(stats, &pipeline.name, Source::ModelsDir, Err(&e));
                Err(e)
            }
            // Not ONNX: import names it.
            Err(_) => import(
                store,
                pipeline,
                bytes,
                Source::ModelsDir,
                Some(name.to_string()),
                max_bytes,
                options,
                stats,
                "models_dir",
            ),
        }
    };
    let (sub, reason) = match &result {
        Ok(Intake::Existing(card)) => (
            "accepted",
            format!(
                "already stored as version {} of pipeline `{}`: the same bytes; nothing imported\n",
                card.version, pipeline.name,
            ),
        ),
        Ok(Intake::Stored(card)) => (
            "accepted",
            format!(
                "imported as version {} of pipeline `{}` (sha256 {}); serves once promoted\n",
                card.version,
                pipeline.name,
                card.imported.as_ref().map_or("", |i| i.sha256.as_str())
            ),
        ),
        Err(e) => ("refused", format!("{}: {e}\n", e.reason())),
    };
    let dest_dir = path.parent().unwrap_or_else(|| Path::new(".")).join(sub);
    let mut dest = dest_dir.join(name);
    if dest.exists() {
        dest = dest_dir.join(format!("{}-{name}", crate::stats::now_ms()));
    }
    std::fs::rename(path, &dest)?;
    let mut reason_path = dest.into_os_string();
    reason_path.push(".reason");
    std::fs::write(PathBuf::from(reason_path), reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline() -> PipelineSettings {
        crate::config::Config::load_with_env(None, std::iter::empty())
            .unwrap()
            .pipelines[0]
            .settings()
    }

    /// Eight imports of the same bytes at once: each looked for a stored
    /// copy before any had stored one, and several versions were made.
    /// Now one is stored and the others answer that version.
    #[test]
    fn concurrent_imports_of_the_same_bytes_store_one_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let onnx = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/intake/occupancy_sklearn.onnx"),
        )
        .unwrap();
        let p = pipeline();
        let stats = Stats::default();
        let start = std::sync::Barrier::new(8);
        let outcomes: Vec<Intake> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        import(
                            &store,
                            &p,
                            onnx.clone(),
                            Source::Upload,
                            None,
                            u64::MAX,
                            &LoadOptions::default(),
                            &stats,
                            "test",
                        )
                        .unwrap()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(outcomes.iter().filter(|o| o.is_new()).count(), 1);
        assert!(outcomes.iter().all(|o| o.card().version == 1));
        assert_eq!(store.model_versions(&p.name).unwrap(), [1]);
        assert_eq!(stats.snapshot().models_imported, 1);
    }

    #[test]
    fn sha256_of_abc_is_the_fips_180_2_example() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(verify_sha256(
            b"abc",
            Some("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")
        )
        .is_ok());
        assert_eq!(
            verify_sha256(b"abd", Some(&sha256_hex(b"abc")))
                .unwrap_err()
                .reason(),
            "bad_sha256"
        );
        assert_eq!(
            verify_sha256(b"abc", None).unwrap_err().reason(),
            "bad_sha256"
        );
        assert_eq!(
            verify_sha256(b"abc", Some("xyz")).unwrap_err().reason(),
            "bad_sha256"
        );
    }

    #[test]
    fn empty_and_foreign_bytes_are_not_onnx_and_a_cut_file_is_truncated() {
        let p = pipeline();
        assert_eq!(
            check_model(b"", &p, &LoadOptions::default())
                .unwrap_err()
                .reason(),
            "not_onnx"
        );
        // A PNG signature: field 17, wire type 1 is no ModelProto field.
        let png = [0x89u8, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
        assert_eq!(
            check_model(&png, &p, &LoadOptions::default())
                .unwrap_err()
                .reason(),
            "not_onnx"
        );
        // ir_version 7, then a graph (field 7) announced as 100 bytes with 3 present.
        let cut = [0x08u8, 7, 0x3a, 100, 1, 2, 3];
        assert_eq!(
            check_model(&cut, &p, &LoadOptions::default())
                .unwrap_err()
                .reason(),
            "truncated"
        );
    }
}
