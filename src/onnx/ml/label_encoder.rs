//! `LabelEncoder` (<https://onnx.ai/onnx/operators/onnx_aionnxml_LabelEncoder.html>):
//! maps each input value through `keys` → `values`; a value that is no key gives the
//! default. Output: same shape, the values' type.
//!
//! * ml opset 1: `classes_strings`; a string input maps to its index (`default_int64`,
//!   -1, when absent). The reverse direction (int64 → string) is refused: its output
//!   type depends on the input's, which this engine fixes at parse time.
//! * ml opsets 2 and 3: `keys_{strings,int64s,floats}`, `values_{strings,int64s,floats}`,
//!   `default_{string,int64,float}` (`"_Unused"`, -1, -0.0).
//! * ml opset 4: `keys_tensor`, `values_tensor`, `default_tensor` (string, int64 or
//!   float tensors) as alternatives.
//!
//! Float keys match as onnxruntime does: NaN matches a NaN key, -0.0 matches 0.0.

use std::collections::HashMap;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{expansion, floats, in_node, ints, strings, tensor, Kernel, OutShape, OutSpec};

/// A list of keys, values or the default (one value).
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Strings(Vec<String>),
    Int64(Vec<i64>),
    Floats(Vec<f32>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Self::Strings(v) => v.len(),
            Self::Int64(v) => v.len(),
            Self::Floats(v) => v.len(),
        }
    }

    fn datum_type(&self) -> DatumType {
        match self {
            Self::Strings(_) => String::datum_type(),
            Self::Int64(_) => i64::datum_type(),
            Self::Floats(_) => f32::datum_type(),
        }
    }

    fn from_tensor(t: &Tensor) -> TractResult<Self> {
        let t = t.clone().into_shape(&[t.len()])?;
        Ok(match t.datum_type() {
            DatumType::String => {
                Self::Strings(t.to_plain_array_view::<String>()?.iter().cloned().collect())
            }
            DatumType::I64 | DatumType::I32 => Self::Int64(
                t.cast_to::<i64>()?
                    .to_plain_array_view::<i64>()?
                    .iter()
                    .copied()
                    .collect(),
            ),
            DatumType::F32 | DatumType::F64 => Self::Floats(
                t.cast_to::<f32>()?
                    .to_plain_array_view::<f32>()?
                    .iter()
                    .copied()
                    .collect(),
            ),
            dt => bail!("tensor of {dt:?}: expected strings, int64 or floats"),
        })
    }
}

fn float_key(v: f32) -> u32 {
    if v.is_nan() {
        f32::NAN.to_bits()
    } else {
        (v + 0.0).to_bits()
    }
}

/// Keys, indexed for lookup: key → index in `values`.
#[derive(Debug, Clone, PartialEq)]
pub enum Keys {
    Strings(HashMap<String, usize>),
    Int64(HashMap<i64, usize>),
    Floats(HashMap<u32, usize>),
}

/// The parsed operator.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelEncoder {
    pub keys: Keys,
    pub values: Column,
    /// One value, of the values' type.
    pub default: Column,
}

fn one_of(node: &NodeProto, ctx: &ParsingContext, what: &str) -> TractResult<Option<Column>> {
    let mut found = vec![];
    let s = strings(node, &format!("{what}_strings"))?;
    if !s.is_empty() {
        found.push(Column::Strings(s));
    }
    let i = ints(node, &format!("{what}_int64s"))?;
    if !i.is_empty() {
        found.push(Column::Int64(i));
    }
    let f = floats(node, &format!("{what}_floats"))?;
    if !f.is_empty() {
        found.push(Column::Floats(f));
    }
    if let Some(t) = tensor(ctx, node, &format!("{what}_tensor"))? {
        found.push(Column::from_tensor(&t)?);
    }
    ensure!(found.len() <= 1, "more than one {what}_* attribute is set");
    Ok(found.pop())
}

/// tract op builder.
///
/// # Errors
/// No keys or values, keys and values of different lengths, several key or value
/// attributes, a default of the wrong type.
pub fn build(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = in_node("LabelEncoder", node, parse(ctx, node))?;
    Ok(expansion(op))
}

fn parse(ctx: &ParsingContext, node: &NodeProto) -> TractResult<LabelEncoder> {
    let classes = strings(node, "classes_strings")?;
    let (keys, values) = if !classes.is_empty() {
        let n = classes.len() as i64;
        (Column::Strings(classes), Column::Int64((0..n).collect()))
    } else {
        let keys = one_of(node, ctx, "keys")?.ok_or_else(|| format_err!("no keys_* attribute"))?;
        let values =
            one_of(node, ctx, "values")?.ok_or_else(|| format_err!("no values_* attribute"))?;
        (keys, values)
    };
    ensure!(
        keys.len() == values.len(),
        "{} keys but {} values",
        keys.len(),
        values.len()
    );
    let default = match tensor(ctx, node, "default_tensor")? {
        Some(t) => {
            let d = Column::from_tensor(&t)?;
            ensure!(
                d.len() == 1 && d.datum_type() == values.datum_type(),
                "default_tensor must hold one value of the values' type"
            );
            d
        }
        None => match &values {
            Column::Strings(_) => Column::Strings(vec![node
                .get_attr_opt::<String>("default_string")?
                .unwrap_or_else(|| "_Unused".to_string())]),
            Column::Int64(_) => Column::Int64(vec![node
                .get_attr_opt::<i64>("default_int64")?
                .unwrap_or(-1)]),
            Column::Floats(_) => Column::Floats(vec![node
                .get_attr_opt::<f32>("default_float")?
                .unwrap_or(-0.0)]),
        },
    };
    // The first occurrence of a repeated key wins (iterate backwards, overwrite).
    let keys = match keys {
        Column::Strings(k) => Keys::Strings(
            k.into_iter()
                .enumerate()
                .rev()
                .map(|(i, k)| (k, i))
                .collect(),
        ),
        Column::Int64(k) => Keys::Int64(
            k.into_iter()
                .enumerate()
                .rev()
                .map(|(i, k)| (k, i))
                .collect(),
        ),
        Column::Floats(k) => Keys::Floats(
            k.into_iter()
                .enumerate()
                .rev()
                .map(|(i, k)| (float_key(k), i))
                .collect(),
        ),
    };
    Ok(LabelEncoder {
        keys,
        values,
        default,
    })
}

impl LabelEncoder {
    fn lookup(&self, input: &Tensor) -> TractResult<Vec<Option<usize>>> {
        Ok(match &self.keys {
            Keys::Strings(m) => {
                ensure!(
                    input.datum_type() == String::datum_type(),
                    "string keys, input of {:?}",
                    input.datum_type()
                );
                input
                    .to_plain_array_view::<String>()?
                    .iter()
                    .map(|v| m.get(v).copied())
                    .collect()
            }
            Keys::Int64(m) => {
                ensure!(
                    input.datum_type() != String::datum_type(),
                    "int64 keys, input of strings"
                );
                let x = input.cast_to::<i64>()?;
                x.to_plain_array_view::<i64>()?
                    .iter()
                    .map(|v| m.get(v).copied())
                    .collect()
            }
            Keys::Floats(m) => {
                ensure!(
                    input.datum_type() != String::datum_type(),
                    "float keys, input of strings"
                );
                let x = input.cast_to::<f32>()?;
                x.to_plain_array_view::<f32>()?
                    .iter()
                    .map(|v| m.get(&float_key(*v)).copied())
                    .collect()
            }
        })
    }
}

impl Kernel for LabelEncoder {
    fn name(&self) -> &'static str {
        "LabelEncoder"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        tvec!(OutSpec::new(self.values.datum_type(), OutShape::Same))
    }

    fn check_input(&self, input: &TypedFact) -> TractResult<()> {
        let is_string = input.datum_type == String::datum_type();
        ensure!(
            is_string == matches!(self.keys, Keys::Strings(_)),
            "LabelEncoder's keys do not have its input's type {:?}",
            input.datum_type
        );
        Ok(())
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let shape: TVec<usize> = input.shape().into();
        let hits = self.lookup(&input)?;
        let out = match (&self.values, &self.default) {
            (Column::Strings(v), Column::Strings(d)) => {
                let y: Vec<String> = hits
                    .iter()
                    .map(|h| h.map_or(&d[0], |i| &v[i]).clone())
                    .collect();
                tract_ndarray::ArrayD::from_shape_vec(&*shape, y)?.into_tensor()
            }
            (Column::Int64(v), Column::Int64(d)) => {
                let y: Vec<i64> = hits.iter().map(|h| h.map_or(d[0], |i| v[i])).collect();
                Tensor::from_shape(&shape, &y)?
            }
            (Column::Floats(v), Column::Floats(d)) => {
                let y: Vec<f32> = hits.iter().map(|h| h.map_or(d[0], |i| v[i])).collect();
                Tensor::from_shape(&shape, &y)?
            }
            _ => bail!("LabelEncoder: default of another type than the values"),
        };
        Ok(tvec!(out.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Tensor {
        tract_ndarray::arr1(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).into_tensor()
    }

    #[test]
    fn maps_keys_to_values_and_the_rest_to_the_default() {
        let op = LabelEncoder {
            keys: Keys::Strings(
                [("a".to_string(), 0), ("b".to_string(), 1)]
                    .into_iter()
                    .collect(),
            ),
            values: Column::Int64(vec![10, 20]),
            default: Column::Int64(vec![-1]),
        };
        let y = op.eval(strs(&["b", "a", "c"]).into_tvalue()).unwrap();
        assert_eq!(*y[0], tensor1(&[20i64, 10, -1]));
        let op = LabelEncoder {
            keys: Keys::Floats(
                [(float_key(f32::NAN), 0), (float_key(0.0), 1)]
                    .into_iter()
                    .collect(),
            ),
            values: Column::Strings(vec!["nan".into(), "zero".into()]),
            default: Column::Strings(vec!["_Unused".into()]),
        };
        let y = op
            .eval(tensor1(&[f32::NAN, -0.0, 1.0]).into_tvalue())
            .unwrap();
        assert_eq!(*y[0], strs(&["nan", "zero", "_Unused"]));
    }
}
