//! ONNX: the graph-writing helpers every family's export uses (each family
//! exports itself: `learn::families`), the metadata of edgeloop's models,
//! and operators edgeloop evaluates itself in tract
//! (`tree_ensemble`: the `ai.onnx.ml` tree ensembles; `ml`: the other
//! `ai.onnx.ml` operators tract lacks, for models made elsewhere). (Import and
//! head fine-tuning grow here.)

pub mod builder;
pub mod engine;
pub mod export;
pub mod ml;
pub mod tree_ensemble;
