//! `ArrayFeatureExtractor`
//! (<https://onnx.ai/onnx/operators/onnx_aionnxml_ArrayFeatureExtractor.html>):
//! selects `indices` along the last axis of `X`. Output shape as onnxruntime
//! (`array_feature_extractor.cc`) and onnx's reference implementation:
//! `X.shape[:-1] ++ [len(indices)]`, where a scalar index counts as one (tract-onnx's
//! own version drops that axis) and a 1-D `X` gives `[1, len(indices)]`.
//! `indices` (int64) of any shape are read flattened, as onnxruntime does.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::array::Gather;

/// The operator (no attributes).
#[derive(Debug, Clone, Default)]
pub struct ArrayFeatureExtractor;

/// tract op builder.
pub fn build(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(ArrayFeatureExtractor), vec![]))
}

impl Expansion for ArrayFeatureExtractor {
    fn name(&self) -> StaticName {
        "ArrayFeatureExtractor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, data, ind| {
            let k: TDim = ind.iter().product();
            let mut shape: TVec<TDim> = if data.len() <= 1 {
                tvec!(1.to_dim())
            } else {
                data[..data.len() - 1].iter().cloned().collect()
            };
            shape.push(k);
            s.equals(&outputs[0].shape, shape)
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let data_rank = model.outlet_fact(inputs[0])?.rank();
        ensure!(data_rank >= 1, "ArrayFeatureExtractor: scalar data");
        let mut ind = inputs[1];
        let ind_fact = model.outlet_fact(ind)?.clone();
        if ind_fact.datum_type != i64::datum_type() {
            ind = model.wire_node(
                format!("{prefix}.indices_i64"),
                tract_onnx::tract_hir::tract_core::ops::cast::cast(i64::datum_type()),
                &[ind],
            )?[0];
        }
        match ind_fact.rank() {
            0 => ind = model.wire_node(format!("{prefix}.indices_1d"), AxisOp::Add(0), &[ind])?[0],
            1 => {}
            _ => {
                let from: TVec<TDim> = ind_fact.shape.iter().cloned().collect();
                let k: TDim = from.iter().product();
                ind = model.wire_node(
                    format!("{prefix}.indices_1d"),
                    AxisOp::Reshape(0, from, tvec!(k)),
                    &[ind],
                )?[0];
            }
        }
        let mut y = model.wire_node(
            format!("{prefix}.gather"),
            Gather::new(data_rank - 1),
            &[inputs[0], ind],
        )?;
        if data_rank == 1 {
            y = model.wire_node(format!("{prefix}.one_row"), AxisOp::Add(0), &y)?;
        }
        Ok(y)
    }
}
