//! The tract engine (pure Rust): the parser with edgeloop's operators, the
//! operator check, symbolic batch dims, outputs cast to their declared type.
//!
//! Per call, tract's general plan resolves the batch symbol, and a fresh run
//! state starts each matrix product's scratch space and output layout anew.
//! So a session keeps, besides the general plan, plans made for the batch
//! sizes it is called with (the symbol set to the size, then optimised: no
//! symbol to resolve, layouts fixed at load), up to [`SIZED_PLANS`] sizes,
//! and it keeps run states between calls when the plan holds no operator
//! state (a recurrent operator's hidden state would otherwise carry from one
//! call into the next).
//!
//! Memory: a plan made for a size shares the graph's constants with the
//! others (`Arc`s; edgeloop's operators, the dense layers of
//! [`crate::onnx::ml::gemm`] among them, hold theirs behind one), but tract
//! packs the weights of its own matrix products and convolutions anew in
//! each. So the sized plans are capped by those bytes as well: together at
//! most [`SIZED_PLAN_BYTES`] of constants (a model of 8 MiB or more of them
//! gets none, and runs every call on the general plan); and the decluttered
//! model they are made from is dropped once no more will be made.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::{
    tract_ndarray, tvec, Datum, DatumType, Framework, InferenceFact, InferenceModelExt,
    IntoRunnable, IntoTValue, Symbol, TDim, TValue, TVec, Tensor as TTensor, TypedModel,
    TypedRunnableModel, TypedSimpleState,
};
use tract_onnx::tract_hir::infer::{DimFact, ShapeFactoid};
use tract_onnx::tract_hir::internal::{DimLike, EvalContext, OpState, TractResult, TypedNode};

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

/// Batch sizes a session keeps a plan of its own for (the first sizes it is
/// called with); calls of other sizes take the general plan.
const SIZED_PLANS: usize = 4;

/// The constants' bytes the sized plans of a session may copy, together
/// (each counted as the decluttered model's constants: what tract's matrix
/// products pack anew per plan).
const SIZED_PLAN_BYTES: usize = 8 << 20;

/// Run states a plan keeps between calls (one per call running at once).
const KEPT_STATES: usize = 4;

/// A runnable tract plan, and plans for the batch sizes it is called with.
#[derive(Debug)]
pub(super) struct TractSession {
    /// The plan for any batch size (the batch symbol resolved per call).
    general: Prepared,
    /// The decluttered model the sized plans are made from, with the batch
    /// symbol; `None` when no input has a batch symbol, or no more sized
    /// plans will be made.
    typed: Mutex<Option<Arc<(TypedModel, Symbol)>>>,
    /// How many batch sizes get a plan of their own (at most
    /// [`SIZED_PLANS`], fewer for a model whose constants' copies would
    /// pass [`SIZED_PLAN_BYTES`]).
    sized_cap: usize,
    /// Plans by batch size; `None`: making one failed, the general plan runs.
    sized: Mutex<Vec<(usize, Option<Arc<Prepared>>)>>,
    /// The graph's node names and operators, to name them in errors.
    nodes: Vec<tract_onnx::pb::NodeProto>,
    /// Each input's dims as the plan fixes them (declared, or inferred from
    /// the graph), `None` where open: what a call's tensors must fit.
    planned: Vec<Vec<Option<usize>>>,
}

/// A plan and the run states kept for it.
#[derive(Debug)]
struct Prepared {
    plan: Arc<TypedRunnableModel>,
    /// `None` when an operator keeps state between turns (a recurrent
    /// operator's hidden state): each call then starts a fresh run state.
    states: Option<Mutex<Vec<TypedSimpleState>>>,
}

impl Prepared {
    fn new(plan: Arc<TypedRunnableModel>) -> Result<Self, tract_onnx::prelude::TractError> {
        let state = plan.spawn()?;
        let states = state
            .op_states
            .iter()
            .all(Option::is_none)
            .then(|| Mutex::new(vec![state]));
        Ok(Self { plan, states })
    }

    fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>, ModelError> {
        let failed = |e: tract_onnx::prelude::TractError| ModelError::Run(format!("{e:#}"));
        let kept = self
            .states
            .as_ref()
            .and_then(|s| s.lock().ok().and_then(|mut s| s.pop()));
        let mut state = match kept {
            Some(s) => s,
            None => self.plan.spawn().map_err(failed)?,
        };
        // A state whose run failed is dropped, not kept.
        let out = state
            .run_plan_with_eval(inputs, guarded_eval)
            .map_err(failed)?;
        if let Some(Ok(mut s)) = self.states.as_ref().map(|s| s.lock()) {
            if s.len() < KEPT_STATES {
                s.push(state);
            }
        }
        Ok(out)
    }
}

/// tract's evaluation of one node, a panic inside it (tract's `Gather`
/// slices out of range on an index past its table) turned into an error
/// naming the node (`Evaluating #1 "pick_row" Gather: panicked: …`):
/// bad input fails the call, not the daemon. After each node, the AVX
/// registers' upper halves are cleared
/// ([`crate::onnx::ml::clear_upper_vector_state`]).
fn guarded_eval(
    ctx: &EvalContext,
    state: Option<&mut (dyn OpState + 'static)>,
    node: &TypedNode,
    inputs: TVec<TValue>,
) -> TractResult<TVec<TValue>> {
    let run = std::panic::AssertUnwindSafe(|| {
        tract_onnx::tract_core::plan::eval(ctx, state, node, inputs)
    });
    let result = std::panic::catch_unwind(run);
    // The next node may be scalar code built for baseline x86-64; after
    // tract's AVX-512 kernels it would pay the AVX-SSE transition penalty.
    crate::onnx::ml::clear_upper_vector_state();
    match result {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(tract_onnx::prelude::TractError::msg(format!(
                "Evaluating {node}: panicked: {what}"
            )))
        }
    }
}

/// The newest version of the default operator set (`ai.onnx`) tract runs.
/// tract-onnx 0.23.9 parses any version, only warning beyond 18 (`src/model.rs`,
/// `Onnx::parse_with_template`: "only tested against operator set 9 to 18
/// (included)"), and runs a newer graph with the operators as it knows
/// them; the newest operator changes it implements are opset 21's
/// (`src/ops/nn/group_norm.rs`: GroupNormalization's per-channel affine
/// from 21; `src/ops/fft.rs`: DFT's axis input from 20), and edgeloop's
/// conformance tests check it against onnxruntime on opset 20 (torch's
/// exporter, `tests/conformance_torch.rs`) and 21 (`ai.onnx.ml` 5 trees,
/// `tests/conformance_tract.rs`). A newer opset may change an operator's
/// meaning without tract knowing it.
pub const MAX_OPSET: i64 = 21;

impl TractSession {
    /// Checks the operator set and the operators, sets the input facts,
    /// optimises, makes runnable.
    pub fn load(graph: &Graph, options: &LoadOptions) -> Result<Self, ModelError> {
        if let Some(opset) = graph.default_opset().filter(|v| *v > MAX_OPSET) {
            return Err(ModelError::UnsupportedOpset {
                engine: Engine::Tract,
                opset,
                max: MAX_OPSET,
            });
        }
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
        let nodes = super::graph::node_names(graph.graph());
        let refused = |e: tract_onnx::prelude::TractError| {
            ModelError::Refused(super::graph::in_model_terms(
                &nodes,
                &format!("tract: {e:#}"),
            ))
        };
        let mut proto = graph.proto.clone();
        super::graph::unify_symbolic_dims(&mut proto, BATCH);
        let model = parser.model_for_proto_model(&proto).map_err(refused)?;
        let batch = model.symbols.sym(BATCH);
        let mut input_dims = Vec::with_capacity(graph.inputs.len());
        for info in &graph.inputs {
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
            input_dims.push((dt, dims));
        }
        // Open axes (symbolic or absent, past the batch axis) left for tract
        // to infer from the graph (a Gemm's weights fix its input's width);
        // when it cannot, each becomes a symbol of its own.
        let mut typed = None;
        for open in [true, false] {
            let mut m = model.clone();
            for (i, (dt, dims)) in input_dims.iter().enumerate() {
                let rank = dims.len();
                let shape: TVec<DimFact> = dims
                    .iter()
                    .enumerate()
                    .map(|(axis, d)| match (d, axis) {
                        (Some(n), _) => DimFact::from(TDim::from(*n as i64)),
                        (None, 0) => DimFact::from(TDim::from(batch.clone())),
                        (None, 1) if rank == 2 && options.input_width.is_some() => DimFact::from(
                            TDim::from(options.input_width.unwrap_or_default() as i64),
                        ),
                        (None, _) if open => DimFact::default(),
                        (None, _) => DimFact::from(TDim::from(
                            m.symbols
                                .sym(&format!("{}_{axis}", sanitize(&graph.inputs[i].name))),
                        )),
                    })
                    .collect();
                m.set_input_fact(i, InferenceFact::dt_shape(*dt, ShapeFactoid::closed(shape)))
                    .map_err(refused)?;
            }
            match m.into_typed() {
                Ok(t) => {
                    typed = Some(t);
                    break;
                }
                Err(e) if !open => return Err(refused(e)),
                Err(_) => {}
            }
        }
        let Some(model) = typed else {
            return Err(ModelError::Refused("tract: no plan".into()));
        };
        let decluttered = model.into_decluttered().map_err(refused)?;
        // The dims the plan fixes for each input (declared or inferred).
        let planned: Vec<Vec<Option<usize>>> = decluttered
            .input_outlets()
            .map_err(refused)?
            .iter()
            .map(|o| {
                decluttered.outlet_fact(*o).map(|f| {
                    f.shape
                        .iter()
                        .map(|d| d.to_usize().ok())
                        .collect::<Vec<_>>()
                })
            })
            .collect::<Result<_, _>>()
            .map_err(refused)?;
        let general = decluttered
            .clone()
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .and_then(Prepared::new)
            .map_err(refused)?;
        let batched = decluttered
            .input_outlets()
            .map_err(refused)?
            .iter()
            .any(|o| {
                decluttered
                    .outlet_fact(*o)
                    .is_ok_and(|f| f.shape.iter().any(|d| d.symbols().contains(&batch)))
            });
        let copied = const_bytes(&decluttered);
        let sized_cap =
            SIZED_PLANS.min(SIZED_PLAN_BYTES.checked_div(copied).unwrap_or(SIZED_PLANS));
        Ok(Self {
            general,
            typed: Mutex::new((batched && sized_cap > 0).then(|| Arc::new((decluttered, batch)))),
            sized_cap,
            sized: Mutex::new(Vec::new()),
            nodes,
            planned,
        })
    }

    /// The plan for batches of `n` rows: made at the first call of that size
    /// while fewer than [`SIZED_PLANS`] sizes have one.
    fn sized(&self, n: usize) -> Option<Arc<Prepared>> {
        {
            let sized = self.sized.lock().ok()?;
            if let Some((_, p)) = sized.iter().find(|(size, _)| *size == n) {
                return p.clone();
            }
            if sized.len() >= self.sized_cap {
                return None;
            }
        }
        let typed = self.typed.lock().ok()?.clone()?;
        let (typed, batch) = &*typed;
        let made = typed
            .set_symbols(&HashMap::from([(batch.clone(), TDim::from(n as i64))]))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .and_then(Prepared::new)
            .map(Arc::new);
        if let Err(e) = &made {
            tracing::debug!(rows = n, error = %e, "No plan of its own for this batch size; the general plan runs.");
        }
        let made = made.ok();
        let mut sized = self.sized.lock().ok()?;
        if let Some((_, p)) = sized.iter().find(|(size, _)| *size == n) {
            return p.clone();
        }
        if sized.len() < self.sized_cap {
            sized.push((n, made.clone()));
        }
        if sized.len() >= self.sized_cap {
            // No more plans to make: the decluttered model is not needed.
            if let Ok(mut t) = self.typed.lock() {
                *t = None;
            }
        }
        made
    }

    /// Batch sizes with a plan of their own so far, and the cap.
    #[cfg(test)]
    fn sized_plans(&self) -> (usize, usize) {
        let made = self.sized.lock().map_or(0, |s| s.len());
        (made, self.sized_cap)
    }

    /// Runs the plan; inputs in declared order.
    pub fn run(
        &self,
        infos: &[TensorInfo],
        inputs: &[&Named],
        outputs: &[TensorInfo],
    ) -> Result<Vec<Named>, ModelError> {
        let mut values = tvec!();
        let mut rows = None;
        for ((info, given), dims) in infos.iter().zip(inputs).zip(&self.planned) {
            fits_plan(&info.name, dims, &given.tensor.shape)?;
            if rows.is_none() && info.dims.as_ref().is_none_or(|d| d.first() == Some(&None)) {
                rows = given.tensor.shape.first().copied();
            }
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
        let out = match rows.and_then(|n| self.sized(n)) {
            Some(plan) => plan.run(values),
            None => self.general.run(values),
        }
        .map_err(|e| match e {
            ModelError::Run(m) => ModelError::Run(super::graph::in_model_terms(&self.nodes, &m)),
            other => other,
        })?;
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

/// A tensor of `shape` fits input `name`'s planned `dims`: the rank, and
/// every axis the plan fixes (from the model's declared dims, or inferred
/// from its graph: a Gemm's weights fix its input's width).
fn fits_plan(name: &str, dims: &[Option<usize>], shape: &[usize]) -> Result<(), ModelError> {
    let text = || {
        let d: Vec<String> = dims
            .iter()
            .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
            .collect();
        format!("[{}]", d.join(", "))
    };
    if dims.len() != shape.len() {
        return Err(ModelError::BadInput(format!(
            "input `{name}` takes {} dims {}; given {} dims {shape:?}",
            dims.len(),
            text(),
            shape.len()
        )));
    }
    for (axis, (d, g)) in dims.iter().zip(shape).enumerate() {
        if let Some(d) = d {
            if d != g {
                return Err(ModelError::BadInput(format!(
                    "input `{name}` {}: axis {axis} is {d} in the model's graph, given {g}",
                    text()
                )));
            }
        }
    }
    Ok(())
}

/// Bytes of the constants of `model` (plain tensors: their elements).
fn const_bytes(model: &TypedModel) -> usize {
    model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<tract_onnx::tract_core::ops::konst::Const>())
        .map(|c| {
            let t = c.val();
            t.len() * t.datum_type().size_of()
        })
        .sum()
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

#[cfg(test)]
mod tests {
    use super::super::{Data, EngineKind, Inner, LoadOptions, Named, Session, Tensor};
    use crate::ingest::decode::Task;
    use crate::onnx::builder::{input_info, model_bytes, node, tensor_f32, value_info, ModelMeta};
    use tract_onnx::pb;

    /// `y = x W` (`MatMul`, which tract packs per plan), `W` `[k, m]` of
    /// `W[i][j] = (i + j) % 7 - 3`.
    fn matmul_model(k: usize, m: usize) -> Vec<u8> {
        let w: Vec<f32> = (0..k * m)
            .map(|n| ((n / m + n % m) % 7) as f32 - 3.0)
            .collect();
        let graph = pb::GraphProto {
            name: "matmul".into(),
            node: vec![node("MatMul", &["features", "w"], "prediction", vec![])],
            initializer: vec![tensor_f32("w", &[k as i64, m as i64], &w)],
            input: vec![input_info(k)],
            output: vec![value_info(
                "prediction",
                pb::tensor_proto::DataType::Float,
                &[m as i64],
            )],
            ..Default::default()
        };
        model_bytes(
            graph,
            &ModelMeta {
                classes: &[],
                features: &[],
                task: Task::Regression,
                family: "test",
                version: 1,
                doc: "",
            },
        )
    }

    /// Calls of `sizes` rows (`x[r][i] = 1` where `i == r % k`): each row's
    /// output is row `r % k` of `W`. Returns (sized plans made, cap, whether
    /// the decluttered model is still kept).
    fn serve(k: usize, m: usize, sizes: &[usize]) -> (usize, usize, bool) {
        let s = Session::load(
            &matmul_model(k, m),
            EngineKind::Tract,
            &LoadOptions::default(),
        )
        .unwrap();
        for &n in sizes {
            let mut x = vec![0f32; n * k];
            for r in 0..n {
                x[r * k + r % k] = 1.0;
            }
            let t = Tensor::new(vec![n, k], Data::F32(x)).unwrap();
            let out = s.run(&[Named::new("features", t)]).unwrap();
            let y = out[0].tensor.data.to_f32().unwrap();
            for r in 0..n {
                for j in 0..m {
                    let want = ((r % k + j) % 7) as f32 - 3.0;
                    assert_eq!(y[r * m + j], want, "{n} rows: row {r} output {j}");
                }
            }
        }
        // Irrefutable without the `ort` feature.
        #[allow(irrefutable_let_patterns)]
        let Inner::Tract(t) = &*s.inner
        else {
            unreachable!()
        };
        let (made, cap) = t.sized_plans();
        let kept = t.typed.lock().map(|t| t.is_some()).unwrap_or(false);
        (made, cap, kept)
    }

    /// A small model gets a plan for each of its first 4 batch sizes, then
    /// drops the model they are made from; one whose weights pass 8 MiB
    /// (1100 x 2000 floats, 8.8 MB) gets none, and runs every size on the
    /// general plan.
    #[test]
    fn sized_plans_are_capped_by_the_bytes_they_copy() {
        assert_eq!(serve(4, 3, &[1, 2]), (2, 4, true));
        assert_eq!(serve(4, 3, &[1, 2, 3, 4, 5, 1]), (4, 4, false));
        assert_eq!(serve(1100, 2000, &[1, 3]), (0, 0, false));
        // 600 x 2000 floats (4.8 MB): one plan of its own.
        assert_eq!(serve(600, 2000, &[1, 3, 2]), (1, 1, false));
    }
}
