//! `ai.onnx.ml` operators tract-onnx 0.23 lacks, evaluated by edgeloop inside
//! tract, so models made by skl2onnx, onnxmltools and the like run in the engine.
//!
//! One file per operator (or small family), each following the ONNX operator
//! specification (<https://onnx.ai/onnx/operators/>, section `ai.onnx.ml`) and,
//! where the specification leaves room, onnxruntime's CPU kernels, whose outputs
//! `tests/conformance_tract.rs` compares against:
//!
//! * module [`scaler`]: `Scaler`;
//! * module [`binarizer`]: `Binarizer`;
//! * module [`imputer`]: `Imputer`;
//! * module [`one_hot_encoder`]: `OneHotEncoder`;
//! * module [`label_encoder`]: `LabelEncoder` (ml opsets 1 to 4);
//! * module [`zipmap`]: `ZipMap`, served as the identity on the dense `[N, C]`
//!   probabilities (tract has no sequence or map values);
//! * module [`svm`]: `SVMClassifier` and `SVMRegressor`;
//! * module [`linear_classifier`]: `LinearClassifier` (replaces tract-onnx's, which refuses
//!   string labels);
//! * module [`linear_regressor`]: `LinearRegressor` (replaces tract-onnx's, whose MatMul
//!   tract's declutter pass breaks on skl2onnx's PolynomialFeatures graphs);
//! * module [`array_feature_extractor`]: `ArrayFeatureExtractor` (replaces tract-onnx's,
//!   which drops the axis of a scalar index);
//! * module [`tree_ensemble5`]: the ml-opset-5 `TreeEnsemble`, compiled to
//!   [`crate::onnx::tree_ensemble::TreeEnsemble`];
//! * module [`softmax`]: the standard `Softmax` (replaces tract-onnx's, whose
//!   vector kernels copy each short row, a few classes, through a scratch
//!   buffer);
//! * module [`gemm`]: the standard `Gemm` (replaces tract-onnx's: a dense
//!   layer with constant weights, every MLP's, runs as edgeloop's
//!   [`gemm::Dense`], a `Relu` after it fused in; any other Gemm as tract's).
//!
//! Each operator is a [`Kernel`]: its outputs' types and shapes as a function of
//! input 0's, and an `eval` over whole tensors. [`register`] puts them in tract's
//! ONNX op register; a malformed node is refused at load with an error naming
//! the operator, node and attribute.

use std::sync::Arc;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

pub mod array_feature_extractor;
pub mod binarizer;
pub mod gemm;
pub mod imputer;
pub mod label_encoder;
pub mod linear_classifier;
pub mod linear_regressor;
pub mod one_hot_encoder;
pub mod scaler;
pub mod softmax;
pub mod svm;
pub mod tree_ensemble5;
pub mod zipmap;

/// Registers every operator of this module in `register` (replacing
/// tract-onnx's where it has one).
pub fn register(register: &mut OnnxOpRegister) {
    register.insert("Scaler", scaler::build);
    register.insert("Binarizer", binarizer::build);
    register.insert("Imputer", imputer::build);
    register.insert("OneHotEncoder", one_hot_encoder::build);
    register.insert("LabelEncoder", label_encoder::build);
    register.insert("ZipMap", zipmap::build);
    register.insert("SVMClassifier", svm::build_classifier);
    register.insert("SVMRegressor", svm::build_regressor);
    register.insert("TreeEnsemble", tree_ensemble5::build);
    register.insert("LinearClassifier", linear_classifier::build);
    register.insert("LinearRegressor", linear_regressor::build);
    register.insert("ArrayFeatureExtractor", array_feature_extractor::build);
    register.insert("Softmax", softmax::build);
    register.insert("Gemm", gemm::build);
}

/// How an output's shape follows input 0's shape `S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutShape {
    /// `S`.
    Same,
    /// `[S[0], k]`.
    Rows(usize),
    /// `[S[0]]`.
    Rows1,
    /// `S ++ [k]`.
    Append(usize),
}

/// One output: its type (`None`: input 0's) and shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutSpec {
    pub dt: Option<DatumType>,
    pub shape: OutShape,
}

impl OutSpec {
    pub fn new(dt: DatumType, shape: OutShape) -> Self {
        Self {
            dt: Some(dt),
            shape,
        }
    }
}

/// An `ai.onnx.ml` operator evaluated by edgeloop.
pub trait Kernel: std::fmt::Debug + Send + Sync + 'static {
    /// The ONNX operator's name.
    fn name(&self) -> &'static str;
    /// The outputs, in the node's order.
    fn outputs(&self) -> TVec<OutSpec>;
    /// Refuses input facts the operator cannot take (called with what is known).
    fn check_input(&self, _input: &TypedFact) -> TractResult<()> {
        Ok(())
    }
    /// Evaluates one call.
    ///
    /// # Errors
    /// An input of the wrong rank, width or type.
    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>>;
}

/// Wraps a kernel for tract's parser: `(op, no extra inputs)`.
pub fn expansion(kernel: impl Kernel) -> (Box<dyn InferenceOp>, Vec<String>) {
    (expand(MlExpansion(Arc::new(kernel))), vec![])
}

/// Adds the operator and node name to a parse error.
pub fn in_node<T>(op: &str, node: &NodeProto, r: TractResult<T>) -> TractResult<T> {
    r.with_context(|| format!("{op} node {:?}", node.name))
}

/// A FLOATS attribute, or empty.
pub fn floats(node: &NodeProto, name: &str) -> TractResult<Vec<f32>> {
    Ok(node
        .get_attr_opt_slice::<f32>(name)?
        .map(<[f32]>::to_vec)
        .unwrap_or_default())
}

/// An INTS attribute, or empty.
pub fn ints(node: &NodeProto, name: &str) -> TractResult<Vec<i64>> {
    Ok(node
        .get_attr_opt_slice::<i64>(name)?
        .map(<[i64]>::to_vec)
        .unwrap_or_default())
}

/// A STRINGS attribute, or empty.
pub fn strings(node: &NodeProto, name: &str) -> TractResult<Vec<String>> {
    Ok(node
        .get_attr_opt_tvec::<String>(name)?
        .map(|v| v.into_vec())
        .unwrap_or_default())
}

/// A TENSOR attribute, loaded, or `None`.
pub fn tensor(ctx: &ParsingContext, node: &NodeProto, name: &str) -> TractResult<Option<Tensor>> {
    match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)? {
        Some(t) => Ok(Some(
            ctx.load_tensor(t)
                .with_context(|| format!("attribute {name}"))?,
        )),
        None => Ok(None),
    }
}

/// Input 0 as a row-major `[N, C]` `f32` matrix (`[C]` is one row): (values, N, C).
///
/// # Errors
/// An input of rank other than 1 or 2, or one that does not cast to `f32`.
pub fn rows_f32(input: &Tensor) -> TractResult<(Tensor, usize, usize)> {
    let (n, c) = match *input.shape() {
        [c] => (1, c),
        [n, c] => (n, c),
        ref s => bail!("input of shape {s:?}, expected [N, C]"),
    };
    Ok((input.cast_to::<f32>()?.into_owned(), n, c))
}

/// Post transforms of the classifiers' scores (`post_transform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
}

impl PostTransform {
    /// Parses `NONE` (default), `SOFTMAX`, `LOGISTIC`, `SOFTMAX_ZERO`.
    ///
    /// # Errors
    /// `PROBIT` (not supported here) or an unknown name.
    pub fn parse(node: &NodeProto) -> TractResult<Self> {
        Ok(
            match node
                .get_attr_opt::<&str>("post_transform")?
                .unwrap_or("NONE")
            {
                "NONE" => Self::None,
                "SOFTMAX" => Self::Softmax,
                "LOGISTIC" => Self::Logistic,
                "SOFTMAX_ZERO" => Self::SoftmaxZero,
                other => bail!("post_transform {other:?} is not supported"),
            },
        )
    }

    /// Applies the transform to one row of scores in place (onnxruntime's
    /// `ml_common.h`: softmax with the maximum subtracted; SOFTMAX_ZERO leaves
    /// zeros at zero).
    pub fn apply(self, s: &mut [f32]) {
        match self {
            Self::None => {}
            Self::Logistic => s.iter_mut().for_each(|v| *v = logistic(*v)),
            Self::Softmax | Self::SoftmaxZero => {
                let zero = self == Self::SoftmaxZero;
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in s.iter_mut() {
                    *v = if zero && *v == 0.0 {
                        0.0
                    } else {
                        (*v - max).exp()
                    };
                    sum += *v;
                }
                if sum > 0.0 {
                    s.iter_mut().for_each(|v| *v /= sum);
                }
            }
        }
    }
}

/// Clears the upper halves of the AVX registers (`vzeroupper`) when the CPU
/// has AVX. tract's AVX-512 matrix kernels return with them in use, and
/// then every legacy-SSE instruction of code built for baseline x86-64 (all
/// of edgeloop's scalar float code, `libm`'s `expf` call sequence) pays a
/// transition penalty: measured, a 64-row softmax after a Gemm took 25 µs
/// instead of 2. Called where edgeloop's code takes over from tract's: at
/// the start of its operators and after a plan runs. Elsewhere a no-op.
#[inline]
pub fn clear_upper_vector_state() {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx")]
        unsafe fn zeroupper() {
            std::arch::x86_64::_mm256_zeroupper();
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (checked just above).
            unsafe { zeroupper() }
        }
    }
}

/// `1 / (1 + e^-x)`, as onnxruntime's `ComputeLogistic`.
pub fn logistic(x: f32) -> f32 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 {
        1.0 - v
    } else {
        v
    }
}

// ---- tract plumbing -------------------------------------------------------------------

#[derive(Debug, Clone)]
struct MlExpansion(Arc<dyn Kernel>);

impl Expansion for MlExpansion {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.0.outputs().len())
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        let specs = self.0.outputs();
        check_output_arity(outputs, specs.len())?;
        for (o, spec) in outputs.iter().zip(specs) {
            match spec.dt {
                Some(dt) => s.equals(&o.datum_type, dt)?,
                None => s.equals(&o.datum_type, &inputs[0].datum_type)?,
            }
            match spec.shape {
                OutShape::Same => s.equals(&o.shape, &inputs[0].shape)?,
                OutShape::Rows(k) => {
                    s.equals(&o.rank, 2)?;
                    s.equals(&o.shape[0], &inputs[0].shape[0])?;
                    s.equals(&o.shape[1], k.to_dim())?;
                }
                OutShape::Rows1 => {
                    s.equals(&o.rank, 1)?;
                    s.equals(&o.shape[0], &inputs[0].shape[0])?;
                }
                OutShape::Append(k) => {
                    s.equals(&o.rank, inputs[0].rank.bex() + 1)?;
                    s.given(&inputs[0].rank, move |s, rank| {
                        for axis in 0..rank as usize {
                            s.equals(&o.shape[axis], &inputs[0].shape[axis])?;
                        }
                        s.equals(&o.shape[rank as usize], k.to_dim())
                    })?;
                }
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, MlOp(self.0.clone()), inputs)
    }
}

/// The typed op: runs its [`Kernel`].
#[derive(Debug, Clone)]
pub struct MlOp(Arc<dyn Kernel>);

impl PartialEq for MlOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for MlOp {}

impl Op for MlOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    op_as_typed_op!();
}

impl EvalOp for MlOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        clear_upper_vector_state();
        self.0
            .eval(input)
            .with_context(|| format!("evaluating {}", self.0.name()))
    }
}

impl TypedOp for MlOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs[0];
        self.0.check_input(input)?;
        let shape = &input.shape;
        let rows = || -> TractResult<TDim> {
            ensure!(shape.rank() >= 1, "{}: scalar input", self.0.name());
            Ok(shape[0].clone())
        };
        self.0
            .outputs()
            .into_iter()
            .map(|spec| {
                let dt = spec.dt.unwrap_or(input.datum_type);
                Ok(match spec.shape {
                    OutShape::Same => dt.fact(shape.clone()),
                    OutShape::Rows(k) => dt.fact([rows()?, k.to_dim()]),
                    OutShape::Rows1 => dt.fact([rows()?]),
                    OutShape::Append(k) => {
                        let mut dims: TVec<TDim> = shape.iter().cloned().collect();
                        dims.push(k.to_dim());
                        dt.fact(dims)
                    }
                })
            })
            .collect()
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_logistic_follow_the_definitions() {
        let mut s = [1.0f32, 2.0, 3.0];
        PostTransform::Softmax.apply(&mut s);
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let sum: f64 = e.iter().sum();
        for (a, b) in s.iter().zip(&e) {
            assert!((*a as f64 - b / sum).abs() < 1e-6);
        }
        let mut z = [0.0f32, 1.0];
        PostTransform::SoftmaxZero.apply(&mut z);
        assert_eq!(z, [0.0, 1.0]);
        assert!((logistic(0.0) - 0.5).abs() < 1e-7);
        assert!((logistic(-2.0) - 1.0 / (1.0 + 2f32.exp())).abs() < 1e-7);
    }
}
