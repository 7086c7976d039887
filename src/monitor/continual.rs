//! The continuous-learning loop on a stream of labelled samples, test then
//! train (prequential evaluation, Dawid 1984; Gama et al. 2013):
//!
//! 1. the champion predicts the sample; its error (0/1) feeds a concept-drift
//!    detector ([`super::detectors`]);
//! 2. the sample joins the recent window; a sample leaving the window may
//!    join a reservoir of older data (Vitter's Algorithm R, 1985), so that old
//!    regimes are not forgotten;
//! 3. a drift alarm (outside the cool-down), `retrain_every` new labels, or
//!    the first `min_samples` labels trigger a training;
//! 4. the training is the daemon's: [`crate::learn::train_dataset`] on the
//!    reservoir and the window (the stream index is each sample's timestamp,
//!    so the temporal holdout is the newest `model.holdout_fraction`), with
//!    the loop's champion: a challenger warm-started from it
//!    (`model.warm_start`), both judged on the recent holdout and the older
//!    slice ([`crate::learn::card::judge`], `model.margin_recent`,
//!    `model.margin_old`), a promoted challenger refit on all. With
//!    `model.reservoir_in_training = false` the challenger is fine-tuned on
//!    the window alone and the reservoir is the older slice it is judged on.
//!    Every decision is kept with its reason.
//!
//! What differs from the daemon ([`super::retrain`]) is where the samples
//! live: the daemon keeps every sample in its store and draws the window and
//! a seeded reservoir from it at each training
//! ([`super::retrain::training_parts`]); the loop streams, so it holds only
//! the window and keeps its reservoir by Algorithm R as samples leave the
//! window. Its triggers count samples of the stream (`min_samples`,
//! `retrain_every`, `cooldown`), not the store's labelled totals.
//!
//! The loop is synchronous and deterministic for a seed; `edgeloop evaluate
//! --prequential` replays a CSV through it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::detectors::{
    Adwin, AdwinConfig, Ddm, DdmConfig, DriftDetector, PageHinkley, PageHinkleyConfig,
};
use crate::ingest::decode::Sample;
use crate::learn::model::argmax_rows;
use crate::learn::settings::ModelConfig;
use crate::learn::{fit_model, sort_classes, Dataset, Model, Task, TrainSettings, Trigger};

/// The concept-drift detector on the error stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    Adwin,
    Ddm,
    PageHinkley,
}

/// Settings of the loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContinualConfig {
    pub detector: DetectorKind,
    pub adwin: AdwinConfig,
    pub ddm: DdmConfig,
    pub page_hinkley: PageHinkleyConfig,
    /// Recent labelled samples kept for training.
    pub window: usize,
    /// Older samples kept by reservoir sampling.
    pub reservoir: usize,
    /// Labelled samples needed before the first model.
    pub min_samples: usize,
    /// Train after this many new labels (0: never on count alone).
    pub retrain_every: u64,
    /// Train when the detector raises an alarm.
    pub retrain_on_drift: bool,
    /// Labels that must arrive after a training before an alarm may trigger
    /// another (one change, one retraining).
    pub cooldown: u64,
    /// The training, as a pipeline's `[pipelines.model]`: the family and its
    /// hyperparameters, `holdout_fraction`, `warm_start`, `margin_recent`,
    /// `margin_old`, `reservoir_in_training` (and search, balance,
    /// augmentation, evaluation). Its `window`, `reservoir`, `min_labels`,
    /// `retrain_every` and `schedule_s` are not read: the loop's own keys
    /// above govern the stream.
    pub model: ModelConfig,
    /// Seed of the reservoir sampling.
    pub seed: u64,
}

impl Default for ContinualConfig {
    fn default() -> Self {
        Self {
            detector: DetectorKind::Adwin,
            adwin: AdwinConfig::default(),
            ddm: DdmConfig::default(),
            page_hinkley: PageHinkleyConfig::default(),
            window: 1000,
            reservoir: 1000,
            min_samples: 200,
            retrain_every: 500,
            retrain_on_drift: true,
            cooldown: 100,
            model: ModelConfig::default(),
            seed: 7,
        }
    }
}

/// Why a training ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopTrigger {
    First,
    Drift,
    NewLabels,
}

/// One champion/challenger decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Index of the sample after which the training ran.
    pub index: u64,
    pub trigger: LoopTrigger,
    pub n_train: usize,
    /// The champion/challenger outcome, as in a model card.
    #[serde(flatten)]
    pub outcome: crate::learn::card::Decision,
}

impl std::ops::Deref for Decision {
    type Target = crate::learn::card::Decision;
    fn deref(&self) -> &Self::Target {
        &self.outcome
    }
}

type Row = (Vec<f32>, String);

/// The loop's state.
pub struct ContinualLoop {
    cfg: ContinualConfig,
    features: Vec<String>,
    /// The serving model and its version (the training that produced it).
    champion: Option<(u32, Model)>,
    /// Samples, stamped with their stream position (`timestamp_ms`).
    window: VecDeque<Sample>,
    reservoir: Vec<Sample>,
    evicted: u64,
    /// Samples seen, remembered ones included: the next sample's stamp.
    clock: i64,
    /// Trainings run: the last version number given.
    trainings: u32,
    rng: fastrand::Rng,
    detector: Box<dyn DriftDetector>,
    since_train: u64,
    drift_pending: bool,
    n: u64,
    /// Indices of the samples that raised a drift alarm.
    pub alarms: Vec<u64>,
    /// Every training's decision.
    pub decisions: Vec<Decision>,
}

impl ContinualLoop {
    /// A loop over samples with `features`, with no champion yet.
    pub fn new(cfg: ContinualConfig, features: Vec<String>) -> Self {
        let detector = new_detector(&cfg);
        Self {
            rng: fastrand::Rng::with_seed(cfg.seed),
            cfg,
            features,
            champion: None,
            window: VecDeque::new(),
            reservoir: Vec::new(),
            evicted: 0,
            clock: 0,
            trainings: 0,
            detector,
            since_train: 0,
            drift_pending: false,
            n: 0,
            alarms: Vec::new(),
            decisions: Vec::new(),
        }
    }

    /// Starts from an existing champion (e.g. a model trained on a first batch).
    pub fn with_champion(mut self, champion: Model) -> Self {
        self.champion = Some((0, champion));
        self
    }

    /// Adds a labelled sample to the window (and the reservoir) without
    /// predicting it or counting it towards a training: data the champion
    /// was trained on.
    pub fn remember(&mut self, x: &[f32], label: &str) {
        self.window.push_back(Sample {
            timestamp_ms: self.clock,
            device: String::new(),
            features: x.to_vec(),
            label: Some(label.to_string()),
        });
        self.clock += 1;
        if self.window.len() > self.cfg.window {
            if let Some(old) = self.window.pop_front() {
                self.keep_in_reservoir(old);
            }
        }
    }

    /// The serving model.
    pub fn champion(&self) -> Option<&Model> {
        self.champion.as_ref().map(|(_, m)| m)
    }

    /// Test then train: returns the champion's prediction for `x` (`None`
    /// before the first model), then learns from (`x`, `label`).
    pub fn observe(&mut self, x: &[f32], label: &str) -> Option<String> {
        let predicted = self.champion().map(|m| predict(m, x));
        let index = self.n;
        self.n += 1;
        self.since_train += 1;
        let alarm = predicted
            .as_ref()
            .map(|p| self.detector.update(f64::from(u8::from(p != label))))
            .unwrap_or(false);
        if alarm {
            self.alarms.push(index);
            self.drift_pending |= self.cfg.retrain_on_drift;
        }
        self.remember(x, label);
        let stored = self.window.len() + self.reservoir.len();
        let trigger = if self.champion.is_none() {
            (stored >= self.cfg.min_samples
                && self.since_train >= self.cfg.cooldown.min(self.cfg.min_samples as u64))
            .then_some(LoopTrigger::First)
        } else if self.drift_pending && self.since_train >= self.cfg.cooldown {
            // An alarm inside the cool-down waits for its end (one change,
            // one retraining), as in the daemon.
            Some(LoopTrigger::Drift)
        } else if self.cfg.retrain_every > 0 && self.since_train >= self.cfg.retrain_every {
            Some(LoopTrigger::NewLabels)
        } else {
            None
        };
        if let Some(trigger) = trigger {
            self.train(index, trigger);
        }
        predicted
    }

    /// Algorithm R over the samples leaving the window.
    fn keep_in_reservoir(&mut self, row: Sample) {
        self.evicted += 1;
        if self.reservoir.len() < self.cfg.reservoir {
            self.reservoir.push(row);
        } else if self.cfg.reservoir > 0 {
            let j = self.rng.u64(0..self.evicted) as usize;
            if j < self.cfg.reservoir {
                self.reservoir[j] = row;
            }
        }
    }

    /// One training through the daemon's path
    /// ([`crate::learn::train_dataset`]) on the reservoir and the window.
    fn train(&mut self, index: u64, trigger: LoopTrigger) {
        self.since_train = 0;
        self.drift_pending = false;
        self.trainings += 1;
        let mut older = self.reservoir.clone();
        older.sort_by_key(|s| s.timestamp_ms);
        let recent: Vec<Sample> = self.window.iter().cloned().collect();
        let n_features = self.features.len();
        let task = Task::Classification;
        let (data, old_regimes) = if self.cfg.model.reservoir_in_training {
            older.extend(recent);
            (Dataset::from_samples(&older, n_features, task), None)
        } else {
            (
                Dataset::from_samples(&recent, n_features, task),
                Some(Dataset::from_samples(&older, n_features, task)),
            )
        };
        let settings = TrainSettings {
            pipeline: "prequential",
            features: &self.features,
            model: &self.cfg.model,
            progress: None,
            peak_rss: false,
        };
        let daemon_trigger = match trigger {
            LoopTrigger::First => Trigger::MinLabels,
            LoopTrigger::Drift => Trigger::Drift,
            LoopTrigger::NewLabels => Trigger::NewLabels,
        };
        let trained = crate::learn::train_dataset(
            &settings,
            &data,
            old_regimes.as_ref(),
            self.trainings,
            daemon_trigger,
            self.champion.as_ref().map(|(v, m)| (*v, m.into())),
            &|| false,
        );
        let (n_train, outcome) = match trained {
            Ok(t) => {
                let card = t.chosen.card;
                let outcome = card
                    .decision
                    .unwrap_or_else(|| refusal("no decision".into()));
                if outcome.promoted {
                    // A new champion: its errors start a fresh detector.
                    self.detector = new_detector(&self.cfg);
                    self.champion = Some((self.trainings, t.chosen.model));
                }
                (card.n_train as usize, outcome)
            }
            Err(e) => (0, refusal(format!("training failed: {e}"))),
        };
        self.decisions.push(Decision {
            index,
            trigger,
            n_train,
            outcome,
        });
    }
}

fn refusal(reason: String) -> crate::learn::card::Decision {
    crate::learn::card::Decision {
        promoted: false,
        reason,
        champion_version: None,
        champion_recent: None,
        challenger_recent: None,
        champion_old: None,
        challenger_old: None,
    }
}

fn new_detector(cfg: &ContinualConfig) -> Box<dyn DriftDetector> {
    match cfg.detector {
        DetectorKind::Adwin => Box::new(Adwin::new(cfg.adwin)),
        DetectorKind::Ddm => Box::new(Ddm::new(cfg.ddm)),
        DetectorKind::PageHinkley => Box::new(PageHinkley::new(cfg.page_hinkley)),
    }
}

fn predict(m: &Model, x: &[f32]) -> String {
    let p = m.predict(x);
    m.classes()[argmax_rows(&p, m.classes().len())[0]].clone()
}

/// Fits `cfg.family` on `rows` (through [`crate::learn::fit_model`], the
/// daemon's trainer dispatch), warm-started from `init` when it is of the
/// same family; `None` with fewer than two classes or when training fails.
/// One fit, no holdout: a frozen reference model for tests and benchmarks
/// (the loop itself trains through [`crate::learn::train_dataset`]).
pub fn fit(
    rows: &[&Row],
    features: &[String],
    cfg: &ModelConfig,
    init: Option<&Model>,
) -> Option<Model> {
    let classes = sort_classes(rows.iter().map(|(_, l)| l.clone()));
    if classes.len() < 2 {
        return None;
    }
    let mut data = Dataset::empty(Task::Classification, classes, features.len());
    for (i, (x, l)) in rows.iter().enumerate() {
        data.x.extend_from_slice(x);
        data.y.push(data.classes.iter().position(|c| c == l)?);
        data.timestamps.push(i as i64);
    }
    let init = init.filter(|m| m.family() == cfg.family);
    fit_model(cfg.family, cfg, &data, features, init, &|| false).ok()
}
