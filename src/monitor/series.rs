//! The daemon's record over time, behind the dashboard's plots (`GET /`,
//! [`crate::http`]): ingest counters, and each pipeline's live score per
//! served version as labels arrive.
//!
//! Every series holds cumulative values (messages received so far, samples
//! a version scored and got right so far), so a rate or an accuracy over
//! any interval is the difference of two points, and downsampling is
//! dropping points: when a series reaches [`CAPACITY`] points, every other
//! point is dropped (the newest kept) and its step doubles. A series
//! therefore covers the daemon's whole life in at most [`CAPACITY`] points,
//! evenly spaced: [`TICK`] apart for the first 24 minutes, 4 s apart up to
//! 48 minutes, …, 2 to 4 minutes apart after a day, and the newest point is
//! always the latest reading (it moves forward until it is a step past the
//! one before it).
//!
//! Kept in memory and written to the store's `state` table (keys
//! `series/ingest`, `series/accuracy/{pipeline}`, postcard) every
//! [`PERSIST_EVERY`] and at shutdown, in one commit: a sample arrives
//! every few milliseconds, and an fsync per sample for a plot would cost
//! more than the sample's own commit. A crash loses at most the last five
//! minutes of the plots, never a sample or a score (the live tallies are
//! stored by [`crate::serve::registry::add_live_score`]). A restart
//! continues the series: the ingest counters of [`Stats`] start again at
//! zero, so the recorder adds them to the last recorded point.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::serve::predictions::AnomalyScorers;
use crate::stats::{Reason, Stats};
use crate::store::{Store, StoreError};

/// Points a series keeps at most: as stored, a full ingest series is
/// 62,647 bytes and a full accuracy series 28,087 (postcard; f64 values).
pub const CAPACITY: usize = 720;
/// How often the recorder reads the ingest counters.
pub const TICK: Duration = Duration::from_secs(2);
/// How often the series are written to the store.
pub const PERSIST_EVERY: Duration = Duration::from_secs(300);

/// Columns of the ingest series, cumulative counts since the store was
/// created (the first recorder's start): messages received, samples stored,
/// messages rejected whole, duplicates (QoS 1 redeliveries), samples stored
/// with a problem (salvaged), predictions made for unlabelled samples, then
/// the rejections by reason (the [`Reason`]s that reject a message).
pub const INGEST_COLUMNS: [&str; 10] = [
    "received",
    "stored",
    "rejected",
    "duplicates",
    "salvaged",
    "predictions",
    "not_json",
    "not_object",
    "too_large",
    "no_features",
];

/// Columns of a pipeline's accuracy series: the serving version, then its
/// live tally so far (labelled samples scored, exactly right, sum of the
/// errors: 0/1 for a classifier, |y − ŷ| for a regressor), as
/// [`crate::serve::registry::live_score`] keeps it.
pub const ACCURACY_COLUMNS: [&str; 4] = ["version", "scored", "correct", "error_sum"];

/// Columns of a pipeline's anomaly series (`[pipelines.anomaly]`), cumulative
/// since the store was created: readings scored, the sum of their scores,
/// alarms ([`crate::serve::predictions::AnomalyTotals`]); the mean score
/// over an interval is the difference of two points' sums over that of
/// their counts.
pub const ANOMALY_COLUMNS: [&str; 3] = ["scored", "score_sum", "alarms"];

/// One reading: when (ms since the Unix epoch) and the cumulative values,
/// in the series' column order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub t_ms: i64,
    pub values: Vec<f64>,
}

/// A bounded, downsampled series of cumulative readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The least time between two kept points, ms (doubles at each
    /// downsampling).
    pub step_ms: i64,
    /// Points at most.
    pub capacity: usize,
    /// When set, a point whose first value differs from the newest point's
    /// (another served version) never replaces it: each version's last
    /// tally is kept.
    pub keyed: bool,
    /// Oldest first.
    pub points: Vec<Point>,
}

impl Series {
    /// An empty series: points `step_ms` apart, at most `capacity` (≥ 4).
    pub fn new(step_ms: i64, capacity: usize, keyed: bool) -> Self {
        Self {
            step_ms: step_ms.max(1),
            capacity: capacity.max(4),
            keyed,
            points: Vec::new(),
        }
    }

    /// Records a reading at `t_ms`: it replaces the newest point while that
    /// one is less than a step after the point before it (and, when keyed,
    /// of the same version); otherwise it is appended, and a full series is
    /// downsampled.
    pub fn record(&mut self, t_ms: i64, values: Vec<f64>) {
        let n = self.points.len();
        if n >= 2 {
            let (before, newest) = (&self.points[n - 2], &self.points[n - 1]);
            let same_key = !self.keyed || newest.values.first() == values.first();
            if newest.t_ms - before.t_ms < self.step_ms && same_key && t_ms >= newest.t_ms {
                self.points[n - 1] = Point { t_ms, values };
                return;
            }
        }
        self.points.push(Point { t_ms, values });
        if self.points.len() > self.capacity {
            self.downsample();
        }
    }

    /// Drops every other point, keeping the newest, and doubles the step.
    fn downsample(&mut self) {
        let n = self.points.len();
        let mut i = 0;
        self.points.retain(|_| {
            let keep = (n - 1 - i) % 2 == 0;
            i += 1;
            keep
        });
        self.step_ms = self.step_ms.saturating_mul(2);
    }

    /// The newest point's values.
    pub fn last(&self) -> Option<&[f64]> {
        self.points.last().map(|p| p.values.as_slice())
    }

    /// Column `i` of every point.
    pub fn column(&self, i: usize) -> Vec<f64> {
        self.points
            .iter()
            .map(|p| p.values.get(i).copied().unwrap_or(f64::NAN))
            .collect()
    }
}

#[derive(Debug)]
struct Book {
    ingest: Series,
    accuracy: BTreeMap<String, Series>,
    anomaly: BTreeMap<String, Series>,
}

impl Default for Book {
    fn default() -> Self {
        Self {
            ingest: Series::new(TICK.as_millis() as i64, CAPACITY, false),
            accuracy: BTreeMap::new(),
            anomaly: BTreeMap::new(),
        }
    }
}

/// Every series of the daemon, shared by the [`Recorder`], the learner
/// (which records the accuracy series) and the HTTP API (which reads them).
#[derive(Debug, Clone, Default)]
pub struct SeriesBook(Arc<Mutex<Book>>);

fn ingest_key() -> &'static str {
    "series/ingest"
}

fn accuracy_key(pipeline: &str) -> String {
    format!("series/accuracy/{pipeline}")
}

fn anomaly_key(pipeline: &str) -> String {
    format!("series/anomaly/{pipeline}")
}

impl SeriesBook {
    /// The series stored for `pipelines` (empty ones where none is stored;
    /// one that cannot be decoded is started afresh, with a warning).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub fn restore<'a>(
        store: &Store,
        pipelines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, StoreError> {
        let decode = |key: &str| -> Result<Option<Series>, StoreError> {
            let Some(bytes) = store.get_state(key)? else {
                return Ok(None);
            };
            match postcard::from_bytes::<Series>(&bytes) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    tracing::warn!(key, error = %e, "Stored series unreadable; starting it afresh.");
                    Ok(None)
                }
            }
        };
        let mut book = Book::default();
        if let Some(s) = decode(ingest_key())? {
            book.ingest = s;
        }
        for p in pipelines {
            if let Some(s) = decode(&accuracy_key(p))? {
                book.accuracy.insert(p.to_string(), s);
            }
            if let Some(s) = decode(&anomaly_key(p))? {
                book.anomaly.insert(p.to_string(), s);
            }
        }
        Ok(Self(Arc::new(Mutex::new(book))))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the live tally of `version` of `pipeline` at `t_ms` (the
    /// totals after the newest scored samples; [`ACCURACY_COLUMNS`]).
    pub fn record_accuracy(
        &self,
        pipeline: &str,
        t_ms: i64,
        version: u32,
        scored: u64,
        correct: u64,
        error_sum: f64,
    ) {
        self.lock()
            .accuracy
            .entry(pipeline.to_string())
            .or_insert_with(|| Series::new(TICK.as_millis() as i64, CAPACITY, true))
            .record(
                t_ms,
                vec![f64::from(version), scored as f64, correct as f64, error_sum],
            );
    }

    /// Records the ingest counters at `t_ms` ([`INGEST_COLUMNS`]).
    pub fn record_ingest(&self, t_ms: i64, values: Vec<f64>) {
        self.lock().ingest.record(t_ms, values);
    }

    /// Records `pipeline`'s anomaly totals at `t_ms` ([`ANOMALY_COLUMNS`]).
    pub fn record_anomaly(&self, pipeline: &str, t_ms: i64, values: Vec<f64>) {
        self.lock()
            .anomaly
            .entry(pipeline.to_string())
            .or_insert_with(|| Series::new(TICK.as_millis() as i64, CAPACITY, false))
            .record(t_ms, values);
    }

    /// A copy of `pipeline`'s anomaly series, `None` when it has none (the
    /// pipeline does not score, or has not been recorded yet).
    pub fn anomaly(&self, pipeline: &str) -> Option<Series> {
        self.lock().anomaly.get(pipeline).cloned()
    }

    /// A copy of the ingest series.
    pub fn ingest(&self) -> Series {
        self.lock().ingest.clone()
    }

    /// A copy of `pipeline`'s accuracy series (empty before its first
    /// scored label).
    pub fn accuracy(&self, pipeline: &str) -> Series {
        self.lock()
            .accuracy
            .get(pipeline)
            .cloned()
            .unwrap_or_else(|| Series::new(TICK.as_millis() as i64, CAPACITY, true))
    }

    /// Writes every series to the store, in one commit.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails.
    pub fn persist(&self, store: &Store) -> Result<(), StoreError> {
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        {
            let book = self.lock();
            let encode = |s: &Series| postcard::to_allocvec(s).unwrap_or_default();
            entries.push((ingest_key().to_string(), encode(&book.ingest)));
            for (p, s) in &book.accuracy {
                entries.push((accuracy_key(p), encode(s)));
            }
            for (p, s) in &book.anomaly {
                entries.push((anomaly_key(p), encode(s)));
            }
        }
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        store.put_states(&refs)
    }
}

/// The ingest counters of `stats`, in [`INGEST_COLUMNS`] order.
pub fn ingest_counters(stats: &Stats) -> Vec<f64> {
    let l = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed) as f64;
    vec![
        l(&stats.messages_received),
        l(&stats.samples_stored),
        l(&stats.samples_rejected),
        l(&stats.duplicates),
        l(&stats.samples_salvaged),
        l(&stats.predictions_made),
        stats.problems(Reason::NotJson) as f64,
        stats.problems(Reason::NotObject) as f64,
        stats.problems(Reason::TooLarge) as f64,
        stats.problems(Reason::NoFeatures) as f64,
    ]
}

/// Reads the ingest counters and the anomaly totals every `tick` into the
/// book and writes the book to the store every `persist_every` and when it
/// stops.
pub struct Recorder {
    pub book: SeriesBook,
    pub stats: Arc<Stats>,
    /// The predictor's anomaly scorers, whose totals are recorded.
    pub anomaly: AnomalyScorers,
    pub store: Arc<Store>,
    pub tick: Duration,
    pub persist_every: Duration,
}

impl Recorder {
    /// Runs until `shutdown`. A failed write to the store is logged and
    /// tried again at the next persist: the plots are not worth stopping
    /// the daemon for.
    pub async fn run(self, shutdown: CancellationToken) {
        // Counters of an earlier run, which `stats` no longer holds.
        let base: Vec<f64> = self
            .book
            .ingest()
            .last()
            .map(<[f64]>::to_vec)
            .filter(|v| v.len() == INGEST_COLUMNS.len())
            .unwrap_or_else(|| vec![0.0; INGEST_COLUMNS.len()]);
        // Likewise each pipeline's anomaly totals.
        let anomaly_base: BTreeMap<String, Vec<f64>> = self
            .anomaly
            .totals()
            .into_iter()
            .filter_map(|(p, _)| {
                let last = self.book.anomaly(&p)?.last()?.to_vec();
                (last.len() == ANOMALY_COLUMNS.len()).then_some((p, last))
            })
            .collect();
        let record = |book: &SeriesBook| {
            let t_ms = crate::stats::now_ms();
            let now = ingest_counters(&self.stats);
            let values = base.iter().zip(now).map(|(b, n)| b + n).collect();
            book.record_ingest(t_ms, values);
            for (p, t) in self.anomaly.totals() {
                let now = [t.scored as f64, t.score_sum, t.alarms as f64];
                let values = match anomaly_base.get(&p) {
                    Some(b) => b.iter().zip(now).map(|(b, n)| b + n).collect(),
                    None => now.to_vec(),
                };
                book.record_anomaly(&p, t_ms, values);
            }
        };
        record(&self.book);
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_persist = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            record(&self.book);
            if last_persist.elapsed() >= self.persist_every {
                last_persist = tokio::time::Instant::now();
                self.persist().await;
            }
        }
        record(&self.book);
        self.persist().await;
    }

    async fn persist(&self) {
        let (book, store) = (self.book.clone(), self.store.clone());
        match tokio::task::spawn_blocking(move || book.persist(&store)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Writing the dashboard's series failed; trying again later.")
            }
            Err(e) => tracing::warn!(error = %e, "Writing the dashboard's series panicked."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_series_halves_and_keeps_the_newest() {
        let mut s = Series::new(1000, 8, false);
        for i in 0..=8 {
            s.record(i * 1000, vec![i as f64]);
        }
        // 9 points > 8: every other dropped, the newest (8) kept.
        let kept: Vec<i64> = s.points.iter().map(|p| p.t_ms).collect();
        assert_eq!(kept, vec![0, 2000, 4000, 6000, 8000]);
        assert_eq!(s.step_ms, 2000);
        // The newest point now moves until it is 2 s past the one before.
        s.record(9000, vec![9.0]);
        assert_eq!(s.points.len(), 6);
        s.record(10_000, vec![10.0]);
        let kept: Vec<i64> = s.points.iter().map(|p| p.t_ms).collect();
        assert_eq!(kept, vec![0, 2000, 4000, 6000, 8000, 10_000]);
        assert_eq!(s.last(), Some(&[10.0][..]));
        // A long life stays within capacity, evenly spaced.
        for i in 11..10_000 {
            s.record(i * 1000, vec![i as f64]);
        }
        assert!(s.points.len() <= 8);
        let gaps: Vec<i64> = s.points.windows(2).map(|w| w[1].t_ms - w[0].t_ms).collect();
        assert!(
            gaps[..gaps.len() - 1].iter().all(|g| *g >= s.step_ms / 2),
            "{gaps:?}"
        );
        assert_eq!(s.points.last().unwrap().t_ms, 9_999_000);
    }

    #[test]
    fn a_keyed_series_keeps_each_versions_last_tally() {
        let mut s = Series::new(10_000, 16, true);
        s.record(0, vec![1.0, 10.0, 9.0, 1.0]);
        s.record(1000, vec![1.0, 20.0, 18.0, 2.0]);
        s.record(2000, vec![1.0, 30.0, 27.0, 3.0]);
        s.record(3000, vec![2.0, 5.0, 5.0, 0.0]);
        s.record(4000, vec![2.0, 9.0, 8.0, 1.0]);
        let v: Vec<(i64, f64, f64)> = s
            .points
            .iter()
            .map(|p| (p.t_ms, p.values[0], p.values[1]))
            .collect();
        // Version 1's point moved to its last tally; version 2's new point
        // did not replace it.
        assert_eq!(v, vec![(0, 1.0, 10.0), (2000, 1.0, 30.0), (4000, 2.0, 9.0)]);
    }

    #[test]
    fn full_series_are_bounded_in_bytes() {
        let book = SeriesBook::default();
        let t0 = 1_800_000_000_000;
        let size = |s: &Series| postcard::to_allocvec(s).unwrap().len();
        for i in 0..10_000i64 {
            let t = t0 + i * 2000;
            book.record_ingest(t, vec![i as f64 * 1000.5; INGEST_COLUMNS.len()]);
            book.record_accuracy("p", t, 1, i as u64, i as u64, 0.5);
            if i + 1 == CAPACITY as i64 {
                // Full: the largest a series gets.
                assert_eq!(book.ingest().points.len(), CAPACITY);
                assert_eq!(size(&book.ingest()), 62_647);
                assert_eq!(size(&book.accuracy("p")), 28_087);
            }
            assert!(book.ingest().points.len() <= CAPACITY);
        }
        assert!(book.accuracy("p").points.len() <= CAPACITY);
    }

    #[test]
    fn the_book_survives_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let book = SeriesBook::restore(&store, ["p"]).unwrap();
        book.record_ingest(1000, vec![1.0; INGEST_COLUMNS.len()]);
        book.record_accuracy("p", 1000, 1, 10, 9, 1.0);
        book.persist(&store).unwrap();
        let again = SeriesBook::restore(&store, ["p", "q"]).unwrap();
        assert_eq!(again.ingest(), book.ingest());
        assert_eq!(again.accuracy("p"), book.accuracy("p"));
        assert!(again.accuracy("q").points.is_empty());
        store.put_state("series/ingest", b"\xff\xff").unwrap();
        let fresh = SeriesBook::restore(&store, ["p"]).unwrap();
        assert!(fresh.ingest().points.is_empty());
    }
}
