//! Evaluation: how a trained model is judged and recorded.
//!
//! * [`metrics`]: classification, probabilistic and regression metrics on a
//!   holdout or a fold;
//! * [`split`]: the k-fold splitters (plain and stratified) and the summary
//!   of a score over the folds;
//! * [`select`]: the metric a pipeline compares models by, the evaluation
//!   (temporal holdout or k-fold) and the scoring of a model on a dataset;
//! * [`card`]: the model card each version carries, and the
//!   champion/challenger rule ([`card::judge`]).

pub mod card;
pub mod metrics;
pub mod select;
pub mod split;
