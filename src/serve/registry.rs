//! The registry of serving models: one slot per pipeline, published through
//! `ArcSwap`, so a swap is atomic and never blocks a reader (a request holds
//! the `Arc` of the version it started with).
//!
//! [`Registry::promote`] is the only way a version starts serving: the ONNX
//! bytes are loaded and verified by the engine first, then stored with the
//! serving pointer in one commit, then swapped in. A model the engine refuses
//! never replaces the current one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;

use super::engine::{ModelError, OnnxModel};
use crate::learn::card::ModelCard;
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
    /// for), or `rollback`.
    pub action: String,
    pub reason: String,
}

impl ServingEvent {
    fn now(version: u32, action: &str, reason: String) -> Self {
        Self {
            at_ms: crate::learn::now_ms(),
            version,
            action: action.into(),
            reason,
        }
    }

    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Serving slots of every configured pipeline.
#[derive(Debug)]
pub struct Registry {
    slots: HashMap<String, ArcSwapOption<Serving>>,
}

impl Registry {
    /// Empty slots for `pipelines`.
    pub fn new<'a>(pipelines: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            slots: pipelines
                .into_iter()
                .map(|p| (p.to_string(), ArcSwapOption::empty()))
                .collect(),
        }
    }

    /// The serving version of `pipeline`, if any.
    pub fn get(&self, pipeline: &str) -> Option<Arc<Serving>> {
        self.slots.get(pipeline).and_then(|s| s.load_full())
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
            match load(pipeline, version, &stored) {
                Ok(serving) => {
                    tracing::info!(%pipeline, version, "Restored serving model.");
                    slot.store(Some(Arc::new(serving)));
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
        let TrainedVersion {
            model,
            onnx,
            mut card,
        } = trained;
        let (pipeline, version) = (card.pipeline.clone(), card.version);
        let slot = self
            .slots
            .get(&pipeline)
            .ok_or_else(|| RegistryError::UnknownPipeline(pipeline.clone()))?;
        let loaded = OnnxModel::load(&onnx).map_err(|source| RegistryError::Model {
            pipeline: pipeline.clone(),
            version,
            source,
        })?;
        card.predict_p50_us = Some(single_row_p50_us(&loaded, &model.scaler.mean));
        let stored = StoredModel {
            onnx,
            card_json: serde_json::to_string(&card).map_err(|e| RegistryError::Card {
                pipeline: pipeline.clone(),
                version,
                reason: e.to_string(),
            })?,
            params_json: serde_json::to_string(&model).unwrap_or_default(),
        };
        if card.decision.as_ref().is_some_and(|d| !d.promoted) {
            // A refused challenger is kept (its card says why), not served.
            store.put_model(&pipeline, version, &stored, None)?;
            return Ok(Arc::new(Serving {
                version,
                model: loaded,
                card,
            }));
        }
        let event = ServingEvent::now(version, "trained", format!("trigger {:?}", card.trigger));
        store.put_model(&pipeline, version, &stored, Some(&event.to_json()))?;
        let serving = Arc::new(Serving {
            version,
            model: loaded,
            card,
        });
        slot.store(Some(serving.clone()));
        Ok(serving)
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
        let serving = Arc::new(load(pipeline, version, &stored)?);
        let event = ServingEvent::now(version, action, reason);
        if !store.set_serving(pipeline, version, &event.to_json())? {
            return Err(unknown());
        }
        slot.store(Some(serving.clone()));
        Ok(serving)
    }

    /// Serves the version that served before the current one (repeated
    /// rollbacks walk further back).
    ///
    /// # Errors
    /// [`RegistryError::NothingToRollBack`], or as [`Registry::promote_version`].
    pub fn rollback(&self, store: &Store, pipeline: &str) -> Result<Arc<Serving>, RegistryError> {
        let history = self.history(store, pipeline)?;
        // Versions that served, as a stack: a rollback pops the current one.
        let mut stack: Vec<u32> = Vec::new();
        for e in &history {
            if e.action == "rollback" {
                stack.pop();
            } else {
                stack.push(e.version);
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
                out.push(
                    serde_json::from_str(&m.card_json).map_err(|e| RegistryError::Card {
                        pipeline: pipeline.into(),
                        version,
                        reason: e.to_string(),
                    })?,
                );
            }
        }
        Ok(out)
    }
}

fn load(pipeline: &str, version: u32, stored: &StoredModel) -> Result<Serving, RegistryError> {
    let model = OnnxModel::load(&stored.onnx).map_err(|source| RegistryError::Model {
        pipeline: pipeline.into(),
        version,
        source,
    })?;
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

/// Median of 51 single-row runs, microseconds (a measurement for the card,
/// not a test assertion).
fn single_row_p50_us(model: &OnnxModel, row: &[f32]) -> f64 {
    let mut times: Vec<f64> = (0..51)
        .map(|_| {
            let t = Instant::now();
            let _ = model.predict_proba(row);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}
