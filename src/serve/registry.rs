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
    pub version: u32,
    /// `trained` (a new version promoted by the learner), `promote` (asked
    /// for), `rollback`, `refused` (a challenger kept but not served),
    /// `drift_alarm` (the serving version's errors drifted), `serve_switch`
    /// (the online learner or the batch champion took over,
    /// `monitor::online`) or `standby` (a batch version kept, not served,
    /// while the online learner serves).
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
    /// A stored version the engine now refuses is logged and skipped: the
    /// pipeline serves nothing until the next training.
    ///
    /// # Errors
    /// [`RegistryError::Store`] when the store cannot be read.
    pub fn restore(&self, store: &Store) -> Result<(), RegistryError> {
        for (pipeline, slot) in &self.slots {
            let Some(version) = store.serving_version(pipeline)? else {
                continue;
            };
            let Some(stored) = store.get_model(pipeline, version)? else {
                tracing::error!(%pipeline, version, "Serving pointer names a missing model; serving nothing.");
                continue;
            };
            match load(slot, pipeline, version, &stored) {
                Ok(serving) => {
                    tracing::info!(%pipeline, version, "Restored serving model.");
                    slot.current.store(Some(Arc::new(serving)));
                }
                Err(e) => {
                    tracing::error!(%pipeline, version, error = %e, "Stored model refused; serving nothing.")
                }
            }
        }
        Ok(())
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
                let reason = format!("trigger {:?}", card.trigger);
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
        let history = self.history(store, pipeline)?;
        // Versions that served, as a stack: a rollback pops the current one.
        let mut stack: Vec<u32> = Vec::new();
        for e in &history {
            match e.action.as_str() {
                "rollback" => {
                    stack.pop();
                }
                "trained" | "promote" | "serve_switch" => stack.push(e.version),
                _ => {} // refusals and alarms do not change what serves
            }
        }
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
        for version in store.model_versions(pipeline)? {
            if let Some(m) = store.get_model(pipeline, version)? {
                let mut card: ModelCard =
                    serde_json::from_str(&m.card_json).map_err(|e| RegistryError::Card {
                        pipeline: pipeline.into(),
                        version,
                        reason: e.to_string(),
                    })?;
                card.live = live_score(store, pipeline, version, card.task)?;
                out.push(card);
            }
        }
        Ok(out)
    }
}

fn load(
    slot: &Slot,
    pipeline: &str,
    version: u32,
    stored: &StoredModel,
) -> Result<Serving, RegistryError> {
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

    #[test]
    fn versions_load_on_the_pipeline_engine() {
        use crate::onnx::engine::Engine;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        let pipeline = cfg.pipelines[0].settings();
        let samples: Vec<Sample> = (0..60)
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
            .collect();
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

    #[test]
    fn concurrent_promotions_keep_the_served_and_stored_versions_equal() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let cfg = crate::config::Config::load_with_env(None, std::iter::empty()).unwrap();
        let pipeline = cfg.pipelines[0].settings();
        let registry = Arc::new(Registry::new(["occupancy"]));
        let samples: Vec<Sample> = (0..60)
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
            .collect();
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
