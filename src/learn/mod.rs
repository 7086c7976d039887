//! Learning: datasets from stored samples, the temporal holdout, trainers and
//! their evaluation, and the model card each trained version carries.
//!
//! [`train_version`] is the one entry point the loop uses: labelled samples in,
//! a trained model, its ONNX bytes and its card out. It is CPU work: call it
//! from a blocking thread, never from an async worker.
//!
//! The module is laid out in rooms:
//!
//! * [`families`]: one file per model family ([`logistic`], [`linear`] (and
//!   ridge), [`mlp`], [`tree`], [`forest`], [`svm`]), each its config, fit,
//!   predict, ONNX export and card hyperparameters;
//! * [`eval`]: how models are judged: [`metrics`], the k-fold splitters
//!   ([`split`]), the selection metric and scoring ([`select`]) and the model
//!   card with the champion/challenger rule ([`card`]);
//! * here, what ties them together: [`Dataset`]; the shared vocabulary of
//!   every room ([`model`]: [`Task`], [`Family`], the [`Model`] enum over the
//!   families, [`TrainError`]); the training path (`train.rs`:
//!   [`train_version`], [`train_dataset`], [`fit_model`],
//!   [`cross_validate`]); the training part's preparation ([`prepare`]);
//!   hyperparameter search ([`tune`]); ensembles of trained families
//!   ([`ensemble`]); head fine-tuning of imported networks ([`head`]);
//!   `edgeloop train` on a CSV file ([`offline`]); and the L-BFGS optimiser
//!   ([`lbfgs`]) of both the logistic family and head fine-tuning;
//! * [`online`]: learners of one labelled sample at a time, following River
//!   (`online_logistic`, `hoeffding_tree`, `hoeffding_adaptive_tree`, `arf`), for
//!   the prequential
//!   replay; the concept-drift detectors they and `monitor` use ([`drift`]:
//!   ADWIN, DDM, Page-Hinkley).
//!
//! The families' and evaluation modules are re-exported here, so
//! `learn::logistic`, `learn::metrics` and the like name them as before.

pub mod anomaly;
pub mod clean;
pub mod drift;
pub mod ensemble;
pub mod eval;
pub mod families;
pub mod head;
pub mod lbfgs;
pub mod model;
pub mod offline;
pub mod online;
pub mod prepare;
pub mod preprocess;
pub mod py_random;
pub mod settings;
mod train;
pub mod tune;

pub use eval::{card, metrics, select, split};
pub use families::{forest, linear, logistic, mlp, svm, tree};
pub use model::{Family, Model, Target, Task, TrainError};
pub use settings::{ModelConfig, PipelineSettings};
pub(crate) use train::logistic_config;
pub use train::{
    candidate_families, cross_validate, fit_model, hyperparameters, judge_version,
    return_freed_memory, train_dataset, train_version, Champion, TrainSettings, TrainedVersion,
    Training, Trigger,
};

pub use crate::features::dataset::{sort_classes, Dataset};
pub use crate::stats::now_ms;
