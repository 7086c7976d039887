//! Export of the logistic model to ONNX (opset 13, standard operators only),
//! so that any ONNX runtime (tract here, onnxruntime elsewhere) serves it;
//! and reading back the metadata every edgeloop model carries
//! ([`super::builder`] has the contract).
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

use prost::Message;
use tract_onnx::pb;

pub use super::builder::{INPUT, OUTPUT_LABEL, OUTPUT_PREDICTION, OUTPUT_PROBABILITIES};
use crate::ingest::decode::Task;

/// The metadata of an edgeloop ONNX model.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// Class names (empty for a regressor).
    pub classes: Vec<String>,
    pub features: Vec<String>,
    /// `classification` when the property is absent (models of edgeloop
    /// 0.1 had no `task`).
    pub task: Task,
    /// Family name, `None` when absent.
    pub family: Option<String>,
}

/// Reads the metadata properties of an edgeloop ONNX model.
///
/// # Errors
/// A message when the bytes are not an ONNX model or `classes` or `features`
/// is absent or not a JSON list of strings.
pub fn read_metadata(onnx: &[u8]) -> Result<Metadata, String> {
    let proto = pb::ModelProto::decode(onnx).map_err(|e| format!("not an ONNX model: {e}"))?;
    let prop = |key: &str| proto.metadata_props.iter().find(|p| p.key == key);
    let list = |key: &str| -> Result<Vec<String>, String> {
        let entry = prop(key).ok_or_else(|| format!("ONNX metadata `{key}` is missing"))?;
        serde_json::from_str(&entry.value).map_err(|e| format!("ONNX metadata `{key}`: {e}"))
    };
    let task = match prop("task").map(|p| p.value.as_str()) {
        None | Some("classification") => Task::Classification,
        Some("regression") => Task::Regression,
        Some(other) => return Err(format!("ONNX metadata `task`: unknown task `{other}`")),
    };
    Ok(Metadata {
        classes: list("classes")?,
        features: list("features")?,
        task,
        family: prop("family").map(|p| p.value.clone()),
    })
}
