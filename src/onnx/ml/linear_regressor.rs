//! `LinearRegressor`
//! (<https://onnx.ai/onnx/operators/onnx_aionnxml_LinearRegressor.html>), as
//! onnxruntime's `linearregressor.cc` computes it: `Y [N, T] = X · coefficientsᵀ +
//! intercepts` (`coefficients` is `[T, F]`, `T` = `targets`, default 1), then the post
//! transform (NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO; PROBIT is refused).
//!
//! Replaces tract-onnx's, an expansion into a MatMul that tract 0.23's declutter pass
//! breaks when the input is a Concat of `[N, 1]` columns (skl2onnx's
//! `PolynomialFeatures`: "EinSum: Condition failed"). Input `[N, F]`, any numeric
//! type; output `[N, T]` `f32`.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{expansion, floats, in_node, rows_f32, Kernel, OutShape, OutSpec, PostTransform};

/// The parsed operator.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearRegressor {
    /// `[T, F]` row-major.
    pub coefficients: Vec<f32>,
    /// `T` values, or empty.
    pub intercepts: Vec<f32>,
    pub targets: usize,
    pub post_transform: PostTransform,
}

/// tract op builder.
///
/// # Errors
/// No coefficients, coefficients that are no multiple of `targets`, intercepts of
/// another length, PROBIT.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok(expansion(in_node("LinearRegressor", node, parse(node))?))
}

fn parse(node: &NodeProto) -> TractResult<LinearRegressor> {
    let coefficients = floats(node, "coefficients")?;
    let intercepts = floats(node, "intercepts")?;
    let targets = node.get_attr_opt::<i64>("targets")?.unwrap_or(1);
    ensure!(targets >= 1, "targets is {targets}");
    let targets = targets as usize;
    ensure!(!coefficients.is_empty(), "coefficients is empty");
    ensure!(
        coefficients.len() % targets == 0,
        "{} coefficients are not {targets} rows (targets)",
        coefficients.len()
    );
    ensure!(
        intercepts.is_empty() || intercepts.len() == targets,
        "{} intercepts for {targets} targets",
        intercepts.len()
    );
    Ok(LinearRegressor {
        coefficients,
        intercepts,
        targets,
        post_transform: PostTransform::parse(node)?,
    })
}

impl LinearRegressor {
    fn n_features(&self) -> usize {
        self.coefficients.len() / self.targets
    }
}

impl Kernel for LinearRegressor {
    fn name(&self) -> &'static str {
        "LinearRegressor"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        tvec!(OutSpec::new(
            f32::datum_type(),
            OutShape::Rows(self.targets)
        ))
    }

    fn check_input(&self, input: &TypedFact) -> TractResult<()> {
        ensure!(
            input.rank() == 2,
            "LinearRegressor: input of rank {}, expected [N, F]",
            input.rank()
        );
        if let Ok(f) = input.shape[1].to_usize() {
            ensure!(
                f == self.n_features(),
                "LinearRegressor: input has {f} features, the coefficients {}",
                self.n_features()
            );
        }
        Ok(())
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let (x, n, f) = rows_f32(&input)?;
        ensure!(
            f == self.n_features(),
            "LinearRegressor: {f} features, the model has {}",
            self.n_features()
        );
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let t = self.targets;
        let mut y = vec![0f32; n * t];
        for (row, out) in x.chunks_exact(f).zip(y.chunks_exact_mut(t)) {
            for (k, o) in out.iter_mut().enumerate() {
                let coef = &self.coefficients[k * f..(k + 1) * f];
                let mut s: f32 = row.iter().zip(coef).map(|(a, b)| a * b).sum();
                if let Some(b) = self.intercepts.get(k) {
                    s += b;
                }
                *o = s;
            }
            self.post_transform.apply(out);
        }
        Ok(tvec!(Tensor::from_shape(&[n, t], &y)?.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_targets_with_intercepts() {
        let op = LinearRegressor {
            coefficients: vec![1.0, 2.0, 0.5, -1.0],
            intercepts: vec![0.5, 1.0],
            targets: 2,
            post_transform: PostTransform::None,
        };
        let y = op
            .eval(tensor2(&[[1.0f32, 1.0], [2.0, 0.0]]).into_tvalue())
            .unwrap();
        assert_eq!(*y[0], tensor2(&[[3.5f32, 0.5], [2.5, 2.0]]));
    }
}
