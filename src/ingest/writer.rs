//! The writer: decodes received messages, appends them to the store in
//! batches (one durable commit each), and only then acknowledges them to the
//! broker. A crash between receipt and commit loses nothing: the broker
//! delivers the unacknowledged messages again, and the digest of each message
//! keeps a redelivery from becoming a second sample.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::AsyncClient;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::decode::{Decoder, Reason, Sample};
use super::mqtt::{Connection, Incoming};
use super::IngestError;
use crate::config::{Dedup, PipelineConfig, StoreConfig};
use crate::stats::Stats;
use crate::store::{LateLabel, NewSample, Store};

/// Identity of a message for deduplication: xxh3-128 of the topic, a zero
/// byte and the payload. A QoS 1 redelivery has the same digest; two
/// different readings, even with the same timestamp, do not.
pub fn digest(topic: &str, payload: &[u8]) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(topic.as_bytes());
    h.update(&[0]);
    h.update(payload);
    h.digest128()
}

/// Unlabelled samples just stored, to be predicted.
#[derive(Debug)]
pub struct PredictJob {
    pub pipeline: String,
    /// (seq, sample) pairs.
    pub samples: Vec<(u64, Sample)>,
}

/// Logs a problem at most once per reason per interval, with the count since.
#[derive(Debug, Default)]
struct ProblemLog {
    last: HashMap<Reason, (Instant, u64)>,
}

impl ProblemLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn note(&mut self, reason: Reason, topic: &str, field: &str) {
        let now = Instant::now();
        let entry = self.last.entry(reason).or_insert((now - Self::EVERY, 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= Self::EVERY {
            warn!(%topic, reason = reason.as_str(), field, count = entry.1, "Bad payload field; counted (logged at most every 10 s per reason).");
            *entry = (now, 0);
        }
    }
}

/// The writer component.
pub struct Writer {
    pub store: Arc<Store>,
    pub pipelines: Vec<PipelineConfig>,
    pub max_payload_bytes: usize,
    pub store_cfg: StoreConfig,
    pub client: AsyncClient,
    pub connection: Arc<Connection>,
    pub rx: mpsc::Receiver<Incoming>,
    pub stats: Arc<Stats>,
    /// Woken after each commit that added labelled samples.
    pub labels_added: Arc<Notify>,
    /// Seqs of samples that received a late label, for concept-drift
    /// scoring; full → skipped (logged at debug).
    pub late_tx: mpsc::Sender<(String, Vec<u64>)>,
    /// Unlabelled samples to predict; full → dropped and counted.
    pub predict_tx: mpsc::Sender<PredictJob>,
}

impl Writer {
    /// Runs until the source closes the channel or `shutdown` is cancelled;
    /// on shutdown it commits and acknowledges what it already received.
    ///
    /// # Errors
    /// [`IngestError::Store`] when a commit fails: nothing of that batch was
    /// acknowledged, so the broker keeps it; the daemon stops.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let decoders: Vec<Decoder> = self
            .pipelines
            .iter()
            .map(|p| Decoder::new(p, self.max_payload_bytes))
            .collect();
        let mut log = ProblemLog::default();
        let linger = Duration::from_millis(self.store_cfg.batch_linger_ms);
        loop {
            let first = tokio::select! {
                m = self.rx.recv() => m,
                _ = shutdown.cancelled() => self.rx.try_recv().ok(),
            };
            let Some(first) = first else { break };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < self.store_cfg.batch_size {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) if shutdown.is_cancelled() => break,
                    Err(_) => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(m)) => batch.push(m),
                        _ => break,
                    },
                }
            }
            self.write_batch(batch, &decoders, &mut log).await?;
        }
        info!("Writer stopped.");
        Ok(())
    }

    async fn write_batch(
        &mut self,
        batch: Vec<Incoming>,
        decoders: &[Decoder],
        log: &mut ProblemLog,
    ) -> Result<(), IngestError> {
        let mut rows = Vec::with_capacity(batch.len());
        let mut late: Vec<LateLabel> = Vec::new();
        for msg in &batch {
            let topic = msg.publish.topic.as_str();
            let digest = digest(topic, &msg.publish.payload);
            let mut routed = false;
            for (p, dec) in self.pipelines.iter().zip(decoders) {
                if p.label_topics.iter().any(|f| rumqttc::matches(topic, f)) {
                    routed = true;
                    match dec.decode_late_label(topic, &msg.publish.payload) {
                        Ok((key, label)) => late.push(LateLabel {
                            pipeline: p.name.clone(),
                            key,
                            label,
                        }),
                        Err(reason) => {
                            self.stats.count_problem(reason);
                            self.stats.labels_rejected.fetch_add(1, Relaxed);
                            log.note(reason, topic, "late label");
                        }
                    }
                    continue;
                }
                if !p.topics.iter().any(|f| rumqttc::matches(topic, f)) {
                    continue;
                }
                routed = true;
                let decoded = dec.decode(topic, &msg.publish.payload, msg.arrival_ms);
                for problem in &decoded.problems {
                    self.stats.count_problem(problem.reason);
                    log.note(problem.reason, topic, &problem.field);
                }
                match decoded.sample {
                    Some(sample) => {
                        if !decoded.problems.is_empty() {
                            self.stats.samples_salvaged.fetch_add(1, Relaxed);
                        }
                        let dedup = match p.dedup {
                            Dedup::Content => true,
                            Dedup::Auto => !p.timestamp.is_empty() || msg.publish.dup,
                            Dedup::Redelivery => msg.publish.dup,
                            Dedup::Off => false,
                        };
                        rows.push(NewSample {
                            pipeline: p.name.clone(),
                            digest,
                            sample,
                            dedup,
                        });
                    }
                    None => {
                        self.stats.samples_rejected.fetch_add(1, Relaxed);
                    }
                }
            }
            if !routed {
                self.stats.unrouted.fetch_add(1, Relaxed);
                debug!(%topic, "No pipeline matches this topic.");
            }
        }
        let store = self.store.clone();
        let (rows, seqs) = tokio::task::spawn_blocking(move || {
            let seqs = store.append(&rows);
            (rows, seqs)
        })
        .await
        .map_err(|e| IngestError::Join(e.to_string()))?;
        let seqs = seqs?;
        // Late labels after the samples of the same batch, before the acks.
        let mut labels_applied = false;
        if !late.is_empty() {
            let store = self.store.clone();
            let (late, applied) = tokio::task::spawn_blocking(move || {
                let applied = store.apply_labels(&late);
                (late, applied)
            })
            .await
            .map_err(|e| IngestError::Join(e.to_string()))?;
            let applied = applied?;
            let mut by_pipeline: HashMap<String, Vec<u64>> = HashMap::new();
            for (l, seq) in late.iter().zip(&applied) {
                if let Some(seq) = seq {
                    by_pipeline
                        .entry(l.pipeline.clone())
                        .or_default()
                        .push(*seq);
                }
            }
            for item in by_pipeline {
                if self.late_tx.try_send(item).is_err() {
                    debug!("Late-label scoring queue full; these labels are stored but not scored for drift.");
                }
            }
            let matched = applied.iter().filter(|a| a.is_some()).count() as u64;
            self.stats.labels_matched.fetch_add(matched, Relaxed);
            self.stats
                .labels_unmatched
                .fetch_add(applied.len() as u64 - matched, Relaxed);
            labels_applied = matched > 0;
        }
        self.stats.commits.fetch_add(1, Relaxed);
        // Acknowledge only now, in order, and only on the connection the
        // message came from (the broker redelivers the others).
        let epoch = self.connection.epoch();
        for msg in &batch {
            if msg.epoch == epoch {
                if let Err(e) = self.client.ack(&msg.publish).await {
                    debug!(error = %e, "Ack not sent; the broker will redeliver.");
                }
            }
        }
        let mut labelled = false;
        let mut jobs: HashMap<String, Vec<(u64, Sample)>> = HashMap::new();
        for (row, seq) in rows.into_iter().zip(seqs) {
            let Some(seq) = seq else {
                self.stats.duplicates.fetch_add(1, Relaxed);
                continue;
            };
            self.stats.samples_stored.fetch_add(1, Relaxed);
            if row.sample.label.is_some() {
                labelled = true;
            } else {
                jobs.entry(row.pipeline)
                    .or_default()
                    .push((seq, row.sample));
            }
        }
        if labelled || labels_applied {
            self.labels_added.notify_one();
        }
        for (pipeline, samples) in jobs {
            let n = samples.len() as u64;
            if self
                .predict_tx
                .try_send(PredictJob { pipeline, samples })
                .is_err()
            {
                self.stats.predictions_dropped.fetch_add(n, Relaxed);
            }
        }
        self.enforce_retention().await
    }

    async fn enforce_retention(&self) -> Result<(), IngestError> {
        let keep = self.store_cfg.retention_samples;
        if keep == 0 {
            return Ok(());
        }
        for p in &self.pipelines {
            let store = self.store.clone();
            let name = p.name.clone();
            let chunk = self.store_cfg.retention_chunk;
            let deleted =
                tokio::task::spawn_blocking(move || -> Result<u64, crate::store::StoreError> {
                    if store.counts(&name)?.samples <= keep {
                        return Ok(0);
                    }
                    store.enforce_retention(&name, keep, chunk)
                })
                .await
                .map_err(|e| IngestError::Join(e.to_string()))??;
            self.stats.retention_deleted.fetch_add(deleted, Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_separates_topic_and_payload() {
        assert_eq!(digest("a/b", b"{}"), digest("a/b", b"{}"));
        assert_ne!(digest("a/b", b"{}"), digest("a/c", b"{}"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(digest("ab", b"c"), digest("a", b"bc"));
    }
}
