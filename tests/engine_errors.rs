//! Errors in the model's terms (issue 19): when an engine fails on a node,
//! the message names the ONNX operator and node first, whatever the engine's
//! own words; a tensor that does not fit names the input and axis.
//!
//! The graphs are built here (prost, tract-onnx's `pb` types): a Gemm
//! `fc1` with weights `[3, 4]` (`transB = 1`: 4 features in), fed rows of
//! another width, and a Reshape `to_3x5` that no batch can fill. What is
//! asserted is the naming, not an engine's wording.

use edgeloop::serve::engine::{Data, EngineKind, LoadOptions, ModelError, Named, Session, Tensor};
use prost::Message;
use tract_onnx::pb;

fn dim(d: Option<i64>, param: &str) -> pb::tensor_shape_proto::Dimension {
    use pb::tensor_shape_proto::dimension::Value;
    pb::tensor_shape_proto::Dimension {
        value: Some(match d {
            Some(v) => Value::DimValue(v),
            None => Value::DimParam(param.into()),
        }),
        ..Default::default()
    }
}

fn value(name: &str, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .enumerate()
                        .map(|(i, d)| dim(*d, if i == 0 { "batch" } else { "features" }))
                        .collect(),
                }),
            })),
        }),
        ..Default::default()
    }
}

fn floats(name: &str, dims: &[i64], v: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: v,
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

fn model(graph: pb::GraphProto) -> Vec<u8> {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `X [batch, features?] -> Gemm fc1 (W [3, 4], transB) -> Y [batch, 3]`.
fn gemm(width: Option<i64>) -> Vec<u8> {
    let mut fc1 = node("Gemm", "fc1", &["X", "W", "B"], "Y");
    fc1.attribute.push(pb::AttributeProto {
        name: "transB".into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: 1,
        ..Default::default()
    });
    model(pb::GraphProto {
        name: "g".into(),
        node: vec![fc1],
        initializer: vec![
            floats("W", &[3, 4], (0..12).map(|i| i as f32).collect()),
            floats("B", &[3], vec![0.0; 3]),
        ],
        input: vec![value("X", &[None, width])],
        output: vec![value("Y", &[None, Some(3)])],
        ..Default::default()
    })
}

fn rows(n: usize, width: usize) -> Vec<Named> {
    let t = Tensor::new(vec![n, width], Data::F32(vec![0.5; n * width])).unwrap();
    vec![Named::new("X", t)]
}

fn names_the_node(e: &ModelError, op: &str, node: &str) -> bool {
    e.to_string()
        .contains(&format!("operator {op} (node `{node}`)"))
}

/// A model that leaves its feature axis open, given rows of the wrong
/// width: tract plans it for that width (`input_width`) and fails in the
/// Gemm; the refusal names it.
#[test]
fn a_refusal_at_load_names_the_operator_and_node() {
    let options = LoadOptions {
        input_width: Some(6),
        ort_library: None,
    };
    let e = Session::load(&gemm(None), EngineKind::Tract, &options).unwrap_err();
    assert!(
        matches!(e, ModelError::Refused(_)) && names_the_node(&e, "Gemm", "fc1"),
        "{e}"
    );
    // The same graph with its 4 features: loads and runs.
    let s = Session::load(&gemm(None), EngineKind::Tract, &LoadOptions::default()).unwrap();
    assert_eq!(s.run_rows(&rows(2, 4)).unwrap()[0].tensor.shape, [2, 3]);
}

/// The open feature axis, inferred from the Gemm's weights at load (4):
/// rows of 6 features are refused before tract runs, naming the input, the
/// axis and the width the graph fixes.
#[test]
fn an_open_axis_the_graph_fixes_is_checked_naming_the_input_and_axis() {
    let s = Session::load(&gemm(None), EngineKind::Tract, &LoadOptions::default()).unwrap();
    let e = s.run_rows(&rows(2, 6)).unwrap_err();
    assert!(
        matches!(&e, ModelError::BadInput(m)
            if m.contains("input `X` [?, 4]: axis 1 is 4 in the model's graph, given 6")),
        "{e}"
    );
    // The session still serves rows that fit.
    assert_eq!(s.run_rows(&rows(1, 4)).unwrap()[0].tensor.shape, [1, 3]);
}

/// A Gather of rows of a `[5, 3]` table by indices a call gives: index 7
/// is past the table, and tract 0.23's Gather panics on it (a slice out of
/// range). The call fails with an error naming the Gather, the process
/// goes on, and the session serves the next call.
#[test]
fn a_failure_while_running_names_the_operator_and_node() {
    let mut index = value("I", &[None]);
    if let Some(pb::type_proto::Value::TensorType(t)) =
        index.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = 7;
    }
    let g = model(pb::GraphProto {
        name: "g".into(),
        node: vec![node("Gather", "pick_row", &["table", "I"], "Y")],
        initializer: vec![floats(
            "table",
            &[5, 3],
            (0..15).map(|i| i as f32).collect(),
        )],
        input: vec![index],
        output: vec![value("Y", &[None, Some(3)])],
        ..Default::default()
    });
    let s = Session::load(&g, EngineKind::Tract, &LoadOptions::default()).unwrap();
    let at = |i: Vec<i64>| {
        let n = i.len();
        vec![Named::new("I", Tensor::new(vec![n], Data::I64(i)).unwrap())]
    };
    let ok = s.run_rows(&at(vec![4, 1])).unwrap();
    assert_eq!(
        ok[0].tensor.data,
        Data::F32(vec![12.0, 13.0, 14.0, 3.0, 4.0, 5.0])
    );
    let e = s.run_rows(&at(vec![1, 7])).unwrap_err();
    assert!(
        matches!(e, ModelError::Run(_)) && names_the_node(&e, "Gather", "pick_row"),
        "{e}"
    );
    assert_eq!(s.run_rows(&at(vec![4, 1])).unwrap(), ok);
}

/// A declared width: rows of another width are refused before any engine
/// runs, naming the input, its dims and the axis.
#[test]
fn a_row_of_the_wrong_width_names_the_input_and_axis() {
    let s = Session::load(&gemm(Some(4)), EngineKind::Tract, &LoadOptions::default()).unwrap();
    let e = s.run_rows(&rows(2, 6)).unwrap_err().to_string();
    assert!(e.contains("input `X` [?, 4]: axis 1 is 4, given 6"), "{e}");
}

/// A Reshape to `[3, 5]` of `[batch, 4]`: 15 values, which no batch of
/// rows of 4 holds; wherever tract fails (planning or running), the error
/// names the Reshape.
#[test]
fn a_reshape_no_batch_fills_is_named() {
    let g = model(pb::GraphProto {
        name: "g".into(),
        node: vec![node("Reshape", "to_3x5", &["X", "shape"], "Y")],
        initializer: vec![pb::TensorProto {
            name: "shape".into(),
            dims: vec![2],
            data_type: 7,
            int64_data: vec![3, 5],
            ..Default::default()
        }],
        input: vec![value("X", &[None, Some(4)])],
        output: vec![value("Y", &[Some(3), Some(5)])],
        ..Default::default()
    });
    let e = match Session::load(&g, EngineKind::Tract, &LoadOptions::default()) {
        Err(e) => e,
        Ok(s) => s.run_rows(&rows(2, 4)).unwrap_err(),
    };
    assert!(names_the_node(&e, "Reshape", "to_3x5"), "{e}");
}

#[cfg(feature = "ort")]
mod ort {
    use super::*;

    fn options() -> LoadOptions {
        let path = std::env::var("ORT_DYLIB_PATH").expect(
            "the ort tests need ORT_DYLIB_PATH naming libonnxruntime: \
             eval \"$(tests/run.sh --setup)\"",
        );
        LoadOptions {
            input_width: None,
            ort_library: Some(path.into()),
        }
    }

    /// onnxruntime's failure in the Gemm, under the same naming.
    #[test]
    fn a_failure_while_running_names_the_operator_and_node_on_ort() {
        let s = Session::load(&gemm(None), EngineKind::Ort, &options()).unwrap();
        let e = s.run_rows(&rows(2, 6)).unwrap_err();
        assert!(
            matches!(e, ModelError::Run(_)) && names_the_node(&e, "Gemm", "fc1"),
            "{e}"
        );
    }
}
