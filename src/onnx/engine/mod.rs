//! The inference engines: ONNX models run by tract (pure Rust; cross-compiles
//! to every board) or, with the cargo feature `ort`, by onnxruntime (the
//! `ort` crate loading the `libonnxruntime` shared library at run time).
//!
//! Two layers:
//! - [`Session`]: any ONNX model (edgeloop's exports, skl2onnx, onnxmltools,
//!   `torch.onnx`), named inputs in, named outputs out, in edgeloop's own
//!   value type [`Tensor`]. [`Session::load`] checks every operator against
//!   the engine first ([`ModelError::UnsupportedOperator`]), and
//!   [`EngineKind::Auto`] falls back from tract to onnxruntime.
//! - [`OnnxModel`]: the model a pipeline serves (features in, probabilities
//!   or predictions out), on top of a [`Session`]: edgeloop's own exports
//!   ([`OnnxModel::load_with`], reading their metadata) and imported models
//!   ([`OnnxModel::adopt`], matched to a pipeline's [`Contract`]).
//!
//! A loaded model is immutable and shared: tract's plan is optimised and made
//! runnable once at load and each run spawns its own state; an onnxruntime
//! session runs one call at a time (its `run` takes `&mut`).

mod graph;
#[cfg(feature = "ort")]
mod ort;
mod tract;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::export;
use crate::ingest::decode::Task;

pub use self::tract::{onnx_parser, MAX_OPSET as TRACT_MAX_OPSET};

/// `[onnxruntime]`: where the `ort` engine (cargo feature `ort`) finds
/// `libonnxruntime`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnnxruntimeConfig {
    /// Path of the shared library (onnxruntime 1.31 or newer, e.g. the
    /// `onnxruntime` wheel's `capi/libonnxruntime.so.1.32.0`); empty: the
    /// `ORT_DYLIB_PATH` environment variable.
    pub library: PathBuf,
}

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bytes are not a model this engine can run.
    #[error("model refused: {0}")]
    Refused(String),
    /// The graph uses an operator the engine does not implement; `domain` is
    /// the node's domain as written (`""` is the default `ai.onnx`).
    #[error("{engine} does not support operator {}.{op}", display_domain(.domain))]
    UnsupportedOperator {
        engine: Engine,
        domain: String,
        op: String,
    },
    /// The model imports a version of the default operator set (`ai.onnx`)
    /// newer than the engine implements ([`TRACT_MAX_OPSET`]; onnxruntime
    /// refuses such a model itself, naming its own limit).
    #[error(
        "{engine} implements the default operator set (ai.onnx) up to opset {max}; \
         the model imports opset {opset}"
    )]
    UnsupportedOpset {
        engine: Engine,
        opset: i64,
        max: i64,
    },
    /// The engine asked for is not available in this build or on this
    /// machine (feature `ort` not compiled in, `libonnxruntime` missing or
    /// too old); the message names the feature or the library path.
    #[error("engine unavailable: {0}")]
    Unavailable(String),
    /// An imported model's classes are not the pipeline's (as sets).
    #[error("the model's classes {model:?} are not the pipeline's {expected:?}")]
    WrongClasses {
        model: Vec<String>,
        expected: Vec<String>,
    },
    /// The model keeps weights in external-data files that are missing,
    /// unreadable or out of reach (the message names the file and tensor).
    #[error("external data: {0}")]
    ExternalData(String),
    /// The input does not fit the model.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The engine failed while running.
    #[error("inference failed: {0}")]
    Run(String),
}

fn display_domain(domain: &str) -> &str {
    if domain.is_empty() {
        "ai.onnx"
    } else {
        domain
    }
}

/// Which engine a pipeline asks for (`engine` in `[[pipelines]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tract only (pure Rust; the default).
    #[default]
    Tract,
    /// onnxruntime only (cargo feature `ort`).
    Ort,
    /// tract; onnxruntime when tract refuses the model and onnxruntime is
    /// compiled in and its library loads.
    Auto,
}

impl std::str::FromStr for EngineKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tract" => Ok(Self::Tract),
            "ort" => Ok(Self::Ort),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown engine `{other}`: tract, ort or auto")),
        }
    }
}

/// The engine actually serving a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Tract,
    Ort,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Tract => "tract",
            Engine::Ort => "ort",
        })
    }
}

/// Whether this build has the onnxruntime engine (cargo feature `ort`).
pub const ORT_COMPILED: bool = cfg!(feature = "ort");

/// How to load a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Width (features per row) of a 2-D input whose shape the model leaves
    /// out or leaves symbolic in its second dim (tract needs it to plan).
    pub input_width: Option<usize>,
    /// Path of `libonnxruntime` (`.so`/`.dylib`/`.dll`); `None`: the
    /// `ORT_DYLIB_PATH` environment variable. Only the first library loaded
    /// in a process is used.
    pub ort_library: Option<PathBuf>,
}

/// Element type of a tensor (ONNX `TensorProto.DataType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F64,
    I64,
    I32,
    Bool,
    String,
    /// Any other ONNX type, by its `TensorProto.DataType` code.
    Other(i32),
}

/// A declared input or output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// Dims, `None` where unknown or symbolic (`dim_param`); `None` as a whole
    /// when the model declares no shape.
    pub dims: Option<Vec<Option<usize>>>,
    /// For a ZipMap output (a sequence of maps, returned dense `[N, C]`
    /// f32): the map keys in column order, integer keys written in decimal.
    pub keys: Option<Vec<String>>,
}

/// Values of a [`Tensor`], row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Every integer and boolean type is returned as i64.
    I64(Vec<i64>),
    String(Vec<String>),
}

impl Data {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F64(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::String(v) => v.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values as f32 (i64 and f64 converted); `None` for strings.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        match self {
            Data::F32(v) => Some(v.clone()),
            Data::F64(v) => Some(v.iter().map(|x| *x as f32).collect()),
            Data::I64(v) => Some(v.iter().map(|x| *x as f32).collect()),
            Data::String(_) => None,
        }
    }

    /// Value `i` as a string (numbers in Rust's shortest form).
    pub fn format(&self, i: usize) -> String {
        match self {
            Data::F32(v) => v[i].to_string(),
            Data::F64(v) => v[i].to_string(),
            Data::I64(v) => v[i].to_string(),
            Data::String(v) => v[i].clone(),
        }
    }
}

/// A tensor: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    /// A tensor of `shape` holding `data`.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] when the number of values is not the product
    /// of the dims.
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Self, ModelError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(ModelError::BadInput(format!(
                "shape {shape:?} holds {n} values, {} given",
                data.len()
            )));
        }
        Ok(Self { shape, data })
    }
}

/// A named input or output. `keys` is set on a ZipMap output (see
/// [`TensorInfo::keys`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub name: String,
    pub tensor: Tensor,
    pub keys: Option<Vec<String>>,
}

impl Named {
    /// An input named `name`.
    pub fn new(name: impl Into<String>, tensor: Tensor) -> Self {
        Self {
            name: name.into(),
            tensor,
            keys: None,
        }
    }
}

/// A loaded model on one engine: named tensors in, named tensors out.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
    inputs: Vec<TensorInfo>,
    outputs: Vec<TensorInfo>,
    metadata: Vec<(String, String)>,
    classifier_labels: Option<Vec<String>>,
}

#[derive(Debug)]
enum Inner {
    Tract(tract::TractSession),
    #[cfg(feature = "ort")]
    Ort(ort::OrtSession),
}

impl Session {
    /// Loads ONNX `bytes` on the engine `kind` names.
    ///
    /// tract: dims that are symbolic or absent become one batch symbol
    /// (first dim) or the [`LoadOptions::input_width`] (second dim of a 2-D
    /// input); outputs are cast to their declared type. onnxruntime: the
    /// library from [`LoadOptions::ort_library`] or `ORT_DYLIB_PATH`.
    /// [`EngineKind::Auto`]: tract, then onnxruntime when tract refuses the
    /// model and onnxruntime is available; otherwise tract's error.
    /// Symbolic dims of any name on the inputs' first axis are the batch
    /// axis wherever the graph records them (torch's dynamo exporter writes
    /// `batch` or `s0` on every intermediate value).
    ///
    /// # Errors
    /// [`ModelError::UnsupportedOperator`] naming the first operator the
    /// engine lacks; [`ModelError::Refused`] when the engine cannot load or
    /// plan the graph; [`ModelError::ExternalData`] when the model keeps
    /// weights in external files (use [`Session::load_file`]); [`ModelError::Unavailable`] when onnxruntime is asked
    /// for and not compiled in or its library does not load.
    pub fn load(bytes: &[u8], kind: EngineKind, options: &LoadOptions) -> Result<Self, ModelError> {
        let mut graph = graph::Graph::parse(bytes)?;
        // Bytes alone cannot reach their external-data files: refused, naming them.
        graph::inline_external_data(&mut graph.proto, None)?;
        Self::load_graph(bytes, graph, kind, options)
    }

    /// Loads the model file at `path` as [`Session::load`] does, reading
    /// external-data files (torch's exporter writes `model.onnx.data`)
    /// relative to the model file's directory.
    ///
    /// # Errors
    /// [`ModelError::ExternalData`] naming the file when an external-data
    /// file is missing, unreadable or outside the model's directory;
    /// [`ModelError::Refused`] when `path` cannot be read; else as
    /// [`Session::load`].
    pub fn load_file(
        path: &std::path::Path,
        kind: EngineKind,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path)
            .map_err(|e| ModelError::Refused(format!("{}: {e}", path.display())))?;
        let bytes = inline_external_data(&bytes, path.parent())?;
        let graph = graph::Graph::parse(&bytes)?;
        Self::load_graph(&bytes, graph, kind, options)
    }

    fn load_graph(
        bytes: &[u8],
        graph: graph::Graph,
        kind: EngineKind,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let inner = match kind {
            EngineKind::Tract => Inner::Tract(tract::TractSession::load(&graph, options)?),
            EngineKind::Ort => load_ort(bytes, &graph, options)?,
            EngineKind::Auto => match tract::TractSession::load(&graph, options) {
                Ok(s) => Inner::Tract(s),
                Err(tract_error) => {
                    tracing::info!(error = %tract_error, "tract refused the model; trying onnxruntime.");
                    match load_ort(bytes, &graph, options) {
                        Ok(inner) => inner,
                        Err(ort_error) => {
                            tracing::warn!(error = %ort_error, "onnxruntime did not take the model either.");
                            return Err(tract_error);
                        }
                    }
                }
            },
        };
        let session = Self {
            inner: Arc::new(inner),
            metadata: graph
                .proto
                .metadata_props
                .iter()
                .map(|p| (p.key.clone(), p.value.clone()))
                .collect(),
            classifier_labels: graph.classifier_labels(),
            inputs: graph.inputs,
            outputs: graph.outputs,
        };
        tracing::debug!(engine = %session.engine(), "Model loaded.");
        Ok(session)
    }

    /// The engine serving this session.
    pub fn engine(&self) -> Engine {
        match &*self.inner {
            Inner::Tract(_) => Engine::Tract,
            #[cfg(feature = "ort")]
            Inner::Ort(_) => Engine::Ort,
        }
    }

    /// Declared inputs (initializers excluded), in graph order.
    pub fn inputs(&self) -> &[TensorInfo] {
        &self.inputs
    }

    /// Declared outputs, in graph order; a ZipMap output as its dense form.
    pub fn outputs(&self) -> &[TensorInfo] {
        &self.outputs
    }

    /// The model's metadata property `key` (`metadata_props`).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The class labels of the graph's `ai.onnx.ml` classifier node, if any
    /// (`classlabels_strings`, or integer labels in decimal).
    pub fn classifier_labels(&self) -> Option<&[String]> {
        self.classifier_labels.as_deref()
    }

    /// Runs the model: one tensor per declared input (matched by name, any
    /// order), every declared output back in declared order. Inputs are cast
    /// to the declared element type; integer and boolean outputs come back
    /// as i64, ZipMap outputs dense `[N, C]` f32 with their keys.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] when an input is missing, unknown or of a
    /// type that does not convert; [`ModelError::Run`] when the engine fails.
    pub fn run(&self, inputs: &[Named]) -> Result<Vec<Named>, ModelError> {
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for info in &self.inputs {
            let given = inputs
                .iter()
                .find(|n| n.name == info.name)
                .ok_or_else(|| ModelError::BadInput(format!("input `{}` is missing", info.name)))?;
            ordered.push(given);
        }
        if let Some(extra) = inputs
            .iter()
            .find(|n| !self.inputs.iter().any(|i| i.name == n.name))
        {
            return Err(ModelError::BadInput(format!(
                "the model has no input `{}`",
                extra.name
            )));
        }
        for (info, given) in self.inputs.iter().zip(&ordered) {
            check_shape(info, &given.tensor.shape)?;
        }
        let outputs = match &*self.inner {
            Inner::Tract(s) => s.run(&self.inputs, &ordered, &self.outputs)?,
            #[cfg(feature = "ort")]
            Inner::Ort(s) => s.run(&self.inputs, &ordered, &self.outputs)?,
        };
        Ok(outputs)
    }

    /// Runs `n_rows` rows: each input tensor is `[n_rows, ...]` (one row per
    /// sample along the first axis), each output comes back with `n_rows`
    /// first. The model's declared first axis decides how the rows go in:
    /// - symbolic, absent or undeclared: all rows in one run;
    /// - a fixed number `b` (`[1, 20]` from `torch.onnx.export` without
    ///   dynamic axes): `b` rows a run, the last run padded with zero rows
    ///   whose outputs are dropped;
    /// - no batch axis (the declared rank is the row's: an input `[6]` fed
    ///   `[n_rows, 6]`): one row a run, each output given a first axis.
    ///
    /// Outputs of a padded or per-row run that have no batch axis of their
    /// own are stacked, one per run. This is the one path both the daemon
    /// (`OnnxModel::predict_proba`) and `edgeloop predict` take.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] naming the input and axis when a tensor
    /// does not fit the declared shape, or inputs disagree on `n_rows`;
    /// as [`Session::run`].
    pub fn run_rows(&self, inputs: &[Named]) -> Result<Vec<Named>, ModelError> {
        let n_rows = match inputs.first() {
            Some(first) => first.tensor.shape.first().copied().ok_or_else(|| {
                ModelError::BadInput(format!("input `{}` has no rows axis", first.name))
            })?,
            None => return self.run(inputs),
        };
        // Rows per run: `None` = all at once; (size, with a batch axis).
        let mut per_run: Option<(usize, bool)> = None;
        for given in inputs {
            if given.tensor.shape.first() != Some(&n_rows) {
                return Err(ModelError::BadInput(format!(
                    "input `{}` has shape {:?}; every input needs {n_rows} rows first",
                    given.name, given.tensor.shape
                )));
            }
            let Some(info) = self.inputs.iter().find(|i| i.name == given.name) else {
                continue;
            };
            let Some(dims) = &info.dims else { continue };
            let this = if dims.len() + 1 == given.tensor.shape.len() {
                Some((1, false))
            } else {
                match dims.first() {
                    Some(Some(b)) if *b != n_rows => Some((*b, true)),
                    _ => None,
                }
            };
            match (per_run, this) {
                (Some(a), Some(b)) if a != b => {
                    return Err(ModelError::BadInput(format!(
                        "the inputs' batch axes disagree (`{}`: {})",
                        given.name,
                        batch_text(b)
                    )))
                }
                (None, Some(_)) => per_run = this,
                _ => {}
            }
        }
        let Some((size, batched)) = per_run else {
            return self.run(inputs);
        };
        let mut outputs: Option<Vec<Named>> = None;
        let mut runs = 0usize;
        let mut start = 0;
        while start < n_rows {
            let take = size.min(n_rows - start);
            let chunk: Vec<Named> = inputs
                .iter()
                .map(|n| {
                    let mut t = rows_of(&n.tensor, start, take, size);
                    if !batched {
                        t.shape.remove(0);
                    }
                    Named::new(&n.name, t)
                })
                .collect();
            let out = self.run(&chunk)?;
            let acc = outputs.get_or_insert_with(|| {
                out.iter()
                    .map(|o| Named {
                        name: o.name.clone(),
                        tensor: Tensor {
                            shape: Vec::new(),
                            data: empty_like(&o.tensor.data),
                        },
                        keys: o.keys.clone(),
                    })
                    .collect()
            });
            for (a, o) in acc.iter_mut().zip(out) {
                let per_row = batched && o.tensor.shape.first() == Some(&size);
                let (shape, data) = if per_row {
                    let kept = rows_of(&o.tensor, 0, take, take);
                    (kept.shape, kept.data)
                } else {
                    let mut shape = o.tensor.shape.clone();
                    shape.insert(0, 1);
                    (shape, o.tensor.data)
                };
                if a.tensor.shape.is_empty() {
                    a.tensor.shape = shape.clone();
                    a.tensor.shape[0] = 0;
                } else if a.tensor.shape[1..] != shape[1..] {
                    return Err(ModelError::Run(format!(
                        "output `{}` changes shape between runs ({:?}, then {:?})",
                        a.name,
                        &a.tensor.shape[1..],
                        &shape[1..]
                    )));
                }
                a.tensor.shape[0] += shape[0];
                if !append(&mut a.tensor.data, data) {
                    return Err(ModelError::Run(format!(
                        "output `{}` changes element type between runs",
                        a.name
                    )));
                }
            }
            runs += 1;
            start += take;
        }
        tracing::trace!(runs, n_rows, "Rows run in batches of the model's size.");
        Ok(outputs.unwrap_or_default())
    }
}

/// `onnx` made self-contained: the tensors it keeps in external-data files
/// (`location` relative to `dir`, the model file's directory) read into the
/// model; the bytes as they are when it has none.
///
/// # Errors
/// [`ModelError::Refused`] for bytes that are not ONNX;
/// [`ModelError::ExternalData`] naming the file when the model has external
/// data and `dir` is `None` (bytes without their files: an upload), or a
/// file is missing, unreadable or outside `dir`.
pub fn inline_external_data<'a>(
    onnx: &'a [u8],
    dir: Option<&std::path::Path>,
) -> Result<std::borrow::Cow<'a, [u8]>, ModelError> {
    let mut graph = graph::Graph::parse(onnx)?;
    if !graph::inline_external_data(&mut graph.proto, dir)? {
        return Ok(std::borrow::Cow::Borrowed(onnx));
    }
    use prost::Message;
    Ok(std::borrow::Cow::Owned(graph.proto.encode_to_vec()))
}

/// The declared dims, `?` where symbolic or absent: `[?, 1, 64]`.
fn dims_text(dims: &[Option<usize>]) -> String {
    let d: Vec<String> = dims
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", d.join(", "))
}

/// A tensor of `shape` fits input `info`'s declared dims (rank, and every
/// axis the model fixes).
fn check_shape(info: &TensorInfo, shape: &[usize]) -> Result<(), ModelError> {
    let Some(dims) = &info.dims else {
        return Ok(());
    };
    if dims.len() != shape.len() {
        return Err(ModelError::BadInput(format!(
            "input `{}` takes {} dims {}; given {} dims {shape:?}",
            info.name,
            dims.len(),
            dims_text(dims),
            shape.len()
        )));
    }
    for (axis, (d, g)) in dims.iter().zip(shape).enumerate() {
        if let Some(d) = d {
            if d != g {
                let what = if axis == 0 {
                    " (its batch axis, fixed)"
                } else {
                    ""
                };
                return Err(ModelError::BadInput(format!(
                    "input `{}` {}: axis {axis}{what} is {d}, given {g}",
                    info.name,
                    dims_text(dims)
                )));
            }
        }
    }
    Ok(())
}

fn batch_text((size, batched): (usize, bool)) -> String {
    if batched {
        format!("a fixed batch of {size}")
    } else {
        "no batch axis".into()
    }
}

/// Rows `start..start + take` of `t` (rows along the first axis), padded
/// with zero rows (empty strings) to `size` rows.
fn rows_of(t: &Tensor, start: usize, take: usize, size: usize) -> Tensor {
    let per_row: usize = t.shape[1..].iter().product();
    let (a, b) = (start * per_row, (start + take) * per_row);
    let pad = (size - take) * per_row;
    let data = match &t.data {
        Data::F32(v) => Data::F32(padded(&v[a..b], pad, 0.0)),
        Data::F64(v) => Data::F64(padded(&v[a..b], pad, 0.0)),
        Data::I64(v) => Data::I64(padded(&v[a..b], pad, 0)),
        Data::String(v) => Data::String(padded(&v[a..b], pad, String::new())),
    };
    let mut shape = t.shape.clone();
    shape[0] = size;
    Tensor { shape, data }
}

fn padded<T: Clone>(v: &[T], pad: usize, zero: T) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len() + pad);
    out.extend_from_slice(v);
    out.resize(v.len() + pad, zero);
    out
}

fn empty_like(d: &Data) -> Data {
    match d {
        Data::F32(_) => Data::F32(Vec::new()),
        Data::F64(_) => Data::F64(Vec::new()),
        Data::I64(_) => Data::I64(Vec::new()),
        Data::String(_) => Data::String(Vec::new()),
    }
}

/// Appends `from` to `to`; `false` when their element types differ.
fn append(to: &mut Data, from: Data) -> bool {
    match (to, from) {
        (Data::F32(a), Data::F32(b)) => a.extend(b),
        (Data::F64(a), Data::F64(b)) => a.extend(b),
        (Data::I64(a), Data::I64(b)) => a.extend(b),
        (Data::String(a), Data::String(b)) => a.extend(b),
        _ => return false,
    }
    true
}

/// Whether models can load on the engine `kind` names with `options`:
/// for [`EngineKind::Ort`], that onnxruntime is compiled in and its library
/// loads (it then stays loaded in this process, as a first model would
/// load it). tract and [`EngineKind::Auto`] always can: `auto` serves on
/// tract alone when onnxruntime is unavailable.
///
/// # Errors
/// [`ModelError::Unavailable`] naming the cargo feature, or the library
/// path and where it came from (`[onnxruntime] library` or
/// `ORT_DYLIB_PATH`) and why it did not load.
pub fn check_available(kind: EngineKind, options: &LoadOptions) -> Result<(), ModelError> {
    match kind {
        EngineKind::Tract | EngineKind::Auto => Ok(()),
        #[cfg(feature = "ort")]
        EngineKind::Ort => ort::environment(options).map(|_| ()),
        #[cfg(not(feature = "ort"))]
        EngineKind::Ort => {
            let _ = options;
            Err(ModelError::Unavailable(
                "engine `ort` needs edgeloop built with the cargo feature `ort`".into(),
            ))
        }
    }
}

#[cfg(feature = "ort")]
fn load_ort(
    bytes: &[u8],
    graph: &graph::Graph,
    options: &LoadOptions,
) -> Result<Inner, ModelError> {
    Ok(Inner::Ort(ort::OrtSession::load(bytes, graph, options)?))
}

#[cfg(not(feature = "ort"))]
fn load_ort(_: &[u8], _: &graph::Graph, _: &LoadOptions) -> Result<Inner, ModelError> {
    Err(ModelError::Unavailable(
        "engine `ort` needs edgeloop built with the cargo feature `ort`".into(),
    ))
}

/// `load(kind)`; for [`EngineKind::Auto`], `load(Tract)` and, when tract
/// refuses the model or it fails its verification on tract,
/// `load(Ort)`, keeping tract's error when onnxruntime fails too.
fn with_fallback(
    kind: EngineKind,
    load: impl Fn(EngineKind) -> Result<OnnxModel, ModelError>,
) -> Result<OnnxModel, ModelError> {
    if kind != EngineKind::Auto {
        return load(kind);
    }
    load(EngineKind::Tract).or_else(|tract_error| {
        load(EngineKind::Ort).map_err(|ort_error| {
            tracing::debug!(error = %ort_error, "onnxruntime did not take the model either.");
            tract_error
        })
    })
}

/// What a pipeline expects of its model: the task, the classes (may be empty:
/// taken from the model) and the features, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Contract {
    pub task: Task,
    pub classes: Vec<String>,
    pub features: Vec<String>,
}

/// A loaded, verified ONNX model serving a pipeline (classifier or regressor):
/// one 2-D float input `[n_rows, n_features]`, and the output holding the
/// probabilities `[n_rows, n_classes]` or the predictions.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    session: Session,
    input: String,
    /// Index into `session.outputs()` of the probabilities (classifier) or
    /// predictions (regressor).
    scores: usize,
    classes: Vec<String>,
    features: Vec<String>,
    task: Task,
    /// A model with categorical features (`crate::learn::preprocess`): its
    /// string input and, per column of it, the feature's column in the
    /// rows and its strings by code (metadata `categorical`).
    categorical: Option<(String, Vec<(usize, Vec<String>)>)>,
}

impl OnnxModel {
    /// Loads one of edgeloop's own exported models with tract: see
    /// [`OnnxModel::load_with`].
    ///
    /// # Errors
    /// As [`OnnxModel::load_with`].
    pub fn load(onnx: &[u8]) -> Result<Self, ModelError> {
        Self::load_with(onnx, EngineKind::Tract, &LoadOptions::default())
    }

    /// Loads one of edgeloop's own exported models (its metadata gives
    /// classes, features and task) on the engine `kind` names, and checks
    /// that a one-row input yields `[1, n_classes]` probabilities (or one
    /// prediction). The first output is the probabilities or predictions.
    /// With [`EngineKind::Auto`], a model that tract refuses or that fails
    /// the check on tract is tried on onnxruntime.
    ///
    /// # Errors
    /// [`ModelError::Refused`] naming what the metadata, the engine or the
    /// check rejected; the other [`Session::load`] errors.
    pub fn load_with(
        onnx: &[u8],
        kind: EngineKind,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let meta = export::read_metadata(onnx).map_err(ModelError::Refused)?;
        let mut options = options.clone();
        options.input_width.get_or_insert(meta.features.len());
        let session = Session::load(onnx, kind, &options)?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name.clone())
            .ok_or_else(|| ModelError::Refused("the model has no input".into()))?;
        let categorical = match session.inputs().iter().find(|i| i.dtype == DType::String) {
            None => None,
            Some(info) => {
                let codes: Vec<(String, Vec<String>)> = session
                    .metadata("categorical")
                    .and_then(|m| serde_json::from_str(m).ok())
                    .ok_or_else(|| {
                        ModelError::Refused(format!(
                            "string input `{}` without the metadata `categorical`",
                            info.name
                        ))
                    })?;
                let cols = codes
                    .into_iter()
                    .map(|(f, c)| {
                        meta.features
                            .iter()
                            .position(|x| *x == f)
                            .map(|j| (j, c))
                            .ok_or_else(|| {
                                ModelError::Refused(format!(
                                    "categorical feature `{f}` is not a feature"
                                ))
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Some((info.name.clone(), cols))
            }
        };
        let model = Self {
            session,
            input,
            scores: 0,
            classes: meta.classes,
            features: meta.features,
            task: meta.task,
            categorical,
        };
        model.verify()?;
        Ok(model)
    }

    /// Loads a pipeline's model: one that carries edgeloop's metadata
    /// (`classes`, `features`, `task`: edgeloop's own exports, or an import
    /// written with them) as [`OnnxModel::load_with`]; any other, with a
    /// `contract`, as [`OnnxModel::adopt`].
    ///
    /// # Errors
    /// [`ModelError::Refused`] for bytes that are not ONNX, or a foreign model
    /// without a contract; else as the loader taken.
    pub fn load_for(
        onnx: &[u8],
        contract: Option<&Contract>,
        kind: EngineKind,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        match export::read_metadata(onnx) {
            Ok(_) => Self::load_with(onnx, kind, options),
            Err(reason) => match contract {
                Some(contract) if !reason.starts_with("not an ONNX model") => {
                    Self::adopt(onnx, contract, kind, options)
                }
                _ => Err(ModelError::Refused(reason)),
            },
        }
    }

    /// Adopts an imported model (skl2onnx, onnxmltools, `torch.onnx`, ...)
    /// for a pipeline with `contract`:
    /// - one input, 2-D float, whose width (when declared) equals the number
    ///   of features; the features are fed in `contract.features` order;
    /// - classifier: the probabilities are the first output that is a ZipMap
    ///   or a float tensor `[N, C]`; the classes are the ZipMap keys, else the
    ///   classifier node's `classlabels_*`, else `contract.classes`; when the
    ///   contract names classes, the model's must be the same set;
    /// - regressor: the first float output, one value per row;
    /// - a probe run on one zero row must give `C` (or one) values.
    ///
    /// With [`EngineKind::Auto`], a model that tract refuses or that fails
    /// these checks on tract is tried on onnxruntime.
    ///
    /// # Errors
    /// [`ModelError::WrongClasses`] when the classes differ;
    /// [`ModelError::Refused`] saying which other check the model fails; the
    /// [`Session::load`] errors.
    pub fn adopt(
        onnx: &[u8],
        contract: &Contract,
        kind: EngineKind,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        with_fallback(kind, |kind| Self::adopt_on(onnx, contract, kind, options))
    }

    fn adopt_on(
        onnx: &[u8],
        contract: &Contract,
        kind: EngineKind,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        let refuse = |m: String| Err(ModelError::Refused(m));
        let mut options = options.clone();
        options.input_width.get_or_insert(contract.features.len());
        let session = Session::load(onnx, kind, &options)?;
        let [input] = session.inputs() else {
            return refuse(format!(
                "the model has {} inputs; a pipeline model takes one [N, n_features] input",
                session.inputs().len()
            ));
        };
        if !matches!(input.dtype, DType::F32 | DType::F64) {
            return refuse(format!(
                "input `{}` is {:?}; a pipeline model takes floats",
                input.name, input.dtype
            ));
        }
        if let Some(dims) = &input.dims {
            if dims.len() != 2 {
                return refuse(format!(
                    "input `{}` has {} dims; a pipeline model takes [N, n_features]",
                    input.name,
                    dims.len()
                ));
            }
            if let Some(w) = dims[1] {
                if w != contract.features.len() {
                    return refuse(format!(
                        "input `{}` takes {w} features; the pipeline has {}",
                        input.name,
                        contract.features.len()
                    ));
                }
            }
        }
        let float = |o: &TensorInfo| matches!(o.dtype, DType::F32 | DType::F64);
        let (scores, classes) = match contract.task {
            Task::Classification => {
                let Some(i) = session.outputs().iter().position(|o| {
                    o.keys.is_some() || (float(o) && o.dims.as_ref().is_none_or(|d| d.len() == 2))
                }) else {
                    return refuse("no probabilities output (ZipMap or float [N, C])".into());
                };
                let classes = session.outputs()[i]
                    .keys
                    .clone()
                    .or_else(|| session.classifier_labels().map(<[String]>::to_vec))
                    .unwrap_or_else(|| contract.classes.clone());
                if classes.is_empty() {
                    return refuse("the model names no classes and the pipeline lists none".into());
                }
                if !contract.classes.is_empty() {
                    let mut a = classes.clone();
                    let mut b = contract.classes.clone();
                    a.sort();
                    b.sort();
                    if a != b {
                        return Err(ModelError::WrongClasses {
                            model: classes,
                            expected: contract.classes.clone(),
                        });
                    }
                }
                (i, classes)
            }
            Task::Regression => {
                let Some(i) = session.outputs().iter().position(float) else {
                    return refuse("no float output for the predictions".into());
                };
                (i, Vec::new())
            }
        };
        let model = Self {
            input: input.name.clone(),
            session,
            scores,
            classes,
            features: contract.features.clone(),
            task: contract.task,
            categorical: None,
        };
        model.verify()?;
        tracing::info!(engine = %model.engine(), "Imported model adopted.");
        Ok(model)
    }

    /// The probe run: one zero row gives one value per class (one for a
    /// regressor).
    fn verify(&self) -> Result<(), ModelError> {
        let probe = self
            .predict_proba(&vec![0.0; self.features.len()])
            .map_err(|e| ModelError::Refused(format!("verification run failed: {e}")))?;
        let expected = match self.task {
            Task::Classification => self.classes.len(),
            Task::Regression => 1,
        };
        if probe.len() != expected {
            return Err(ModelError::Refused(format!(
                "verification run gave {} outputs per row, expected {expected} ({:?})",
                probe.len(),
                self.task
            )));
        }
        Ok(())
    }

    /// The engine serving this model.
    pub fn engine(&self) -> Engine {
        self.session.engine()
    }

    /// The session underneath (every output, descriptors).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// What the model predicts.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Class names, in output column order (empty for a regressor).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Feature names, in input order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// Whether `feature` is categorical (read as a string).
    pub fn is_categorical(&self, feature: &str) -> bool {
        self.category_code(feature, None).is_some()
    }

    /// The code a categorical `feature` reads `value` as (the code of the
    /// book the model was trained with); `Some(NaN)` when the model never
    /// saw that string (all zeros), `None` when `feature` is not
    /// categorical. `value` `None`: only whether it is categorical.
    pub fn category_code(&self, feature: &str, value: Option<&str>) -> Option<f32> {
        let (_, cols) = self.categorical.as_ref()?;
        let j = self.features.iter().position(|f| f == feature)?;
        let (_, codes) = cols.iter().find(|(c, _)| *c == j)?;
        Some(
            value
                .and_then(|v| codes.iter().position(|s| s == v.trim()))
                .map_or(f32::NAN, |i| i as f32),
        )
    }

    /// A classifier's probabilities `[n_rows, n_classes]` row-major, a
    /// regressor's predictions `[n_rows]`; for `x` (`[n_rows, n_features]`
    /// row-major `f32`, `NaN` = missing), through [`Session::run_rows`]: a
    /// model exported with a fixed batch axis (`torch.onnx.export` without
    /// dynamic axes: `[1, F]` or `[64, F]`) runs that many rows at a time.
    ///
    /// # Errors
    /// [`ModelError::BadInput`] when `x` is not a whole number of rows;
    /// [`ModelError::Run`] when the engine fails.
    pub fn predict_proba(&self, x: &[f32]) -> Result<Vec<f32>, ModelError> {
        let nf = self.features.len();
        if x.is_empty() || nf == 0 || !x.len().is_multiple_of(nf) {
            return Err(ModelError::BadInput(format!(
                "{} values is not a whole number of rows of {nf} features",
                x.len()
            )));
        }
        let n_rows = x.len() / nf;
        let input = Tensor::new(vec![n_rows, nf], Data::F32(x.to_vec()))?;
        let mut inputs = vec![Named::new(&self.input, input)];
        if let Some((name, cols)) = &self.categorical {
            // Codes back to strings; a missing or unknown code is "", which
            // no category is (all zeros).
            let strings: Vec<String> = x
                .chunks_exact(nf)
                .flat_map(|row| {
                    cols.iter().map(move |(j, codes)| {
                        let v = row[*j];
                        if v.is_nan() || v < 0.0 || v.fract() != 0.0 {
                            return String::new();
                        }
                        codes.get(v as usize).cloned().unwrap_or_default()
                    })
                })
                .collect();
            inputs.push(Named::new(
                name,
                Tensor::new(vec![n_rows, cols.len()], Data::String(strings))?,
            ));
        }
        let mut out = self.session.run_rows(&inputs)?;
        if self.scores >= out.len() {
            return Err(ModelError::Run("model has no output".into()));
        }
        out.swap_remove(self.scores)
            .tensor
            .data
            .to_f32()
            .ok_or_else(|| ModelError::Run("the scores output holds strings".into()))
    }
}
