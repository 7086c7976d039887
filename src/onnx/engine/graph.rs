//! What an ONNX model declares, read from its protobuf (prost, tract-onnx's
//! `pb` types) before any engine sees it: inputs and outputs with their
//! element types and dims, every operator `(domain, op_type)` (subgraphs
//! included), ZipMap outputs and their keys, a classifier node's class labels.
//!
//! Follows the ONNX IR spec (<https://onnx.ai/onnx/repo-docs/IR.html>):
//! graph inputs that an initializer names are constants, not inputs;
//! `TensorProto.DataType` codes; `dim_value`/`dim_param`.

use prost::Message;
use tract_onnx::pb;

use super::{DType, ModelError, TensorInfo};

/// The parts of a model the engine layer needs.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    pub proto: pb::ModelProto,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Every node's `(domain, op_type)`, in graph order, subgraphs included.
    pub ops: Vec<(String, String)>,
}

impl Graph {
    /// The version of the default operator set (`""` or `ai.onnx`) the
    /// model imports (the highest, if it names it twice); `None` when it
    /// imports none.
    pub fn default_opset(&self) -> Option<i64> {
        self.proto
            .opset_import
            .iter()
            .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .max()
    }

    /// Decodes `bytes` and reads the declared inputs and outputs.
    ///
    /// # Errors
    /// [`ModelError::Refused`] when the bytes are not an ONNX model with a graph.
    pub fn parse(bytes: &[u8]) -> Result<Self, ModelError> {
        let proto = pb::ModelProto::decode(bytes)
            .map_err(|e| ModelError::Refused(format!("not an ONNX model: {e}")))?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| ModelError::Refused("the ONNX model has no graph".into()))?;
        let constants: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs = graph
            .input
            .iter()
            .filter(|v| !constants.contains(v.name.as_str()))
            .map(|v| value_info(v, graph))
            .collect();
        let outputs = graph.output.iter().map(|v| value_info(v, graph)).collect();
        let mut ops = Vec::new();
        collect_ops(graph, &mut ops);
        Ok(Self {
            proto,
            inputs,
            outputs,
            ops,
        })
    }

    /// The top-level graph (present: checked by [`Graph::parse`]).
    pub fn graph(&self) -> &pb::GraphProto {
        self.proto.graph.as_ref().expect("checked at parse")
    }

    /// The class labels of the graph's `ai.onnx.ml` classifier node
    /// (`LinearClassifier`, `SVMClassifier`, `TreeEnsembleClassifier`, ...):
    /// its `classlabels_strings`, or `classlabels_int64s`/`classlabels_ints`
    /// written as decimal strings; `None` without such a node.
    pub fn classifier_labels(&self) -> Option<Vec<String>> {
        self.graph()
            .node
            .iter()
            .filter(|n| n.op_type.ends_with("Classifier"))
            .find_map(class_labels)
    }
}

/// A node's class labels attribute, as strings.
fn class_labels(node: &pb::NodeProto) -> Option<Vec<String>> {
    for attr in &node.attribute {
        match attr.name.as_str() {
            "classlabels_strings" if !attr.strings.is_empty() => {
                return Some(
                    attr.strings
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                )
            }
            "classlabels_int64s" | "classlabels_ints" if !attr.ints.is_empty() => {
                return Some(attr.ints.iter().map(|i| i.to_string()).collect())
            }
            _ => {}
        }
    }
    None
}

fn collect_ops(graph: &pb::GraphProto, ops: &mut Vec<(String, String)>) {
    for node in &graph.node {
        ops.push((node.domain.clone(), node.op_type.clone()));
        for attr in &node.attribute {
            if let Some(g) = &attr.g {
                collect_ops(g, ops);
            }
            for g in &attr.graphs {
                collect_ops(g, ops);
            }
        }
    }
}

/// `TensorProto.DataType` code → [`DType`].
pub(crate) fn dtype_of(code: i32) -> DType {
    match pb::tensor_proto::DataType::try_from(code) {
        Ok(pb::tensor_proto::DataType::Float) => DType::F32,
        Ok(pb::tensor_proto::DataType::Double) => DType::F64,
        Ok(pb::tensor_proto::DataType::Int64) => DType::I64,
        Ok(pb::tensor_proto::DataType::Int32) => DType::I32,
        Ok(pb::tensor_proto::DataType::Bool) => DType::Bool,
        Ok(pb::tensor_proto::DataType::String) => DType::String,
        _ => DType::Other(code),
    }
}

/// One declared input or output. A `seq(map(K, float))` output produced by a
/// `ZipMap` node is described as the dense `[N, C]` f32 tensor the engine
/// layer returns, with the node's keys.
fn value_info(v: &pb::ValueInfoProto, graph: &pb::GraphProto) -> TensorInfo {
    use pb::type_proto::Value;
    let mut info = TensorInfo {
        name: v.name.clone(),
        dtype: DType::Other(0),
        dims: None,
        keys: None,
    };
    match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Value::TensorType(t)) => {
            info.dtype = dtype_of(t.elem_type);
            info.dims = t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if *n > 0 => {
                            Some(*n as usize)
                        }
                        _ => None,
                    })
                    .collect()
            });
        }
        _ => {
            // Not a tensor (a sequence of maps, in practice): a ZipMap's
            // output is described as its dense form.
            let producer = graph.node.iter().find(|n| n.output.contains(&v.name));
            if let Some(node) = producer.filter(|n| n.op_type == "ZipMap") {
                let keys = class_labels(node);
                info.dtype = DType::F32;
                info.dims = Some(vec![None, keys.as_ref().map(Vec::len)]);
                info.keys = keys;
            }
        }
    }
    // A ZipMap output declared as a tensor (as a dense-identity ZipMap may
    // be) still carries the node's keys.
    if info.keys.is_none() {
        if let Some(node) = graph
            .node
            .iter()
            .find(|n| n.op_type == "ZipMap" && n.output.contains(&v.name))
        {
            info.keys = class_labels(node);
        }
    }
    info
}

/// The external-data files a model names (`TensorProto.data_location =
/// EXTERNAL`, key `location`), in order of first use; initializers of
/// subgraphs included.
pub(crate) fn external_files(proto: &pb::ModelProto) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    if let Some(g) = &proto.graph {
        each_tensor(g, &mut |t| {
            if let Some(loc) = external_location(t) {
                if !files.iter().any(|f| f == loc) {
                    files.push(loc.to_string());
                }
            }
        });
    }
    files
}

fn external_location(t: &pb::TensorProto) -> Option<&str> {
    if t.data_location != Some(pb::tensor_proto::DataLocation::External as i32) {
        return None;
    }
    t.external_data
        .iter()
        .find(|e| e.key == "location")
        .map(|e| e.value.as_str())
}

fn each_tensor(graph: &pb::GraphProto, f: &mut impl FnMut(&pb::TensorProto)) {
    graph.initializer.iter().for_each(&mut *f);
    for node in &graph.node {
        for attr in &node.attribute {
            if let Some(t) = &attr.t {
                f(t);
            }
            attr.tensors.iter().for_each(&mut *f);
            if let Some(g) = &attr.g {
                each_tensor(g, f);
            }
            for g in &attr.graphs {
                each_tensor(g, f);
            }
        }
    }
}

fn each_tensor_mut(
    graph: &mut pb::GraphProto,
    f: &mut impl FnMut(&mut pb::TensorProto) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    for t in &mut graph.initializer {
        f(t)?;
    }
    for node in &mut graph.node {
        for attr in &mut node.attribute {
            if let Some(t) = &mut attr.t {
                f(t)?;
            }
            for t in &mut attr.tensors {
                f(t)?;
            }
            if let Some(g) = &mut attr.g {
                each_tensor_mut(g, f)?;
            }
            for g in &mut attr.graphs {
                each_tensor_mut(g, f)?;
            }
        }
    }
    Ok(())
}

/// Reads every external-data tensor of `proto` into its `raw_data`, from the
/// files its `location` names relative to `dir` (the model file's
/// directory), as the ONNX external-data spec lays them out
/// (<https://onnx.ai/onnx/repo-docs/ExternalData.html>: `location`,
/// `offset`, `length`). A location must stay inside `dir` (no absolute path,
/// no `..`). Afterwards the model is self-contained. Returns whether
/// anything was read.
///
/// # Errors
/// [`ModelError::ExternalData`] naming the tensor and the file: no `dir`
/// (the model came as bytes, without its file), a file missing or
/// unreadable, a location outside `dir`, a range past the file's end.
pub(crate) fn inline_external_data(
    proto: &mut pb::ModelProto,
    dir: Option<&std::path::Path>,
) -> Result<bool, ModelError> {
    let files = external_files(proto);
    if files.is_empty() {
        return Ok(false);
    }
    let Some(dir) = dir else {
        return Err(ModelError::ExternalData(format!(
            "the model keeps its weights in {} beside the model file, and only the model file \
             was given; load the model from its file with the data file beside it, or save it \
             with the weights inside (onnx.save_model(model, path, save_as_external_data=False))",
            quote_list(&files)
        )));
    };
    let mut contents: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for file in &files {
        let location = std::path::Path::new(file);
        if file.is_empty()
            || location.components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
        {
            return Err(ModelError::ExternalData(format!(
                "external data location `{file}` is not a relative path inside the model's directory"
            )));
        }
        let path = dir.join(location);
        let bytes = std::fs::read(&path).map_err(|e| {
            ModelError::ExternalData(format!(
                "the model's weights file {} (external data `{file}`): {e}",
                path.display()
            ))
        })?;
        contents.insert(file.clone(), bytes);
    }
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| ModelError::Refused("the ONNX model has no graph".into()))?;
    each_tensor_mut(graph, &mut |t| {
        let Some(file) = external_location(t).map(str::to_string) else {
            return Ok(());
        };
        let field = |key: &str| -> Result<Option<usize>, ModelError> {
            t.external_data
                .iter()
                .find(|e| e.key == key)
                .map(|e| {
                    e.value.parse::<usize>().map_err(|_| {
                        ModelError::ExternalData(format!(
                            "tensor `{}`: external data {key} `{}` is not a number",
                            t.name, e.value
                        ))
                    })
                })
                .transpose()
        };
        let offset = field("offset")?.unwrap_or(0);
        let data = &contents[&file];
        let length = field("length")?.unwrap_or(data.len().saturating_sub(offset));
        let Some(bytes) = offset
            .checked_add(length)
            .and_then(|end| data.get(offset..end))
        else {
            return Err(ModelError::ExternalData(format!(
                "tensor `{}`: bytes {offset}..{} of `{file}` are past its end ({} bytes)",
                t.name,
                offset.saturating_add(length),
                data.len()
            )));
        };
        t.raw_data = bytes.to_vec();
        t.data_location = None;
        t.external_data.clear();
        Ok(())
    })?;
    Ok(true)
}

fn quote_list(files: &[String]) -> String {
    files
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Symbolic dims made one for tract: every `dim_param` equal to an input's
/// first-axis name (`batch`, `s0`, `batch_size`: whatever the exporter
/// wrote) becomes `batch`, the symbol the engine gives the inputs' batch
/// axis; every other `dim_param` recorded on an intermediate value or an
/// output (`value_info`, torch's dynamo exporter writes one per node, with
/// expressions such as `2*s0`) is dropped to an unknown dim, which tract
/// infers from the inputs. Subgraphs included. Inputs are left as written
/// (the engine sets their facts).
pub(crate) fn unify_symbolic_dims(proto: &mut pb::ModelProto, batch: &str) {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    let Some(graph) = proto.graph.as_mut() else {
        return;
    };
    let batch_names: std::collections::HashSet<String> = graph
        .input
        .iter()
        .filter_map(|v| {
            let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
            match t.shape.as_ref()?.dim.first()?.value.as_ref()? {
                Dim::DimParam(p) if !p.is_empty() => Some(p.clone()),
                _ => None,
            }
        })
        .collect();
    fn rewrite(v: &mut pb::ValueInfoProto, names: &std::collections::HashSet<String>, batch: &str) {
        let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        else {
            return;
        };
        let Some(shape) = t.shape.as_mut() else {
            return;
        };
        for d in &mut shape.dim {
            if let Some(Dim::DimParam(p)) = &d.value {
                d.value = names.contains(p).then(|| Dim::DimParam(batch.to_string()));
            }
        }
    }
    fn walk(g: &mut pb::GraphProto, names: &std::collections::HashSet<String>, batch: &str) {
        for v in g.value_info.iter_mut().chain(g.output.iter_mut()) {
            rewrite(v, names, batch);
        }
        for node in &mut g.node {
            for attr in &mut node.attribute {
                if let Some(sub) = &mut attr.g {
                    walk(sub, names, batch);
                }
                for sub in &mut attr.graphs {
                    walk(sub, names, batch);
                }
            }
        }
    }
    walk(graph, &batch_names, batch);
}

/// An engine's message about a node, said in the model's terms: the ONNX
/// operator and node it concerns first (`operator Gemm (node `fc1`): …`),
/// then the engine's own words. tract names the nodes it fails on in double
/// quotes (`#3 "fc1"`), and the nodes it derives from one ONNX node by that
/// node's name and a suffix (`fc1.matmul`); onnxruntime in single quotes
/// (`Name:'fc1'`). The longest node name of the graph a quoted name equals
/// or starts with (before `.`, `#`, `-` or `_`) is the node. Without one,
/// the message as it is.
pub(crate) fn in_model_terms(nodes: &[pb::NodeProto], message: &str) -> String {
    let mut best: Option<&pb::NodeProto> = None;
    let quoted = message
        .split('"')
        .skip(1)
        .step_by(2)
        .chain(message.split('\'').skip(1).step_by(2));
    for quoted in quoted {
        for node in nodes {
            let n = node.name.as_str();
            let matches = !n.is_empty()
                && (quoted == n
                    || quoted
                        .strip_prefix(n)
                        .is_some_and(|rest| rest.starts_with(['.', '#', '-', '_'])));
            if matches && best.is_none_or(|b| b.name.len() < n.len()) {
                best = Some(node);
            }
        }
        if best.is_some() {
            break;
        }
    }
    match best {
        Some(node) => {
            let domain = if node.domain.is_empty() || node.domain == "ai.onnx" {
                String::new()
            } else {
                format!("{}.", node.domain)
            };
            format!(
                "operator {domain}{} (node `{}`): {message}",
                node.op_type, node.name
            )
        }
        None => message.to_string(),
    }
}

/// The graph's nodes with their name, operator and domain only (what
/// [`in_model_terms`] reads; no attributes or weights).
pub(crate) fn node_names(graph: &pb::GraphProto) -> Vec<pb::NodeProto> {
    graph
        .node
        .iter()
        .map(|n| pb::NodeProto {
            name: n.name.clone(),
            op_type: n.op_type.clone(),
            domain: n.domain.clone(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, op: &str) -> pb::NodeProto {
        pb::NodeProto {
            name: name.into(),
            op_type: op.into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_node_a_message_quotes_is_named_with_its_operator() {
        let graph = [node("fc", "Gemm"), node("fc1", "MatMul"), node("", "Relu")];
        assert_eq!(
            in_model_terms(&graph, r#"Failed analyse for node #3 "fc1.matmul" MatMul"#),
            r#"operator MatMul (node `fc1`): Failed analyse for node #3 "fc1.matmul" MatMul"#
        );
        assert_eq!(
            in_model_terms(&graph, r#"Evaluating #0 "fc" OptMatMul"#),
            r#"operator Gemm (node `fc`): Evaluating #0 "fc" OptMatMul"#
        );
        assert_eq!(
            in_model_terms(&graph, "running Gemm node. Name:'fc' Status Message: bad"),
            "operator Gemm (node `fc`): running Gemm node. Name:'fc' Status Message: bad"
        );
        // No node of the graph quoted: the message unchanged.
        assert_eq!(in_model_terms(&graph, r#"in "fcx""#), r#"in "fcx""#);
    }
}
