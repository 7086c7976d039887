//! The continuous-learning loop on a stream of labelled samples, test then
//! train (prequential evaluation, Dawid 1984; Gama et al. 2013):
//!
//! 1. the champion predicts the sample; its error (0/1) feeds a concept-drift
//!    detector ([`super::detectors`]);
//! 2. the sample joins the recent window; a sample leaving the window may
//!    join a reservoir of older data (Vitter's Algorithm R, 1985), so that old
//!    regimes are not forgotten;
//! 3. a drift alarm (outside the cool-down), `retrain_every` new labels, or
//!    the first `min_samples` labels trigger a training: a challenger is fit
//!    (warm-started from the champion or from scratch) on the window and the
//!    reservoir minus a holdout made of the newest part of the window
//!    (recent) and a slice of the reservoir (old regimes);
//! 4. champion and challenger are scored on that same holdout; the challenger
//!    is promoted only if it beats the champion by `margin_recent` on the
//!    recent part and loses at most `margin_old` on the old part. Every
//!    decision is kept with its reason.
//!
//! The loop is synchronous and deterministic for a seed; `edgeloop evaluate
//! --prequential` replays a CSV through it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::detectors::{
    Adwin, AdwinConfig, Ddm, DdmConfig, DriftDetector, PageHinkley, PageHinkleyConfig,
};
use crate::config::ModelConfig;
use crate::learn::model::argmax_rows;
use crate::learn::{fit_model, sort_classes, Dataset, Model, Task};

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
    /// Start the challenger from the champion's weights.
    pub warm_start: bool,
    /// Train the challenger on the reservoir of old regimes as well as the
    /// recent window (false: fine-tune on recent data only; the old-regime
    /// holdout still guards the promotion).
    pub train_on_reservoir: bool,
    /// Fraction of the window (newest) and of the reservoir held out.
    pub holdout_fraction: f64,
    /// Accuracy the challenger must gain on the recent holdout.
    pub margin_recent: f64,
    /// Accuracy the challenger may lose on the old-regime holdout.
    pub margin_old: f64,
    /// The family trained and its hyperparameters (`family`, the family
    /// sections, `l2` and `max_iter` for logistic); the loop's own keys above
    /// govern windows, holdout and margins.
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
            warm_start: true,
            train_on_reservoir: true,
            holdout_fraction: 0.2,
            margin_recent: 0.0,
            margin_old: 0.05,
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
    champion: Option<Model>,
    window: VecDeque<Row>,
    reservoir: Vec<Row>,
    evicted: u64,
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
        self.champion = Some(champion);
        self
    }

    /// Adds a labelled sample to the window (and the reservoir) without
    /// predicting it or counting it towards a training: data the champion
    /// was trained on.
    pub fn remember(&mut self, x: &[f32], label: &str) {
        self.window.push_back((x.to_vec(), label.to_string()));
        if self.window.len() > self.cfg.window {
            if let Some(old) = self.window.pop_front() {
                self.keep_in_reservoir(old);
            }
        }
    }

    /// The serving model.
    pub fn champion(&self) -> Option<&Model> {
        self.champion.as_ref()
    }

    /// Test then train: returns the champion's prediction for `x` (`None`
    /// before the first model), then learns from (`x`, `label`).
    pub fn observe(&mut self, x: &[f32], label: &str) -> Option<String> {
        let predicted = self.champion.as_ref().map(|m| predict(m, x));
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
        self.window.push_back((x.to_vec(), label.to_string()));
        if self.window.len() > self.cfg.window {
            if let Some(old) = self.window.pop_front() {
                self.keep_in_reservoir(old);
            }
        }
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
    fn keep_in_reservoir(&mut self, row: Row) {
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

    fn train(&mut self, index: u64, trigger: LoopTrigger) {
        self.since_train = 0;
        self.drift_pending = false;
        let f = self.cfg.holdout_fraction;
        let n_recent = ((self.window.len() as f64 * f).round() as usize).min(self.window.len());
        let n_old = ((self.reservoir.len() as f64 * f).round() as usize).min(self.reservoir.len());
        let recent_holdout: Vec<&Row> = self
            .window
            .iter()
            .skip(self.window.len() - n_recent)
            .collect();
        let old_holdout: Vec<&Row> = self.reservoir.iter().take(n_old).collect();
        let old_train = if self.cfg.train_on_reservoir {
            self.reservoir.len()
        } else {
            n_old
        };
        let train: Vec<&Row> = self
            .reservoir
            .iter()
            .take(old_train)
            .skip(n_old)
            .chain(self.window.iter().take(self.window.len() - n_recent))
            .collect();
        let cfg = &self.cfg.model;
        let warm = if self.cfg.warm_start {
            self.champion.as_ref()
        } else {
            None
        };
        let challenger = match fit(&train, &self.features, cfg, warm) {
            Some(m) => m,
            None => {
                self.decisions.push(Decision {
                    index,
                    trigger,
                    n_train: train.len(),
                    outcome: crate::learn::card::Decision {
                        promoted: false,
                        reason: "training set has fewer than 2 classes".into(),
                        champion_version: None,
                        champion_recent: None,
                        challenger_recent: None,
                        champion_old: None,
                        challenger_old: None,
                    },
                });
                return;
            }
        };
        let score = |m: &Model, rows: &[&Row]| accuracy(m, rows);
        let (cr, co) = (
            score(&challenger, &recent_holdout),
            score(&challenger, &old_holdout),
        );
        let (hr, ho) = match &self.champion {
            Some(m) => (score(m, &recent_holdout), score(m, &old_holdout)),
            None => (None, None),
        };
        let (promoted, reason) = if self.champion.is_none() {
            (true, "first model".to_string())
        } else {
            crate::learn::card::judge(hr, cr, ho, co, self.cfg.margin_recent, self.cfg.margin_old)
        };
        if promoted {
            // A new champion: its errors start a fresh detector.
            self.detector = new_detector(&self.cfg);
            // Serve a refit on everything it may train on, warm-started from
            // the challenger.
            let old = if self.cfg.train_on_reservoir {
                self.reservoir.len()
            } else {
                0
            };
            let all: Vec<&Row> = self
                .reservoir
                .iter()
                .take(old)
                .chain(self.window.iter())
                .collect();
            self.champion = fit(&all, &self.features, cfg, Some(&challenger)).or(Some(challenger));
        }
        self.decisions.push(Decision {
            index,
            trigger,
            n_train: train.len(),
            outcome: crate::learn::card::Decision {
                promoted,
                reason,
                champion_version: None,
                champion_recent: hr,
                challenger_recent: cr,
                champion_old: ho,
                challenger_old: co,
            },
        });
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

fn accuracy(m: &Model, rows: &[&Row]) -> Option<f64> {
    if rows.is_empty() {
        return None;
    }
    let x: Vec<f32> = rows.iter().flat_map(|(x, _)| x.iter().copied()).collect();
    let p = m.predict(&x);
    let pred = argmax_rows(&p, m.classes().len());
    let correct = pred
        .iter()
        .zip(rows)
        .filter(|(k, (_, l))| &m.classes()[**k] == l)
        .count();
    Some(correct as f64 / rows.len() as f64)
}

/// Fits `cfg.family` on `rows` (through [`crate::learn::fit_model`], the
/// daemon's trainer dispatch), warm-started from `init` when it is of the
/// same family; `None` with fewer than two classes or when training fails.
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
