//! Preprocessing between the store and the trainers: imputation and scaling,
//! and, for training parts only, class balance and augmentation.
//! (Windows grow here.)

pub mod augment;
pub mod balance;
pub mod scaler;
