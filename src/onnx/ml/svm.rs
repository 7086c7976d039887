//! `SVMClassifier` and `SVMRegressor`
//! (<https://onnx.ai/onnx/operators/onnx_aionnxml_SVMClassifier.html>,
//! <https://onnx.ai/onnx/operators/onnx_aionnxml_SVMRegressor.html>), evaluated as
//! onnxruntime's CPU kernels (`svmclassifier.cc`, `svmregressor.cc`; the same
//! semantics as onnx's reference implementation `op_svm_classifier.py`):
//!
//! * kernels: LINEAR `x·v`, POLY `(γ x·v + c0)^degree`, RBF `exp(-γ |x - v|²)`,
//!   SIGMOID `tanh(γ x·v + c0)`, with `kernel_params = [γ, c0, degree]`;
//! * with support vectors (libsvm's SVC), one-vs-one: for classes `i < j` the decision
//!   value `rho[p] + Σ_{v in i} coef[j-1][v] K(x, v) + Σ_{v in j} coef[i][v] K(x, v)`;
//!   a positive value votes for `i`, else for `j`; the label is the class with most
//!   votes (the first on ties);
//! * with `prob_a`/`prob_b`, Platt's pairwise probabilities
//!   `r_ij = clamp(1 - logistic(A d + B), 1e-7, 1 - 1e-7)` coupled by libsvm's
//!   `multiclass_probability` (Wu, Lin and Weng 2004, method 2) in `f32`, and the scores
//!   are those probabilities;
//! * without support vectors (liblinear), one score per class `rho[0] + x·coef_c`;
//! * two classes and one `rho`: the label is onnxruntime's binary rule and a single
//!   score `s` is written as `[-s, s]` (or its LOGISTIC / SOFTMAX transform).
//!
//! Input `[N, F]` (cast to `f32`); classifier outputs label `[N]` (`i64` or `String`)
//! and scores `[N, S]` `f32`; regressor output `[N, 1]` `f32`.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

use super::{
    expansion, floats, in_node, ints, logistic, rows_f32, strings, Kernel, OutShape, OutSpec,
    PostTransform,
};

/// `kernel_type` with its `kernel_params`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SvmKernel {
    Linear,
    Poly { gamma: f32, coef0: f32, degree: i32 },
    Rbf { gamma: f32 },
    Sigmoid { gamma: f32, coef0: f32 },
}

impl SvmKernel {
    fn parse(node: &NodeProto) -> TractResult<Self> {
        let p = floats(node, "kernel_params")?;
        let kind = node
            .get_attr_opt::<&str>("kernel_type")?
            .unwrap_or("LINEAR");
        let param = |i: usize| -> TractResult<f32> {
            p.get(i).copied().ok_or_else(|| {
                format_err!("kernel_type {kind} needs kernel_params [gamma, coef0, degree]")
            })
        };
        Ok(match kind {
            "LINEAR" => Self::Linear,
            "POLY" => Self::Poly {
                gamma: param(0)?,
                coef0: param(1)?,
                degree: param(2)? as i32,
            },
            "RBF" => Self::Rbf { gamma: param(0)? },
            "SIGMOID" => Self::Sigmoid {
                gamma: param(0)?,
                coef0: param(1)?,
            },
            other => bail!("unknown kernel_type {other:?}"),
        })
    }

    /// `K(a, b)`.
    pub fn eval(self, a: &[f32], b: &[f32]) -> f32 {
        let dot = || a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        match self {
            Self::Linear => dot(),
            Self::Poly {
                gamma,
                coef0,
                degree,
            } => (dot() * gamma + coef0).powi(degree),
            Self::Rbf { gamma } => {
                let d: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
                (-gamma * d).exp()
            }
            Self::Sigmoid { gamma, coef0 } => (dot() * gamma + coef0).tanh(),
        }
    }
}

/// Class labels of a classifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Labels {
    Int64(Vec<i64>),
    Strings(Vec<String>),
}

/// A parsed SVMClassifier.
#[derive(Debug, Clone, PartialEq)]
pub struct SvmClassifier {
    pub labels: Labels,
    pub n_classes: usize,
    pub kernel: SvmKernel,
    /// Support vectors `[V, F]` row-major (empty: liblinear mode).
    pub support_vectors: Vec<f32>,
    pub vectors_per_class: Vec<usize>,
    /// First support vector of each class.
    pub starts: Vec<usize>,
    /// SVC: `[n_classes - 1, V]`; liblinear: `[n_classes, F]`.
    pub coefficients: Vec<f32>,
    pub rho: Vec<f32>,
    pub prob_a: Vec<f32>,
    pub prob_b: Vec<f32>,
    pub post_transform: PostTransform,
    pub n_features: usize,
    weights_all_positive: bool,
}

fn read_labels(node: &NodeProto) -> TractResult<Labels> {
    let i = ints(node, "classlabels_ints")?;
    let s = strings(node, "classlabels_strings")?;
    match (i.is_empty(), s.is_empty()) {
        (false, true) => Ok(Labels::Int64(i)),
        (true, false) => Ok(Labels::Strings(s)),
        _ => bail!("exactly one of classlabels_ints and classlabels_strings must be set"),
    }
}

fn parse_classifier(node: &NodeProto) -> TractResult<SvmClassifier> {
    let labels = read_labels(node)?;
    let n_classes = match &labels {
        Labels::Int64(v) => v.len(),
        Labels::Strings(v) => v.len(),
    };
    let kernel = SvmKernel::parse(node)?;
    let support_vectors = floats(node, "support_vectors")?;
    let vpc = ints(node, "vectors_per_class")?;
    ensure!(
        vpc.iter().all(|&v| v >= 0),
        "vectors_per_class holds a negative count"
    );
    let vectors_per_class: Vec<usize> = vpc.iter().map(|&v| v as usize).collect();
    let n_vectors: usize = vectors_per_class.iter().sum();
    let coefficients = floats(node, "coefficients")?;
    let rho = floats(node, "rho")?;
    let prob_a = floats(node, "prob_a")?;
    let prob_b = floats(node, "prob_b")?;
    ensure!(!rho.is_empty(), "rho is empty");
    let n_features = if n_vectors > 0 {
        ensure!(
            vectors_per_class.len() == n_classes,
            "vectors_per_class has {} entries for {n_classes} classes",
            vectors_per_class.len()
        );
        ensure!(
            !support_vectors.is_empty() && support_vectors.len() % n_vectors == 0,
            "{} support vector values are not {n_vectors} vectors",
            support_vectors.len()
        );
        ensure!(
            coefficients.len() == (n_classes - 1) * n_vectors,
            "coefficients has {} values, expected (classes - 1) x vectors = {}",
            coefficients.len(),
            (n_classes - 1) * n_vectors
        );
        let pairs = n_classes * (n_classes - 1) / 2;
        ensure!(
            rho.len() == pairs,
            "rho has {} values for {pairs} class pairs",
            rho.len()
        );
        ensure!(
            prob_a.is_empty() || (prob_a.len() == pairs && prob_b.len() == pairs),
            "prob_a and prob_b must have one value per class pair ({pairs})"
        );
        support_vectors.len() / n_vectors
    } else {
        ensure!(
            n_classes > 0 && !coefficients.is_empty() && coefficients.len() % n_classes == 0,
            "liblinear mode: {} coefficients for {n_classes} classes",
            coefficients.len()
        );
        coefficients.len() / n_classes
    };
    ensure!(n_classes >= 1, "no class labels");
    let mut starts = Vec::with_capacity(vectors_per_class.len());
    let mut s = 0;
    for v in &vectors_per_class {
        starts.push(s);
        s += v;
    }
    let weights_all_positive = coefficients.iter().all(|&c| c >= 0.0);
    Ok(SvmClassifier {
        labels,
        n_classes,
        kernel,
        support_vectors,
        vectors_per_class,
        starts,
        coefficients,
        rho,
        prob_a,
        prob_b,
        post_transform: PostTransform::parse(node)?,
        n_features,
        weights_all_positive,
    })
}

/// tract op builder for SVMClassifier.
///
/// # Errors
/// Attribute lengths that do not agree, an unknown kernel, PROBIT.
pub fn build_classifier(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok(expansion(in_node(
        "SVMClassifier",
        node,
        parse_classifier(node),
    )?))
}

/// libsvm's `multiclass_probability` (pairwise coupling), in `f32` as onnxruntime.
/// `r` is `[k, k]` row-major; `p` receives the k probabilities; `q`, `qp` are scratch.
fn multiclass_probability(k: usize, r: &[f32], p: &mut [f32], q: &mut [f32], qp: &mut [f32]) {
    let max_iter = 100.max(k);
    let eps = 0.005 / k as f32;
    for t in 0..k {
        p[t] = 1.0 / k as f32;
        q[t * k + t] = 0.0;
        for j in 0..t {
            q[t * k + t] += r[j * k + t] * r[j * k + t];
            q[t * k + j] = q[j * k + t];
        }
        for j in t + 1..k {
            q[t * k + t] += r[j * k + t] * r[j * k + t];
            q[t * k + j] = -r[j * k + t] * r[t * k + j];
        }
    }
    for _ in 0..max_iter {
        let mut pqp = 0.0f32;
        for t in 0..k {
            qp[t] = 0.0;
            for j in 0..k {
                qp[t] += q[t * k + j] * p[j];
            }
            pqp += p[t] * qp[t];
        }
        let max_error = (0..k).map(|t| (qp[t] - pqp).abs()).fold(0.0f32, f32::max);
        if max_error < eps {
            break;
        }
        for t in 0..k {
            let diff = (-qp[t] + pqp) / q[t * k + t];
            p[t] += diff;
            pqp = (pqp + diff * (diff * q[t * k + t] + 2.0 * qp[t])) / (1.0 + diff) / (1.0 + diff);
            for j in 0..k {
                qp[j] = (qp[j] + diff * q[t * k + j]) / (1.0 + diff);
                p[j] /= 1.0 + diff;
            }
        }
    }
}

impl SvmClassifier {
    fn svc(&self) -> bool {
        !self.vectors_per_class.is_empty() && !self.support_vectors.is_empty()
    }

    fn has_proba(&self) -> bool {
        self.svc() && !self.prob_a.is_empty()
    }

    /// Scores before the binary expansion: probabilities, pair decisions or class scores.
    fn raw_width(&self) -> usize {
        if self.has_proba() {
            self.n_classes
        } else if self.svc() {
            self.n_classes * (self.n_classes - 1) / 2
        } else {
            self.n_classes
        }
    }

    /// onnxruntime's `add_second_class`: 2 when one rho serves two classes.
    fn binary(&self) -> bool {
        self.rho.len() == 1 && self.n_classes == 2
    }

    fn width(&self) -> usize {
        match self.raw_width() {
            1 if self.binary() => 2,
            w => w,
        }
    }

    /// Label index (into the labels), or for the single-rho non-binary case the literal
    /// 1 / 0 (`Err`), and the row's final scores written to `out`.
    fn row(&self, x: &[f32], s: &mut Scratch, out: &mut [f32]) -> Result<usize, i64> {
        let k = self.n_classes;
        let raw = self.raw_width();
        let mut votes_used = false;
        if self.svc() {
            let nv = self
                .starts
                .last()
                .map_or(0, |s| s + self.vectors_per_class[k - 1]);
            for (v, kv) in s.kernels[..nv].iter_mut().enumerate() {
                let sv = &self.support_vectors[v * self.n_features..(v + 1) * self.n_features];
                *kv = self.kernel.eval(x, sv);
            }
            s.votes.iter_mut().for_each(|v| *v = 0);
            let mut p = 0;
            for i in 0..k {
                let (si, ci) = (self.starts[i], self.vectors_per_class[i]);
                for j in i + 1..k {
                    let (sj, cj) = (self.starts[j], self.vectors_per_class[j]);
                    let ci_coef = &self.coefficients[(j - 1) * nv + si..(j - 1) * nv + si + ci];
                    let cj_coef = &self.coefficients[i * nv + sj..i * nv + sj + cj];
                    let s1: f32 = ci_coef
                        .iter()
                        .zip(&s.kernels[si..si + ci])
                        .map(|(a, b)| a * b)
                        .sum();
                    let s2: f32 = cj_coef
                        .iter()
                        .zip(&s.kernels[sj..sj + cj])
                        .map(|(a, b)| a * b)
                        .sum();
                    let d = self.rho[p] + s1 + s2;
                    s.decisions[p] = d;
                    if d > 0.0 {
                        s.votes[i] += 1;
                    } else {
                        s.votes[j] += 1;
                    }
                    p += 1;
                }
            }
            votes_used = true;
            if self.has_proba() {
                let mut p = 0;
                for i in 0..k {
                    for j in i + 1..k {
                        let v = 1.0 - logistic(s.decisions[p] * self.prob_a[p] + self.prob_b[p]);
                        let v = v.clamp(1e-7, 1.0 - 1e-7);
                        s.pairs[i * k + j] = v;
                        s.pairs[j * k + i] = 1.0 - v;
                        p += 1;
                    }
                }
                multiclass_probability(k, &s.pairs, &mut s.scores[..k], &mut s.q, &mut s.qp);
            } else {
                s.scores[..raw].copy_from_slice(&s.decisions[..raw]);
            }
        } else {
            for c in 0..k {
                let w = &self.coefficients[c * self.n_features..(c + 1) * self.n_features];
                s.scores[c] = self.rho[0] + SvmKernel::Linear.eval(x, w);
            }
        }
        let (max_class, max_weight) = if votes_used {
            let mut best = 0;
            for c in 1..k {
                if s.votes[c] > s.votes[best] {
                    best = c;
                }
            }
            (best, s.votes[best] as f32)
        } else {
            let mut best = 0;
            for c in 1..raw {
                if s.scores[c] > s.scores[best] {
                    best = c;
                }
            }
            (best, s.scores[best])
        };
        let label = if self.rho.len() == 1 {
            if self.n_classes == 2 {
                if !self.has_proba() && self.weights_all_positive && max_weight >= 0.5 {
                    Ok(1)
                } else {
                    Ok(max_class)
                }
            } else {
                Err(if max_weight > 0.0 { 1 } else { 0 })
            }
        } else {
            Ok(max_class)
        };
        let scores = &mut s.scores[..raw];
        if raw == 1 {
            if self.binary() {
                let v = scores[0];
                out[0] = -v;
                out[1] = v;
                if self.post_transform == PostTransform::Logistic {
                    out[0] = logistic(-v);
                    out[1] = logistic(v);
                } else {
                    self.post_transform.apply(&mut out[..2]);
                }
            } else {
                out[0] = scores[0];
            }
        } else {
            self.post_transform.apply(scores);
            out[..raw].copy_from_slice(scores);
        }
        label
    }
}

/// Per-call scratch buffers (allocated once per call, not per row).
struct Scratch {
    kernels: Vec<f32>,
    votes: Vec<u32>,
    decisions: Vec<f32>,
    pairs: Vec<f32>,
    scores: Vec<f32>,
    q: Vec<f32>,
    qp: Vec<f32>,
}

impl Kernel for SvmClassifier {
    fn name(&self) -> &'static str {
        "SVMClassifier"
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
        check_features(input, self.n_features, "SVMClassifier")
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let (x, n, f) = rows_f32(&input)?;
        ensure!(
            f == self.n_features,
            "SVMClassifier: {f} features, the model has {}",
            self.n_features
        );
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let k = self.n_classes;
        let nv: usize = self.vectors_per_class.iter().sum();
        let mut s = Scratch {
            kernels: vec![0.0; nv],
            votes: vec![0; k],
            decisions: vec![0.0; k * k],
            pairs: vec![0.0; k * k],
            scores: vec![0.0; (k * k).max(1)],
            q: vec![0.0; k * k],
            qp: vec![0.0; k],
        };
        let w = self.width();
        let mut scores = vec![0f32; n * w];
        let mut idx = Vec::with_capacity(n);
        for r in 0..n {
            idx.push(self.row(
                &x[r * f..(r + 1) * f],
                &mut s,
                &mut scores[r * w..(r + 1) * w],
            ));
        }
        let labels = match &self.labels {
            Labels::Int64(l) => {
                let v: Vec<i64> = idx
                    .iter()
                    .map(|i| i.map_or_else(|lit| lit, |i| l[i]))
                    .collect();
                Tensor::from_shape(&[n], &v)?
            }
            Labels::Strings(l) => {
                let v: Vec<String> = idx
                    .iter()
                    .map(|i| {
                        let i = i.unwrap_or_else(|lit| lit as usize);
                        l.get(i).cloned().unwrap_or_default()
                    })
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

fn check_features(input: &TypedFact, n_features: usize, op: &str) -> TractResult<()> {
    ensure!(
        input.rank() == 2,
        "{op}: input of rank {}, expected [N, F]",
        input.rank()
    );
    if let Ok(f) = input.shape[1].to_usize() {
        ensure!(
            f == n_features,
            "{op}: input has {f} features, the model {n_features}"
        );
    }
    Ok(())
}

/// A parsed SVMRegressor.
#[derive(Debug, Clone, PartialEq)]
pub struct SvmRegressor {
    pub kernel: SvmKernel,
    /// `[n_supports, F]` (empty: linear mode, `coefficients` is the weight vector).
    pub support_vectors: Vec<f32>,
    pub coefficients: Vec<f32>,
    pub rho: f32,
    pub one_class: bool,
    pub n_features: usize,
}

fn parse_regressor(node: &NodeProto) -> TractResult<SvmRegressor> {
    let kernel = SvmKernel::parse(node)?;
    let n_supports = node.get_attr_opt::<i64>("n_supports")?.unwrap_or(0);
    ensure!(n_supports >= 0, "n_supports is negative");
    let n_supports = n_supports as usize;
    let support_vectors = floats(node, "support_vectors")?;
    let coefficients = floats(node, "coefficients")?;
    let rho = floats(node, "rho")?;
    ensure!(rho.len() == 1, "rho has {} values, expected 1", rho.len());
    let post = node
        .get_attr_opt::<&str>("post_transform")?
        .unwrap_or("NONE");
    ensure!(
        post == "NONE",
        "post_transform {post:?} is not supported for SVMRegressor"
    );
    let n_features = if n_supports > 0 {
        ensure!(
            !support_vectors.is_empty() && support_vectors.len() % n_supports == 0,
            "{} support vector values are not {n_supports} vectors",
            support_vectors.len()
        );
        ensure!(
            coefficients.len() == n_supports,
            "{} coefficients for {n_supports} support vectors",
            coefficients.len()
        );
        support_vectors.len() / n_supports
    } else {
        ensure!(!coefficients.is_empty(), "no coefficients");
        coefficients.len()
    };
    Ok(SvmRegressor {
        kernel: if n_supports > 0 {
            kernel
        } else {
            SvmKernel::Linear
        },
        support_vectors: if n_supports > 0 {
            support_vectors
        } else {
            vec![]
        },
        coefficients,
        rho: rho[0],
        one_class: node.get_attr_opt::<i64>("one_class")?.unwrap_or(0) != 0,
        n_features,
    })
}

/// tract op builder for SVMRegressor.
///
/// # Errors
/// Attribute lengths that do not agree, an unknown kernel, a post transform.
pub fn build_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok(expansion(in_node(
        "SVMRegressor",
        node,
        parse_regressor(node),
    )?))
}

impl Kernel for SvmRegressor {
    fn name(&self) -> &'static str {
        "SVMRegressor"
    }

    fn outputs(&self) -> TVec<OutSpec> {
        tvec!(OutSpec::new(f32::datum_type(), OutShape::Rows(1)))
    }

    fn check_input(&self, input: &TypedFact) -> TractResult<()> {
        check_features(input, self.n_features, "SVMRegressor")
    }

    fn eval(&self, input: TValue) -> TractResult<TVec<TValue>> {
        let (x, n, f) = rows_f32(&input)?;
        ensure!(
            f == self.n_features,
            "SVMRegressor: {f} features, the model has {}",
            self.n_features
        );
        let x = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut y = vec![0f32; n];
        for (r, y) in y.iter_mut().enumerate() {
            let row = &x[r * f..(r + 1) * f];
            let mut s = if self.support_vectors.is_empty() {
                SvmKernel::Linear.eval(row, &self.coefficients)
            } else {
                self.support_vectors
                    .chunks(f)
                    .zip(&self.coefficients)
                    .map(|(sv, c)| c * self.kernel.eval(row, sv))
                    .sum()
            };
            s += self.rho;
            *y = if self.one_class {
                if s > 0.0 {
                    1.0
                } else {
                    -1.0
                }
            } else {
                s
            };
        }
        Ok(tvec!(Tensor::from_shape(&[n, 1], &y)?.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_follow_their_definitions() {
        let (a, b) = ([1.0f32, 2.0], [3.0f32, -1.0]);
        assert_eq!(SvmKernel::Linear.eval(&a, &b), 1.0);
        assert_eq!(
            SvmKernel::Poly {
                gamma: 2.0,
                coef0: 1.0,
                degree: 2
            }
            .eval(&a, &b),
            9.0
        );
        assert!((SvmKernel::Rbf { gamma: 0.1 }.eval(&a, &b) - (-1.3f32).exp()).abs() < 1e-7);
        assert!(
            (SvmKernel::Sigmoid {
                gamma: 0.5,
                coef0: 0.0
            }
            .eval(&a, &b)
                - 0.5f32.tanh())
            .abs()
                < 1e-7
        );
    }

    #[test]
    fn coupling_of_consistent_pairs_gives_their_probabilities() {
        // Pairwise r_ij = p_i / (p_i + p_j) for p = (0.5, 0.3, 0.2): the coupling's
        // fixed point is p itself (Wu, Lin and Weng 2004).
        let p = [0.5f32, 0.3, 0.2];
        let mut r = [0f32; 9];
        for i in 0..3 {
            for j in 0..3 {
                if i != j {
                    r[i * 3 + j] = p[i] / (p[i] + p[j]);
                }
            }
        }
        let (mut out, mut q, mut qp) = ([0f32; 3], [0f32; 9], [0f32; 3]);
        multiclass_probability(3, &r, &mut out, &mut q, &mut qp);
        for (a, b) in out.iter().zip(p) {
            assert!((a - b).abs() < 2e-3, "{out:?}");
        }
    }

    #[test]
    fn regressor_sums_kernel_terms_and_rho() {
        let op = SvmRegressor {
            kernel: SvmKernel::Linear,
            support_vectors: vec![1.0, 0.0, 0.0, 1.0],
            coefficients: vec![2.0, -1.0],
            rho: 0.5,
            one_class: false,
            n_features: 2,
        };
        let y = op.eval(tensor2(&[[1.0f32, 3.0]]).into_tvalue()).unwrap();
        assert_eq!(*y[0], tensor2(&[[-0.5f32]]));
    }
}
