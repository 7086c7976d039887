//! The model families, one file each: [`logistic`], [`linear`] (ordinary
//! least squares and ridge), [`mlp`], [`tree`], [`forest`] (CART trees of
//! [`tree`] on bootstrap samples) and [`svm`].
//!
//! A family file holds everything about its family and nothing about the
//! others (the forest excepted, built from [`tree`]'s grower), in the shape
//! [`crate::learn::model`] describes:
//!
//! * `XConfig`: its hyperparameters (`[pipelines.model.x]`), `serde` with
//!   defaults, `validate()` naming the bad key;
//! * `XModel::fit(x, &Target, feature_names, &cfg, init, cancelled)`, with a
//!   warm start from `init` where the family has one;
//! * `XModel::predict(x)`, `task()`, `classes()`, `feature_names()`;
//! * `XModel::to_onnx(version)`: the export hook, following
//!   [`crate::onnx::builder`]'s contract (the trees and forests through
//!   [`tree_onnx`]; the logistic family in its own file,
//!   [`logistic::logistic_to_onnx`]);
//! * `XModel::hyperparameters()`: what its model card records.
//!
//! What ties a family into training lives outside this room: its variant of
//! [`crate::learn::Model`] and [`crate::learn::Family`]
//! ([`crate::learn::model`]), its arm of [`crate::learn::fit_model`], and its
//! search space in [`crate::learn::tune`]. The logistic family's optimiser,
//! [`crate::learn::lbfgs`], stays beside the rooms: head fine-tuning
//! ([`crate::learn::head`]) uses it too.

pub mod forest;
pub mod linear;
pub mod logistic;
pub mod mlp;
pub mod svm;
pub mod tree;
pub mod tree_onnx;
