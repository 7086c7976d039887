//! The retraining policy and the learner component that carries it out.
//!
//! Per pipeline: the first model is trained once `min_labels` labelled
//! samples are stored; a new one after every `retrain_every` further labels;
//! and whenever asked over the API. Training runs on a blocking thread with a
//! cancellation token, one at a time; the result is promoted through the
//! [`Registry`] (verified by the engine before it serves).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::PipelineConfig;
use crate::learn::card::ModelCard;
use crate::learn::{self, Trigger};
use crate::serve::registry::{Registry, RegistryError};
use crate::stats::Stats;
use crate::store::{Store, StoreError};

/// Why a training did not produce a serving version.
#[derive(Debug, thiserror::Error)]
pub enum TrainFailure {
    #[error("pipeline `{0}` is not configured")]
    UnknownPipeline(String),
    #[error("training {pipeline}: {reason}")]
    Training { pipeline: String, reason: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the learner is shutting down")]
    ShuttingDown,
}

struct TrainRequest {
    pipeline: String,
    reply: oneshot::Sender<Result<ModelCard, TrainFailure>>,
}

/// Asks the learner for a training now.
#[derive(Clone, Debug)]
pub struct LearnerHandle {
    tx: mpsc::Sender<TrainRequest>,
}

impl LearnerHandle {
    /// Trains `pipeline` now on everything stored and promotes the result.
    ///
    /// # Errors
    /// [`TrainFailure`] naming why no version was promoted.
    pub async fn train_now(&self, pipeline: &str) -> Result<ModelCard, TrainFailure> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(TrainRequest {
                pipeline: pipeline.into(),
                reply,
            })
            .await
            .map_err(|_| TrainFailure::ShuttingDown)?;
        rx.await.map_err(|_| TrainFailure::ShuttingDown)?
    }
}

/// The learner component.
pub struct Learner {
    store: Arc<Store>,
    registry: Arc<Registry>,
    pipelines: Vec<PipelineConfig>,
    labels_added: Arc<Notify>,
    rx: mpsc::Receiver<TrainRequest>,
    stats: Arc<Stats>,
    /// Labelled total at the last attempt, per pipeline (success or not).
    attempted_at: HashMap<String, u64>,
}

fn trained_key(pipeline: &str) -> String {
    format!("trained_labels/{pipeline}")
}

impl Learner {
    /// A learner and the handle that reaches it.
    pub fn new(
        store: Arc<Store>,
        registry: Arc<Registry>,
        pipelines: Vec<PipelineConfig>,
        labels_added: Arc<Notify>,
        stats: Arc<Stats>,
    ) -> (Self, LearnerHandle) {
        let (tx, rx) = mpsc::channel(16);
        let learner = Self {
            store,
            registry,
            pipelines,
            labels_added,
            rx,
            stats,
            attempted_at: HashMap::new(),
        };
        (learner, LearnerHandle { tx })
    }

    /// Runs until `shutdown`; a training in progress is cancelled.
    ///
    /// # Errors
    /// [`TrainFailure::Store`] when the store cannot be read (the daemon stops).
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), TrainFailure> {
        for p in &self.pipelines {
            let at = self.trained_at(&p.name)?;
            self.attempted_at.insert(p.name.clone(), at);
        }
        self.check_all(&shutdown).await?;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.labels_added.notified() => self.check_all(&shutdown).await?,
                req = self.rx.recv() => {
                    let Some(req) = req else { break };
                    let result = self.train(&req.pipeline, Trigger::Manual, &shutdown).await;
                    let _ = req.reply.send(result);
                }
            }
        }
        info!("Learner stopped.");
        Ok(())
    }

    fn trained_at(&self, pipeline: &str) -> Result<u64, StoreError> {
        Ok(self
            .store
            .get_state(&trained_key(pipeline))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes))
    }

    async fn check_all(&mut self, shutdown: &CancellationToken) -> Result<(), TrainFailure> {
        for i in 0..self.pipelines.len() {
            let p = &self.pipelines[i];
            let labelled = self.store.counts(&p.name)?.labelled_total;
            let attempted = self.attempted_at.get(&p.name).copied().unwrap_or(0);
            let serving = self.registry.get(&p.name).is_some();
            let trigger = if !serving
                && labelled >= p.model.min_labels
                && (attempted == 0
                    || labelled - attempted >= p.model.min_labels.min(p.model.retrain_every))
            {
                Some(Trigger::MinLabels)
            } else if serving && labelled.saturating_sub(attempted) >= p.model.retrain_every {
                Some(Trigger::NewLabels)
            } else {
                None
            };
            if let Some(trigger) = trigger {
                let name = p.name.clone();
                match self.train(&name, trigger, shutdown).await {
                    Ok(_)
                    | Err(TrainFailure::Training { .. })
                    | Err(TrainFailure::Registry(RegistryError::Model { .. })) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn train(
        &mut self,
        pipeline: &str,
        trigger: Trigger,
        shutdown: &CancellationToken,
    ) -> Result<ModelCard, TrainFailure> {
        let cfg = self
            .pipelines
            .iter()
            .find(|p| p.name == pipeline)
            .cloned()
            .ok_or_else(|| TrainFailure::UnknownPipeline(pipeline.into()))?;
        let (store, registry) = (self.store.clone(), self.registry.clone());
        let cancel = shutdown.child_token();
        let result =
            tokio::task::spawn_blocking(move || -> Result<(ModelCard, u64), TrainFailure> {
                let labelled_total = store.counts(&cfg.name)?.labelled_total;
                let samples: Vec<_> = store
                    .labelled(&cfg.name)?
                    .into_iter()
                    .map(|(_, s)| s)
                    .collect();
                let version = store.model_versions(&cfg.name)?.last().map_or(1, |v| v + 1);
                let trained = learn::train_version(&cfg, &samples, version, trigger, || {
                    cancel.is_cancelled()
                })
                .map_err(|e| TrainFailure::Training {
                    pipeline: cfg.name.clone(),
                    reason: e.to_string(),
                })?;
                let serving = registry.promote(&store, trained)?;
                store.put_state(&trained_key(&cfg.name), &labelled_total.to_le_bytes())?;
                Ok((serving.card.clone(), labelled_total))
            })
            .await
            .map_err(|e| TrainFailure::Training {
                pipeline: pipeline.into(),
                reason: format!("training task failed: {e}"),
            })?;
        let labelled_now = self.store.counts(pipeline)?.labelled_total;
        match result {
            Ok((card, labelled_total)) => {
                self.attempted_at.insert(pipeline.into(), labelled_total);
                self.stats.trainings.fetch_add(1, Relaxed);
                let h = card.holdout.as_ref();
                info!(
                    %pipeline, version = card.version, ?trigger, n_train = card.n_train, n_holdout = card.n_holdout,
                    holdout_accuracy = h.map(|m| m.accuracy), holdout_f1 = h.map(|m| m.f1_macro),
                    training_ms = card.training_ms, "Model trained and serving."
                );
                Ok(card)
            }
            Err(e) => {
                self.attempted_at.insert(pipeline.into(), labelled_now);
                self.stats.trainings_failed.fetch_add(1, Relaxed);
                warn!(%pipeline, ?trigger, error = %e, "Training produced no new version; the current one keeps serving.");
                Err(e)
            }
        }
    }
}
