//! Online learning in the daemon (issue 17): `[pipelines.online]`.
//!
//! With `family` set, the learner ([`super::retrain::Learner`]) keeps one
//! online model per pipeline ([`crate::learn::online`]) that learns every
//! labelled sample as it is committed, late labels included (in the order
//! the learner sees them: new samples by sequence number, late labels when
//! the writer reports them), test then train:
//!
//! 1. the online model predicts the sample (in process: what its ONNX
//!    snapshot answers, naive-Bayes leaves included, within 1e-5), and so does the
//!    batch champion (the newest batch version that passed
//!    champion/challenger, through its ONNX engine), before either learns it;
//! 2. both records feed [`ServeChoice`] (first: the batch champion, second:
//!    the online learner): the one right more often over the last
//!    [`ServeChoice::WINDOW`] = 200 samples both predicted serves, and the
//!    other takes over only when it leads by more than
//!    [`ServeChoice::MARGIN`] = 2 points (hysteresis). Each switch is a
//!    `serve_switch` event on the pipeline's timeline with both accuracies
//!    as its reason; while no batch version exists the online learner serves;
//! 3. the online model learns the sample. A class is learned the first time
//!    it appears (no list of classes, no waiting for `min_labels`).
//!
//! **Regression pipelines** (`task = "regression"`): `hoeffding_tree` and
//! `arf` learn River's `StandardScaler() | HoeffdingTreeRegressor()` /
//! `ARFRegressor(seed)` ([`OnlineRegression`]); the records are absolute
//! errors `|y − ŷ|` and the serving choice ([`MaeChoice`]) compares mean
//! absolute errors over the same last [`ServeChoice::WINDOW`] samples: the
//! other learner takes over when its MAE is lower than the serving one's
//! by more than [`ServeChoice::MARGIN`] of it (2 %, as a regressor's
//! probation). The online learner predicts from its first learned sample
//! (before it, nothing is recorded). Snapshots are
//! [`crate::learn::online::export::regressor_to_onnx`] graphs, their cards'
//! records mean absolute errors (`mae`), never `constant`.
//!
//! While the online learner serves, it is served **as ONNX**: a snapshot
//! ([`crate::learn::online::export`]) is exported and promoted through the
//! [`Registry`] like any version (verified by the engine, stored with the
//! serving pointer in one commit, swapped in) at its first label, whenever a
//! new class appears, every `snapshot_every_labels` labels and every
//! `snapshot_every_s` seconds with new labels, and when it takes over. Its
//! card's `hyperparameters.online` ([`SnapshotCard`]) holds its prequential
//! record over the last window and since the start; with one class learned
//! the snapshot answers that class and is flagged `constant` (in MQTT
//! prediction messages and HTTP predict answers). While the batch champion
//! serves, no snapshot is stored; a new batch version trained while the
//! online learner serves is stored as `standby` (its champion, not served).
//!
//! **Restart**: the online model is relearned from the store at start (every
//! stored labelled sample, in sequence order, test then train, so its record
//! is recounted; read 10,000 stored samples at a time, not all at once), under the same seed; which learner serves, the batch
//! champion's version and the class order are kept in the store's `state`
//! table (`online/{pipeline}`). The snapshot that served before the restart
//! serves again ([`Registry::restore`]) until the next snapshot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::prequential::ServeChoice;
use crate::ingest::decode::Sample;
use crate::ingest::decode::Task;
use crate::learn::card::ModelCard;
use crate::learn::online::export::{Prequential, SnapshotCard};
use crate::learn::online::{
    OnlineClassifier, OnlineFamily, OnlineModel, OnlineRegression, OnlineRegressor,
};
use crate::serve::registry::{Registry, RegistryError, Serving, BY_LEARNER};
use crate::store::{Store, StoreError};

/// `[pipelines.online]`: the online learner of a pipeline (for a regression
/// pipeline: `hoeffding_tree` or `arf`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OnlineConfig {
    /// `online_logistic`, `hoeffding_tree`, `hoeffding_adaptive_tree`,
    /// `arf`, or `off` (the default, so that a pipeline's first version is
    /// still its first batch model unless asked). Measured prequential
    /// accuracy (test then train): UCI Occupancy `datatraining.txt`
    /// (`edgeloop evaluate --prequential --family F`) arf 0.989,
    /// hoeffding_tree 0.986, hoeffding_adaptive_tree 0.982, online_logistic
    /// 0.979; River's generators and gas (`tests/fixtures/online/online.json`,
    /// River's learners, which ours equal) SEA arf 0.882 / logistic 0.884,
    /// Agrawal arf 0.896 / HAT 0.820, RandomRBFDrift arf 0.724 / logistic
    /// 0.571, gas batches 1+4 logistic 0.937 / arf 0.818: `arf` is the
    /// family to turn on, `online_logistic` for many-feature streams like gas.
    pub family: String,
    /// Labels learned between two snapshots while it serves.
    pub snapshot_every_labels: u64,
    /// Seconds between two snapshots while it serves and learns (0: only
    /// by labels).
    pub snapshot_every_s: u64,
    /// Seed of the randomised families (`hoeffding_adaptive_tree`, `arf`).
    pub seed: u64,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            family: "off".into(),
            snapshot_every_labels: 100,
            snapshot_every_s: 60,
            seed: 42,
        }
    }
}

impl OnlineConfig {
    /// The families of a comma-separated `family` (`evaluate --prequential`
    /// runs each beside the loop), empty when `off`.
    ///
    /// # Errors
    /// A message naming the allowed values.
    pub fn families(&self) -> Result<Vec<OnlineFamily>, String> {
        if self.family.trim() == "off" {
            return Ok(Vec::new());
        }
        self.family
            .split(',')
            .map(|f| f.trim().parse().map_err(|e: String| format!("{e}, or off")))
            .collect()
    }

    /// The family, `None` when `off`.
    ///
    /// # Errors
    /// A message naming the allowed values.
    pub fn family(&self) -> Result<Option<OnlineFamily>, String> {
        match self.family.as_str() {
            "off" => Ok(None),
            other => other
                .parse()
                .map(Some)
                .map_err(|e: String| format!("{e}, or off")),
        }
    }
}

/// What survives a restart beside the stored samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    batch_version: Option<u32>,
    online_serves: bool,
    classes: Vec<String>,
}

fn state_key(pipeline: &str) -> String {
    format!("online/{pipeline}")
}

/// Recent errors (0/1 for a classifier, `|y − ŷ|` for a regressor) and
/// totals.
#[derive(Debug, Clone, Default)]
struct Record {
    recent: VecDeque<f64>,
    scored: u64,
    errors: f64,
}

impl Record {
    fn push(&mut self, error: f64) {
        if self.recent.len() == ServeChoice::WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(error);
        self.scored += 1;
        self.errors += error;
    }

    /// The record of `n` samples with `errors` in all: accuracy for a
    /// classifier, MAE for a regressor.
    fn of(n: u64, errors: f64, regression: bool) -> Prequential {
        let mean = (n > 0).then(|| errors / n as f64);
        if regression {
            Prequential {
                scored: n,
                accuracy: None,
                mae: mean,
            }
        } else {
            Prequential {
                scored: n,
                accuracy: mean.map(|e| 1.0 - e),
                mae: None,
            }
        }
    }

    fn recent(&self, regression: bool) -> Prequential {
        // Summed afresh (at most WINDOW values): no drift from subtracting.
        Self::of(
            self.recent.len() as u64,
            self.recent.iter().sum(),
            regression,
        )
    }

    fn since_start(&self, regression: bool) -> Prequential {
        Self::of(self.scored, self.errors, regression)
    }
}

/// The serving choice of a regression pipeline: the batch champion's and
/// the online learner's absolute errors on the last [`ServeChoice::WINDOW`]
/// samples both predicted; the one not serving takes over when its mean
/// absolute error is lower than the serving one's by more than
/// [`ServeChoice::MARGIN`] of it (hysteresis; the same rule as a
/// regressor's probation).
#[derive(Debug, Clone)]
pub struct MaeChoice {
    recent: VecDeque<(f64, f64)>,
    second: bool,
}

impl MaeChoice {
    /// The batch champion (first) or the online learner (second) serving.
    pub fn starting_with(second: bool) -> Self {
        Self {
            recent: VecDeque::with_capacity(ServeChoice::WINDOW),
            second,
        }
    }

    /// Whether the second serves.
    pub fn second_serves(&self) -> bool {
        self.second
    }

    /// Samples in the recent record.
    pub fn recent_len(&self) -> usize {
        self.recent.len()
    }

    /// Records both absolute errors of one sample; true when the server
    /// changed.
    pub fn record(&mut self, first: f64, second: f64) -> bool {
        if self.recent.len() == ServeChoice::WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((first, second));
        let (a, b) = self
            .recent
            .iter()
            .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
        let (serving, other) = if self.second { (b, a) } else { (a, b) };
        // On the sums (the same count): 1e-9 of slack for their rounding.
        let switch = other < serving * (1.0 - ServeChoice::MARGIN) - 1e-9;
        if switch {
            self.second = !self.second;
        }
        switch
    }
}

/// Which serves: by accuracy (classification) or by MAE (regression).
#[derive(Debug, Clone)]
enum Choice {
    Accuracy(ServeChoice),
    Mae(MaeChoice),
}

impl Choice {
    fn starting_with(regression: bool, second: bool) -> Self {
        if regression {
            Self::Mae(MaeChoice::starting_with(second))
        } else {
            Self::Accuracy(ServeChoice::starting_with(second))
        }
    }

    fn second_serves(&self) -> bool {
        match self {
            Self::Accuracy(c) => c.second_serves(),
            Self::Mae(c) => c.second_serves(),
        }
    }

    fn recent_len(&self) -> usize {
        match self {
            Self::Accuracy(c) => c.recent_len(),
            Self::Mae(c) => c.recent_len(),
        }
    }

    /// Both errors of one sample (0/1 for a classifier).
    fn record(&mut self, first: f64, second: f64) -> bool {
        match self {
            Self::Accuracy(c) => c.record(first == 0.0, second == 0.0),
            Self::Mae(c) => c.record(first, second),
        }
    }
}

/// The online model: a classifier, or a regressor (a regression pipeline).
pub enum Learned {
    Classifier(OnlineModel),
    Regressor(OnlineRegression),
}

impl Learned {
    /// A new model of `family` for `task` over `n_features` features;
    /// `None` for a regression task and a family without a regressor
    /// (`online_logistic`, `hoeffding_adaptive_tree`).
    pub fn new(family: OnlineFamily, task: Task, n_features: usize, seed: u64) -> Option<Self> {
        match task {
            Task::Classification => {
                Some(Self::Classifier(family.new_model(n_features, None, seed)))
            }
            Task::Regression => {
                OnlineRegression::new(family, n_features, seed).map(Self::Regressor)
            }
        }
    }
}

/// One pipeline's online learner, its record and the serving choice.
pub struct OnlineLearner {
    pipeline: String,
    family: OnlineFamily,
    cfg: OnlineConfig,
    features: Vec<String>,
    model: Learned,
    /// Class names by index, in order of first appearance (empty for a
    /// regressor).
    classes: Vec<String>,
    choice: Choice,
    online: Record,
    batch_record: Record,
    learned: u64,
    since_snapshot: u64,
    last_snapshot: Option<Instant>,
    /// Why a snapshot is due now (first label, new class), if it is.
    due: Option<String>,
    batch_version: Option<u32>,
    batch: Option<Arc<Serving>>,
}

/// What one step changed: for the log and the learner.
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// Samples learned.
    pub learned: usize,
    /// A version that started serving (snapshot or switch), and why.
    pub served: Option<(u32, String)>,
}

impl OnlineLearner {
    /// The learner of `pipeline` (`features`: the model's input names), its
    /// state restored from the store and its model relearned from
    /// `labelled`, the stored labelled samples in seq order (for a temporal
    /// pipeline, their rows), in chunks: one chunk is held at a time.
    ///
    /// `model` is new ([`Learned::new`]).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        pipeline: &str,
        family: OnlineFamily,
        model: Learned,
        cfg: &OnlineConfig,
        features: Vec<String>,
        labelled: impl IntoIterator<Item = Result<Vec<(u64, Sample)>, StoreError>>,
        store: &Store,
        registry: &Registry,
    ) -> Result<Self, StoreError> {
        let persisted: Persisted = store
            .get_state(&state_key(pipeline))?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Persisted {
                online_serves: true,
                ..Persisted::default()
            });
        let batch = persisted.batch_version.and_then(|v| {
            registry
                .load_version(store, pipeline, v)
                .inspect_err(|e| tracing::warn!(%pipeline, version = v, error = %e, "Batch champion not loaded; the online learner serves alone."))
                .ok()
                .map(Arc::new)
        });
        let regression = matches!(model, Learned::Regressor(_));
        let mut me = Self {
            pipeline: pipeline.into(),
            family,
            cfg: cfg.clone(),
            model,
            features,
            classes: if regression {
                Vec::new()
            } else {
                persisted.classes
            },
            choice: Choice::starting_with(regression, persisted.online_serves),
            online: Record::default(),
            batch_record: Record::default(),
            learned: 0,
            since_snapshot: 0,
            last_snapshot: None,
            due: None,
            batch_version: batch.as_ref().map(|b| b.version),
            batch,
        };
        for chunk in labelled {
            me.learn_rows(&chunk?, false);
        }
        if me.learned > 0 {
            // The snapshot that served before the restart serves again.
            me.last_snapshot = Some(Instant::now());
            me.since_snapshot = 0;
            me.due = None;
        }
        tracing::info!(%pipeline, family = %family, relearned = me.learned, "Online learner relearned the stored labels.");
        Ok(me)
    }

    /// Whether the online learner serves (also while no batch version exists).
    pub fn online_serves(&self) -> bool {
        self.batch.is_none() || self.choice.second_serves()
    }

    /// The batch champion's version, if any.
    pub fn batch_version(&self) -> Option<u32> {
        self.batch_version
    }

    /// The batch champion (for champion/challenger).
    pub fn batch(&self) -> Option<Arc<Serving>> {
        self.batch.clone()
    }

    /// A new batch version passed champion/challenger: it predicts from now
    /// on (its record continues the batch loop's).
    pub fn set_batch(&mut self, serving: Arc<Serving>) {
        self.batch_version = Some(serving.version);
        self.batch = Some(serving);
    }

    /// Test then train over `rows` (labelled samples; others skipped): the
    /// batch champion's prediction (`batch`: when asked and one exists), the
    /// online model's, both records, the serving choice, then learning. A
    /// regressor skips labels that are not finite numbers. Returns whether
    /// the choice changed.
    fn learn_rows(&mut self, rows: &[(u64, Sample)], batch: bool) -> bool {
        let rows: Vec<&Sample> = rows
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.label.is_some() && s.features.len() == self.features.len())
            .collect();
        if rows.is_empty() {
            return false;
        }
        // The batch champion's errors (0/1, or |y − ŷ|), `None` where it
        // has no answer.
        let batch_errors: Vec<Option<f64>> = match (&self.batch, batch) {
            (Some(b), true) => {
                let x: Vec<f32> = rows
                    .iter()
                    .flat_map(|s| s.features.iter().copied())
                    .collect();
                let labels: Vec<&str> = rows
                    .iter()
                    .map(|s| s.label.as_deref().unwrap_or_default())
                    .collect();
                match b.model.predict_proba(&x) {
                    Ok(p)
                        if b.model.task() == Task::Regression || !b.model.classes().is_empty() =>
                    {
                        super::retrain::prediction_errors(
                            b.model.task(),
                            b.model.classes(),
                            &p,
                            &labels,
                        )
                    }
                    _ => vec![None; rows.len()],
                }
            }
            _ => vec![None; rows.len()],
        };
        let mut switched = false;
        let mut x = Vec::with_capacity(self.features.len());
        for (s, batch_error) in rows.into_iter().zip(batch_errors) {
            let label = s.label.as_deref().unwrap_or_default();
            x.clear();
            x.extend(s.features.iter().map(|v| f64::from(*v)));
            let online_error = match &mut self.model {
                Learned::Classifier(model) => {
                    let predicted = model
                        .predict_one(&x)
                        .ok()
                        .flatten()
                        .and_then(|k| self.classes.get(k));
                    let error = predicted.map(|p| if p == label { 0.0 } else { 1.0 });
                    let y = match self.classes.iter().position(|c| c == label) {
                        Some(y) => y,
                        None => {
                            self.classes.push(label.to_string());
                            self.due = Some(if self.classes.len() == 1 {
                                "first label".into()
                            } else {
                                format!("new class `{label}`")
                            });
                            self.classes.len() - 1
                        }
                    };
                    if model.learn_one(&x, y).is_ok() {
                        self.learned += 1;
                        self.since_snapshot += 1;
                    }
                    error
                }
                Learned::Regressor(model) => {
                    let Some(y) = label.trim().parse::<f64>().ok().filter(|y| y.is_finite()) else {
                        continue;
                    };
                    // Before its first sample the learner answers 0 (River's
                    // convention): not a prediction to record.
                    let error = (self.learned > 0)
                        .then(|| model.predict_one(&x).ok())
                        .flatten()
                        .map(|p| (y - p).abs());
                    if model.learn_one(&x, y).is_ok() {
                        if self.learned == 0 {
                            self.due = Some("first label".into());
                        }
                        self.learned += 1;
                        self.since_snapshot += 1;
                    }
                    error
                }
            };
            if let Some(e) = online_error {
                self.online.push(e);
            }
            if let Some(e) = batch_error {
                self.batch_record.push(e);
            }
            if let (Some(b), Some(o)) = (batch_error, online_error) {
                switched |= self.choice.record(b, o);
            }
        }
        switched
    }

    fn regression(&self) -> bool {
        matches!(self.model, Learned::Regressor(_))
    }

    /// Why a snapshot is due now, if it is (see the module's documentation).
    fn snapshot_due(&self) -> Option<String> {
        if self.learned == 0 {
            return None;
        }
        if let Some(why) = &self.due {
            return Some(why.clone());
        }
        if self.since_snapshot >= self.cfg.snapshot_every_labels.max(1) {
            return Some(format!("every {} labels", self.cfg.snapshot_every_labels));
        }
        let every = self.cfg.snapshot_every_s;
        match self.last_snapshot {
            None => Some("first snapshot".into()),
            Some(t) if every > 0 && self.since_snapshot > 0 && t.elapsed().as_secs() >= every => {
                Some(format!("every {every} s"))
            }
            _ => None,
        }
    }

    fn snapshot_card(&self, reason: &str) -> SnapshotCard {
        SnapshotCard {
            family: self.family.name().into(),
            labels_learned: self.learned,
            constant: match &self.model {
                Learned::Classifier(m) => m.n_classes() <= 1,
                Learned::Regressor(_) => false,
            },
            window: ServeChoice::WINDOW,
            recent: self.online.recent(self.regression()),
            since_start: self.online.since_start(self.regression()),
            batch_recent: self
                .batch
                .as_ref()
                .map(|_| self.batch_record.recent(self.regression())),
            reason: reason.into(),
        }
    }

    /// The choice's reason: both accuracies (a regressor: both MAEs) over
    /// the recent window.
    fn switch_reason(&self) -> String {
        let regression = self.regression();
        let (o, b) = (
            self.online.recent(regression),
            self.batch_record.recent(regression),
        );
        let acc = |p: &Prequential| match (p.accuracy, p.mae) {
            (Some(a), _) => format!("{a:.3}"),
            (None, Some(m)) => format!("MAE {m:.4}"),
            (None, None) => "-".into(),
        };
        format!(
            "{} more accurate over the last {} labelled samples both predicted (online {} {}, batch v{} {}; margin {})",
            if self.choice.second_serves() {
                "online learner"
            } else {
                "batch champion"
            },
            self.choice.recent_len(),
            self.family,
            acc(&o),
            self.batch_version.unwrap_or(0),
            acc(&b),
            ServeChoice::MARGIN
        )
    }

    /// Exports the online model and promotes it (serving) with `action` and
    /// `reason` on the timeline.
    fn promote_snapshot(
        &mut self,
        store: &Store,
        registry: &Registry,
        action: &str,
        reason: String,
        why: &str,
    ) -> Result<Arc<Serving>, RegistryError> {
        let version = store.reserve_model_version(&self.pipeline)?;
        let started = Instant::now();
        let (onnx, task, metric) = match &self.model {
            Learned::Classifier(m) => (
                crate::learn::online::export::to_onnx(m, &self.features, &self.classes, version),
                Task::Classification,
                "accuracy",
            ),
            Learned::Regressor(m) => (
                crate::learn::online::export::regressor_to_onnx(m, &self.features, version),
                Task::Regression,
                "mae",
            ),
        };
        let snapshot = self.snapshot_card(why);
        let card = ModelCard {
            hyperparameters: serde_json::json!({
                "online": snapshot,
                "seed": self.cfg.seed,
                "snapshot_every_labels": self.cfg.snapshot_every_labels,
                "snapshot_every_s": self.cfg.snapshot_every_s,
            }),
            n_samples: self.learned,
            n_train: self.learned,
            metric: metric.into(),
            training_ms: started.elapsed().as_secs_f64() * 1000.0,
            onnx_bytes: onnx.len() as u64,
            ..ModelCard::bare(
                self.pipeline.clone(),
                version,
                self.family.name().into(),
                task,
                crate::learn::Trigger::NewLabels,
                self.features.clone(),
                self.classes.clone(),
            )
        };
        let served = registry
            .promote_onnx(store, onnx, card, String::new(), action, reason, true)
            .inspect_err(|_| store.release_model_version(&self.pipeline, version))?;
        self.since_snapshot = 0;
        self.last_snapshot = Some(Instant::now());
        self.due = None;
        Ok(served)
    }

    fn persist(&self, store: &Store) -> Result<(), StoreError> {
        let p = Persisted {
            batch_version: self.batch_version,
            online_serves: self.online_serves(),
            classes: self.classes.clone(),
        };
        store.put_state(
            &state_key(&self.pipeline),
            &serde_json::to_vec(&p).unwrap_or_default(),
        )
    }

    /// One step of the loop over newly labelled `rows` (a blocking call: an
    /// ONNX run, an export, store commits): test then train, then a switch
    /// or a snapshot as due.
    ///
    /// # Errors
    /// A store or registry error (the model has learned the rows; the next
    /// step tries the snapshot again).
    pub fn step(
        &mut self,
        rows: &[(u64, Sample)],
        store: &Store,
        registry: &Registry,
    ) -> Result<StepOutcome, RegistryError> {
        let before = (self.learned, self.classes.len(), self.online_serves());
        let switched = self.learn_rows(rows, true);
        let mut out = StepOutcome {
            learned: (self.learned - before.0) as usize,
            served: None,
        };
        if switched && !self.online_serves() {
            if let Some(v) = self.batch_version {
                let reason = self.switch_reason();
                registry.promote_version(
                    store,
                    &self.pipeline,
                    v,
                    "serve_switch",
                    reason.clone(),
                    BY_LEARNER,
                )?;
                out.served = Some((v, reason));
            }
        } else if switched && self.online_serves() {
            let reason = self.switch_reason();
            let s = self.promote_snapshot(
                store,
                registry,
                "serve_switch",
                reason.clone(),
                "serves now",
            )?;
            out.served = Some((s.version, reason));
        } else if self.online_serves() {
            if let Some(why) = self.snapshot_due() {
                let reason = format!(
                    "online {} snapshot ({why}): {} labels learned",
                    self.family, self.learned
                );
                let s = self.promote_snapshot(store, registry, "trained", reason.clone(), &why)?;
                out.served = Some((s.version, reason));
            }
        }
        if switched || before.1 != self.classes.len() || before.2 != self.online_serves() {
            self.persist(store)?;
        }
        Ok(out)
    }

    /// Records a batch version that passed champion/challenger (after it
    /// was stored) and keeps the choice.
    ///
    /// # Errors
    /// A store error.
    pub fn batch_trained(
        &mut self,
        serving: Arc<Serving>,
        store: &Store,
    ) -> Result<(), StoreError> {
        self.set_batch(serving);
        self.persist(store)
    }
}

/// Logs a snapshot or switch.
pub fn log_outcome(pipeline: &str, out: &StepOutcome) {
    if let Some((version, reason)) = &out.served {
        tracing::info!(%pipeline, version, reason = %reason, "Online learning: a version serves.");
    }
}

#[cfg(test)]
mod tests {
    use super::{MaeChoice, Record, ServeChoice};

    #[test]
    fn mae_choice_changes_only_past_two_percent_of_the_serving_mae() {
        // The batch champion serves; both err by 1.0 on every sample.
        let mut c = MaeChoice::starting_with(false);
        for _ in 0..ServeChoice::WINDOW {
            assert!(!c.record(1.0, 1.0));
        }
        // Over the window of 200 the serving sum is 200. The online learner
        // errs 0.0 from now on: after n such samples its sum is 200 - n,
        // the serving one's still 200; it takes over once 200 - n < 196
        // (2 % lower), at n = 5 (195), not at n = 4 (196, exactly 2 %).
        let changed: Vec<bool> = (0..5).map(|_| c.record(1.0, 0.0)).collect();
        assert_eq!(changed, vec![false, false, false, false, true]);
        assert!(c.second_serves());
        assert_eq!(c.recent_len(), ServeChoice::WINDOW);
        // Back: the window holds 195 pairs (1, 1) and 5 pairs (1, 0): sums
        // 200 and 195, the online learner serving. Each pair (0, 1) pushes
        // out a (1, 1): the batch sum falls by 1, the online one stays.
        let mut batch: Vec<f64> = vec![1.0; 200];
        let mut online: Vec<f64> = [vec![1.0; 195], vec![0.0; 5]].concat();
        let mut n = 0;
        loop {
            n += 1;
            batch.remove(0);
            batch.push(0.0);
            online.remove(0);
            online.push(1.0);
            let (b, o): (f64, f64) = (batch.iter().sum(), online.iter().sum());
            let switched = c.record(0.0, 1.0);
            assert_eq!(
                switched,
                b < o * 0.98 - 1e-9,
                "sample {n}: batch {b}, online {o}"
            );
            if switched {
                break;
            }
        }
        // batch 200 - n, online 195 + 0 (the leaving pairs are (1, 1)
        // until sample 195): 200 - n < 195 * 0.98 = 191.1 at n = 9.
        assert_eq!(n, 9);
        assert!(!c.second_serves());
    }

    #[test]
    fn records_give_accuracy_for_classes_and_mae_for_values() {
        let mut r = Record::default();
        for e in [0.0, 1.0, 0.0, 0.0] {
            r.push(e);
        }
        let p = r.recent(false);
        assert_eq!((p.scored, p.accuracy, p.mae), (4, Some(0.75), None));
        let mut r = Record::default();
        for e in [0.5, 1.5, 2.5] {
            r.push(e);
        }
        let p = r.since_start(true);
        assert_eq!((p.scored, p.accuracy, p.mae), (3, None, Some(1.5)));
        // The recent window keeps the last WINDOW errors only.
        for _ in 0..ServeChoice::WINDOW {
            r.push(2.0);
        }
        assert_eq!(r.recent(true).mae, Some(2.0));
        assert_eq!(r.since_start(true).scored, 203);
    }
}
