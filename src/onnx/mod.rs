//! ONNX: the graph-writing helpers every family's export uses, the logistic
//! model's export, and operators edgeloop evaluates itself in tract
//! (`tree_ensemble`: the `ai.onnx.ml` tree ensembles). (Import and head
//! fine-tuning grow here.)

pub mod builder;
pub mod export;
pub mod tree_ensemble;
pub mod trees;
