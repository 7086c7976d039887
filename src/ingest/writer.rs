//! The writer: decodes received messages, appends them to the store in
//! batches (one durable commit each), and only then acknowledges them to the
//! broker. A crash between receipt and commit loses nothing: the broker
//! delivers the unacknowledged messages again, and the digest of each message
//! keeps a redelivery from becoming a second sample.
//!
//! - Group commit: a batch is what is waiting when the writer is free, up to
//!   `store.batch_size`; while it commits, the next batch gathers.
//! - Acknowledgements go back to the MQTT source on an unbounded channel
//!   (bounded in practice by the broker's in-flight window): the writer
//!   never waits on the source, so the two can never wait on each other.
//! - A store that refuses writes (free space below `store.min_free_bytes`,
//!   or a failed commit: disk full, I/O error) is a state, not a crash: the
//!   batch stays in hand unacknowledged (the broker holds the rest), the state
//!   is logged once and reported ([`Stats::store_refusing`], `/healthz`), and
//!   the commit is retried every [`RETRY`] until it succeeds; at shutdown a
//!   refused batch is left to the broker.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::decode::{Decoder, Reason, Sample, Schema};
use super::mqtt::{Acks, Incoming};
use super::IngestError;
use crate::stats::Stats;
use crate::store::{LateLabel, NewSample, Store, StoreConfig};

/// How a redelivered message is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dedup {
    /// `content` when the pipeline reads a timestamp field (a redelivery and
    /// an identical reading cannot differ then), `redelivery` when it uses
    /// the arrival time.
    #[default]
    Auto,
    /// A message whose topic and payload are already stored is a duplicate.
    Content,
    /// Only a message the broker marks as redelivered (DUP flag) and whose
    /// topic and payload are already stored is a duplicate: a device may
    /// repeat an identical reading.
    Redelivery,
    /// Keep everything (a redelivery after a crash is stored twice).
    Off,
}

/// Which messages the writer routes to a pipeline, and how: the part of a
/// `[[pipelines]]` entry ingest needs (composed by `crate::config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    /// Topic filters of its samples.
    pub topics: Vec<String>,
    /// Topic filters of its late labels.
    pub label_topics: Vec<String>,
    pub dedup: Dedup,
    /// JSON path of the timestamp (empty: arrival time); `Dedup::Auto` reads it.
    pub timestamp: String,
    pub schema: Schema,
    /// Its labelled samples go to the predictor too, which records them as
    /// their devices' history (`[pipelines.temporal]`); otherwise only the
    /// unlabelled ones, which it predicts.
    pub predict_labelled: bool,
}

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

/// Samples just stored, in commit order: the unlabelled ones, which are
/// predicted, and for a pipeline with temporal features the labelled ones
/// too, which only become their devices' history ([`Route::predict_labelled`]).
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

/// How often a refused commit is tried again.
pub const RETRY: Duration = Duration::from_millis(500);

/// Fault injection for tests (`DaemonHandle::hooks`).
#[derive(Debug, Default)]
pub struct Hooks {
    /// While true, the writer holds its batch without committing it, as a
    /// wedged store would.
    pub hold: AtomicBool,
}

/// The writer component.
pub struct Writer {
    pub store: Arc<Store>,
    pub pipelines: Vec<Route>,
    pub max_payload_bytes: usize,
    pub store_cfg: StoreConfig,
    /// Packet ids to acknowledge, to the MQTT source, after each commit.
    pub acks: mpsc::UnboundedSender<Acks>,
    pub rx: mpsc::Receiver<Incoming>,
    pub hooks: Arc<Hooks>,
    pub stats: Arc<Stats>,
    /// Woken after each commit that added labelled samples.
    pub labels_added: Arc<Notify>,
    /// Seqs of samples that received a late label, for concept-drift
    /// scoring; full → skipped (logged at debug).
    pub late_tx: mpsc::Sender<(String, Vec<u64>)>,
    /// Unlabelled samples to predict; full → dropped and counted.
    pub predict_tx: mpsc::Sender<PredictJob>,
}

/// Most decoded batches the decoding stage may hold ahead of the commit
/// stage (each at most `store.batch_size` messages): decoding overlaps the
/// commit (its fsync) without holding more than a few batches unacknowledged
/// beyond what the broker's window allows.
const DECODED_AHEAD: usize = 4;

/// One decoded batch, not yet committed.
#[derive(Debug, Default)]
struct Decoded {
    rows: Vec<NewSample>,
    late: Vec<LateLabel>,
    /// Packet ids to acknowledge after the commit, per connection, in order.
    acks: Vec<Acks>,
    messages: u64,
}

impl Decoded {
    fn merge(&mut self, other: Decoded) {
        self.rows.extend(other.rows);
        self.late.extend(other.late);
        for a in other.acks {
            match self.acks.last_mut() {
                Some(last) if last.epoch == a.epoch => last.pkids.extend(a.pkids),
                _ => self.acks.push(a),
            }
        }
        self.messages += other.messages;
    }
}

impl Writer {
    /// Runs until the source closes the channel; a batch the store refuses
    /// is retried until it commits, or left unacknowledged once `shutdown`
    /// is cancelled.
    ///
    /// Two stages: this task gathers what is waiting (up to
    /// `store.batch_size`), decodes it and routes it, while a second task
    /// commits the batches decoded before (merging those waiting, up to
    /// `store.batch_size` messages, into one commit) and then acknowledges
    /// them; so decoding the next batch overlaps the current fsync.
    ///
    /// # Errors
    /// [`IngestError::Join`] when a blocking task panicked; store failures
    /// are a state (see the module docs), not an error.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), IngestError> {
        let decoders: Vec<Decoder> = self
            .pipelines
            .iter()
            .map(|p| Decoder::new(&p.schema, self.max_payload_bytes))
            .collect();
        let mut log = ProblemLog::default();
        let linger = Duration::from_millis(self.store_cfg.batch_linger_ms);
        let (decoded_tx, decoded_rx) = mpsc::channel::<Decoded>(DECODED_AHEAD);
        // Messages taken from the channel and not yet handed on decoded.
        let decoding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let committer = Committer {
            decoding: decoding.clone(),
            store: self.store.clone(),
            pipelines: self.pipelines.iter().map(|p| p.name.clone()).collect(),
            predict_labelled: self
                .pipelines
                .iter()
                .filter(|p| p.predict_labelled)
                .map(|p| p.name.clone())
                .collect(),
            store_cfg: self.store_cfg.clone(),
            acks: self.acks.clone(),
            hooks: self.hooks.clone(),
            stats: self.stats.clone(),
            labels_added: self.labels_added.clone(),
            late_tx: self.late_tx.clone(),
            predict_tx: self.predict_tx.clone(),
        };
        let commits = tokio::spawn(committer.run(decoded_rx, shutdown));
        while let Some(first) = self.rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < self.store_cfg.batch_size {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) if linger.is_zero() => break,
                    Err(_) => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                        Ok(Some(m)) => batch.push(m),
                        _ => break,
                    },
                }
            }
            decoding.store(batch.len(), Relaxed);
            let decoded = self.decode(batch, &decoders, &mut log);
            // Closed: the commit stage stopped (shutdown while the store
            // refused); this batch stays unacknowledged with the broker.
            // Cleared before the batch is in the channel (the channel
            // orders the two), so the commit stage never waits for a batch
            // it already has.
            let Ok(permit) = decoded_tx.reserve().await else {
                break;
            };
            decoding.store(0, Relaxed);
            permit.send(decoded);
        }
        drop(decoded_tx);
        let done = commits
            .await
            .map_err(|e| IngestError::Join(e.to_string()))?;
        info!("Writer stopped.");
        done
    }

    /// Decodes and routes one batch; counts and logs bad payloads.
    fn decode(&self, batch: Vec<Incoming>, decoders: &[Decoder], log: &mut ProblemLog) -> Decoded {
        let mut out = Decoded {
            rows: Vec::with_capacity(batch.len()),
            messages: batch.len() as u64,
            ..Decoded::default()
        };
        for msg in &batch {
            let topic = msg.publish.topic.as_str();
            let digest = digest(topic, &msg.publish.payload);
            let mut routed = false;
            for (p, dec) in self.pipelines.iter().zip(decoders) {
                if p.label_topics.iter().any(|f| rumqttc::matches(topic, f)) {
                    routed = true;
                    match dec.decode_late_label(topic, &msg.publish.payload) {
                        Ok((key, label)) => out.late.push(LateLabel {
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
                        out.rows.push(NewSample {
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
            // Acknowledged after the commit, per connection (the source
            // drops those of an earlier one: the broker redelivers them).
            if msg.publish.qos != rumqttc::QoS::AtMostOnce {
                match out.acks.last_mut() {
                    Some(a) if a.epoch == msg.epoch => a.pkids.push(msg.publish.pkid),
                    _ => out.acks.push(Acks {
                        epoch: msg.epoch,
                        pkids: vec![msg.publish.pkid],
                    }),
                }
            }
        }
        out
    }
}

/// The commit stage of the writer: commits decoded batches, then
/// acknowledges them and hands their samples on.
struct Committer {
    /// Messages the decoding stage holds (see [`Writer::run`]).
    decoding: Arc<std::sync::atomic::AtomicUsize>,
    store: Arc<Store>,
    /// Pipeline names, for retention.
    pipelines: Vec<String>,
    /// Pipelines whose labelled samples go to the predictor too
    /// ([`Route::predict_labelled`]).
    predict_labelled: Vec<String>,
    store_cfg: StoreConfig,
    acks: mpsc::UnboundedSender<Acks>,
    hooks: Arc<Hooks>,
    stats: Arc<Stats>,
    labels_added: Arc<Notify>,
    late_tx: mpsc::Sender<(String, Vec<u64>)>,
    predict_tx: mpsc::Sender<PredictJob>,
}

impl Committer {
    /// Commits what the decoding stage sends, merging the batches waiting
    /// (up to `store.batch_size` messages) into one commit; stops when the
    /// decoding stage is done, or when `shutdown` comes while the store
    /// refuses a batch.
    async fn run(
        self,
        mut rx: mpsc::Receiver<Decoded>,
        shutdown: CancellationToken,
    ) -> Result<(), IngestError> {
        let mut refusal = Refusal::default();
        let mut carry: Option<Decoded> = None;
        loop {
            let mut batch = match carry.take() {
                Some(b) => b,
                None => match rx.recv().await {
                    Some(b) => b,
                    None => break,
                },
            };
            while (batch.messages as usize) < self.store_cfg.batch_size {
                let more = match rx.try_recv() {
                    Ok(more) => more,
                    // A batch being decoded is waiting too: committing
                    // without it would split a broker's window over two
                    // commits (two fsyncs).
                    Err(mpsc::error::TryRecvError::Empty) if self.decoding.load(Relaxed) > 0 => {
                        match rx.recv().await {
                            Some(more) => more,
                            None => break,
                        }
                    }
                    Err(_) => break,
                };
                if (batch.messages + more.messages) as usize <= self.store_cfg.batch_size {
                    batch.merge(more);
                } else {
                    carry = Some(more);
                    break;
                }
            }
            if !self.write_batch(batch, &mut refusal, &shutdown).await? {
                break;
            }
        }
        Ok(())
    }

    /// Runs `op` on a blocking thread until it succeeds, holding off while
    /// free space is below the floor or the test hook holds the writer.
    /// `None` when `shutdown` came first (nothing was written).
    async fn commit<T: Send + 'static>(
        &self,
        what: &'static str,
        refusal: &mut Refusal,
        shutdown: &CancellationToken,
        op: impl Fn(&Store) -> Result<T, crate::store::StoreError> + Send + Sync + Clone + 'static,
    ) -> Result<Option<T>, IngestError> {
        loop {
            let reason = if self.hooks.hold.load(Relaxed) {
                Some(None)
            } else {
                match self.store.free_bytes() {
                    Ok(free) if free < self.store_cfg.min_free_bytes => Some(Some(format!(
                        "{free} bytes free on the store's file system, below store.min_free_bytes ({})",
                        self.store_cfg.min_free_bytes
                    ))),
                    _ => None,
                }
            };
            if reason.is_none() {
                let (store, op) = (self.store.clone(), op.clone());
                let done = tokio::task::spawn_blocking(move || op(&store))
                    .await
                    .map_err(|e| IngestError::Join(e.to_string()))?;
                match done {
                    Ok(v) => {
                        refusal.clear(&self.stats);
                        return Ok(Some(v));
                    }
                    // After an I/O error the store reopens its file on the
                    // next operation (redb latches a failed write until then).
                    Err(e) => refusal.set(&self.stats, format!("{what}: {e}")),
                }
            }
            let held = matches!(reason, Some(None));
            if let Some(Some(reason)) = reason {
                refusal.set(&self.stats, reason);
            }
            // Held (test hook) or refused: try again later.
            tokio::select! {
                _ = tokio::time::sleep(if held { Duration::from_millis(20) } else { RETRY }) => {}
                _ = shutdown.cancelled() => {
                    warn!(what, "Shutting down with a batch the store refused; it stays unacknowledged with the broker.");
                    return Ok(None);
                }
            }
        }
    }

    /// Commits (samples and late labels in one durable commit) and
    /// acknowledges one batch; false when shutdown came while the store
    /// refused it.
    async fn write_batch(
        &self,
        batch: Decoded,
        refusal: &mut Refusal,
        shutdown: &CancellationToken,
    ) -> Result<bool, IngestError> {
        let Decoded {
            rows,
            late,
            acks,
            messages,
        } = batch;
        let input = Arc::new((rows, late));
        let written = {
            let input = input.clone();
            match self
                .commit("append", refusal, shutdown, move |s: &Store| {
                    s.write_batch(&input.0, &input.1)
                })
                .await?
            {
                Some(w) => w,
                None => return Ok(false),
            }
        };
        let (rows, late) = Arc::try_unwrap(input).unwrap_or_else(|a| (*a).clone());
        // Late labels (applied after the samples of the same commit).
        let mut labels_applied = false;
        if !late.is_empty() {
            let mut by_pipeline: HashMap<String, Vec<u64>> = HashMap::new();
            for (l, seq) in late.iter().zip(&written.labels) {
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
            let matched = written.labels.iter().filter(|a| a.is_some()).count() as u64;
            self.stats.labels_matched.fetch_add(matched, Relaxed);
            self.stats
                .labels_unmatched
                .fetch_add(written.labels.len() as u64 - matched, Relaxed);
            labels_applied = matched > 0;
        }
        self.stats.commits.fetch_add(1, Relaxed);
        self.stats.messages_handled.fetch_add(messages, Relaxed);
        self.stats
            .last_commit_ms
            .store(crate::stats::now_ms(), Relaxed);
        // Acknowledge only now.
        for acks in acks {
            if self.acks.send(acks).is_err() {
                debug!("The MQTT source is gone; the broker will redeliver.");
            }
        }
        let mut labelled = false;
        let (mut stored, mut duplicates) = (0u64, 0u64);
        // Per pipeline, in order of first appearance (a handful at most: a
        // scan, not a hash of the name per sample).
        let mut jobs: Vec<(String, Vec<(u64, Sample)>)> = Vec::new();
        for (row, seq) in rows.into_iter().zip(&written.seqs) {
            let Some(seq) = *seq else {
                duplicates += 1;
                continue;
            };
            stored += 1;
            let has_label = row.sample.label.is_some();
            labelled |= has_label;
            if has_label && !self.predict_labelled.contains(&row.pipeline) {
                continue;
            }
            match jobs.iter_mut().find(|(p, _)| *p == row.pipeline) {
                Some((_, samples)) => samples.push((seq, row.sample)),
                None => jobs.push((row.pipeline, vec![(seq, row.sample)])),
            }
        }
        self.stats.duplicates.fetch_add(duplicates, Relaxed);
        self.stats.samples_stored.fetch_add(stored, Relaxed);
        if labelled || labels_applied {
            self.labels_added.notify_one();
        }
        for (pipeline, samples) in jobs {
            let n = samples.iter().filter(|(_, s)| s.label.is_none()).count() as u64;
            if self
                .predict_tx
                .try_send(PredictJob { pipeline, samples })
                .is_err()
            {
                self.stats.predictions_dropped.fetch_add(n, Relaxed);
            }
        }
        let over: Vec<&String> = self
            .pipelines
            .iter()
            .filter(|p| {
                written.counts.iter().any(|(q, c)| {
                    q == *p
                        && self.store_cfg.retention_samples > 0
                        && c.samples > self.store_cfg.retention_samples
                })
            })
            .collect();
        for p in over {
            if let Err(e) = self.enforce_retention(p).await {
                warn!(error = %e, "Retention failed; retried after the next commit.");
            }
        }
        Ok(true)
    }

    async fn enforce_retention(&self, pipeline: &str) -> Result<(), IngestError> {
        let keep = self.store_cfg.retention_samples;
        let store = self.store.clone();
        let name = pipeline.to_string();
        let chunk = self.store_cfg.retention_chunk;
        let deleted =
            tokio::task::spawn_blocking(move || store.enforce_retention(&name, keep, chunk))
                .await
                .map_err(|e| IngestError::Join(e.to_string()))??;
        self.stats.retention_deleted.fetch_add(deleted, Relaxed);
        Ok(())
    }
}

/// The store's refusal state: logged once when it starts and once when it
/// ends, mirrored in [`Stats::store_refusing`] and [`Stats::store_refusal`].
#[derive(Debug, Default)]
struct Refusal {
    since: Option<Instant>,
}

impl Refusal {
    fn set(&mut self, stats: &Stats, reason: String) {
        stats.commits_refused.fetch_add(1, Relaxed);
        if self.since.is_none() {
            warn!(%reason, "The store refuses writes: messages stay unacknowledged with the broker; retrying until it accepts them.");
            self.since = Some(Instant::now());
            stats.store_refusing.store(true, Relaxed);
        }
        if let Ok(mut r) = stats.store_refusal.lock() {
            *r = reason;
        }
    }

    fn clear(&mut self, stats: &Stats) {
        if let Some(since) = self.since.take() {
            info!(
                after_s = since.elapsed().as_secs_f64(),
                "The store accepts writes again; ingest resumes."
            );
            stats.store_refusing.store(false, Relaxed);
            if let Ok(mut r) = stats.store_refusal.lock() {
                r.clear();
            }
        }
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
