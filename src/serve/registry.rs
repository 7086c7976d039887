//! The registry of serving models: one slot per pipeline, published through
//! `ArcSwap`, so a swap is atomic and never blocks a reader (a request holds
//! the `Arc` of the version it started with).
//!
//! [`Registry::promote`] (and [`Registry::promote_onnx`], the online
//! learner's snapshots) is the way a new version starts serving: the ONNX
//! bytes are loaded and verified by the engine first, then stored with the
//! serving pointer in one commit, then swapped in. A model the engine refuses
//! never replaces the current one.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::engine::{Contract, EngineKind, LoadOptions, ModelError, OnnxModel};
use crate::learn::card::{LiveScore, ModelCard};
use crate::learn::TrainedVersion;
use crate::store::{Store, StoreError, StoredModel};

/// A serving version.
#[derive(Debug)]
pub struct Serving {
    pub version: u32,
    pub model: OnnxModel,
    pub card: ModelCard,
}

/// Errors of promotion and restore.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("pipeline `{0}` is not configured")]
    UnknownPipeline(String),
    #[error("model {pipeline} v{version}: {source}")]
    Model {
        pipeline: String,
        version: u32,
        source: ModelError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("pipeline `{pipeline}` has no stored version {version}")]
    UnknownVersion { pipeline: String, version: u32 },
    #[error("pipeline `{0}` has no earlier version to roll back to")]
    NothingToRollBack(String),
    /// The version's card is kept, its model was dropped
    /// (`models.keep_versions`).
    #[error(
        "model {pipeline} v{version}: only its card is kept (models.keep_versions: the models of older versions that no longer serve are dropped)"
    )]
    Pruned { pipeline: String, version: u32 },
    #[error("model {pipeline} v{version}: card: {reason}")]
    Card {
        pipeline: String,
        version: u32,
        reason: String,
    },
}

/// One entry of a pipeline's timeline: a version started serving.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServingEvent {
    /// When, ms since the Unix epoch.
    pub at_ms: i64,
    /// The version the event is about; for the alarms (`drift_alarm`,
    /// `data_drift_alarm`, `anomaly_alarm`) the version serving when it was
    /// raised, 0 when none served yet (versions count from 1; `edgeloop
    /// models history` prints "-").
    pub version: u32,
    /// `trained` (a new version promoted by the learner), `promote` (asked
    /// for), `rollback`, `refused` (a challenger kept but not served),
    /// `drift_alarm` (the serving version's errors drifted), `serve_switch`
    /// (the online learner or the batch champion took over,
    /// `monitor::online`), `fallback` (at a restart the stored serving
    /// version did not load on the pipeline's engine; this one, the newest
    /// that loads, serves instead: [`Registry::restore`]), `standby` (a batch version kept, not served,
    /// while the online learner serves), `data_drift_alarm` or
    /// `anomaly_alarm` (`monitor::retrain`, `retrain_on`), `adopted` (a
    /// model of another daemon that won on this daemon's holdout,
    /// `serve::fleet`; one that lost is `refused`).
    pub action: String,
    pub reason: String,
    /// Who made the change: `learner` (the daemon's own training, gate and
    /// drift detector), `models_dir` (the watched directory), or the peer
    /// address of the HTTP request (`http 127.0.0.1:53012`). Empty in
    /// events stored before edgeloop recorded it.
    #[serde(default)]
    pub by: String,
}

/// [`ServingEvent::by`] of the daemon's own decisions.
pub const BY_LEARNER: &str = "learner";

impl ServingEvent {
    /// An event stamped now, logged at info (the audit trail of what
    /// serves: who changed it, and why).
    pub fn now(version: u32, action: &str, reason: String, by: &str) -> Self {
        Self {
            at_ms: crate::stats::now_ms(),
            version,
            action: action.into(),
            reason,
            by: by.into(),
        }
    }

    /// Logs the event (after it is stored).
    pub fn log(&self, pipeline: &str) {
        tracing::info!(
            pipeline,
            version = self.version,
            action = %self.action,
            by = %self.by,
            reason = %self.reason,
            "Model timeline: {} version {} by {}.",
            self.action,
            self.version,
            self.by
        );
    }

    /// The event as stored.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Serving slots of every configured pipeline.
#[derive(Debug)]
pub struct Registry {
    slots: HashMap<String, Slot>,
    /// `models.keep_versions` (0: every model kept), and per pipeline the
    /// versions stored since the last [`Registry::prune`].
    keep_versions: usize,
    /// `models.keep_cards` (0: every card).
    keep_cards: usize,
    stored_since_prune: std::sync::Mutex<HashMap<String, usize>>,
}

/// One pipeline's serving version. Readers load `current` without locking;
/// writers hold `write` from the store commit to the swap, so the served
/// version and the stored serving pointer never disagree.
#[derive(Debug, Default)]
struct Slot {
    current: ArcSwapOption<Serving>,
    write: std::sync::Mutex<()>,
    /// The engine the pipeline's models load on, and how.
    engine: EngineKind,
    options: LoadOptions,
    /// What the pipeline expects of a model without edgeloop's metadata
    /// (an import); `None`: only edgeloop's own models load.
    contract: Option<Contract>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Registry {
    /// Empty slots for `pipelines`.
    pub fn new<'a>(pipelines: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            slots: pipelines
                .into_iter()
                .map(|p| (p.to_string(), Slot::default()))
                .collect(),
            keep_versions: 0,
            keep_cards: 0,
            stored_since_prune: Default::default(),
        }
    }

    /// Keeps the models (ONNX and parameters) of at most about `n` versions
    /// of each pipeline beside those that served ([`Registry::prune`]); 0
    /// keeps every one.
    pub fn with_keep_versions(mut self, n: usize) -> Self {
        self.keep_versions = n;
        self
    }

    /// Keeps the cards of the newest `n` versions of each pipeline once
    /// their models are dropped (`models.keep_cards`, 0: every card; only
    /// with `keep_versions`).
    pub fn with_keep_cards(mut self, n: usize) -> Self {
        self.keep_cards = n;
        self
    }

    /// Drops the models of `pipeline`'s versions beyond what
    /// `models.keep_versions` keeps, leaving their cards (history and
    /// comparisons go on; loading one is [`RegistryError::Pruned`]). Kept:
    /// the newest `keep_versions` versions, the serving one, and the newest
    /// `keep_versions` versions that served (a rollback's targets), and of
    /// those standing by (the online learner's batch champion) or imported
    /// (waiting to be promoted). Returns the versions whose
    /// model was dropped now. With `keep_cards`, of the versions without a
    /// model only the newest `keep_cards` keep their card and live tally.
    ///
    /// # Errors
    /// A store error (nothing dropped).
    pub fn prune(&self, store: &Store, pipeline: &str) -> Result<Vec<u32>, RegistryError> {
        let n = self.keep_versions;
        if n == 0 {
            return Ok(Vec::new());
        }
        let versions = store.model_versions(pipeline)?;
        if versions.len() <= n {
            return Ok(Vec::new());
        }
        let mut keep: std::collections::HashSet<u32> =
            versions.iter().rev().take(n).copied().collect();
        keep.extend(store.serving_version(pipeline)?);
        let mut served: Vec<u32> = Vec::new();
        let mut standby: Vec<u32> = Vec::new();
        for e in self.history(store, pipeline)? {
            match e.action.as_str() {
                "rollback" => {
                    served.pop();
                }
                "trained" | "promote" | "serve_switch" | "fallback" => served.push(e.version),
                // Kept beside the served: the online learner's batch
                // champion, and imports waiting to be promoted.
                "standby" | "imported" => standby.push(e.version),
                _ => {}
            }
        }
        for list in [served, standby] {
            let mut seen = std::collections::HashSet::new();
            keep.extend(list.into_iter().rev().filter(|v| seen.insert(*v)).take(n));
        }
        let drop: Vec<u32> = versions.into_iter().filter(|v| !keep.contains(v)).collect();
        let dropped = store.drop_models(pipeline, &drop)?;
        if !dropped.is_empty() {
            tracing::info!(%pipeline, versions = ?dropped, "Models of older versions dropped (models.keep_versions); their cards are kept.");
        }
        if self.keep_cards > 0 && drop.len() > self.keep_cards {
            // `drop` is ascending: the oldest beyond the newest keep_cards
            // without a model.
            let old = &drop[..drop.len() - self.keep_cards];
            let keys: Vec<String> = old.iter().map(|&v| live_key(pipeline, v)).collect();
            let gone = store.drop_cards(pipeline, old, &keys)?;
            if gone > 0 {
                tracing::info!(%pipeline, cards = gone, through = old[old.len() - 1], "Cards of the oldest versions dropped (models.keep_cards).");
            }
        }
        Ok(dropped)
    }

    /// Counts a version stored for `pipeline` and prunes once every
    /// `keep_versions` of them (a prune reads the timeline); failures are
    /// logged, never the caller's (the version is stored).
    fn stored(&self, store: &Store, pipeline: &str) {
        if self.keep_versions == 0 {
            return;
        }
        let due = {
            let mut since = self
                .stored_since_prune
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // The first version after a start prunes at once.
            let c = since
                .entry(pipeline.to_string())
                .or_insert(self.keep_versions);
            *c += 1;
            let due = *c > self.keep_versions;
            if due {
                *c = 0;
            }
            due
        };
        if due {
            if let Err(e) = self.prune(store, pipeline) {
                tracing::warn!(%pipeline, error = %e, "Could not drop older models.");
            }
        }
    }

    /// Loads `pipeline`'s models on `engine` with `options` (the default:
    /// tract). Unknown pipelines are ignored.
    pub fn with_engine(mut self, pipeline: &str, engine: EngineKind, options: LoadOptions) -> Self {
        if let Some(slot) = self.slots.get_mut(pipeline) {
            slot.engine = engine;
            slot.options = options;
        }
        self
    }

    /// Loads `pipeline`'s imported models (those without edgeloop's
    /// metadata) by `contract` ([`OnnxModel::load_for`]). Unknown pipelines
    /// are ignored.
    pub fn with_contract(mut self, pipeline: &str, contract: Contract) -> Self {
        if let Some(slot) = self.slots.get_mut(pipeline) {
            slot.contract = Some(contract);
        }
        self
    }

    /// The serving version of `pipeline`, if any.
    pub fn get(&self, pipeline: &str) -> Option<Arc<Serving>> {
        self.slots.get(pipeline).and_then(|s| s.current.load_full())
    }

    /// Whether `pipeline` is configured.
    pub fn has(&self, pipeline: &str) -> bool {
        self.slots.contains_key(pipeline)
    }

    /// Loads the stored serving version of each pipeline (after a restart).
    ///
    /// A stored serving version the engine now refuses (imported before a
    /// limit it now fails, such as tract's opset limit, or written for
    /// onnxruntime and restarted on tract) does not leave the pipeline
    /// serving nothing: the newest version that loads serves instead, taken
    /// first among the versions that served before (newest first, as a
    /// rollback walks), then among the others (a refused challenger, an
    /// import never promoted), newest first. The switch is stored as a
    /// `fallback` event on the timeline with the serving pointer, in one
    /// commit, so the versions listing, the timeline and a later restart
    /// agree with what serves; it is logged once at WARN with the version
    /// refused and why. When no stored version loads, the pipeline serves
    /// nothing until the next training (logged at ERROR).
    ///
    /// # Errors
    /// [`RegistryError::Store`] when the store cannot be read.
    pub fn restore(&self, store: &Store) -> Result<(), RegistryError> {
        for (pipeline, slot) in &self.slots {
            let Some(version) = store.serving_version(pipeline)? else {
                continue;
            };
            let refused = match stored_model(store, pipeline, version)
                .and_then(|stored| load(slot, pipeline, version, &stored))
            {
                Ok(serving) => {
                    tracing::info!(%pipeline, version, "Restored serving model.");
                    slot.current.store(Some(Arc::new(serving)));
                    continue;
                }
                Err(e @ RegistryError::Store(_)) => return Err(e),
                Err(e) => e,
            };
            let Some(serving) = self.fallback(store, slot, pipeline, version)? else {
                tracing::error!(%pipeline, version, error = %refused, "Stored serving model refused and no other stored version loads; serving nothing until the next training.");
                continue;
            };
            tracing::warn!(%pipeline, version, error = %refused, serving = serving.version, "Stored serving model refused; serving version {}, the newest that loads.", serving.version);
            let event = ServingEvent::now(
                serving.version,
                "fallback",
                format!("version {version} does not load: {refused}"),
                BY_LEARNER,
            );
            let _write = slot.lock();
            match store.set_serving(pipeline, serving.version, &event.to_json()) {
                Ok(_) => event.log(pipeline),
                Err(e) => {
                    tracing::warn!(%pipeline, version = serving.version, error = %e, "Could not store the fallback; it serves until the next restart.")
                }
            }
            slot.current.store(Some(Arc::new(serving)));
        }
        Ok(())
    }

    /// The newest stored version of `pipeline` other than `refused` that
    /// loads: the versions that served first (newest first), then the
    /// others, newest first; `None` when none does.
    fn fallback(
        &self,
        store: &Store,
        slot: &Slot,
        pipeline: &str,
        refused: u32,
    ) -> Result<Option<Serving>, RegistryError> {
        let mut order: Vec<u32> = served_stack(&self.history(store, pipeline)?);
        order.reverse();
        let mut others = store.model_versions(pipeline)?;
        others.reverse();
        order.extend(others);
        let mut tried = std::collections::HashSet::from([refused]);
        for version in order {
            if !tried.insert(version) {
                continue;
            }
            match stored_model(store, pipeline, version)
                .and_then(|stored| load(slot, pipeline, version, &stored))
            {
                Ok(serving) => return Ok(Some(serving)),
                Err(e @ RegistryError::Store(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(%pipeline, version, error = %e, "Not loaded as a fallback.")
                }
            }
        }
        Ok(None)
    }

    /// Verifies, measures, stores and swaps in a trained version. A version
    /// whose card holds a refusal (champion/challenger) is stored and
    /// returned but not served.
    ///
    /// # Errors
    /// [`RegistryError::Model`] when the engine refuses the ONNX bytes (the
    /// current version keeps serving); [`RegistryError::Store`] when the
    /// commit fails (nothing changed).
    pub fn promote(
        &self,
        store: &Store,
        trained: TrainedVersion,
    ) -> Result<Arc<Serving>, RegistryError> {
        let TrainedVersion { model, onnx, card } = trained;
        let params_json = serde_json::to_string(&model).unwrap_or_default();
        match card.decision.as_ref().filter(|d| !d.promoted) {
            // A refused challenger is kept (its card says why), not served;
            // the refusal goes on the timeline in the same commit.
            Some(d) => {
                let reason = d.reason.clone();
                self.promote_onnx(store, onnx, card, params_json, "refused", reason, false)
            }
            None => {
                let reason = format!("trigger {}", card.trigger);
                self.promote_onnx(store, onnx, card, params_json, "trained", reason, true)
            }
        }
    }

    /// Verifies and stores `onnx` with its `card` (the version the card
    /// names, reserved by the caller) and `params_json` (a batch model's
    /// parameters for warm starts; empty for an online snapshot), with
    /// `action` and `reason` on the timeline in the same commit; when
    /// `serve`, the serving pointer moves to it and it is swapped in, else it
    /// is kept beside the serving version (`standby`: the online learner's
    /// batch champion while the online learner serves).
    ///
    /// # Errors
    /// As [`Registry::promote`].
    #[allow(clippy::too_many_arguments)]
    pub fn promote_onnx(
        &self,
        store: &Store,
        onnx: Vec<u8>,
        card: ModelCard,
        params_json: String,
        action: &str,
        reason: String,
        serve: bool,
    ) -> Result<Arc<Serving>, RegistryError> {
        let (pipeline, version) = (card.pipeline.clone(), card.version);
        let slot = self
            .slots
            .get(&pipeline)
            .ok_or_else(|| RegistryError::UnknownPipeline(pipeline.clone()))?;
        let loaded = OnnxModel::load_for(&onnx, slot.contract.as_ref(), slot.engine, &slot.options)
            .map_err(|source| RegistryError::Model {
                pipeline: pipeline.clone(),
                version,
                source,
            })?;
        tracing::info!(%pipeline, version, engine = %loaded.engine(), "Model loaded.");
        let stored = StoredModel {
            onnx,
            card_json: serde_json::to_string(&card).map_err(|e| RegistryError::Card {
                pipeline: pipeline.clone(),
                version,
                reason: e.to_string(),
            })?,
            params_json,
        };
        let event = ServingEvent::now(version, action, reason, BY_LEARNER);
        let _write = slot.lock();
        let serving = Arc::new(Serving {
            version,
            model: loaded,
            card,
        });
        if serve {
            store.put_model(&pipeline, version, &stored, Some(&event.to_json()))?;
            slot.current.store(Some(serving.clone()));
        } else {
            store.append_event(&pipeline, &event.to_json(), Some((version, &stored)))?;
        }
        event.log(&pipeline);
        drop(_write);
        self.stored(store, &pipeline);
        Ok(serving)
    }

    /// Loads stored `version` of `pipeline` on the pipeline's engine without
    /// serving it (the online learner's batch champion after a restart).
    ///
    /// # Errors
    /// [`RegistryError::UnknownVersion`], [`RegistryError::Model`], or a
    /// store error.
    pub fn load_version(
        &self,
        store: &Store,
        pipeline: &str,
        version: u32,
    ) -> Result<Serving, RegistryError> {
        let slot = self
            .slots
            .get(pipeline)
            .ok_or_else(|| RegistryError::UnknownPipeline(pipeline.into()))?;
        let stored =
            store
                .get_model(pipeline, version)?
                .ok_or_else(|| RegistryError::UnknownVersion {
                    pipeline: pipeline.into(),
                    version,
                })?;
        load(slot, pipeline, version, &stored)
    }

    /// Serves stored `version` of `pipeline` again (promotion by an
    /// operator, or a rollback): verified by the engine, then the serving
    /// pointer and the timeline change in one commit, then the swap.
    ///
    /// # Errors
    /// [`RegistryError::UnknownVersion`], [`RegistryError::Model`] when the
    /// engine refuses it (the current version keeps serving), or a store error.
    pub fn promote_version(
        &self,
        store: &Store,
        pipeline: &str,
        version: u32,
        action: &str,
        reason: String,
        by: &str,
    ) -> Result<Arc<Serving>, RegistryError> {
        let slot = self
            .slots
            .get(pipeline)
            .ok_or_else(|| RegistryError::UnknownPipeline(pipeline.into()))?;
        let unknown = || RegistryError::UnknownVersion {
            pipeline: pipeline.into(),
            version,
        };
        let stored = store.get_model(pipeline, version)?.ok_or_else(unknown)?;
        let serving = Arc::new(load(slot, pipeline, version, &stored)?);
        let event = ServingEvent::now(version, action, reason, by);
        let _write = slot.lock();
        if !store.set_serving(pipeline, version, &event.to_json())? {
            return Err(unknown());
        }
        event.log(pipeline);
        slot.current.store(Some(serving.clone()));
        Ok(serving)
    }

    /// Serves the version that served before the current one (repeated
    /// rollbacks walk further back).
    ///
    /// # Errors
    /// [`RegistryError::NothingToRollBack`], or as [`Registry::promote_version`].
    pub fn rollback(
        &self,
        store: &Store,
        pipeline: &str,
        by: &str,
    ) -> Result<Arc<Serving>, RegistryError> {
        let mut stack = served_stack(&self.history(store, pipeline)?);
        let current = stack
            .pop()
            .ok_or_else(|| RegistryError::NothingToRollBack(pipeline.into()))?;
        let target = stack
            .pop()
            .ok_or_else(|| RegistryError::NothingToRollBack(pipeline.into()))?;
        self.promote_version(
            store,
            pipeline,
            target,
            "rollback",
            format!("rolled back from version {current}"),
            by,
        )
    }

    /// The timeline of `pipeline`, oldest first.
    ///
    /// # Errors
    /// A store error.
    pub fn history(
        &self,
        store: &Store,
        pipeline: &str,
    ) -> Result<Vec<ServingEvent>, RegistryError> {
        Ok(store
            .events(pipeline)?
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect())
    }

    /// Cards of every stored version of `pipeline`, ascending.
    ///
    /// # Errors
    /// [`RegistryError`] when the store cannot be read or a card is corrupt.
    pub fn cards(&self, store: &Store, pipeline: &str) -> Result<Vec<ModelCard>, RegistryError> {
        let mut out = Vec::new();
        for (version, json) in store.model_cards(pipeline)? {
            let mut card: ModelCard =
                serde_json::from_str(&json).map_err(|e| RegistryError::Card {
                    pipeline: pipeline.into(),
                    version,
                    reason: e.to_string(),
                })?;
            card.live = live_score(store, pipeline, version, card.task)?;
            out.push(card);
        }
        Ok(out)
    }
}

/// The versions that served, from the timeline, as a stack (the serving
/// one last): a rollback pops the current one; refusals and alarms do not
/// change what serves.
fn served_stack(history: &[ServingEvent]) -> Vec<u32> {
    let mut stack: Vec<u32> = Vec::new();
    for e in history {
        match e.action.as_str() {
            "rollback" => {
                stack.pop();
            }
            "trained" | "promote" | "serve_switch" | "fallback" => stack.push(e.version),
            _ => {}
        }
    }
    stack
}

/// Stored `version` of `pipeline`.
///
/// # Errors
/// [`RegistryError::UnknownVersion`] when it is not stored (a serving
/// pointer naming a missing model), or a store error.
fn stored_model(store: &Store, pipeline: &str, version: u32) -> Result<StoredModel, RegistryError> {
    store
        .get_model(pipeline, version)?
        .ok_or_else(|| RegistryError::UnknownVersion {
            pipeline: pipeline.into(),
            version,
        })
}

fn load(
    slot: &Slot,
    pipeline: &str,
    version: u32,
    stored: &StoredModel,
) -> Result<Serving, RegistryError> {
    if stored.onnx.is_empty() {
        return Err(RegistryError::Pruned {
            pipeline: pipeline.into(),
            version,
        });
    }
    let model = OnnxModel::load_for(
        &stored.onnx,
        slot.contract.as_ref(),
        slot.engine,
        &slot.options,
    )
    .map_err(|source| RegistryError::Model {
        pipeline: pipeline.into(),
        version,
        source,
    })?;
    tracing::info!(%pipeline, version, engine = %model.engine(), "Model loaded.");
    let card = serde_json::from_str(&stored.card_json).map_err(|e| RegistryError::Card {
        pipeline: pipeline.into(),
        version,
        reason: e.to_string(),
    })?;
    Ok(Serving {
        version,
        model,
        card,
    })
}

fn live_key(pipeline: &str, version: u32) -> String {
    format!("live/{pipeline}/{version}")
}

/// Adds `scored` live predictions of `version` to its stored tally:
/// `correct` of them exactly right and `error_sum` the sum of their errors
/// (0/1 for a classifier, |y − ŷ| for a regressor). The learner calls this as
/// labels arrive. Returns the new tally (scored, correct, error sum), `None`
/// when `scored` is 0 (nothing written).
///
/// # Errors
/// A store error.
pub fn add_live_score(
    store: &Store,
    pipeline: &str,
    version: u32,
    scored: u64,
    correct: u64,
    error_sum: f64,
) -> Result<Option<(u64, u64, f64)>, StoreError> {
    if scored == 0 {
        return Ok(None);
    }
    let key = live_key(pipeline, version);
    let (s, c, e) = decode_live(store.get_state(&key)?.as_deref());
    let mut bytes = (s + scored).to_le_bytes().to_vec();
    bytes.extend_from_slice(&(c + correct).to_le_bytes());
    bytes.extend_from_slice(&(e + error_sum).to_le_bytes());
    store.put_state(&key, &bytes)?;
    Ok(Some((s + scored, c + correct, e + error_sum)))
}

/// The live score of `version`: its predictions scored against labels that
/// arrived while it served (accuracy for a classifier, mean absolute error
/// for a regressor). `None` before the first.
///
/// # Errors
/// A store error.
pub fn live_score(
    store: &Store,
    pipeline: &str,
    version: u32,
    task: crate::ingest::decode::Task,
) -> Result<Option<LiveScore>, StoreError> {
    let (scored, correct, error_sum) =
        decode_live(store.get_state(&live_key(pipeline, version))?.as_deref());
    let classification = task == crate::ingest::decode::Task::Classification;
    Ok((scored > 0).then(|| LiveScore {
        scored,
        correct,
        accuracy: classification.then(|| correct as f64 / scored as f64),
        mean_abs_error: (!classification).then(|| error_sum / scored as f64),
    }))
}

fn decode_live(bytes: Option<&[u8]>) -> (u64, u64, f64) {
    let word = |b: &[u8], i: usize| {
        b.get(i * 8..i * 8 + 8)
            .and_then(|w| w.try_into().ok())
            .map_or(0, u64::from_le_bytes)
    };
    bytes.map_or((0, 0, 0.0), |b| {
        (word(b, 0), word(b, 1), f64::from_bits(word(b, 2)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::Sample;
    use crate::learn::{self, Trigger};

    /// 60 occupancy-shaped samples, two classes.
    fn samples() -> Vec<Sample> {
        (0..60)
            .map(|i| Sample {
                timestamp_ms: i,
                device: "d".into(),
                features: vec![
                    20.0 + (i % 7) as f32,
                    30.0,
                    (i % 2) as f32 * 500.0,
                    600.0,
                    0.004,
                ],
                label: Some(((i % 2) as u8).to_string()),
            })
            .collect()
    }

    #[test]
    fn versions_load_on_the_pipeline_engine() {
        use crate::onnx::engine::Engine;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        let pipeline = cfg.pipelines[0].settings();
        let samples = samples();
        let train = |version| {
            learn::train_version(
                &pipeline,
                &samples,
                None,
                version,
                Trigger::Manual,
                None,
                || false,
            )
            .unwrap()
        };
        // auto: an edgeloop export is served by tract.
        let registry = Registry::new(["occupancy"]).with_engine(
            "occupancy",
            EngineKind::Auto,
            LoadOptions::default(),
        );
        let serving = registry.promote(&store, train(1)).unwrap();
        assert_eq!(serving.model.engine(), Engine::Tract);
        // The timeline names the trigger as the card's JSON does.
        let events = registry.history(&store, "occupancy").unwrap();
        assert_eq!(
            (events[0].action.as_str(), events[0].reason.as_str()),
            ("trained", "trigger manual")
        );
        // ort without the library (or the feature): refused, v1 keeps serving.
        let missing = LoadOptions {
            input_width: None,
            ort_library: Some("/nonexistent/libonnxruntime.so".into()),
        };
        let registry = registry.with_engine("occupancy", EngineKind::Ort, missing);
        let err = registry.promote(&store, train(2)).unwrap_err().to_string();
        assert!(err.contains("engine unavailable"), "{err}");
        assert_eq!(registry.get("occupancy").unwrap().version, 1);
    }

    /// `models.keep_versions = 2`: versions 1 and 3 served, 2 and 4-8
    /// were refused. Kept with their models: the newest two (7, 8), the
    /// serving one (3) and the newest two that served (3, 1); the others
    /// keep their cards only, and serving one of them is refused. Pruning
    /// runs once every two stored versions (after v1, v4, v7) and on demand.
    #[test]
    fn older_versions_keep_their_cards_and_drop_their_models() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        assert_eq!(cfg.models.keep_versions, 50);
        let pipeline = cfg.pipelines[0].settings();
        let samples = samples();
        let registry = Registry::new(["occupancy"]).with_keep_versions(2);
        let has_model = |v: u32| {
            !store
                .get_model("occupancy", v)
                .unwrap()
                .unwrap()
                .onnx
                .is_empty()
        };
        for v in 1..=8u32 {
            let t =
                learn::train_version(&pipeline, &samples, None, v, Trigger::Manual, None, || {
                    false
                })
                .unwrap();
            let serve = v == 1 || v == 3;
            let action = if serve { "trained" } else { "refused" };
            registry
                .promote_onnx(
                    &store,
                    t.onnx,
                    t.card,
                    "{}".into(),
                    action,
                    "test".into(),
                    serve,
                )
                .unwrap();
            if v == 4 {
                // The prune after v4: v2 only (v1 served, v3 serves, v4 is new).
                assert_eq!(
                    (1..=4).map(has_model).collect::<Vec<_>>(),
                    [true, false, true, true]
                );
            }
        }
        assert_eq!(registry.prune(&store, "occupancy").unwrap(), [6]);
        let kept: Vec<u32> = (1..=8).filter(|&v| has_model(v)).collect();
        assert_eq!(kept, [1, 3, 7, 8]);
        // Dropped: the parameters too; every card is still there.
        assert!(store
            .get_model("occupancy", 5)
            .unwrap()
            .unwrap()
            .params_json
            .is_empty());
        let cards = registry.cards(&store, "occupancy").unwrap();
        assert_eq!(
            cards.iter().map(|c| c.version).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<_>>()
        );
        let err = registry
            .promote_version(&store, "occupancy", 5, "promote", "test".into(), "test")
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::Pruned { version: 5, .. }),
            "{err}"
        );
        assert_eq!(registry.get("occupancy").unwrap().version, 3);
        // The rollback target kept its model.
        let back = registry.rollback(&store, "occupancy", "test").unwrap();
        assert_eq!(back.version, 1);
        // 0 keeps everything.
        let all = Registry::new(["occupancy"]);
        assert_eq!(all.prune(&store, "occupancy").unwrap(), Vec::<u32>::new());
        // models.keep_cards = 2. After the rollback 1 serves and 3 is no
        // longer a rollback target, so 3's model goes too; of the versions
        // without a model (2-6) the newest two keep their cards: 2, 3 and
        // 4 go, with their live tallies, and numbering goes on after 8.
        store
            .put_state(&live_key("occupancy", 2), &[0; 24])
            .unwrap();
        let capped = Registry::new(["occupancy"])
            .with_keep_versions(2)
            .with_keep_cards(2);
        assert_eq!(capped.prune(&store, "occupancy").unwrap(), [3]);
        let cards = capped.cards(&store, "occupancy").unwrap();
        assert_eq!(
            cards.iter().map(|c| c.version).collect::<Vec<_>>(),
            [1, 5, 6, 7, 8]
        );
        assert_eq!(store.get_model("occupancy", 2).unwrap(), None);
        assert_eq!(store.get_state(&live_key("occupancy", 2)).unwrap(), None);
        assert_eq!(store.reserve_model_version("occupancy").unwrap(), 9);
    }

    /// `onnx` with its default operator set stamped `version` (edgeloop's
    /// exports use opset-13 operators, which mean the same up to 21).
    fn with_opset(onnx: &[u8], version: i64) -> Vec<u8> {
        use prost::Message;
        let mut m = tract_onnx::pb::ModelProto::decode(onnx).unwrap();
        for set in m.opset_import.iter_mut().filter(|o| o.domain.is_empty()) {
            set.version = version;
        }
        m.encode_to_vec()
    }

    /// A version stored before tract refused opsets above 21 (63bc12b), or
    /// written for onnxruntime, is the serving one at a restart on tract:
    /// the pipeline served nothing ("Stored model refused; serving
    /// nothing") although older versions load. Now the newest version that
    /// served and loads serves (v1; v3, a refused challenger, never
    /// served), the serving pointer and the timeline say so (a `fallback`
    /// event naming v2 and the opset), and the next restart serves it
    /// without another event. With no version that served loadable, the
    /// newest other one serves (v3).
    #[test]
    fn a_stored_serving_version_the_engine_refuses_falls_back_to_the_newest_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        let pipeline = cfg.pipelines[0].settings();
        let samples = samples();
        let train = |v| {
            learn::train_version(&pipeline, &samples, None, v, Trigger::Manual, None, || {
                false
            })
            .unwrap()
        };
        let stored = |t: &TrainedVersion, opset: i64| StoredModel {
            onnx: with_opset(&t.onnx, opset),
            card_json: serde_json::to_string(&t.card).unwrap(),
            params_json: String::new(),
        };
        let event =
            |v: u32, action: &str| ServingEvent::now(v, action, "test".into(), "test").to_json();
        let (t1, t2, t3) = (train(1), train(2), train(3));
        store
            .put_model("occupancy", 1, &stored(&t1, 13), Some(&event(1, "trained")))
            .unwrap();
        // v2 serves, importing opset 22 (tract implements up to 21).
        store
            .put_model("occupancy", 2, &stored(&t2, 22), Some(&event(2, "trained")))
            .unwrap();
        store
            .append_event(
                "occupancy",
                &event(3, "refused"),
                Some((3, &stored(&t3, 13))),
            )
            .unwrap();
        let restart = || {
            let registry = Registry::new(["occupancy"]);
            registry.restore(&store).unwrap();
            registry
        };
        let registry = restart();
        assert_eq!(registry.get("occupancy").map(|s| s.version), Some(1));
        assert_eq!(store.serving_version("occupancy").unwrap(), Some(1));
        let history = registry.history(&store, "occupancy").unwrap();
        let last = history.last().unwrap();
        assert_eq!((last.version, last.action.as_str()), (1, "fallback"));
        assert!(
            last.reason.starts_with("version 2 does not load: ")
                && last
                    .reason
                    .contains("up to opset 21; the model imports opset 22"),
            "{}",
            last.reason
        );
        // The next restart serves v1 as stored: no second event.
        let registry = restart();
        assert_eq!(registry.get("occupancy").map(|s| s.version), Some(1));
        assert_eq!(
            registry.history(&store, "occupancy").unwrap().len(),
            history.len()
        );
        // v1 refused too: the newest other version that loads, v3.
        store
            .put_model("occupancy", 1, &stored(&t1, 22), None)
            .unwrap();
        let registry = restart();
        assert_eq!(registry.get("occupancy").map(|s| s.version), Some(3));
        assert_eq!(store.serving_version("occupancy").unwrap(), Some(3));
        // None loads: nothing serves, nothing is stored.
        store
            .put_model("occupancy", 3, &stored(&t3, 22), None)
            .unwrap();
        let n = registry.history(&store, "occupancy").unwrap().len();
        let registry = restart();
        assert!(registry.get("occupancy").is_none());
        assert_eq!(store.serving_version("occupancy").unwrap(), Some(3));
        assert_eq!(registry.history(&store, "occupancy").unwrap().len(), n);
    }

    #[test]
    fn concurrent_promotions_keep_the_served_and_stored_versions_equal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        let pipeline = cfg.pipelines[0].settings();
        let registry = Arc::new(Registry::new(["occupancy"]));
        let samples = samples();
        for version in 1..=3 {
            let trained = learn::train_version(
                &pipeline,
                &samples,
                None,
                version,
                Trigger::Manual,
                None,
                || false,
            )
            .unwrap();
            registry.promote(&store, trained).unwrap();
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Readers: every request sees one complete version.
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (registry, stop) = (registry.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let serving = registry.get("occupancy").unwrap();
                        assert!((1..=3).contains(&serving.version));
                        assert_eq!(
                            serving
                                .model
                                .predict_proba(&[21.0, 30.0, 500.0, 600.0, 0.004])
                                .unwrap()
                                .len(),
                            2
                        );
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let writers: Vec<_> = (0..3u32)
            .map(|w| {
                let (registry, store) = (registry.clone(), store.clone());
                std::thread::spawn(move || {
                    for i in 0..30u32 {
                        let v = 1 + (w + i) % 3;
                        registry
                            .promote_version(
                                &store,
                                "occupancy",
                                v,
                                "promote",
                                "test".into(),
                                "test",
                            )
                            .unwrap();
                    }
                })
            })
            .collect();
        writers.into_iter().for_each(|w| w.join().unwrap());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(reads > 0);
        let served = registry.get("occupancy").unwrap().version;
        assert_eq!(store.serving_version("occupancy").unwrap(), Some(served));
        let last_event = registry
            .history(&store, "occupancy")
            .unwrap()
            .last()
            .unwrap()
            .version;
        assert_eq!(
            last_event, served,
            "the timeline ends with the served version"
        );
    }
}
