//! `Softmax` (<https://onnx.ai/onnx/operators/onnx__Softmax.html>),
//! replacing tract-onnx's: `exp(x - max) / sum(exp(x - max))` along `axis`.
//! Opset 13 and up: along the one axis `axis` (default -1); opsets 1 to 12:
//! the input seen as the matrix `[d0 × … × d(axis-1), d(axis) × … × dn]`
//! (default `axis` 1), along its rows. Same type and shape out; `f64` in
//! `f64`, every other type through `f32`.
//!
//! Why edgeloop's own: tract's walks each row with vector kernels made for
//! rows of 64 and more, copying every short row into a scratch buffer and
//! back; a classifier's softmax runs over a few classes per row, where that
//! made a 64-row torch MLP spend more in its softmax than in its matrix
//! products. Here each row is a plain loop (`exp` of the standard library,
//! as onnxruntime's reference), in place.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{expansion, in_node, Kernel, OutShape, OutSpec};

/// The parsed operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Softmax {
    /// `axis`, negative from the end.
    pub axis: i64,
    /// Opsets 1 to 12: every axis from `axis` on is one row.
    pub coerce_2d: bool,
}

/// tract op builder.
pub fn build(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let coerce_2d = ctx.onnx_operator_set_version < 13;
    let axis = in_node("Softmax", node, node.get_attr_opt::<i64>("axis"))?;
    Ok(expansion(Softmax {
        axis: axis.unwrap_or(if coerce_2d { 1 } else { -1 }),
        coerce_2d,
    }))
}

impl Softmax {
    /// `(outer, len, inner)`: the tensor as `[outer, len, inner]`, softmax
    /// along `len`.
    fn layout(&self, shape: &[usize]) -> TractResult<(usize, usize, usize)> {
        let rank = shape.len() as i64;
        let axis = if self.axis < 0 {
            self.axis + rank
        } else {
            self.axis
        };
        let top = if self.coerce_2d { rank } else { rank - 1 };
        ensure!(
            (0..=top).contains(&axis) && rank > 0,
            "Softmax: axis {} of an input of rank {rank}",
            self.axis
        );
        let axis = axis as usize;
        let outer = shape[..axis].iter().product();
        Ok(if self.coerce_2d {
            (outer, shape[axis..].iter().product(), 1)
        } else {
            (outer, shape[axis], shape[axis + 1..].iter().product())
        })
    }
}

/// The float types the operator computes in.
trait Real:
    Copy
    + PartialOrd
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
    + Datum
{
    const NEG_INFINITY: Self;
    const ZERO: Self;
    const ONE: Self;
    /// The least `x - max` whose `exp` is taken: below it, `exp` is under
    /// the least normal float, and the value is 0.
    const LOWEST: Self;
    fn exp(self) -> Self;
}

impl Real for f32 {
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    /// `ln` of the least normal `f32` (1.18e-38), -87.34, rounded up.
    const LOWEST: Self = -87.33;
    fn exp(self) -> Self {
        f32::exp(self)
    }
}

impl Real for f64 {
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    /// `ln` of the least normal `f64` (2.2e-308), -708.40, rounded up.
    const LOWEST: Self = -708.39;
    fn exp(self) -> Self {
        f64::exp(self)
    }
}

/// Softmax of `data` (`[outer, len, inner]` row-major) along `len`, in
/// place: the maximum subtracted, each `exp` times the reciprocal of their
/// sum (onnxruntime's MLAS kernel). An `x - max` below [`Real::LOWEST`]
/// gives 0 without an `exp`: its `exp` would be a subnormal float, which
/// x86 CPUs compute and multiply a hundred times slower than a normal one
/// (the far-off classes of a confident classifier; onnxruntime answers
/// them with at most 1.2e-38).
fn softmax<T: Real>(data: &mut [T], (outer, len, inner): (usize, usize, usize)) {
    if len == 0 || inner == 0 {
        return;
    }
    if inner == 1 {
        for row in data.chunks_exact_mut(len).take(outer) {
            let max = row
                .iter()
                .fold(T::NEG_INFINITY, |m, &v| if v > m { v } else { m });
            let mut sum = T::ZERO;
            for v in row.iter_mut() {
                *v = exp_or_zero(*v - max);
                sum += *v;
            }
            let scale = T::ONE / sum;
            for v in row.iter_mut() {
                *v = *v * scale;
            }
        }
        return;
    }
    for block in data.chunks_exact_mut(len * inner).take(outer) {
        for i in 0..inner {
            let at = |k: usize| k * inner + i;
            let mut max = T::NEG_INFINITY;
            for k in 0..len {
                if block[at(k)] > max {
                    max = block[at(k)];
                }
            }
            let mut sum = T::ZERO;
            for k in 0..len {
                let e = exp_or_zero(block[at(k)] - max);
                block[at(k)] = e;
                sum += e;
            }
            let scale = T::ONE / sum;
            for k in 0..len {
                block[at(k)] = block[at(k)] * scale;
            }
        }
    }
}

/// `exp(d)`, or 0 when `d` is below [`Real::LOWEST`] (NaN stays NaN).
#[inline]
fn exp_or_zero<T: Real>(d: T) -> T {
    if d < T::LOWEST {
        T::ZERO
    } else {
        d.exp()
    }
}

impl Kernel for Softmax {
    fn name(&self) -> &'static str {
        "Softmax"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        tvec!(OutSpec {
            dt: None,
            shape: OutShape::Same
        })
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let layout = self.layout(input.shape())?;
        let dt = input.datum_type();
        let mut x = if dt == DatumType::F32 || dt == DatumType::F64 {
            input.into_tensor()
        } else {
            input.cast_to::<f32>()?.into_owned()
        };
        if x.datum_type() == DatumType::F64 {
            softmax(x.try_as_plain_ram_mut()?.as_slice_mut::<f64>()?, layout);
        } else {
            softmax(x.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?, layout);
        }
        if x.datum_type() != dt {
            x = x.cast_to_dt(dt)?.into_owned();
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: &Softmax, shape: &[usize], x: &[f32]) -> Vec<f32> {
        let t = Tensor::from_shape(shape, x).unwrap();
        let y = op.eval(t.into_tvalue()).unwrap();
        y[0].try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    fn reference(row: &[f64]) -> Vec<f64> {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    /// Opset 13: along axis 1 of `[2, 3, 2]` (strided), and the default
    /// last axis; opset 12's axis 1 takes the last two axes as one row.
    #[test]
    fn each_opset_takes_the_axes_the_specification_names() {
        let x: Vec<f32> = (0..12).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
        let xd: Vec<f64> = x.iter().map(|v| *v as f64).collect();
        let at = |o: usize, k: usize, i: usize| o * 6 + k * 2 + i;
        let op13 = Softmax {
            axis: 1,
            coerce_2d: false,
        };
        let got = run(&op13, &[2, 3, 2], &x);
        for o in 0..2 {
            for i in 0..2 {
                let row: Vec<f64> = (0..3).map(|k| xd[at(o, k, i)]).collect();
                for (k, want) in reference(&row).iter().enumerate() {
                    assert!((got[at(o, k, i)] as f64 - want).abs() < 1e-6);
                }
            }
        }
        let last = Softmax {
            axis: -1,
            coerce_2d: false,
        };
        let got = run(&last, &[6, 2], &x);
        for (r, row) in xd.chunks(2).enumerate() {
            for (k, want) in reference(row).iter().enumerate() {
                assert!((got[r * 2 + k] as f64 - want).abs() < 1e-6);
            }
        }
        let op12 = Softmax {
            axis: 1,
            coerce_2d: true,
        };
        let got = run(&op12, &[2, 3, 2], &x);
        for (r, row) in xd.chunks(6).enumerate() {
            for (k, want) in reference(row).iter().enumerate() {
                assert!((got[r * 6 + k] as f64 - want).abs() < 1e-6);
            }
        }
        // Far-off classes: 0 (onnxruntime: at most 1.2e-38), never a
        // subnormal float.
        let got = run(&last, &[1, 3], &[0.0, -1000.0, -87.0]);
        assert_eq!(got[..2], [1.0, 0.0]);
        assert!(got[2].is_normal() && (got[2] - (-87f32).exp()).abs() < 1e-44);
        let bad = Softmax {
            axis: 3,
            coerce_2d: false,
        };
        let t = Tensor::from_shape(&[2, 3, 2], &x).unwrap();
        assert!(bad.eval(t.into_tvalue()).is_err());
    }
}
