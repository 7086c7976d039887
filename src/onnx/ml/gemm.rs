//! `Gemm` (<https://onnx.ai/onnx/operators/onnx__Gemm.html>), replacing
//! tract-onnx's: `Y = alpha A' B' + beta C`, `A'` = `A` or its transpose
//! (`transA`), `B'` likewise (`transB`), `C` broadcast to `[M, N]`.
//!
//! A dense layer (`A` the rows, `B` and `C` constant, `alpha` 1, no
//! `transA`: every Gemm torch and skl2onnx export for an MLP) runs as
//! [`Dense`], edgeloop's own: the weights laid out once at load, input by
//! output, and each call a plain loop of fused multiply-adds over a block of
//! up to 4 rows and 16 outputs held in registers, `Relu` after it fused in.
//! Any other Gemm is tract's (its `EinSum`, then `alpha`, `beta C`).
//!
//! Why edgeloop's own: on one row of a 128-64-64-6 MLP (torch's dynamo
//! export), tract's general matrix products cost more than onnxruntime's
//! whole call (BENCHMARKS.md, engines). The sums run over the input in
//! order, `C` added last, as onnxruntime's MLAS adds `beta C` to the
//! product; outputs differ from tract's by rounding only
//! (`tests/conformance_torch.rs` compares both within 1e-6).
//!
//! The weights are held once behind an `Arc`: the plans a tract session
//! makes per batch size share them (tract's own matrix products pack a
//! copy of the weights per plan).

use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops;

use super::clear_upper_vector_state;

/// Outputs a block computes at once (two AVX registers of `f32`).
const LANES: usize = 16;
/// Rows a block computes at once.
const ROWS: usize = 4;

/// tract op builder.
pub fn build(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attr = |name: &str| super::in_node("Gemm", node, node.get_attr_opt::<f32>(name));
    let flag = |name: &str| super::in_node("Gemm", node, node.get_attr_opt::<bool>(name));
    Ok((
        expand(Gemm {
            alpha: attr("alpha")?.unwrap_or(1.0),
            beta: attr("beta")?.unwrap_or(1.0),
            trans_a: flag("transA")?.unwrap_or(false),
            trans_b: flag("transB")?.unwrap_or(false),
        }),
        vec![],
    ))
}

/// The parsed ONNX operator.
#[derive(Debug, Clone)]
pub struct Gemm {
    pub alpha: f32,
    pub beta: f32,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl Expansion for Gemm {
    fn name(&self) -> StaticName {
        "Gemm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if inputs.len() < 2 || inputs.len() > 3 {
            bail!("Gemm takes 2 or 3 inputs, the node has {}", inputs.len());
        }
        if inputs.len() == 3 {
            s.equals(&inputs[2].datum_type, &outputs[0].datum_type)?;
        }
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&inputs[1].rank, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[1].datum_type, &outputs[0].datum_type)?;
        let (ca, ra) = if self.trans_a { (0, 1) } else { (1, 0) };
        let (cb, rb) = if self.trans_b { (0, 1) } else { (1, 0) };
        s.equals(&inputs[0].shape[ra], &outputs[0].shape[0])?;
        s.equals(&inputs[0].shape[ca], &inputs[1].shape[rb])?;
        s.equals(&inputs[1].shape[cb], &outputs[0].shape[1])?;
        Ok(())
    }

    fn wire(
        &self,
        name: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        if let Some(dense) = self.dense(model, inputs)? {
            return model.wire_node(name, dense, &inputs[..1]);
        }
        // tract-onnx's Gemm (tract-onnx 0.23, `ops/math/gemm.rs`).
        let (a, b, c) = (inputs[0], inputs[1], inputs.get(2));
        let axes = AxesMapping::for_numpy_matmul(2, self.trans_a, self.trans_b, false)?;
        let mut wire = model.wire_node(
            format!("{name}.ab"),
            EinSum::new(axes, model.outlet_fact(a)?.datum_type),
            [a, b].as_ref(),
        )?[0];
        if self.alpha != 1.0 {
            let alpha = tensor0(self.alpha).broadcast_into_rank(model.outlet_fact(wire)?.rank())?;
            let alpha = model.add_const(format!("{name}.alpha_ab.cst"), alpha)?;
            wire =
                model.wire_node(format!("{name}.alpha_ab"), ops::math::mul(), &[alpha, wire])?[0];
        }
        if let (true, Some(&c)) = (self.beta != 0.0, c) {
            let mut c = c;
            while model.outlet_fact(wire)?.rank() > model.outlet_fact(c)?.rank() {
                c = model.wire_node(
                    format!("{name}.c_add_axis_{}", model.outlet_fact(c)?.rank()),
                    tract_onnx::tract_core::ops::change_axes::AxisOp::Add(0),
                    &[c],
                )?[0];
            }
            let beta = tensor0(self.beta).broadcast_into_rank(model.outlet_fact(wire)?.rank())?;
            let beta = model.add_const(format!("{name}.beta_c.cst"), beta)?;
            let beta_c =
                model.wire_node(format!("{name}.beta_c"), ops::math::mul(), &[beta, c])?[0];
            wire = model.wire_node(name, ops::math::add(), &[wire, beta_c])?[0];
        }
        Ok(tvec!(wire))
    }
}

impl Gemm {
    /// The dense layer this node is, when `B` (and `C`) are constants of
    /// `f32`, `alpha` is 1, `A` is not transposed and `C` is one value or one
    /// row (`[N]`, `[1, N]`).
    fn dense(&self, model: &TypedModel, inputs: &[OutletId]) -> TractResult<Option<Dense>> {
        if self.alpha != 1.0 || self.trans_a {
            return Ok(None);
        }
        let a = model.outlet_fact(inputs[0])?;
        let Some(b) = model.outlet_fact(inputs[1])?.konst.clone() else {
            return Ok(None);
        };
        if a.datum_type != DatumType::F32 || b.datum_type() != DatumType::F32 || b.rank() != 2 {
            return Ok(None);
        }
        let c = match inputs.get(2) {
            Some(c) if self.beta != 0.0 => match model.outlet_fact(*c)?.konst.clone() {
                Some(c) if c.datum_type() == DatumType::F32 => Some(c),
                _ => return Ok(None),
            },
            _ => None,
        };
        let (k, out) = if self.trans_b {
            (b.shape()[1], b.shape()[0])
        } else {
            (b.shape()[0], b.shape()[1])
        };
        let bias = match &c {
            None => None,
            Some(c) => {
                let cs = c.try_as_plain_ram()?.as_slice::<f32>()?;
                let per_row = c.len() == 1
                    || (c.len() == out && c.shape().last() == Some(&out) && c.rank() <= 2);
                if !per_row {
                    return Ok(None);
                }
                Some((0..out).map(|j| self.beta * cs[j % cs.len()]).collect())
            }
        };
        let w = b.try_as_plain_ram()?.as_slice::<f32>()?;
        Ok(Some(Dense::new(k, out, w, self.trans_b, bias, false)))
    }
}

/// A dense layer: `y = x W + b` (then `max(y, 0)` with `relu`) over rows
/// `x` of width `k`, `out` outputs.
#[derive(Debug, Clone)]
pub struct Dense {
    k: usize,
    out: usize,
    /// `out` rounded up to [`LANES`]: the row length of `weights` and `bias`.
    stride: usize,
    /// `W` as `[k, stride]` (input by output), zero past `out`.
    weights: Arc<[f32]>,
    /// `[stride]`, zero past `out`; `None`: no `C`.
    bias: Option<Arc<[f32]>>,
    relu: bool,
}

impl PartialEq for Dense {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.weights, &other.weights) && self.relu == other.relu
    }
}
impl Eq for Dense {}

impl Dense {
    /// From `B` (`w`, `[k, out]`, or `[out, k]` with `trans_b`) and the
    /// bias of each output.
    pub fn new(
        k: usize,
        out: usize,
        w: &[f32],
        trans_b: bool,
        bias: Option<Vec<f32>>,
        relu: bool,
    ) -> Self {
        let stride = out.div_ceil(LANES).max(1) * LANES;
        let mut weights = vec![0f32; k * stride];
        for i in 0..k {
            for j in 0..out {
                weights[i * stride + j] = if trans_b {
                    w[j * k + i]
                } else {
                    w[i * out + j]
                };
            }
        }
        let bias = bias.map(|b| {
            let mut padded = vec![0f32; stride];
            padded[..out].copy_from_slice(&b[..out]);
            padded.into()
        });
        Self {
            k,
            out,
            stride,
            weights: weights.into(),
            bias,
            relu,
        }
    }

    /// `y` (`[n, out]`) from `x` (`[n, k]`).
    ///
    /// # Panics
    /// When `x` has fewer than `n k` values (`n` = `y.len() / out`).
    pub fn apply(&self, x: &[f32], y: &mut [f32]) {
        if self.out == 0 || y.is_empty() {
            return;
        }
        assert!(
            x.len() >= y.len() / self.out * self.k,
            "Gemm: input shorter than its rows"
        );
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has AVX2 and FMA (checked just above), and
                // `x` holds the rows `y` asks for (asserted above).
                return unsafe { avx2::apply(self, x, y) };
            }
            self.blocks::<false>(x, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // aarch64 (and others with a fused multiply-add in the base
            // instruction set) compile `mul_add` to one instruction.
            self.blocks::<{ cfg!(target_arch = "aarch64") }>(x, y)
        }
    }

    /// The rows in blocks of [`ROWS`], each over the outputs in blocks of
    /// [`LANES`]; `FMA`: `mul_add` (one instruction on the CPUs that have
    /// it; a library call elsewhere) or a product and a sum.
    #[inline(always)]
    fn blocks<const FMA: bool>(&self, x: &[f32], y: &mut [f32]) {
        let (k, out) = (self.k, self.out);
        if k == 0 {
            for row in y.chunks_exact_mut(out) {
                self.finish(&[0f32; LANES], 0, row);
            }
            return;
        }
        let mut xs = x.chunks_exact(k * ROWS);
        let mut ys = y.chunks_exact_mut(out * ROWS);
        for (x, y) in (&mut xs).zip(&mut ys) {
            let (x0, rest) = x.split_at(k);
            let (x1, rest) = rest.split_at(k);
            let (x2, x3) = rest.split_at(k);
            for j0 in (0..self.stride).step_by(LANES) {
                // One accumulator of LANES outputs per row, each a plain
                // array (so the compiler keeps them in vector registers).
                let (mut a0, mut a1, mut a2, mut a3) =
                    ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
                let ws = self.weights.chunks_exact(self.stride);
                for ((((w, v0), v1), v2), v3) in ws.zip(x0).zip(x1).zip(x2).zip(x3) {
                    let w: &[f32; LANES] = w[j0..j0 + LANES].try_into().unwrap_or(&[0.0; LANES]);
                    axpy::<FMA>(&mut a0, *v0, w);
                    axpy::<FMA>(&mut a1, *v1, w);
                    axpy::<FMA>(&mut a2, *v2, w);
                    axpy::<FMA>(&mut a3, *v3, w);
                }
                for (r, a) in [a0, a1, a2, a3].iter().enumerate() {
                    self.finish(a, j0, &mut y[r * out..(r + 1) * out]);
                }
            }
        }
        for (x, y) in xs
            .remainder()
            .chunks_exact(k)
            .zip(ys.into_remainder().chunks_exact_mut(out))
        {
            for j0 in (0..self.stride).step_by(LANES) {
                let mut acc = [0f32; LANES];
                for (v, w) in x.iter().zip(self.weights.chunks_exact(self.stride)) {
                    let w: &[f32; LANES] = w[j0..j0 + LANES].try_into().unwrap_or(&[0.0; LANES]);
                    axpy::<FMA>(&mut acc, *v, w);
                }
                self.finish(&acc, j0, y);
            }
        }
    }

    /// Outputs `j0..j0 + LANES` of one row (those below `out`): the sum
    /// plus the bias, then `relu`.
    #[inline(always)]
    fn finish(&self, acc: &[f32; LANES], j0: usize, y: &mut [f32]) {
        let end = (j0 + LANES).min(self.out);
        for (j, a) in (j0..end).zip(acc) {
            let mut v = *a;
            if let Some(b) = &self.bias {
                v += b[j];
            }
            y[j] = if self.relu { v.max(0.0) } else { v };
        }
    }
}

/// The same loops written with AVX2 and FMA intrinsics: the compiler left
/// the one-row loop of [`Dense::blocks`] scalar once the four-row one was
/// vectorised.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Dense, LANES, ROWS};

    // Two AVX registers of 8 lanes.
    const _: () = assert!(LANES == 16);

    /// # Safety
    /// The CPU has AVX2 and FMA; `x` holds `y.len() / d.out` rows of `d.k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn apply(d: &Dense, x: &[f32], y: &mut [f32]) {
        let (k, out, stride) = (d.k, d.out, d.stride);
        let n = y.len() / out;
        let w = d.weights.as_ptr();
        let x = x.as_ptr();
        let mut lanes = [0f32; LANES];
        let mut r = 0;
        while r + ROWS <= n {
            let xr = x.add(r * k);
            for j0 in (0..stride).step_by(LANES) {
                let mut acc = [_mm256_setzero_ps(); 2 * ROWS];
                for i in 0..k {
                    let wp = w.add(i * stride + j0);
                    let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
                    for rr in 0..ROWS {
                        let v = _mm256_broadcast_ss(&*xr.add(rr * k + i));
                        acc[2 * rr] = _mm256_fmadd_ps(v, w0, acc[2 * rr]);
                        acc[2 * rr + 1] = _mm256_fmadd_ps(v, w1, acc[2 * rr + 1]);
                    }
                }
                for rr in 0..ROWS {
                    _mm256_storeu_ps(lanes.as_mut_ptr(), acc[2 * rr]);
                    _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[2 * rr + 1]);
                    d.finish(&lanes, j0, &mut y[(r + rr) * out..(r + rr + 1) * out]);
                }
            }
            r += ROWS;
        }
        for r in r..n {
            let xr = x.add(r * k);
            for j0 in (0..stride).step_by(LANES) {
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for i in 0..k {
                    let wp = w.add(i * stride + j0);
                    let v = _mm256_broadcast_ss(&*xr.add(i));
                    a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wp), a0);
                    a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(wp.add(8)), a1);
                }
                _mm256_storeu_ps(lanes.as_mut_ptr(), a0);
                _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a1);
                d.finish(&lanes, j0, &mut y[r * out..(r + 1) * out]);
            }
        }
    }
}

/// `acc += v w`, lane by lane.
#[inline(always)]
fn axpy<const FMA: bool>(acc: &mut [f32; LANES], v: f32, w: &[f32; LANES]) {
    for (a, w) in acc.iter_mut().zip(w) {
        *a = if FMA { v.mul_add(*w, *a) } else { v * *w + *a };
    }
}

impl Op for Dense {
    fn name(&self) -> StaticName {
        "Gemm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "dense {}x{}{}{}",
            self.k,
            self.out,
            if self.bias.is_some() { " + bias" } else { "" },
            if self.relu { ", relu" } else { "" }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Dense {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        clear_upper_vector_state();
        let (n, k) = match *x.shape() {
            [n, k] => (n, k),
            ref s => bail!("Gemm: input A of shape {s:?}, expected [M, {}]", self.k),
        };
        ensure!(
            k == self.k,
            "Gemm: input A of shape [{n}, {k}], expected [{n}, {}]",
            self.k
        );
        let mut y = Tensor::zero::<f32>(&[n, self.out])?;
        self.apply(
            x.try_as_plain_ram()?.as_slice::<f32>()?,
            y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for Dense {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.rank() == 2 && x.datum_type == DatumType::F32,
            "Gemm: input A is {x:?}, expected [M, {}] of f32",
            self.k
        );
        if let Ok(k) = x.shape[1].to_usize() {
            ensure!(
                k == self.k,
                "Gemm: input A has {k} columns, B {} rows",
                self.k
            );
        }
        Ok(tvec!(f32::fact([x.shape[0].clone(), self.out.to_dim()])))
    }

    /// A `Relu` after the layer (tract's `Max` with a constant 0) runs
    /// inside it.
    fn declutter(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        if self.relu {
            return Ok(None);
        }
        let Some(succ) = model.single_succ(node.id)? else {
            return Ok(None);
        };
        if succ.op.name() != "Max" || succ.inputs.len() != 2 {
            return Ok(None);
        }
        let other = if succ.inputs[0].node == node.id {
            succ.inputs[1]
        } else {
            succ.inputs[0]
        };
        let zero = model
            .outlet_fact(other)?
            .konst
            .as_ref()
            .and_then(|c| {
                c.try_as_plain_ram().ok().and_then(|p| {
                    p.as_slice::<f32>()
                        .ok()
                        .map(|s| s.iter().all(|v| *v == 0.0))
                })
            })
            .unwrap_or(false);
        let out = model.outlet_fact(succ.id.into())?;
        if !zero || out.shape != model.outlet_fact(node.id.into())?.shape {
            return Ok(None);
        }
        let fused = Self {
            relu: true,
            ..self.clone()
        };
        Ok(Some(TypedModelPatch::fuse_with_next(model, node, fused)?))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product in `f64`, as the definition: `sum_i x[r][i] W[i][j] + b[j]`.
    fn reference(x: &[f32], w: &[f32], b: &[f32], k: usize, out: usize) -> Vec<f64> {
        let n = x.len() / k;
        let mut y = vec![0f64; n * out];
        for r in 0..n {
            for j in 0..out {
                let s: f64 = (0..k)
                    .map(|i| x[r * k + i] as f64 * w[i * out + j] as f64)
                    .sum();
                y[r * out + j] = s + b[j] as f64;
            }
        }
        y
    }

    /// Row counts around the block of 4 and output counts around the block
    /// of 16, `B` given either way round: equal to the definition.
    #[test]
    fn every_row_and_output_block_equals_the_definition() {
        for (n, k, out) in [(1, 3, 1), (3, 5, 6), (4, 20, 16), (7, 33, 17), (9, 128, 64)] {
            let x: Vec<f32> = (0..n * k)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let w: Vec<f32> = (0..k * out)
                .map(|i| ((i * 53 % 29) as f32 - 14.0) / 9.0)
                .collect();
            let b: Vec<f32> = (0..out).map(|j| j as f32 * 0.25 - 1.0).collect();
            let want = reference(&x, &w, &b, k, out);
            let wt: Vec<f32> = (0..out)
                .flat_map(|j| (0..k).map(move |i| (i, j)))
                .map(|(i, j)| w[i * out + j])
                .collect();
            for (trans_b, w) in [(false, &w), (true, &wt)] {
                for relu in [false, true] {
                    let d = Dense::new(k, out, w, trans_b, Some(b.clone()), relu);
                    // The CPU's path, and the portable loops with and
                    // without fused multiply-adds.
                    let mut ys = vec![vec![f32::NAN; n * out]; 3];
                    d.apply(&x, &mut ys[0]);
                    d.blocks::<false>(&x, &mut ys[1]);
                    d.blocks::<true>(&x, &mut ys[2]);
                    for (g, e) in ys.iter().flat_map(|y| y.iter().zip(&want)) {
                        let e = if relu { e.max(0.0) } else { *e };
                        assert!(
                            (*g as f64 - e).abs() < 1e-5 * (1.0 + e.abs()),
                            "n {n} k {k} out {out} trans_b {trans_b}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
