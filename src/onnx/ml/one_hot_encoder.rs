//! `OneHotEncoder` (<https://onnx.ai/onnx/operators/onnx_aionnxml_OneHotEncoder.html>):
//! each input value becomes a row of `K` floats with a 1 at its category's index in
//! `cats_int64s` or `cats_strings`. Output `f32` of shape input shape `++ [K]`.
//! A value in no category gives zeros when `zeros` is 1 (the default), else an
//! error. Numeric inputs are compared as `i64` (onnxruntime casts them).

use std::collections::HashMap;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{expansion, in_node, ints, strings, Kernel, OutShape, OutSpec};

/// The categories.
#[derive(Debug, Clone, PartialEq)]
pub enum Categories {
    Int64(HashMap<i64, usize>),
    Strings(HashMap<String, usize>),
}

/// The parsed operator.
#[derive(Debug, Clone, PartialEq)]
pub struct OneHotEncoder {
    pub categories: Categories,
    pub n: usize,
    pub zeros: bool,
}

/// tract op builder.
///
/// # Errors
/// Neither or both of `cats_int64s` and `cats_strings`.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = in_node(
        "OneHotEncoder",
        node,
        (|| -> TractResult<OneHotEncoder> {
            let i = ints(node, "cats_int64s")?;
            let s = strings(node, "cats_strings")?;
            let zeros = node.get_attr_opt::<i64>("zeros")?.unwrap_or(1) != 0;
            let (categories, n) = match (i.is_empty(), s.is_empty()) {
                // The first occurrence of a repeated category wins.
                (false, true) => (
                    Categories::Int64(i.iter().enumerate().rev().map(|(k, v)| (*v, k)).collect()),
                    i.len(),
                ),
                (true, false) => (
                    Categories::Strings(
                        s.iter()
                            .enumerate()
                            .rev()
                            .map(|(k, v)| (v.clone(), k))
                            .collect(),
                    ),
                    s.len(),
                ),
                _ => bail!("exactly one of cats_int64s and cats_strings must be set"),
            };
            Ok(OneHotEncoder {
                categories,
                n,
                zeros,
            })
        })(),
    )?;
    Ok(expansion(op))
}

impl Kernel for OneHotEncoder {
    fn name(&self) -> &'static str {
        "OneHotEncoder"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        tvec!(OutSpec::new(f32::datum_type(), OutShape::Append(self.n)))
    }

    fn check_input(&self, input: &TypedFact) -> TractResult<()> {
        let is_string = input.datum_type == String::datum_type();
        match &self.categories {
            Categories::Strings(_) if !is_string => bail!(
                "OneHotEncoder has string categories, its input is {:?}",
                input.datum_type
            ),
            Categories::Int64(_) if is_string => {
                bail!("OneHotEncoder has int64 categories, its input is strings")
            }
            _ => Ok(()),
        }
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let mut shape: TVec<usize> = input.shape().into();
        let len = input.len();
        let mut y = vec![0f32; len * self.n];
        let mut set = |k: usize, hit: Option<&usize>| -> TractResult<()> {
            match hit {
                Some(&c) => y[k * self.n + c] = 1.0,
                None if self.zeros => {}
                None => bail!("OneHotEncoder: value {k} is in no category and zeros is 0"),
            }
            Ok(())
        };
        match &self.categories {
            Categories::Strings(map) => {
                for (k, v) in input.to_plain_array_view::<String>()?.iter().enumerate() {
                    set(k, map.get(v))?;
                }
            }
            Categories::Int64(map) => {
                let x = input.cast_to::<i64>()?;
                for (k, v) in x.to_plain_array_view::<i64>()?.iter().enumerate() {
                    set(k, map.get(v))?;
                }
            }
        }
        shape.push(self.n);
        Ok(tvec!(Tensor::from_shape(&shape, &y)?.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_column_per_category() {
        let op = OneHotEncoder {
            categories: Categories::Strings(
                [("a".to_string(), 0), ("b".to_string(), 1)]
                    .into_iter()
                    .collect(),
            ),
            n: 2,
            zeros: true,
        };
        let x = tract_ndarray::arr2(&[["b".to_string()], ["z".to_string()]]).into_tensor();
        let y = op.eval(x.into_tvalue()).unwrap();
        assert_eq!(y[0].shape(), &[2, 1, 2]);
        assert_eq!(
            y[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
            &[0.0, 1.0, 0.0, 0.0]
        );
        let strict = OneHotEncoder {
            categories: Categories::Int64([(3, 0)].into_iter().collect()),
            n: 1,
            zeros: false,
        };
        assert!(strict.eval(tensor1(&[4i64]).into_tvalue()).is_err());
        let y = strict.eval(tensor1(&[3.0f32]).into_tvalue()).unwrap();
        assert_eq!(
            y[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(),
            &[1.0]
        );
    }
}
