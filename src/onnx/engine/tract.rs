//! The tract engine (pure Rust): the parser with edgeloop's operators, the
//! operator check, symbolic batch dims, outputs cast to their declared type.

use std::collections::HashSet;
use std::sync::Arc;

use tract_onnx::prelude::{
    tract_ndarray, tvec, Datum, DatumType, Framework, InferenceFact, InferenceModelExt,
    IntoRunnable, IntoTValue, TDim, Tensor as TTensor, TypedRunnableModel,
};

use super::graph::Graph;
use super::{DType, Data, Engine, LoadOptions, ModelError, Named, Tensor, TensorInfo};

/// The ONNX parser the engine uses: tract-onnx's, with edgeloop's operators
/// registered (see [`crate::onnx`]): the `ai.onnx.ml` tree ensembles
/// ([`crate::onnx::tree_ensemble`]) replace tract-onnx's, and
/// [`crate::onnx::ml`] adds the other `ai.onnx.ml` operators skl2onnx and
/// onnxmltools emit (replacing tract's LinearClassifier and
/// ArrayFeatureExtractor).
pub fn onnx_parser() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::onnx::tree_ensemble::register(&mut onnx.op_register);
    crate::onnx::ml::register(&mut onnx.op_register);
    onnx
}

/// Domains whose operators tract looks up by `op_type` alone.
const DOMAINS: [&str; 4] = ["", "ai.onnx", "ai.onnx.ml", "com.microsoft"];

/// The symbol of the inputs' batch axis.
const BATCH: &str = "N";

/// A runnable tract plan.
#[derive(Debug)]
pub(super) struct TractSession {
    plan: Arc<TypedRunnableModel>,
}

impl TractSession {
    /// Checks the operators, sets the input facts, optimises, makes runnable.
    pub fn load(graph: &Graph, options: &LoadOptions) -> Result<Self, ModelError> {
        let parser = onnx_parser();
        let known: HashSet<&str> = parser.op_register.0.keys().map(String::as_str).collect();
        if let Some((domain, op)) = graph
            .ops
            .iter()
            .find(|(d, op)| !DOMAINS.contains(&d.as_str()) || !known.contains(op.as_str()))
        {
            return Err(ModelError::UnsupportedOperator {
                engine: Engine::Tract,
                domain: domain.clone(),
                op: op.clone(),
            });
        }
        let refused =
            |e: tract_onnx::prelude::TractError| ModelError::Refused(format!("tract: {e:#}"));
        let mut proto = graph.proto.clone();
        super::graph::unify_symbolic_dims(&mut proto, BATCH);
        let mut model = parser.model_for_proto_model(&proto).map_err(refused)?;
        let batch = model.symbols.sym(BATCH);
        for (i, info) in graph.inputs.iter().enumerate() {
            let dt = datum_type(info.dtype).ok_or_else(|| {
                ModelError::Refused(format!(
                    "input `{}`: element type {:?} is not supported",
                    info.name, info.dtype
                ))
            })?;
            let dims: Vec<Option<usize>> = match &info.dims {
                Some(d) => d.clone(),
                None => match options.input_width {
                    Some(_) => vec![None, None],
                    None => {
                        return Err(ModelError::Refused(format!(
                            "input `{}` declares no shape; give the input width",
                            info.name
                        )))
                    }
                },
            };
            let rank = dims.len();
            let mut shape: Vec<TDim> = Vec::with_capacity(rank);
            for (axis, d) in dims.iter().enumerate() {
                shape.push(match (d, axis) {
                    (Some(n), _) => TDim::from(*n as i64),
                    (None, 0) => TDim::from(batch.clone()),
                    (None, 1) if rank == 2 && options.input_width.is_some() => {
                        TDim::from(options.input_width.unwrap_or_default() as i64)
                    }
                    (None, _) => TDim::from(
                        model
                            .symbols
                            .sym(&format!("{}_{axis}", sanitize(&info.name))),
                    ),
                });
            }
            model
                .set_input_fact(i, InferenceFact::dt_shape(dt, shape))
                .map_err(refused)?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(refused)?;
        Ok(Self { plan })
    }

    /// Runs the plan; inputs in declared order.
    pub fn run(
        &self,
        infos: &[TensorInfo],
        inputs: &[&Named],
        outputs: &[TensorInfo],
    ) -> Result<Vec<Named>, ModelError> {
        let mut values = tvec!();
        for (info, given) in infos.iter().zip(inputs) {
            let t = to_tract(&given.tensor)?;
            let dt = datum_type(info.dtype).unwrap_or(t.datum_type());
            let t = if t.datum_type() == dt {
                t
            } else {
                t.cast_to_dt(dt)
                    .map_err(|e| ModelError::BadInput(format!("input `{}`: {e}", info.name)))?
                    .into_owned()
            };
            values.push(t.into_tvalue());
        }
        let out = self
            .plan
            .run(values)
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        out.into_iter()
            .zip(outputs)
            .map(|(t, info)| {
                let tensor = from_tract(&t, info.dtype)?;
                Ok(Named {
                    name: info.name.clone(),
                    tensor,
                    keys: info.keys.clone(),
                })
            })
            .collect()
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn datum_type(d: DType) -> Option<DatumType> {
    Some(match d {
        DType::F32 => DatumType::F32,
        DType::F64 => DatumType::F64,
        DType::I64 => DatumType::I64,
        DType::I32 => DatumType::I32,
        DType::Bool => DatumType::Bool,
        DType::String => DatumType::String,
        DType::Other(_) => return None,
    })
}

fn to_tract(t: &Tensor) -> Result<TTensor, ModelError> {
    let bad = |e: tract_onnx::prelude::TractError| ModelError::BadInput(e.to_string());
    match &t.data {
        Data::F32(v) => TTensor::from_shape(&t.shape, v).map_err(bad),
        Data::F64(v) => TTensor::from_shape(&t.shape, v).map_err(bad),
        Data::I64(v) => TTensor::from_shape(&t.shape, v).map_err(bad),
        Data::String(v) => {
            let arr = tract_ndarray::ArrayD::from_shape_vec(t.shape.clone(), v.clone())
                .map_err(|e| ModelError::BadInput(e.to_string()))?;
            Ok(TTensor::from(arr))
        }
    }
}

/// A tract tensor as edgeloop's, cast to the declared ONNX type (`declared`):
/// tract computes some integer outputs (`ArgMax` labels) as `TDim`.
fn from_tract(t: &TTensor, declared: DType) -> Result<Tensor, ModelError> {
    let run = |e: tract_onnx::prelude::TractError| ModelError::Run(e.to_string());
    let shape = t.shape().to_vec();
    let dt = t.datum_type();
    let data = if dt == DatumType::TDim {
        let ints = t
            .to_plain_array_view::<TDim>()
            .map_err(run)?
            .iter()
            .map(|d| d.to_i64().map_err(|e| ModelError::Run(e.to_string())))
            .collect::<Result<Vec<i64>, _>>()?;
        match declared {
            DType::F32 => Data::F32(ints.iter().map(|i| *i as f32).collect()),
            DType::F64 => Data::F64(ints.iter().map(|i| *i as f64).collect()),
            _ => Data::I64(ints),
        }
    } else if dt == DatumType::String {
        Data::String(values::<String>(t)?)
    } else {
        let target = match declared {
            DType::F32 => DatumType::F32,
            DType::F64 => DatumType::F64,
            DType::I64 | DType::I32 | DType::Bool => DatumType::I64,
            _ if dt.is_float() && dt != DatumType::F64 => DatumType::F32,
            _ if dt == DatumType::F64 => DatumType::F64,
            _ => DatumType::I64,
        };
        let cast = t.cast_to_dt(target).map_err(run)?;
        match target {
            DatumType::F32 => Data::F32(values::<f32>(&cast)?),
            DatumType::F64 => Data::F64(values::<f64>(&cast)?),
            _ => Data::I64(values::<i64>(&cast)?),
        }
    };
    Ok(Tensor { shape, data })
}

fn values<D: Datum + Clone>(t: &TTensor) -> Result<Vec<D>, ModelError> {
    Ok(t.to_plain_array_view::<D>()
        .map_err(|e| ModelError::Run(e.to_string()))?
        .iter()
        .cloned()
        .collect())
}
