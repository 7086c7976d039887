//! The onnxruntime engine (cargo feature `ort`): the `ort` crate
//! (<https://ort.pyke.io/>) with `load-dynamic`, loading `libonnxruntime` at
//! run time from [`LoadOptions::ort_library`] or `ORT_DYLIB_PATH`.
//!
//! `ort` is built with the API level of its default features, `api-31`
//! (`ort::MINOR_VERSION` = 31): the library must be onnxruntime 1.31 or
//! newer; an older one is refused at load, naming its path and version.
//! The library is loaded once per process; a failed load is returned (and
//! may be retried with another path), a successful one is kept.

use std::path::PathBuf;
use std::sync::Mutex;

use ort::session::{Session as OrtInner, SessionInputValue};
use ort::value::{DynMapValueType, DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::graph::Graph;
use super::{DType, Data, Engine, LoadOptions, ModelError, Named, Tensor, TensorInfo};

/// Domains onnxruntime's CPU provider implements; an operator in another
/// domain is refused before onnxruntime sees it (within these, onnxruntime's
/// own check names a missing operator).
const DOMAINS: [&str; 5] = [
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "com.microsoft",
    "ai.onnx.preview.training",
];

/// The library loaded in this process and its environment.
struct Loaded {
    path: PathBuf,
    env: ort::environment::Environment,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// The onnxruntime environment, loading the library on first use.
///
/// # Errors
/// [`ModelError::Unavailable`] naming the path when no path is configured,
/// the library does not load, is older than 1.31, or another library is
/// already loaded in this process.
pub fn environment(
    options: &LoadOptions,
) -> Result<(PathBuf, ort::environment::Environment), ModelError> {
    let (path, from) = match &options.ort_library {
        Some(p) => (p.clone(), "[onnxruntime] library"),
        None => match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) if !p.is_empty() => (PathBuf::from(p), "ORT_DYLIB_PATH"),
            _ => {
                return Err(ModelError::Unavailable(
                    "no onnxruntime library: set `[onnxruntime] library` or ORT_DYLIB_PATH".into(),
                ))
            }
        },
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(l) = loaded.as_ref() {
        if l.path != path {
            return Err(ModelError::Unavailable(format!(
                "onnxruntime is already loaded from {} in this process; {} is not loaded",
                l.path.display(),
                path.display()
            )));
        }
        return Ok((l.path.clone(), l.env.clone()));
    }
    let unavailable = |e: String| {
        ModelError::Unavailable(format!(
            "onnxruntime library {} (from {from}): {e}",
            path.display()
        ))
    };
    if !path.is_file() {
        return Err(unavailable("no such file".into()));
    }
    let env = ort::init_from(&path)
        .map_err(|e| unavailable(e.to_string()))?
        .with_name("edgeloop")
        .build()
        .map_err(|e| unavailable(e.to_string()))?;
    tracing::info!(path = %path.display(), api = ort::MINOR_VERSION, "onnxruntime loaded.");
    *loaded = Some(Loaded {
        path: path.clone(),
        env: env.clone(),
    });
    Ok((path, env))
}

/// An onnxruntime session; runs one call at a time.
pub(super) struct OrtSession {
    session: Mutex<OrtInner>,
    /// The graph's node names and operators, to name them in errors.
    nodes: Vec<tract_onnx::pb::NodeProto>,
}

impl std::fmt::Debug for OrtSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OrtSession")
    }
}

impl OrtSession {
    pub fn load(bytes: &[u8], graph: &Graph, options: &LoadOptions) -> Result<Self, ModelError> {
        if let Some((domain, op)) = graph
            .ops
            .iter()
            .find(|(d, _)| !DOMAINS.contains(&d.as_str()))
        {
            return Err(ModelError::UnsupportedOperator {
                engine: Engine::Ort,
                domain: domain.clone(),
                op: op.clone(),
            });
        }
        let (_, env) = environment(options)?;
        let nodes = super::graph::node_names(graph.graph());
        let refused = |e: String| {
            ModelError::Refused(super::graph::in_model_terms(
                &nodes,
                &format!("onnxruntime: {e}"),
            ))
        };
        let session = OrtInner::builder(&env)
            .map_err(|e| refused(e.to_string()))?
            .commit_from_memory(bytes)
            .map_err(|e| refused(e.to_string()))?;
        Ok(Self {
            session: Mutex::new(session),
            nodes,
        })
    }

    pub fn run(
        &self,
        infos: &[TensorInfo],
        inputs: &[&Named],
        outputs: &[TensorInfo],
    ) -> Result<Vec<Named>, ModelError> {
        let mut values: Vec<(String, SessionInputValue<'static>)> =
            Vec::with_capacity(inputs.len());
        for (info, given) in infos.iter().zip(inputs) {
            values.push((info.name.clone(), to_ort(&given.tensor, info)?));
        }
        let mut session = self
            .session
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let run = |e: ort::Error| {
            ModelError::Run(super::graph::in_model_terms(
                &self.nodes,
                &format!("onnxruntime: {e}"),
            ))
        };
        let out = session.run(values).map_err(run)?;
        let mut result = Vec::with_capacity(outputs.len());
        for info in outputs {
            let value = out
                .get(&info.name)
                .ok_or_else(|| ModelError::Run(format!("output `{}` missing", info.name)))?;
            let (tensor, keys) = from_ort(value, info)?;
            result.push(Named {
                name: info.name.clone(),
                tensor,
                keys,
            });
        }
        Ok(result)
    }
}

fn to_ort(t: &Tensor, info: &TensorInfo) -> Result<SessionInputValue<'static>, ModelError> {
    let bad = |e: ort::Error| ModelError::BadInput(format!("input `{}`: {e}", info.name));
    let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
    let as_f64 = || -> Result<Vec<f64>, ModelError> {
        match &t.data {
            Data::F32(v) => Ok(v.iter().map(|x| f64::from(*x)).collect()),
            Data::F64(v) => Ok(v.clone()),
            Data::I64(v) => Ok(v.iter().map(|x| *x as f64).collect()),
            Data::String(_) => Err(ModelError::BadInput(format!(
                "input `{}` takes numbers, strings given",
                info.name
            ))),
        }
    };
    let value: DynValue = match info.dtype {
        DType::F32 => match &t.data {
            Data::F32(v) => OrtTensor::from_array((shape, v.clone()))
                .map_err(bad)?
                .into_dyn(),
            _ => OrtTensor::from_array((
                shape,
                as_f64()?.iter().map(|x| *x as f32).collect::<Vec<f32>>(),
            ))
            .map_err(bad)?
            .into_dyn(),
        },
        DType::F64 => OrtTensor::from_array((shape, as_f64()?))
            .map_err(bad)?
            .into_dyn(),
        DType::I64 => match &t.data {
            Data::I64(v) => OrtTensor::from_array((shape, v.clone()))
                .map_err(bad)?
                .into_dyn(),
            _ => OrtTensor::from_array((
                shape,
                as_f64()?.iter().map(|x| *x as i64).collect::<Vec<i64>>(),
            ))
            .map_err(bad)?
            .into_dyn(),
        },
        DType::I32 => OrtTensor::from_array((
            shape,
            as_f64()?.iter().map(|x| *x as i32).collect::<Vec<i32>>(),
        ))
        .map_err(bad)?
        .into_dyn(),
        DType::Bool => OrtTensor::from_array((
            shape,
            as_f64()?.iter().map(|x| *x != 0.0).collect::<Vec<bool>>(),
        ))
        .map_err(bad)?
        .into_dyn(),
        DType::String => match &t.data {
            Data::String(v) => OrtTensor::from_string_array((shape, v.as_slice()))
                .map_err(bad)?
                .into_dyn(),
            _ => {
                return Err(ModelError::BadInput(format!(
                    "input `{}` takes strings",
                    info.name
                )))
            }
        },
        DType::Other(code) => {
            return Err(ModelError::BadInput(format!(
                "input `{}`: ONNX element type {code} is not supported",
                info.name
            )))
        }
    };
    Ok(SessionInputValue::Owned(value))
}

fn from_ort(
    value: &DynValue,
    info: &TensorInfo,
) -> Result<(Tensor, Option<Vec<String>>), ModelError> {
    let run = |e: ort::Error| ModelError::Run(format!("output `{}`: {e}", info.name));
    match value.dtype() {
        ValueType::Tensor { ty, .. } => {
            let ty = *ty;
            macro_rules! ints {
                ($t:ty) => {{
                    let (shape, data) = value.try_extract_tensor::<$t>().map_err(run)?;
                    (
                        shape.to_vec(),
                        Data::I64(data.iter().map(|x| *x as i64).collect()),
                    )
                }};
            }
            let (shape, data): (Vec<i64>, Data) = match ty {
                TensorElementType::Float32 => {
                    let (shape, data) = value.try_extract_tensor::<f32>().map_err(run)?;
                    (shape.to_vec(), Data::F32(data.to_vec()))
                }
                TensorElementType::Float64 => {
                    let (shape, data) = value.try_extract_tensor::<f64>().map_err(run)?;
                    (shape.to_vec(), Data::F64(data.to_vec()))
                }
                TensorElementType::Int64 => ints!(i64),
                TensorElementType::Int32 => ints!(i32),
                TensorElementType::Int16 => ints!(i16),
                TensorElementType::Int8 => ints!(i8),
                TensorElementType::Uint8 => ints!(u8),
                TensorElementType::Uint16 => ints!(u16),
                TensorElementType::Uint32 => ints!(u32),
                TensorElementType::Bool => {
                    let (shape, data) = value.try_extract_tensor::<bool>().map_err(run)?;
                    (
                        shape.to_vec(),
                        Data::I64(data.iter().map(|x| i64::from(*x)).collect()),
                    )
                }
                TensorElementType::String => {
                    let (shape, data) = value.try_extract_strings().map_err(run)?;
                    (shape.to_vec(), Data::String(data))
                }
                other => {
                    return Err(ModelError::Run(format!(
                        "output `{}`: element type {other:?} is not supported",
                        info.name
                    )))
                }
            };
            let shape = shape.iter().map(|d| (*d).max(0) as usize).collect();
            let data = match (data, info.dtype) {
                (Data::F64(v), DType::F32) => Data::F32(v.iter().map(|x| *x as f32).collect()),
                (d, _) => d,
            };
            Ok((Tensor { shape, data }, info.keys.clone()))
        }
        ValueType::Sequence(inner) if matches!(**inner, ValueType::Map { .. }) => {
            let maps = value
                .try_extract_sequence::<DynMapValueType>()
                .map_err(run)?;
            let mut rows: Vec<Vec<(String, f32)>> = Vec::with_capacity(maps.len());
            for map in &maps {
                let row: Vec<(String, f32)> = match map.dtype() {
                    ValueType::Map {
                        key: TensorElementType::String,
                        ..
                    } => map.try_extract_key_values::<String, f32>().map_err(run)?,
                    _ => map
                        .try_extract_key_values::<i64, f32>()
                        .map_err(run)?
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                };
                rows.push(row);
            }
            let keys: Vec<String> = match &info.keys {
                Some(k) => k.clone(),
                None => rows
                    .first()
                    .map(|r| r.iter().map(|(k, _)| k.clone()).collect())
                    .unwrap_or_default(),
            };
            let mut data = Vec::with_capacity(rows.len() * keys.len());
            for row in &rows {
                for key in &keys {
                    let v = row
                        .iter()
                        .find(|(k, _)| k == key)
                        .map(|(_, v)| *v)
                        .ok_or_else(|| {
                            ModelError::Run(format!(
                                "output `{}`: a map lacks key `{key}`",
                                info.name
                            ))
                        })?;
                    data.push(v);
                }
            }
            Ok((
                Tensor {
                    shape: vec![rows.len(), keys.len()],
                    data: Data::F32(data),
                },
                Some(keys),
            ))
        }
        other => Err(ModelError::Run(format!(
            "output `{}`: value type {other:?} is not supported",
            info.name
        ))),
    }
}
