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
//! is recounted), under the same seed; which learner serves, the batch
//! champion's version and the class order are kept in the store's `state`
//! table (`online/{pipeline}`). The snapshot that served before the restart
//! serves again ([`Registry::restore`]) until the next snapshot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::prequential::ServeChoice;
use crate::ingest::decode::Sample;
use crate::learn::card::ModelCard;
use crate::learn::online::export::{Prequential, SnapshotCard};
use crate::learn::online::{OnlineClassifier, OnlineFamily, OnlineModel};
use crate::serve::registry::{Registry, RegistryError, Serving, BY_LEARNER};
use crate::store::{Store, StoreError};

/// `[pipelines.online]`: the online learner of a classification pipeline.
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

/// Recent outcomes (true = right) and totals.
#[derive(Debug, Clone, Default)]
struct Record {
    recent: VecDeque<bool>,
    recent_right: u64,
    scored: u64,
    right: u64,
}

impl Record {
    fn push(&mut self, right: bool) {
        if self.recent.len() == ServeChoice::WINDOW {
            if let Some(old) = self.recent.pop_front() {
                self.recent_right -= u64::from(old);
            }
        }
        self.recent.push_back(right);
        self.recent_right += u64::from(right);
        self.scored += 1;
        self.right += u64::from(right);
    }

    fn recent(&self) -> Prequential {
        let n = self.recent.len() as u64;
        Prequential {
            scored: n,
            accuracy: (n > 0).then(|| self.recent_right as f64 / n as f64),
        }
    }

    fn since_start(&self) -> Prequential {
        Prequential {
            scored: self.scored,
            accuracy: (self.scored > 0).then(|| self.right as f64 / self.scored as f64),
        }
    }
}

/// One pipeline's online learner, its record and the serving choice.
pub struct OnlineLearner {
    pipeline: String,
    family: OnlineFamily,
    cfg: OnlineConfig,
    features: Vec<String>,
    model: OnlineModel,
    /// Class names by index, in order of first appearance.
    classes: Vec<String>,
    choice: ServeChoice,
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
    /// pipeline, their rows).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub fn restore(
        pipeline: &str,
        family: OnlineFamily,
        cfg: &OnlineConfig,
        features: Vec<String>,
        labelled: Vec<(u64, Sample)>,
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
        let mut me = Self {
            pipeline: pipeline.into(),
            family,
            cfg: cfg.clone(),
            model: family.new_model(features.len(), None, cfg.seed),
            features,
            classes: persisted.classes,
            choice: ServeChoice::starting_with(persisted.online_serves),
            online: Record::default(),
            batch_record: Record::default(),
            learned: 0,
            since_snapshot: 0,
            last_snapshot: None,
            due: None,
            batch_version: batch.as_ref().map(|b| b.version),
            batch,
        };
        me.learn_rows(&labelled, false);
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
    /// online model's, both records, the serving choice, then learning.
    /// Returns whether the choice changed.
    fn learn_rows(&mut self, rows: &[(u64, Sample)], batch: bool) -> bool {
        let rows: Vec<&Sample> = rows
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.label.is_some() && s.features.len() == self.features.len())
            .collect();
        if rows.is_empty() {
            return false;
        }
        let batch_labels: Vec<Option<String>> = match (&self.batch, batch) {
            (Some(b), true) => {
                let x: Vec<f32> = rows
                    .iter()
                    .flat_map(|s| s.features.iter().copied())
                    .collect();
                let classes = b.model.classes();
                match b.model.predict_proba(&x) {
                    Ok(p) if !classes.is_empty() => {
                        crate::learn::logistic::argmax_rows(&p, classes.len())
                            .into_iter()
                            .map(|k| classes.get(k).cloned())
                            .collect()
                    }
                    _ => vec![None; rows.len()],
                }
            }
            _ => vec![None; rows.len()],
        };
        let mut switched = false;
        let mut x = Vec::with_capacity(self.features.len());
        for (s, batch_label) in rows.into_iter().zip(batch_labels) {
            let label = s.label.as_deref().unwrap_or_default();
            x.clear();
            x.extend(s.features.iter().map(|v| f64::from(*v)));
            let predicted = self
                .model
                .predict_one(&x)
                .ok()
                .flatten()
                .and_then(|k| self.classes.get(k));
            let online_right = predicted.map(|p| p == label);
            if let Some(r) = online_right {
                self.online.push(r);
            }
            let batch_right = batch_label.map(|b| b == label);
            if let Some(r) = batch_right {
                self.batch_record.push(r);
            }
            if let (Some(b), Some(o)) = (batch_right, online_right) {
                switched |= self.choice.record(b, o);
            }
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
            if self.model.learn_one(&x, y).is_ok() {
                self.learned += 1;
                self.since_snapshot += 1;
            }
        }
        switched
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
            constant: self.model.n_classes() <= 1,
            window: ServeChoice::WINDOW,
            recent: self.online.recent(),
            since_start: self.online.since_start(),
            batch_recent: self.batch.as_ref().map(|_| self.batch_record.recent()),
            reason: reason.into(),
        }
    }

    /// The choice's reason: both accuracies over the recent window.
    fn switch_reason(&self) -> String {
        let (o, b) = (self.online.recent(), self.batch_record.recent());
        let acc = |p: &Prequential| p.accuracy.map_or("-".into(), |a| format!("{a:.3}"));
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
        let onnx = crate::learn::online::export::to_onnx(
            &self.model,
            &self.features,
            &self.classes,
            version,
        );
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
            metric: "accuracy".into(),
            training_ms: started.elapsed().as_secs_f64() * 1000.0,
            onnx_bytes: onnx.len() as u64,
            ..ModelCard::bare(
                self.pipeline.clone(),
                version,
                self.family.name().into(),
                crate::ingest::decode::Task::Classification,
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
