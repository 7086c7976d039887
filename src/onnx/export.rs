//! Export of trained models to ONNX (opset 13, standard operators only), so
//! that any ONNX runtime (tract here, onnxruntime elsewhere) serves them.
//!
//! The logistic model becomes (ONNX operator specification, opset 13):
//!
//! ```text
//! features [N, F] f32
//!   → IsNaN → Where(isnan, mean, features)       mean imputation
//!   → Sub(mean) → Div(scale)                      standard scaling
//!   → MatMul(W [F, C]) → Add(b [C])               logits
//!   → Softmax(axis = 1)                           → probabilities [N, C] f32
//!   → ArgMax(axis = 1, keepdims = 0)              → label [N] i64 (class index)
//! ```
//!
//! `N` is the symbolic batch dimension. Metadata properties carry the class
//! names (`classes`, a JSON list; `label` indexes it), the feature names
//! (`features`) and the edgeloop version.

use prost::Message;
use tract_onnx::pb::{
    self, attribute_proto::AttributeType, tensor_proto::DataType,
    tensor_shape_proto::dimension::Value as Dim, type_proto,
};

use crate::learn::logistic::LogisticModel;

/// Names of the graph's input and outputs.
pub const INPUT: &str = "features";
pub const OUTPUT_PROBABILITIES: &str = "probabilities";
pub const OUTPUT_LABEL: &str = "label";

/// Serialises `model` as an ONNX model (protobuf bytes).
pub fn logistic_to_onnx(model: &LogisticModel, model_version: u32) -> Vec<u8> {
    let nf = model.n_features() as i64;
    let nc = model.classes.len() as i64;
    let init = |name: &str, dims: Vec<i64>, data: &[f32]| pb::TensorProto {
        name: name.into(),
        dims,
        data_type: DataType::Float as i32,
        float_data: data.to_vec(),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>| {
        pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    };
    let int_attr = |name: &str, i: i64| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "edgeloop_logistic".into(),
        node: vec![
            node("IsNaN", &[INPUT], "is_missing", vec![]),
            node("Where", &["is_missing", "mean", INPUT], "imputed", vec![]),
            node("Sub", &["imputed", "mean"], "centered", vec![]),
            node("Div", &["centered", "scale"], "scaled", vec![]),
            node("MatMul", &["scaled", "weights"], "matmul", vec![]),
            node("Add", &["matmul", "bias"], "logits", vec![]),
            node(
                "Softmax",
                &["logits"],
                OUTPUT_PROBABILITIES,
                vec![int_attr("axis", 1)],
            ),
            node(
                "ArgMax",
                &[OUTPUT_PROBABILITIES],
                OUTPUT_LABEL,
                vec![int_attr("axis", 1), int_attr("keepdims", 0)],
            ),
        ],
        initializer: vec![
            init("mean", vec![nf], &model.scaler.mean),
            init("scale", vec![nf], &model.scaler.scale),
            init("weights", vec![nf, nc], &model.weights),
            init("bias", vec![nc], &model.bias),
        ],
        input: vec![value_info(
            INPUT,
            DataType::Float,
            vec![Dim::DimParam("N".into()), Dim::DimValue(nf)],
        )],
        output: vec![
            value_info(
                OUTPUT_PROBABILITIES,
                DataType::Float,
                vec![Dim::DimParam("N".into()), Dim::DimValue(nc)],
            ),
            value_info(
                OUTPUT_LABEL,
                DataType::Int64,
                vec![Dim::DimParam("N".into())],
            ),
        ],
        ..Default::default()
    };
    let meta = |key: &str, value: String| pb::StringStringEntryProto {
        key: key.into(),
        value,
    };
    let proto = pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "edgeloop".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: i64::from(model_version),
        doc_string: "Multinomial logistic regression with mean imputation and standard scaling."
            .into(),
        graph: Some(graph),
        metadata_props: vec![
            meta(
                "classes",
                serde_json::to_string(&model.classes).unwrap_or_default(),
            ),
            meta(
                "features",
                serde_json::to_string(&model.feature_names).unwrap_or_default(),
            ),
        ],
        ..Default::default()
    };
    proto.encode_to_vec()
}

fn value_info(name: &str, elem: DataType, dims: Vec<Dim>) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            value: Some(d),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Reads the `classes` and `features` metadata of an edgeloop ONNX model.
///
/// # Errors
/// A message when the bytes are not an ONNX model or the metadata is absent.
pub fn read_metadata(onnx: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let proto = pb::ModelProto::decode(onnx).map_err(|e| format!("not an ONNX model: {e}"))?;
    let get = |key: &str| -> Result<Vec<String>, String> {
        let entry = proto
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .ok_or_else(|| format!("ONNX metadata `{key}` is missing"))?;
        serde_json::from_str(&entry.value).map_err(|e| format!("ONNX metadata `{key}`: {e}"))
    };
    Ok((get("classes")?, get("features")?))
}
