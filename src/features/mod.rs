//! Preprocessing between the store and the trainers: imputation and scaling
//! (the fitted steps of `[pipelines.preprocess]`: [`preprocess`]),
//! and, for training parts only, class balance and augmentation.
//! Windowed features over each device's readings: [`windows`]; temporal
//! features of each reading (lags, deltas, rolling statistics, the last
//! known label): [`temporal`].

pub mod augment;
pub mod balance;
pub mod dataset;
pub mod preprocess;
pub mod scaler;
pub mod temporal;
pub mod windows;
