//! Head fine-tuning of an imported classifier network: only its last layer
//! is retrained on local labelled samples, every other weight stays as it
//! was.
//!
//! The network must end in `Gemm` (or `MatMul` then `Add`) followed by
//! `Softmax` over the class axis, as `torch.onnx.export` writes
//! `nn.Linear` + `nn.Softmax(dim=1)`, as skl2onnx writes a multiclass
//! `MLPClassifier` (its `probabilities` output, behind an `Identity`; a
//! binary one ends in `Sigmoid` and has no such head) and as edgeloop's own
//! logistic and MLP exports end. The steps:
//! 1. the graph (a prost `ModelProto`) is edited so that its only output is
//!    the last layer's input, the penultimate activations `[N, H]`, and run
//!    by tract with a symbolic batch dimension;
//! 2. the head is retrained as multinomial logistic regression on those
//!    activations: mean softmax cross-entropy plus `l2 / 2 · ‖W‖²` (bias not
//!    penalised), warm-started from the network's own head weights, minimised
//!    by L-BFGS ([`super::lbfgs`], Nocedal & Wright 2006, Alg. 7.4/7.5) — the
//!    objective of scikit-learn's `LogisticRegression(multi_class="multinomial")`
//!    with `C = 1 / (n · l2)`;
//! 3. a new ONNX file is written in which only the head's weight and bias
//!    initializers changed (same names, shapes and data type; every other
//!    initializer's bytes unchanged);
//! 4. the original and the fine-tuned file are both run by tract on the same
//!    temporal holdout (the newest `holdout` fraction of the rows) and the
//!    champion/challenger rule of every other version ([`super::card::judge`])
//!    decides.
//!
//! Transfer learning by retraining the last layer on frozen features: e.g.
//! Yosinski et al., "How transferable are features in deep neural
//! networks?", NeurIPS 2014.

use prost::Message;
use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::lbfgs;

/// Errors of head fine-tuning.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// The graph does not end in a linear layer and a softmax.
    #[error("no trainable head: {0}")]
    NoHead(String),
    #[error("tract: {0}")]
    Run(String),
    #[error("data: {0}")]
    Data(String),
}

/// Settings of [`finetune`].
#[derive(Debug, Clone, Copy)]
pub struct FinetuneOptions {
    /// Newest fraction of the rows held out for the comparison, in (0, 1).
    pub holdout: f64,
    /// L2 penalty strength on the head's weights, per sample.
    pub l2: f64,
    /// Most L-BFGS iterations.
    pub max_iter: usize,
    /// `margin_recent` of the champion/challenger rule (accuracy).
    pub margin: f64,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        Self {
            holdout: 0.2,
            l2: 1e-3,
            max_iter: 300,
            margin: 0.0,
        }
    }
}

/// The head found in a graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Head {
    /// The graph output holding the class probabilities (`probabilities`
    /// for torch's and skl2onnx's exports).
    pub output: String,
    /// Name of the head's input (the penultimate activations).
    pub input: String,
    /// Initializer names of the weight and the bias.
    pub weight: String,
    pub bias: String,
    /// Hidden width `H` and classes `C`.
    pub n_hidden: usize,
    pub n_classes: usize,
    /// Whether the weight is stored `[C, H]` (Gemm `transB = 1`) rather than
    /// `[H, C]`.
    pub weight_is_class_major: bool,
    /// Gemm's `alpha` and `beta` (1 for MatMul + Add).
    pub alpha: f32,
    pub beta: f32,
}

/// What [`finetune`] did.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneReport {
    pub head: Head,
    pub classes: Vec<String>,
    pub n_train: usize,
    pub n_holdout: usize,
    /// Holdout accuracy of the original and of the fine-tuned file, both
    /// run by tract.
    pub old_accuracy: f64,
    pub new_accuracy: f64,
    /// The champion/challenger decision.
    pub promoted: bool,
    pub reason: String,
    pub iterations: usize,
    pub stop: lbfgs::Stop,
    /// Mean cross-entropy on the training part before and after.
    pub loss_before: f64,
    pub loss_after: f64,
    /// The fine-tuned ONNX file.
    #[serde(skip)]
    pub onnx: Vec<u8>,
}

/// Finds the graph's head: `Softmax` producing an output (the first such,
/// directly or through `Identity` nodes: skl2onnx's MLPClassifier writes
/// `label` first and `probabilities` as `Identity(Softmax(…))` second), fed
/// by `Gemm(A, W, b)` (`transA = 0`) or `Add(MatMul(A, W), b)` with `W` and
/// `b` float initializers.
///
/// # Errors
/// [`HeadError::NoHead`] naming what is missing.
pub fn find_head(proto: &pb::ModelProto) -> Result<Head, HeadError> {
    let no = |m: String| HeadError::NoHead(m);
    let graph = proto.graph.as_ref().ok_or_else(|| no("no graph".into()))?;
    let producer = |name: &str| {
        graph
            .node
            .iter()
            .find(|n| n.output.iter().any(|o| o == name))
    };
    let init = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    let attr = |n: &pb::NodeProto, key: &str| n.attribute.iter().find(|a| a.name == key).cloned();
    // The node behind `name`, seen through Identity nodes (at most one
    // step per node: a malformed cycle ends the walk).
    let behind = |name: &str| {
        let mut node = producer(name);
        for _ in 0..graph.node.len() {
            match node {
                Some(n) if n.op_type == "Identity" => {
                    node = n.input.first().and_then(|i| producer(i));
                }
                _ => break,
            }
        }
        node
    };
    let (output, softmax) = graph
        .output
        .iter()
        .find_map(|o| {
            behind(&o.name)
                .filter(|n| n.op_type == "Softmax")
                .map(|n| (o.name.clone(), n))
        })
        .ok_or_else(|| {
            let names: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
            no(format!(
                "no output is produced by Softmax (outputs: {})",
                names.join(", ")
            ))
        })?;
    if let Some(a) = attr(softmax, "axis") {
        if a.i != 1 && a.i != -1 {
            return Err(no(format!("Softmax over axis {}, not the class axis", a.i)));
        }
    }
    let logits = softmax
        .input
        .first()
        .ok_or_else(|| no("Softmax has no input".into()))?;
    let linear = producer(logits).ok_or_else(|| no(format!("`{logits}` has no producer")))?;
    let (input, weight, bias, trans_b, alpha, beta) = match linear.op_type.as_str() {
        "Gemm" => {
            if attr(linear, "transA").is_some_and(|a| a.i != 0) {
                return Err(no("Gemm with transA = 1".into()));
            }
            let f = |k: &str| attr(linear, k).map_or(1.0, |a| a.f);
            let [a, w, b] = linear.input.as_slice() else {
                return Err(no("the last Gemm has no bias input".into()));
            };
            (
                a.clone(),
                w.clone(),
                b.clone(),
                attr(linear, "transB").is_some_and(|a| a.i != 0),
                f("alpha"),
                f("beta"),
            )
        }
        "Add" => {
            let (mm, b) = linear
                .input
                .iter()
                .find_map(|i| {
                    let p = producer(i).filter(|p| p.op_type == "MatMul")?;
                    let other = linear.input.iter().find(|j| *j != i)?;
                    Some((p, other.clone()))
                })
                .ok_or_else(|| {
                    no("the Add before Softmax does not add a bias to a MatMul".into())
                })?;
            let [a, w] = mm.input.as_slice() else {
                return Err(no("MatMul without two inputs".into()));
            };
            (a.clone(), w.clone(), b, false, 1.0, 1.0)
        }
        other => {
            return Err(no(format!(
                "the layer before Softmax is {other}, not Gemm or MatMul + Add"
            )))
        }
    };
    let w = init(&weight).ok_or_else(|| no(format!("weight `{weight}` is not an initializer")))?;
    let b = init(&bias).ok_or_else(|| no(format!("bias `{bias}` is not an initializer")))?;
    if w.data_type != pb::tensor_proto::DataType::Float as i32
        || b.data_type != pb::tensor_proto::DataType::Float as i32
    {
        return Err(no("head weights are not float32".into()));
    }
    let [d0, d1] = w.dims.as_slice() else {
        return Err(no(format!(
            "weight `{weight}` has shape {:?}, not 2-D",
            w.dims
        )));
    };
    let (n_classes, n_hidden) = if trans_b {
        (*d0 as usize, *d1 as usize)
    } else {
        (*d1 as usize, *d0 as usize)
    };
    if b.dims.iter().product::<i64>() as usize != n_classes {
        return Err(no(format!(
            "bias `{bias}` has shape {:?}, not [{n_classes}]",
            b.dims
        )));
    }
    if alpha == 0.0 || beta == 0.0 {
        return Err(no("Gemm with alpha or beta 0".into()));
    }
    Ok(Head {
        output,
        input,
        weight,
        bias,
        n_hidden,
        n_classes,
        weight_is_class_major: trans_b,
        alpha,
        beta,
    })
}

fn floats(t: &pb::TensorProto) -> Vec<f32> {
    if t.raw_data.is_empty() {
        t.float_data.clone()
    } else {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// Runs `proto` with tract on `x` (`[n, n_features]` row-major) and returns
/// its output `output` (`None`: the first declared output) as `[n, width]`
/// row-major, with `width`. The batch dimension is symbolic.
///
/// # Errors
/// [`HeadError::Run`] with tract's message.
pub fn run_output(
    proto: &pb::ModelProto,
    output: Option<&str>,
    x: &[f32],
    n_features: usize,
) -> Result<(Vec<f32>, usize), HeadError> {
    let run = |e: anyhow::Error| HeadError::Run(format!("{e:#}"));
    let mut proto = proto.clone();
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| HeadError::NotOnnx("no graph".into()))?;
    if let Some(name) = output {
        graph.output = vec![pb::ValueInfoProto {
            name: name.to_string(),
            r#type: Some(pb::TypeProto {
                denotation: String::new(),
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: pb::tensor_proto::DataType::Float as i32,
                    shape: None,
                })),
            }),
            doc_string: String::new(),
        }];
    } else {
        graph.output.truncate(1);
    }
    let batch_name = graph
        .input
        .first()
        .and_then(|i| {
            let pb::type_proto::Value::TensorType(t) = i.r#type.as_ref()?.value.as_ref()?;
            match t.shape.as_ref()?.dim.first()?.value.as_ref()? {
                pb::tensor_shape_proto::dimension::Value::DimParam(p) => Some(p.clone()),
                _ => None,
            }
        })
        .unwrap_or_else(|| "batch".into());
    let mut model = crate::onnx::engine::onnx_parser()
        .model_for_proto_model(&proto)
        .map_err(run)?;
    let n = model.sym(&batch_name);
    model
        .set_input_fact(
            0,
            InferenceFact::dt_shape(f32::datum_type(), tvec![TDim::from(n), n_features.into()]),
        )
        .map_err(run)?;
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(run)?;
    let rows = x.len() / n_features.max(1);
    let input = Tensor::from_shape(&[rows, n_features], x).map_err(run)?;
    let out = plan.run(tvec!(input.into_tvalue())).map_err(run)?;
    let t = out
        .first()
        .ok_or_else(|| HeadError::Run("no output".into()))?;
    let width = t.shape().iter().skip(1).product::<usize>().max(1);
    let values = t
        .to_plain_array_view::<f32>()
        .map_err(run)?
        .iter()
        .copied()
        .collect();
    Ok((values, width))
}

/// Mean softmax cross-entropy of logits `h·Wᵀ + b` and its gradient, for
/// `params = [W (C×H, class-major), b (C)]`, plus `l2/2 ‖W‖²`.
fn loss_grad(
    params: &[f64],
    grad: &mut [f64],
    h: &[f64],
    y: &[usize],
    hw: usize,
    c: usize,
    l2: f64,
) -> f64 {
    grad.iter_mut().for_each(|g| *g = 0.0);
    let (w, b) = params.split_at(c * hw);
    let n = y.len();
    let mut loss = 0.0;
    let mut z = vec![0.0; c];
    for (i, &yi) in y.iter().enumerate() {
        let hi = &h[i * hw..(i + 1) * hw];
        for k in 0..c {
            z[k] = b[k]
                + w[k * hw..(k + 1) * hw]
                    .iter()
                    .zip(hi)
                    .map(|(a, b)| a * b)
                    .sum::<f64>();
        }
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
        loss += m + s.ln() - z[yi];
        for k in 0..c {
            let d = ((z[k] - m).exp() / s - f64::from(u8::from(k == yi))) / n as f64;
            let (gw, gb) = grad.split_at_mut(c * hw);
            gb[k] += d;
            for (g, v) in gw[k * hw..(k + 1) * hw].iter_mut().zip(hi) {
                *g += d * v;
            }
        }
    }
    let mut penalty = 0.0;
    for (g, v) in grad[..c * hw].iter_mut().zip(w) {
        *g += l2 * v;
        penalty += v * v;
    }
    loss / n as f64 + 0.5 * l2 * penalty
}

fn accuracy(proba: &[f32], width: usize, y: &[usize]) -> f64 {
    let correct = proba
        .chunks_exact(width)
        .zip(y)
        .filter(|(row, &yi)| super::logistic::argmax_rows(row, width)[0] == yi)
        .count();
    correct as f64 / y.len().max(1) as f64
}

/// Fine-tunes the head of `onnx` on `x` (`[n, n_features]` row-major, file
/// order = time order) with `labels` (class names; `classes` lists them in
/// the network's output order). The newest `opts.holdout` fraction of rows
/// is held out; both files are scored on it.
///
/// # Errors
/// [`HeadError`] when the file is not ONNX, has no head of the supported
/// form, a label is not in `classes`, `classes` does not match the output
/// width, or tract fails.
pub fn finetune(
    onnx: &[u8],
    x: &[f32],
    n_features: usize,
    labels: &[String],
    classes: &[String],
    opts: &FinetuneOptions,
) -> Result<FinetuneReport, HeadError> {
    let proto = pb::ModelProto::decode(onnx).map_err(|e| HeadError::NotOnnx(e.to_string()))?;
    let head = find_head(&proto)?;
    let declared = proto
        .graph
        .as_ref()
        .and_then(|g| g.input.first())
        .and_then(|i| {
            let pb::type_proto::Value::TensorType(t) = i.r#type.as_ref()?.value.as_ref()?;
            match t.shape.as_ref()?.dim.last()?.value.as_ref()? {
                pb::tensor_shape_proto::dimension::Value::DimValue(v) => Some(*v as usize),
                _ => None,
            }
        });
    if let Some(width) = declared.filter(|w| *w != n_features) {
        return Err(HeadError::Data(format!(
            "the model takes {width} features per row; the data has {n_features}"
        )));
    }
    if classes.len() != head.n_classes {
        return Err(HeadError::Data(format!(
            "{} classes given ({classes:?}) for a head of {} outputs",
            classes.len(),
            head.n_classes
        )));
    }
    let n = labels.len();
    if n < 2 || x.len() != n * n_features {
        return Err(HeadError::Data(format!(
            "{} values for {n} rows of {n_features} features (at least 2 rows)",
            x.len()
        )));
    }
    if !(opts.holdout > 0.0 && opts.holdout < 1.0) {
        return Err(HeadError::Data(format!(
            "holdout {} is not in (0, 1)",
            opts.holdout
        )));
    }
    let y: Vec<usize> = labels
        .iter()
        .map(|l| {
            classes
                .iter()
                .position(|c| c == l)
                .ok_or_else(|| HeadError::Data(format!("label `{l}` is not one of {classes:?}")))
        })
        .collect::<Result<_, _>>()?;
    // Temporal holdout, as `Dataset::temporal_split`.
    let n_holdout = ((n as f64 * opts.holdout).round() as usize).clamp(1, n - 1);
    let cut = n - n_holdout;
    let (x_train, x_hold) = x.split_at(cut * n_features);
    let (y_train, y_hold) = y.split_at(cut);

    let (h, hw) = run_output(&proto, Some(&head.input), x_train, n_features)?;
    if hw != head.n_hidden {
        return Err(HeadError::NoHead(format!(
            "`{}` has {hw} values per row; the head takes {}",
            head.input, head.n_hidden
        )));
    }
    let h: Vec<f64> = h.iter().map(|v| f64::from(*v)).collect();
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| HeadError::NotOnnx("no graph".into()))?;
    let tensor = |name: &str| graph.initializer.iter().find(|t| t.name == name);
    let (w_t, b_t) = (
        tensor(&head.weight).ok_or_else(|| HeadError::NoHead("weight vanished".into()))?,
        tensor(&head.bias).ok_or_else(|| HeadError::NoHead("bias vanished".into()))?,
    );
    let (w0, b0) = (floats(w_t), floats(b_t));
    let (c, hn) = (head.n_classes, head.n_hidden);
    // Effective class-major weights: alpha · W, beta · b.
    let mut x0 = vec![0.0f64; c * hn + c];
    for k in 0..c {
        for j in 0..hn {
            let v = if head.weight_is_class_major {
                w0[k * hn + j]
            } else {
                w0[j * c + k]
            };
            x0[k * hn + j] = f64::from(head.alpha) * f64::from(v);
        }
        x0[c * hn + k] = f64::from(head.beta) * f64::from(b0[k]);
    }
    let mut g = vec![0.0; x0.len()];
    let loss_before = loss_grad(&x0, &mut g, &h, y_train, hn, c, opts.l2);
    let outcome = lbfgs::minimize(
        x0,
        |p, g| loss_grad(p, g, &h, y_train, hn, c, opts.l2),
        opts.max_iter,
        1e-6,
        || false,
    );

    // The new file: only the head's two initializers change.
    let mut new = proto.clone();
    let new_graph = new
        .graph
        .as_mut()
        .ok_or_else(|| HeadError::NotOnnx("no graph".into()))?;
    let mut w_new = vec![0.0f32; c * hn];
    for k in 0..c {
        for j in 0..hn {
            let v = (outcome.x[k * hn + j] / f64::from(head.alpha)) as f32;
            if head.weight_is_class_major {
                w_new[k * hn + j] = v;
            } else {
                w_new[j * c + k] = v;
            }
        }
    }
    let b_new: Vec<f32> = (0..c)
        .map(|k| (outcome.x[c * hn + k] / f64::from(head.beta)) as f32)
        .collect();
    for t in new_graph.initializer.iter_mut() {
        let values = if t.name == head.weight {
            &w_new
        } else if t.name == head.bias {
            &b_new
        } else {
            continue;
        };
        t.float_data.clear();
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    }
    let new_bytes = new.encode_to_vec();

    let (old_p, width) = run_output(&proto, Some(&head.output), x_hold, n_features)?;
    let (new_p, _) = run_output(&new, Some(&head.output), x_hold, n_features)?;
    let old_accuracy = accuracy(&old_p, width, y_hold);
    let new_accuracy = accuracy(&new_p, width, y_hold);
    let (promoted, reason) = super::card::judge(
        Some(old_accuracy),
        Some(new_accuracy),
        None,
        None,
        opts.margin,
        0.0,
    );
    Ok(FinetuneReport {
        head,
        classes: classes.to_vec(),
        n_train: cut,
        n_holdout,
        old_accuracy,
        new_accuracy,
        promoted,
        reason,
        iterations: outcome.iterations,
        stop: outcome.stop,
        loss_before,
        loss_after: outcome.f,
        onnx: new_bytes,
    })
}

/// `edgeloop finetune`: a model file and a labelled CSV file.
#[derive(Debug, Clone)]
pub struct FinetuneFile {
    pub model: std::path::PathBuf,
    /// Labelled CSV, rows in time order; every column but `label` is a
    /// feature, in the model's input order.
    pub file: std::path::PathBuf,
    pub label: String,
    /// Class names in the network's output order. Empty: the model's
    /// edgeloop metadata `classes`, else the file's labels sorted
    /// (scikit-learn's `classes_` order).
    pub classes: Vec<String>,
    /// Where the fine-tuned file is written when the gate promotes it.
    pub out: Option<std::path::PathBuf>,
    pub options: FinetuneOptions,
}

/// Runs [`finetune`] on files and writes the result to `out` when promoted;
/// returns the report and whether the file was written.
///
/// # Errors
/// [`HeadError::Data`] naming an unreadable file, or as [`finetune`].
pub fn finetune_file(args: &FinetuneFile) -> Result<(FinetuneReport, bool), HeadError> {
    let onnx = std::fs::read(&args.model)
        .map_err(|e| HeadError::Data(format!("{}: {e}", args.model.display())))?;
    let csv = crate::ingest::csv_file::read_labelled_csv(&args.file, &args.label, &[])
        .map_err(HeadError::Data)?;
    let classes = if !args.classes.is_empty() {
        args.classes.clone()
    } else if let Ok(meta) = crate::onnx::export::read_metadata(&onnx) {
        meta.classes
    } else {
        let mut c = csv.labels.clone();
        c.sort();
        c.dedup();
        c
    };
    let report = finetune(
        &onnx,
        &csv.x,
        csv.features.len(),
        &csv.labels,
        &classes,
        &args.options,
    )?;
    let written = match (&args.out, report.promoted) {
        (Some(out), true) => {
            std::fs::write(out, &report.onnx)
                .map_err(|e| HeadError::Data(format!("{}: {e}", out.display())))?;
            true
        }
        _ => false,
    };
    Ok((report, written))
}

/// A human summary of a [`FinetuneReport`].
pub fn render(report: &FinetuneReport, out: Option<&std::path::Path>, written: bool) -> String {
    let h = &report.head;
    format!(
        "head: `{}` [{} -> {}] (weight `{}`, bias `{}`)\n\
         samples: {} train, {} holdout (newest)\n\
         training loss: {:.4} -> {:.4} ({} L-BFGS iterations, {:?})\n\
         holdout accuracy: original {:.4}, fine-tuned {:.4}\n\
         decision: {}: {}\n{}",
        h.input,
        h.n_hidden,
        h.n_classes,
        h.weight,
        h.bias,
        report.n_train,
        report.n_holdout,
        report.loss_before,
        report.loss_after,
        report.iterations,
        report.stop,
        report.old_accuracy,
        report.new_accuracy,
        if report.promoted {
            "promoted"
        } else {
            "refused"
        },
        report.reason,
        match (out, written) {
            (Some(p), true) => format!("written: {}\n", p.display()),
            (Some(p), false) => format!("not written ({} refused)\n", p.display()),
            (None, _) => String::new(),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_central_differences() {
        let (hw, c) = (3, 3);
        let h = [
            0.5, -1.0, 2.0, 1.5, 0.0, -0.5, -1.0, 1.0, 0.25, 0.3, 0.2, 0.1,
        ];
        let y = [0, 2, 1, 2];
        let p: Vec<f64> = (0..c * hw + c).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut g = vec![0.0; p.len()];
        loss_grad(&p, &mut g, &h, &y, hw, c, 0.1);
        for i in 0..p.len() {
            let (mut a, mut b) = (p.clone(), p.clone());
            a[i] += 1e-6;
            b[i] -= 1e-6;
            let mut scratch = vec![0.0; p.len()];
            let num = (loss_grad(&a, &mut scratch, &h, &y, hw, c, 0.1)
                - loss_grad(&b, &mut scratch, &h, &y, hw, c, 0.1))
                / 2e-6;
            assert!((num - g[i]).abs() < 1e-6, "param {i}: {num} vs {}", g[i]);
        }
    }
}
