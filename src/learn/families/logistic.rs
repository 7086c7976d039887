//! Multinomial logistic regression (softmax regression) with an L2 penalty,
//! on standardised features.
//!
//! Objective, minimised by L-BFGS ([`crate::learn::lbfgs`]) over one weight vector
//! `w_k` and intercept `b_k` per class:
//!
//! ```text
//! (1/n) Σᵢ −log softmax(W zᵢ + b)[yᵢ]  +  (l2/2) Σₖ ‖w_k‖²      (intercepts unpenalised)
//! ```
//!
//! where `zᵢ` are the features after mean imputation and standard scaling
//! ([`StandardScaler`]). This is scikit-learn's `LogisticRegression(penalty="l2")`
//! with `C = 1/(n·l2)` for three or more classes; for two classes sklearn's
//! sigmoid model reaches the same probabilities with `C = 2/(n·l2)` (see
//! `tests/fixtures/logistic/gen_logistic.py`, which checks both).

use serde::{Deserialize, Serialize};

use crate::features::scaler::StandardScaler;
use crate::learn::lbfgs::{self, Stop};
pub use crate::learn::model::{argmax_rows, TrainError};
use crate::learn::model::{Target, Task};

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogisticConfig {
    /// L2 penalty strength per sample (> 0).
    pub l2: f64,
    /// Most L-BFGS iterations.
    pub max_iter: usize,
    /// Stop when the gradient's largest component is below this.
    pub gtol: f64,
}

/// A trained model: everything needed to predict and to export to ONNX.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticModel {
    /// Class names; index k is output column k.
    pub classes: Vec<String>,
    /// Feature names, in input order.
    pub feature_names: Vec<String>,
    pub scaler: StandardScaler,
    /// Weights `[n_features, n_classes]`, row-major (the ONNX MatMul layout).
    pub weights: Vec<f32>,
    /// Intercepts `[n_classes]`.
    pub bias: Vec<f32>,
    /// L-BFGS iterations used and why it stopped.
    pub iterations: usize,
    pub stop: Stop,
    /// Final objective value.
    pub objective: f64,
}

impl LogisticModel {
    /// Trains on `x` (`[n, n_features]` row-major, `NaN` = missing) and `y`
    /// (class indices into `classes`, every index < `classes.len()`).
    ///
    /// # Errors
    /// [`TrainError`] for empty or mis-shaped data, fewer than 2 classes, or
    /// cancellation.
    pub fn fit(
        x: &[f32],
        y: &[usize],
        classes: Vec<String>,
        feature_names: Vec<String>,
        cfg: &LogisticConfig,
        cancelled: impl Fn() -> bool,
    ) -> Result<Self, TrainError> {
        Self::fit_from(x, y, classes, feature_names, cfg, None, cancelled)
    }

    /// As [`LogisticModel::fit`], starting the optimiser from `init`'s
    /// weights and intercepts (warm start: fine-tuning a champion) instead of
    /// zeros. Classes are matched by name; a class `init` lacks starts at 0.
    /// The objective and its optimum are the same; only the path is shorter
    /// when the data changed little.
    ///
    /// # Errors
    /// As [`LogisticModel::fit`].
    pub fn fit_from(
        x: &[f32],
        y: &[usize],
        classes: Vec<String>,
        feature_names: Vec<String>,
        cfg: &LogisticConfig,
        init: Option<&LogisticModel>,
        cancelled: impl Fn() -> bool,
    ) -> Result<Self, TrainError> {
        Self::fit_weighted(x, y, classes, feature_names, cfg, init, None, cancelled)
    }

    /// As [`LogisticModel::fit_from`], each sample's loss term multiplied by
    /// `sample_weight[i]` (`[n]`; `None`: all 1), as scikit-learn's
    /// `sample_weight` / `class_weight`: the objective is
    /// `(1/n) Σᵢ wᵢ·(−log pᵢ[yᵢ]) + (l2/2) Σₖ ‖w_k‖²`, still sklearn's with
    /// `C = 1/(n·l2)`. Balanced class weights sum to `n`, so the penalty's
    /// relative strength is unchanged.
    ///
    /// # Errors
    /// As [`LogisticModel::fit`]; [`TrainError::Shape`] when `sample_weight`
    /// is not `[n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn fit_weighted(
        x: &[f32],
        y: &[usize],
        classes: Vec<String>,
        feature_names: Vec<String>,
        cfg: &LogisticConfig,
        init: Option<&LogisticModel>,
        sample_weight: Option<&[f64]>,
        cancelled: impl Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let nf = feature_names.len();
        if let Some(w) = sample_weight.filter(|w| w.len() != y.len()) {
            return Err(TrainError::Shape {
                len: w.len(),
                n_features: 1,
            });
        }
        let nc = classes.len();
        if y.is_empty() {
            return Err(TrainError::Empty);
        }
        if nf == 0 || x.len() != y.len() * nf {
            return Err(TrainError::Shape {
                len: x.len(),
                n_features: nf,
            });
        }
        if nc < 2 {
            return Err(TrainError::TooFewClasses(nc));
        }
        let scaler = StandardScaler::fit(x, nf);
        let mut objective = Objective::new(
            x,
            |row| scaler.transform_in_place(row),
            y,
            sample_weight,
            nf,
            nc,
            cfg.l2,
        );
        // θ = [W as [nc, nf] row-major, b as [nc]].
        let n_w = nc * nf;
        let mut theta0 = vec![0.0; n_w + nc];
        if let Some(init) = init.filter(|m| m.feature_names.len() == nf) {
            let inc = init.classes.len();
            for (k, class) in classes.iter().enumerate() {
                let Some(ik) = init.classes.iter().position(|c| c == class) else {
                    continue;
                };
                // Same logits for the same raw input under the new scaler:
                // w' = w·s'/s, b' = b + Σ w·(m' − m)/s.
                let mut bias = f64::from(init.bias[ik]);
                for j in 0..nf {
                    let w = f64::from(init.weights[j * inc + ik]);
                    let (s_old, s_new) =
                        (f64::from(init.scaler.scale[j]), f64::from(scaler.scale[j]));
                    let shift = f64::from(scaler.mean[j]) - f64::from(init.scaler.mean[j]);
                    theta0[k * nf + j] = w * s_new / s_old;
                    bias += w * shift / s_old;
                }
                theta0[n_w + k] = bias;
            }
        }
        let out = lbfgs::minimize(
            objective.params_of_softmax(&theta0),
            |theta, grad| objective.eval(theta, grad),
            cfg.max_iter,
            cfg.gtol,
            &cancelled,
        );
        if out.stop == Stop::Cancelled {
            return Err(TrainError::Cancelled);
        }
        let theta = objective.softmax_of_params(&out.x);
        let (w, b) = theta.split_at(n_w);
        // Transpose [nc, nf] -> [nf, nc] for MatMul.
        let mut weights = vec![0f32; n_w];
        for k in 0..nc {
            for j in 0..nf {
                weights[j * nc + k] = w[k * nf + j] as f32;
            }
        }
        Ok(Self {
            classes,
            feature_names,
            scaler,
            weights,
            bias: b.iter().map(|&v| v as f32).collect(),
            iterations: out.iterations,
            stop: out.stop,
            objective: out.f,
        })
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.feature_names.len()
    }

    /// Class probabilities, `[n_rows, n_classes]` row-major, for `x`
    /// (`[n_rows, n_features]`, `NaN` = missing). Computed in `f32` in the
    /// order of the exported ONNX graph: impute, scale, MatMul, Add, Softmax.
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f32> {
        let nf = self.n_features();
        let nc = self.classes.len();
        let mut z = x.to_vec();
        self.scaler.transform_in_place(&mut z);
        let mut out = Vec::with_capacity(z.len() / nf * nc);
        for row in z.chunks_exact(nf) {
            let logits: Vec<f32> = (0..nc)
                .map(|k| {
                    row.iter()
                        .enumerate()
                        .map(|(j, v)| v * self.weights[j * nc + k])
                        .sum::<f32>()
                        + self.bias[k]
                })
                .collect();
            let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            out.extend(exps.iter().map(|e| e / sum));
        }
        out
    }
}

/// Rows per block of the objective's passes: each weight chunk loaded is
/// used for this many rows, each gradient chunk stored once for them.
const ROWS: usize = 4;
/// Features per chunk (the lanes of the accumulators).
const LANES: usize = 4;

/// The training objective and its gradient, evaluated in one pass over the
/// rows. Holds the standardised data in blocks of [`ROWS`] rows, each row
/// padded with zeros to a multiple of [`LANES`] features (padding rows have
/// weight 0), and all the scratch space, so an evaluation allocates nothing.
///
/// With two classes the model is the sigmoid one, as scikit-learn's: one
/// weight vector `v = w₁ − w₀` and intercept `c = b₁ − b₀`, objective
/// `(1/n) Σᵢ sᵢ·(log(1 + e^t) − yᵢ t) + (l2/4) ‖v‖²` with `t = v·zᵢ + c`.
/// From zeros, L-BFGS on the softmax objective never leaves `w₀ = −w₁`,
/// `b₀ = −b₁` (the gradient's two halves are opposite), where the two
/// objectives are equal and so are their gradients (`∂/∂v = ∂/∂w₁`): the
/// same optimum and the same stopping test, at half the work. (A warm start
/// enters through the same difference, [`Objective::params_of_softmax`].)
struct Objective {
    /// The standardised features, `n_pad / ROWS` blocks each laid out as
    /// `[stride / LANES][ROWS][LANES]`; in `f32` as the scaler computes
    /// them (widening to `f64` in the kernels is exact), half the memory.
    z: Vec<f32>,
    /// `[n_pad]` class index.
    y: Vec<u32>,
    /// `[n_pad]` sample weight over n (0 for padding).
    sw: Vec<f64>,
    nf: usize,
    stride: usize,
    /// Linear outputs: 1 for two classes, else the number of classes.
    outputs: usize,
    /// The L2 term's factor: `l2/2` per softmax weight, `l2/4` for `v`.
    penalty: f64,
    /// `[outputs, stride]` padded weights and their gradient.
    w: Vec<f64>,
    gw: Vec<f64>,
    /// `[ROWS, outputs]` logits, then residuals, of one block.
    t: Vec<f64>,
    /// Use the portable kernels even where the AVX2 ones would run (tests;
    /// read on x86-64 only, where there is a choice).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    portable: bool,
}

impl Objective {
    /// From the raw rows `x` (`[n, nf]`), standardised row by row by
    /// `transform` (no standardised copy of the whole data is made).
    fn new(
        x: &[f32],
        transform: impl Fn(&mut [f32]),
        y: &[usize],
        sample_weight: Option<&[f64]>,
        nf: usize,
        nc: usize,
        l2: f64,
    ) -> Self {
        let n = y.len();
        let n_pad = n.div_ceil(ROWS) * ROWS;
        let stride = nf.div_ceil(LANES) * LANES;
        // Each block of ROWS rows as [stride / LANES chunks][ROWS][LANES]:
        // one chunk of the four rows is 16 adjacent values.
        let mut zp = vec![0f32; n_pad * stride];
        let mut scaled = vec![0f32; nf];
        for (i, row) in x.chunks_exact(nf).enumerate() {
            scaled.copy_from_slice(row);
            transform(&mut scaled);
            let block = &mut zp[i / ROWS * ROWS * stride..][..ROWS * stride];
            for (j, &v) in scaled.iter().enumerate() {
                block[j / LANES * ROWS * LANES + i % ROWS * LANES + j % LANES] = v;
            }
        }
        let mut yp: Vec<u32> = y.iter().map(|&k| k as u32).collect();
        yp.resize(n_pad, 0);
        let mut sw: Vec<f64> = (0..n)
            .map(|i| sample_weight.map_or(1.0, |w| w[i]) / n as f64)
            .collect();
        sw.resize(n_pad, 0.0);
        let outputs = if nc == 2 { 1 } else { nc };
        Self {
            z: zp,
            y: yp,
            sw,
            nf,
            stride,
            outputs,
            penalty: if nc == 2 { 0.25 * l2 } else { 0.5 * l2 },
            w: vec![0.0; outputs * stride],
            gw: vec![0.0; outputs * stride],
            t: vec![0.0; ROWS * outputs],
            portable: false,
        }
    }

    /// Parameters `[outputs·nf weights, outputs intercepts]` from the softmax
    /// ones `[nc·nf, nc]`.
    fn params_of_softmax(&self, theta: &[f64]) -> Vec<f64> {
        if self.outputs > 1 {
            return theta.to_vec();
        }
        let nf = self.nf;
        let mut v: Vec<f64> = (0..nf).map(|j| theta[nf + j] - theta[j]).collect();
        v.push(theta[2 * nf + 1] - theta[2 * nf]);
        v
    }

    /// The softmax parameters of `theta` (the optimum's split for two classes: `w₁ = v/2 = −w₀`).
    fn softmax_of_params(&self, theta: &[f64]) -> Vec<f64> {
        if self.outputs > 1 {
            return theta.to_vec();
        }
        let nf = self.nf;
        let half: Vec<f64> = theta.iter().map(|v| 0.5 * v).collect();
        let mut out = Vec::with_capacity(2 * nf + 2);
        out.extend(half[..nf].iter().map(|v| -v));
        out.extend(&half[..nf]);
        out.extend([-half[nf], half[nf]]);
        out
    }

    /// f(θ), writing ∇f(θ) into `grad`.
    fn eval(&mut self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (nf, stride, outputs) = (self.nf, self.stride, self.outputs);
        let (w, b) = theta.split_at(outputs * nf);
        for (dst, src) in self.w.chunks_exact_mut(stride).zip(w.chunks_exact(nf)) {
            dst[..nf].copy_from_slice(src);
        }
        self.gw.iter_mut().for_each(|g| *g = 0.0);
        let (gw_out, gb) = grad.split_at_mut(outputs * nf);
        gb.iter_mut().for_each(|g| *g = 0.0);
        #[cfg(target_arch = "x86_64")]
        let loss = if !self.portable
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { self.rows_avx2(b, gb) }
        } else {
            self.rows(b, gb, dots::<false>, axpys::<false>)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let loss = {
            // aarch64 (and others with a fused multiply-add in the base
            // instruction set) compile `mul_add` to one instruction.
            const FMA: bool = cfg!(target_arch = "aarch64");
            self.rows(b, gb, dots::<FMA>, axpys::<FMA>)
        };
        let mut norm = 0.0;
        for (dst, (src, wk)) in gw_out
            .chunks_exact_mut(nf)
            .zip(self.gw.chunks_exact(stride).zip(w.chunks_exact(nf)))
        {
            for ((d, s), wj) in dst.iter_mut().zip(src).zip(wk) {
                *d = s + 2.0 * self.penalty * wj;
                norm += wj * wj;
            }
        }
        loss + self.penalty * norm
    }

    /// [`Objective::rows`] with the AVX2 kernels.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows_avx2(&mut self, b: &[f64], gb: &mut [f64]) -> f64 {
        // SAFETY (both kernels): the CPU has AVX2 and FMA (this function's
        // contract); `rows` passes a weight row of `stride` values, a multiple
        // of LANES, and the block's ROWS·stride values.
        self.rows(
            b,
            gb,
            |w, zb| unsafe { avx2::dots(w, zb) },
            |g, res, zb| unsafe { avx2::axpys(g, res, zb) },
        )
    }

    /// The loss over the rows, adding its gradient to `self.gw` and `gb`.
    /// Per block of [`ROWS`] rows: the logits (`dots`: one output's weights
    /// against the block), the link (sigmoid or softmax) and the residuals
    /// `sᵢ·(pᵢ − yᵢ)`, then the gradient (`axpys`: one output's gradient plus
    /// the block's rows times their residuals).
    #[inline(always)]
    fn rows(
        &mut self,
        b: &[f64],
        gb: &mut [f64],
        dots: impl Fn(&[f64], &[f32]) -> [f64; ROWS],
        axpys: impl Fn(&mut [f64], [f64; ROWS], &[f32]),
    ) -> f64 {
        let (stride, outputs) = (self.stride, self.outputs);
        let mut loss = 0.0;
        for ((zb, yb), sb) in self
            .z
            .chunks_exact(ROWS * stride)
            .zip(self.y.chunks_exact(ROWS))
            .zip(self.sw.chunks_exact(ROWS))
        {
            for (k, wk) in self.w.chunks_exact(stride).enumerate() {
                for (r, d) in dots(wk, zb).into_iter().enumerate() {
                    self.t[r * outputs + k] = b[k] + d;
                }
            }
            for ((t, &yi), &si) in self.t.chunks_exact_mut(outputs).zip(yb).zip(sb) {
                let yi = yi as usize;
                if outputs == 1 {
                    // log(1 + e^t) − y t, and its derivative σ(t) − y.
                    let e = (-t[0].abs()).exp();
                    let softplus = t[0].max(0.0) + e.ln_1p();
                    let sigmoid = if t[0] >= 0.0 {
                        1.0 / (1.0 + e)
                    } else {
                        e / (1.0 + e)
                    };
                    let yf = if yi == 1 { 1.0 } else { 0.0 };
                    loss += si * (softplus - yf * t[0]);
                    t[0] = flush(si * (sigmoid - yf));
                } else {
                    let max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let true_logit = t[yi];
                    // One exp per class: exp(t − max) gives both the
                    // log-sum-exp and the probabilities.
                    t.iter_mut().for_each(|v| *v = (*v - max).exp());
                    let sum: f64 = t.iter().sum();
                    loss += si * (max + sum.ln() - true_logit);
                    let scale = si / sum;
                    t.iter_mut().for_each(|v| *v = flush(*v * scale));
                    t[yi] -= si;
                }
            }
            for (k, gk) in self.gw.chunks_exact_mut(stride).enumerate() {
                let res: [f64; ROWS] = std::array::from_fn(|r| self.t[r * outputs + k]);
                gb[k] += (res[0] + res[1]) + (res[2] + res[3]);
                axpys(gk, res, zb);
            }
        }
        loss
    }
}

/// The dot products of `w` (`[stride]`) with the [`ROWS`] rows of a packed
/// block `zb`. `FMA`: `mul_add` (one instruction where the CPU has it; a
/// library call elsewhere) or a product and a sum.
fn dots<const FMA: bool>(w: &[f64], zb: &[f32]) -> [f64; ROWS] {
    let mut acc = [[0.0; LANES]; ROWS];
    for (wc, zc) in w.chunks_exact(LANES).zip(zb.chunks_exact(ROWS * LANES)) {
        for (a, zr) in acc.iter_mut().zip(zc.chunks_exact(LANES)) {
            for ((a, &wl), &zl) in a.iter_mut().zip(wc).zip(zr) {
                let zl = f64::from(zl);
                *a = if FMA {
                    wl.mul_add(zl, *a)
                } else {
                    wl * zl + *a
                };
            }
        }
    }
    acc.map(|a| (a[0] + a[1]) + (a[2] + a[3]))
}

/// `g += Σ_r res[r]·row_r` over the [`ROWS`] rows of a packed block `zb`
/// (`g`: `[stride]`); `FMA` as in [`dots`].
fn axpys<const FMA: bool>(g: &mut [f64], res: [f64; ROWS], zb: &[f32]) {
    for (gc, zc) in g.chunks_exact_mut(LANES).zip(zb.chunks_exact(ROWS * LANES)) {
        for (&rr, zr) in res.iter().zip(zc.chunks_exact(LANES)) {
            for (gl, &zl) in gc.iter_mut().zip(zr) {
                let zl = f64::from(zl);
                *gl = if FMA {
                    rr.mul_add(zl, *gl)
                } else {
                    rr * zl + *gl
                };
            }
        }
    }
}

/// [`dots`] and [`axpys`] in AVX2 registers of [`LANES`] values.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{LANES, ROWS};

    const _: () = assert!(LANES == 4 && ROWS == 4);

    /// # Safety
    /// The CPU has AVX2 and FMA; `w.len()` is a multiple of LANES and
    /// `zb.len() == ROWS * w.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(w: &[f64], zb: &[f32]) -> [f64; ROWS] {
        let mut acc = [_mm256_setzero_pd(); ROWS];
        for (wc, zc) in w.chunks_exact(LANES).zip(zb.chunks_exact(ROWS * LANES)) {
            let wv = _mm256_loadu_pd(wc.as_ptr());
            for (r, a) in acc.iter_mut().enumerate() {
                let z = _mm256_cvtps_pd(_mm_loadu_ps(zc.as_ptr().add(r * LANES)));
                *a = _mm256_fmadd_pd(wv, z, *a);
            }
        }
        let mut out = [0.0; ROWS];
        for (o, a) in out.iter_mut().zip(acc) {
            let mut lanes = [0.0; LANES];
            _mm256_storeu_pd(lanes.as_mut_ptr(), a);
            *o = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        }
        out
    }

    /// # Safety
    /// As [`dots`], with `g` for `w`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpys(g: &mut [f64], res: [f64; ROWS], zb: &[f32]) {
        let rv = [
            _mm256_set1_pd(res[0]),
            _mm256_set1_pd(res[1]),
            _mm256_set1_pd(res[2]),
            _mm256_set1_pd(res[3]),
        ];
        for (gc, zc) in g.chunks_exact_mut(LANES).zip(zb.chunks_exact(ROWS * LANES)) {
            let mut v = _mm256_loadu_pd(gc.as_ptr());
            for (r, rr) in rv.iter().enumerate() {
                let z = _mm256_cvtps_pd(_mm_loadu_ps(zc.as_ptr().add(r * LANES)));
                v = _mm256_fmadd_pd(*rr, z, v);
            }
            _mm256_storeu_pd(gc.as_mut_ptr(), v);
        }
    }
}

/// `v`, or 0 when below the normal range: products with subnormal numbers
/// take a slow microcode path on x86 (a residual of e^-745 is 0 to the sum anyway).
#[inline(always)]
fn flush(v: f64) -> f64 {
    if v.abs() < f64::MIN_POSITIVE {
        0.0
    } else {
        v
    }
}

/// Serialises `model` as an ONNX model (protobuf bytes).
pub fn logistic_to_onnx(model: &LogisticModel, model_version: u32) -> Vec<u8> {
    let nf = model.n_features() as i64;
    let nc = model.classes.len() as i64;
    let (mut nodes, scaled) = crate::onnx::builder::impute_and_scale_nodes("mean", Some("scale"));
    nodes.extend([
        crate::onnx::builder::node("MatMul", &[scaled, "weights"], "matmul", vec![]),
        crate::onnx::builder::node("Add", &["matmul", "bias"], "logits", vec![]),
        crate::onnx::builder::node(
            "Softmax",
            &["logits"],
            crate::onnx::builder::OUTPUT_PROBABILITIES,
            vec![crate::onnx::builder::attr_int("axis", 1)],
        ),
        crate::onnx::builder::label_node(),
    ]);
    let graph = tract_onnx::pb::GraphProto {
        name: "edgeloop_logistic".into(),
        node: nodes,
        initializer: vec![
            crate::onnx::builder::tensor_f32("mean", &[nf], &model.scaler.mean),
            crate::onnx::builder::tensor_f32("scale", &[nf], &model.scaler.scale),
            crate::onnx::builder::tensor_f32("weights", &[nf, nc], &model.weights),
            crate::onnx::builder::tensor_f32("bias", &[nc], &model.bias),
        ],
        input: vec![crate::onnx::builder::input_info(model.n_features())],
        output: crate::onnx::builder::classifier_outputs(model.classes.len()),
        ..Default::default()
    };
    crate::onnx::builder::model_bytes(
        graph,
        &crate::onnx::builder::ModelMeta {
            family: "logistic",
            task: crate::ingest::decode::Task::Classification,
            classes: &model.classes,
            features: &model.feature_names,
            version: model_version,
            doc: "Multinomial logistic regression with mean imputation and standard scaling.",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The softmax objective and its gradient, row by row as written in the
    /// module's doc: what [`Objective`] must equal.
    #[allow(clippy::too_many_arguments)]
    fn softmax_objective(
        z: &[f32],
        y: &[usize],
        sw: &[f64],
        nf: usize,
        nc: usize,
        l2: f64,
        theta: &[f64],
        grad: &mut [f64],
    ) -> f64 {
        let n = y.len() as f64;
        let (w, b) = theta.split_at(nc * nf);
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut f = 0.0;
        for (i, row) in z.chunks_exact(nf).enumerate() {
            let logits: Vec<f64> = (0..nc)
                .map(|k| {
                    b[k] + (0..nf)
                        .map(|j| w[k * nf + j] * f64::from(row[j]))
                        .sum::<f64>()
                })
                .collect();
            let lse = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            f += sw[i] * (lse - logits[y[i]]) / n;
            for k in 0..nc {
                let r = sw[i] * ((logits[k] - lse).exp() - f64::from(u8::from(k == y[i]))) / n;
                for j in 0..nf {
                    grad[k * nf + j] += r * f64::from(row[j]);
                }
                grad[nc * nf + k] += r;
            }
        }
        for (g, v) in grad.iter_mut().zip(w) {
            *g += l2 * v;
        }
        f + 0.5 * l2 * w.iter().map(|v| v * v).sum::<f64>()
    }

    #[test]
    fn objective_equals_the_softmax_one_with_either_kernel() {
        // 37 rows (a partial block) of 7 features (a partial chunk),
        // weighted; two classes (the sigmoid model) and three (softmax).
        let (n, nf, l2) = (37, 7, 0.03);
        let z: Vec<f32> = (0..n * nf)
            .map(|i| ((i * 7919 % 101) as f32) / 50.0 - 1.0)
            .collect();
        let sw: Vec<f64> = (0..n).map(|i| 0.5 + (i % 3) as f64).collect();
        for nc in [2, 3] {
            let y: Vec<usize> = (0..n).map(|i| (i * 5 + i / 7) % nc).collect();
            let theta: Vec<f64> = (0..nc * nf + nc)
                .map(|i| ((i * 37 % 17) as f64 - 8.0) / 10.0)
                .collect();
            // On the two-class subspace w₀ = −w₁, b₀ = −b₁.
            let theta = if nc == 2 {
                let (w1, b1) = (&theta[nf..2 * nf], theta[2 * nf + 1]);
                let mut t: Vec<f64> = w1.iter().map(|v| -v).collect();
                t.extend(w1);
                t.extend([-b1, b1]);
                t
            } else {
                theta
            };
            let mut want_grad = vec![0.0; theta.len()];
            let want = softmax_objective(&z, &y, &sw, nf, nc, l2, &theta, &mut want_grad);
            for portable in [false, true] {
                let mut obj = Objective::new(&z, |_| {}, &y, Some(&sw), nf, nc, l2);
                obj.portable = portable;
                let inner = obj.params_of_softmax(&theta);
                let mut grad = vec![0.0; inner.len()];
                let f = obj.eval(&inner, &mut grad);
                assert!((f - want).abs() < 1e-12, "{nc} classes: {f} vs {want}");
                // ∂/∂v = ∂/∂w₁ for two classes: compare with the class-1 half.
                let want_inner = if nc == 2 {
                    let mut g = want_grad[nf..2 * nf].to_vec();
                    g.push(want_grad[2 * nf + 1]);
                    g
                } else {
                    want_grad.clone()
                };
                for (g, w) in grad.iter().zip(&want_inner) {
                    assert!(
                        (g - w).abs() < 1e-12,
                        "{nc} classes: {grad:?} vs {want_inner:?}"
                    );
                }
                assert_eq!(obj.softmax_of_params(&inner), theta);
            }
        }
    }

    #[test]
    fn warm_start_maps_the_champion_into_the_new_scaling() {
        // Two features, a separable-ish rule; the second fit sees shifted,
        // rescaled data (other mean and spread), warm-started from the first.
        let x: Vec<f32> = (0..200)
            .flat_map(|i| [(i % 17) as f32, (i % 5) as f32 * 3.0])
            .collect();
        let y: Vec<usize> = (0..200)
            .map(|i| usize::from((i % 17) + (i % 5) * 3 > 12))
            .collect();
        let classes = vec!["0".to_string(), "1".to_string()];
        let names = vec!["a".to_string(), "b".to_string()];
        let cfg = LogisticConfig {
            l2: 1e-2,
            max_iter: 500,
            gtol: 1e-10,
        };
        let first =
            LogisticModel::fit(&x, &y, classes.clone(), names.clone(), &cfg, || false).unwrap();
        // Warm start on a subset: the start is already the champion's function,
        // so the optimum is reached in fewer iterations than from zero.
        let (xs, ys) = (&x[..240], &y[..120]);
        let cold =
            LogisticModel::fit(xs, ys, classes.clone(), names.clone(), &cfg, || false).unwrap();
        let warm =
            LogisticModel::fit_from(xs, ys, classes, names, &cfg, Some(&first), || false).unwrap();
        assert!(
            (warm.objective - cold.objective).abs() < 1e-9,
            "same optimum"
        );
        assert!(
            warm.iterations < cold.iterations,
            "warm {} vs cold {}",
            warm.iterations,
            cold.iterations
        );
    }
}

/// The family API shared with the other families (see [`crate::learn::model`]).
impl LogisticModel {
    /// Trains on a [`Target::Classes`] target; `init` warm-starts as in
    /// [`LogisticModel::fit_from`].
    ///
    /// # Errors
    /// [`TrainError::Unsupported`] for a regression target; else as
    /// [`LogisticModel::fit`].
    pub fn fit_target(
        x: &[f32],
        target: &Target<'_>,
        feature_names: &[String],
        cfg: &LogisticConfig,
        init: Option<&LogisticModel>,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let Target::Classes { y, classes } = target else {
            return Err(TrainError::Unsupported {
                family: "logistic",
                task: Task::Regression,
            });
        };
        Self::fit_from(
            x,
            y,
            classes.to_vec(),
            feature_names.to_vec(),
            cfg,
            init,
            cancelled,
        )
    }

    /// Always [`Task::Classification`].
    pub fn task(&self) -> Task {
        Task::Classification
    }

    /// Class names, output column order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Feature names, input order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Class probabilities `[n, n_classes]`; see [`LogisticModel::predict_proba`].
    pub fn predict(&self, x: &[f32]) -> Vec<f32> {
        self.predict_proba(x)
    }

    /// ONNX bytes; see [`logistic_to_onnx`].
    pub fn to_onnx(&self, version: u32) -> Vec<u8> {
        logistic_to_onnx(self, version)
    }

    /// Settings and optimiser outcome, for the model card.
    pub fn hyperparameters(&self, cfg: &LogisticConfig) -> serde_json::Value {
        serde_json::json!({
            "l2": cfg.l2, "max_iter": cfg.max_iter, "gtol": cfg.gtol,
            "iterations": self.iterations, "stop": self.stop, "objective": self.objective,
        })
    }
}
