//! Monitoring and the retraining policy. (Drift detectors grow here.)

pub mod retrain;
