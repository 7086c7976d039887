//! `LinearClassifier`
//! (<https://onnx.ai/onnx/operators/onnx_aionnxml_LinearClassifier.html>), as
//! onnxruntime's `linearclassifier.cc` and onnx's reference implementation compute it:
//! scores `[N, E] = X · coefficientsᵀ + intercepts` (`coefficients` is `[E, F]`); when
//! `E = 1` and there are two classes the scores become `[-s, s]`; then the post
//! transform; the label is the class of the highest score (the first on ties), or with
//! a single score column `classlabels[0]` when `s >= threshold` (0, or 0.5 after a
//! transform), else 0 / `""`.
//!
//! Replaces tract-onnx's version, which refuses string class labels.
//! Input `[N, F]` (or `[F]`), any numeric type; outputs label `[N]` (`i64` or
//! `String`) and scores `[N, S]` `f32`.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::svm::Labels;
use super::{
    expansion, floats, in_node, ints, rows_f32, strings, Kernel, OutShape, OutSpec, PostTransform,
};

/// The parsed operator.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearClassifier {
    pub labels: Labels,
    pub n_classes: usize,
    /// `[E, F]` row-major.
    pub coefficients: Vec<f32>,
    /// `E` values, or empty.
    pub intercepts: Vec<f32>,
    pub n_scores: usize,
    pub post_transform: PostTransform,
}

/// tract op builder.
///
/// # Errors
/// Labels missing or given twice, coefficients that are no multiple of the intercepts,
/// PROBIT.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok(expansion(in_node("LinearClassifier", node, parse(node))?))
}

fn parse(node: &NodeProto) -> TractResult<LinearClassifier> {
    let i = ints(node, "classlabels_ints")?;
    let s = strings(node, "classlabels_strings")?;
    let labels = match (i.is_empty(), s.is_empty()) {
        (false, true) => Labels::Int64(i),
        (true, false) => Labels::Strings(s),
        _ => bail!("exactly one of classlabels_ints and classlabels_strings must be set"),
    };
    let n_classes = match &labels {
        Labels::Int64(v) => v.len(),
        Labels::Strings(v) => v.len(),
    };
    let coefficients = floats(node, "coefficients")?;
    let intercepts = floats(node, "intercepts")?;
    ensure!(!coefficients.is_empty(), "coefficients is empty");
    let n_scores = if !intercepts.is_empty() {
        intercepts.len()
    } else if n_classes == 2 && coefficients.len() % 2 == 1 {
        1
    } else {
        n_classes
    };
    ensure!(
        coefficients.len() % n_scores == 0,
        "{} coefficients are not {n_scores} rows ({} intercepts, {n_classes} class labels)",
        coefficients.len(),
        intercepts.len()
    );
    ensure!(
        n_scores == n_classes || n_scores == 1,
        "{n_scores} coefficient rows for {n_classes} class labels"
    );
    Ok(LinearClassifier {
        labels,
        n_classes,
        coefficients,
        intercepts,
        n_scores,
        post_transform: PostTransform::parse(node)?,
    })
}

impl LinearClassifier {
    fn n_features(&self) -> usize {
        self.coefficients.len() / self.n_scores
    }

    fn binary(&self) -> bool {
        self.n_scores == 1 && self.n_classes == 2
    }

    fn width(&self) -> usize {
        if self.binary() {
            2
        } else {
            self.n_scores
        }
    }
}

impl Kernel for LinearClassifier {
    fn name(&self) -> &'static str {
        "LinearClassifier"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        let label = match self.labels {
            Labels::Int64(_) => i64::datum_type(),
            Labels::Strings(_) => String::datum_type(),
        };
        tvec!(
            OutSpec::new(label, OutShape::Rows1),
            OutSpec::new(f32::datum_type(), OutShape::Rows(self.width()))
        )
    }

    fn check_input(&self, input: &TypedFact) -> TractResult<()> {
        ensure!(
            input.rank() == 2,
            "LinearClassifier: input of rank {}, expected [N, F]",
            input.rank()
        );
        if let Ok(f) = input.shape[1].to_usize() {
            ensure!(
                f == self.n_features(),
                "LinearClassifier: input has {f} features, the coefficients {}",
                self.n_features()
            );
        }
        Ok(())
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let (x, n, f) = rows_f32(&input)?;
        ensure!(
            f == self.n_features(),
            "LinearClassifier: {f} features, the model has {}",
            self.n_features()
        );
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let (e, w) = (self.n_scores, self.width());
        let mut scores = vec![0f32; n * w];
        let mut idx: Vec<Option<usize>> = Vec::with_capacity(n);
        for r in 0..n {
            let row = &x[r * f..(r + 1) * f];
            let out = &mut scores[r * w..(r + 1) * w];
            for (c, o) in out[..e].iter_mut().enumerate() {
                let coef = &self.coefficients[c * f..(c + 1) * f];
                let mut s: f32 = row.iter().zip(coef).map(|(a, b)| a * b).sum();
                if let Some(b) = self.intercepts.get(c) {
                    s += b;
                }
                *o = s;
            }
            if self.binary() {
                out[1] = out[0];
                out[0] = -out[1];
            }
            self.post_transform.apply(out);
            if w > 1 {
                let mut best = 0;
                for c in 1..w {
                    if out[c] > out[best] {
                        best = c;
                    }
                }
                idx.push(Some(best));
            } else {
                let threshold = if self.post_transform == PostTransform::None {
                    0.0
                } else {
                    0.5
                };
                idx.push((out[0] >= threshold).then_some(0));
            }
        }
        let labels = match &self.labels {
            Labels::Int64(l) => {
                let v: Vec<i64> = idx.iter().map(|i| i.map_or(0, |i| l[i])).collect();
                Tensor::from_shape(&[n], &v)?
            }
            Labels::Strings(l) => {
                let v: Vec<String> = idx
                    .iter()
                    .map(|i| i.map_or_else(String::new, |i| l[i].clone()))
                    .collect();
                tract_ndarray::Array1::from(v).into_tensor()
            }
        };
        Ok(tvec!(
            labels.into_tvalue(),
            Tensor::from_shape(&[n, w], &scores)?.into_tvalue()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_scores_are_minus_s_and_s() {
        // One coefficient row, two classes: scores [-s, s], label by sign.
        let op = LinearClassifier {
            labels: Labels::Strings(vec!["no".into(), "yes".into()]),
            n_classes: 2,
            coefficients: vec![1.0, 2.0],
            intercepts: vec![-1.0],
            n_scores: 1,
            post_transform: PostTransform::None,
        };
        let y = op
            .eval(tensor2(&[[1.0f32, 1.0], [0.0, 0.0]]).into_tvalue())
            .unwrap();
        assert_eq!(*y[1], tensor2(&[[-2.0f32, 2.0], [1.0, -1.0]]));
        let labels: Vec<String> = y[0]
            .to_plain_array_view::<String>()
            .unwrap()
            .iter()
            .cloned()
            .collect();
        assert_eq!(labels, ["yes", "no"]);
    }
}
