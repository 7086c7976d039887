//! `Binarizer`: `Y = 1 if X > threshold else 0`, elementwise, same type and
//! shape (<https://onnx.ai/onnx/operators/onnx_aionnxml_Binarizer.html>;
//! NaN compares false and gives 0, as onnx's reference implementation).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{expansion, in_node, Kernel, OutShape, OutSpec};

/// The parsed operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Binarizer {
    /// `threshold` (default 0).
    pub threshold: f32,
}

/// tract op builder.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let threshold = in_node("Binarizer", node, node.get_attr_opt::<f32>("threshold"))?;
    Ok(expansion(Binarizer {
        threshold: threshold.unwrap_or(0.0),
    }))
}

impl Kernel for Binarizer {
    fn name(&self) -> &'static str {
        "Binarizer"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        tvec!(OutSpec {
            dt: None,
            shape: OutShape::Same
        })
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let dt = input.datum_type();
        let mut x = input.cast_to::<f32>()?.into_owned();
        for v in x.try_as_plain_ram_mut()?.as_slice_mut::<f32>()? {
            *v = if *v > self.threshold { 1.0 } else { 0.0 };
        }
        Ok(tvec!(x.cast_to_dt(dt)?.into_owned().into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn above_the_threshold_is_one() {
        let op = Binarizer { threshold: 0.5 };
        let y = op
            .eval(tensor1(&[0.2f32, 0.5, 0.7, f32::NAN]).into_tvalue())
            .unwrap();
        assert_eq!(*y[0], tensor1(&[0.0f32, 0.0, 1.0, 0.0]));
    }
}
