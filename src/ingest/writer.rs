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
    /// their devices' history (`[pipelines.temporal]`) or windows
    /// (`[pipelines.windows]`), or are scored for anomalies
    /// (`[pipelines.anomaly]`); otherwise only the unlabelled ones, which
    /// it predicts.
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
/// predicted, and for a pipeline with temporal features, windows or anomaly
/// scores the labelled ones too, which only become their devices' history
/// or windows and are scored ([`Route::predict_labelled`]).
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
        // A topic may be 65,535 bytes (a device id of 60,000): its start
        // names it well enough in a log line.
        let topic = match topic.char_indices().nth(200) {
            Some((end, _)) => &topic[..end],
            None => topic,
        };
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

/// How often a writer held by [`Hooks::hold`] looks again, and how often a
/// waiting commit stage looks at the shutdown token.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// Sleeps `d` on the commit stage's thread, in steps of [`HOLD_POLL`];
/// true (at once) when `shutdown` is cancelled.
fn wait_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    let until = Instant::now() + d;
    loop {
        if shutdown.is_cancelled() {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(HOLD_POLL));
    }
}

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
/// stage (each at most [`piece_size`] messages): decoding overlaps the
/// commit (its fsync), and the batches waiting make up one full commit.
const DECODED_AHEAD: usize = 4;

/// Most messages the decoding stage takes for one decoded batch:
/// `store.batch_size` ÷ [`DECODED_AHEAD`], rounded up. The commit stage
/// merges whole batches up to `store.batch_size`, so batches of a quarter
/// of it fill a commit; batches of whatever the channel held (up to its
/// 1,024 messages) did not: two of them were more than 2,000, and under a
/// backlog each commit held one, about 1,024 messages (BENCHMARKS.md).
pub fn piece_size(batch_size: usize) -> usize {
    batch_size.div_ceil(DECODED_AHEAD).max(1)
}

/// One decoded batch, not yet committed.
#[derive(Debug, Default)]
struct Decoded {
    rows: Vec<NewSample>,
    late: Vec<LateLabel>,
    /// Packet ids to acknowledge after the commit, per connection, in order.
    acks: Vec<Acks>,
    messages: u64,
    /// Per message, in order: what it added to `rows`, `late` and `acks`.
    marks: Vec<Mark>,
}

/// What one message added to a [`Decoded`] batch (for [`Decoded::split_off`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Mark {
    rows: u32,
    late: u32,
    acked: bool,
}

impl Decoded {
    fn merge(&mut self, other: Decoded) {
        self.rows.extend(other.rows);
        self.late.extend(other.late);
        self.marks.extend(other.marks);
        for a in other.acks {
            match self.acks.last_mut() {
                Some(last) if last.epoch == a.epoch => last.pkids.extend(a.pkids),
                _ => self.acks.push(a),
            }
        }
        self.messages += other.messages;
    }

    /// Keeps the first `keep` messages (their rows, late labels and
    /// acknowledgements, in order) and returns the rest.
    fn split_off(&mut self, keep: usize) -> Decoded {
        let keep = keep.min(self.marks.len());
        let head = &self.marks[..keep];
        let rows: usize = head.iter().map(|m| m.rows as usize).sum();
        let late: usize = head.iter().map(|m| m.late as usize).sum();
        let mut acked = head.iter().filter(|m| m.acked).count();
        let mut tail = Decoded {
            rows: self.rows.split_off(rows),
            late: self.late.split_off(late),
            acks: Vec::new(),
            messages: self.messages - keep as u64,
            marks: self.marks.split_off(keep),
        };
        self.messages = keep as u64;
        for mut a in std::mem::take(&mut self.acks) {
            if acked == 0 {
                tail.acks.push(a);
            } else if acked >= a.pkids.len() {
                acked -= a.pkids.len();
                self.acks.push(a);
            } else {
                tail.acks.push(Acks {
                    epoch: a.epoch,
                    pkids: a.pkids.split_off(acked),
                });
                acked = 0;
                self.acks.push(a);
            }
        }
        tail
    }
}

impl Writer {
    /// Runs until the source closes the channel; a batch the store refuses
    /// is retried until it commits, or left unacknowledged once `shutdown`
    /// is cancelled.
    ///
    /// Two stages: this task gathers what is waiting (up to [`piece_size`],
    /// or `store.batch_size` with a linger), decodes it and routes it, while
    /// the commit stage, on a blocking thread, commits the batches decoded
    /// before (merging those waiting into one commit of up to
    /// `store.batch_size` messages) and then acknowledges them; so decoding
    /// the next batch overlaps the current fsync.
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
        // A linger waits for a whole batch to fill, in one piece.
        let piece = if linger.is_zero() {
            piece_size(self.store_cfg.batch_size)
        } else {
            self.store_cfg.batch_size
        };
        let (decoded_tx, decoded_rx) = mpsc::channel::<Decoded>(DECODED_AHEAD);
        // Messages taken from the channel and not yet handed on decoded,
        // or, once a batch is handed on, those already waiting behind it.
        let decoding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let committer = self.committer(decoding.clone());
        // The commit stage runs on a blocking thread of its own and calls
        // the store there: no hand-off to a blocking thread and back per
        // commit (two wake-ups, which on the loaded development VM cost
        // 2.4-5.9 ms a commit; BENCHMARKS.md). Its token is cancelled as
        // well when this task is dropped unfinished, so a commit stage
        // retrying a refused batch never outlives it.
        let stop = shutdown.child_token();
        let _stop_on_drop = stop.clone().drop_guard();
        let commits = tokio::task::spawn_blocking(move || committer.run(decoded_rx, stop));
        let mut idle_from = Instant::now();
        while let Some(first) = self.rx.recv().await {
            let gather_from = Instant::now();
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < piece {
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
            let n = batch.len();
            let decode_from = Instant::now();
            let decoded = self.decode(batch, &decoders, &mut log);
            let handoff_from = Instant::now();
            // Closed: the commit stage stopped (shutdown while the store
            // refused); this batch stays unacknowledged with the broker.
            // Set before the batch is in the channel (the channel orders the
            // two): to the messages waiting behind it, which this task takes
            // next without waiting on anything but the channel the commit
            // stage drains, so the commit stage waits for them to fill its
            // commit; to 0 when none wait, so it never waits for a batch it
            // already has.
            let Ok(permit) = decoded_tx.reserve().await else {
                break;
            };
            decoding.store(self.rx.len(), Relaxed);
            permit.send(decoded);
            let done = Instant::now();
            debug!(
                target: "edgeloop::ingest::timing",
                messages = n,
                idle_us = us(gather_from - idle_from),
                gather_us = us(decode_from - gather_from),
                decode_us = us(handoff_from - decode_from),
                handoff_us = us(done - handoff_from),
                "decoded"
            );
            idle_from = done;
        }
        drop(decoded_tx);
        let done = commits
            .await
            .map_err(|e| IngestError::Join(e.to_string()))?;
        info!("Writer stopped.");
        done
    }

    /// The commit stage, sharing this writer's store, channels and counters;
    /// `decoding` is the decoding stage's count (see [`Writer::run`]).
    fn committer(&self, decoding: Arc<std::sync::atomic::AtomicUsize>) -> Committer {
        Committer {
            decoding,
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
        }
    }

    /// Decodes and routes one batch; counts and logs bad payloads.
    fn decode(&self, batch: Vec<Incoming>, decoders: &[Decoder], log: &mut ProblemLog) -> Decoded {
        let mut out = Decoded {
            rows: Vec::with_capacity(batch.len()),
            messages: batch.len() as u64,
            marks: Vec::with_capacity(batch.len()),
            ..Decoded::default()
        };
        for msg in &batch {
            let (rows, late) = (out.rows.len(), out.late.len());
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
                // Counted, not logged: a covering subscription joined from
                // partly overlapping filters brings such topics all the
                // time (logged once at load, `Config::load_with_env`).
                self.stats.unrouted.fetch_add(1, Relaxed);
            }
            // Acknowledged after the commit, per connection (the source
            // drops those of an earlier one: the broker redelivers them).
            let acked = msg.publish.qos != rumqttc::QoS::AtMostOnce;
            if acked {
                match out.acks.last_mut() {
                    Some(a) if a.epoch == msg.epoch => a.pkids.push(msg.publish.pkid),
                    _ => out.acks.push(Acks {
                        epoch: msg.epoch,
                        pkids: vec![msg.publish.pkid],
                    }),
                }
            }
            out.marks.push(Mark {
                rows: (out.rows.len() - rows) as u32,
                late: (out.late.len() - late) as u32,
                acked,
            });
        }
        out
    }
}

/// The commit stage of the writer: commits decoded batches, then
/// acknowledges them and hands their samples on.
struct Committer {
    /// Messages the decoding stage holds or has waiting (see [`Writer::run`]).
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
    /// into one commit of up to `store.batch_size` messages (the rest of a
    /// batch that does not fit goes first into the next); stops when the
    /// decoding stage is done, or when `shutdown` comes while the store
    /// refuses a batch.
    /// Runs on a blocking thread (see [`Writer::run`]).
    fn run(
        self,
        mut rx: mpsc::Receiver<Decoded>,
        shutdown: CancellationToken,
    ) -> Result<(), IngestError> {
        let mut refusal = Refusal::default();
        let mut carry: Option<Decoded> = None;
        loop {
            let idle_from = Instant::now();
            let mut batch = match carry.take() {
                Some(b) => b,
                None => match rx.blocking_recv() {
                    Some(b) => b,
                    None => break,
                },
            };
            let gather_from = Instant::now();
            let mut parts = 1;
            while (batch.messages as usize) < self.store_cfg.batch_size {
                let mut more = match rx.try_recv() {
                    Ok(more) => more,
                    // A batch being decoded, or messages waiting to be, are
                    // waiting too: committing without them would split a
                    // broker's window over two commits (two fsyncs).
                    Err(mpsc::error::TryRecvError::Empty) if self.decoding.load(Relaxed) > 0 => {
                        match rx.blocking_recv() {
                            Some(more) => more,
                            None => break,
                        }
                    }
                    Err(_) => break,
                };
                parts += 1;
                // Filled to `store.batch_size`: the rest of the last batch
                // taken goes into the next commit.
                let room = self.store_cfg.batch_size - batch.messages as usize;
                if more.messages as usize > room {
                    carry = Some(more.split_off(room));
                }
                batch.merge(more);
                if carry.is_some() {
                    break;
                }
            }
            let commit_from = Instant::now();
            let messages = batch.messages;
            let received = self.stats.messages_received.load(Relaxed);
            let handled = self.stats.messages_handled.load(Relaxed);
            if !self.write_batch(batch, &mut refusal, &shutdown)? {
                break;
            }
            debug!(
                target: "edgeloop::ingest::timing",
                messages,
                parts,
                carried = carry.as_ref().map_or(0, |c| c.messages),
                in_flight = received.saturating_sub(handled),
                idle_us = us(gather_from - idle_from),
                gather_us = us(commit_from - gather_from),
                write_us = us(commit_from.elapsed()),
                "committed"
            );
        }
        Ok(())
    }

    /// Runs `op` until it succeeds, holding off while free space is below
    /// the floor or the test hook holds the writer. `None` when `shutdown`
    /// came first (nothing was written).
    fn commit<T>(
        &self,
        what: &'static str,
        refusal: &mut Refusal,
        shutdown: &CancellationToken,
        op: impl Fn(&Store) -> Result<T, crate::store::StoreError>,
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
                match op(&self.store) {
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
            if wait_or_shutdown(if held { HOLD_POLL } else { RETRY }, shutdown) {
                warn!(what, "Shutting down with a batch the store refused; it stays unacknowledged with the broker.");
                return Ok(None);
            }
        }
    }

    /// Commits (samples and late labels in one durable commit) and
    /// acknowledges one batch; false when shutdown came while the store
    /// refused it.
    fn write_batch(
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
            ..
        } = batch;
        let store_from = Instant::now();
        let written = match self.commit("append", refusal, shutdown, |s: &Store| {
            s.write_batch(&rows, &late)
        })? {
            Some(w) => w,
            None => return Ok(false),
        };
        let stored_at = Instant::now();
        // Late labels (applied after the samples of the same commit).
        let mut labels_applied = false;
        if !late.is_empty() {
            // Only a sample's first label is scored: a label for a sample
            // already labelled replaces it in the store, and scoring it
            // again would count one prediction once per label sent.
            let mut by_pipeline: HashMap<String, Vec<u64>> = HashMap::new();
            for ((l, seq), newly) in late
                .iter()
                .zip(&written.labels)
                .zip(&written.newly_labelled)
            {
                if let (Some(seq), true) = (seq, newly) {
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
        debug!(
            target: "edgeloop::ingest::timing",
            store_us = us(stored_at - store_from),
            ack_us = us(stored_at.elapsed()),
            "stored"
        );
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
            if let Err(e) = self.enforce_retention(p) {
                warn!(error = %e, "Retention failed; retried after the next commit.");
            }
        }
        Ok(true)
    }

    fn enforce_retention(&self, pipeline: &str) -> Result<(), IngestError> {
        let deleted = self.store.enforce_retention(
            pipeline,
            self.store_cfg.retention_samples,
            self.store_cfg.retention_chunk,
        )?;
        self.stats.retention_deleted.fetch_add(deleted, Relaxed);
        Ok(())
    }
}

/// Microseconds of `d`, for the timing lines (`edgeloop::ingest::timing`).
fn us(d: Duration) -> u64 {
    d.as_micros() as u64
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
    fn pieces_are_a_quarter_of_a_batch() {
        assert_eq!(piece_size(2000), 500);
        assert_eq!(piece_size(7), 2);
        assert_eq!(piece_size(1), 1);
    }

    /// A decoded batch of five messages: m0 two rows (two pipelines), m1 a
    /// late label, m2 unrouted, m3 one row (QoS 0: no acknowledgement), m4
    /// one row on the next connection.
    fn five_messages() -> Decoded {
        let row = |p: &str, t: i64| NewSample {
            pipeline: p.into(),
            digest: t as u128,
            sample: Sample {
                timestamp_ms: t,
                device: "d".into(),
                features: vec![t as f32],
                label: None,
            },
            dedup: true,
        };
        Decoded {
            rows: vec![row("a", 0), row("b", 0), row("a", 3), row("a", 4)],
            late: vec![LateLabel {
                pipeline: "a".into(),
                key: crate::store::LabelKey::Seq(7),
                label: "x".into(),
            }],
            acks: vec![
                Acks {
                    epoch: 1,
                    pkids: vec![10, 11, 12],
                },
                Acks {
                    epoch: 2,
                    pkids: vec![14],
                },
            ],
            messages: 5,
            marks: vec![
                Mark {
                    rows: 2,
                    late: 0,
                    acked: true,
                },
                Mark {
                    rows: 0,
                    late: 1,
                    acked: true,
                },
                Mark {
                    rows: 0,
                    late: 0,
                    acked: true,
                },
                Mark {
                    rows: 1,
                    late: 0,
                    acked: false,
                },
                Mark {
                    rows: 1,
                    late: 0,
                    acked: true,
                },
            ],
        }
    }

    fn shape(d: &Decoded) -> (u64, Vec<i64>, usize, Vec<(u64, Vec<u16>)>, usize) {
        (
            d.messages,
            d.rows.iter().map(|r| r.sample.timestamp_ms).collect(),
            d.late.len(),
            d.acks.iter().map(|a| (a.epoch, a.pkids.clone())).collect(),
            d.marks.len(),
        )
    }

    #[test]
    fn a_split_batch_keeps_each_message_whole_and_in_order() {
        let mut head = five_messages();
        let tail = head.split_off(2);
        assert_eq!(shape(&head), (2, vec![0, 0], 1, vec![(1, vec![10, 11])], 2));
        assert_eq!(
            shape(&tail),
            (3, vec![3, 4], 0, vec![(1, vec![12]), (2, vec![14])], 3)
        );
        // Split after the QoS 0 message: the acknowledgements split at the
        // connection boundary.
        let mut head = five_messages();
        let tail = head.split_off(4);
        assert_eq!(shape(&head).3, vec![(1, vec![10, 11, 12])]);
        assert_eq!(shape(&tail), (1, vec![4], 0, vec![(2, vec![14])], 1));
        // Merged back, the same batch.
        head.merge(tail);
        assert_eq!(shape(&head), shape(&five_messages()));
        let mut all = five_messages();
        assert_eq!(shape(&all.split_off(5)), (0, vec![], 0, vec![], 0));
        assert_eq!(shape(&all), shape(&five_messages()));
        let mut none = five_messages();
        assert_eq!(shape(&none.split_off(0)), shape(&five_messages()));
        assert_eq!(shape(&none), (0, vec![], 0, vec![], 0));
    }

    /// A backlog through the writer's channel of 1,024 (kept full by a
    /// feeder, the store held until it has built up): each message
    /// committed and acknowledged once, in commits of at most 2,000. Their
    /// sizes depend on how fast the feeder refills the channel (a commit
    /// takes what is waiting); the shapes are held by the tests below. Commit sizes are read from the
    /// acknowledgements (one `Acks` per commit on one connection).
    /// A writer of one pipeline (`t/+`, feature `x`, commits of 2,000)
    /// on a fresh store, with its input channel (of `capacity` messages;
    /// the daemon's holds 1,024) and its acknowledgements.
    struct TestWriter {
        writer: Writer,
        tx: mpsc::Sender<Incoming>,
        acks: mpsc::UnboundedReceiver<Acks>,
        hooks: Arc<Hooks>,
        stats: Arc<Stats>,
        store: Arc<Store>,
        _dir: tempfile::TempDir,
    }

    fn test_writer(capacity: usize) -> TestWriter {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("s.redb");
        let store = Arc::new(Store::open(&path).expect("store"));
        let schema = Schema {
            features: vec!["x".into()],
            label: String::new(),
            classes: vec![],
            task: super::super::decode::Task::Regression,
            timestamp: String::new(),
            timestamp_format: String::new(),
            device_level: 1,
            sample_id_field: "sample_id".into(),
            categorical: vec![],
            categories: None,
        };
        let (tx, rx) = mpsc::channel::<Incoming>(capacity);
        let (acks_tx, acks) = mpsc::unbounded_channel();
        // Closed receivers: late-label and prediction jobs are dropped.
        let (late_tx, _) = mpsc::channel(64);
        let (predict_tx, _) = mpsc::channel(256);
        let hooks = Arc::new(Hooks::default());
        let stats = Arc::new(Stats::default());
        let writer = Writer {
            store: store.clone(),
            pipelines: vec![Route {
                name: "p".into(),
                topics: vec!["t/+".into()],
                label_topics: vec![],
                dedup: Dedup::Content,
                timestamp: String::new(),
                schema,
                predict_labelled: false,
            }],
            max_payload_bytes: 1024,
            store_cfg: StoreConfig {
                path,
                retention_samples: 0,
                retention_chunk: 1000,
                batch_size: 2000,
                batch_linger_ms: 0,
                min_free_bytes: 0,
                create_dir: false,
            },
            acks: acks_tx,
            rx,
            hooks: hooks.clone(),
            stats: stats.clone(),
            labels_added: Arc::new(Notify::new()),
            late_tx,
            predict_tx,
        };
        TestWriter {
            writer,
            tx,
            acks,
            hooks,
            stats,
            store,
            _dir: dir,
        }
    }

    /// Message `i`: QoS 1 on connection 1, `{"x": i}` from device `d{i % 10}`.
    fn message(i: usize) -> Incoming {
        let mut publish = rumqttc::Publish::new(
            format!("t/d{}", i % 10),
            rumqttc::QoS::AtLeastOnce,
            format!("{{\"x\": {i}}}"),
        );
        publish.pkid = (i % 60_000 + 1) as u16;
        Incoming {
            publish: publish.into(),
            epoch: 1,
            arrival_ms: i as i64,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_through_a_full_channel_is_committed_once() {
        const N: usize = 12_000;
        let TestWriter {
            writer,
            tx,
            acks: mut acks_rx,
            hooks,
            stats,
            _dir,
            ..
        } = test_writer(1024);
        // The store holds its first commit until the backlog has built up:
        // the source's channel full, the decoded pieces waiting.
        hooks.hold.store(true, Relaxed);
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let feeder = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for i in 0..N {
                    tx.send(message(i)).await.expect("writer running");
                    sent.fetch_add(1, Relaxed);
                }
            })
        };
        let run = tokio::spawn(writer.run(CancellationToken::new()));
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = sent.load(Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        assert!(last < N, "the writer took everything while held ({last})");
        hooks.hold.store(false, Relaxed);
        feeder.await.expect("feeder");
        run.await.expect("writer task").expect("writer");
        let mut sizes = Vec::new();
        while let Ok(a) = acks_rx.try_recv() {
            assert_eq!(a.epoch, 1);
            sizes.push(a.pkids.len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), N, "{sizes:?}");
        assert_eq!(sizes.len() as u64, stats.commits.load(Relaxed));
        assert!(sizes.iter().all(|&n| n <= 2000), "{sizes:?}");
        assert_eq!(stats.samples_stored.load(Relaxed), N as u64);
    }

    /// Device ids of 60,000 characters (a topic level) among good
    /// messages: each such message is rejected and counted
    /// (`device_too_long`) and acknowledged, every other one is stored in
    /// the same commits. Before, the 60,000 characters were stored with the
    /// sample.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_long_device_ids_are_rejected_one_message_at_a_time() {
        const N: usize = 1_000;
        let TestWriter {
            writer,
            tx,
            acks: mut acks_rx,
            stats,
            store,
            _dir,
            ..
        } = test_writer(1024);
        let long = "d".repeat(60_000);
        let feeder = tokio::spawn(async move {
            for i in 0..N {
                let mut m = message(i);
                if i % 10 == 3 {
                    m.publish.topic = format!("t/{long}").into();
                }
                tx.send(m).await.expect("writer running");
            }
        });
        let run = tokio::spawn(writer.run(CancellationToken::new()));
        feeder.await.expect("feeder");
        run.await.expect("writer task").expect("writer");
        let mut acked = 0;
        while let Ok(a) = acks_rx.try_recv() {
            acked += a.pkids.len();
        }
        assert_eq!(acked, N);
        assert_eq!(stats.samples_stored.load(Relaxed), 900);
        assert_eq!(stats.samples_rejected.load(Relaxed), 100);
        assert_eq!(stats.problems(Reason::DeviceTooLong), 100);
        let stored = store.scan("p", 0..u64::MAX, usize::MAX).expect("scan");
        assert_eq!(stored.len(), 900);
        assert!(stored.iter().all(|(_, r)| r.sample.device.len() == 2));
        let xs: Vec<f32> = stored.iter().map(|(_, r)| r.sample.features[0]).collect();
        let want: Vec<f32> = (0..N).filter(|i| i % 10 != 3).map(|i| i as f32).collect();
        assert_eq!(xs, want);
    }

    /// The commit stage fills each commit to `store.batch_size` and splits
    /// the batch that does not fit: decoded batches of 700, 700, 700 and
    /// 700 messages make commits of 2,000 and 800. Before, it merged whole
    /// batches only: 1,400 and 1,400 (and under a backlog, batches of the
    /// channel's 1,024 made commits of 1,024).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_commit_stage_fills_each_commit_and_splits_the_rest() {
        let TestWriter {
            writer,
            acks: mut acks_rx,
            stats,
            _dir,
            ..
        } = test_writer(16);
        let decoders = vec![Decoder::new(&writer.pipelines[0].schema, 1024)];
        let mut log = ProblemLog::default();
        let (decoded_tx, decoded_rx) = mpsc::channel::<Decoded>(4);
        for b in 0..4 {
            let batch = (b * 700..(b + 1) * 700).map(message).collect();
            let decoded = writer.decode(batch, &decoders, &mut log);
            decoded_tx.send(decoded).await.expect("channel open");
        }
        drop(decoded_tx);
        let committer = writer.committer(Arc::default());
        let token = CancellationToken::new();
        tokio::task::spawn_blocking(move || committer.run(decoded_rx, token))
            .await
            .expect("commit stage")
            .expect("commits");
        let mut acked = Vec::new();
        while let Ok(a) = acks_rx.try_recv() {
            acked.push(a.pkids);
        }
        let sizes: Vec<usize> = acked.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2000, 800]);
        // In order, each once.
        let expected: Vec<u16> = (0..2800).map(|i| message(i).publish.pkid).collect();
        assert_eq!(acked.concat(), expected);
        assert_eq!(stats.samples_stored.load(Relaxed), 2800);
        assert_eq!(stats.commits.load(Relaxed), 2);
    }

    /// A backlog already waiting in full: every commit but the last ones
    /// holds 2,000, the first included. The decoding stage, handing a piece
    /// on, tells the commit stage that more messages wait behind it, so the
    /// commit stage waits for their pieces instead of committing the first
    /// 500 alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_backlog_commits_full_batches_from_the_first() {
        const N: usize = 12_000;
        let TestWriter {
            writer,
            tx,
            acks: mut acks_rx,
            stats,
            _dir,
            ..
        } = test_writer(N);
        for i in 0..N {
            tx.send(message(i)).await.expect("writer running");
        }
        drop(tx);
        writer.run(CancellationToken::new()).await.expect("writer");
        let mut sizes = Vec::new();
        while let Ok(a) = acks_rx.try_recv() {
            sizes.push(a.pkids.len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), N, "{sizes:?}");
        // The last piece may be handed on after the commit stage found
        // nothing more waiting: the last 2,000 may come as two commits.
        assert_eq!(sizes[..5], [2000; 5], "{sizes:?}");
        assert_eq!(stats.samples_stored.load(Relaxed), N as u64);
    }

    /// The commit stage runs on a thread of its own: when the writer's task
    /// is dropped while the store refuses (here: held) a batch, that thread
    /// stops too (it holds the last other reference to the store).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_writer_stops_its_commit_stage() {
        let t = test_writer(1024);
        t.hooks.hold.store(true, Relaxed);
        for i in 0..10 {
            t.tx.send(message(i)).await.expect("writer running");
        }
        let run = tokio::spawn(t.writer.run(CancellationToken::new()));
        // The writer has the messages; the commit stage holds them.
        let until = Instant::now() + Duration::from_secs(10);
        while t.tx.capacity() < 1024 {
            assert!(Instant::now() < until, "the writer took nothing");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(t.stats.commits.load(Relaxed), 0);
        assert!(Arc::strong_count(&t.store) > 1);
        run.abort();
        let until = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&t.store) > 1 {
            assert!(
                Instant::now() < until,
                "the commit stage outlived its writer"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(t.stats.commits.load(Relaxed), 0);
    }

    #[test]
    fn digest_separates_topic_and_payload() {
        assert_eq!(digest("a/b", b"{}"), digest("a/b", b"{}"));
        assert_ne!(digest("a/b", b"{}"), digest("a/c", b"{}"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(digest("ab", b"c"), digest("a", b"bc"));
    }
}
