//! Preprocessing between the store and the trainers: imputation and scaling,
//! and, for training parts only, class balance and augmentation.
//! Windowed features over each device's readings: [`windows`].

pub mod augment;
pub mod balance;
pub mod dataset;
pub mod scaler;
pub mod windows;
