//! Preprocessing between the store and the trainers: imputation and scaling.
//! (Windows, augmentation and balancing grow here.)

pub mod scaler;
