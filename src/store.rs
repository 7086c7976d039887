//! The durable store: samples, model versions and daemon state in one redb
//! database file.
//!
//! Every write is one redb transaction committed with `Durability::Immediate`
//! (fsync before `commit` returns), so a batch is either wholly on disk or not
//! at all, whatever the power does; and in quick-repair mode (each commit
//! records the allocator state, in two phases), so the open after a crash
//! reads a few pages instead of checksumming the whole file ([`open_db`]).
//! redb, not sled: sled 0.34's `flush()` uses `sync_file_range`, which is no
//! barrier against power loss, and its files grow under retention (README,
//! "Why redb").
//!
//! Tables:
//! - `samples`: (pipeline, seq) → postcard [`StoredSample`]; `seq` is the
//!   pipeline's append order, starting at 0, never reused.
//! - No dedup table: each pipeline's digests are held in memory
//!   ([`Store::write_batch`]'s dedup index), read from `samples` (every
//!   record starts with its digest) the first time the pipeline is
//!   written after the store is opened. Stores written before (with a
//!   `dedup` table, (pipeline, digest) → seq) open as they are; that table
//!   is dropped at open (best effort: left when the disk is full) and is
//!   never read. Keyed by a random 128-bit digest, each of its inserts
//!   touched its own B-tree leaf, so a commit of 500 samples rewrote
//!   hundreds of 4 KiB pages: 60 % of the store path's time (BENCHMARKS.md,
//!   "Ingest throughput").
//! - `counters`: pipeline → (next_seq, count, labelled_total).
//! - `models`: (pipeline, version) → postcard [`StoredModel`].
//! - `state`: key → bytes (serving version, training progress, live
//!   scores, the dashboard's series: `crate::monitor::series`).
//! - `by_time`: (pipeline, device, timestamp ms) → seq, to match late labels
//!   (the newest sample wins when two share a timestamp).
//! - `events`: (pipeline, seq) → JSON: the timeline of promotions and
//!   rollbacks, written in the same commit as the serving pointer.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

const SAMPLES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("samples");
/// Written by stores before the in-memory dedup index; dropped at open.
const DEDUP: TableDefinition<(&str, u128), u64> = TableDefinition::new("dedup");
const COUNTERS: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("counters");
const MODELS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("models");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// Events a pipeline's timeline keeps (`GET …/history`), the newest.
pub const TIMELINE_EVENTS: u64 = 10_000;
const BY_TIME: TableDefinition<(&str, &str, i64), u64> = TableDefinition::new("by_time");
/// Each stored version's card (JSON) by (pipeline, version), beside its
/// record in `models` and written in the same commits: card reads and
/// version listings read this, not the models (megabytes each, more than
/// redb's cache holds). A store written before this table gets it at its
/// first open (see [`Store::index_cards`]).
const CARDS: TableDefinition<(&str, u32), &str> = TableDefinition::new("cards");

/// Errors from the store. Each names the operation and the database file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {op}: {source}")]
    Db {
        path: PathBuf,
        op: &'static str,
        source: Box<redb::Error>,
    },
    #[error("store {path}: cannot open: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("store {path}: {op}: corrupt record: {reason}")]
    Corrupt {
        path: PathBuf,
        op: &'static str,
        reason: String,
    },
    /// A model write refused because it would take the file system below
    /// `store.min_free_bytes` ([`Store::set_min_free_bytes`]).
    #[error(
        "store {path}: {op}: {free} bytes free on its file system, and {needed} for this model: below store.min_free_bytes ({floor})"
    )]
    BelowFloor {
        path: PathBuf,
        op: &'static str,
        free: u64,
        needed: u64,
        floor: u64,
    },
}

impl StoreError {
    /// A write failed because the store's file system is full (ENOSPC), or
    /// was refused for the free-space floor ([`StoreError::BelowFloor`]).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::BelowFloor { .. } => true,
            StoreError::Db { source, .. } => matches!(
                source.as_ref(),
                redb::Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull
            ),
            _ => false,
        }
    }
}

/// A sample as stored: the decoded sample and the digest of the message it
/// came from.
/// A decoded sensor reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Reading time, milliseconds since the Unix epoch (UTC): the payload's
    /// timestamp field, or the arrival time.
    pub timestamp_ms: i64,
    /// Device id, from the configured topic level ("" when none).
    pub device: String,
    /// Features in the pipeline's declared order; `NaN` marks a missing value.
    pub features: Vec<f32>,
    /// Label, when the payload carries one: a class name, or for a
    /// regression pipeline a finite number in canonical form
    /// ([`canonical_number`](crate::ingest::decode::canonical_number): `2`,
    /// `0.75`, `1e+300`).
    pub label: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSample {
    pub digest: u128,
    pub sample: Sample,
}

/// A [`StoredSample`] to encode without copying the sample (postcard
/// writes the same bytes for both).
#[derive(Serialize)]
struct StoredSampleRef<'a> {
    digest: u128,
    sample: &'a Sample,
}

/// What [`Store::write_batch`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Per sample: its seq, or `None` for a duplicate.
    pub seqs: Vec<Option<u64>>,
    /// Per late label: the seq it was applied to, or `None`.
    pub labels: Vec<Option<u64>>,
    /// Per late label: whether its sample had no label before (false for
    /// an unmatched label, and for a label of a sample already labelled,
    /// which replaces that label).
    pub newly_labelled: Vec<bool>,
    /// Counts after the commit of each pipeline the commit changed.
    pub counts: Vec<(String, Counts)>,
}

/// One model version: its ONNX bytes, its model card and its parameters
/// (both JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredModel {
    pub onnx: Vec<u8>,
    pub card_json: String,
    pub params_json: String,
}

/// A sample to append: its pipeline, the digest that identifies its message
/// (see `ingest::writer::digest`), and the sample.
#[derive(Debug, Clone)]
pub struct NewSample {
    pub pipeline: String,
    pub digest: u128,
    pub sample: Sample,
    /// Skip the sample when its digest is already stored (a redelivery).
    /// When false it is stored anyway (the digest is still recorded).
    pub dedup: bool,
}

/// How a late label finds its sample.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelKey {
    /// The sample's seq (`sample_id` in prediction messages).
    Seq(u64),
    /// The sample's device and timestamp (ms).
    DeviceTime { device: String, timestamp_ms: i64 },
}

/// A label that arrived after its sample.
#[derive(Debug, Clone, PartialEq)]
pub struct LateLabel {
    pub pipeline: String,
    pub key: LabelKey,
    pub label: String,
}

/// Per-pipeline counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Next sequence number to assign.
    pub next_seq: u64,
    /// Samples stored now (after retention).
    pub samples: u64,
    /// Labelled samples ever appended (retention does not lower it).
    pub labelled_total: u64,
}

/// The store. Cheap to share behind an `Arc`; redb serialises writers.
pub struct Store {
    /// `None` while closed after a failed reopen ([`Store::reopen`]). Each
    /// operation holds the read lock for its transaction's lifetime, so a
    /// reopen (write lock) never races an open transaction.
    db: std::sync::RwLock<Option<Database>>,
    /// Set by an operation that met an I/O error: redb then fails every
    /// later operation (`PreviousIo`) until the file is opened again, which
    /// the next operation does ([`Store::reopen`]), whoever runs it.
    needs_reopen: std::sync::atomic::AtomicBool,
    path: PathBuf,
    /// Model versions handed out and not yet stored, per pipeline: the next
    /// number to hand out ([`Store::reserve_model_version`]). In memory only:
    /// redb locks the file to this process, and after a restart numbering
    /// goes on from the newest stored version, so a training killed
    /// mid-way leaves no hole.
    reserved: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// The dedup index: per pipeline, the digests of its stored samples,
    /// loaded from `samples` on the pipeline's first write and changed only
    /// for committed transactions. Held across each write transaction that
    /// changes samples (appends, retention), before the database lock.
    index: std::sync::Mutex<DedupIndex>,
    /// Bumped by every [`Store::reopen`]: an index built from another
    /// opening of the file is dropped and read again (a commit that failed
    /// with an I/O error may or may not be on disk).
    opened: std::sync::atomic::AtomicU64,
    /// Whether `cards` was found to hold exactly the versions of `models`
    /// at open ([`Store::index_cards`]); until then card reads and version
    /// listings read `models`.
    cards_indexed: std::sync::atomic::AtomicBool,
    /// `store.min_free_bytes` for model writes (0: none;
    /// [`Store::set_min_free_bytes`]).
    min_free_bytes: std::sync::atomic::AtomicU64,
    /// Writes without quick repair ([`Store::set_quick_repair`]).
    no_quick_repair: std::sync::atomic::AtomicBool,
    /// Told at each [`PROGRESS_EVERY`] digests a commit reads into the
    /// dedup index ([`Store::set_progress`]).
    progress: std::sync::OnceLock<Progress>,
}

/// Told that a long read inside a commit moved on ([`Store::set_progress`]).
pub type Progress = std::sync::Arc<dyn Fn() + Send + Sync>;

/// Digests read into a dedup index between two calls of the
/// [`Progress`] hook.
const PROGRESS_EVERY: usize = 10_000;

/// Digests of stored samples, per pipeline (see [`Store`]'s `index`).
#[derive(Debug, Default)]
struct DedupIndex {
    /// The [`Store`]'s `opened` when the sets were read.
    opened: u64,
    pipelines: std::collections::HashMap<String, DigestSet>,
}

/// A set of xxh3-128 digests. They are uniform already, so the hasher only
/// folds the 128 bits to 64 (no SipHash per lookup).
type DigestSet = std::collections::HashSet<u128, std::hash::BuildHasherDefault<DigestHasher>>;

/// See [`DigestSet`].
#[derive(Debug, Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

/// A read lock on the open database, and whether its writes use quick
/// repair ([`Store::set_quick_repair`]).
struct DbGuard<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>, bool);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0.as_ref().expect("DbGuard holds an open database")
    }
}

impl DbGuard<'_> {
    /// A write transaction in redb's quick-repair mode: its commit records
    /// the allocator state (and commits in two phases), so that the open
    /// after a crash or a power cut loads that state instead of walking and
    /// checksumming every page of the file (redb's full repair, which read
    /// the whole store: 3.2 s and 570 MB for 4 million samples on the
    /// development VM, cold; on an SD card an estimated few minutes, past
    /// systemd's start timeout). Every write of
    /// the store goes through here (it shadows [`Database::begin_write`]);
    /// without quick repair only for a benchmark's reference
    /// ([`Store::set_quick_repair`]).
    fn begin_write(&self) -> Result<redb::WriteTransaction, redb::TransactionError> {
        let mut txn = Database::begin_write(self)?;
        txn.set_quick_repair(self.1);
        Ok(txn)
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it if absent. After an unclean
    /// shutdown redb checks and repairs the file here.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the file cannot be opened (missing directory,
    /// locked by another process, not a redb file); [`StoreError::Corrupt`]
    /// when redb panics on a damaged file (a page of the wrong type: redb
    /// treats it as unreachable), naming the file and what to do.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_observed(path, std::sync::Arc::new(|_| {}))
    }

    /// [`Store::open`], with `observe` told the progress of redb's full
    /// repair (0.0 when it starts, then 0.6 and 0.9; 0.3 as well when the
    /// last commit was torn) if the file needs one: see [`open_db`]. A file
    /// whose last commit recorded its allocator state (quick repair) opens
    /// without one, crash or not, and `observe` is never called.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_observed(path: &Path, observe: RepairObserver) -> Result<Self, StoreError> {
        // The observer is only called; after a panic nothing of the open
        // is used again.
        let open = std::panic::AssertUnwindSafe(|| Self::open_file(path, observe));
        std::panic::catch_unwind(open).unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("redb panicked");
            Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                op: "open",
                reason: format!(
                    "the file is damaged ({what}); move it aside to start a new store (store.path), or restore a copy"
                ),
            })
        })
    }

    /// [`Store::open`], without the guard against redb's panics.
    fn open_file(path: &Path, observe: RepairObserver) -> Result<Self, StoreError> {
        let err = |source: redb::Error| StoreError::Db {
            path: path.to_path_buf(),
            op: "open",
            source: Box::new(source),
        };
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                reason: format!(
                    "directory {} does not exist (create it, or set store.path)",
                    dir.display()
                ),
            });
        }
        let db = open_db(path, observe).map_err(|e| err(e.into()))?;
        let store = Self {
            db: std::sync::RwLock::new(Some(db)),
            needs_reopen: std::sync::atomic::AtomicBool::new(false),
            path: path.to_path_buf(),
            reserved: Default::default(),
            index: Default::default(),
            opened: Default::default(),
            cards_indexed: Default::default(),
            min_free_bytes: Default::default(),
            no_quick_repair: Default::default(),
            progress: Default::default(),
        };
        // Create every table so readers never meet a missing one.
        // A store that has every table opens without writing, so a daemon
        // can start on a full disk (it then refuses ingest, serves the rest).
        if store.has_tables() {
            store.drop_dedup_table();
            store.index_cards();
            return Ok(store);
        }
        {
            let db = store.lock_db().map_err(&err)?;
            let txn = db.begin_write().map_err(|e| err(e.into()))?;
            {
                txn.open_table(SAMPLES).map_err(|e| err(e.into()))?;
                txn.open_table(COUNTERS).map_err(|e| err(e.into()))?;
                txn.open_table(MODELS).map_err(|e| err(e.into()))?;
                txn.open_table(STATE).map_err(|e| err(e.into()))?;
                txn.open_table(EVENTS).map_err(|e| err(e.into()))?;
                txn.open_table(BY_TIME).map_err(|e| err(e.into()))?;
                txn.open_table(CARDS).map_err(|e| err(e.into()))?;
            }
            txn.commit().map_err(|e| err(e.into()))?;
        }
        store.index_cards();
        Ok(store)
    }

    /// Whether the store's commits record redb's allocator state (quick
    /// repair; the default, [`DbGuard::begin_write`]). Off only for the
    /// reference of `cargo bench --bench store_reopen`: a store written as
    /// edgeloop wrote before, whose open after a crash is redb's full
    /// repair.
    pub fn set_quick_repair(&self, on: bool) {
        self.no_quick_repair
            .store(!on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the hook a commit calls every [`PROGRESS_EVERY`] digests while
    /// it reads a pipeline's dedup index from its stored samples (the first
    /// write of each pipeline after the store opens: the whole `samples`
    /// range of the pipeline, 143 MB and 0.46 s for 1,000,000 samples on
    /// the development VM with a cold cache, seconds more on an SD card):
    /// the daemon counts it as progress, so that its health and the
    /// systemd watchdog do not take the read for a stalled ingest. The
    /// first call wins.
    pub fn set_progress(&self, hook: Progress) {
        let _ = self.progress.set(hook);
    }

    fn quick_repair(&self) -> bool {
        !self
            .no_quick_repair
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, held for one operation; reopened first if a
    /// previous [`Store::reopen`] could not open it.
    fn lock_db(&self) -> Result<DbGuard<'_>, redb::Error> {
        use std::sync::atomic::Ordering;
        if self.needs_reopen.swap(false, Ordering::AcqRel) {
            // Closed if it cannot be opened now; the next operation retries.
            if let Err(e) = self.reopen() {
                tracing::warn!(error = %e, path = %self.path.display(), "Store not reopened after an I/O error; retried by the next operation.");
            }
        }
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return Ok(DbGuard(guard, self.quick_repair()));
        }
        drop(guard);
        self.reopen()?;
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            Ok(DbGuard(guard, self.quick_repair()))
        } else {
            Err(redb::Error::PreviousIo)
        }
    }

    /// Closes and opens the database file again. redb latches any failed
    /// write (a full disk, an I/O error): every later operation returns
    /// `PreviousIo` until the database is closed and opened again, which
    /// also recovers the file to its last commit. The first operation after
    /// an I/O error calls this, whichever component makes it; if the file
    /// cannot be opened now (still no space for recovery), the store stays
    /// closed and the next operation tries again.
    ///
    /// # Errors
    /// The open's failure.
    pub fn reopen(&self) -> Result<(), redb::Error> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        // Closed first: redb locks the file to one open database.
        *guard = None;
        *guard = Some(open_db(&self.path, std::sync::Arc::new(|_| {}))?);
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tracing::info!(path = %self.path.display(), "Store reopened.");
        Ok(())
    }

    /// Whether every table exists (read transaction only).
    fn has_tables(&self) -> bool {
        let Ok(db) = self.lock_db() else {
            return false;
        };
        let Ok(txn) = db.begin_read() else {
            return false;
        };
        txn.open_table(SAMPLES).is_ok()
            && txn.open_table(COUNTERS).is_ok()
            && txn.open_table(MODELS).is_ok()
            && txn.open_table(STATE).is_ok()
            && txn.open_table(EVENTS).is_ok()
            && txn.open_table(BY_TIME).is_ok()
    }

    /// Drops the `dedup` table of a store written before the in-memory
    /// dedup index, if there is one. Best effort: on failure (a full disk)
    /// it is left, unread, and dropped at a later open.
    fn drop_dedup_table(&self) {
        let has = (|| -> Result<bool, redb::Error> {
            let db = self.lock_db()?;
            let txn = db.begin_read()?;
            let has = txn.open_table(DEDUP).is_ok();
            Ok(has)
        })();
        if !matches!(has, Ok(true)) {
            return;
        }
        let dropped = (|| -> Result<(), redb::Error> {
            let db = self.lock_db()?;
            let txn = db.begin_write()?;
            txn.delete_table(DEDUP)?;
            txn.commit()?;
            Ok(())
        })();
        match dropped {
            Ok(()) => {
                tracing::info!(path = %self.path.display(), "Store: the dedup table of an earlier version dropped (deduplication now reads the samples' digests).")
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "Store: the dedup table of an earlier version could not be dropped now; it is unused and dropped at a later start.")
            }
        }
    }

    /// Bytes free for an unprivileged writer on the file system that holds
    /// the store (`statvfs(3)`: `f_bavail * f_frsize`).
    ///
    /// # Errors
    /// The `statvfs` failure (the directory vanished, …).
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        free_bytes(&self.path)
    }

    /// Model writes ([`Store::put_model`]: trainings, uploads, the fleet's
    /// models) are refused with [`StoreError::BelowFloor`] when the file
    /// system would keep fewer than `bytes` free after them, as ingest stops
    /// acknowledging below `store.min_free_bytes`: the floor leaves room for
    /// retention and redb's own writes. 0: no floor.
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn db_err(&self, op: &'static str) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |source| {
            if matches!(source, redb::Error::Io(_) | redb::Error::PreviousIo) {
                self.needs_reopen
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            StoreError::Db {
                path: self.path.clone(),
                op,
                source: Box::new(source),
            }
        }
    }

    fn corrupt(&self, op: &'static str, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            op,
            reason: reason.to_string(),
        }
    }

    /// Appends a batch in one durable commit. A sample marked `dedup` whose
    /// (pipeline, digest) is already stored, in an earlier batch or earlier in
    /// this one, is skipped.
    ///
    /// Returns, per input sample, its sequence number or `None` for a
    /// duplicate.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; then nothing of the batch is stored.
    pub fn append(&self, batch: &[NewSample]) -> Result<Vec<Option<u64>>, StoreError> {
        self.write_batch(batch, &[]).map(|w| w.seqs)
    }

    /// Applies late labels in one durable commit. Each is matched to a stored
    /// sample by its seq or by (device, timestamp ms); returns, per label, the
    /// seq it was applied to, or `None` when no stored sample matches. A
    /// sample that was unlabelled counts towards `labelled_total`.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; then no label was applied.
    pub fn apply_labels(&self, labels: &[LateLabel]) -> Result<Vec<Option<u64>>, StoreError> {
        self.write_batch(&[], labels).map(|w| w.labels)
    }

    /// The writer's commit: appends `samples` as [`Store::append`] does, then
    /// applies `labels` as [`Store::apply_labels`] does (so a label can find a
    /// sample of the same batch), in one durable commit (three fdatasyncs: quick repair commits in two phases).
    ///
    /// Each pipeline's counters are read once and written once per commit,
    /// and each record is encoded from the caller's sample (no copy) into
    /// one reused buffer.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails; then nothing of it is stored.
    pub fn write_batch(
        &self,
        samples: &[NewSample],
        labels: &[LateLabel],
    ) -> Result<Written, StoreError> {
        let e = self.db_err(if samples.is_empty() {
            "apply_labels"
        } else {
            "append"
        });
        let mut index = self
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let db = self.lock_db().map_err(&e)?;
        let opened = self.opened.load(std::sync::atomic::Ordering::Acquire);
        if index.opened != opened {
            index.pipelines.clear();
            index.opened = opened;
        }
        let txn = db.begin_write().map_err(|x| e(x.into()))?;
        let mut added = Vec::new();
        let done = self
            .write_in(&txn, &mut index, &mut added, samples, labels)
            .and_then(|w| {
                txn.commit().map_err(|x| e(x.into()))?;
                Ok(w)
            });
        if done.is_err() {
            // Nothing of the transaction is stored: neither are its digests.
            for (p, d) in added {
                if let Some(set) = index.pipelines.get_mut(p) {
                    set.remove(&d);
                }
            }
        }
        let (seqs, applied, newly_labelled, named) = done?;
        Ok(Written {
            seqs,
            labels: applied,
            newly_labelled,
            counts: named
                .into_iter()
                .map(|(p, (next_seq, samples, labelled_total))| {
                    (
                        p.to_string(),
                        Counts {
                            next_seq,
                            samples,
                            labelled_total,
                        },
                    )
                })
                .collect(),
        })
    }

    /// [`Store::write_batch`]'s writes in `txn`: per sample its seq (or
    /// `None`), per label its seq (or `None`) and whether its sample was
    /// unlabelled, and the counters written.
    /// Digests new to the dedup index are added to it and listed in
    /// `added`, for the caller to take out again if the commit fails.
    #[allow(clippy::type_complexity)]
    fn write_in<'a>(
        &self,
        txn: &redb::WriteTransaction,
        index: &mut DedupIndex,
        added: &mut Vec<(&'a str, u128)>,
        samples: &'a [NewSample],
        labels: &'a [LateLabel],
    ) -> Result<
        (
            Vec<Option<u64>>,
            Vec<Option<u64>>,
            Vec<bool>,
            Vec<(&'a str, (u64, u64, u64))>,
        ),
        StoreError,
    > {
        let e = self.db_err(if samples.is_empty() {
            "apply_labels"
        } else {
            "append"
        });
        let mut seqs = Vec::with_capacity(samples.len());
        let mut applied = Vec::with_capacity(labels.len());
        let mut newly_labelled = Vec::with_capacity(labels.len());
        // Per pipeline: (next_seq, count, labelled_total), written at the end.
        let mut named: Vec<(&str, (u64, u64, u64))> = Vec::new();
        {
            let mut counters = txn.open_table(COUNTERS).map_err(|x| e(x.into()))?;
            let counter =
                |p, named: &mut Vec<_>| counter_of(&counters, p, named).map_err(|x| e(x.into()));
            if !samples.is_empty() {
                let mut table = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
                let mut by_time = txn.open_table(BY_TIME).map_err(|x| e(x.into()))?;
                let mut bytes = Vec::with_capacity(256);
                // The set of the pipeline of the sample before: looked up
                // again only when the pipeline changes (a batch is mostly
                // one pipeline's), not hashed by name per sample.
                let mut current: Option<(&str, &mut DigestSet)> = None;
                for new in samples {
                    let p = new.pipeline.as_str();
                    if current.as_ref().is_none_or(|(q, _)| *q != p) {
                        if !index.pipelines.contains_key(p) {
                            let set = self.digests_of(&table, p)?;
                            index.pipelines.insert(p.to_string(), set);
                        }
                        let set = index
                            .pipelines
                            .get_mut(p)
                            .ok_or_else(|| self.corrupt("append", "dedup index not loaded"))?;
                        current = Some((p, set));
                    }
                    let Some((_, set)) = current.as_mut() else {
                        return Err(self.corrupt("append", "dedup index not loaded"));
                    };
                    // A digest is recorded for every stored sample; only a
                    // sample marked `dedup` is skipped when it is known.
                    if set.insert(new.digest) {
                        added.push((p, new.digest));
                    } else if new.dedup {
                        seqs.push(None);
                        continue;
                    }
                    let i = counter(p, &mut named)?;
                    let (next, count, labelled) = named[i].1;
                    bytes.clear();
                    let record = StoredSampleRef {
                        digest: new.digest,
                        sample: &new.sample,
                    };
                    bytes = postcard::to_extend(&record, bytes)
                        .map_err(|x| self.corrupt("append", x))?;
                    table
                        .insert((p, next), bytes.as_slice())
                        .map_err(|x| e(x.into()))?;
                    by_time
                        .insert(
                            (p, new.sample.device.as_str(), new.sample.timestamp_ms),
                            next,
                        )
                        .map_err(|x| e(x.into()))?;
                    named[i].1 = (
                        next + 1,
                        count + 1,
                        labelled + u64::from(new.sample.label.is_some()),
                    );
                    seqs.push(Some(next));
                }
            }
            if !labels.is_empty() {
                let mut table = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
                let by_time = txn.open_table(BY_TIME).map_err(|x| e(x.into()))?;
                for l in labels {
                    let p = l.pipeline.as_str();
                    let seq = match &l.key {
                        LabelKey::Seq(seq) => Some(*seq),
                        LabelKey::DeviceTime {
                            device,
                            timestamp_ms,
                        } => by_time
                            .get((p, device.as_str(), *timestamp_ms))
                            .map_err(|x| e(x.into()))?
                            .map(|g| g.value()),
                    };
                    let Some(seq) = seq else {
                        applied.push(None);
                        newly_labelled.push(false);
                        continue;
                    };
                    let record = table
                        .get((p, seq))
                        .map_err(|x| e(x.into()))?
                        .map(|g| g.value().to_vec());
                    let Some(bytes) = record else {
                        applied.push(None);
                        newly_labelled.push(false);
                        continue;
                    };
                    let mut record: StoredSample = postcard::from_bytes(&bytes)
                        .map_err(|x| self.corrupt("apply_labels", x))?;
                    let newly = record.sample.label.is_none();
                    record.sample.label = Some(l.label.clone());
                    let bytes = postcard::to_allocvec(&record)
                        .map_err(|x| self.corrupt("apply_labels", x))?;
                    table
                        .insert((p, seq), bytes.as_slice())
                        .map_err(|x| e(x.into()))?;
                    if newly {
                        let i = counter(p, &mut named)?;
                        named[i].1 .2 += 1;
                    }
                    applied.push(Some(seq));
                    newly_labelled.push(newly);
                }
            }
            for (p, c) in &named {
                counters.insert(*p, *c).map_err(|x| e(x.into()))?;
            }
        }
        Ok((seqs, applied, newly_labelled, named))
    }

    /// The digests of `pipeline`'s stored samples (the dedup index's set),
    /// read from the first field of each record.
    fn digests_of(
        &self,
        table: &redb::Table<(&'static str, u64), &'static [u8]>,
        pipeline: &str,
    ) -> Result<DigestSet, StoreError> {
        let e = self.db_err("append: read the digests");
        let started = std::time::Instant::now();
        let mut set = DigestSet::default();
        for item in table
            .range((pipeline, 0)..=(pipeline, u64::MAX))
            .map_err(|x| e(x.into()))?
        {
            let (_, v) = item.map_err(|x| e(x.into()))?;
            let (digest, _) = postcard::take_from_bytes::<u128>(v.value())
                .map_err(|x| self.corrupt("append: read the digests", x))?;
            set.insert(digest);
            if set.len() % PROGRESS_EVERY == 0 {
                if let Some(progress) = self.progress.get() {
                    progress();
                }
            }
        }
        let took = started.elapsed();
        if took >= std::time::Duration::from_secs(1) {
            tracing::info!(
                pipeline,
                digests = set.len(),
                seconds = took.as_secs_f64(),
                "Read the pipeline's dedup index from its stored samples (its first write since the store opened)."
            );
        }
        Ok(set)
    }

    /// The pipeline's counts (zeros for a pipeline never written).
    ///
    /// # Errors
    /// [`StoreError`] on a read failure.
    pub fn counts(&self, pipeline: &str) -> Result<Counts, StoreError> {
        let e = self.db_err("counts");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(COUNTERS).map_err(|x| e(x.into()))?;
        let (next_seq, samples, labelled_total) = table
            .get(pipeline)
            .map_err(|x| e(x.into()))?
            .map(|g| g.value())
            .unwrap_or((0, 0, 0));
        Ok(Counts {
            next_seq,
            samples,
            labelled_total,
        })
    }

    /// Samples of `pipeline` with `seq` in `range`, in seq order, at most
    /// `limit` of them.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    pub fn scan(
        &self,
        pipeline: &str,
        range: std::ops::Range<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, StoredSample)>, StoreError> {
        let e = self.db_err("scan");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        if range.is_empty() {
            return Ok(out);
        }
        let iter = table
            .range((pipeline, range.start)..(pipeline, range.end))
            .map_err(|x| e(x.into()))?;
        for item in iter.take(limit) {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            let record: StoredSample =
                postcard::from_bytes(v.value()).map_err(|x| self.corrupt("scan", x))?;
            out.push((k.value().1, record));
        }
        Ok(out)
    }

    /// Every labelled sample of `pipeline`, in seq order.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    pub fn labelled(&self, pipeline: &str) -> Result<Vec<(u64, Sample)>, StoreError> {
        let e = self.db_err("labelled");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for item in table
            .range((pipeline, 0)..=(pipeline, u64::MAX))
            .map_err(|x| e(x.into()))?
        {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            let record: StoredSample =
                postcard::from_bytes(v.value()).map_err(|x| self.corrupt("labelled", x))?;
            if record.sample.label.is_some() {
                out.push((k.value().1, record.sample));
            }
        }
        Ok(out)
    }

    /// The labelled samples of `pipeline` a training takes, `(reservoir,
    /// window)`, each with its seq: the newest `window` (every one when 0,
    /// with an empty reservoir) and [`reservoir_pick`]'s seeded uniform
    /// sample of `reservoir` older ones, in time order (`timestamp_ms`,
    /// ties in pick order), as `monitor::retrain::training_parts` picks
    /// them from [`Store::labelled`]. Only the seqs of the labelled samples
    /// are held while choosing (8 bytes each, not a decoded sample of a few
    /// hundred): with `window` set, a training's memory no longer grows
    /// with everything stored.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    #[allow(clippy::type_complexity)]
    pub fn labelled_parts(
        &self,
        pipeline: &str,
        window: usize,
        reservoir: usize,
        seed: u64,
    ) -> Result<(Vec<(u64, Sample)>, Vec<(u64, Sample)>), StoreError> {
        if window == 0 {
            // Every labelled sample: one pass, nothing to choose.
            return Ok((Vec::new(), self.labelled(pipeline)?));
        }
        let e = self.db_err("labelled_parts");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
        let decode = |bytes: &[u8]| {
            postcard::from_bytes::<StoredSample>(bytes)
                .map_err(|x| self.corrupt("labelled_parts", x))
        };
        let seqs = self.labelled_seqs_in(&table, pipeline, "labelled_parts")?;
        let (older, recent) = seqs.split_at(seqs.len().saturating_sub(window));
        let fetch = |seq: u64| -> Result<(u64, Sample), StoreError> {
            let v = table
                .get((pipeline, seq))
                .map_err(|x| e(x.into()))?
                .ok_or_else(|| self.corrupt("labelled_parts", format!("seq {seq} vanished")))?;
            Ok((seq, decode(v.value())?.sample))
        };
        let reservoir_part = if older.len() > reservoir {
            let mut picked = reservoir_pick(older.len(), reservoir, seed)
                .into_iter()
                .map(|i| fetch(older[i]))
                .collect::<Result<Vec<_>, _>>()?;
            picked.sort_by_key(|(_, s)| s.timestamp_ms);
            picked
        } else {
            older
                .iter()
                .map(|&seq| fetch(seq))
                .collect::<Result<_, _>>()?
        };
        let mut window_part = Vec::with_capacity(recent.len());
        if let Some(&first) = recent.first() {
            for item in table
                .range((pipeline, first)..=(pipeline, u64::MAX))
                .map_err(|x| e(x.into()))?
            {
                let (k, v) = item.map_err(|x| e(x.into()))?;
                let record = decode(v.value())?;
                if record.sample.label.is_some() {
                    window_part.push((k.value().1, record.sample));
                }
            }
        }
        Ok((reservoir_part, window_part))
    }

    /// The seqs of `pipeline`'s labelled samples, in seq order: 8 bytes
    /// each, what a training holds to choose its samples before it reads
    /// them ([`Store::labelled_parts`], and a temporal pipeline's parts in
    /// `monitor::retrain`).
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    pub fn labelled_seqs(&self, pipeline: &str) -> Result<Vec<u64>, StoreError> {
        let e = self.db_err("labelled_seqs");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
        self.labelled_seqs_in(&table, pipeline, "labelled_seqs")
    }

    /// [`Store::labelled_seqs`] in an open read of `samples`.
    fn labelled_seqs_in(
        &self,
        table: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
        pipeline: &str,
        op: &'static str,
    ) -> Result<Vec<u64>, StoreError> {
        let e = self.db_err(op);
        let mut seqs = Vec::new();
        for item in table
            .range((pipeline, 0)..=(pipeline, u64::MAX))
            .map_err(|x| e(x.into()))?
        {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            let record: StoredSample =
                postcard::from_bytes(v.value()).map_err(|x| self.corrupt(op, x))?;
            if record.sample.label.is_some() {
                seqs.push(k.value().1);
            }
        }
        Ok(seqs)
    }

    /// The devices of `pipeline` whose newest reading is the most recent,
    /// at most `max` of them, with the seq of that reading, least recent
    /// first. Read from the time index, one device at a time (a device
    /// that sent nothing for a long while is found as fast as a busy one);
    /// at most `max` are held while choosing. A device's newest reading is
    /// its newest timestamp.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure.
    pub fn recent_devices(
        &self,
        pipeline: &str,
        max: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let e = self.db_err("recent_devices");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(BY_TIME).map_err(|x| e(x.into()))?;
        // The `max` most recent so far: (seq, device), a min-heap.
        let mut newest = std::collections::BinaryHeap::new();
        let mut from = String::new();
        loop {
            let first = table
                .range((pipeline, from.as_str(), i64::MIN)..)
                .map_err(|x| e(x.into()))?
                .next()
                .transpose()
                .map_err(|x| e(x.into()))?;
            let Some((key, _)) = first else { break };
            let (p, device, _) = key.value();
            if p != pipeline {
                break;
            }
            let device = device.to_string();
            let last = table
                .range(
                    (pipeline, device.as_str(), i64::MIN)..=(pipeline, device.as_str(), i64::MAX),
                )
                .map_err(|x| e(x.into()))?
                .next_back()
                .transpose()
                .map_err(|x| e(x.into()))?
                .map(|(_, seq)| seq.value());
            // The smallest name after `device`: the next device's first key.
            from = format!("{device}\0");
            if let Some(seq) = last {
                newest.push(std::cmp::Reverse((seq, device)));
                if newest.len() > max {
                    newest.pop();
                }
            }
        }
        let mut out: Vec<(String, u64)> = newest
            .into_iter()
            .map(|std::cmp::Reverse((seq, device))| (device, seq))
            .collect();
        out.sort_by_key(|(_, seq)| *seq);
        Ok(out)
    }

    /// The newest `n` readings of `device` in `pipeline` (by timestamp,
    /// from the time index), in seq order.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    pub fn newest_of_device(
        &self,
        pipeline: &str,
        device: &str,
        n: usize,
    ) -> Result<Vec<(u64, StoredSample)>, StoreError> {
        let e = self.db_err("newest_of_device");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let by_time = txn.open_table(BY_TIME).map_err(|x| e(x.into()))?;
        let samples = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
        let mut seqs = Vec::with_capacity(n.min(1 << 16));
        for item in by_time
            .range((pipeline, device, i64::MIN)..=(pipeline, device, i64::MAX))
            .map_err(|x| e(x.into()))?
            .rev()
            .take(n)
        {
            seqs.push(item.map_err(|x| e(x.into()))?.1.value());
        }
        seqs.sort_unstable();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            // Gone with retention since the index was read: skipped.
            if let Some(v) = samples.get((pipeline, seq)).map_err(|x| e(x.into()))? {
                let record: StoredSample = postcard::from_bytes(v.value())
                    .map_err(|x| self.corrupt("newest_of_device", x))?;
                out.push((seq, record));
            }
        }
        Ok(out)
    }

    /// A device's past before a point, from the time index: the newest `n`
    /// readings of `device` in `pipeline` with a seq below `before` and a
    /// timestamp at most `until_ms` (newest by timestamp), and, with
    /// `label_lookback` > 0 and none of those `n` labelled, the newest
    /// labelled reading among the next `label_lookback` older ones; all in
    /// seq order, at most `n + 1`.
    /// What a temporal pipeline's state needs of a device whose readings
    /// lie before the range it scans (`before`: the range's first seq).
    ///
    /// The time index holds one reading per device and timestamp (the
    /// newest by seq), so readings sharing a timestamp with a later one
    /// are not found, nor readings deleted by retention. The index is
    /// walked back from `until_ms`, the entries with seqs at or after
    /// `before` passed over: a caller whose point has a timestamp passes
    /// it, so that a device's readings after the point are not walked
    /// (a reading before `before` with a later timestamp than `until_ms`,
    /// from a clock that went back, is then not found). At most
    /// `n + label_lookback` readings are decoded.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    pub fn newest_of_device_before(
        &self,
        pipeline: &str,
        device: &str,
        before: u64,
        until_ms: i64,
        n: usize,
        label_lookback: usize,
    ) -> Result<Vec<(u64, StoredSample)>, StoreError> {
        let op = "newest_of_device_before";
        let e = self.db_err(op);
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let by_time = txn.open_table(BY_TIME).map_err(|x| e(x.into()))?;
        let samples = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
        let mut out = Vec::with_capacity(n.min(1 << 16) + 1);
        let (mut labelled, mut looked) = (false, 0usize);
        for item in by_time
            .range((pipeline, device, i64::MIN)..=(pipeline, device, until_ms))
            .map_err(|x| e(x.into()))?
            .rev()
        {
            if out.len() >= n && (labelled || looked >= label_lookback) {
                break;
            }
            let seq = item.map_err(|x| e(x.into()))?.1.value();
            if seq >= before {
                continue;
            }
            // Gone with retention since the index was read: skipped.
            let Some(v) = samples.get((pipeline, seq)).map_err(|x| e(x.into()))? else {
                continue;
            };
            let record: StoredSample =
                postcard::from_bytes(v.value()).map_err(|x| self.corrupt(op, x))?;
            let has_label = record.sample.label.is_some();
            if out.len() < n {
                labelled |= has_label;
                out.push((seq, record));
            } else {
                looked += 1;
                if has_label {
                    labelled = true;
                    out.push((seq, record));
                }
            }
        }
        out.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(out)
    }

    /// The newest `n` labelled samples of `pipeline` with `seq <= last`, in
    /// seq order, read backwards from `last` (not the whole pipeline: the
    /// learner's data-drift reference, looked up every `drift.window`
    /// samples).
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    pub fn labelled_before(
        &self,
        pipeline: &str,
        last: u64,
        n: usize,
    ) -> Result<Vec<(u64, Sample)>, StoreError> {
        let e = self.db_err("labelled_before");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
        let mut out = Vec::with_capacity(n.min(1 << 16));
        let iter = table
            .range((pipeline, 0)..=(pipeline, last))
            .map_err(|x| e(x.into()))?;
        for item in iter.rev() {
            if out.len() >= n {
                break;
            }
            let (k, v) = item.map_err(|x| e(x.into()))?;
            let record: StoredSample =
                postcard::from_bytes(v.value()).map_err(|x| self.corrupt("labelled_before", x))?;
            if record.sample.label.is_some() {
                out.push((k.value().1, record.sample));
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Deletes the oldest samples of `pipeline` beyond `keep`, at most
    /// `chunk` per transaction. `keep == 0` keeps everything. Returns how many
    /// were deleted.
    ///
    /// # Errors
    /// [`StoreError`]; samples deleted by earlier chunks stay deleted.
    pub fn enforce_retention(
        &self,
        pipeline: &str,
        keep: u64,
        chunk: u64,
    ) -> Result<u64, StoreError> {
        if keep == 0 {
            return Ok(0);
        }
        let e = self.db_err("retention");
        let mut deleted = 0;
        loop {
            let mut index = self
                .index
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let db = self.lock_db().map_err(&e)?;
            let txn = db.begin_write().map_err(|x| e(x.into()))?;
            let n;
            let mut doomed = Vec::new();
            {
                let mut samples = txn.open_table(SAMPLES).map_err(|x| e(x.into()))?;
                let mut counters = txn.open_table(COUNTERS).map_err(|x| e(x.into()))?;
                let Some((next, count, labelled)) = counters
                    .get(pipeline)
                    .map_err(|x| e(x.into()))?
                    .map(|g| g.value())
                else {
                    return Ok(deleted);
                };
                if count <= keep {
                    return Ok(deleted);
                }
                let take = (count - keep).min(chunk);
                doomed.reserve(take as usize);
                for item in samples
                    .range((pipeline, 0)..=(pipeline, u64::MAX))
                    .map_err(|x| e(x.into()))?
                    .take(take as usize)
                {
                    let (k, v) = item.map_err(|x| e(x.into()))?;
                    let record: StoredSample = postcard::from_bytes(v.value())
                        .map_err(|x| self.corrupt("retention", x))?;
                    doomed.push((
                        k.value().1,
                        record.digest,
                        record.sample.device,
                        record.sample.timestamp_ms,
                    ));
                }
                let mut by_time = txn.open_table(BY_TIME).map_err(|x| e(x.into()))?;
                for (seq, _, device, ts) in &doomed {
                    samples.remove((pipeline, *seq)).map_err(|x| e(x.into()))?;
                    let key = (pipeline, device.as_str(), *ts);
                    if by_time
                        .get(key)
                        .map_err(|x| e(x.into()))?
                        .map(|g| g.value())
                        == Some(*seq)
                    {
                        by_time.remove(key).map_err(|x| e(x.into()))?;
                    }
                }
                n = doomed.len() as u64;
                counters
                    .insert(pipeline, (next, count - n, labelled))
                    .map_err(|x| e(x.into()))?;
            }
            txn.commit().map_err(|x| e(x.into()))?;
            // A deleted message's digest may be stored again: it is new
            // data now.
            if index.opened == self.opened.load(std::sync::atomic::Ordering::Acquire) {
                if let Some(set) = index.pipelines.get_mut(pipeline) {
                    for (_, digest, _, _) in &doomed {
                        set.remove(digest);
                    }
                }
            }
            drop(index);
            deleted += n;
            if n == 0 {
                return Ok(deleted);
            }
        }
    }

    /// Makes `cards` hold exactly the cards of `models`: checked by their
    /// lengths (redb keeps each table's length), rebuilt from `models` in
    /// one commit when they differ (a store written before the table, or by
    /// an earlier edgeloop since). Every edgeloop before the table only
    /// added models, so their writes always change the length. Best effort:
    /// on failure (a full disk) card reads and version listings read
    /// `models` until a later open indexes them.
    fn index_cards(&self) {
        use std::sync::atomic::Ordering;
        let indexed = (|| -> Result<bool, redb::Error> {
            let db = self.lock_db()?;
            let txn = db.begin_read()?;
            let models = txn.open_table(MODELS)?.len()?;
            match txn.open_table(CARDS) {
                Ok(cards) => Ok(cards.len()? == models),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })();
        if matches!(indexed, Ok(true)) {
            self.cards_indexed.store(true, Ordering::Release);
            return;
        }
        let rebuilt = (|| -> Result<u64, redb::Error> {
            let db = self.lock_db()?;
            let txn = db.begin_write()?;
            txn.delete_table(CARDS)?;
            let n = {
                let models = txn.open_table(MODELS)?;
                let mut cards = txn.open_table(CARDS)?;
                for item in models.iter()? {
                    let (key, value) = item?;
                    let (pipeline, version) = key.value();
                    let card = card_view(value.value())
                        .map_err(|e| redb::Error::Corrupted(format!("model record: {e}")))?;
                    cards.insert((pipeline, version), card)?;
                }
                cards.len()?
            };
            txn.commit()?;
            Ok(n)
        })();
        match rebuilt {
            Ok(n) => {
                self.cards_indexed.store(true, Ordering::Release);
                tracing::info!(path = %self.path.display(), cards = n, "Store: model cards indexed (card reads no longer load the models).");
            }
            Err(e) => {
                if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
                    // A failed write latches redb until it is opened again.
                    self.needs_reopen.store(true, Ordering::Release);
                }
                tracing::warn!(path = %self.path.display(), error = %e, "Store: model cards not indexed now; card reads load the models until a later start indexes them.");
            }
        }
    }

    fn cards_indexed(&self) -> bool {
        self.cards_indexed
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Refuses a model write of `needed` bytes that would leave less than
    /// `store.min_free_bytes` free ([`StoreError::BelowFloor`]): the floor
    /// is what retention and redb's own writes keep. An unreadable free
    /// space leaves the write to the file system.
    fn above_floor(&self, op: &'static str, needed: usize) -> Result<(), StoreError> {
        let floor = self
            .min_free_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if floor == 0 {
            return Ok(());
        }
        match self.free_bytes() {
            Ok(free) if free.saturating_sub(needed as u64) < floor => Err(StoreError::BelowFloor {
                path: self.path.clone(),
                op,
                free,
                needed: needed as u64,
                floor,
            }),
            _ => Ok(()),
        }
    }

    /// Stores model `version` of `pipeline` and, when `serve` holds an event
    /// (JSON), makes it the serving version and appends the event to the
    /// timeline, all in one commit (so the serving pointer always names a
    /// complete, stored model).
    ///
    /// # Errors
    /// [`StoreError`]; then neither the model nor the pointer changed.
    pub fn put_model(
        &self,
        pipeline: &str,
        version: u32,
        model: &StoredModel,
        serve: Option<&str>,
    ) -> Result<(), StoreError> {
        let e = self.db_err("put_model");
        let bytes = postcard::to_allocvec(model).map_err(|x| self.corrupt("put_model", x))?;
        self.above_floor("put_model", bytes.len())?;
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut models = txn.open_table(MODELS).map_err(|x| e(x.into()))?;
            models
                .insert((pipeline, version), bytes.as_slice())
                .map_err(|x| e(x.into()))?;
            let mut cards = txn.open_table(CARDS).map_err(|x| e(x.into()))?;
            cards
                .insert((pipeline, version), model.card_json.as_str())
                .map_err(|x| e(x.into()))?;
            if let Some(event) = serve {
                Self::serve_in(&txn, pipeline, version, event).map_err(|x| e(x))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// Makes stored `version` the serving one and appends `event` to the
    /// timeline, in one commit. Returns false (and changes nothing) when the
    /// version is not stored.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails.
    pub fn set_serving(
        &self,
        pipeline: &str,
        version: u32,
        event: &str,
    ) -> Result<bool, StoreError> {
        let e = self.db_err("set_serving");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_write().map_err(|x| e(x.into()))?;
        {
            let models = txn.open_table(MODELS).map_err(|x| e(x.into()))?;
            if models
                .get((pipeline, version))
                .map_err(|x| e(x.into()))?
                .is_none()
            {
                return Ok(false);
            }
        }
        Self::serve_in(&txn, pipeline, version, event).map_err(|x| e(x))?;
        txn.commit().map_err(|x| e(x.into()))?;
        Ok(true)
    }

    fn serve_in(
        txn: &redb::WriteTransaction,
        pipeline: &str,
        version: u32,
        event: &str,
    ) -> Result<(), redb::Error> {
        let mut state = txn.open_table(STATE)?;
        let key = serving_key(pipeline);
        state.insert(key.as_str(), version.to_le_bytes().as_slice())?;
        Self::event_in(txn, pipeline, event)
    }

    /// Appends `event` to the timeline of `pipeline` and drops what falls
    /// beyond its newest [`TIMELINE_EVENTS`] (a daemon serving online
    /// snapshots adds one a minute: the table would otherwise grow for as
    /// long as the daemon runs).
    fn event_in(
        txn: &redb::WriteTransaction,
        pipeline: &str,
        event: &str,
    ) -> Result<(), redb::Error> {
        let mut events = txn.open_table(EVENTS)?;
        let next = events
            .range((pipeline, 0)..=(pipeline, u64::MAX))?
            .next_back()
            .transpose()?
            .map_or(0, |(k, _)| k.value().1 + 1);
        events.insert((pipeline, next), event.as_bytes())?;
        if let Some(first_kept) = (next + 1).checked_sub(TIMELINE_EVENTS) {
            // One key per append once full; every older key at once in a
            // store written before the cap.
            let old: Vec<u64> = events
                .range((pipeline, 0)..(pipeline, first_kept))?
                .map(|item| item.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for seq in old {
                events.remove((pipeline, seq))?;
            }
        }
        Ok(())
    }

    /// Appends an event (JSON) to the timeline in its own commit, without
    /// touching the serving pointer; with `model`, stores that version too
    /// in the same commit (a refused challenger).
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails.
    pub fn append_event(
        &self,
        pipeline: &str,
        event: &str,
        model: Option<(u32, &StoredModel)>,
    ) -> Result<(), StoreError> {
        let e = self.db_err("append_event");
        let bytes = match model {
            Some((_, model)) => {
                let bytes =
                    postcard::to_allocvec(model).map_err(|x| self.corrupt("append_event", x))?;
                self.above_floor("append_event", bytes.len())?;
                Some(bytes)
            }
            None => None,
        };
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_write().map_err(|x| e(x.into()))?;
        if let (Some((version, model)), Some(bytes)) = (model, bytes) {
            let mut models = txn.open_table(MODELS).map_err(|x| e(x.into()))?;
            models
                .insert((pipeline, version), bytes.as_slice())
                .map_err(|x| e(x.into()))?;
            let mut cards = txn.open_table(CARDS).map_err(|x| e(x.into()))?;
            cards
                .insert((pipeline, version), model.card_json.as_str())
                .map_err(|x| e(x.into()))?;
        }
        Self::event_in(&txn, pipeline, event).map_err(|x| e(x))?;
        txn.commit().map_err(|x| e(x.into()))
    }

    /// The timeline of `pipeline` (JSON events, oldest first).
    ///
    /// # Errors
    /// [`StoreError`] on a read failure.
    pub fn events(&self, pipeline: &str) -> Result<Vec<String>, StoreError> {
        let e = self.db_err("events");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(EVENTS).map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        for item in table
            .range((pipeline, 0)..=(pipeline, u64::MAX))
            .map_err(|x| e(x.into()))?
        {
            out.push(
                String::from_utf8_lossy(item.map_err(|x| e(x.into()))?.1.value()).into_owned(),
            );
        }
        Ok(out)
    }

    /// Model `version` of `pipeline`, if stored.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    pub fn get_model(
        &self,
        pipeline: &str,
        version: u32,
    ) -> Result<Option<StoredModel>, StoreError> {
        let e = self.db_err("get_model");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(MODELS).map_err(|x| e(x.into()))?;
        let Some(guard) = table.get((pipeline, version)).map_err(|x| e(x.into()))? else {
            return Ok(None);
        };
        postcard::from_bytes(guard.value())
            .map(Some)
            .map_err(|x| self.corrupt("get_model", x))
    }

    /// The card (JSON) of every stored version of `pipeline`, ascending by
    /// version, read in one transaction from the `cards` table, so the
    /// models (megabytes each for a forest) are not read at all: the
    /// dashboard reads every card every 5 s, and `models.keep_versions`
    /// keeps 50 models by default. Until the cards are indexed
    /// ([`Store::index_cards`]) each `models` record is decoded in place,
    /// its model neither copied nor allocated.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure or an undecodable record.
    pub fn model_cards(&self, pipeline: &str) -> Result<Vec<(u32, String)>, StoreError> {
        let e = self.db_err("model_cards");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let mut out = Vec::new();
        if self.cards_indexed() {
            let table = txn.open_table(CARDS).map_err(|x| e(x.into()))?;
            for item in table
                .range((pipeline, 0)..=(pipeline, u32::MAX))
                .map_err(|x| e(x.into()))?
            {
                let (key, value) = item.map_err(|x| e(x.into()))?;
                out.push((key.value().1, value.value().to_owned()));
            }
            return Ok(out);
        }
        let table = txn.open_table(MODELS).map_err(|x| e(x.into()))?;
        for item in table
            .range((pipeline, 0)..=(pipeline, u32::MAX))
            .map_err(|x| e(x.into()))?
        {
            let (key, value) = item.map_err(|x| e(x.into()))?;
            let card = card_view(value.value()).map_err(|x| self.corrupt("model_cards", x))?;
            out.push((key.value().1, card.to_owned()));
        }
        Ok(out)
    }

    /// Drops the model (ONNX bytes and parameters) of each of `versions` of
    /// `pipeline`, keeping its card, in one commit; returns the versions
    /// that had a model to drop.
    ///
    /// # Errors
    /// [`StoreError`] on a failed commit or an undecodable record (then
    /// nothing changed).
    pub fn drop_models(&self, pipeline: &str, versions: &[u32]) -> Result<Vec<u32>, StoreError> {
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let e = self.db_err("drop_models");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_write().map_err(|x| e(x.into()))?;
        let mut dropped = Vec::new();
        {
            let mut table = txn.open_table(MODELS).map_err(|x| e(x.into()))?;
            for &version in versions {
                let model: Option<StoredModel> =
                    match table.get((pipeline, version)).map_err(|x| e(x.into()))? {
                        Some(guard) => Some(
                            postcard::from_bytes(guard.value())
                                .map_err(|x| self.corrupt("drop_models", x))?,
                        ),
                        None => None,
                    };
                let Some(mut model) = model.filter(|m| !m.onnx.is_empty()) else {
                    continue;
                };
                model.onnx = Vec::new();
                model.params_json = String::new();
                let bytes =
                    postcard::to_allocvec(&model).map_err(|x| self.corrupt("drop_models", x))?;
                table
                    .insert((pipeline, version), bytes.as_slice())
                    .map_err(|x| e(x.into()))?;
                dropped.push(version);
            }
        }
        txn.commit().map_err(|x| e(x.into()))?;
        Ok(dropped)
    }

    /// Removes `versions` of `pipeline` (their cards with their models) and
    /// the state `keys` in one commit; returns how many versions were
    /// stored. Version numbers go on from the newest stored, so remove
    /// only older ones.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails (nothing removed).
    pub fn drop_cards(
        &self,
        pipeline: &str,
        versions: &[u32],
        keys: &[String],
    ) -> Result<usize, StoreError> {
        let e = self.db_err("drop_cards");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_write().map_err(|x| e(x.into()))?;
        let mut gone = 0;
        {
            let mut models = txn.open_table(MODELS).map_err(|x| e(x.into()))?;
            let mut cards = txn.open_table(CARDS).map_err(|x| e(x.into()))?;
            for &version in versions {
                gone += usize::from(
                    models
                        .remove((pipeline, version))
                        .map_err(|x| e(x.into()))?
                        .is_some(),
                );
                cards.remove((pipeline, version)).map_err(|x| e(x.into()))?;
            }
            let mut state = txn.open_table(STATE).map_err(|x| e(x.into()))?;
            for key in keys {
                state.remove(key.as_str()).map_err(|x| e(x.into()))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))?;
        Ok(gone)
    }

    /// Versions stored for `pipeline`, ascending.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure.
    pub fn model_versions(&self, pipeline: &str) -> Result<Vec<u32>, StoreError> {
        let e = self.db_err("model_versions");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        // The same keys; `cards` holds no models to read.
        fn keys<V: redb::Value + 'static>(
            table: &impl ReadableTable<(&'static str, u32), V>,
            pipeline: &str,
        ) -> Result<Vec<u32>, redb::StorageError> {
            table
                .range((pipeline, 0)..=(pipeline, u32::MAX))?
                .map(|item| item.map(|(k, _)| k.value().1))
                .collect()
        }
        if self.cards_indexed() {
            let table = txn.open_table(CARDS).map_err(|x| e(x.into()))?;
            return keys(&table, pipeline).map_err(|x| e(x.into()));
        }
        let table = txn.open_table(MODELS).map_err(|x| e(x.into()))?;
        keys(&table, pipeline).map_err(|x| e(x.into()))
    }

    /// Reserves the next model version number of `pipeline`: one more than
    /// both the newest stored version and the newest reserved in this
    /// process, decided under one lock, so the learner and model intake
    /// never number two versions alike. A reservation that is not stored
    /// should be handed back ([`Store::release_model_version`]); one that
    /// cannot be (another was reserved since) leaves a gap.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure.
    pub fn reserve_model_version(&self, pipeline: &str) -> Result<u32, StoreError> {
        let mut reserved = self
            .reserved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let after_stored = self
            .model_versions(pipeline)?
            .last()
            .map_or(1, |v| v.saturating_add(1));
        let next = reserved.get(pipeline).copied().unwrap_or(1);
        let version = after_stored.max(next);
        reserved.insert(pipeline.to_string(), version.saturating_add(1));
        Ok(version)
    }

    /// Hands back a reserved `version` that will not be stored (a failed
    /// training): the next reservation takes it again when none was made
    /// since.
    pub fn release_model_version(&self, pipeline: &str, version: u32) {
        let mut reserved = self
            .reserved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(next) = reserved.get_mut(pipeline) {
            if *next == version.saturating_add(1) {
                *next = version;
            }
        }
    }

    /// The serving version of `pipeline`, if one was ever promoted.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure.
    pub fn serving_version(&self, pipeline: &str) -> Result<Option<u32>, StoreError> {
        Ok(self
            .get_state(&serving_key(pipeline))?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map(u32::from_le_bytes))
    }

    /// A state value.
    ///
    /// # Errors
    /// [`StoreError`] on a read failure.
    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let e = self.db_err("get_state");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let table = txn.open_table(STATE).map_err(|x| e(x.into()))?;
        Ok(table
            .get(key)
            .map_err(|x| e(x.into()))?
            .map(|g| g.value().to_vec()))
    }

    /// Sets a state value in its own durable commit.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails.
    pub fn put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let e = self.db_err("put_state");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut table = txn.open_table(STATE).map_err(|x| e(x.into()))?;
            table.insert(key, value).map_err(|x| e(x.into()))?;
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// Sets several state values in one durable commit.
    ///
    /// # Errors
    /// [`StoreError`] when the commit fails (none of them is set).
    pub fn put_states(&self, entries: &[(&str, &[u8])]) -> Result<(), StoreError> {
        let e = self.db_err("put_states");
        let db = self.lock_db().map_err(&e)?;
        let txn = db.begin_write().map_err(|x| e(x.into()))?;
        {
            let mut table = txn.open_table(STATE).map_err(|x| e(x.into()))?;
            for (key, value) in entries {
                table.insert(*key, *value).map_err(|x| e(x.into()))?;
            }
        }
        txn.commit().map_err(|x| e(x.into()))
    }

    /// Digests in the dedup index of `pipeline`, `None` until its first
    /// write since the store was opened (tests: retention takes them out).
    pub fn dedup_len(&self, pipeline: &str) -> Option<usize> {
        let index = self
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        index.pipelines.get(pipeline).map(|set| set.len())
    }
}

/// redb's page cache, bytes. redb's default is 1 GiB, and its read cache
/// keeps what scans read up to that: a training that reads a million
/// samples (about 170 MiB of file) would keep them all, a third of a 0.5 GB
/// board. Writes do not need more: commits of 500-5,000 samples measured
/// the same with 16 MiB as with 1 GiB (BENCHMARKS.md, "Ingest throughput").
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// The card (JSON) of an encoded [`StoredModel`], borrowed from the record:
/// its ONNX bytes are skipped, neither copied nor allocated.
fn card_view(record: &[u8]) -> Result<&str, postcard::Error> {
    /// [`StoredModel`]'s first fields, in its order.
    #[derive(serde::Deserialize)]
    struct CardView<'a> {
        #[serde(borrow)]
        _onnx: &'a [u8],
        #[serde(borrow)]
        card_json: &'a str,
    }
    postcard::from_bytes::<CardView<'_>>(record).map(|v| v.card_json)
}

/// Hears the progress of redb's full repair at open, from 0.0 to 1.0
/// ([`Store::open_observed`]).
pub type RepairObserver = std::sync::Arc<dyn Fn(f64) + Send + Sync>;

/// Opens (or creates) the database file with [`CACHE_BYTES`] of cache.
///
/// A file that was not closed cleanly (a crash, SIGKILL, a power cut) is
/// recovered by redb at open. When its last commit recorded the allocator
/// state (quick repair: every commit of this store since it was made so,
/// [`DbGuard::begin_write`]) that is a read of a few pages. Otherwise (a
/// store last written by an edgeloop without it, or a damaged file) redb
/// runs its full repair: it reads every page of the file three times,
/// checksums it and rebuilds the allocator state, telling `observe` its
/// progress at 0, (0.3,) 0.6 and 0.9 of the way. Logged at warn when it
/// starts and at info at each step, with the seconds since the open.
fn open_db(path: &Path, observe: RepairObserver) -> Result<Database, redb::DatabaseError> {
    let shown = path.display().to_string();
    let started = std::time::Instant::now();
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_repair_callback(move |session| {
            let progress = session.progress();
            if progress == 0.0 {
                tracing::warn!(
                    path = %shown,
                    "The store was not closed cleanly and its last commit recorded no allocator state (written by an edgeloop before quick repair, or damaged): redb is repairing it, reading the whole file; the daemon starts when it is done."
                );
            } else {
                tracing::info!(
                    path = %shown,
                    progress_percent = (progress * 100.0).round() as u32,
                    elapsed_s = started.elapsed().as_secs_f64(),
                    "Repairing the store."
                );
            }
            observe(progress);
        })
        .create(path)
}

/// The index in `named` of pipeline `p`'s counters, read from the table the
/// first time.
fn counter_of<'a>(
    counters: &redb::Table<&str, (u64, u64, u64)>,
    p: &'a str,
    named: &mut Vec<(&'a str, (u64, u64, u64))>,
) -> Result<usize, redb::StorageError> {
    if let Some(i) = named.iter().position(|(q, _)| *q == p) {
        return Ok(i);
    }
    let c = counters.get(p)?.map(|g| g.value()).unwrap_or((0, 0, 0));
    named.push((p, c));
    Ok(named.len() - 1)
}

fn serving_key(pipeline: &str) -> String {
    format!("serving/{pipeline}")
}

/// `[store]`: the redb database and write batching.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The database file. Empty in a configuration file: the default
    /// location ([`default_store_path`]), filled in when the configuration
    /// is loaded.
    pub path: PathBuf,
    pub retention_samples: u64,
    pub retention_chunk: u64,
    pub batch_size: usize,
    pub batch_linger_ms: u64,
    /// Free space, bytes, below which the writer stops committing (and so
    /// acknowledging) samples, leaving room for retention and redb's own
    /// writes; ingest resumes by itself once space is back.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Whether `path` is the default location, whose directory is created
    /// when missing (set when the configuration is loaded; not a key).
    #[serde(skip)]
    pub create_dir: bool,
}

/// Where the store goes when `store.path` is empty: under systemd's
/// `StateDirectory=` (`$STATE_DIRECTORY`, `/var/lib/edgeloop` for the
/// packaged unit), else the XDG state directory of the user running it
/// (`$XDG_STATE_HOME/edgeloop/`, or `$HOME/.local/state/edgeloop/`; XDG Base
/// Directory Specification 0.8), else the working directory. `env` looks a
/// variable up (empty values count as unset).
pub fn default_store_path(env: impl Fn(&str) -> Option<String>) -> PathBuf {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let file = "edgeloop.redb";
    if let Some(dir) = var("STATE_DIRECTORY") {
        // systemd passes a colon-separated list when several are set.
        let first = dir.split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first).join(file);
    }
    if let Some(dir) = var("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("edgeloop").join(file);
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".local/state/edgeloop").join(file);
    }
    PathBuf::from(file)
}

fn default_min_free_bytes() -> u64 {
    64 * 1024 * 1024
}

/// Bytes free for an unprivileged writer on the file system holding `path`
/// (its directory when `path` does not exist yet): `statvfs(3)`'s
/// `f_bavail * f_frsize`.
///
/// # Errors
/// The `statvfs` failure.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    fs_bytes(path).map(|(free, _)| free)
}

/// Free and total bytes of the file system holding `path` (its directory
/// when `path` does not exist yet), for an unprivileged writer:
/// `statvfs(3)`'s `f_bavail * f_frsize` and `f_blocks * f_frsize`.
///
/// # Errors
/// The `statvfs` failure.
pub fn fs_bytes(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let target = if path.exists() {
        path
    } else {
        path.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    let c = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is written by statvfs
    // before it is read (only when it returns 0).
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    let frsize = st.f_frsize as u64;
    Ok((
        (st.f_bavail as u64).saturating_mul(frsize),
        (st.f_blocks as u64).saturating_mul(frsize),
    ))
}

/// Which `k` of `n` older labelled samples a training's reservoir takes
/// (indices, in pick order): the first `k` of a seeded Fisher-Yates shuffle
/// of `0..n` (fastrand's, seeded with `seed`). One function for
/// [`Store::labelled_parts`] and `monitor::retrain::training_parts`, so both
/// pick the same samples.
pub fn reservoir_pick(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    fastrand::Rng::with_seed(seed).shuffle(&mut idx);
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_store_path_follows_systemd_then_xdg_then_home() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        const ALL: [(&str, &str); 3] = [
            ("STATE_DIRECTORY", "/var/lib/edgeloop"),
            ("XDG_STATE_HOME", "/home/u/state"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            default_store_path(env(&ALL)),
            Path::new("/var/lib/edgeloop/edgeloop.redb")
        );
        assert_eq!(
            default_store_path(env(&[("STATE_DIRECTORY", "/a:/b"), ("HOME", "/h")])),
            Path::new("/a/edgeloop.redb")
        );
        assert_eq!(
            default_store_path(env(&[
                ("XDG_STATE_HOME", "/home/u/state"),
                ("HOME", "/home/u")
            ])),
            Path::new("/home/u/state/edgeloop/edgeloop.redb")
        );
        // Empty counts as unset (XDG Base Directory Specification).
        assert_eq!(
            default_store_path(env(&[("XDG_STATE_HOME", ""), ("HOME", "/home/u")])),
            Path::new("/home/u/.local/state/edgeloop/edgeloop.redb")
        );
        assert_eq!(default_store_path(env(&[])), Path::new("edgeloop.redb"));
    }

    #[test]
    fn a_missing_directory_is_not_called_corrupt() {
        let e = Store::open(Path::new("/nonexistent-edgeloop-dir/x.redb")).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Open { .. }), "{msg}");
        assert!(!msg.contains("corrupt"), "{msg}");
        assert!(
            msg.contains("/nonexistent-edgeloop-dir does not exist"),
            "{msg}"
        );
    }

    /// A store whose pages were overwritten (a bad block, a copy cut
    /// short and patched): redb's open panics on a page of no known type
    /// ("Invalid page type byte 216"). Before, the panic took the daemon
    /// down with a backtrace and "component `store` failed: task 4
    /// panicked"; now it is an error that names the file and what to do.
    #[test]
    fn a_store_with_damaged_pages_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            let batch: Vec<_> = (0..10_000)
                .map(|i| new("a", i as u128, sample(i, Some("x"))))
                .collect();
            store.append(&batch).unwrap();
        }
        // Pages 20 to 69 (4 KiB each) of the file: every byte 216, no page type.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() >= 70 * 4096, "{} bytes", bytes.len());
        bytes[20 * 4096..70 * 4096].fill(216);
        std::fs::write(&path, bytes).unwrap();
        let e = Store::open(&path).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("the file is damaged"), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
    }

    /// The first write of a pipeline after the store opens reads its dedup
    /// index from its 25,000 stored samples, and tells the progress hook at
    /// each 10,000 digests: twice. The next write reads nothing: no call.
    #[test]
    fn reading_the_dedup_index_reports_its_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            let batch: Vec<NewSample> = (0..25_000u64)
                .map(|i| new("p", u128::from(i) + 1, sample(i as i64, None)))
                .collect();
            store.append(&batch).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let hook: Progress = {
            let calls = calls.clone();
            std::sync::Arc::new(move || {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        };
        store.set_progress(hook);
        let one = |i: u64| new("p", u128::from(i) + 1, sample(i as i64, None));
        assert_eq!(store.append(&[one(25_000)]).unwrap(), [Some(25_000)]);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
        // A redelivery of the first sample is known: not stored again.
        assert_eq!(
            store.append(&[one(0), one(25_001)]).unwrap(),
            [None, Some(25_001)]
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    /// Samples written before the crash, in commits of 2,000 (the
    /// writer's batch size).
    const CRASH_SAMPLES: u64 = 20_000;

    /// The file as a crash right after the last commit leaves it: writes
    /// [`CRASH_SAMPLES`] samples (with `legacy`, then one more commit as an
    /// edgeloop before quick repair made it: no allocator state recorded)
    /// and copies the file while the store is still open, so the copy was
    /// never closed cleanly (every commit is on disk, fsynced, when
    /// `commit` returns; the clean-shutdown mark is not). In-process, so
    /// that it also runs under qemu-user, where a child process could not
    /// be started. Then opens the copy: the progress values redb's repair
    /// reported, and the store.
    fn crash_and_reopen(legacy: bool) -> (Vec<f64>, Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (path, crashed) = (dir.path().join("s.redb"), dir.path().join("crashed.redb"));
        let store = Store::open(&path).unwrap();
        for start in (0..CRASH_SAMPLES).step_by(2_000) {
            let batch: Vec<NewSample> = (start..start + 2_000)
                .map(|i| new("p", u128::from(i) * 7_919, sample(i as i64, Some("a"))))
                .collect();
            store.append(&batch).unwrap();
        }
        if legacy {
            store.set_quick_repair(false);
            store.put_state("legacy", &[1]).unwrap();
        }
        std::fs::copy(&path, &crashed).unwrap();
        drop(store);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let observe: RepairObserver = {
            let seen = seen.clone();
            std::sync::Arc::new(move |p| seen.lock().unwrap().push(p))
        };
        let store = Store::open_observed(&crashed, observe).unwrap();
        let seen = seen.lock().unwrap().clone();
        (seen, store, dir)
    }

    /// A store killed after its commits opens without redb's full repair
    /// (which reads every page of the file three times: 4.5 s for 5
    /// million samples here, minutes on an SD card), because each commit
    /// recorded its allocator state; every committed sample is there. With
    /// the writes' quick repair off, redb repairs: progress [0, 0.6, 0.9].
    #[test]
    fn a_store_killed_after_its_commits_opens_without_a_full_repair() {
        let (seen, store, _dir) = crash_and_reopen(false);
        assert_eq!(seen, Vec::<f64>::new(), "redb ran its full repair");
        let counts = store.counts("p").unwrap();
        assert_eq!(counts.samples, CRASH_SAMPLES);
        assert_eq!(counts.next_seq, CRASH_SAMPLES);
        // Still writable, and the next crash is again quick.
        store
            .append(&[new("p", 1, sample(CRASH_SAMPLES as i64, None))])
            .unwrap();
        assert_eq!(store.counts("p").unwrap().samples, CRASH_SAMPLES + 1);
    }

    /// A store whose last commit recorded no allocator state (as every
    /// commit of an edgeloop before quick repair) and that was not closed
    /// is repaired by redb at open, and the repair is reported: 0 when it
    /// starts, then 0.6 and 0.9 (redb's `RepairSession` steps; 0.3 only
    /// when the last commit was torn). Nothing committed is lost.
    #[test]
    fn a_store_needing_a_full_repair_reports_its_progress() {
        let (seen, store, _dir) = crash_and_reopen(true);
        assert_eq!(seen, vec![0.0, 0.6, 0.9]);
        assert_eq!(store.counts("p").unwrap().samples, CRASH_SAMPLES);
        assert_eq!(store.get_state("legacy").unwrap(), Some(vec![1u8]));
    }

    fn sample(ts: i64, label: Option<&str>) -> Sample {
        Sample {
            timestamp_ms: ts,
            device: "d".into(),
            features: vec![ts as f32, f32::NAN],
            label: label.map(str::to_string),
        }
    }

    fn new(p: &str, digest: u128, s: Sample) -> NewSample {
        NewSample {
            pipeline: p.into(),
            digest,
            sample: s,
            dedup: true,
        }
    }

    /// Seqs 0-9, labelled at even seqs: the newest two labelled up to 7
    /// are 4 and 6, in order; up to 0, only 0; none in another pipeline.
    #[test]
    fn labelled_before_reads_the_newest_labelled_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let batch: Vec<NewSample> = (0..10)
            .map(|i| new("a", i as u128, sample(i, (i % 2 == 0).then_some("y"))))
            .collect();
        store.append(&batch).unwrap();
        let seqs = |last, n| -> Vec<u64> {
            store
                .labelled_before("a", last, n)
                .unwrap()
                .into_iter()
                .map(|(s, _)| s)
                .collect()
        };
        assert_eq!(seqs(7, 2), [4, 6]);
        assert_eq!(seqs(9, 100), [0, 2, 4, 6, 8]);
        assert_eq!(seqs(0, 3), [0]);
        assert_eq!(store.labelled_before("b", 9, 3).unwrap().len(), 0);
        let got = store.labelled_before("a", 7, 2).unwrap();
        assert_eq!(got[0].1.features[0], 4.0);
    }

    /// A stale device (3 readings first), a quiet one (3 readings next),
    /// then 5 busy ones (1,000 readings each, interleaved), and a pipeline
    /// "a-b" whose keys sort right after "a"'s: the 6 most recent devices
    /// of "a" are the busy ones and the quiet one, least recent first, the
    /// stale one left out; each device's newest readings are its own.
    #[test]
    fn the_most_recent_devices_and_each_ones_newest_readings() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let on = |device: &str, ts: i64| Sample {
            device: device.into(),
            ..sample(ts, None)
        };
        let mut batch: Vec<NewSample> = Vec::new();
        for i in 0..3 {
            batch.push(new("a", batch.len() as u128, on("stale", i)));
        }
        for i in 0..3 {
            batch.push(new("a", batch.len() as u128, on("quiet", 10 + i)));
        }
        for i in 0..5000 {
            batch.push(new(
                "a",
                batch.len() as u128,
                on(&format!("busy{}", i % 5), 100 + i),
            ));
        }
        batch.push(new("a-b", 1 << 40, on("other", 1)));
        store.append(&batch).unwrap();
        let recent = store.recent_devices("a", 6).unwrap();
        let names: Vec<&str> = recent.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(
            names,
            ["quiet", "busy0", "busy1", "busy2", "busy3", "busy4"]
        );
        // Each with the seq of its newest reading.
        assert_eq!(recent[0].1, 5);
        assert_eq!(recent[5].1, 5005);
        assert_eq!(store.recent_devices("a", 100).unwrap().len(), 7);
        assert_eq!(store.recent_devices("a", 0).unwrap().len(), 0);
        assert_eq!(
            store.recent_devices("a-b", 10).unwrap(),
            [("other".to_string(), 0)]
        );
        let seqs = |device, n| -> Vec<u64> {
            store
                .newest_of_device("a", device, n)
                .unwrap()
                .into_iter()
                .map(|(seq, r)| {
                    assert_eq!(r.sample.device, device);
                    seq
                })
                .collect()
        };
        assert_eq!(seqs("quiet", 10), [3, 4, 5]);
        assert_eq!(seqs("busy4", 3), [4995, 5000, 5005]);
        assert_eq!(seqs("busy0", 1000).len(), 1000);
        assert!(seqs("nobody", 10).is_empty());
    }

    /// Device "d" at seqs 0, 1, 2, 4, 5, 6 with timestamps 0, 10, 20, 5
    /// (its clock went back), 30 and 30 again (the index keeps seq 6 only),
    /// labelled at seq 0 only; "e" at seq 3. Its past before a seq is read
    /// back by timestamp from `until_ms`, seqs at or after `before`
    /// passed over, in seq order; a label further back is found within the
    /// lookback only.
    #[test]
    fn a_devices_newest_readings_before_a_point() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let on = |device: &str, ts: i64, label: Option<&str>| Sample {
            device: device.into(),
            ..sample(ts, label)
        };
        let readings = [
            on("d", 0, Some("1")),
            on("d", 10, None),
            on("d", 20, None),
            on("e", 5, None),
            on("d", 5, None),
            on("d", 30, None),
            on("d", 30, None),
        ];
        let batch: Vec<NewSample> = readings
            .into_iter()
            .enumerate()
            .map(|(i, s)| new("a", i as u128, s))
            .collect();
        store.append(&batch).unwrap();
        let seqs = |before, until_ms, n, lookback| -> Vec<u64> {
            store
                .newest_of_device_before("a", "d", before, until_ms, n, lookback)
                .unwrap()
                .into_iter()
                .map(|(seq, _)| seq)
                .collect()
        };
        // Newest by timestamp: 20 (seq 2), 10 (seq 1), then 5 (seq 4).
        assert_eq!(seqs(5, i64::MAX, 2, 0), [1, 2]);
        assert_eq!(seqs(5, i64::MAX, 3, 0), [1, 2, 4]);
        assert_eq!(seqs(u64::MAX, 10, 5, 0), [0, 1, 4]);
        // One reading per timestamp: seq 5 shares 30 with seq 6.
        assert_eq!(seqs(u64::MAX, i64::MAX, 1, 0), [6]);
        assert_eq!(seqs(u64::MAX, i64::MAX, 10, 0), [0, 1, 2, 4, 6]);
        // The label of seq 0: two readings (1; 4 passed over) behind seq 2.
        assert_eq!(seqs(3, i64::MAX, 1, 0), [2]);
        assert_eq!(seqs(3, i64::MAX, 1, 1), [2]);
        assert_eq!(seqs(3, i64::MAX, 1, 2), [0, 2]);
        let got = store
            .newest_of_device_before("a", "d", 3, i64::MAX, 1, 2)
            .unwrap();
        assert_eq!(got[0].1.sample.label.as_deref(), Some("1"));
        assert_eq!(got[1].1.sample.features[0], 20.0);
        // Only the label: n = 0.
        assert_eq!(seqs(u64::MAX, i64::MAX, 0, 10), [0]);
        assert!(seqs(0, i64::MAX, 5, 5).is_empty());
        assert!(store
            .newest_of_device_before("a", "nobody", 9, i64::MAX, 5, 5)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn append_dedups_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            let seqs = store
                .append(&[
                    new("a", 1, sample(10, Some("x"))),
                    new("a", 2, sample(10, None)), // same timestamp, other reading: kept
                    new("a", 1, sample(10, Some("x"))), // redelivery in the same batch
                    new("b", 1, sample(11, None)), // same digest, other pipeline
                ])
                .unwrap();
            assert_eq!(seqs, vec![Some(0), Some(1), None, Some(0)]);
            assert_eq!(
                store.append(&[new("a", 2, sample(10, None))]).unwrap(),
                vec![None]
            );
        }
        let store = Store::open(&path).unwrap();
        // Without the dedup check (an arrival-time pipeline's repeated reading)
        // the same digest is stored again.
        let again = NewSample {
            dedup: false,
            ..new("c", 1, sample(12, None))
        };
        assert_eq!(
            store.append(&[again.clone(), again]).unwrap(),
            vec![Some(0), Some(1)]
        );
        assert_eq!(
            store.counts("a").unwrap(),
            Counts {
                next_seq: 2,
                samples: 2,
                labelled_total: 1
            }
        );
        let rows = store.scan("a", 0..10, 100).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].1.sample.features[1].is_nan());
        assert_eq!(store.labelled("a").unwrap().len(), 1);
    }

    #[test]
    fn a_store_with_the_old_dedup_table_opens_dedups_its_samples_and_drops_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        // The layout before the in-memory dedup index: every table, and a
        // dedup entry per sample.
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let record = postcard::to_allocvec(&StoredSample {
                    digest: 7,
                    sample: sample(10, Some("x")),
                })
                .unwrap();
                txn.open_table(SAMPLES)
                    .unwrap()
                    .insert(("a", 0), record.as_slice())
                    .unwrap();
                txn.open_table(DEDUP).unwrap().insert(("a", 7), 0).unwrap();
                txn.open_table(COUNTERS)
                    .unwrap()
                    .insert("a", (1, 1, 1))
                    .unwrap();
                txn.open_table(MODELS).unwrap();
                txn.open_table(STATE).unwrap();
                txn.open_table(EVENTS).unwrap();
                txn.open_table(BY_TIME)
                    .unwrap()
                    .insert(("a", "d", 10), 0)
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(&path).unwrap();
        {
            let db = store.lock_db().unwrap();
            let txn = db.begin_read().unwrap();
            assert!(txn.open_table(DEDUP).is_err(), "the dedup table is dropped");
        }
        assert_eq!(store.dedup_len("a"), None, "read on the first write");
        let seqs = store
            .append(&[
                new("a", 7, sample(10, Some("x"))), // stored by the old version
                new("a", 8, sample(20, None)),
            ])
            .unwrap();
        assert_eq!(seqs, vec![None, Some(1)]);
        assert_eq!(store.dedup_len("a"), Some(2));
        assert_eq!(
            store.counts("a").unwrap(),
            Counts {
                next_seq: 2,
                samples: 2,
                labelled_total: 1
            }
        );
        // The old by_time entries still match late labels.
        let l = LateLabel {
            pipeline: "a".into(),
            key: LabelKey::DeviceTime {
                device: "d".into(),
                timestamp_ms: 10,
            },
            label: "y".into(),
        };
        assert_eq!(store.apply_labels(&[l]).unwrap(), vec![Some(0)]);
        // Opened again: the index is read again from the samples.
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.append(&[new("a", 8, sample(20, None))]).unwrap(),
            vec![None]
        );
    }

    #[test]
    fn the_dedup_index_is_read_again_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .append(&[new("a", 1, sample(1, None)), new("b", 2, sample(2, None))])
            .unwrap();
        assert_eq!(
            (store.dedup_len("a"), store.dedup_len("b")),
            (Some(1), Some(1))
        );
        store.reopen().unwrap();
        // The first write after the reopen drops the sets of the earlier
        // opening and reads the pipeline's again: its redelivery is caught.
        assert_eq!(
            store.append(&[new("a", 1, sample(1, None))]).unwrap(),
            vec![None]
        );
        assert_eq!(
            (store.dedup_len("a"), store.dedup_len("b")),
            (Some(1), None)
        );
    }

    #[test]
    fn a_record_encoded_from_a_borrowed_sample_reads_back_as_stored_sample() {
        let s = sample(-5, Some("x"));
        let owned = postcard::to_allocvec(&StoredSample {
            digest: u128::MAX - 3,
            sample: s.clone(),
        })
        .unwrap();
        let borrowed = postcard::to_allocvec(&StoredSampleRef {
            digest: u128::MAX - 3,
            sample: &s,
        })
        .unwrap();
        assert_eq!(owned, borrowed);
    }

    #[test]
    fn one_commit_appends_samples_and_labels_them_counting_once_per_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store.append(&[new("a", 9, sample(5, None))]).unwrap();
        let l = |p: &str, key, label: &str| LateLabel {
            pipeline: p.into(),
            key,
            label: label.into(),
        };
        let w = store
            .write_batch(
                &[
                    new("a", 1, sample(100, None)),
                    new("b", 1, sample(100, Some("y"))),
                    new("a", 2, sample(200, Some("z"))),
                    new("a", 9, sample(5, None)), // stored in the earlier commit
                ],
                &[
                    // A sample of this very commit, by device and time.
                    l(
                        "a",
                        LabelKey::DeviceTime {
                            device: "d".into(),
                            timestamp_ms: 100,
                        },
                        "x",
                    ),
                    // Relabelled: labelled_total does not count it again.
                    l("a", LabelKey::Seq(2), "w"),
                    l("a", LabelKey::Seq(0), "v"),
                    l("b", LabelKey::Seq(7), "u"),
                ],
            )
            .unwrap();
        assert_eq!(w.seqs, vec![Some(1), Some(0), Some(2), None]);
        assert_eq!(w.labels, vec![Some(1), Some(2), Some(0), None]);
        let a = Counts {
            next_seq: 3,
            samples: 3,
            labelled_total: 3,
        };
        let b = Counts {
            next_seq: 1,
            samples: 1,
            labelled_total: 1,
        };
        assert_eq!(w.counts, vec![("a".to_string(), a), ("b".to_string(), b)]);
        assert_eq!(
            (store.counts("a").unwrap(), store.counts("b").unwrap()),
            (a, b)
        );
        let labels: Vec<_> = store
            .labelled("a")
            .unwrap()
            .into_iter()
            .map(|(seq, s)| (seq, s.label.unwrap()))
            .collect();
        assert_eq!(
            labels,
            vec![(0, "v".into()), (1, "x".into()), (2, "w".into())]
        );
    }

    #[test]
    fn retention_deletes_oldest_in_chunks_with_their_dedup_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let batch: Vec<_> = (0..25)
            .map(|i| new("a", i as u128, sample(i, None)))
            .collect();
        store.append(&batch).unwrap();
        assert_eq!(store.enforce_retention("a", 10, 4).unwrap(), 15);
        let c = store.counts("a").unwrap();
        assert_eq!((c.samples, c.next_seq), (10, 25));
        let rows = store.scan("a", 0..100, 100).unwrap();
        assert_eq!(rows.first().unwrap().0, 15);
        assert_eq!(store.dedup_len("a"), Some(10));
        // A deleted message's digest may be stored again (it is new data now).
        assert_eq!(
            store.append(&[new("a", 0, sample(0, None))]).unwrap(),
            vec![Some(25)]
        );
    }

    #[test]
    fn late_labels_match_by_seq_or_device_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        store
            .append(&[
                new("a", 1, sample(100, None)),
                new("a", 2, sample(200, None)),
            ])
            .unwrap();
        let l = |key, label: &str| LateLabel {
            pipeline: "a".into(),
            key,
            label: label.into(),
        };
        let applied = store
            .apply_labels(&[
                l(LabelKey::Seq(1), "x"),
                l(
                    LabelKey::DeviceTime {
                        device: "d".into(),
                        timestamp_ms: 100,
                    },
                    "y",
                ),
                l(
                    LabelKey::DeviceTime {
                        device: "d".into(),
                        timestamp_ms: 150,
                    },
                    "z",
                ),
                l(LabelKey::Seq(9), "z"),
            ])
            .unwrap();
        assert_eq!(applied, vec![Some(1), Some(0), None, None]);
        assert_eq!(store.counts("a").unwrap().labelled_total, 2);
        let labels: Vec<_> = store
            .labelled("a")
            .unwrap()
            .into_iter()
            .map(|(_, s)| s.label.unwrap())
            .collect();
        assert_eq!(labels, vec!["y", "x"]);
        // Relabelling does not count twice.
        store.apply_labels(&[l(LabelKey::Seq(1), "w")]).unwrap();
        assert_eq!(store.counts("a").unwrap().labelled_total, 2);
    }

    #[test]
    fn reserved_model_versions_are_distinct_across_writers_and_leave_no_hole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = std::sync::Arc::new(Store::open(&path).unwrap());
        let m = StoredModel {
            onnx: vec![1],
            card_json: "{}".into(),
            params_json: "{}".into(),
        };
        // Versions stored before any reservation: numbering goes on after them.
        store.put_model("p", 1, &m, None).unwrap();
        store.put_model("p", 2, &m, None).unwrap();
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..5)
                        .map(|_| store.reserve_model_version("p").unwrap())
                        .collect::<Vec<u32>>()
                })
            })
            .collect();
        let mut all: Vec<u32> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (3..=22).collect::<Vec<u32>>());
        // A reservation handed back is taken again; an older one cannot be.
        store.release_model_version("p", 22);
        store.release_model_version("p", 5);
        assert_eq!(store.reserve_model_version("p").unwrap(), 22);
        assert_eq!(store.reserve_model_version("p").unwrap(), 23);
        // Each pipeline numbers its own versions.
        assert_eq!(store.reserve_model_version("q").unwrap(), 1);
        // A version stored past the reservations moves the numbering on.
        store.put_model("q", 7, &m, None).unwrap();
        assert_eq!(store.reserve_model_version("q").unwrap(), 8);
        // After a restart (a training killed before storing its version),
        // numbering goes on from the newest stored: no hole.
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.reserve_model_version("p").unwrap(), 3);
        assert_eq!(store.reserve_model_version("q").unwrap(), 8);
    }

    #[test]
    fn models_and_serving_pointer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(store.serving_version("p").unwrap(), None);
        let m = StoredModel {
            onnx: vec![1, 2],
            card_json: "{}".into(),
            params_json: "{}".into(),
        };
        store.put_model("p", 1, &m, Some("{\"v\":1}")).unwrap();
        store.put_model("p", 2, &m, None).unwrap();
        assert_eq!(store.serving_version("p").unwrap(), Some(1));
        assert_eq!(store.model_versions("p").unwrap(), vec![1, 2]);
        assert_eq!(store.get_model("p", 2).unwrap(), Some(m));
        assert_eq!(store.get_model("q", 1).unwrap(), None);
        assert!(store.set_serving("p", 2, "{\"v\":2}").unwrap());
        assert!(
            !store.set_serving("p", 3, "{}").unwrap(),
            "version 3 is not stored"
        );
        assert_eq!(store.serving_version("p").unwrap(), Some(2));
        assert_eq!(store.events("p").unwrap(), vec!["{\"v\":1}", "{\"v\":2}"]);
    }

    /// A write that met ENOSPC is a full disk (HTTP 507), another I/O
    /// error is not.
    #[test]
    fn a_storage_full_error_is_a_full_disk() {
        let db = |kind| StoreError::Db {
            path: "s.redb".into(),
            op: "put_model",
            source: Box::new(redb::Error::Io(std::io::Error::from(kind))),
        };
        assert!(db(std::io::ErrorKind::StorageFull).is_disk_full());
        assert!(!db(std::io::ErrorKind::PermissionDenied).is_disk_full());
    }

    /// A model write that would leave fewer than `store.min_free_bytes`
    /// free is refused (trainings and uploads committed below the floor
    /// that ingest keeps, up to a full file system): the floor set a
    /// megabyte above the free space refuses a 2-byte model, naming the
    /// key; at the free space less a megabyte, or with no floor, it is
    /// stored.
    #[test]
    fn a_model_write_below_the_free_space_floor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let m = StoredModel {
            onnx: vec![1, 2],
            card_json: "{}".into(),
            params_json: "{}".into(),
        };
        let free = store.free_bytes().unwrap();
        store.set_min_free_bytes(free + (1 << 20));
        let e = store.put_model("p", 1, &m, None).unwrap_err();
        assert!(e.is_disk_full(), "{e}");
        assert!(
            matches!(e, StoreError::BelowFloor { floor, .. } if floor == free + (1 << 20)),
            "{e:?}"
        );
        assert!(e.to_string().contains("below store.min_free_bytes"), "{e}");
        assert_eq!(store.model_versions("p").unwrap(), Vec::<u32>::new());
        store.set_min_free_bytes(free - (1 << 20));
        store.put_model("p", 1, &m, None).unwrap();
        store.set_min_free_bytes(0);
        store.put_model("p", 2, &m, None).unwrap();
        assert_eq!(store.model_versions("p").unwrap(), vec![1, 2]);

        // An upload's model goes in with its timeline event (append_event):
        // the same floor. It was stored below it, and on a full disk
        // whenever redb's file had room (tests/ingest_scale.rs failed
        // about every second run on that).
        store.set_min_free_bytes(free + (1 << 20));
        let e = store
            .append_event("p", r#"{"event":"imported"}"#, Some((3, &m)))
            .unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::BelowFloor {
                    op: "append_event",
                    needed: 9,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(store.model_versions("p").unwrap(), vec![1, 2]);
        assert_eq!(store.events("p").unwrap(), Vec::<String>::new());
        // An event without a model is no model write: the floor is ingest's.
        store
            .append_event("p", r#"{"event":"promoted"}"#, None)
            .unwrap();
        assert_eq!(store.events("p").unwrap().len(), 1);
    }

    #[test]
    fn model_cards_read_each_version_card_without_its_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let model = |v: u32, onnx: Vec<u8>| StoredModel {
            onnx,
            card_json: format!("{{\"version\":{v},\"note\":\"é\"}}"),
            params_json: format!("{{\"p\":{v}}}"),
        };
        // A 3 MiB model, a small one, a refused challenger stored with its
        // event, another pipeline's, and one whose model was dropped.
        store
            .put_model("p", 1, &model(1, vec![7; 3 << 20]), None)
            .unwrap();
        store
            .put_model("p", 2, &model(2, vec![1, 2]), None)
            .unwrap();
        store
            .append_event("p", "{}", Some((4, &model(4, vec![3]))))
            .unwrap();
        store.put_model("q", 3, &model(3, vec![9]), None).unwrap();
        assert_eq!(store.drop_models("p", &[2]).unwrap(), vec![2]);
        let cards = store.model_cards("p").unwrap();
        let want: Vec<(u32, String)> = [1, 2, 4]
            .iter()
            .map(|&v| (v, model(v, vec![]).card_json))
            .collect();
        assert_eq!(cards, want);
        // The same cards as each record read whole.
        for (v, json) in &cards {
            assert_eq!(&store.get_model("p", *v).unwrap().unwrap().card_json, json);
        }
        assert_eq!(
            store.model_cards("q").unwrap(),
            vec![(3, model(3, vec![]).card_json)]
        );
        assert!(store.model_cards("r").unwrap().is_empty());
    }

    #[test]
    fn cards_are_indexed_at_open_for_a_store_written_before_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let model = |v: u32| StoredModel {
            onnx: vec![v as u8; 1000],
            card_json: format!("{{\"version\":{v}}}"),
            params_json: "{}".into(),
        };
        let card = |v: u32| (v, model(v).card_json);
        let raw_insert = |store: &Store, pipeline: &str, v: u32| {
            let db = store.lock_db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let bytes = postcard::to_allocvec(&model(v)).unwrap();
                let mut models = txn.open_table(MODELS).unwrap();
                models.insert((pipeline, v), bytes.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        };
        {
            // Written before the table: models only.
            let store = Store::open(&path).unwrap();
            for v in [1, 2, 5] {
                store.put_model("p", v, &model(v), None).unwrap();
            }
            store.put_model("q", 1, &model(1), None).unwrap();
            let db = store.lock_db().unwrap();
            let txn = db.begin_write().unwrap();
            assert!(txn.delete_table(CARDS).unwrap());
            txn.commit().unwrap();
        }
        {
            let store = Store::open(&path).unwrap();
            assert!(store.cards_indexed());
            assert_eq!(
                store.model_cards("p").unwrap(),
                vec![card(1), card(2), card(5)]
            );
            assert_eq!(store.model_versions("p").unwrap(), vec![1, 2, 5]);
            assert_eq!(store.model_cards("q").unwrap(), vec![card(1)]);
            // An earlier edgeloop that writes models only adds one.
            raw_insert(&store, "p", 6);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.model_cards("p").unwrap(),
            vec![card(1), card(2), card(5), card(6)]
        );
        assert_eq!(store.model_versions("p").unwrap(), vec![1, 2, 5, 6]);
        assert_eq!(store.reserve_model_version("p").unwrap(), 7);
        // Written through the store, a card is indexed at once, and the
        // models are read the same way when the cards are not indexed.
        store.put_model("p", 7, &model(7), None).unwrap();
        assert_eq!(store.drop_cards("p", &[2], &[]).unwrap(), 1);
        let want = vec![card(1), card(5), card(6), card(7)];
        assert_eq!(store.model_cards("p").unwrap(), want);
        store
            .cards_indexed
            .store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(store.model_cards("p").unwrap(), want);
        assert_eq!(store.model_versions("p").unwrap(), vec![1, 5, 6, 7]);
    }

    #[test]
    fn a_timeline_keeps_its_newest_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        // A store written before the cap: 10,100 events of "p" (0..10,099),
        // 3 of "q".
        {
            let db = store.lock_db().unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut events = txn.open_table(EVENTS).unwrap();
                for i in 0..10_100u64 {
                    events.insert(("p", i), format!("{i}").as_bytes()).unwrap();
                }
                for i in 0..3u64 {
                    events.insert(("q", i), format!("q{i}").as_bytes()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        assert_eq!(store.events("p").unwrap().len(), 10_100);
        // The next event is number 10,100: the 10,000 newest are 101..=10,100.
        store.append_event("p", "10100", None).unwrap();
        let p = store.events("p").unwrap();
        assert_eq!(p.len(), 10_000);
        assert_eq!((p[0].as_str(), p[9_999].as_str()), ("101", "10100"));
        // Then one in, one out.
        store.append_event("p", "10101", None).unwrap();
        let p = store.events("p").unwrap();
        assert_eq!(p.len(), 10_000);
        assert_eq!((p[0].as_str(), p[9_999].as_str()), ("102", "10101"));
        // Another pipeline's timeline is its own.
        store.append_event("q", "q3", None).unwrap();
        assert_eq!(store.events("q").unwrap(), vec!["q0", "q1", "q2", "q3"]);
    }
}
