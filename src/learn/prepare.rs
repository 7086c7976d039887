//! The training part's preparation: class balance, then augmentation
//! ([`crate::features::balance`], [`crate::features::augment`]), then the fit.
//!
//! [`fit_training`] stands where [`super::fit_model`] fits a *training*
//! part: the evaluated fit and the refit of [`super::train_dataset`], and
//! each training fold of [`super::cross_validate`]. Those parts are cut
//! before it runs, so a holdout, the older slice and a validation fold never
//! hold an added row. The MLP's early-stopping rows are split off here
//! first (seeded by `mlp.seed`, `⌈validation_fraction · n⌉` rows, as the MLP
//! itself would) and passed to the MLP unprepared.
//!
//! With neither augmentation nor balance configured it is exactly
//! [`super::fit_model`] (bitwise-equal models). `[pipelines.preprocess]`'s
//! fitted steps ([`super::preprocess`]) come before both, fitted on the
//! part as given.

use std::collections::BTreeMap;

use super::card::Augmentation;
use super::mlp::MlpModel;
use super::{fit_model, logistic_config, Dataset, Family, Model, Task, TrainError};
use crate::features::augment::augment;
use crate::features::balance::{self, BalanceStrategy};
use crate::learn::settings::ModelConfig;

/// A prepared training part.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The rows the trainer fits on: the original rows first, then the
    /// oversampled ones, then the augmented ones.
    pub data: Dataset,
    /// Per-row weights of the loss (`class_weight` with a family that has a
    /// weighted loss: `logistic`), `[n]`.
    pub sample_weight: Option<Vec<f64>>,
    /// What was done, for the card.
    pub report: Augmentation,
}

/// Whether `cfg` asks for any preparation.
pub fn is_configured(cfg: &ModelConfig) -> bool {
    cfg.augment.enabled() || cfg.balance.strategy != BalanceStrategy::None
}

/// Balances, then augments `data` (a training part, time-ordered) for
/// `family`; `salt` separates the draws of different parts of one training.
///
/// # Errors
/// [`TrainError::Settings`] when an augmentation window names a feature not
/// in `features`.
pub fn prepare_training(
    data: &Dataset,
    cfg: &ModelConfig,
    family: Family,
    features: &[String],
    salt: u64,
) -> Result<Prepared, TrainError> {
    let strategy = match data.task {
        Task::Classification => cfg.balance.strategy,
        Task::Regression => BalanceStrategy::None,
    };
    let weighted_loss = family == Family::Logistic;
    let balanced = match strategy {
        BalanceStrategy::None => data.clone(),
        BalanceStrategy::Oversample => {
            balance::oversample(data, cfg.balance.ratio, cfg.balance.seed ^ salt)
        }
        BalanceStrategy::ClassWeight if weighted_loss => data.clone(),
        BalanceStrategy::ClassWeight => balance::oversample_by_weight(data),
    };
    let windows = cfg
        .augment
        .window_indices(features)
        .map_err(TrainError::Settings)?;
    let augmented = augment(&balanced, &cfg.augment, &windows, salt);
    let sample_weight = (strategy == BalanceStrategy::ClassWeight && weighted_loss).then(|| {
        let w = balance::balanced_class_weight(&augmented.y, augmented.classes.len());
        augmented.y.iter().map(|&c| w[c]).collect::<Vec<f64>>()
    });
    let class_weight: BTreeMap<String, f64> = match sample_weight {
        Some(_) => {
            let w = balance::balanced_class_weight(&augmented.y, augmented.classes.len());
            augmented
                .classes
                .iter()
                .zip(w)
                .filter(|(_, w)| *w > 0.0)
                .map(|(c, w)| (c.clone(), w))
                .collect()
        }
        None => BTreeMap::new(),
    };
    let report = Augmentation {
        transforms: cfg.augment.transforms(),
        copies: if cfg.augment.enabled() {
            cfg.augment.copies
        } else {
            0
        },
        seed: cfg.augment.seed,
        rows_added: (augmented.len() - balanced.len()) as u64,
        balance: strategy.name().into(),
        rows_oversampled: (balanced.len() - data.len()) as u64,
        class_weight,
    };
    Ok(Prepared {
        data: augmented,
        sample_weight,
        report,
    })
}

/// What [`fit_training`] fit on, for the card.
#[derive(Debug, Clone, PartialEq)]
pub struct Preparation {
    pub report: Augmentation,
    /// Samples per class of the training part as given.
    pub before: BTreeMap<String, u64>,
    /// Samples per class of the rows given to the trainer (the MLP's
    /// early-stopping rows included, unprepared).
    pub after: BTreeMap<String, u64>,
}

/// Prepares the training part `data` ([`prepare_training`]) and fits
/// `family` on it; see the module documentation. Returns the model and,
/// when a preparation is configured, what it did.
///
/// # Errors
/// As [`super::fit_model`] and [`prepare_training`].
pub fn fit_training(
    family: Family,
    cfg: &ModelConfig,
    data: &Dataset,
    features: &[String],
    init: Option<&Model>,
    salt: u64,
    cancelled: &dyn Fn() -> bool,
) -> Result<(Model, Option<Preparation>), TrainError> {
    if !is_configured(cfg) {
        // `fit_model` fits `[pipelines.preprocess]`'s steps itself.
        return Ok((
            fit_model(family, cfg, data, features, init, cancelled)?,
            None,
        ));
    }
    // `[pipelines.preprocess]`'s steps first, fitted on the part as given;
    // balance and augmentation then work on their output.
    if let Some((steps, (model, preparation))) =
        super::preprocess::fit_behind(cfg, data, features, init, |c, d, f, i| {
            fit_training(family, c, d, f, i, salt, cancelled)
        })?
    {
        let model = Model::Preprocessed(Box::new(super::preprocess::PreprocessedModel {
            steps,
            model,
        }));
        return Ok((model, preparation));
    }
    let before = data.class_composition();
    if family == Family::Mlp && cfg.mlp.early_stopping {
        let (fit_part, validation) =
            mlp_validation_split(data, cfg.mlp.validation_fraction, cfg.mlp.seed);
        let prepared = prepare_training(&fit_part, cfg, family, features, salt)?;
        let n_fit = prepared.data.len();
        let mut rows = prepared.data;
        rows.x.extend_from_slice(&validation.x);
        rows.y.extend_from_slice(&validation.y);
        rows.values.extend_from_slice(&validation.values);
        rows.timestamps.extend_from_slice(&validation.timestamps);
        let init = match init {
            Some(Model::Mlp(m)) => Some(m),
            _ => None,
        };
        let range = (!validation.is_empty()).then_some(n_fit..rows.len());
        let model = MlpModel::fit_with_validation(
            &rows.x,
            &rows.target(),
            features,
            &cfg.mlp,
            init,
            range,
            cancelled,
        )?;
        let after = rows.class_composition();
        let preparation = Preparation {
            report: prepared.report,
            before,
            after,
        };
        return Ok((Model::Mlp(model), Some(preparation)));
    }
    let prepared = prepare_training(data, cfg, family, features, salt)?;
    let model = match (&prepared.sample_weight, family) {
        (Some(weights), Family::Logistic) => {
            let init = match init {
                Some(Model::Logistic(m)) => Some(m),
                _ => None,
            };
            let d = &prepared.data;
            Model::Logistic(super::logistic::LogisticModel::fit_weighted(
                &d.x,
                &d.y,
                d.classes.clone(),
                features.to_vec(),
                &logistic_config(cfg),
                init,
                Some(weights),
                cancelled,
            )?)
        }
        _ => fit_model(family, cfg, &prepared.data, features, init, cancelled)?,
    };
    let after = prepared.data.class_composition();
    Ok((
        model,
        Some(Preparation {
            report: prepared.report,
            before,
            after,
        }),
    ))
}

/// Splits off the MLP's early-stopping rows: `⌈fraction · n⌉` rows drawn
/// with `seed` when that is at least 2 and fewer than `n` (else none), as
/// [`MlpModel::fit`] does. Both parts keep time order.
fn mlp_validation_split(data: &Dataset, fraction: f64, seed: u64) -> (Dataset, Dataset) {
    let n = data.len();
    let n_val = (fraction * n as f64).ceil() as usize;
    if n_val < 2 || n_val >= n {
        return (data.clone(), data.select(&[]));
    }
    let mut order: Vec<usize> = (0..n).collect();
    fastrand::Rng::with_seed(seed).shuffle(&mut order);
    let mut validation = order.split_off(n - n_val);
    order.sort_unstable();
    validation.sort_unstable();
    (data.select(&order), data.select(&validation))
}
