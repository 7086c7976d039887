//! Small helpers to write ONNX graphs with prost (the `onnx.proto3` messages
//! that tract-onnx ships as `tract_onnx::pb`), shared by every family's
//! export.
//!
//! The contract every edgeloop model follows (ONNX IR 7, opset 13, plus
//! `ai.onnx.ml` opset 3 for tree ensembles):
//!
//! * one input [`INPUT`], `[N, F]` f32, `NaN` = missing; `N` is symbolic;
//! * a classifier's first output is [`OUTPUT_PROBABILITIES`], `[N, C]` f32,
//!   column k the probability of class k; its second is [`OUTPUT_LABEL`],
//!   `[N]` i64, the index of the most probable class;
//! * a regressor's only output is [`OUTPUT_PREDICTION`], `[N, 1]` f32;
//! * metadata properties: `classes` (JSON list of class names, empty for a
//!   regressor), `features` (JSON list of input feature names), `task`
//!   (`classification` or `regression`) and `family`.

use prost::Message;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as Dim, type_proto,
};

use crate::ingest::decode::Task;

/// Name of the graph's input.
pub const INPUT: &str = "features";
/// A classifier's probabilities output, `[N, C]` f32.
pub const OUTPUT_PROBABILITIES: &str = "probabilities";
/// A classifier's label output, `[N]` i64 class index.
pub const OUTPUT_LABEL: &str = "label";
/// A regressor's output, `[N, 1]` f32.
pub const OUTPUT_PREDICTION: &str = "prediction";
/// The `ai.onnx.ml` operator-set domain.
pub const ML_DOMAIN: &str = "ai.onnx.ml";

/// An f32 initializer of shape `dims`.
pub fn tensor_f32(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

/// An i64 initializer of shape `dims`.
pub fn tensor_i64(name: &str, dims: &[i64], data: &[i64]) -> pb::TensorProto {
    debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

/// A node of the default domain with one output named `output` (the node
/// takes the same name).
pub fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    node_multi(op, "", inputs, &[output], attribute)
}

/// A node of `domain` (`""` for the default one) with several outputs; it is
/// named after its first output.
pub fn node_multi(
    op: &str,
    domain: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        domain: domain.into(),
        name: outputs.first().copied().unwrap_or(op).into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

/// A float attribute.
pub fn attr_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

/// A string attribute.
pub fn attr_string(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// A list-of-integers attribute.
pub fn attr_ints(name: &str, ints: Vec<i64>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints,
        ..Default::default()
    }
}

/// A list-of-floats attribute.
pub fn attr_floats(name: &str, floats: Vec<f32>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Floats as i32,
        floats,
        ..Default::default()
    }
}

/// A list-of-strings attribute.
pub fn attr_strings(name: &str, strings: &[&str]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Strings as i32,
        strings: strings.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

/// A tensor type with symbolic batch `N` followed by fixed `dims`.
pub fn value_info(name: &str, elem: DataType, dims: &[i64]) -> pb::ValueInfoProto {
    let dim = std::iter::once(Dim::DimParam("N".into()))
        .chain(dims.iter().map(|&d| Dim::DimValue(d)))
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(d),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The graph's input, `[N, n_features]` f32.
pub fn input_info(n_features: usize) -> pb::ValueInfoProto {
    value_info(INPUT, DataType::Float, &[n_features as i64])
}

/// A classifier's outputs: probabilities `[N, n_classes]` f32, label `[N]` i64.
pub fn classifier_outputs(n_classes: usize) -> Vec<pb::ValueInfoProto> {
    vec![
        value_info(OUTPUT_PROBABILITIES, DataType::Float, &[n_classes as i64]),
        value_info(OUTPUT_LABEL, DataType::Int64, &[]),
    ]
}

/// A regressor's output: prediction `[N, 1]` f32.
pub fn regressor_outputs() -> Vec<pb::ValueInfoProto> {
    vec![value_info(OUTPUT_PREDICTION, DataType::Float, &[1])]
}

/// A classifier's label output: `ArgMax(probabilities, axis = 1,
/// keepdims = 0)` → [`OUTPUT_LABEL`], the first most probable class on ties
/// (as numpy's `argmax`).
pub fn label_node() -> pb::NodeProto {
    node(
        "ArgMax",
        &[OUTPUT_PROBABILITIES],
        OUTPUT_LABEL,
        vec![attr_int("axis", 1), attr_int("keepdims", 0)],
    )
}

/// Nodes that impute missing values (`NaN`) by `mean_name` (an `[F]` f32
/// initializer the caller adds) and, when `scale_name` is given, standardise:
/// `IsNaN → Where → (Sub(mean) → Div(scale))`. Returns the nodes and the name
/// of their output.
pub fn impute_and_scale_nodes(
    mean_name: &str,
    scale_name: Option<&str>,
) -> (Vec<pb::NodeProto>, &'static str) {
    let mut nodes = vec![
        node("IsNaN", &[INPUT], "is_missing", vec![]),
        node(
            "Where",
            &["is_missing", mean_name, INPUT],
            "imputed",
            vec![],
        ),
    ];
    match scale_name {
        None => (nodes, "imputed"),
        Some(scale) => {
            nodes.push(node("Sub", &["imputed", mean_name], "centered", vec![]));
            nodes.push(node("Div", &["centered", scale], "scaled", vec![]));
            (nodes, "scaled")
        }
    }
}

/// What a model file says about itself, beside its graph.
#[derive(Debug, Clone)]
pub struct ModelMeta<'a> {
    /// Family name (`logistic`, `mlp`, ...).
    pub family: &'a str,
    pub task: Task,
    /// Class names (empty for a regressor).
    pub classes: &'a [String],
    pub features: &'a [String],
    /// Stored as the ONNX `model_version`.
    pub version: u32,
    /// One line saying what the graph computes.
    pub doc: &'a str,
}

/// Serialises `graph` as an ONNX model (protobuf bytes): IR 7, opset 13,
/// `ai.onnx.ml` opset 3 when a node uses that domain, and `meta` as metadata
/// properties (see the module docs).
pub fn model_bytes(graph: pb::GraphProto, meta: &ModelMeta<'_>) -> Vec<u8> {
    let mut opset_import = vec![pb::OperatorSetIdProto {
        domain: String::new(),
        version: 13,
    }];
    if graph.node.iter().any(|n| n.domain == ML_DOMAIN) {
        opset_import.push(pb::OperatorSetIdProto {
            domain: ML_DOMAIN.into(),
            version: 3,
        });
    }
    let prop = |key: &str, value: String| pb::StringStringEntryProto {
        key: key.into(),
        value,
    };
    let task = match meta.task {
        Task::Classification => "classification",
        Task::Regression => "regression",
    };
    let proto = pb::ModelProto {
        ir_version: 7,
        opset_import,
        producer_name: "edgeloop".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: i64::from(meta.version),
        doc_string: meta.doc.into(),
        graph: Some(graph),
        metadata_props: vec![
            prop(
                "classes",
                serde_json::to_string(meta.classes).unwrap_or_default(),
            ),
            prop(
                "features",
                serde_json::to_string(meta.features).unwrap_or_default(),
            ),
            prop("task", task.into()),
            prop("family", meta.family.into()),
        ],
        ..Default::default()
    };
    proto.encode_to_vec()
}
