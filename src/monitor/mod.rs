//! Monitoring and the retraining policy: data drift per feature
//! ([`data_drift`]: PSI, Kolmogorov–Smirnov), concept drift on the error
//! stream ([`detectors`]: ADWIN, DDM, Page-Hinkley), and the learner that
//! decides when to train ([`retrain`]).

pub mod continual;
pub mod data_drift;
pub mod detectors;
pub mod prequential;
pub mod retrain;
