//! `Scaler`: `Y = (X - offset) * scale`, per column
//! (<https://onnx.ai/onnx/operators/onnx_aionnxml_Scaler.html>).
//!
//! Input `[N, C]` (or `[C]`) of any numeric type; output `f32`, same shape.
//! `offset` and `scale` hold one value (every column) or `C`; absent means 0
//! and 1 (onnxruntime's defaults).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{expansion, floats, in_node, rows_f32, Kernel, OutShape, OutSpec};

/// The parsed operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaler {
    pub offset: Vec<f32>,
    pub scale: Vec<f32>,
}

/// tract op builder.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = in_node(
        "Scaler",
        node,
        (|| -> TractResult<Scaler> {
            let offset = floats(node, "offset")?;
            let scale = floats(node, "scale")?;
            Ok(Scaler {
                offset: if offset.is_empty() { vec![0.0] } else { offset },
                scale: if scale.is_empty() { vec![1.0] } else { scale },
            })
        })(),
    )?;
    Ok(expansion(op))
}

fn check_width(name: &str, v: &[f32], c: usize) -> TractResult<()> {
    ensure!(
        v.len() == 1 || v.len() == c,
        "Scaler: {name} has {} values for {c} columns",
        v.len()
    );
    Ok(())
}

impl Kernel for Scaler {
    fn name(&self) -> &'static str {
        "Scaler"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        tvec!(OutSpec::new(f32::datum_type(), OutShape::Same))
    }

    fn check_input(&self, input: &TypedFact) -> TractResult<()> {
        if let Some(c) = input.shape.last().and_then(|d| d.to_usize().ok()) {
            check_width("offset", &self.offset, c)?;
            check_width("scale", &self.scale, c)?;
        }
        Ok(())
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let shape: TVec<usize> = input.shape().into();
        let (mut x, _, c) = rows_f32(&input)?;
        check_width("offset", &self.offset, c)?;
        check_width("scale", &self.scale, c)?;
        let (o1, s1) = (self.offset.len() == 1, self.scale.len() == 1);
        {
            let mut view = x.try_as_plain_ram_mut()?;
            let v = view.as_slice_mut::<f32>()?;
            for row in v.chunks_mut(c.max(1)) {
                for (j, x) in row.iter_mut().enumerate() {
                    let o = if o1 { self.offset[0] } else { self.offset[j] };
                    let s = if s1 { self.scale[0] } else { self.scale[j] };
                    *x = (*x - o) * s;
                }
            }
        }
        Ok(tvec!(x.into_shape(&shape)?.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_each_column_as_the_spec_says() {
        // Spec example semantics: (x - offset) * scale, per column.
        let op = Scaler {
            offset: vec![1.0, -2.0],
            scale: vec![2.0, 0.5],
        };
        let x = tensor2(&[[3.0f32, 4.0], [1.0, -2.0]]).into_tvalue();
        let y = op.eval(x).unwrap();
        assert_eq!(*y[0], tensor2(&[[4.0f32, 3.0], [0.0, 0.0]]));
        let one = Scaler {
            offset: vec![1.0],
            scale: vec![3.0],
        };
        let y = one.eval(tensor1(&[2i64, 0]).into_tvalue()).unwrap();
        assert_eq!(*y[0], tensor1(&[3.0f32, -3.0]));
        let bad = Scaler {
            offset: vec![1.0, 2.0, 3.0],
            scale: vec![1.0],
        };
        assert!(bad.eval(tensor2(&[[1.0f32, 2.0]]).into_tvalue()).is_err());
    }
}
