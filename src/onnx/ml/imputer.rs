//! `Imputer`: replaces `replaced_value_*` (NaN matches NaN) by the column's
//! `imputed_value_*` (<https://onnx.ai/onnx/operators/onnx_aionnxml_Imputer.html>).
//!
//! Input `[N, C]` (or `[C]`) `f32` (float attributes) or `i64` (int64
//! attributes); output the same type and shape. One imputed value serves every
//! column, else there is one per column.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{expansion, floats, in_node, ints, Kernel, OutShape, OutSpec};

/// The parsed operator.
#[derive(Debug, Clone, PartialEq)]
pub enum Imputer {
    Float { imputed: Vec<f32>, replaced: f32 },
    Int64 { imputed: Vec<i64>, replaced: i64 },
}

/// tract op builder.
///
/// # Errors
/// Neither or both of `imputed_value_floats` and `imputed_value_int64s`.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = in_node(
        "Imputer",
        node,
        (|| -> TractResult<Imputer> {
            let f = floats(node, "imputed_value_floats")?;
            let i = ints(node, "imputed_value_int64s")?;
            Ok(match (f.is_empty(), i.is_empty()) {
                (false, true) => Imputer::Float {
                    imputed: f,
                    replaced: node
                        .get_attr_opt::<f32>("replaced_value_float")?
                        .unwrap_or(0.0),
                },
                (true, false) => Imputer::Int64 {
                    imputed: i,
                    replaced: node
                        .get_attr_opt::<i64>("replaced_value_int64")?
                        .unwrap_or(0),
                },
                _ => bail!(
                    "exactly one of imputed_value_floats and imputed_value_int64s must be set"
                ),
            })
        })(),
    )?;
    Ok(expansion(op))
}

fn impute<T: Copy>(
    x: &mut [T],
    c: usize,
    imputed: &[T],
    missing: impl Fn(T) -> bool,
) -> TractResult<()> {
    ensure!(
        imputed.len() == 1 || imputed.len() == c,
        "Imputer has {} imputed values for {c} columns",
        imputed.len()
    );
    for row in x.chunks_mut(c.max(1)) {
        for (j, v) in row.iter_mut().enumerate() {
            if missing(*v) {
                *v = if imputed.len() == 1 {
                    imputed[0]
                } else {
                    imputed[j]
                };
            }
        }
    }
    Ok(())
}

impl Kernel for Imputer {
    fn name(&self) -> &'static str {
        "Imputer"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        let dt = match self {
            Self::Float { .. } => f32::datum_type(),
            Self::Int64 { .. } => i64::datum_type(),
        };
        tvec!(OutSpec::new(dt, OutShape::Same))
    }

    fn check_input(&self, input: &TypedFact) -> TractResult<()> {
        let n = match self {
            Self::Float { imputed, .. } => imputed.len(),
            Self::Int64 { imputed, .. } => imputed.len(),
        };
        if let Some(c) = input.shape.last().and_then(|d| d.to_usize().ok()) {
            ensure!(
                n == 1 || n == c,
                "Imputer has {n} imputed values for {c} columns"
            );
        }
        Ok(())
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let c = match input.shape() {
            [c] | [_, c] => *c,
            s => bail!("Imputer: input of shape {s:?}, expected [N, C]"),
        };
        let out = match self {
            Self::Float { imputed, replaced } => {
                let mut x = input.cast_to::<f32>()?.into_owned();
                let r = *replaced;
                impute(
                    x.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
                    c,
                    imputed,
                    |v| {
                        if r.is_nan() {
                            v.is_nan()
                        } else {
                            v == r
                        }
                    },
                )?;
                x
            }
            Self::Int64 { imputed, replaced } => {
                let mut x = input.cast_to::<i64>()?.into_owned();
                let r = *replaced;
                impute(
                    x.try_as_plain_ram_mut()?.as_slice_mut::<i64>()?,
                    c,
                    imputed,
                    |v| v == r,
                )?;
                x
            }
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_nan_or_the_replaced_value_per_column() {
        let op = Imputer::Float {
            imputed: vec![10.0, 20.0],
            replaced: f32::NAN,
        };
        let y = op
            .eval(tensor2(&[[f32::NAN, 1.0], [2.0, f32::NAN]]).into_tvalue())
            .unwrap();
        assert_eq!(*y[0], tensor2(&[[10.0f32, 1.0], [2.0, 20.0]]));
        let op = Imputer::Int64 {
            imputed: vec![7],
            replaced: -1,
        };
        let y = op.eval(tensor2(&[[-1i64, 3]]).into_tvalue()).unwrap();
        assert_eq!(*y[0], tensor2(&[[7i64, 3]]));
        let bad = Imputer::Float {
            imputed: vec![1.0, 2.0, 3.0],
            replaced: 0.0,
        };
        assert!(bad.eval(tensor2(&[[0.0f32, 1.0]]).into_tvalue()).is_err());
    }
}
