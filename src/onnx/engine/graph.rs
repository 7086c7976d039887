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
