//! Serving: the inference engines ([`engine`]: tract, and onnxruntime with
//! the feature `ort`), the registry of serving versions ([`registry`], atomic
//! swaps), predictions over MQTT ([`predictions`]), the HTTP API ([`http`]),
//! `edgeloop predict` on a CSV file ([`predict_file`]) and the intake of
//! models brought from elsewhere ([`intake`]).

pub mod engine;
pub mod http;
pub mod intake;
pub mod predict_file;
pub mod predictions;
pub mod registry;
