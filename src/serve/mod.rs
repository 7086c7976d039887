//! Serving: the inference engines ([`engine`]: tract, and onnxruntime with
//! the feature `ort`), the registry of serving versions ([`registry`], atomic
//! swaps), predictions over MQTT ([`predictions`]),
//! `edgeloop predict` on a CSV file ([`predict_file`]) and the intake of
//! models brought from elsewhere ([`intake`]), and models shared between
//! daemons over the broker ([`fleet`]).

/// The inference engines live with ONNX ([`crate::onnx::engine`]), below
/// `learn`, which scores champions through them.
pub use crate::onnx::engine;
pub mod fleet;
pub mod intake;
pub mod predict_file;
pub mod predictions;
pub mod registry;
