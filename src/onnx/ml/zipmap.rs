//! `ZipMap` (<https://onnx.ai/onnx/operators/onnx_aionnxml_ZipMap.html>): the
//! specification turns `[N, C]` probabilities into a sequence of N maps
//! `{class label: probability}`. tract has no sequence or map values, so
//! edgeloop serves ZipMap as the **identity** on the dense `[N, C]` `f32`
//! tensor: column `k` is the probability of `classlabels_*[k]` (the map's keys
//! in order). Consumers that need the labels read them from the node's
//! attributes (or the classifier's label output).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{expansion, in_node, ints, strings, Kernel, OutShape, OutSpec};

/// The parsed operator: how many classes it names.
#[derive(Debug, Clone, PartialEq)]
pub struct ZipMap {
    pub n_classes: usize,
}

/// tract op builder.
///
/// # Errors
/// Neither or both of `classlabels_int64s` and `classlabels_strings`.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let n = in_node(
        "ZipMap",
        node,
        (|| -> TractResult<usize> {
            let i = ints(node, "classlabels_int64s")?;
            let s = strings(node, "classlabels_strings")?;
            match (i.is_empty(), s.is_empty()) {
                (false, true) => Ok(i.len()),
                (true, false) => Ok(s.len()),
                _ => bail!("exactly one of classlabels_int64s and classlabels_strings must be set"),
            }
        })(),
    )?;
    Ok(expansion(ZipMap { n_classes: n }))
}

impl Kernel for ZipMap {
    fn name(&self) -> &'static str {
        "ZipMap"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        tvec!(OutSpec::new(f32::datum_type(), OutShape::Same))
    }

    fn check_input(&self, input: &TypedFact) -> TractResult<()> {
        if let Some(c) = input.shape.last().and_then(|d| d.to_usize().ok()) {
            ensure!(
                c == self.n_classes,
                "ZipMap names {} classes, its input has {c} columns",
                self.n_classes
            );
        }
        Ok(())
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        ensure!(
            input.shape().last() == Some(&self.n_classes),
            "ZipMap names {} classes, its input has shape {:?}",
            self.n_classes,
            input.shape()
        );
        Ok(tvec!(input.cast_to::<f32>()?.into_owned().into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_probabilities_through_and_checks_the_width() {
        let op = ZipMap { n_classes: 2 };
        let x = tensor2(&[[0.25f32, 0.75]]);
        assert_eq!(*op.eval(x.clone().into_tvalue()).unwrap()[0], x);
        assert!(op.eval(tensor2(&[[1.0f32]]).into_tvalue()).is_err());
    }
}
