//! The inference engine: ONNX models run by tract (pure Rust; cross-compiles
//! to every board).
//!
//! A loaded model is immutable and shared: `into_optimized()` and
//! `into_runnable()` run once at load, each call to [`OnnxModel::predict_proba`]
//! spawns its own state.

use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::learn::model::Task;
use crate::onnx::export;

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bytes are not a model this engine can run.
    #[error("model refused: {0}")]
    Refused(String),
    /// The input does not fit the model.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The engine failed while running.
    #[error("inference failed: {0}")]
    Run(String),
}

/// A loaded, verified ONNX model (classifier or regressor).
#[derive(Debug, Clone)]
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    classes: Vec<String>,
    features: Vec<String>,
    task: Task,
}

/// The ONNX parser the engine uses: tract-onnx's, with edgeloop's operators
/// registered (see [`crate::onnx`]): the `ai.onnx.ml` tree ensembles
/// ([`crate::onnx::tree_ensemble`]) replace tract-onnx's.
pub fn onnx_parser() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::onnx::tree_ensemble::register(&mut onnx.op_register);
    crate::onnx::ml::register(&mut onnx.op_register);
    onnx
}

impl OnnxModel {
    /// Loads ONNX bytes with tract, optimises them and checks that a
    /// one-row input yields `[1, n_classes]` probabilities.
    ///
    /// # Errors
    /// [`ModelError::Refused`] naming what tract or the check rejected.
    pub fn load(onnx: &[u8]) -> Result<Self, ModelError> {
        let meta = export::read_metadata(onnx).map_err(ModelError::Refused)?;
        let plan = onnx_parser()
            .model_for_read(&mut std::io::Cursor::new(onnx))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(|e| ModelError::Refused(format!("{e:#}")))?;
        let model = Self {
            plan,
            classes: meta.classes,
            features: meta.features,
            task: meta.task,
        };
        let probe = model
            .predict_proba(&vec![0.0; model.features.len()])
            .map_err(|e| ModelError::Refused(format!("verification run failed: {e}")))?;
        let expected = match model.task {
            Task::Classification => model.classes.len(),
            Task::Regression => 1,
        };
        if probe.len() != expected {
            return Err(ModelError::Refused(format!(
                "verification run gave {} outputs per row, expected {expected} ({:?})",
                probe.len(),
                model.task
            )));
        }
        Ok(model)
    }

    /// What the model predicts.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Class names, in output column order (empty for a regressor).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Feature names, in input order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// The first output for `x`: a classifier's probabilities
    /// `[n_rows, n_classes]` row-major, a regressor's predictions `[n_rows]`; for `x`
    /// (`[n_rows, n_features]` row-major `f32`, `NaN` = missing).
    ///
    /// # Errors
    /// [`ModelError::BadInput`] when `x` is not a whole number of rows;
    /// [`ModelError::Run`] when tract fails.
    pub fn predict_proba(&self, x: &[f32]) -> Result<Vec<f32>, ModelError> {
        let nf = self.features.len();
        if x.is_empty() || x.len() % nf != 0 {
            return Err(ModelError::BadInput(format!(
                "{} values is not a whole number of rows of {nf} features",
                x.len()
            )));
        }
        let input = Tensor::from_shape(&[x.len() / nf, nf], x)
            .map_err(|e| ModelError::BadInput(e.to_string()))?;
        let out = self
            .plan
            .run(tvec!(input.into_tvalue()))
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        let proba = out
            .first()
            .ok_or_else(|| ModelError::Run("model has no output".into()))?
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::Run(e.to_string()))?
            .iter()
            .copied()
            .collect();
        Ok(proba)
    }
}
