//! ONNX: the graph-writing helpers every family's export uses, and the
//! logistic model's export. (Import and head fine-tuning grow here.)

pub mod builder;
pub mod export;
pub mod trees;
