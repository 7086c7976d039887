//! ONNX: export of trained models. (Import and head fine-tuning grow here.)

pub mod export;
